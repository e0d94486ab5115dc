"""Remote actions, engine side: dispatch a task, apply its result once, hand it out again when it is overdue.

A remote firing has two phases, each one event: ``transition_started`` takes the input tokens and records the
task (then the task is published), ``transition_fired`` produces the outputs from the result. Between the two
the tokens wait with the task (``Run.pending``), so a crash loses nothing: on load the engine makes sure each
task in flight is queued, or applies the result stored meanwhile.

Exactly-once effect: a result is applied under the instance's commit lock only if its task is still in flight
and its attempt is the one recorded (or a later one, made from the dead-letter queue); the event that applies
it takes the task out of flight, and the store's per-instance concurrency check stops a second engine applying
the same result. A late result of an earlier attempt is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .._construct import build
from ..dsl import CompiledTransition
from ..dsl._firing import fired_entry, input_token, merge_result, post_check, produce
from ..errors import ActionError, CircuitBreakerError, ConcurrencyError, TransitionRejectedError, UnknownInstanceError
from ..events import ErrorInfo, TransitionFailed, TransitionFired, TransitionRejected, TransitionStarted
from ..retry import NO_RETRY
from ..token import HistoryEntry, Token, new_id, utcnow
from ._context import Firing
from ._lifecycle import InstanceStatus
from ._tasks import PendingTask, TaskQueue

if TYPE_CHECKING:
    from ..tasks import Task, TaskResult
    from ._engine import Engine
    from ._run import Run

log = logging.getLogger("circuit_breaker.engine")

APPLY_ATTEMPTS = 8  # a result that keeps losing to other engines' writes is handed back to the queue
FAILED = InstanceStatus.FAILED
ENDED = (InstanceStatus.COMPLETED, InstanceStatus.CANCELLED)


class RemoteActions:
    """The engine's half of distributed execution; one per engine, created when a workflow has remote actions."""

    def __init__(self, engine: Engine, queue: TaskQueue | None) -> None:
        self.engine = engine
        self.queue = queue
        self._opened = False
        self._listening: set[str] = set()
        self._waiters: dict[str, asyncio.Future[None]] = {}  # task id -> a manual fire() waiting for the outcome

    # -- life cycle ------------------------------------------------------------------------------------------
    async def open(self) -> None:
        if self._opened:
            return
        if self.queue is None:
            make = getattr(self.engine.store, "task_queue", None)
            if make is not None:
                self.queue = make()
            else:
                from ..executors._local_tasks import LocalTaskQueue

                self.queue = LocalTaskQueue()
        assert self.queue is not None
        await self.queue.open(self.on_result)
        self._opened = True

    async def listen(self, workflow: str) -> None:
        if workflow not in self._listening:
            await self.open()
            assert self.queue is not None
            await self.queue.listen(workflow)
            self._listening.add(workflow)

    async def close(self) -> None:
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.cancel()
        if self.queue is not None and self._opened:
            await self.queue.close()

    # -- dispatch --------------------------------------------------------------------------------------------
    async def dispatch(
        self,
        run: Run,
        ct: CompiledTransition,
        consumed: dict[str, tuple[Token, ...]],
        view: Token,
        actor: str | None,
        *,
        wait: bool = False,
    ) -> asyncio.Future[None] | None:
        """Record the start (the tokens leave their places) and publish the task. Raises ConcurrencyError when
        another engine moved the instance first (nothing was started). With ``wait``, returns a future that ends
        when the result is applied (raising ActionError or TransitionRejectedError as a local firing would)."""
        await self.listen(run.cw.name)
        task_id = uuid.uuid4().hex
        remote = self.engine.remote_of(run.cw.name, ct)
        assert remote is not None
        ids = [t.id for ts in consumed.values() for t in ts]
        event = _started(run, ct, task_id, 1, ids, view.data, actor, remote.kind)
        waiter: asyncio.Future[None] | None = None
        if wait:
            waiter = self._waiters[task_id] = asyncio.get_running_loop().create_future()
        try:
            async with run.lock:
                if self.engine._shared and not run.holds(consumed):
                    raise ConcurrencyError(run.id, run.seq)
                await self.engine._append(run, event)
        except BaseException:
            self._waiters.pop(task_id, None)
            raise
        await self._send(run, run.pending[task_id])
        return waiter

    async def _send(self, run: Run, pending: PendingTask, *, recovering: bool = False) -> None:
        """Publish the task of ``pending`` (its current attempt) and start its deadline clock. A publish that
        fails is tried again in the background: the task is recorded, so it cannot be lost."""
        assert self.queue is not None
        task = self._task(run, pending)
        self._arm(run, pending)
        try:
            if recovering:
                await self.queue.recover(task)
            else:
                await self.queue.submit(task)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            log.warning(
                "could not publish task %s (%s: %s); trying again",
                task.task_id,
                type(err).__name__,
                err,
                extra=_fields(run, pending),
            )
            self.engine._spawn(run, self._send_later(run, pending.task_id, pending.attempt))

    async def _send_later(self, run: Run, task_id: str, attempt: int) -> None:
        assert self.queue is not None
        delay = 0.5
        while True:
            await asyncio.sleep(delay)
            pending = run.pending.get(task_id)
            if pending is None or pending.attempt != attempt or pending.dead:
                return
            try:
                await self.queue.recover(self._task(run, pending))  # it may have gone out after all
                return
            except asyncio.CancelledError:
                raise
            except Exception as err:
                delay = min(delay * 2, 30.0)
                log.warning(
                    "publishing task %s failed again (%s); next try in %.0fs", task_id, err, delay,
                    extra=_fields(run, pending),
                )  # fmt: skip

    def _task(self, run: Run, pending: PendingTask) -> Task:
        from ..tasks import Task

        ct = run.cw.transitions[pending.transition]
        remote = self.engine.remote_of(run.cw.name, ct)
        assert remote is not None
        deadline = pending.since + timedelta(seconds=remote.deadline) if remote.deadline is not None else None
        key = Firing(run.cw.name, run.id, ct.name, tuple(pending.token_ids()), pending.attempt).idempotency_key
        return build(
            Task,
            task_id=pending.task_id,
            attempt=pending.attempt,
            workflow=run.cw.name,
            instance_id=run.id,
            transition=ct.name,
            idempotency_key=key,
            executor=remote.executor,
            data=pending.data,
            timeout=ct.timeout,
            deadline=deadline,
            created=pending.since,
            traceparent=None,
        )

    async def recover(self, run: Run) -> None:
        """After a load: every task in flight (not dead-lettered) is queued, or its stored result is applied."""
        for pending in list(run.pending.values()):
            if not pending.dead:
                await self._send(run, pending, recovering=True)

    async def redispatch_dead(self, run: Run, actor: str | None) -> None:
        """A retried instance: hand each dead-lettered task out again as its next attempt."""
        for pending in [p for p in run.pending.values() if p.dead]:
            try:
                await self._again(run, pending.task_id, pending.attempt, actor)
            except ConcurrencyError:
                continue  # another engine did it

    async def _again(self, run: Run, task_id: str, attempt: int, actor: str | None) -> None:
        async with run.lock:
            pending = run.pending.get(task_id)
            if pending is None or pending.attempt != attempt:
                return
            ct = run.cw.transitions[pending.transition]
            event = _started(run, ct, task_id, attempt + 1, [], pending.data, actor, pending.executor)
            await self.engine._append(run, event)
        await self._send(run, run.pending[task_id])

    # -- deadlines -------------------------------------------------------------------------------------------
    def _arm(self, run: Run, pending: PendingTask) -> None:
        ct = run.cw.transitions.get(pending.transition)
        remote = self.engine.remote_of(run.cw.name, ct) if ct is not None else None
        if remote is None or remote.deadline is None:
            return
        if pending.timer is not None:
            pending.timer.cancel()
        left = remote.deadline - (utcnow() - pending.since).total_seconds()
        task_id, attempt = pending.task_id, pending.attempt
        loop = asyncio.get_running_loop()

        def expired() -> None:
            if not self.engine._closed:
                self.engine._spawn(run, self._expired(run, task_id, attempt))

        pending.timer = loop.call_later(max(left, 0.0), expired)

    async def _expired(self, run: Run, task_id: str, attempt: int) -> None:
        """No result for ``attempt`` within the deadline: hand the task out again (``.retry``) or fail it."""
        pending = run.pending.get(task_id)
        if pending is None or pending.attempt != attempt or pending.dead or run.status in ENDED:
            return
        ct = run.cw.transitions[pending.transition]
        remote = self.engine.remote_of(run.cw.name, ct)
        assert remote is not None and remote.deadline is not None
        info = ErrorInfo(
            kind="deadline",
            message=f"no result for task {task_id} (attempt {attempt}) within {remote.deadline:g}s",
            retryable=True,
        )
        policy = ct.retry or NO_RETRY
        try:
            if attempt < policy.max_attempts:
                async with run.lock:
                    if run.pending.get(task_id) is not pending or pending.attempt != attempt:
                        return
                    failed = _failed(run, ct, pending, info, will_retry=True)
                    await self.engine._append(run, failed)
                await self._again(run, task_id, attempt, None)
            else:
                await self._end_failed(run, task_id, attempt, info)
        except ConcurrencyError:
            pass  # another engine acted on the instance; its state was read back, and its timers are its own
        except Exception:
            log.exception("handling the deadline of task %s failed", task_id, extra=_fields(run, pending))

    # -- results ---------------------------------------------------------------------------------------------
    async def on_result(self, result: TaskResult) -> None:
        """Apply one result (at most once); raising hands it back to the queue for later (the store is down)."""
        try:
            run = await self.engine._find(result.instance_id)
        except UnknownInstanceError:
            log.info(
                "result of task %s for unknown instance %s dropped", result.task_id, result.instance_id,
                extra={"task_id": result.task_id, "workflow": result.workflow, "instance": result.instance_id},
            )  # fmt: skip
            return
        for _ in range(APPLY_ATTEMPTS):
            try:
                await self._apply(run, result)
                break
            except ConcurrencyError:
                await asyncio.sleep(0)  # brought up to date by the failed append: judge again
        else:
            raise ConcurrencyError(run.id, run.seq)
        if run.local and not self.engine._closed:
            self.engine._kick(run)

    async def _apply(self, run: Run, result: TaskResult) -> None:
        pending = run.pending.get(result.task_id)
        if pending is None or result.attempt < pending.attempt or run.status in ENDED:
            self._settle_waiter(result.task_id, None)  # applied before, late, or moot
            return
        run.local = True
        ct = run.cw.transitions.get(pending.transition)
        if ct is None:
            return
        if result.status == "succeeded":
            output = result.output
            remote = self.engine.remote_of(run.cw.name, ct)
            if remote is not None and remote.into:
                output = {remote.into: output}
            try:
                data = merge_result(run.cw, ct, pending.data, output)
            except CircuitBreakerError as err:
                await self._end_failed(run, result.task_id, result.attempt, _error_of(err, retryable=False))
                return
            errors = await self._complete(run, ct, result.task_id, result.attempt, data)
            if errors is None:
                await self._resume_if_retried(run, ct, pending)
                self._settle_waiter(result.task_id, None)
            else:
                self._settle_waiter(result.task_id, TransitionRejectedError(run.cw.name, ct.name, run.id, list(errors)))
            return
        error = result.error or ErrorInfo(kind="failed", message="the worker reported a failure", retryable=False)
        if result.status == "dead_lettered" and ct.error_place is None:
            await self._dead_lettered(run, ct, result.task_id, result.attempt, error)
        else:
            await self._end_failed(run, result.task_id, result.attempt, error)

    async def _complete(
        self, run: Run, ct: CompiledTransition, task_id: str, attempt: int, data: dict[str, Any]
    ) -> list[str] | None:
        """Produce the outputs (or, when the rules refuse the result, put the tokens back); returns the errors."""
        async with run.lock:
            pending = run.pending.get(task_id)
            if pending is None or attempt < pending.attempt:
                return None
            view = input_token(ct, pending.tokens).model_copy(update={"data": data})
            post = post_check(ct, view)
            ids = pending.token_ids()
            if not post.valid:
                rejected = build(
                    TransitionRejected,
                    **_header(run, None),
                    type=TransitionRejected.model_fields["type"].default,
                    transition=ct.name,
                    tokens=ids,
                    errors=list(post.errors),
                    stage="rules",
                    task_id=task_id,
                )
                await self.engine._append(run, rejected)
                return list(post.errors)
            now = utcnow()
            entry = fired_entry(ct, now, None)
            expanded = ct.expand(view, pending.tokens) if ct.expand is not None else None
            if expanded is None:
                produced = produce(ct, view, data, entry)
            else:
                produced = {p: tuple(view.moved(p, d, entry) for d in datas) for p, datas in expanded.items()}
            fired = build(
                TransitionFired,
                **_header(run, None, now),
                type=TransitionFired.model_fields["type"].default,
                transition=ct.name,
                consumed=ids,
                produced=[t for ts in produced.values() for t in ts],
                task_id=task_id,
            )
            await self.engine._append(run, fired, None, produced, entry)
        return None

    async def _end_failed(self, run: Run, task_id: str, attempt: int, info: ErrorInfo) -> None:
        """The task failed for good: its tokens go to the error place, or back where they were with an incident."""
        async with run.lock:
            pending = run.pending.get(task_id)
            if pending is None or attempt < pending.attempt:
                return
            ct = run.cw.transitions[pending.transition]
            handled = ct.error_place is not None and ct.error_place not in run.cw.final_places
            produced: list[Token] = []
            now = utcnow()
            if ct.error_place is not None:
                entry = build(
                    HistoryEntry,
                    time=now,
                    kind="failed",
                    transition=ct.name,
                    from_places=ct.input_places,
                    to_places=(ct.error_place,),
                    actor=None,
                    details={"error": info.model_dump()},
                )
                view = input_token(ct, pending.tokens)
                data = {**pending.data, "_error": info.model_dump()}
                moved = produce(ct, view, data, entry, places=(ct.error_place,))
                produced = [t for ts in moved.values() for t in ts]
            event = _failed(run, ct, pending, info, will_retry=False, now=now)
            event = event.model_copy(
                update={
                    "consumed": pending.token_ids(),
                    "produced": produced,
                    "incident": None if handled else new_id(),
                }
            )
            await self.engine._append(run, event)
        failure = ActionError(
            f"action of transition {ct.name!r} in workflow {run.cw.name!r} failed on a worker: {info.message}",
            workflow=run.cw.name,
            transition=ct.name,
            attempts=attempt,
            retryable=info.retryable,
        )
        failure.instance_id = run.id
        self._settle_waiter(task_id, failure)
        if not handled and run.status in (InstanceStatus.RUNNING, InstanceStatus.WAITING):
            await self.engine._set_status(run, "fail", None, reason=f"{ct.name}: {info.message}")

    async def _dead_lettered(
        self, run: Run, ct: CompiledTransition, task_id: str, attempt: int, info: ErrorInfo
    ) -> None:
        """No worker could finish the task: it stays in flight (``dlq retry`` or ``retry`` hands it out again) and
        the instance fails with an incident naming it."""
        async with run.lock:
            pending = run.pending.get(task_id)
            if pending is None or attempt < pending.attempt or pending.dead:
                return
            event = _failed(run, ct, pending, info, will_retry=False).model_copy(update={"incident": new_id()})
            await self.engine._append(run, event)
        failure = ActionError(
            f"task {task_id} of transition {ct.name!r} is in the dead-letter queue: {info.message}",
            workflow=run.cw.name,
            transition=ct.name,
            attempts=attempt,
            retryable=True,
        )
        failure.instance_id = run.id
        self._settle_waiter(task_id, failure)
        if run.status in (InstanceStatus.RUNNING, InstanceStatus.WAITING):
            await self.engine._set_status(run, "fail", None, reason=f"{ct.name}: task {task_id} dead-lettered")

    async def _resume_if_retried(self, run: Run, ct: CompiledTransition, pending: PendingTask) -> None:
        """A dead-lettered task retried from the queue completed: if its incident was all that failed the
        instance, the instance goes on."""
        if run.status is not FAILED:
            return
        ids = pending.token_ids()
        open_incidents = [i for i in run.incidents if not i.resolved]
        if open_incidents and all(i.transition == ct.name and i.tokens == ids for i in open_incidents):
            await self.engine._set_status(
                run, "retry", None, reason=f"task {pending.task_id} completed", details={"retry": True}
            )

    def _settle_waiter(self, task_id: str, error: BaseException | None) -> None:
        waiter = self._waiters.pop(task_id, None)
        if waiter is None or waiter.done():
            return
        if error is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(error)


