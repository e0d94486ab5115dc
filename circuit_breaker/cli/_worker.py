"""``circuit-breaker worker`` (run tasks for engines) and ``circuit-breaker dlq list|show|retry|drop``.

Where NATS is comes from the settings (``CB_NATS_URL``, ``circuit_breaker.toml``, ``--nats-url``), as for the
other NATS commands; worker settings from ``CB_WORKER__*``, the ``[worker]`` table, or the flags here.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ._durable import ActorOpt, JsonOpt, NatsUrlOpt, TimeoutOpt, nats_session, project_dir, settings_for
from ._signals import stop_signals

if TYPE_CHECKING:
    from ..config import Settings, WorkerSettings
    from ..executors import ExecutorRegistry
    from ..workers import Health, Metrics, OpsServer

__all__ = ["dlq_app", "worker"]

log = logging.getLogger("circuit_breaker.worker")


def _settings(nats_url: list[str] | None, project: Path | None = None, **worker: Any) -> Settings:
    """The settings with the worker flags given on top; a bad value (``--metrics-port 99999``) is a ConfigError
    naming the setting (``worker.metrics_port``), as the environment's and the settings file's values are. With
    ``project``, its settings file and data dir (the embedded server serve shares)."""
    given = {k: v for k, v in worker.items() if v is not None}
    return settings_for(nats_url, project, worker=given or None)


# -- worker --------------------------------------------------------------------------------------------------
def worker(
    executors: Annotated[
        str | None, typer.Option(metavar="KINDS", help="Executor kinds to serve, comma-separated (default: all).")
    ] = None,
    concurrency: Annotated[int | None, typer.Option(min=1, help="Tasks run at once (default 4).")] = None,
    metrics_port: Annotated[
        int | None, typer.Option(metavar="PORT", help="Serve /healthz, /readyz and /metrics here (0: a free port).")
    ] = None,
    status: Annotated[
        bool, typer.Option("--status", help="Print the tasks waiting per executor kind and the dead letters; exit.")
    ] = False,
    project: Annotated[
        Path,
        typer.Option(
            "--project",
            "-p",
            metavar="DIR",
            help="The project whose executors/ folder to serve too (default: the current directory).",
        ),
    ] = Path(),
    nats_url: NatsUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run tasks that engines hand out (remote actions) until Ctrl-C or SIGTERM.

    Pulls from the work queue of each executor kind it serves, shared with every other worker; SIGTERM lets
    running tasks finish (up to worker.grace seconds) and hands back the rest. Needs the executor registry
    (built-ins, installed plug-ins and the project's executors/ folder, as `circuit-breaker executors` lists
    them), not the workflows.

    ack_wait is shared by every worker of a kind (the consumer cb-workers-<kind>): a worker raises it to its
    own value, never lowers it (a running worker may rely on the longer one), and warns when it finds a longer
    one; each worker's heartbeats follow the consumer's value. To lower it, stop that kind's workers first.
    """
    from ._app import _errors

    with _errors(as_json):
        kinds = [k.strip() for k in executors.split(",") if k.strip()] if executors else None
        project_dir(project)
        registry = None if status else _registry(project)  # (--status runs no executor)
        if kinds and registry is not None:  # checked before NATS is reached (or an embedded server started)
            known = registry.names()
            unknown = sorted(k for k in kinds if k not in known)
            if unknown:
                raise typer.BadParameter(
                    f"executor kind(s) {unknown} are not registered; known: {', '.join(known)}",
                    param_hint="--executors",
                )
        settings = _settings(
            nats_url, project, executors=kinds, concurrency=concurrency, metrics_port=metrics_port
        )
        if registry is None:
            asyncio.run(_status(settings, as_json))
            return
        asyncio.run(_serve(settings, registry, as_json))


def _registry(project: Path) -> ExecutorRegistry:
    """Built-ins, plug-ins and the project's executors/ folder: what `circuit-breaker executors` lists, so a
    kind it shows can be served. A folder file that cannot be imported (or a name clash) stops the worker."""
    from ..errors import ExecutorConfigError
    from ..executors import default_registry
    from ._app import ExitCode, _Fail

    if not project.is_dir():
        raise typer.BadParameter(f"{str(project)!r} is not a directory", param_hint="--project")
    try:
        return default_registry(project.resolve())
    except ExecutorConfigError as err:
        raise _Fail(ExitCode.LOAD, str(err)) from None


