"""The typer application behind ``circuit-breaker``.

Commands: ``run`` one instance of a workflow file, ``graph`` it as Mermaid or DOT, ``check`` its definition,
list the ``executors`` a project can use, ``version``. A workflow file is a Python module defining ``Workflow``
objects; ``PATH:NAME`` or ``--workflow NAME`` picks one when it defines several.

Exit codes: see ``circuit_breaker.cli`` (and ``ExitCode`` below); they are also shown in ``--help``.

Errors are one line on stderr starting with ``error:``; results go to stdout. With ``--json`` an error is
also one ``{"error": {...}}`` object on stdout, its ``code`` the protocol's where the engine gave one.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import (
    CircuitBreakerError,
    ConfigError,
    ControlError,
    DefinitionError,
    InjectError,
    NatsUnavailableError,
    RuleDefinitionError,
    TokenDataError,
    UnknownWorkflowError,
    WaitTimeoutError,
    WorkflowLoadError,
)
from ..secrets import default_masker
from ._durable import cancel, events, fire, history, inject, instances, pause, resume, retry, schema, serve, status
from ._loader import WorkflowChoiceError, load_workflows, pick_workflow, split_target
from ._nats_cmd import NATS_EPILOG, nats
from ._worker import dlq_app, worker

if TYPE_CHECKING:
    from rich.console import Console

    from ..dsl import Problem, Workflow
    from ..engine import Instance


class ExitCode(IntEnum):
    """What the process exit status means (see the module docstring)."""

    OK = 0
    FAILED = 1
    USAGE = 2
    DEFINITION = 3
    BAD_DATA = 4
    LOAD = 5
    TIMEOUT = 6


EPILOG = "\n".join(
    [
        "Exit codes:",
        "  0  ok (run: the instance completed, or waits on a manual transition)",
        "  1  the instance failed or is stuck; check found problems",
        "  2  usage error (bad option, --workflow missing or unknown)",
        "  3  the workflow is defined wrongly",
        "  4  bad input data (--data, token model)",
        "  5  the workflow file cannot be loaded",
        "  6  timed out waiting (--timeout)",
    ]
)

app = typer.Typer(
    help="circuit_breaker: a Petri-net workflow engine.",
    epilog=EPILOG,
    no_args_is_help=True,
    # A crash must not print local variables: they may hold token data or secrets.
    pretty_exceptions_show_locals=False,
)


class GraphFormat(StrEnum):
    mermaid = "mermaid"
    dot = "dot"


class _Fail(Exception):
    """An expected failure: its message becomes the one ``error:`` line, its code the exit status."""

    def __init__(self, code: ExitCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _die(code: ExitCode, message: str, as_json: bool = False, err: BaseException | None = None) -> typer.Exit:
    """The ``error:`` line on stderr; with ``--json`` also one ``{"error": {...}}`` object on stdout, so a script
    that reads stdout learns why as well as that (the exit status)."""
    message = " ".join(default_masker().mask_text(message).split())
    typer.echo("error: " + message, err=True)
    if as_json:
        _print_json({"error": _error_object(code, message, err)})
    return typer.Exit(int(code))


# What only a command meets, beside the engine's refusals (nats._control.protocol_code).
_LOCAL_CODES: tuple[tuple[type[Exception], str], ...] = (
    (NatsUnavailableError, "unavailable"),
    (UnknownWorkflowError, "unknown_workflow"),
    (WaitTimeoutError, "timeout"),
)


def _error_object(code: ExitCode, message: str, err: BaseException | None) -> dict[str, Any]:
    """``code`` is the protocol's error code where the engine answered one (``unknown_transition``,
    ``not_enabled``, ``invalid_data``...), else what the exit status means (``usage``, ``bad_data``...)."""
    from ..nats._control import protocol_code

    if isinstance(err, (InjectError, ControlError)):
        name: str | None = err.code
    else:  # the protocol's name for the same refusal where it has one, so a script checks one set of codes
        local = next((known for cls, known in _LOCAL_CODES if isinstance(err, cls)), None)
        name = local or (protocol_code(err) if err is not None else None)
    found: dict[str, Any] = {
        "code": name or code.name.lower(),
        "message": message,
        "exit_code": int(code),
        "type": type(err).__name__ if err is not None and not isinstance(err, _Fail) else None,
    }
    if isinstance(err, InjectError) and err.field is not None:
        found["field"] = err.field
    if isinstance(err, ControlError) and err.details:
        found["details"] = err.details
    return found


@contextmanager
def _errors(as_json: bool = False) -> Iterator[None]:
    """Turn the errors a user can cause into one ``error:`` line and a meaningful exit code, not a traceback;
    with ``as_json`` (the command's ``--json``) also into a JSON object on stdout."""
    try:
        yield
    except (_Fail, CircuitBreakerError) as err:
        code, message = _judged(err)
        raise _die(code, message, as_json, err) from None


def _judged(err: Exception) -> tuple[ExitCode, str]:
    """The exit status and the one-line message for an error a user can cause."""
    if isinstance(err, _Fail):
        return err.code, str(err)
    if isinstance(err, WorkflowChoiceError):
        return ExitCode.USAGE, str(err)
    if isinstance(err, WorkflowLoadError):
        return ExitCode.LOAD, str(err)
    if isinstance(err, (DefinitionError, RuleDefinitionError)):
        return ExitCode.DEFINITION, str(err)
    if isinstance(err, TokenDataError):
        return ExitCode.BAD_DATA, str(err)
    if isinstance(err, InjectError):
        bad_data = err.code in ("invalid_data", "not_an_object", "malformed_json", "payload_too_large")
        code = ExitCode.BAD_DATA if bad_data else ExitCode.TIMEOUT if err.code == "timeout" else ExitCode.FAILED
        return code, err.message  # (the protocol's code is for programs: the exit code says it)
    if isinstance(err, ControlError):
        if err.code in ("invalid_data", "payload_too_large"):
            return ExitCode.BAD_DATA, str(err)
        return (ExitCode.TIMEOUT if err.code == "timeout" else ExitCode.FAILED), str(err)
    if isinstance(err, WaitTimeoutError):
        return ExitCode.TIMEOUT, f"{err}; raise --timeout to wait longer"
    if isinstance(err, ConfigError):  # a setting's value (env CB_*, the settings file, a flag), as for a bad option
        return ExitCode.USAGE, str(err)
    return ExitCode.FAILED, str(err)


# -- shared options ------------------------------------------------------------------------------------------
PathArg = Annotated[
    str,
    typer.Argument(
        metavar="PATH",
        help="A workflow file (.py, or a .yaml/.yml/.json document); PATH:NAME picks one by name.",
    ),
]
WorkflowOpt = Annotated[
    str | None,
    typer.Option("--workflow", "-w", metavar="NAME", help="Which workflow of the file, when it defines several."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]


def _load(target: str, workflow: str | None) -> tuple[str, list[Workflow]]:
    """The file's path as given and its workflows: the one picked by name, or all of them."""
    path, name = split_target(target)
    if name is not None and workflow is not None and name != workflow:
        raise _Fail(ExitCode.USAGE, f"{target} and --workflow {workflow} name different workflows")
    workflows = load_workflows(path)
    name = name or workflow
    return path, workflows if name is None else [pick_workflow(workflows, name, path)]


def _load_one(target: str, workflow: str | None) -> Workflow:
    path, workflows = _load(target, workflow)
    return pick_workflow(workflows, None, path)


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    names = {str: "a string", list: "an array", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _parse_data(raw: str | None) -> dict[str, Any]:
    """``--data``: inline JSON, ``@file.json``, or ``@-`` for stdin; it must be a JSON object."""
    if raw is None:
        return {}
    source, text = "--data", raw
    if raw.startswith("@"):
        name = raw[1:]
        source = "--data from stdin" if name == "-" else f"--data file {name}"
        try:
            text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
        except OSError as err:
            raise _Fail(ExitCode.BAD_DATA, f"cannot read --data file {name!r}: {err.strerror or err}") from None
        except UnicodeDecodeError as err:
            raise _Fail(ExitCode.BAD_DATA, f"--data file {name!r} is not UTF-8 text: {err.reason}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise _Fail(ExitCode.BAD_DATA, f"{source} is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise _Fail(ExitCode.BAD_DATA, f"{source} must be a JSON object, got {_json_type(value)}")
    return value


def _print_json(value: Any) -> None:
    value = default_masker().mask(value)  # secrets never reach the terminal or a script's pipe
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n")


PIPED_WIDTH = 200  # columns of tables written to a pipe or a file when COLUMNS does not say


def _console(*, soft_wrap: bool = False) -> Console:
    from rich.console import Console

    # Output that is not a terminal is read by programs and copied from: rich would cut it at 80 columns
    # (ids and times ending in "…"); COLUMNS still decides when set.
    piped = not sys.stdout.isatty() and not os.environ.get("COLUMNS")
    return Console(highlight=False, soft_wrap=soft_wrap, width=PIPED_WIDTH if piped else None)


# -- run -----------------------------------------------------------------------------------------------------
@app.command(epilog=EPILOG)
def run(
    target: PathArg,
    data: Annotated[
        str | None,
        typer.Option(
            "--data", "-d", metavar="JSON", help="Token data: a JSON object, @file.json, or @- to read stdin."
        ),
    ] = None,
    workflow: WorkflowOpt = None,
    as_json: JsonOpt = False,
    timeout: Annotated[
        float | None,
        typer.Option(metavar="SECONDS", help="Give up (exit 6) if the instance has not settled by then."),
    ] = None,
    durable: Annotated[
        bool,
        typer.Option(
            "--durable",
            help="Keep the instance in NATS JetStream (CB_NATS_URL, or the embedded server) instead of memory.",
        ),
    ] = False,
) -> None:
    """Run one instance of a workflow until it completes, fails or waits on a manual transition.

    In memory by default; with --durable its events are stored in JetStream, so `status`, `history` and
    `fire` can pick it up afterwards. Prints the final tokens, status and history.
    """
    if timeout is not None and timeout <= 0:
        raise typer.BadParameter("must be a positive number of seconds", param_hint="--timeout")
    with _errors(as_json):
        wf = _load_one(target, workflow)
        wf.compile()
        token_data = _parse_data(data)
        started: list[str] = []
        try:
            inst = asyncio.run(
                _run_instance(wf, token_data, timeout, progress=not as_json, durable=durable, started=started)
            )
        except KeyboardInterrupt:
            raise _interrupted(wf.name, started, durable, as_json) from None
    if as_json:
        _print_json(inst.summary())
    else:
        _show_instance(inst)
    problem = _run_problem(inst)
    if problem is not None:
        raise _die(ExitCode.FAILED, problem)


def _interrupted(workflow: str, started: list[str], durable: bool, as_json: bool) -> typer.Exit:
    """Ctrl-C during ``run``: say what became of the instance (the exit status alone says nothing of it)."""
    if not started:
        message = f"interrupted before an instance of {workflow!r} started"
    elif durable:
        message = (
            f"interrupted: instance {started[0]} of {workflow!r} is stored as far as it got; `circuit-breaker serve` "
            f"goes on with it, `circuit-breaker status {started[0]}` shows it"
        )
    else:
        message = f"interrupted: instance {started[0]} of {workflow!r} ran in memory and is gone (--durable keeps it)"
    typer.echo(f"error: {message}", err=True)
    if as_json:
        error = {"code": "interrupted", "message": message, "exit_code": 130, "type": None}
        _print_json({"error": error, "instance": started[0] if started else None})
    return typer.Exit(130)


async def _run_instance(
    wf: Workflow,
    data: dict[str, Any],
    timeout: float | None,
    *,
    progress: bool,
    durable: bool = False,
    started: list[str] | None = None,
) -> Instance:
    """Run one instance to settling; its id goes into ``started`` as soon as it exists (for an interruption)."""
    if not durable:
        return await _run_on(None, wf, data, timeout, progress=progress, started=started)
    from ..config import load_settings
    from ..nats import JetStreamStore
    from ._durable import nats_session

    settings = load_settings()
    async with nats_session(settings) as nc:
        store = JetStreamStore(connection=nc, settings=settings)
        return await _run_on(store, wf, data, timeout, progress=progress, started=started)


async def _run_on(
    store: Any,
    wf: Workflow,
    data: dict[str, Any],
    timeout: float | None,
    *,
    progress: bool,
    started: list[str] | None = None,
) -> Instance:
    from ..engine import Engine

    async with Engine(store=store) as engine:
        inst = await engine.start(wf, data, actor="cli")
        if started is not None:
            started.append(inst.id)
        if not progress:
            return await engine.wait(inst.id, timeout=timeout)
        from rich.console import Console

        status = Console(stderr=True)
        if not status.is_terminal:
            return await engine.wait(inst.id, timeout=timeout)
        with status.status(f"running {wf.name} (instance {inst.id})"):
            return await engine.wait(inst.id, timeout=timeout)


def _run_problem(inst: Instance) -> str | None:
    """Why a settled instance is not ok (None when it completed or waits on a manual transition)."""
    status = inst.status.value
    if status == "completed" or (status == "waiting" and inst.enabled_manual):
        return None
    if status == "failed":
        reasons = [f"{i.transition}: {i.error.kind}: {i.error.message}" for i in inst.open_incidents]
        why = "; ".join(reasons) if reasons else "see the history"
        return f"instance {inst.id} of {inst.workflow} failed: {why}"
    if status == "waiting":
        places = ", ".join(inst.places) or "none"
        rejected = [e for e in inst.history if e.kind == "rejected"]
        last = ""
        if rejected:
            errors = "; ".join(str(x) for x in rejected[-1].details.get("errors", ()))
            last = f" (last rejection: {rejected[-1].transition}: {errors})"
        return f"instance {inst.id} of {inst.workflow} is stuck in {places}: no transition can fire{last}"
    return f"instance {inst.id} of {inst.workflow} ended {status}"


def _show_instance(inst: Instance) -> None:
    from rich.table import Table
    from rich.text import Text

    console = _console()
    colour = {"completed": "green", "waiting": "yellow", "failed": "red"}.get(inst.status.value, "magenta")
    head = Text.assemble((inst.workflow, "bold"), "  instance ", inst.id, "  ", (inst.status.value, f"bold {colour}"))
    console.print(head)

    tokens = Table(title="Tokens", title_justify="left")
    tokens.add_column("place", style="cyan", no_wrap=True)
    tokens.add_column("data")
    masker = default_masker()
    for t in inst.tokens:
        tokens.add_row(Text(t.place or ""), Text(json.dumps(masker.mask(t.data), ensure_ascii=False, default=str)))
    console.print(tokens)
    from ..engine._lifecycle import TERMINAL

    ended = inst.status in TERMINAL
    if inst.tasks:  # tokens a remote action took: they are with the task until its result comes
        title = "Abandoned (remote actions the instance ended without)" if ended else "In flight (remote actions)"
        tasks = Table(title=title, title_justify="left")
        for column in ("transition", "executor", "attempt", "since", "task", "state"):
            tasks.add_column(column, no_wrap=column == "task")
        for task in inst.tasks:
            state = Text("queued or running")
            if ended:
                state = Text("dead-lettered" if task.dead_lettered else "its result will be ignored")
            elif task.dead_lettered:
                state = Text(f"dead-lettered: circuit-breaker retry {inst.id} (or dlq retry)", style="red")
            since = task.since.strftime("%H:%M:%S")
            tasks.add_row(task.transition, task.executor, str(task.attempt), since, task.task_id, state)
        console.print(tasks)

    history = Table(title="History", title_justify="left")
    for column in ("time", "event", "transition", "places", "details"):
        history.add_column(column)
    for e in inst.history:
        moved = f"{', '.join(e.from_places)} → {', '.join(e.to_places)}" if e.from_places or e.to_places else ""
        details = json.dumps(masker.mask(e.details), ensure_ascii=False, default=str) if e.details else ""
        history.add_row(
            e.time.strftime("%H:%M:%S.%f")[:-3], e.kind, Text(e.transition or ""), Text(moved), Text(details)
        )
    console.print(history)

    if inst.incidents:
        incidents = Table(title="Incidents", title_justify="left")
        for column in ("transition", "error", "attempts", "resolved"):
            incidents.add_column(column)
        for i in inst.incidents:
            error = Text(f"{i.error.kind}: {i.error.message}")
            incidents.add_row(i.transition, error, str(i.attempts), "yes" if i.resolved else "no")
        console.print(incidents)
    if inst.enabled_manual:
        waiting = ", ".join(inst.enabled_manual)
        console.print(
            Text(f"waiting on manual transition(s): {waiting} (validations are checked when fired)", style="yellow")
        )


# -- graph ---------------------------------------------------------------------------------------------------
@app.command(epilog=EPILOG)
def graph(
    target: PathArg,
    workflow: WorkflowOpt = None,
    fmt: Annotated[
        GraphFormat, typer.Option("--format", "-f", help="Mermaid flowchart or Graphviz DOT.")
    ] = GraphFormat.mermaid,
) -> None:
    """Print a workflow's diagram (places, transitions and arcs); manual transitions are marked."""
    with _errors():
        wf = _load_one(target, workflow)
    sys.stdout.write(wf.to_dot() if fmt is GraphFormat.dot else wf.to_mermaid())


# -- check ---------------------------------------------------------------------------------------------------
@app.command(epilog=EPILOG)
def check(target: PathArg, workflow: WorkflowOpt = None, as_json: JsonOpt = False) -> None:
    """Report every definition problem of a workflow file; exit 1 if there is any.

    Errors (unknown rules, duplicate names) and structural problems: unreachable places, dead transitions.

    Every workflow of the file is checked unless one is named.
    """
    reports = _check_reports(target, workflow, as_json)
    ok = not any(problems for _, _, problems in reports)
    if as_json:
        _print_json(
            {
                "path": split_target(target)[0],
                "ok": ok,
                "workflows": [
                    {"workflow": name, "ok": not problems, "problems": [p.to_dict() for p in problems]}
                    for name, _, problems in reports
                ],
            }
        )
    else:
        from rich.text import Text

        console = _console(soft_wrap=True)  # one line per problem, so grep and diff work on the report
        for name, size, problems in reports:
            if not problems:
                console.print(Text.assemble(("OK", "bold green"), f"  {name}: no problems ({size})"))
                continue
            console.print(Text.assemble(("FAIL", "bold red"), f"  {name}: {_count(len(problems), 'problem')}"))
            for p in problems:
                style = "red" if p.severity == "error" else "yellow"
                console.print(Text.assemble("  ", (f"{p.severity:<7}", style), f" {p.kind} {p.element}: {p.message}"))
    if not ok:
        raise typer.Exit(int(ExitCode.FAILED))


def _check_reports(
    target: str, workflow: str | None, as_json: bool = False
) -> list[tuple[str, str, list[Problem]]]:
    """(workflow name, size, problems) for each workflow checked.

    A definition error raised while the file builds its workflows (a place declared twice) stops the import,
    so it is reported as the one problem found rather than as a load failure: it is what ``check`` is for.
    """
    from ..dsl import Problem

    with _errors(as_json):
        try:
            _, workflows = _load(target, workflow)
        except (DefinitionError, RuleDefinitionError) as err:
            name = getattr(err, "workflow", None) or split_target(target)[0]
            return [(name, "", [Problem("definition", name, str(err))])]
    return [
        (wf.name, f"{_count(len(wf.places), 'place')}, {_count(len(wf.transitions), 'transition')}", wf.problems())
        for wf in workflows
    ]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


# -- executors -----------------------------------------------------------------------------------------------
def _worker_epilog() -> str:
    """The worker's settings (env, or a [worker] table in the TOML file), then what its exit codes mean."""
    from ..config import WorkerSettings

    lines = ["Settings (environment, or the \\[worker] table of the settings file):"]
    for name, field in WorkerSettings.model_fields.items():
        default = "all" if field.default is None and name == "executors" else field.default
        lines.append(f"  CB_WORKER__{name.upper()}  {field.description} (default: {default})")
    lines += [
        "",
        "Exit codes:",
        "  0  stopped (Ctrl-C, SIGTERM or a closed terminal; tasks in hand finished or handed back)",
    ]
    lines += ["  1  NATS cannot be reached, or refused the worker (a subject it may not use)"]
    lines += ["  2  usage error (an executor kind that is not registered, a bad option, a metrics port in use)"]
    lines += ["  5  a file of the project's executors/ folder cannot be imported, or two executors share a name"]
    return "\n".join(lines)


WIDE_TABLE = 120  # columns below which executors are listed, not tabled

EXECUTORS_EPILOG = "\n".join(
    [
        "Exit codes:",
        "  0  listed (executors that cannot be loaded are listed with the reason)",
        "  2  usage error (--project is not a directory)",
        "  5  a file of the project's executors/ folder cannot be imported, or two executors share a name",
    ]
)


@app.command(epilog=EXECUTORS_EPILOG)
def executors(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list instead of a table.")] = False,
    project: Annotated[
        Path | None,
        typer.Option(
            "--project",
            "-p",
            metavar="DIR",
            help="The project whose executors/ folder to include (default: the current directory).",
        ),
    ] = None,
) -> None:
    """List the executors workflows can use, with their parameters (name, type, required, default, description).

    Built-ins, executors of installed packages (entry-point group circuit_breaker.executors) and the project's own.

    The project's own executors are the classes that its executors/*.py files define.

    An executor that cannot be loaded is listed with the reason.
    """
    if project is not None and not project.is_dir():
        raise _die(ExitCode.USAGE, f"--project {str(project)!r} is not a directory")
    folder = (Path.cwd() if project is None else project).resolve()
    with _errors(as_json):
        entries = _executor_entries(folder)
    if as_json:
        _print_json(entries)
    else:
        _show_executors(entries, folder)


def _executor_entries(folder: Path) -> list[dict[str, Any]]:
    """One entry per registered name; lazily registered executors are imported here, each on its own."""
    from ..errors import ExecutorConfigError
    from ..executors import default_registry

    try:
        registry = default_registry(folder)
    except ExecutorConfigError as err:  # a file of the project's executors/ folder fails to import, or a clash
        raise _Fail(ExitCode.LOAD, str(err)) from None
    entries: list[dict[str, Any]] = []
    for name in registry.names():
        entry: dict[str, Any] = {"name": name, "origin": registry.origin(name)}
        try:
            described = registry.get(name).describe()
        except Exception as err:  # a built-in or plugin that cannot be imported must not hide the others
            message = str(err) if isinstance(err, CircuitBreakerError) else f"{type(err).__name__}: {err}"
            entry.update({"class": None, "description": "", "params": [], "error": message})
        else:
            entry.update(
                {
                    "class": described["class"],
                    "description": described["description"],
                    "params": described["params"],
                    "error": None,
                }
            )
        entries.append(entry)
    return entries


def _short_origin(origin: str, folder: Path) -> str:
    """A project file relative to the project folder (``executors/greeting.py``); other origins as they are."""
    try:
        return str(Path(origin).relative_to(folder.resolve()))
    except ValueError:
        return origin


def _plain(text: str) -> str:
    """Docstring markup (``name``) as a terminal shows it: plain."""
    return text.replace("``", "")


def _show_executors(entries: list[dict[str, Any]], folder: Path) -> None:
    from rich.table import Table
    from rich.text import Text

    console = _console()
    if console.width < WIDE_TABLE:
        _list_executors(entries, folder, console)
        return
    table = Table(title="Executors", title_justify="left")
    for column in ("executor", "origin", "parameter", "type", "required", "default", "description"):
        table.add_column(column, no_wrap=column in ("executor", "parameter", "required"))
    for i, entry in enumerate(entries):
        if i:
            table.add_section()
        head = [Text(entry["name"], style="bold cyan"), Text(_short_origin(entry["origin"], folder), style="dim")]
        if entry["error"] is not None:
            table.add_row(*head, "", "", "", "", Text(f"cannot be loaded: {entry['error']}", style="red"))
            continue
        note = _plain(entry["description"]) or ("(no parameters)" if not entry["params"] else "")
        table.add_row(*head, "", "", "", "", Text(note, style="italic"))
        for p in entry["params"]:
            default = "" if p["required"] else json.dumps(p["default"], ensure_ascii=False, default=str)
            table.add_row(
                "",
                "",
                Text(p["name"] + (" (secret)" if p["secret"] else "")),
                Text(p["type"]),
                "yes" if p["required"] else "no",
                Text(default),
                Text(_plain(p["description"])),
            )
    console.print(table)
    _show_broken(entries, console)


def _list_executors(entries: list[dict[str, Any]], folder: Path, console: Console) -> None:
    """The executors as an indented list, for a terminal too narrow for the table's seven columns."""
    from rich.text import Text

    for entry in entries:
        head = Text(entry["name"], style="bold cyan")
        head.append(f"  {_short_origin(entry['origin'], folder)}", style="dim")
        console.print(head)
        if entry["error"] is not None:
            continue
        if entry["description"] or not entry["params"]:
            console.print(Text("  " + (_plain(entry["description"]) or "(no parameters)"), style="italic"))
        for p in entry["params"]:
            line = Text(f"  - {p['name']}" + (" (secret)" if p["secret"] else ""), style="bold")
            extra = (
                "required" if p["required"] else f"default {json.dumps(p['default'], ensure_ascii=False, default=str)}"
            )
            line.append(f": {p['type']}, {extra}")
            if p["description"]:
                line.append(f" - {_plain(p['description'])}")
            console.print(line)
    _show_broken(entries, console)


def _show_broken(entries: list[dict[str, Any]], console: Console) -> None:
    from rich.text import Text

    broken = [e for e in entries if e["error"] is not None]
    for entry in broken:  # in full below the table: a narrow terminal would cut the reason short in a cell
        console.print(Text(f"{entry['name']} cannot be loaded: {entry['error']}", style="red"), soft_wrap=True)
    summary = _count(len(entries), "executor") + (f", {len(broken)} cannot be loaded" if broken else "")
    console.print(Text(summary, style="yellow" if broken else ""))


# -- nats ----------------------------------------------------------------------------------------------------
app.command(epilog=NATS_EPILOG)(nats)
DURABLE_EPILOG = "\n".join(
    [
        "Exit codes:",
        "  0  ok",
        "  1  refused or not found: an unknown instance or workflow of the engine, a transition not enabled or",
        "     rejected, an instance in the wrong status; no engine serves the workflow; NATS cannot be reached",
        "  2  usage error (bad option or value)",
        "  3  a workflow of the project is defined wrongly",
        "  4  bad input data (--data, the workflow's token model)",
        "  5  the project's workflows cannot be loaded (no workflows/ folder, an import error)",
        "  6  timed out waiting for the engine",
    ]
)
for _command in (serve, inject, events, instances, status, fire, retry, pause, resume, cancel, history):
    app.command(epilog=DURABLE_EPILOG)(_command)
app.command()(schema)
app.command(epilog=_worker_epilog())(worker)
app.add_typer(dlq_app, name="dlq")


# -- version -------------------------------------------------------------------------------------------------
@app.command()
def version() -> None:
    """Print the installed version."""
    from .. import __version__

    typer.echo(__version__)
