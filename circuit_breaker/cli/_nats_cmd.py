"""``circuit-breaker nats``: the embedded nats-server in the foreground, for other processes to share.

Engines, workers and scripts started without a NATS URL find it through its data dir (the same default
``.circuit_breaker/nats``), or are pointed at the URL it prints. Registered on the app in ``_app.py``; kept in
its own module so the server code is imported only when this command runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import CircuitBreakerError
from ..secrets import default_masker
from ._signals import stop_signals

if TYPE_CHECKING:
    from ..nats._server import NatsServer

__all__ = ["NATS_EPILOG", "nats"]

# The meanings of ExitCode in _app (not imported from there: _app imports this module).
_OK, _FAILED, _USAGE = 0, 1, 2

NATS_EPILOG = "\n".join(
    [
        "Exit codes:",
        "  0  stopped by Ctrl-C or SIGTERM",
        "  1  the server could not start (the error quotes its log), or stopped by itself",
        "  2  usage error (bad option, invalid settings)",
    ]
)


def nats(
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535, help="Client port; 0 picks a free one.")] = 0,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            "-d",
            metavar="DIR",
            help="Where JetStream keeps its data (default: the data_dir setting + /nats, i.e. .circuit_breaker/nats).",
        ),
    ] = None,
    sync_always: Annotated[
        bool | None,
        typer.Option(
            "--sync-always/--no-sync-always",
            help="fsync every write before acknowledging it: survives power loss, at about half the throughput "
            "(default: the stream.sync_always setting).",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help='Print one JSON line {"url", "monitor_url", "data_dir"} instead of the URL.')
    ] = False,
) -> None:
    """Run a local nats-server with JetStream in the foreground until Ctrl-C or SIGTERM.

    Prints its client URL on stdout (one line) once it is ready; other processes connect with CB_NATS_URL=<url>.

    Engines and workers started without a NATS URL in the same project share it through its data dir.
    """
    from ..config import load_settings
    from ..nats._server import NatsServer

    try:
        settings = load_settings()
        server = NatsServer(
            data_dir if data_dir is not None else settings.nats_data_dir,
            port=port,
            sync_always=settings.stream.sync_always if sync_always is None else sync_always,
        )
    except CircuitBreakerError as err:
        raise _die(_USAGE, str(err)) from None
    code = asyncio.run(_serve(server, as_json=as_json))
    if code:
        raise typer.Exit(code)


async def _serve(server: NatsServer, *, as_json: bool) -> int:
    """Start, announce, wait for a signal (or the server's own end), stop; returns the exit code."""
    from ..nats._sharing import ServerUse

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in stop_signals():  # (a closed terminal stops the server too, unless under nohup)
        loop.add_signal_handler(sig, stop.set)
    # Counted among its users (see _sharing): the commands that share it never stop it; stopping this does.
    use = ServerUse(server.data_dir)
    try:
        await use.join()
        await server.start()
    except CircuitBreakerError as err:
        use.release()
        _error(str(err))
        return _FAILED
    try:
        _announce(server, as_json=as_json)
        while not stop.is_set():
            if server.exit_code is not None:
                # The server runs in a session of its own (a Ctrl-C here does not reach it); it was stopped
                # from outside, or failed: give a signal to us a moment to arrive, else report it.
                try:
                    await asyncio.wait_for(stop.wait(), 1.0)
                except TimeoutError:
                    _error(f"nats-server stopped by itself (exit code {server.exit_code}); see {server.log_file}")
                    return _FAILED
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
    finally:
        await server.stop()
        use.release()
    typer.echo("nats-server stopped", err=True)
    return _OK


def _announce(server: NatsServer, *, as_json: bool) -> None:
    if as_json:
        info = {"url": server.url, "monitor_url": server.monitor_url, "data_dir": str(server.data_dir)}
        sys.stdout.write(json.dumps(info) + "\n")
    else:
        sys.stdout.write(server.url + "\n")
    sys.stdout.flush()  # a script reading our stdout through a pipe must see the line now, not at exit
    mode = ", fsync on every write" if server.sync_always else ""
    typer.echo(
        f"nats-server {server.url} (monitoring {server.monitor_url}), JetStream in {server.data_dir}{mode}; "
        "Ctrl-C to stop",
        err=True,
    )


def _error(message: str) -> None:
    text = default_masker().mask_text(message)
    head, _, rest = text.partition("\n")
    typer.echo("error: " + " ".join(head.split()), err=True)
    if rest:  # the server's log lines, quoted as they are
        typer.echo(rest, err=True)


def _die(code: int, message: str) -> typer.Exit:
    _error(message)
    return typer.Exit(code)