def _ops_server(settings: WorkerSettings, health: Health, metrics: Metrics) -> OpsServer | None:
    """The /healthz, /readyz and /metrics server when a port is set; a port it cannot listen on (in use,
    privileged) is a ConfigError naming it, before NATS is reached."""
    from ..errors import ConfigError
    from ..workers import OpsServer

    if settings.metrics_port is None:
        return None
    where = f"{settings.metrics_host}:{settings.metrics_port}"
    try:
        return OpsServer(health, metrics, settings.metrics_host, settings.metrics_port)
    except OSError as err:
        reason = "already in use" if err.errno == errno.EADDRINUSE else (err.strerror or str(err))
        raise ConfigError(
            f"worker.metrics_port: cannot serve metrics on {where}: {reason} (use another --metrics-port, or 0 "
            "for a free one)",
            setting="worker.metrics_port",
        ) from None


async def _serve(settings: Settings, registry: ExecutorRegistry, as_json: bool) -> None:
    from contextlib import AsyncExitStack

    from .._gc import tune_gc
    from ..nats._embedded import connect_nats, server_urls
    from ..secrets import mask_logs
    from ..workers import Health, Metrics, Worker, setup_logging

    setup_logging()
    mask_logs()
    health, metrics = Health(), Metrics()
    ops = _ops_server(settings.worker, health, metrics)
    if ops is not None:
        ops.start()
    holder: dict[str, Worker] = {}

    async def on_error(err: Exception) -> None:
        if "worker" in holder:
            holder["worker"].note_nats_error(err)

    async def on_reconnected() -> None:
        if "worker" in holder:
            holder["worker"].note_reconnected()
        log.info("reconnected to NATS; pull subscriptions are re-created")

    async def on_disconnected() -> None:
        health.connected = False

    leaving = AsyncExitStack()  # (the embedded server: shared with the project's other commands, see _sharing)
    urls = await leaving.enter_async_context(server_urls(settings))
    try:
        nc = await connect_nats(
            settings, urls, error_cb=on_error, reconnected_cb=on_reconnected, disconnected_cb=on_disconnected
        )
        wk = holder["worker"] = Worker(
            nc, settings.worker, stream=settings.stream, registry=registry, health=health, metrics=metrics
        )
        try:
            await wk.start()
            if settings.gc_tuning:
                tune_gc()
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in stop_signals():
                loop.add_signal_handler(sig, stop.set)
            ready = {"worker": wk.worker_id, "executors": wk.kinds, "metrics_port": ops.port if ops else None}
            if as_json:
                sys.stdout.write(json.dumps(ready) + "\n")
            else:
                where = f", metrics on port {ops.port}" if ops else ""
                typer.echo(f"worker {wk.worker_id} serves {', '.join(wk.kinds)}{where} (Ctrl-C stops)")
            sys.stdout.flush()
            await stop.wait()
            await wk.stop()
        finally:
            try:
                await asyncio.wait_for(nc.drain(), 5.0)
            except Exception:
                await nc.close()
    finally:
        if ops is not None:
            ops.stop()
        await leaving.aclose()


async def _status(settings: Settings, as_json: bool) -> None:
    from ..workers import list_dead_letters, pending_tasks

    async with nats_session(settings) as nc:
        js = nc.jetstream(timeout=5.0)
        waiting = await pending_tasks(js)
        letters = await list_dead_letters(js)
    if as_json:
        sys.stdout.write(json.dumps({"pending": waiting, "dead_letters": len(letters)}) + "\n")
        return
    for kind, count in waiting.items():
        typer.echo(f"{kind}: {count} task(s) waiting or running")
    if not waiting:
        typer.echo("no tasks waiting")
    typer.echo(f"{len(letters)} dead letter(s) (circuit-breaker dlq list)")


