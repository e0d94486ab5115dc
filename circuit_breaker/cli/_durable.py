"""The commands that work on NATS: ``serve``, ``inject``, ``events``, ``instances``, ``status``, ``fire``,
``history`` and ``schema``.

Where NATS is comes from the settings (``CB_NATS_URL``, ``circuit_breaker.toml``, ``--nats-url``); with none,
the embedded server runs in the project's data directory (``.circuit_breaker/nats``) — shared with a
``circuit-breaker nats`` or ``serve`` already running there. Read commands fold the stored events with the
project's workflow definitions (``workflows/``) and never drive an instance; ``fire`` asks a serving engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from ..errors import CircuitBreakerError, ConfigError, DuplicateNameError, UnknownInstanceError, WorkflowLoadError
from ..secrets import default_masker
from ._signals import stop_signals

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

    from ..config import Settings
    from ..dsl import Workflow
    from ..engine import Engine
    from ..events import Event
    from ..nats._control import Verb

__all__ = ["SchemaName", "load_project_workflows", "nats_session", "project_dir", "project_engine"]

T = TypeVar("T")
log = logging.getLogger("circuit_breaker.serve")
DOCUMENT_SUFFIXES = (".py", ".yaml", ".yml", ".json")

NatsUrlOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--nats-url",
        metavar="URL",
        help="NATS server(s) (repeat for a cluster); default: CB_NATS_URL or the settings file, else the embedded "
        "server.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
ActorOpt = Annotated[str | None, typer.Option(help="Who does it (recorded in the history).")]
ProjectOpt = Annotated[
    Path,
    typer.Option("--project", metavar="DIR", help="The project root: its workflows/ folder holds the definitions."),
]


ServingProjectOpt = Annotated[
    Path,
    typer.Option(
        "--project", metavar="DIR", help="The project whose settings (NATS, its embedded server) to use."
    ),
]


class SchemaName(StrEnum):
    inject = "inject"
    reply = "reply"
    event = "event"


def settings_for(nats_url: list[str] | None, project: Path | None = None, **overrides: Any) -> Settings:
    """The settings of a command; with ``project`` (its ``--project``), the project's settings file and data dir."""
    from ..config import load_settings

    if project is not None:
        project_dir(project)
    return load_settings(nats_url=nats_url or None, base_dir=project, **overrides)


def project_dir(project: Path) -> Path:
    """A --project that is no directory is a usage error: a typo must not start an empty server somewhere."""
    if not project.is_dir():
        raise ConfigError(f"--project {str(project)!r} is not a directory", setting="project")
    return project


@asynccontextmanager
async def nats_session(settings: Settings) -> AsyncIterator[NATS]:
    """A connection to the configured NATS, or to the embedded server (started here if none runs yet)."""
    from ..nats._embedded import nats_connection

    async with nats_connection(settings) as nc:
        yield nc


def load_project_workflows(project: Path, *, strict: bool) -> list[Workflow]:
    """Every workflow the project's ``workflows/`` folder defines. ``strict``: a broken file is an error
    (serving); otherwise it is reported on stderr and skipped (reading needs only the instance's workflow)."""
    from ._loader import load_workflows

    folder = project / "workflows"
    if not folder.is_dir():
        raise WorkflowLoadError(f"no workflows/ folder in {project.resolve()}", path=str(folder))
    found: list[Workflow] = []
    defined_in: dict[str, Path] = {}
    for file in sorted(folder.iterdir()):
        if file.suffix.lower() not in DOCUMENT_SUFFIXES or file.name.startswith(("_", ".")):
            continue
        try:
            loaded = load_workflows(file)
            for wf in loaded:
                if wf.name in defined_in:  # (the engine would refuse the second without saying where both are)
                    raise DuplicateNameError(
                        f"workflow {wf.name!r} is defined in both {defined_in[wf.name]} and {file}",
                        workflow=wf.name,
                        name=wf.name,
                    )
        except CircuitBreakerError as err:
            if strict:
                raise
            typer.echo(f"warning: skipping {file}: {' '.join(str(err).split())}", err=True)
            continue
        found.extend(loaded)
        defined_in.update((wf.name, file) for wf in loaded)
    return found


