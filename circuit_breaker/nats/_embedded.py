"""A NATS connection at start-up: the embedded server when no URL is configured, and patient connecting.

Patience matters because NATS may come up after us (a compose file, a rolling restart): :func:`connect_nats`
retries with exponential back-off and then fails with one clear error naming the servers (never credentials).

nats-py alone is no help here: with ``max_reconnect_attempts=-1`` (what a long-running engine wants once
connected) its first ``connect()`` never returns while the servers are down, not even on an authorization
error. So each attempt is bounded by a timeout long enough for one pass over the server list.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS

from ..config import Settings, connect_options, redact_url
from ..errors import ConfigError, NatsServerError, NatsUnavailableError
from ._server import NatsServer, running_server
from ._sharing import ServerUse, stop_running_server, stop_running_server_now

__all__ = ["connect_nats", "ensure_server", "leave_now", "nats_connection", "server_urls"]

log = logging.getLogger(__name__)

ErrorCallback = Callable[[Exception], Awaitable[None]]


async def ensure_server(settings: Settings) -> tuple[list[str], NatsServer | None]:
    """The servers to connect to, and the embedded server if this call started it (the caller stops it).

    With ``nats_url`` set: those URLs and None. Without: a server already running on ``settings.nats_data_dir``
    (``circuit-breaker nats`` in another terminal, another engine) is shared, else one is started there.
    """
    if settings.nats_url:
        return list(settings.nats_url), None
    for attempt in (1, 2):
        url = await _running_url(settings.nats_data_dir)
        if url is not None:
            log.info("using the nats-server already running on %s: %s", settings.nats_data_dir, url)
            return [url], None
        server = NatsServer(settings.nats_data_dir, sync_always=settings.stream.sync_always)
        try:
            await server.start()
        except NatsServerError as err:
            if attempt == 2 or "is in use by another nats-server" not in str(err):
                raise
            continue  # another process started one first, a moment ago: use that one
        log.info("started the embedded nats-server at %s (JetStream in %s)", server.url, server.data_dir)
        return [server.url], server
    raise AssertionError("unreachable")  # pragma: no cover


async def _running_url(data_dir: Path, wait: float = 10.0) -> str | None:
    """The URL of the server running on ``data_dir``, waiting while another process is still starting it (its
    lock is taken before it says where it listens); None when none runs."""
    deadline = time.monotonic() + wait
    while (holder := running_server(data_dir)) is not None:
        if isinstance(holder.get("url"), str):
            return str(holder["url"])
        if time.monotonic() > deadline:
            raise NatsServerError(f"a nats-server is starting on {data_dir} but did not say where within {wait:g}s")
        await asyncio.sleep(0.05)
    return None


async def connect_nats(
    settings: Settings,
    servers: list[str] | None = None,
    *,
    attempts: int | None = None,
    first_delay: float = 0.1,
    max_delay: float = 5.0,
    **extra: Any,
) -> NATS:
    """Connect with :func:`circuit_breaker.config.connect_options`, retrying while NATS is unreachable.

    ``attempts`` defaults to ``settings.connect_attempts``; waits between them double from ``first_delay`` up
    to ``max_delay``. ``extra`` adds or replaces ``nats.connect`` options (``error_cb``, ``reconnected_cb``).
    A rejected authorization is not retried. Raises :class:`NatsUnavailableError`.
    """
    opts = connect_options(settings, servers) | extra
    _require_nkeys(opts)
    urls = [redact_url(u) for u in opts["servers"]]
    tries = settings.connect_attempts if attempts is None else attempts
    user_error_cb: ErrorCallback | None = opts.pop("error_cb", None)
    errors: list[BaseException] = []
    attempt_errors = 0
    pass_failed = asyncio.Event()
    connected = False

    async def on_error(err: Exception) -> None:
        nonlocal attempt_errors
        if not connected:  # failed attempts are reported once, in NatsUnavailableError
            errors.append(err)
            attempt_errors += 1
            if attempt_errors >= len(urls):  # every server failed once: no need to wait for nats-py's own retry
                pass_failed.set()
            log.debug("connecting to NATS: %s: %s", type(err).__name__, err)
        elif user_error_cb is not None:
            await user_error_cb(err)
        else:
            log.warning("NATS: %s: %s", type(err).__name__, err or "(no detail)")

    # One pass over every server, each with its connect timeout, plus a margin for the handshake.
    per_attempt = float(opts["connect_timeout"]) * len(urls) + 1.0
    started, delay = time.monotonic(), first_delay
    for attempt in range(1, tries + 1):
        attempt_errors = 0
        pass_failed.clear()
        nc = NATS()
        if await _attempt(nc.connect(**opts, error_cb=on_error), pass_failed, per_attempt):
            connected = True
            return nc
        await _close_quietly(nc)
        refusal = _refusal(errors)
        if refusal is not None:
            raise NatsUnavailableError(
                f"NATS at {', '.join(urls)} rejected the connection: {_describe([refusal])}; "
                "check nats_user/nats_password, nats_token, nats_creds or nats_nkey_seed",
                servers=urls,
                attempts=attempt,
            )
        if attempt < tries:
            log.info(
                "NATS at %s unreachable (attempt %d of %d); retrying in %.1fs", ", ".join(urls), attempt, tries, delay
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)
    elapsed = time.monotonic() - started
    raise NatsUnavailableError(
        f"cannot reach NATS at {', '.join(urls)} after {tries} attempt{'s' if tries != 1 else ''} "
        f"over {elapsed:.1f}s: {_describe(errors)}",
        servers=urls,
        attempts=tries,
    )


def _require_nkeys(opts: dict[str, Any]) -> None:
    """nats-py needs the optional ``nkeys`` package for .creds files and nkey seeds; say so before connecting."""
    if ("user_credentials" in opts or "nkeys_seed" in opts) and importlib.util.find_spec("nkeys") is None:
        raise ConfigError(
            "nats_creds and nats_nkey_seed need the nkeys package: pip install nkeys", setting="nats_creds"
        )


async def _attempt(connect: Coroutine[Any, Any, None], pass_failed: asyncio.Event, timeout: float) -> bool:
    """Run one ``connect()`` until it succeeds (True), every server failed once, or ``timeout`` (False)."""
    task = asyncio.ensure_future(connect)
    failed = asyncio.ensure_future(pass_failed.wait())
    try:
        await asyncio.wait({task, failed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pending in (task, failed):
            pending.cancel()
        await asyncio.gather(task, failed, return_exceptions=True)
    return task.done() and not task.cancelled() and task.exception() is None


def _refusal(errors: list[BaseException]) -> BaseException | None:
    """The server's refusal of the credentials, if it refused them (retrying will not help then).

    The server closes the connection right after saying so, so a connection reset usually follows it.
    """
    for err in errors:
        text = str(err).lower()
        if isinstance(err, nats.errors.AuthorizationError) or "authoriz" in text or "authenticat" in text:
            return err
    return None


def _describe(errors: list[BaseException]) -> str:
    """The most telling error seen: the server's or socket's own words beat our timeout."""
    for err in reversed(errors):
        if not isinstance(err, TimeoutError) and str(err):
            return f"{type(err).__name__}: {err}"
    return "no answer" if not errors else f"{type(errors[-1]).__name__}: timed out"


async def _close_quietly(nc: NATS) -> None:
    try:
        await nc.close()
    except Exception as err:  # a half-open client may fail to close; nothing is left to release
        log.debug("closing a failed NATS connection: %s", err)


@asynccontextmanager
async def server_urls(settings: Settings) -> AsyncIterator[list[str]]:
    """``async with server_urls(settings) as urls:`` the configured NATS, or the embedded server of
    ``settings.nats_data_dir`` (shared, or started here) for as long as the block runs. Leaving, the last process
    that uses the embedded server stops it, whichever started it (see ``_sharing``); its data stays."""
    if settings.nats_url:
        yield list(settings.nats_url)
        return
    use = ServerUse(settings.nats_data_dir)
    await use.join()
    server: NatsServer | None = None
    entry: tuple[ServerUse, NatsServer | None] = (use, None)
    try:
        urls, server = await ensure_server(settings)
        entry = (use, server)
        _in_use.append(entry)
        yield urls
    finally:
        if entry in _in_use:
            _in_use.remove(entry)
        await _leave(use, server)


async def _leave(use: ServerUse, server: NatsServer | None) -> None:
    if use.leave():
        try:
            if server is not None:
                await server.stop()
            else:
                await stop_running_server(use.data_dir)  # (its starter left it running for this one, or died)
        finally:
            use.release()
    elif server is not None:
        log.info("leaving the nats-server on %s running: other processes use it", use.data_dir)
        server.detach()


_in_use: list[tuple[ServerUse, NatsServer | None]] = []  # this process's uses of embedded servers, for leave_now


def leave_now() -> None:
    """For a process that exits right now (a second Ctrl-C): leave the embedded servers it uses to the other
    processes that use them; one that nobody else uses is stopped first, and only then is the lock let go, so
    nobody joins a server about to stop."""
    while _in_use:
        use, server = _in_use.pop()
        if not use.leave():
            if server is not None:
                server.detach()
            continue
        if server is not None:
            server.stop_now()
        else:
            stop_running_server_now(use.data_dir, timeout=2.0)
        use.release()


@asynccontextmanager
async def nats_connection(settings: Settings, **extra: Any) -> AsyncIterator[NATS]:
    """``async with nats_connection(settings) as nc:`` a connection to the configured NATS, or to the embedded
    server (see :func:`server_urls`; its data stays in ``settings.nats_data_dir``)."""
    async with server_urls(settings) as urls:
        nc = await connect_nats(settings, urls, **extra)
        try:
            yield nc
        finally:
            await drain_connection(nc)


async def drain_connection(nc: NATS, timeout: float = 5.0) -> None:
    """Let pending publishes and subscription handlers finish, then close; a broken connection just closes, and
    one whose server does not answer (frozen, a black-holed network) is closed within ``timeout`` seconds."""
    if nc.is_connected:
        try:  # nats-py's drain cannot be bounded from outside (it swallows a cancellation, then flushes for
            await nc.flush(timeout=max(1, int(timeout / 2)))  # 10 s): so first make sure the server answers
        except Exception as err:  # (a timeout, or the connection went: either way, close it)
            log.debug("the NATS server does not answer (%s): closing without draining", err)
        else:
            draining = asyncio.get_running_loop().create_task(nc.drain())
            done, _ = await asyncio.wait({draining}, timeout=timeout / 2)
            draining.add_done_callback(lambda task: task.cancelled() or task.exception())
            if not done:  # it stopped answering meanwhile: closed under the drain, which then ends by itself
                log.debug("draining the NATS connection took over %gs: closing it", timeout / 2)
    if not nc.is_closed:
        await _close_quietly(nc)