def _fields(run: Run, pending: PendingTask) -> dict[str, Any]:
    """The structured log fields of a task (JSON logs carry them as keys)."""
    return {
        "task_id": pending.task_id,
        "attempt": pending.attempt,
        "workflow": run.cw.name,
        "instance": run.id,
        "transition": pending.transition,
        "executor": pending.executor,
    }


def _header(run: Run, actor: str | None, time: Any = None) -> dict[str, Any]:
    return {
        "workflow": run.cw.name,
        "instance_id": run.id,
        "seq": run.seq + 1,
        "time": time or utcnow(),
        "actor": actor,
    }


def _started(
    run: Run,
    ct: CompiledTransition,
    task_id: str,
    attempt: int,
    consumed: list[str],
    data: dict[str, Any],
    actor: str | None,
    kind: str,
) -> TransitionStarted:
    return build(
        TransitionStarted,
        **_header(run, actor),
        type=TransitionStarted.model_fields["type"].default,
        transition=ct.name,
        consumed=consumed,
        task_id=task_id,
        attempt=attempt,
        executor=kind,
        data=data,
    )


def _failed(
    run: Run, ct: CompiledTransition, pending: PendingTask, info: ErrorInfo, *, will_retry: bool, now: Any = None
) -> TransitionFailed:
    return build(
        TransitionFailed,
        **_header(run, None, now),
        type=TransitionFailed.model_fields["type"].default,
        transition=ct.name,
        tokens=pending.token_ids(),
        attempt=pending.attempt,
        error=info,
        will_retry=will_retry,
        incident=None,
        consumed=[],
        produced=[],
        task_id=pending.task_id,
    )


def _error_of(err: CircuitBreakerError, *, retryable: bool) -> ErrorInfo:
    return ErrorInfo(kind=getattr(err, "kind", None) or type(err).__name__, message=str(err), retryable=retryable)
