"""Processes sharing one embedded nats-server: the last one to leave stops it, whoever started it.

Every command that uses the embedded server of a data dir (``serve``, ``events --follow``, a worker,
``circuit-breaker nats`` itself) holds a shared ``flock`` on ``<data dir>/nats-users.lock`` for as long as it
uses it. On leaving it gives its share up and tries to take the lock exclusively without waiting: only when that
works is nobody else using the server, and it stops it. So stopping the command that happened to start the
server does not pull it from under a ``serve`` still running on it, and since the kernel drops the lock of a
process that dies, a ``kill -9`` neither keeps the server up for ever nor leaves it to nobody: the next command
that uses it stops it when it leaves.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path

from ..errors import NatsServerError
from ._server import running_server

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; the process that starts a server stops it
    fcntl = None  # type: ignore[assignment]

__all__ = ["ServerUse", "stop_running_server", "stop_running_server_now"]

log = logging.getLogger(__name__)

USERS_LOCK = "nats-users.lock"
JOIN_TIMEOUT = 30.0  # seconds to wait for a leaving process that is stopping the server (it holds the lock)
STOP_TIMEOUT = 10.0  # seconds a server stopped by pid gets before SIGKILL


class ServerUse:
    """This process's use of the embedded server on ``data_dir`` (see the module docstring)."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = Path(data_dir).absolute()
        self._fd: int | None = None

    @property
    def sharing(self) -> bool:
        return self._fd is not None

    async def join(self, timeout: float = JOIN_TIMEOUT) -> None:
        """Take a share; waits while a leaving process stops the server (then this one finds none running)."""
        if fcntl is None or self._fd is not None:  # pragma: no cover - Windows
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.data_dir / USERS_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise NatsServerError(
                            f"the nats-server in {self.data_dir} is being stopped by another process and did not "
                            f"stop within {timeout:g}s"
                        ) from None
                    await asyncio.sleep(0.05)
        except BaseException:  # (also a cancelled wait: the descriptor must not leak)
            os.close(fd)
            raise
        self._fd = fd

    def leave(self) -> bool:
        """Give the share up. True when no other process uses the server now: the caller then holds the lock
        exclusively (others wait to join), stops the server, and calls :meth:`release`."""
        fd = self._fd
        if fcntl is None or fd is None:  # pragma: no cover - Windows: the starter stops it, as before
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.release()
            return False
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


async def stop_running_server(data_dir: str | os.PathLike[str], timeout: float = STOP_TIMEOUT) -> None:
    """Stop the server another process started on ``data_dir`` (it left, or died), by the pid its lock file
    names: SIGTERM, then SIGKILL after ``timeout``. Nothing when none runs."""
    await asyncio.to_thread(stop_running_server_now, data_dir, timeout)


def stop_running_server_now(data_dir: str | os.PathLike[str], timeout: float = STOP_TIMEOUT) -> None:
    """:func:`stop_running_server` without an event loop (a process that exits at once)."""
    holder = running_server(data_dir)
    pid = holder.get("pid") if holder else None
    if not isinstance(pid, int):
        return
    log.info("stopping the nats-server (pid %d) on %s: no process uses it any more", pid, data_dir)
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while running_server(data_dir) is not None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        else:
            return
