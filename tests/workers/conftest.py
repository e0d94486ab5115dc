"""Real worker processes (``circuit-breaker worker``) against the session's real nats-server."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from circuit_breaker.workers import Task, TaskResult, results, submit_task

CLI = shutil.which("circuit-breaker") or str(Path(sys.executable).with_name("circuit-breaker"))

FAST = {
    "CB_WORKER__ACK_WAIT": "2",
    "CB_WORKER__MAX_DELIVER": "3",
    "CB_WORKER__BACKOFF_INITIAL": "0.5",
    "CB_WORKER__BACKOFF_MAX": "4",
    "CB_WORKER__POLL": "0.5",
    "CB_WORKER__GRACE": "10",
}


class WorkerProc:
    """One ``circuit-breaker worker --json`` process; ``ready`` is its start-up line, stderr is collected."""

    def __init__(self, url: str, cwd: Path, *args: str, env: dict[str, str] | None = None) -> None:
        full_env = {**os.environ, **FAST, **(env or {}), "CB_NATS_URL": url}
        self.proc = subprocess.Popen(
            [CLI, "worker", "--json", *args],
            cwd=cwd,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stderr: list[str] = []
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            self.proc.wait(10)
            raise AssertionError(f"worker did not start (exit {self.proc.returncode}): {self.log()}")
        self.ready: dict[str, Any] = json.loads(line)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def log(self) -> str:
        time.sleep(0.2)
        return "".join(self.stderr)

    def records(self) -> list[dict[str, Any]]:
        """The JSON log lines (stderr is not a terminal, so the worker logs JSON)."""
        out = []
        for line in list(self.stderr):
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def spawn(fresh_nats: str, tmp_path: Path) -> Iterator[Callable[..., WorkerProc]]:
    """``spawn("--executors", "set", env={...})`` starts a worker; every one is stopped after the test."""
    started: list[WorkerProc] = []

    def start(*args: str, env: dict[str, str] | None = None) -> WorkerProc:
        worker = WorkerProc(fresh_nats, tmp_path, *args, env=env)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.close()


@pytest.fixture
async def js(fresh_nats: str) -> AsyncIterator[Any]:
    nc = await nats.connect(fresh_nats)
    try:
        yield nc.jetstream(timeout=5.0)
    finally:
        await nc.close()


def make_task(executor: dict[str, Any], n: int = 0, **rest: Any) -> Task:
    return Task.new(workflow="wf", instance_id=f"i{n}", transition="run", executor=executor, **rest)


async def wait_results(js: Any, count: int, timeout: float) -> list[TaskResult]:
    """Poll until at least ``count`` results are stored (or time out and return what is there)."""
    import asyncio

    deadline = time.monotonic() + timeout
    got: list[TaskResult] = []
    while time.monotonic() < deadline:
        got = await results(js)
        if len(got) >= count:
            return got
        await asyncio.sleep(0.3)
    return got


__all__ = ["FAST", "WorkerProc", "make_task", "submit_task", "wait_results"]