@asynccontextmanager
async def project_engine(nc: NATS, settings: Settings, project: Path, *, drive: bool) -> AsyncIterator[Engine]:
    """An engine on the JetStream store with the project's workflows; ``drive=False`` only folds."""
    from ..engine import Engine
    from ..nats import JetStreamStore

    workflows = load_project_workflows(project, strict=drive)
    store = JetStreamStore(connection=nc, settings=settings)
    remote = settings.remote_executors if drive else ()
    _check_kinds(remote, workflows, project)
    async with Engine(
        store=store,
        workflows=workflows,
        drive=drive,
        remote_executors=remote,
        keep_finished=settings.keep_finished,
        remember_finished=settings.remember_finished,
        mark_every=settings.mark_every,
    ) as engine:
        yield engine


def _check_kinds(kinds: Iterable[str], workflows: list[Workflow], project: Path) -> None:
    """``remote_executors`` names executor kinds: one that no executor has (a typo: ``dockr``) would leave those
    actions running inside the engine without a word, so it is refused as a bad setting."""
    wanted = set(kinds)
    if not wanted:
        return
    from ..executors import default_registry

    known = set(default_registry(project).names())
    for wf in workflows:
        for ct in wf.compile().transitions.values():
            name = getattr(getattr(ct.handler, "executor", None), "name", None)
            if isinstance(name, str):
                known.add(name)
    unknown = sorted(wanted - known)
    if unknown:
        named = ", ".join(map(repr, unknown))
        raise ConfigError(
            f"remote_executors: no executor is named {named} (known: {', '.join(sorted(known))})",
            setting="remote_executors",
        )


