"""The in-process task queue: remote actions of an embedded engine run here, through the same protocol.

An engine without a JetStream store has no workers to hand tasks to, so it runs them itself: the executor is
rebuilt from the task's spec (as a worker would), rendered from the task's data and run in a background task,
and its outcome comes back as a :class:`TaskResult`. The workflow behaves the same embedded and distributed
(two-phase events, fencing, deadlines), which is also what lets the engine's remote path be tested in memory.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import socket
import time
from typing import Any

from ..engine._context import Firing, _current
from ..engine._tasks import NO_ATTEMPTS, TaskAttempts
from ..errors import CircuitBreakerError
from ..events import ErrorInfo
from ..tasks import Task, TaskResult
from ..token import utcnow
from ._base import _DATA, Executor
from ._registry import ExecutorRegistry, default_registry
from ._result import ExecutionResult

__all__ = ["ExecutorCache", "LocalTaskQueue", "execute_task", "expired_error", "prepare_task", "run_task"]

log = logging.getLogger("circuit_breaker.engine")

CACHE = 256  # executors built from specs (one per distinct spec, like a worker's)
DELIVERY_ATTEMPTS = 100  # of one result, 5 s apart at most, while the store cannot be reached


class ExecutorCache:
    """Executors built from task specs, one per distinct spec (``render`` makes each task's own copy of a
    templated one), as the engine runs one executor object for every firing of a transition."""

    def __init__(self, registry: ExecutorRegistry, size: int = CACHE) -> None:
        self.registry = registry
        self.size = size
        self._built: dict[str, Executor] = {}

    def get(self, spec: dict[str, Any]) -> Executor:
        """The executor of ``spec``; raises ExecutorConfigError (or another CircuitBreakerError) when the registry
        cannot build it."""
        key = json.dumps(spec, sort_keys=True, default=str)
        executor = self._built.get(key)
        if executor is None:
            executor = self.registry.from_spec(spec)
            if len(self._built) >= self.size:
                del self._built[next(iter(self._built))]
            self._built[key] = executor
        return executor


def expired_error(task: Task) -> ErrorInfo | None:
    """Why ``task`` must not run any more (its deadline passed), or None."""
    if task.deadline is not None and task.deadline <= utcnow():
        return ErrorInfo(kind="expired", message=f"the task's deadline {task.deadline} had passed", retryable=False)
    return None


def prepare_task(cache: ExecutorCache, task: Task) -> Executor:
    """The executor that runs ``task``: built from its spec, templates filled from its data, and the task's
    timeout applied when the spec sets none. Raises CircuitBreakerError when the spec or data do not fit."""
    shared = cache.get(task.executor)
    runnable = shared.render(task.data)
    if task.timeout is not None and runnable.execution_timeout is None:
        if runnable is shared:  # never change a cached executor: the next task may set no timeout
            runnable = copy.copy(shared)
        runnable.with_timeout(task.timeout)
    return runnable


async def execute_task(runnable: Executor, task: Task) -> ExecutionResult:
    """Run a prepared executor with the task's data and firing in context (what ``ExecutorAction`` does in the
    engine): ``current_firing()`` answers on a worker too, with the engine's idempotency key, so an action that
    hands it to the outside world (the ``nats`` executor starting a child workflow) has its effect once across
    redeliveries."""
    firing = Firing(task.workflow, task.instance_id, task.transition, (), task.attempt, key=task.idempotency_key)
    reset_data, reset_firing = _DATA.set(task.data), _current.set(firing)
    try:
        return await runnable.execute_detailed()
    finally:
        _current.reset(reset_firing)
        _DATA.reset(reset_data)


async def run_task(cache: ExecutorCache, task: Task) -> tuple[dict[str, Any], ErrorInfo | None]:
    """Run ``task`` and return its output and error (None on success); failures are never raised."""
    expired = expired_error(task)
    if expired is not None:
        return {}, expired
    try:
        runnable = prepare_task(cache, task)
    except CircuitBreakerError as err:
        return {}, ErrorInfo(kind="config", message=str(err), retryable=False)
    result = await execute_task(runnable, task)
    return result.output, result.error


class LocalTaskQueue:
    """``Engine(tasks=LocalTaskQueue())``: the default of an engine whose store is not JetStream."""

    def __init__(self, registry: ExecutorRegistry | None = None, *, concurrency: int = 64) -> None:
        self.registry = registry or default_registry()
        self.worker = f"{socket.gethostname()}:{os.getpid()}:local"
        self._slots = asyncio.Semaphore(concurrency)
        self._deliver: Any = None
        self._running: set[asyncio.Task[None]] = set()
        self._executors = ExecutorCache(self.registry)

    async def open(self, deliver: Any) -> None:
        self._deliver = deliver

    async def listen(self, workflow: str) -> None:
        return None  # every result goes to the one engine that owns this queue

    async def submit(self, task: Task) -> None:
        job = asyncio.get_running_loop().create_task(self._run(task))
        self._running.add(job)
        job.add_done_callback(self._running.discard)

    async def recover(self, task: Task) -> None:
        await self.submit(task)  # nothing of an in-process run outlives the process

    async def attempts(self, task: Task) -> TaskAttempts:
        return NO_ATTEMPTS  # only its engine hands tasks out here, and no run outlives the process

    async def forget_dead_letters(self, task: Task) -> None:
        return None  # an in-process run ends in a result, never in a dead letter

    async def close(self) -> None:
        for job in list(self._running):
            job.cancel()
        if self._running:
            await asyncio.wait(list(self._running), timeout=5.0)

    async def _run(self, task: Task) -> None:
        async with self._slots:
            started, t0 = utcnow(), time.perf_counter()
            output, error = await run_task(self._executors, task)
            result = TaskResult.answering(
                task,
                "succeeded" if error is None else "failed",
                output=output if error is None else None,
                error=error,
                worker=self.worker,
                started=started,
                duration=time.perf_counter() - t0,
            )
        delay = 0.1
        for _ in range(DELIVERY_ATTEMPTS):
            try:
                await self._deliver(result)
                return
            except asyncio.CancelledError:
                raise
            except Exception as err:  # the store is down: try again for a while
                log.warning("applying the result of task %s failed (%s); retrying in %.1fs", task.task_id, err, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        log.error("giving up on the result of task %s; the task stays in flight (its instance shows it)", task.task_id)