# -- dlq -----------------------------------------------------------------------------------------------------
dlq_app = typer.Typer(
    help="Dead letters: tasks that failed max_deliver times, and malformed task messages.", no_args_is_help=True
)
EntryArg = Annotated[int, typer.Argument(metavar="ID", help="The dead letter's id, as `dlq list` shows it.")]


def _dlq(nats_url: list[str] | None, action: Any, *, connection: bool = False, as_json: bool = False) -> Any:
    """Run ``action`` with a JetStream context (or, with ``connection``, the NATS connection) and CLI errors."""
    from ._app import _errors

    with _errors(as_json):
        settings = _settings(nats_url)

        async def run() -> Any:
            async with nats_session(settings) as nc:
                return await action(nc if connection else nc.jetstream(timeout=5.0))

        return asyncio.run(run())


@dlq_app.command("list")
def dlq_list(nats_url: NatsUrlOpt = None, as_json: JsonOpt = False) -> None:
    """List the dead letters, oldest first."""
    from ..workers import list_dead_letters

    letters = _dlq(nats_url, list_dead_letters, as_json=as_json)
    if as_json:
        rows = [{"id": seq, **letter.model_dump(mode="json", exclude={"raw"})} for seq, letter in letters]
        sys.stdout.write(json.dumps(rows) + "\n")
        return
    if not letters:
        typer.echo("no dead letters")
    for seq, letter in letters:
        task = letter.task
        if task is None:
            typer.echo(f"{seq}  {letter.subject}  malformed message  {letter.reason}: {letter.message}")
            continue
        where = f"{task.workflow} instance {task.instance_id} transition {task.transition}"
        typer.echo(
            f"{seq}  task {task.task_id} attempt {task.attempt} ({task.kind}) of {where}  {letter.reason}: "
            f"{letter.message}"
        )


@dlq_app.command("show")
def dlq_show(entry: EntryArg, nats_url: NatsUrlOpt = None) -> None:
    """Print one dead letter as JSON: the task, the reason, the deliveries and the last error."""
    from ..secrets import default_masker
    from ..workers import get_dead_letter

    letter = _dlq(nats_url, lambda js: get_dead_letter(js, entry), as_json=True)  # (it prints JSON only)
    sys.stdout.write(json.dumps(default_masker().mask(letter.model_dump(mode="json")), indent=2) + "\n")


@dlq_app.command("retry")
def dlq_retry(
    entry: EntryArg,
    actor: ActorOpt = "cli",
    timeout: TimeoutOpt = 30.0,
    nats_url: NatsUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Hand the task out again as its next attempt, and remove the dead letter.

    The engine serving the task's workflow does it, so the instance records the retry and runs again if this
    task was all that failed it. With no engine serving the workflow, the task goes straight back on its
    queue, and an engine applies its result when it runs."""
    from ..nats._control import retry_dead_letter_via_engine
    from ..nats._subjects import task_subject

    async def retry(nc: Any) -> Any:
        return await retry_dead_letter_via_engine(nc, entry, actor=actor, timeout=timeout)

    done = _dlq(nats_url, retry, connection=True, as_json=as_json)
    task = done.task
    if as_json:
        status = (done.instance or {}).get("status")
        row = {"task_id": task.task_id, "attempt": task.attempt, "workflow": task.workflow}
        row |= {"instance_id": task.instance_id, "by_engine": done.by_engine, "instance_status": status}
        sys.stdout.write(json.dumps(row) + "\n")
        return
    where = f"attempt {task.attempt} on {task_subject(task.kind, task.task_id)}"
    if done.by_engine:
        status = (done.instance or {}).get("status", "?")
        typer.echo(
            f"task {task.task_id} handed out again by the engine as {where}; instance {task.instance_id} is {status}"
        )
    else:
        typer.echo(
            f"task {task.task_id} queued again as {where} (no engine serves workflow {task.workflow!r} or knows "
            f"instance {task.instance_id}: an engine applies the result when it runs)"
        )


@dlq_app.command("drop")
def dlq_drop(entry: EntryArg, nats_url: NatsUrlOpt = None) -> None:
    """Delete a dead letter for good."""
    from ..workers import drop_dead_letter

    _dlq(nats_url, lambda js: drop_dead_letter(js, entry))
    typer.echo(f"dead letter {entry} dropped")
