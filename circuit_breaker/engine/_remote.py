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
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from .._construct import build
from ..dsl import CompiledTransition
from ..dsl._firing import fired_entry, input_token, merge_result, post_check, produce, to_error_place
from ..errors import (
    ActionError,
    CircuitBreakerError,
    ConcurrencyError,
    InstanceStateError,
    StoreError,
    TransitionRejectedError,
    UnknownInstanceError,
)
from ..events import (
    ErrorInfo,
    Event,
    InstanceStatusChanged,
    TransitionFailed,
    TransitionFired,
    TransitionRejected,
    TransitionStarted,
    type_of,
)
from ..retry import NO_RETRY
from ..secrets import default_masker
from ..token import Token, new_id, utcnow
from ._context import Firing
from ._lifecycle import TERMINAL, InstanceStatus
from ._tasks import PendingTask, TaskQueue

if TYPE_CHECKING:
    from ..tasks import Task, TaskResult
    from ._engine import Engine
    from ._run import Run

log = logging.getLogger("circuit_breaker.engine")

APPLY_ATTEMPTS = 8  # a result that keeps losing to other engines' writes is handed back to the queue
FAILED = InstanceStatus.FAILED


class RemoteActions:
    """The engine's half of distributed execution; one per engine, created when a workflow has remote actions."""

    def __init__(self, engine: Engine, queue: TaskQueue | None) -> None:
        self.engine = engine
        self.queue = queue
        self._opened = False
        self._listening: set[str] = set()
        # task id -> (instance id, future) of a manual fire() waiting for the task's outcome. Settled from the
        # events (whichever engine applies the result), so a caller learns what the instance recorded.
        self._waiters: dict[str, tuple[str, asyncio.Future[None]]] = {}
        self._unlisten: Any = None

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
        for _, waiter in self._waiters.values():
            if not waiter.done():
                waiter.cancel()
        self._waiters.clear()
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
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
        when the task does (raising ActionError or TransitionRejectedError as a local firing would)."""
        remote = self.engine.remote_of(run.cw.name, ct)
        assert remote is not None
        await self.listen(run.cw.name)
        task_id = new_id()
        ids = [t.id for ts in consumed.values() for t in ts]
        event = _started(run, ct.name, task_id, 1, ids, view.data, actor, remote.kind, remote.executor, remote.into)
        waiter: asyncio.Future[None] | None = None
        if wait:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters[task_id] = (run.id, waiter)
            if self._unlisten is None:
                self._unlisten = self.engine.add_listener(self._on_event)
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
            if pending is None or pending.attempt != attempt or pending.dead or run.status in TERMINAL:
                return
            try:
                await self.queue.recover(self._task(run, pending))  # it may have gone out after all
                return
            except asyncio.CancelledError:
                raise
            except Exception as err:
                delay = min(delay * 2, 30.0)
                log.warning(
                    "publishing task %s failed again (%s); next try in %.0fs",
                    task_id,
                    err,
                    delay,
                    extra=_fields(run, pending),
                )

    def _task(self, run: Run, pending: PendingTask) -> Task:
        """The task as the workers get it, from what the start recorded (not from today's configuration)."""
        from ..tasks import Task

        ct = run.cw.transitions.get(pending.transition)
        remote = self.engine.remote_of(run.cw.name, ct) if ct is not None else None
        seconds = remote.deadline if remote is not None else None
        key = Firing(run.cw.name, run.id, pending.transition, tuple(pending.token_ids()), pending.attempt)
        return build(
            Task,
            task_id=pending.task_id,
            attempt=pending.attempt,
            workflow=run.cw.name,
            instance_id=run.id,
            transition=pending.transition,
            idempotency_key=key.idempotency_key,
            executor=pending.spec,
            data=pending.data,
            timeout=ct.timeout if ct is not None else None,
            deadline=pending.since + timedelta(seconds=seconds) if seconds is not None else None,
            created=pending.since,
            traceparent=None,
        )

    async def recover(self, run: Run) -> None:
        """After a load: every task in flight (not dead-lettered) is queued, or its stored result is applied."""
        if run.status in TERMINAL:
            return
        await self.listen(run.cw.name)
        if run.status is FAILED:  # a retry that stopped half-way (its tasks out, the instance not running again)
            try:
                await self.engine._run_again_if_cleared(run, None, "its incidents were resolved")
            except CircuitBreakerError as err:
                log.warning("instance %s could not run again: %s", run.id, err)
        for pending in list(run.pending.values()):
            if not pending.dead:
                await self._send(run, pending, recovering=True)
                continue
            # Dead-lettered, yet maybe handed out since by ``dlq retry`` while no engine ran: recorded, so the
            # instance shows it (and a retry by hand does not run it a second time).
            try:
                if await self._hand_out_again(run, pending, None, adopt_only=True) and run.status is FAILED:
                    await self.engine._run_again_if_cleared(run, None, f"task {pending.task_id} was retried")
            except CircuitBreakerError as err:  # (another engine wrote first, or the store is down: stays dead)
                log.warning("could not record the retried attempt of task %s: %s", pending.task_id, err)

    async def redispatch_dead(self, run: Run, actor: str | None, only: str | None = None) -> None:
        """A retried instance: hand each dead-lettered task (or just task ``only``) out again as its next
        attempt, and remove its dead letters from the queue."""
        for task_id in [p.task_id for p in run.pending.values() if p.dead and only in (None, p.task_id)]:
            for _ in range(APPLY_ATTEMPTS):
                pending = run.pending.get(task_id)
                if pending is None or not pending.dead:
                    break  # another engine handed it out (or it ended)
                try:
                    await self._hand_out_again(run, pending, actor)
                    break
                except ConcurrencyError:
                    continue  # another write came first: judge again on the new state
            else:
                raise ConcurrencyError(run.id, run.seq)  # other writes kept coming first: the caller may ask again

    async def _forget_dead_letters(self, run: Run, pending: PendingTask) -> None:
        assert self.queue is not None
        try:
            await self.queue.forget_dead_letters(self._task(run, pending))
        except Exception as err:  # (NATS trouble: the letters stay listed; ``dlq drop`` removes them)
            log.warning("could not remove the dead letters of task %s: %s", pending.task_id, err)

    async def _hand_out_again(
        self, run: Run, pending: PendingTask, actor: str | None, *, adopt_only: bool = False
    ) -> bool:
        """A dead-lettered task out again; False when nothing was done (``adopt_only`` and nothing to adopt).

        An attempt ``dlq retry`` published without an engine that is still queued and unanswered is adopted:
        recorded, not published again (it would run twice). Otherwise the next attempt goes past every one the
        queue has seen (the stream would drop a repeated one as a duplicate)."""
        assert self.queue is not None
        try:
            queued, answered = await self.queue.attempts(self._task(run, pending))
        except Exception as err:  # (NATS trouble: then nothing is adopted, and the engine's own count decides)
            log.warning("could not look up the attempts of task %s: %s", pending.task_id, err)
            queued = answered = 0
        if queued > pending.attempt and answered < queued:
            await self._again(run, pending.task_id, pending.attempt, actor, next_attempt=queued, adopt=True)
            return True
        if adopt_only:
            return False
        next_attempt = max(queued, answered, pending.attempt) + 1
        await self._again(run, pending.task_id, pending.attempt, actor, next_attempt=next_attempt, dead=True)
        return True

    async def _again(
        self,
        run: Run,
        task_id: str,
        attempt: int,
        actor: str | None,
        *,
        next_attempt: int | None = None,
        dead: bool = False,
        adopt: bool = False,
    ) -> None:
        """Hand the task out again as ``next_attempt``; a ``dead`` one's dead letters are removed once that is
        stored and before the attempt goes out (so a letter of the new attempt cannot be among them). With
        ``adopt`` the attempt is out already (queued without the engine): it is recorded, and published only if
        the queue lost it."""
        async with run.lock:
            pending = run.pending.get(task_id)
            if pending is None or pending.attempt != attempt or run.status in TERMINAL:
                return
            event = _started(
                run,
                pending.transition,
                task_id,
                next_attempt or attempt + 1,
                [],
                pending.data,
                actor,
                pending.executor,
                pending.spec,
                pending.into,
            )
            await self.engine._append(run, event)
        if dead:  # (an adopted attempt's own letters, if it dies too, must stay: ``dlq retry`` dropped the old one)
            await self._forget_dead_letters(run, run.pending[task_id])
        await self._send(run, run.pending[task_id], recovering=adopt)

    # -- deadlines -------------------------------------------------------------------------------------------
    def unclocked(self, run: Run) -> bool:
        """Whether a task of ``run`` in flight has a deadline that no timer of this engine counts."""
        return any(not p.dead and p.timer is None and self._deadline(run, p) is not None for p in run.pending.values())

    def _deadline(self, run: Run, pending: PendingTask) -> float | None:
        """Seconds each attempt of ``pending``'s task gets (None: no deadline)."""
        ct = run.cw.transitions.get(pending.transition)
        remote = self.engine.remote_of(run.cw.name, ct) if ct is not None else None
        return remote.deadline if remote is not None else None

    def _arm(self, run: Run, pending: PendingTask) -> None:
        seconds = self._deadline(run, pending)
        if seconds is None:
            return
        if pending.timer is not None:
            pending.timer.cancel()
        left = seconds - (utcnow() - pending.since).total_seconds()
        task_id, attempt = pending.task_id, pending.attempt
        loop = asyncio.get_running_loop()

        def expired() -> None:
            if not self.engine._closed:
                self.engine._spawn(run, self._expired(run, task_id, attempt))

        pending.timer = loop.call_later(max(left, 0.0), expired)

    async def _expired(self, run: Run, task_id: str, attempt: int, info: ErrorInfo | None = None) -> None:
        """No result for ``attempt`` in time: hand the task out again (``.retry``) or fail it."""
        for _ in range(APPLY_ATTEMPTS):
            pending = run.pending.get(task_id)
            if pending is None or pending.attempt != attempt or pending.dead or run.status in TERMINAL:
                return
            ct = run.cw.transitions[pending.transition]
            if info is None:
                seconds = self._deadline(run, pending) or 0.0
                info = ErrorInfo(
                    kind="deadline",
                    message=f"no result for task {task_id} (attempt {attempt}) within {seconds:g}s",
                    retryable=True,
                )
            policy = ct.retry or NO_RETRY
            try:
                if attempt < policy.max_attempts:
                    async with run.lock:
                        if run.pending.get(task_id) is not pending or pending.attempt != attempt:
                            return
                        await self.engine._append(run, _failed(run, ct, pending, info, will_retry=True))
                    await self._again(run, task_id, attempt, None)
                else:
                    await self._end_failed(run, task_id, attempt, info)
                    if not self.engine._closed:
                        self.engine._kick(run)  # its tokens may have gone to an error place the workflow goes on from
                return
            except ConcurrencyError:
                continue  # another write came first (brought up to date): judge again
            except Exception:
                log.exception("handling the deadline of task %s failed", task_id, extra=_fields(run, pending))
                return

    # -- results ---------------------------------------------------------------------------------------------
    async def on_result(self, result: TaskResult) -> None:
        """Apply one result (at most once). Raises only when the store could not be reached: the queue hands the
        result back for later. A result the engine cannot apply (a bug, a broken workflow) fails its instance."""
        try:
            run = await self.engine._find(result.instance_id)
        except UnknownInstanceError:
            log.info(
                "result of task %s for unknown instance %s dropped",
                result.task_id,
                result.instance_id,
                extra={"task_id": result.task_id, "workflow": result.workflow, "instance": result.instance_id},
            )
            return
        try:
            for _ in range(APPLY_ATTEMPTS):
                try:
                    await self._apply(run, result)
                    break
                except ConcurrencyError:
                    await asyncio.sleep(0)  # brought up to date by the failed append: judge again
            else:
                raise ConcurrencyError(run.id, run.seq)
            await self._fail_if_incident(run)
        except (StoreError, ConcurrencyError):
            raise
        except Exception as err:
            log.exception("applying the result of task %s failed", result.task_id, extra={"task_id": result.task_id})
            await self.engine._fail_internal(run, err)
            return
        if run.local and not self.engine._closed:
            self.engine._kick(run)

    async def _apply(self, run: Run, result: TaskResult) -> None:
        pending = run.pending.get(result.task_id)
        if pending is None and self.engine._shared:
            # Another engine may have started the task after this one last read the instance: read it again
            # before calling the result moot (the start is stored before the task is published).
            async with run.lock:
                await self.engine._catch_up(run)
            pending = run.pending.get(result.task_id)
        if pending is None or result.attempt < pending.attempt or run.status in TERMINAL:
            return  # applied before, superseded by a newer attempt, or the instance ended
        run.local = True
        ct = run.cw.transitions.get(pending.transition)
        if ct is None:
            return
        await self._apply_to(run, ct, pending, result)
        if run.status is FAILED:
            # Its end settled its incident (a task retried from the queue without an engine), or a retry stopped
            # before the instance could run again: if nothing else failed the instance, it goes on.
            await self.engine._run_again_if_cleared(run, None, f"task {pending.task_id} ended ({result.status})")

    async def _apply_to(self, run: Run, ct: CompiledTransition, pending: PendingTask, result: TaskResult) -> None:
        if result.status == "succeeded":
            output = {pending.into: result.output} if pending.into else result.output
            try:
                data = merge_result(run.cw, ct, pending.data, output)
            except CircuitBreakerError as err:
                await self._end_failed(run, result.task_id, result.attempt, _error_of(err, retryable=False))
                return
            await self._complete(run, ct, result.task_id, result.attempt, data)
            return
        error = result.error or ErrorInfo(kind="failed", message="the worker reported a failure", retryable=False)
        if result.status == "failed" and error.kind == "expired":
            await self._expired(run, result.task_id, result.attempt, error)  # the worker saw the deadline pass
        elif result.status == "dead_lettered" and ct.error_place is None and not ct.is_manual:
            await self._dead_lettered(run, ct, result.task_id, result.attempt, error)
        else:
            await self._end_failed(run, result.task_id, result.attempt, error)

    async def _complete(
        self, run: Run, ct: CompiledTransition, task_id: str, attempt: int, data: dict[str, Any]
    ) -> None:
        """Produce the outputs; when the rules (or a stage's expansion) refuse the result, the tokens go back."""
        async with run.lock:
            pending = run.pending.get(task_id)
            if pending is None or attempt < pending.attempt or run.status in TERMINAL:
                return
            view = input_token(ct, pending.tokens).with_data(data)
            post = post_check(ct, view)
            errors = None if post.valid else list(post.errors)
            expanded = None
            if errors is None and ct.expand is not None:
                try:
                    expanded = ct.expand(view, pending.tokens)
                except CircuitBreakerError as err:
                    errors = [str(err)]
            ids = pending.token_ids()
            if errors is not None:
                rejected = build(
                    TransitionRejected,
                    **_header(run, None),
                    type=type_of(TransitionRejected),
                    transition=ct.name,
                    tokens=ids,
                    errors=[default_masker().mask_text(e) for e in errors],
                    stage="rules",
                    task_id=task_id,
                )
                await self.engine._append(run, rejected)
                return
            now = utcnow()
            entry = fired_entry(ct, now, None)
            produced = produce(ct, view, data, entry, expanded=expanded)
            fired = build(
                TransitionFired,
                **_header(run, None, now),
                type=type_of(TransitionFired),
                transition=ct.name,
                consumed=ids,
                produced=[t for ts in produced.values() for t in ts],
                task_id=task_id,
            )
            await self.engine._append(run, fired, None, produced, entry)

    async def _end_failed(self, run: Run, task_id: str, attempt: int, info: ErrorInfo) -> None:
        """The task failed for good: its tokens go to the error place, or back where they were. An automatic
        transition opens an incident (unless its error place handles the failure); a manual one does not: the
        person who fired it is told, and nothing moved."""
        async with run.lock:
            pending = run.pending.get(task_id)
            if pending is None or attempt < pending.attempt or run.status in TERMINAL:
                return
            ct = run.cw.transitions[pending.transition]
            handled = ct.is_manual or (ct.error_place is not None and ct.error_place not in run.cw.final_places)
            produced: list[Token] = []
            now = utcnow()
            if ct.error_place is not None:
                produced = to_error_place(ct, input_token(ct, pending.tokens), pending.data, info.model_dump(), now)
            event = _failed(
                run,
                ct,
                pending,
                info,
                will_retry=False,
                now=now,
                consumed=pending.token_ids(),
                produced=produced,
                incident=None if handled else new_id(),
            )
            await self.engine._append(run, event)
        await self._fail_if_incident(run)

    async def _dead_lettered(
        self, run: Run, ct: CompiledTransition, task_id: str, attempt: int, info: ErrorInfo
    ) -> None:
        """No worker could finish the task: it stays in flight (``dlq retry`` or ``retry`` hands it out again) and
        the instance fails with an incident naming it."""
        async with run.lock:
            pending = run.pending.get(task_id)
            if pending is None or attempt < pending.attempt or pending.dead or run.status in TERMINAL:
                return
            event = _failed(run, ct, pending, info, will_retry=False, incident=new_id())
            await self.engine._append(run, event)
        await self._fail_if_incident(run)

    async def _fail_if_incident(self, run: Run) -> None:
        """An instance with an open incident is failed (also when setting it lost to another write once)."""
        for _ in range(APPLY_ATTEMPTS):
            if run.status not in (InstanceStatus.RUNNING, InstanceStatus.WAITING):
                return  # failed already, or paused (resume fails it), or ended
            open_incidents = [i for i in run.incidents if not i.resolved]
            if not open_incidents:
                return
            last = open_incidents[-1]
            try:
                await self.engine._set_status(run, "fail", None, reason=f"{last.transition}: {last.error.message}")
                return
            except ConcurrencyError:
                continue

    # -- telling manual firings how their task ended ----------------------------------------------------------
    def _on_event(self, event: Event | None) -> None:
        if event is None or not self._waiters:
            return
        task_id = getattr(event, "task_id", None)
        if task_id is not None and task_id in self._waiters:
            error = _outcome(event)
            if error is not False:
                self._settle(task_id, error)
        elif isinstance(event, InstanceStatusChanged) and event.status == InstanceStatus.CANCELLED.value:
            for tid, (iid, _) in list(self._waiters.items()):
                if iid == event.instance_id:
                    self._settle(tid, InstanceStateError(iid, "cancelled", "finish a task of"))

    def _settle(self, task_id: str, error: BaseException | None) -> None:
        _, waiter = self._waiters.pop(task_id)
        if waiter.done():
            return
        if error is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(error)


def _outcome(event: Event) -> BaseException | Literal[False] | None:
    """How an event with a task id ends a manual firing: None (fired), an error, or False (not ended yet)."""
    if isinstance(event, TransitionFired):
        return None
    if isinstance(event, TransitionRejected):
        return TransitionRejectedError(event.workflow, event.transition, event.instance_id, list(event.errors))
    if isinstance(event, TransitionFailed) and (event.consumed or event.incident is not None):
        failure = ActionError(
            f"action of transition {event.transition!r} in workflow {event.workflow!r} failed on a worker: "
            f"{event.error.message}",
            workflow=event.workflow,
            transition=event.transition,
            attempts=event.attempt,
            retryable=event.error.retryable,
        )
        failure.instance_id = event.instance_id
        return failure
    return False


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
    transition: str,
    task_id: str,
    attempt: int,
    consumed: list[str],
    data: dict[str, Any],
    actor: str | None,
    kind: str,
    spec: dict[str, Any],
    into: str | None,
) -> TransitionStarted:
    """A task handed out: its first attempt (``consumed`` set) or a later one (nothing consumed again)."""
    return build(
        TransitionStarted,
        **_header(run, actor),
        type=type_of(TransitionStarted),
        transition=transition,
        consumed=consumed,
        task_id=task_id,
        attempt=attempt,
        executor=kind,
        data=data,
        spec=spec,
        into=into,
    )


def _failed(
    run: Run,
    ct: CompiledTransition,
    pending: PendingTask,
    info: ErrorInfo,
    *,
    will_retry: bool,
    now: Any = None,
    consumed: list[str] | None = None,
    produced: list[Token] | None = None,
    incident: str | None = None,
) -> TransitionFailed:
    """A failed attempt of ``pending``; with ``consumed`` it ends the task (tokens back, or ``produced`` in the
    error place), with only an ``incident`` it stays in flight (dead-lettered)."""
    return build(
        TransitionFailed,
        **_header(run, None, now),
        type=type_of(TransitionFailed),
        transition=ct.name,
        tokens=pending.token_ids(),
        attempt=pending.attempt,
        error=info,
        will_retry=will_retry,
        incident=incident,
        consumed=consumed or [],
        produced=produced or [],
        task_id=pending.task_id,
    )


def _error_of(err: CircuitBreakerError, *, retryable: bool) -> ErrorInfo:
    return ErrorInfo(kind=getattr(err, "kind", None) or type(err).__name__, message=str(err), retryable=retryable)