# -- serve -------------------------------------------------------------------------------------------------
def serve(
    nats_url: NatsUrlOpt = None,
    project: ProjectOpt = Path(),
    remote_executors: Annotated[
        str | None,
        typer.Option(metavar="KINDS", help="Run the actions of these executor kinds on workers (comma-separated)."),
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(metavar="PORT", help="Serve /healthz, /readyz and /metrics here (0: a free port).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run an engine for the project's workflows/ on NATS until Ctrl-C or SIGTERM.

    It resumes the stored instances, answers injections (``cb.inject.<workflow>`` and the inbox) and manual
    firings (``circuit-breaker fire``), hands remote actions to workers and applies their results, and
    publishes every state change as an event.

    Ctrl-C or SIGTERM: nothing new starts; manual firings being answered and local actions running get
    CB_STOP_GRACE seconds (default 10) to finish. Local actions still running then are cancelled and run
    again when an engine loads their instances; a manual firing still running is not stored (its asker is
    answered "unavailable"). A second Ctrl-C or SIGTERM stops at once (exit 1), telling the askers of
    control requests in hand "unavailable" first. Settings: CB_* variables or
    circuit_breaker.toml.
    """
    from ._app import _errors

    with _errors(as_json):
        overrides: dict[str, Any] = {}
        if remote_executors is not None:
            overrides["remote_executors"] = remote_executors
        if metrics_port is not None:
            overrides["metrics_port"] = metrics_port
        settings = settings_for(nats_url, project, **overrides)
        if not (project / "workflows").is_dir():  # before an embedded server is started for nothing
            raise WorkflowLoadError(f"no workflows/ folder in {project.resolve()}", path=str(project / "workflows"))
        asyncio.run(_serve(settings, project, as_json))


async def _serve(settings: Settings, project: Path, as_json: bool) -> None:
    from .._gc import tune_gc
    from ..nats import InjectService
    from ..nats._control import ControlService
    from ..workers import setup_logging

    setup_logging()  # JSON lines when stderr is not a terminal, with workflow, instance and task fields
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    threads = _CountingExecutor()
    loop.set_default_executor(threads)
    last_words: list[Callable[[], Awaitable[None]]] = []
    stopper = _stopper(stop, loop, settings.stop_grace, last_words)
    for sig in stop_signals():
        loop.add_signal_handler(sig, _first_only(stop, stopper) if sig == signal.SIGHUP else stopper)
    async with nats_session(settings) as nc, project_engine(nc, settings, project, drive=True) as engine:
        if not engine.workflows:
            log.warning("%s defines no workflow: this serve runs nothing", (project / "workflows").resolve())
        ops, probe = await _start_ops(settings, engine, nc)  # (first: a port it cannot have stops serve here)
        inject = InjectService(engine, nc, settings=settings.stream, answer_unknown=settings.answer_unknown)
        control = ControlService(engine, nc)
        last_words.append(control.answer_unavailable)
        await inject.start()
        await control.start()
        if settings.gc_tuning:
            tune_gc()  # the workflows and stored instances are loaded: the start-up heap is done
        url = nc.connected_url
        where = f"{url.scheme}://{url.hostname}:{url.port}" if url is not None else "NATS"
        if as_json:
            ready = {"url": where, "workflows": engine.workflows, "metrics_port": ops.port if ops else None}
            sys.stdout.write(json.dumps(ready) + "\n")
        else:
            extra = f", metrics on port {ops.port}" if ops else ""
            typer.echo(f"serving {', '.join(engine.workflows) or 'no workflows'} on {where}{extra} (Ctrl-C stops)")
        sys.stdout.flush()
        await stop.wait()
        if probe is not None:
            probe.cancel()
        if ops is not None:
            ops.stop()
        # Nothing new starts; manual firings and injections being answered and the local actions running get
        # stop_grace seconds in all.
        engine.stop_starting()
        deadline = loop.time() + settings.stop_grace
        await asyncio.gather(
            control.stop_starting(grace=settings.stop_grace), inject.stop(grace=settings.stop_grace)
        )  # (pause and cancel are still answered until the engine is closed)
        await engine.close(grace=max(0.0, deadline - loop.time()))
        await control.stop(grace=1.0)
    _exit_if_threads_run(threads)


class _CountingExecutor(ThreadPoolExecutor):
    """serve's default executor (``asyncio.to_thread``: sync actions, executors' blocking calls): it knows how
    many calls have not ended, because a thread cannot be cancelled and a stop must not wait for one."""

    def __init__(self) -> None:
        super().__init__(thread_name_prefix="cb-serve")
        self.unfinished = 0
        self._count = threading.Lock()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        def counted() -> Any:
            try:
                return fn(*args, **kwargs)
            finally:
                with self._count:
                    self.unfinished -= 1

        with self._count:
            self.unfinished += 1
        return super().submit(counted)


def _exit_if_threads_run(threads: _CountingExecutor) -> None:
    """Calls running in threads (a sync action, say) cannot be cancelled: leave without waiting for them (their
    firings were not stored: they run again when an engine loads their instances)."""
    if threads.unfinished:
        log.warning(
            "%d call(s) still running in threads (synchronous actions) cannot be cancelled; exiting without "
            "waiting for them (their actions run again when an engine loads their instances)",
            threads.unfinished,
        )
        logging.shutdown()
        sys.stdout.flush()
        os._exit(0)


SHUTDOWN_LIMIT = 30.0  # seconds serve may take to stop after Ctrl-C or SIGTERM before it exits regardless


LAST_WORDS = 1.0  # seconds a process stopping at once gives its last words (answers to requests in hand)


def _stopper(
    stop: asyncio.Event,
    loop: asyncio.AbstractEventLoop,
    grace: float = 0.0,
    last_words: list[Callable[[], Awaitable[None]]] | None = None,
) -> Callable[[], None]:
    """The first Ctrl-C or SIGTERM stops serve cleanly; a second one, or a clean stop that takes longer than
    SHUTDOWN_LIMIT past the ``grace`` running actions get (NATS gone, say), ends the process at once, after at
    most LAST_WORDS seconds of ``last_words`` (telling the askers of requests in hand). Nothing is lost: the
    events are the state."""
    words = last_words if last_words is not None else []

    exiting = threading.Lock()

    def exit_now() -> None:
        from ..nats._embedded import leave_now
        from ..nats._server import _reap_children

        if not exiting.acquire(blocking=False):
            return  # (the loop and the fallback timer both got here: one ends the process)
        leave_now()  # an embedded server other commands still use stays up for them
        _reap_children(grace=2.0)  # one only serve used runs in its own session: it must not outlive serve
        logging.shutdown()
        os._exit(1)

    async def say_then_exit() -> None:
        try:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*(say() for say in words), return_exceptions=True), LAST_WORDS)
        finally:
            exit_now()

    def now(why: str) -> None:
        log.warning("stopping now (%s)", why)
        if not words:
            exit_now()
        fallback = threading.Timer(LAST_WORDS + 1.0, exit_now)  # (should the loop not get to it)
        fallback.daemon = True
        fallback.start()
        ending.append(loop.create_task(say_then_exit()))

    ending: list[asyncio.Task[None]] = []

    def signalled() -> None:
        if stop.is_set():
            now("asked twice")
            return
        stop.set()
        limit = SHUTDOWN_LIMIT + grace
        loop.call_later(limit, now, f"not stopped after {limit:g}s")

    return signalled


def _first_only(stop: asyncio.Event, stopper: Callable[[], None]) -> Callable[[], None]:
    """A closed terminal sends several hang-ups: only the first stops serve (cleanly); none forces it."""

    def hung_up() -> None:
        if not stop.is_set():
            stopper()

    return hung_up


async def _start_ops(settings: Settings, engine: Engine, nc: NATS) -> tuple[Any, asyncio.Task[None] | None]:
    """The engine's /healthz, /readyz and /metrics when a metrics port is set; readiness follows NATS."""
    if settings.metrics_port is None:
        return None, None
    from ..engine._metrics import EngineMetrics
    from ..nats._subjects import EVENTS_STREAM
    from ..workers import Health, OpsServer

    health, metrics = Health(), EngineMetrics(engine)
    try:
        ops = OpsServer(health, metrics, settings.metrics_host, settings.metrics_port)
        ops.start()
    except OSError as err:  # (the port is taken, say): a setting's value, as a bad option is
        where = f"{settings.metrics_host}:{settings.metrics_port}"
        problem = f"metrics_port: cannot serve on {where}: {err.strerror or err}"
        raise ConfigError(problem, setting="metrics_port") from None
    js = nc.jetstream(timeout=2.0)

    async def probe() -> None:
        while True:
            health.connected = nc.is_connected
            try:
                await js.stream_info(EVENTS_STREAM)
                health.streams = True
            except Exception:
                health.streams = False
            await asyncio.sleep(2.0)

    return ops, asyncio.get_running_loop().create_task(probe())


# -- inject --------------------------------------------------------------------------------------------------


def inject(
    workflow: Annotated[str, typer.Argument(help="The workflow to start an instance of.")],
    data: Annotated[
        str | None, typer.Option("--data", "-d", metavar="JSON", help="Token data: JSON, @file.json or @-.")
    ] = None,
    dedupe_id: Annotated[
        str | None, typer.Option("--dedupe-id", help="Injecting again with the same id returns the same instance.")
    ] = None,
    actor: ActorOpt = "cli",
    timeout: Annotated[
        float, typer.Option(metavar="SECONDS", help="How long to wait for an engine.", callback=positive_seconds)
    ] = 10.0,
    nats_url: NatsUrlOpt = None,
    project: ServingProjectOpt = Path(),
    as_json: JsonOpt = False,
) -> None:
    """Start an instance on a serving engine (request/reply on cb.inject.WORKFLOW); prints its id."""
    from ._app import _errors, _parse_data, _print_json

    subject_name("workflow", workflow, "WORKFLOW")
    with _errors(as_json):
        token_data = _parse_data(data)
        settings = settings_for(nats_url, project)
        reply = asyncio.run(_inject(settings, workflow, token_data, dedupe_id, actor, timeout))
    if as_json:
        _print_json(reply.model_dump())
    else:
        typer.echo(reply.instance_id + ("  (already started by this dedupe id)" if reply.duplicate else ""))


async def _inject(
    settings: Settings, workflow: str, data: dict[str, Any], dedupe_id: str | None, actor: str | None, timeout: float
) -> Any:
    from ..nats import Client

    async with nats_session(settings) as nc, Client(connection=nc) as client:
        return await client.inject_reply(workflow, data, dedupe_id, actor=actor, timeout=timeout)


# -- events --------------------------------------------------------------------------------------------------
def events(
    workflow: Annotated[str | None, typer.Option("--workflow", "-w", help="Only this workflow's events.")] = None,
    instance: Annotated[str | None, typer.Option("--instance", "-i", help="Only this instance's events.")] = None,
    types: Annotated[
        list[str] | None, typer.Option("--type", "-t", help="Only events of this type (repeatable).")
    ] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events until Ctrl-C.")] = False,
    since: Annotated[
        str, typer.Option(metavar="start|new|SEQ", help="Where to begin: everything, only new, or a stream sequence.")
    ] = "start",
    nats_url: NatsUrlOpt = None,
    project: ServingProjectOpt = Path(),
    as_json: Annotated[bool, typer.Option("--json", help="One JSON event per line.")] = False,
) -> None:
    """Print stored events (oldest first), optionally filtered; with --follow, then live ones."""
    from ._app import _errors

    start: str | int = int(since) if since.isdigit() else since
    if start not in ("start", "new") and not (isinstance(start, int) and start >= 1):
        raise typer.BadParameter("must be start, new or a stream sequence number (from 1)", param_hint="--since")
    if workflow is not None:
        subject_name("workflow", workflow, "--workflow")
    if instance is not None:
        subject_name("instance", instance, "--instance")
    from ..events import EventType

    known = [t.value for t in EventType]
    for name in types or ():
        if name not in known:
            raise typer.BadParameter(f"unknown event type {name!r} (known: {', '.join(known)})", param_hint="--type")
    with _errors(as_json), contextlib.suppress(KeyboardInterrupt):
        settings = settings_for(nats_url, project)
        asyncio.run(_events(settings, workflow, instance, types, follow, start, as_json))


async def _events(
    settings: Settings,
    workflow: str | None,
    instance: str | None,
    types: list[str] | None,
    follow: bool,
    since: str | int,
    as_json: bool,
) -> None:
    from ..nats import Client

    async with (
        nats_session(settings) as nc,
        Client(connection=nc) as client,
        client.events(workflow, instance, types, since=since, follow=follow) as stream,  # type: ignore[arg-type]
    ):
        async for event in stream:
            _echo_event(event, as_json)


def _echo_event(event: Event, as_json: bool) -> None:
    if as_json:
        line = json.dumps(default_masker().mask(event.model_dump(mode="json")), ensure_ascii=False)
    else:
        what = getattr(event, "transition", None) or getattr(event, "status", None) or ""
        line = f"{event.time:%Y-%m-%d %H:%M:%S}  {event.workflow}  {event.instance_id}  #{event.seq}  {event.type}"
        line += f"  {what}" if what else ""
    sys.stdout.write(default_masker().mask_text(line) + "\n")
    sys.stdout.flush()


# -- instances, status, history ------------------------------------------------------------------------------
def instances(
    workflow: Annotated[str | None, typer.Option("--workflow", "-w", help="Only this workflow's instances.")] = None,
    status: Annotated[
        str | None, typer.Option("--status", "-s", help="Only instances in this status (running, waiting...).")
    ] = None,
    project: ProjectOpt = Path(),
    nats_url: NatsUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the stored instances of the project's workflows, with status and places."""
    from ..engine import InstanceStatus
    from ._app import ExitCode, _errors, _Fail, _print_json

    with _errors(as_json):
        if status is not None and status not in {s.value for s in InstanceStatus}:
            allowed = ", ".join(s.value for s in InstanceStatus)
            raise _Fail(ExitCode.USAGE, f"--status {status!r} is not a status; use one of {allowed}")
        settings = settings_for(nats_url, project)
        found = asyncio.run(_instances(settings, project, workflow, status))
    if as_json:
        _print_json([i.summary() for i in found])
        return
    from rich.table import Table

    from ._app import _console

    table = Table(title=f"{len(found)} instance(s)", title_justify="left")
    # Ids whole, whatever the terminal's width (they are what status, fire and history take): others give way.
    table.add_column("instance", no_wrap=True, min_width=max((len(i.id) for i in found), default=8))
    for column in ("workflow", "status", "places", "updated"):
        table.add_column(column)
    for i in found:
        table.add_row(i.id, i.workflow, i.status.value, ", ".join(i.places), f"{i.updated_at:%Y-%m-%d %H:%M:%S}")
    _console().print(table)


async def _instances(settings: Settings, project: Path, workflow: str | None, status: str | None) -> list[Any]:
    from ._app import ExitCode, _Fail

    async with nats_session(settings) as nc, project_engine(nc, settings, project, drive=False) as engine:
        if workflow is not None and workflow not in engine.workflows:
            known = ", ".join(engine.workflows) or "none"
            raise _Fail(ExitCode.USAGE, f"--workflow {workflow!r} is not a workflow of the project (it has: {known})")
        return await engine.instances(workflow, status)


def status(
    instance: Annotated[str, typer.Argument(help="The instance id.")],
    project: ProjectOpt = Path(),
    nats_url: NatsUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one stored instance: status, tokens, history, incidents, manual transitions it waits on."""
    from ._app import _errors, _print_json, _show_instance

    with _errors(as_json):
        settings = settings_for(nats_url, project)
        inst = asyncio.run(_status(settings, project, instance))
    if as_json:
        _print_json(inst.summary())
    else:
        _show_instance(inst)


async def _status(settings: Settings, project: Path, instance: str) -> Any:
    async with nats_session(settings) as nc, project_engine(nc, settings, project, drive=False) as engine:
        try:
            return await engine.get(instance)
        except UnknownInstanceError:
            from ..nats._control import workflow_of

            name = await workflow_of(nc, instance)  # (UnknownInstanceError when nothing of it is stored)
            if name not in engine.workflows:  # stored, but of a workflow this project does not define
                raise WorkflowLoadError(
                    f"workflow {name!r} of instance {instance} is not defined in {project / 'workflows'}"
                ) from None
            raise UnknownInstanceError(instance) from None


def history(
    instance: Annotated[str, typer.Argument(help="The instance id.")],
    at: Annotated[
        int | None, typer.Option("--at", min=1, metavar="N", help="Show the instance as it was after event N.")
    ] = None,
    project: ProjectOpt = Path(),
    nats_url: NatsUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The instance's events from the stream, and its marking after event N (default: the last)."""
    from ._app import _errors, _print_json

    with _errors(as_json):
        settings = settings_for(nats_url, project)
        stored, snapshot = asyncio.run(_history(settings, project, instance, at))
    masker = default_masker()
    if as_json:
        _print_json(
            {
                "instance": instance,
                "at": snapshot["seq"],
                "status": snapshot["status"],
                "marking": snapshot["marking"],
                "events": [e.model_dump(mode="json") for e in stored],
            }
        )
        return
    for event in stored:
        _echo_event(event, False)
    typer.echo(f"after event {snapshot['seq']}: {snapshot['status']}")
    for place, tokens in snapshot["marking"].items():
        for data in tokens:
            typer.echo(f"  {place}: {json.dumps(masker.mask(data), ensure_ascii=False, default=str)}")


async def _history(settings: Settings, project: Path, instance: str, at: int | None) -> tuple[list[Event], Any]:
    from ..engine._run import Run
    from ..nats import JetStreamStore

    async with nats_session(settings) as nc:
        store = JetStreamStore(connection=nc, settings=settings)
        await store.open()
        stored = await store.read(instance)
        if not stored:
            raise UnknownInstanceError(instance)
        upto = stored if at is None else stored[:at]
        if at is not None and at > len(stored):
            raise CircuitBreakerError(f"instance {instance} has {len(stored)} events; --at {at} is past the last")
        name = stored[0].workflow
        workflows = {w.name: w for w in load_project_workflows(project, strict=False)}
        if name not in workflows:
            raise WorkflowLoadError(
                f"workflow {name!r} of instance {instance} is not defined in {project / 'workflows'}"
            )
        run = Run(instance, workflows[name].compile())
        for event in upto:
            run.apply(event)
        marking = {place: [t.data for t in tokens] for place, tokens in run.marking.items()}
        return upto, {"seq": run.seq, "status": run.status.value, "marking": marking}


# -- fire ------------------------------------------------------------------------------------------------------
def subject_name(kind: str, value: str, hint: str) -> str:
    """A name that travels in a NATS subject (no dots, wildcards or spaces), else a usage error naming it."""
    from ..nats._events import subject_token

    try:
        return subject_token(kind, value)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint=hint) from None


def positive_seconds(value: float) -> float:
    """A wait of 0 or less would give up before the engine could answer, after asking it to act."""
    if value <= 0:
        raise typer.BadParameter("must be more than 0 seconds")
    return value


TimeoutOpt = Annotated[
    float, typer.Option(metavar="SECONDS", help="How long to wait for the engine.", callback=positive_seconds)
]
InstanceArg = Annotated[str, typer.Argument(help="The instance id.")]


def fire(
    instance: InstanceArg,
    transition: Annotated[str, typer.Argument(help="The manual transition to fire.")],
    data: Annotated[
        str | None, typer.Option("--data", "-d", metavar="JSON", help="Data merged into the token (a verdict...).")
    ] = None,
    actor: ActorOpt = "cli",
    timeout: TimeoutOpt = 30.0,
    nats_url: NatsUrlOpt = None,
    project: ServingProjectOpt = Path(),
    as_json: JsonOpt = False,
) -> None:
    """Fire a manual transition through a serving engine; prints the instance afterwards."""
    _control("fire", instance, actor, timeout, nats_url, project, as_json, transition=transition, data=data)


def _control(
    verb: Verb,
    instance: str,
    actor: str | None,
    timeout: float,
    nats_url: list[str] | None,
    project: Path,
    as_json: bool,
    *,
    data: str | None = None,
    **extra: Any,
) -> None:
    """Ask the serving engine to ``verb`` the instance (``data``: JSON, @file or @- merged into the token, for
    fire); print the instance afterwards."""
    from ..engine import Instance
    from ..nats._control import ControlRequest, control_request, request_control
    from ._app import _errors, _parse_data, _print_json, _show_instance

    async def ask(request: ControlRequest, settings: Settings) -> dict[str, Any]:
        async with nats_session(settings) as nc:
            return await request_control(nc, verb, request, timeout=timeout)

    with _errors(as_json):
        merged = _parse_data(data) if data is not None else None
        request = control_request(instance_id=instance, actor=actor, data=merged, **extra)
        done = Instance.model_validate(asyncio.run(ask(request, settings_for(nats_url, project))))
    if as_json:
        _print_json(done.summary())
    else:
        _show_instance(done)


def _control_command(verb: Verb, doc: str) -> Callable[..., None]:
    """A command that asks the serving engine to ``verb`` an instance (retry, pause, resume)."""

    def command(
        instance: InstanceArg,
        actor: ActorOpt = "cli",
        timeout: TimeoutOpt = 30.0,
        nats_url: NatsUrlOpt = None,
        project: ServingProjectOpt = Path(),
        as_json: JsonOpt = False,
    ) -> None:
        _control(verb, instance, actor, timeout, nats_url, project, as_json)

    command.__name__ = command.__qualname__ = verb
    command.__doc__ = doc
    return command


retry = _control_command(
    "retry", "Try a failed instance again (its incidents resolved), or reconsider what a waiting one's rules refused."
)
pause = _control_command("pause", "Pause an instance: nothing fires until it is resumed (running actions finish).")
resume = _control_command("resume", "Resume a paused instance.")


def cancel(
    instance: InstanceArg,
    reason: Annotated[str | None, typer.Option(help="Why (kept in the history).")] = None,
    actor: ActorOpt = "cli",
    timeout: TimeoutOpt = 30.0,
    nats_url: NatsUrlOpt = None,
    project: ServingProjectOpt = Path(),
    as_json: JsonOpt = False,
) -> None:
    """Cancel an instance: running actions are stopped and no token moves any more."""
    _control("cancel", instance, actor, timeout, nats_url, project, as_json, reason=reason)


# -- schema --------------------------------------------------------------------------------------------------
def schema(which: Annotated[SchemaName, typer.Argument(help="inject (request), reply, or event.")]) -> None:
    """Print the JSON schema of an inject request, an inject reply or an event, for other languages."""
    from ..nats import event_schema, inject_reply_schema, inject_request_schema

    make = {
        SchemaName.inject: inject_request_schema,
        SchemaName.reply: inject_reply_schema,
        SchemaName.event: event_schema,
    }[which]
    sys.stdout.write(json.dumps(make(), indent=2) + "\n")
