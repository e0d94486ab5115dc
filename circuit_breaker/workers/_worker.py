"""The worker: pulls tasks of the executor kinds it serves, runs them, publishes each outcome once.

Delivery rules (docs/nats-protocol.md, "Tasks and workers"):

- one durable pull consumer per kind, ``cb-workers-<kind>`` filtering ``cb.task.<kind>.>`` and ``cb.task.<kind>``
  (no task is published there: such a message is dead-lettered), shared by every worker process (a consumer
  group); a worker fetches no more tasks than it has free slots (``concurrency``), because each fetched task's
  ``ack_wait`` clock runs from delivery;
- a worker raises the consumer's ``ack_wait`` to its own but never lowers it (another worker may heartbeat for
  the longer one); a running task is kept with ``in_progress`` heartbeats every third of the consumer's
  ``ack_wait`` or of the worker's own, whichever is shorter; a worker that dies (kill -9) stops them, and the
  task is delivered again after ``ack_wait``;
- before it takes a task, a worker checks that NATS lets it publish results, dead letters and acknowledgements
  (``_permissions``);
- success, or a failure that is not retryable: publish the :class:`TaskResult` (de-duplicated by
  ``<task_id>:<attempt>:result``), then ack. A crash between the two runs the task again, but no second
  result is stored (within the results stream's duplicate window). A result that cannot be published hands the
  task back on the backoff schedule, and at the ``max_deliver``-th delivery dead-letters it, saying so;
- a retryable failure: nak with ``backoff_initial * 2^(deliveries-1)`` (capped at ``backoff_max``), until
  ``max_deliver`` deliveries: then a :class:`DeadLetter`, then a :class:`TaskResult` with status
  ``dead_lettered`` (same result id, so the engine learns of it from ``CB_RESULTS``), then ack; a task
  delivered more than ``max_deliver`` times (its workers kept dying) goes the same way without running again;
  an attempt whose letter ``CB_DLQ`` already holds is not dead-lettered again;
- a message that is not a valid task (or not on its own subject ``cb.task.<kind>.<task_id>``): a dead letter
  with the reason, then ack (it can never succeed); no result, since there is no task to answer.

The consumer itself has no ``max_deliver``: the server would then keep an exhausted task in the work queue
for ever, invisible; the worker counts deliveries and moves it to ``CB_DLQ`` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable
from datetime import datetime
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NotJSMessageError
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import APIError, NotFoundError

from ..config import StreamSettings, WorkerSettings
from ..errors import CircuitBreakerError, WorkerError
from ..events import ErrorInfo
from ..executors import ExecutorRegistry, default_registry
from ..executors._local_tasks import ExecutorCache, execute_task, expired_error, prepare_task
from ..nats._acks import AckedPublisher, msg_id_block
from ..nats._pull import Puller, delivery
from ..nats._subjects import (
    TASK_PREFIX,
    TASKS_STREAM,
    dlq_subject,
    result_subject,
    task_filter,
    task_subject,
    worker_durable,
)
from ..tasks import DeadLetter, ResultStatus, Task, TaskResult, parse_task, result_msg_id
from ..token import utcnow
from ._ops import Health, Metrics
from ._permissions import check_publish, subject_of
from ._queue import dead_lettered, ensure_task_streams

__all__ = ["Worker", "backoff_delay"]

log = logging.getLogger("circuit_breaker.worker")

MAX_ACK_PENDING = 100_000  # shared by every worker of a kind; each one limits itself to its concurrency
PUBLISH_ATTEMPTS = 4
RAW_LIMIT = 64 * 1024
FETCH_GATHER = 0.005  # seconds a fetch waits for more slots to free up when only a few are (one request, not many)
NOTED_ERRORS = 50  # NATS errors kept for naming a refused subject
WATCH_PERIOD = 2.0  # seconds between readiness checks (and reads of the consumers' ack_wait)
SPEC_CACHE = 256  # executors built from specs, kept per worker (the engine, too, runs one executor many times)


def backoff_delay(deliveries: int, initial: float, cap: float) -> float:
    """The nak delay after the ``deliveries``-th failed delivery: initial, 2x, 4x ... up to ``cap``."""
    return float(min(initial * 2 ** max(deliveries - 1, 0), cap))


class _Outcome:
    __slots__ = ("duration", "error", "output", "started")

    def __init__(self, output: dict[str, Any], error: ErrorInfo | None, started: datetime, duration: float) -> None:
        self.output, self.error, self.started, self.duration = output, error, started, duration


class Worker:
    """``Worker(nc, WorkerSettings(...), concurrency=8)``; ``await start()``, later ``await stop()``.

    Keyword overrides replace fields of ``settings`` (``executors``, ``concurrency``, ``ack_wait``,
    ``max_deliver``, ``backoff_initial``, ``backoff_max``, ``grace``, ``poll``). ``registry`` defaults to
    :func:`default_registry`; kinds it does not know are refused at start-up (never silently not served).
    """

    def __init__(
        self,
        connection: NATS,
        settings: WorkerSettings | None = None,
        *,
        stream: StreamSettings | None = None,
        registry: ExecutorRegistry | None = None,
        worker_id: str | None = None,
        metrics: Metrics | None = None,
        health: Health | None = None,
        **overrides: Any,
    ) -> None:
        base = settings or WorkerSettings()
        self.settings = WorkerSettings.model_validate({**base.model_dump(), **overrides}) if overrides else base
        self.connection = connection
        self.js = connection.jetstream(timeout=5.0)
        self.stream = stream or StreamSettings()
        self.registry = registry or default_registry()
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.metrics = metrics or Metrics()
        self.health = health or Health()
        self.kinds: list[str] = []
        self._slots = asyncio.Semaphore(self.settings.concurrency)
        self._subs: dict[str, Puller] = {}
        self._generation = 0  # bumped on reconnect: every pump re-creates its pull subscription
        self._pumps: list[asyncio.Task[None]] = []
        self._inflight: set[asyncio.Task[None]] = set()
        self._settling: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._nats_errors: list[str] = []
        self._noted = 0  # NATS errors noted in all (the list keeps the newest)
        self._acks = AckedPublisher(connection)
        self._executors = ExecutorCache(self.registry, SPEC_CACHE)
        self._kept_ack_wait: set[str] = set()  # kinds whose longer ack_wait this worker warned about
        self._beat_period: dict[str, float] = {}  # heartbeat period per kind (see _follow_ack_wait)
        self._beating: dict[str, set[_Heartbeat]] = {}  # heartbeats of running tasks per kind

    # -- life cycle ------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Check the kinds, make the streams and consumers, subscribe; raises :class:`WorkerError` with the
        reason (a kind not registered, no permission on a subject) instead of failing later in the background."""
        wanted = self.settings.executors or self.registry.names()
        unknown = sorted(k for k in wanted if k not in self.registry)
        if unknown:
            raise WorkerError(
                f"executor kind(s) {unknown} are not registered in this worker; it knows {self.registry.names()}"
            )
        self.kinds = list(dict.fromkeys(wanted))
        if self.settings.concurrency < len(self.kinds):
            log.warning(
                "worker %s serves %d executor kinds with concurrency %d: each kind waits for a free slot, and a task "
                "may wait up to poll (%gs) while another kind's pull holds it; give it a concurrency of at least %d",
                self.worker_id,
                len(self.kinds),
                self.settings.concurrency,
                self.settings.poll,
                len(self.kinds),
            )
        mark = self._noted
        try:
            await ensure_task_streams(self.js, self.stream)
            await self._acks.start()
            for kind in self.kinds:
                self._subs[kind] = await self._subscribe(kind)
            await check_publish(self.connection, self._acks, self.kinds, self._noted_since, mark)
        except CircuitBreakerError:
            await self._abandon()
            raise
        except Exception as err:
            await self._abandon()
            denied = next((e for e in self._nats_errors if "permission" in e.lower()), None)
            if denied is not None:
                raise WorkerError(
                    f"worker cannot start: NATS refused it: {denied}", subject=subject_of(denied)
                ) from err
            raise WorkerError(f"worker cannot start: {type(err).__name__}: {err or 'no answer'}") from err
        self.health.connected = self.health.streams = True
        loop = asyncio.get_running_loop()
        self._pumps = [loop.create_task(self._pump(kind), name=f"cb-worker-{kind}") for kind in self.kinds]
        self._pumps.append(loop.create_task(self._watch(), name="cb-worker-health"))
        log.info("worker %s serves %s", self.worker_id, ", ".join(self.kinds), extra={"worker": self.worker_id})

    async def _abandon(self) -> None:
        """A start that failed: no puller is left behind, subscribed for tasks nobody will run."""
        for kind in list(self._subs):
            await self._unsubscribe(kind)
        await self._acks.stop()

    async def stop(self, grace: float | None = None) -> None:
        """Stop fetching; tasks in hand get ``grace`` seconds (default ``settings.grace``) to finish, the rest are
        cancelled and handed back (nak) for another worker."""
        grace = self.settings.grace if grace is None else grace
        self._stopping = self.health.stopping = True
        for puller in list(self._subs.values()):  # open pulls end now, and the server drops their requests:
            await puller.stop()  # a task it still sent would be handed back through them again and again
        if self._pumps:  # (a pump waiting for a free slot has nothing more to do either)
            _, late = await asyncio.wait(self._pumps, timeout=0.5)
            for task in late:
                task.cancel()
            await asyncio.gather(*self._pumps, return_exceptions=True)
            self._pumps = []
        if self._inflight:
            log.info("worker %s: waiting up to %.1fs for %d task(s)", self.worker_id, grace, len(self._inflight))
            _, pending = await asyncio.wait(set(self._inflight), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for kind in list(self._subs):
            await self._unsubscribe(kind)
        if self._settling:  # tasks handed back on the way out
            await asyncio.wait(set(self._settling), timeout=2.0)
        await self._acks.stop()

    def note_nats_error(self, err: Exception) -> None:
        """For the connection's ``error_cb``: a permission violation is reported by the server asynchronously,
        and the request that caused it just times out; start() names it from here."""
        text = f"{type(err).__name__}: {err}"
        self._nats_errors.append(text)
        self._noted += 1
        del self._nats_errors[:-NOTED_ERRORS]
        log.warning("NATS: %s", text)

    def _noted_since(self, mark: int) -> list[str]:
        """The NATS errors noted after the ``mark``-th (the newest ``NOTED_ERRORS`` at most)."""
        count = min(self._noted - mark, len(self._nats_errors))
        return self._nats_errors[-count:] if count > 0 else []

    def note_reconnected(self) -> None:
        """For the connection's ``reconnected_cb``: pull subscriptions are re-created after a reconnect."""
        self._generation += 1

    # -- subscriptions ---------------------------------------------------------------------------------------
    async def _subscribe(self, kind: str) -> Puller:
        """Create or update the kind's shared durable (see :meth:`_shared_ack_wait` for its ``ack_wait``); a
        puller on it."""
        config = ConsumerConfig(
            durable_name=worker_durable(kind),
            filter_subjects=task_filters(kind),
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=await self._shared_ack_wait(kind),
            max_deliver=-1,
            max_ack_pending=MAX_ACK_PENDING,
        )
        try:
            info = await self.js.add_consumer(TASKS_STREAM, config, timeout=5.0)
        except APIError as err:
            raise WorkerError(
                f"cannot create consumer {worker_durable(kind)!r} on {TASKS_STREAM}: {err.description}",
                subject=task_filter(kind),
            ) from err
        self._follow_ack_wait(kind, info.config.ack_wait)
        puller = Puller(self.connection, TASKS_STREAM, worker_durable(kind), stray=self._hand_back)
        await puller.start()
        return puller

    async def _shared_ack_wait(self, kind: str) -> float:
        """The ``ack_wait`` to give the kind's shared consumer: this worker's, unless the consumer has a longer
        one. Lowering it would hand the tasks of a worker that heartbeats for the longer one to another worker
        while they run (every worker also follows the consumer's value: :meth:`_follow_ack_wait`)."""
        own = self.settings.ack_wait
        try:
            info = await self.js.consumer_info(TASKS_STREAM, worker_durable(kind), timeout=5.0)
        except NotFoundError:
            return own
        current = float(info.config.ack_wait or own)
        if current > own and not info.num_ack_pending and not info.num_waiting:
            # No task in hand and no worker pulling: nobody relies on the longer one (found in a walk-through:
            # the durable consumer outlives its workers, so "stop them all first" never lowered it).
            log.info(
                "consumer %s: ack_wait %gs -> %gs (no other worker of %s is running)",
                worker_durable(kind),
                current,
                own,
                kind,
                extra={"worker": self.worker_id, "executor": kind},
            )
            return own
        if current > own and kind not in self._kept_ack_wait:
            self._kept_ack_wait.add(kind)
            log.warning(
                "consumer %s keeps ack_wait %gs, longer than this worker's %gs (worker.ack_wait): other workers of "
                "%s may rely on it, so it is not lowered; a stopped worker's tasks go to another after %gs. To "
                "lower it, stop every worker of %s first",
                worker_durable(kind),
                current,
                own,
                kind,
                current,
                kind,
                extra={"worker": self.worker_id, "executor": kind},
            )
        return max(current, own)

    def _follow_ack_wait(self, kind: str, ack_wait: float | None) -> None:
        """Heartbeat often enough for the consumer's actual ``ack_wait`` (another worker, an operator, may have
        changed it) and for this worker's own, whichever is shorter; running tasks switch at once."""
        period = min(float(ack_wait or self.settings.ack_wait), self.settings.ack_wait) / 3
        if period == self._beat_period.get(kind):
            return
        self._beat_period[kind] = period
        for beat in list(self._beating.get(kind, ())):
            beat.retime(period)

    async def _unsubscribe(self, kind: str) -> None:
        puller = self._subs.pop(kind, None)
        if puller is not None:  # the durable stays on the server for the other workers
            await puller.stop()

    def _hand_back(self, msg: Msg) -> None:
        """A task delivered for a pull that had already ended (see ``Puller``): no slot was taken for it, so it
        goes back, after ``poll`` seconds: a request the server still fills (one it ended with "409 Server
        Shutdown" may go on delivering) has expired by then, so the task cannot bounce through it, each bounce
        counting a delivery towards ``max_deliver``."""
        nak = msg.nak(delay=self.settings.poll)
        self._settling.add(task := asyncio.get_running_loop().create_task(_settle(nak)))
        task.add_done_callback(self._settling.discard)

    async def _pump(self, kind: str) -> None:
        delay, seen = 0.1, self._generation
        while not self._stopping:
            try:
                if seen != self._generation:
                    seen = self._generation
                    await self._unsubscribe(kind)
                if kind not in self._subs:
                    self._subs[kind] = await self._subscribe(kind)
                await self._fetch(kind, self._subs[kind])
                delay = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as err:
                if self.connection.is_closed:
                    log.error("worker %s stops fetching %s: the NATS connection is closed", self.worker_id, kind)
                    return
                log.warning(
                    "fetching %s tasks: %s: %s; subscribing again in %.1fs",
                    kind,
                    type(err).__name__,
                    err or "no answer",
                    delay,
                )
                await self._unsubscribe(kind)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _fetch(self, kind: str, puller: Puller) -> None:
        """Take a free slot (waiting for one), then as many more as are free, and pull that many tasks.

        When only a few slots are free while tasks run, wait a moment (``FETCH_GATHER``) for more to free up:
        fast tasks then share one pull request instead of costing one each. The request stays open (up to
        ``poll`` seconds) until all those tasks came, each starting as it arrives; so that an open request of
        one kind cannot hold every slot while tasks of another kind wait, one request takes at most an equal
        share of the slots when the worker serves several kinds."""
        await self._slots.acquire()
        held = 1
        share = max(1, self.settings.concurrency // len(self.kinds))
        want = max(1, share // 4)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FETCH_GATHER
        try:
            while held < share:
                if not self._slots.locked():
                    await self._slots.acquire()
                    held += 1
                    continue
                remaining = deadline - loop.time()
                if held >= want or not self._inflight or remaining <= 0 or self._stopping:
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._slots.acquire()
                        held += 1
        except BaseException:
            for _ in range(held):
                self._slots.release()
            raise
        delivered = 0

        def run(msg: Msg) -> None:  # each task starts as it arrives, while the pull waits for the rest
            nonlocal delivered
            delivered += 1
            task = loop.create_task(self._handle(kind, msg))
            self._inflight.add(task)
            task.add_done_callback(self._done)

        try:
            if not self._stopping:  # (stop() may have ended the pulls while this one gathered slots)
                await puller.pull(held, run, self.settings.poll)
        finally:
            for _ in range(held - delivered):
                self._slots.release()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._slots.release()

    async def _watch(self) -> None:
        """Keep the readiness probe honest (NATS connected, and the task stream still there), and the heartbeats
        in step with the consumers' ``ack_wait``."""
        while not self._stopping:
            self.health.connected = self.connection.is_connected
            if self.health.connected:
                try:
                    await self.js.stream_info(TASKS_STREAM)
                    self.health.streams = True
                except Exception:
                    self.health.streams = False
                for kind in self.kinds:
                    with contextlib.suppress(Exception):  # (a missing consumer is made again by the pump)
                        info = await self.js.consumer_info(TASKS_STREAM, worker_durable(kind), timeout=2.0)
                        self._follow_ack_wait(kind, info.config.ack_wait)
            await asyncio.sleep(WATCH_PERIOD)

    # -- one task --------------------------------------------------------------------------------------------
    async def _handle(self, kind: str, msg: Msg) -> None:
        try:
            deliveries = delivery(msg)[0] or 1
        except NotJSMessageError:  # (nothing to acknowledge, nothing to dead-letter: it is in no stream)
            log.warning("dropping a message on %s that no JetStream consumer delivered", msg.subject)
            return
        try:
            task = _parse(kind, msg)
        except ValueError as err:
            message = f"not a valid task: {err}"
            await self._dead_letter(kind, msg, None, "malformed", message, deliveries, None, None)
            return
        extra = _log_fields(task, self.worker_id)
        if self._stopping:
            await _settle(msg.nak())
            return
        if deliveries > self.settings.max_deliver:
            orphaned = ErrorInfo(
                kind="orphaned",
                message="no result stored: the workers running it kept stopping, or could not publish its result",
            )
            message = f"delivered {deliveries} times (max_deliver {self.settings.max_deliver}) without finishing"
            await self._dead_letter(kind, msg, task, "max_deliver", message, deliveries, orphaned, None)
            return
        self.metrics.running(kind, 1)
        try:
            outcome = await self._run(task, msg)
        except asyncio.CancelledError:
            log.warning("task %s stopped by shutdown; handed back", task.task_id, extra=extra)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(msg.nak()), 2.0)
            raise
        finally:
            self.metrics.running(kind, -1)
        error = outcome.error
        if error is not None and error.retryable:
            if deliveries >= self.settings.max_deliver:
                message = f"failed {deliveries} times (max_deliver {self.settings.max_deliver}): {error.message}"
                self.metrics.finished(kind, "dead_letter", outcome.duration)
                await self._dead_letter(kind, msg, task, "max_deliver", message, deliveries, error, outcome)
                return
            delay = backoff_delay(deliveries, self.settings.backoff_initial, self.settings.backoff_max)
            log.info("task %s failed (%s); retry in %.1fs", task.task_id, error.message, delay, extra=extra)
            self.metrics.retried(kind)
            self.metrics.finished(kind, "retried", outcome.duration)
            await _settle(msg.nak(delay=delay))
            return
        status: ResultStatus = "succeeded" if error is None else "failed"
        result = TaskResult.answering(
            task,
            status,
            output=outcome.output,
            error=error,
            worker=self.worker_id,
            deliveries=deliveries,
            started=outcome.started,
            duration=outcome.duration,
        )
        failure = await self._publish_result(result)
        if failure is not None:
            await self._unpublished(kind, msg, task, deliveries, outcome, failure)
            return
        await _settle(msg.ack())
        self.metrics.finished(kind, status, outcome.duration)
        log.debug("task %s %s in %.3fs", task.task_id, status, outcome.duration, extra=extra)

    async def _unpublished(
        self, kind: str, msg: Msg, task: Task, deliveries: int, outcome: _Outcome, failure: str
    ) -> None:
        """The task ran, but its result could not be stored (NATS trouble, a full stream, a publish permission
        taken away). It is handed back on the backoff schedule and runs again (actions run at least once; the
        result id keeps the result single), at most ``max_deliver`` times: then it is dead-lettered, saying why."""
        extra = _log_fields(task, self.worker_id)
        if deliveries >= self.settings.max_deliver:
            message = (
                f"ran {deliveries} times (max_deliver {self.settings.max_deliver}) but its result could not be "
                f"published: {failure}"
            )
            error = ErrorInfo(kind="result_not_published", message=message, retryable=False)
            self.metrics.finished(kind, "dead_letter", outcome.duration)
            await self._dead_letter(kind, msg, task, "max_deliver", message, deliveries, error, outcome)
            return
        delay = backoff_delay(deliveries, self.settings.backoff_initial, self.settings.backoff_max)
        log.error("the result of task %s could not be published (%s); run again in %.1fs", task.task_id, failure,
                  delay, extra=extra)  # fmt: skip
        await _settle(msg.nak(delay=delay))

    async def _run(self, task: Task, msg: Msg) -> _Outcome:
        """Run the task's executor with heartbeats; every failure becomes an ErrorInfo (cancellation is raised)."""
        started, t0 = utcnow(), time.perf_counter()
        expired = expired_error(task)
        if expired is not None:
            return _Outcome({}, expired, started, 0.0)
        try:
            executor = prepare_task(self._executors, task)
        except CircuitBreakerError as err:
            error = ErrorInfo(kind="config", message=str(err), retryable=False)
            return _Outcome({}, error, started, time.perf_counter() - t0)
        beating = self._beating.setdefault(task.kind, set())
        heartbeat = _Heartbeat(msg, self._beat_period.get(task.kind, self.settings.ack_wait / 3))
        beating.add(heartbeat)
        try:
            result = await execute_task(executor, task)
        finally:
            beating.discard(heartbeat)
            await heartbeat.stop()
        return _Outcome(result.output, result.error, started, time.perf_counter() - t0)

    async def _dead_letter(
        self,
        kind: str,
        msg: Msg,
        task: Task | None,
        reason: str,
        message: str,
        deliveries: int,
        error: ErrorInfo | None,
        outcome: _Outcome | None,
    ) -> None:
        """Publish the dead letter; for a task (not a malformed message) then a ``dead_lettered`` result on the
        task's result subject with the attempt's result id; then ack.

        A dead letter that cannot be stored naks the message (nothing else holds the task): the next delivery
        publishes again under the same id, unless ``CB_DLQ`` has this attempt's letter already (past the
        duplicate window too), so an attempt is dead-lettered once. A result that cannot be stored after its
        letter is logged, and the message acked all the same: the letter holds the task, and ``dlq retry`` hands
        it out again; retrying the publish would keep the task going round without bound."""
        raw = None if task is not None else msg.data[:RAW_LIMIT].decode("utf-8", errors="replace")
        letter = DeadLetter.model_validate(
            {
                "reason": reason,
                "message": message,
                "subject": msg.subject,
                "task": task,
                "raw": raw,
                "deliveries": deliveries,
                "last_error": error,
                "worker": self.worker_id,
            }
        )
        msg_id = (
            f"{task.task_id}:{task.attempt}:dlq" if task is not None else f"malformed:{msg.metadata.sequence.stream}"
        )
        extra = _log_fields(task, self.worker_id) if task is not None else {"worker": self.worker_id}
        subject = dlq_subject(kind, task.task_id if task is not None else None)
        known = task is not None and deliveries > self.settings.max_deliver and await self._has_letter(kind, task)
        failure = None if known else await self._publish(subject, letter.model_dump_json().encode(), msg_id)
        if failure is not None:
            delay = backoff_delay(deliveries, self.settings.backoff_initial, self.settings.backoff_max)
            log.error("task message %s could not be dead-lettered (%s); it stays queued, tried again in %.1fs",
                      _seq(msg), failure, delay, extra=extra)  # fmt: skip
            await _settle(msg.nak(delay=delay))
            return
        if task is not None:
            result = TaskResult.answering(
                task,
                "dead_lettered",
                error=error or ErrorInfo(kind="dead_lettered", message=message, retryable=False),
                worker=self.worker_id,
                deliveries=deliveries,
                started=outcome.started if outcome is not None else utcnow(),
                duration=outcome.duration if outcome is not None else 0.0,
            )
            failure = await self._publish_result(result)
            if failure is not None:
                log.error("task %s is dead-lettered, but its result could not be published (%s): its engine is not "
                          "told; `circuit-breaker dlq retry` hands it out again", task.task_id, failure,
                          extra=extra)  # fmt: skip
        await _settle(msg.ack())
        self.metrics.dead_lettered(kind, reason)
        log.warning("task message %s dead-lettered (%s): %s", _seq(msg), reason, message, extra=extra)

    async def _has_letter(self, kind: str, task: Task) -> bool:
        """Whether ``CB_DLQ`` holds this attempt's dead letter (an earlier delivery stored it, then failed)."""
        try:
            return await dead_lettered(self.js, kind, task.task_id, task.attempt)
        except Exception as err:  # (then publish it: within the duplicate window its id keeps it single)
            log.warning("looking up the dead letter of task %s failed: %s", task.task_id, err)
            return False

    async def _publish_result(self, result: TaskResult) -> str | None:
        """Publish ``result`` on its subject, de-duplicated per task attempt; as :meth:`_publish`."""
        subject = result_subject(result.workflow, result.instance_id, result.task_id)
        msg_id = result_msg_id(result.task_id, result.attempt)
        return await self._publish(subject, result.model_dump_json().encode(), msg_id)

    async def _publish(self, subject: str, payload: bytes, msg_id: str) -> str | None:
        """Publish with the de-duplication id, retrying a few times through short NATS trouble; None once stored,
        else why not (the last error, or the permissions violation the server reported for the subject)."""
        delay, failure = 0.2, "no answer"
        for attempt in range(1, PUBLISH_ATTEMPTS + 1):
            noted = self._noted
            try:
                await self._acks.publish_encoded(subject, msg_id_block(msg_id), payload, 5.0)
                return None
            except Exception as err:
                denied = [e for e in self._noted_since(noted) if "permission" in e.lower()]
                failure = denied[-1] if denied else f"{type(err).__name__}: {err or 'no answer'}"
                log.warning("publishing to %s failed (attempt %d): %s", subject, attempt, failure)
                if attempt < PUBLISH_ATTEMPTS:
                    await asyncio.sleep(delay)
                    delay *= 2
        return failure


def _log_fields(task: Task, worker: str) -> dict[str, Any]:
    return {
        "task_id": task.task_id,
        "attempt": task.attempt,
        "workflow": task.workflow,
        "instance": task.instance_id,
        "transition": task.transition,
        "executor": task.kind,
        "worker": worker,
        "traceparent": task.traceparent,
    }


def _seq(msg: Msg) -> int | None:
    try:
        return int(msg.metadata.sequence.stream)
    except Exception:  # never fail on a log line
        return None


def _parse(kind: str, msg: Msg) -> Task:
    """The task a message of the kind's consumer holds; ValueError (a malformed message) when it is none, or
    when its subject is not its own ``cb.task.<kind>.<task_id>``, so a lookup by subject (``task_queued``) always
    finds this very task."""
    if msg.subject == f"{TASK_PREFIX}.{kind}":
        raise ValueError(f"its subject {msg.subject!r} has no task id (tasks go to {TASK_PREFIX}.<executor>.<task_id>)")
    task = parse_task(msg.data)
    if task.kind != kind or msg.subject != task_subject(task.kind, task.task_id):
        raise ValueError(
            f"the task's executor {task.kind!r} and id {task.task_id!r} do not match its subject "
            f"{msg.subject!r} (expected {task_subject(task.kind, task.task_id)!r})"
        )
    return task


def task_filters(kind: str) -> list[str]:
    """What the kind's consumer takes: its tasks (``cb.task.<kind>.<task_id>``), and messages on
    ``cb.task.<kind>`` itself, which no task uses: they are dead-lettered as malformed instead of waiting for
    ever in ``CB_TASKS``."""
    return [f"{TASK_PREFIX}.{kind}", task_filter(kind)]


async def _settle(action: Awaitable[None]) -> None:
    """Ack, nak, heartbeat: a lost connection only means the task comes again, which the protocol allows."""
    try:
        async with asyncio.timeout(5.0):
            await action
    except Exception as err:
        log.debug("settling a task message failed: %s", err)


class _Heartbeat:
    """``in_progress`` for a running task every ``period`` seconds, on a loop timer (no task per run)."""

    __slots__ = ("_handle", "_msg", "_period", "_sending")

    def __init__(self, msg: Msg, period: float) -> None:
        self._msg, self._period = msg, period
        self._sending: asyncio.Task[None] | None = None
        self._handle: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(period, self._beat)

    def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        if self._sending is None or self._sending.done():
            self._sending = loop.create_task(_settle(self._msg.in_progress()))
        self._handle = loop.call_later(self._period, self._beat)

    def retime(self, period: float) -> None:
        """Beat every ``period`` seconds from now on; a shorter period beats at once (the last beat may be older
        than the new ``ack_wait`` allows)."""
        if self._handle is None:
            return
        shorter = period < self._period
        self._period = period
        self._handle.cancel()
        if shorter:
            self._beat()
        else:
            self._handle = asyncio.get_running_loop().call_later(period, self._beat)

    async def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._sending is not None and not self._sending.done():
            self._sending.cancel()
            await asyncio.gather(self._sending, return_exceptions=True)
