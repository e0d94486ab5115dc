"""The engine's task queue on JetStream: publish tasks for the workers, read their results durably.

- a task goes to ``cb.task.<kind>.<task id>`` in ``CB_TASKS`` with ``Nats-Msg-Id: <task id>:<attempt>``, so a
  repeated publish of the same attempt (a retry, a recovery) is dropped within the duplicate window;
- results of a workflow's tasks are read through the durable pull consumer ``cb-engine-<workflow>`` on
  ``CB_RESULTS`` (filter ``cb.result.<workflow>.>``), shared by every engine running the workflow; a result is
  acknowledged once applied (or found moot), and handed back (nak) when applying it failed;
- recovery looks a task up by subject: still in ``CB_TASKS`` (waiting or running) means leave it; a stored
  result means apply it; neither means it was never published, so publish it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NotJSMessageError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from ..config import StreamSettings
from ..engine._tasks import ResultHandler, TaskAttempts
from ..tasks import Task, TaskResult, task_msg_id
from ..workers._queue import ensure_task_streams, queued_task, stored_result
from ._acks import AckedPublisher, msg_id_block
from ._pull import Puller, delivery
from ._subjects import DLQ_STREAM, RESULTS_STREAM, dlq_subject, result_filter, task_subject

__all__ = ["NatsTaskQueue", "engine_durable"]

log = logging.getLogger("circuit_breaker.engine")

MAX_DELIVERIES = 100  # of one result to this engine's consumer (naks 1 s apart while the store is down)


def engine_durable(workflow: str) -> str:
    """The durable consumer of ``workflow``'s results, shared by every engine running it."""
    return f"cb-engine-{workflow}"


class NatsTaskQueue:
    """``Engine(JetStreamStore(...), tasks=NatsTaskQueue(nc))``; a JetStream store makes one by itself."""

    def __init__(
        self,
        connection: NATS,
        *,
        stream: StreamSettings | None = None,
        batch: int = 256,
        concurrency: int = 512,
        ack_wait: float = 30.0,
        poll: float = 1.0,
        publish_timeout: float = 5.0,
    ) -> None:
        self.connection = connection
        self.stream = stream or StreamSettings()
        self.batch = batch
        self.ack_wait = ack_wait
        self.poll = poll
        self.publish_timeout = publish_timeout
        self._js: Any = None
        self._acks = AckedPublisher(connection)
        self._deliver: ResultHandler | None = None
        self.concurrency = concurrency
        self._slots = asyncio.Semaphore(concurrency)
        # Results taken and not yet applied (running, or waiting for a slot); pulls ask for no more than the free
        # slots, so that results do not queue up on the semaphore (whose every acquire looks at all waiters).
        self._taken = 0
        self._room = asyncio.Event()
        self._room.set()
        self._pumps: dict[str, asyncio.Task[None]] = {}
        self._subs: dict[str, Puller] = {}
        self._handling: set[asyncio.Task[None]] = set()
        self._closed = False

    async def open(self, deliver: ResultHandler) -> None:
        self._deliver = deliver
        self._js = self.connection.jetstream(timeout=self.publish_timeout)
        await ensure_task_streams(self._js, self.stream)
        await self._acks.start()

    async def listen(self, workflow: str) -> None:
        if workflow in self._pumps:
            return
        self._subs[workflow] = await self._subscribe(workflow)
        self._pumps[workflow] = asyncio.get_running_loop().create_task(self._pump(workflow))

    async def submit(self, task: Task) -> None:
        await self._acks.publish_encoded(
            task_subject(task.kind, task.task_id),
            msg_id_block(task_msg_id(task.task_id, task.attempt)),
            type(task).__pydantic_serializer__.to_json(task),
            self.publish_timeout,
        )

    async def recover(self, task: Task) -> None:
        queued = await queued_task(self._js, task.kind, task.task_id)
        if queued is not None and queued.attempt >= task.attempt:
            return  # waiting for a worker, or in one's hands
        result = await stored_result(self._js, task.workflow, task.instance_id, task.task_id)
        if result is not None and result.attempt >= task.attempt:
            assert self._deliver is not None
            await self._deliver(result)
            return
        await self.submit(task)

    async def attempts(self, task: Task) -> TaskAttempts:
        """The attempt of ``task``'s message in ``CB_TASKS`` and of its newest stored result (two direct gets).
        A worker stores the result before it acknowledges the task, so an answered attempt can look queued for a
        moment: the engine goes by the result then."""
        queued = await queued_task(self._js, task.kind, task.task_id)
        result = await stored_result(self._js, task.workflow, task.instance_id, task.task_id)
        return TaskAttempts(queued.attempt if queued is not None else 0, result.attempt if result is not None else 0)

    async def forget_dead_letters(self, task: Task) -> None:
        """Purge ``task``'s subject in ``CB_DLQ`` (letters written before dead letters had a subject per task,
        on ``cb.dlq.<kind>``, stay until ``dlq drop``)."""
        await self._js.purge_stream(DLQ_STREAM, subject=dlq_subject(task.kind, task.task_id))

    async def close(self) -> None:
        self._closed = True
        for puller in self._subs.values():  # open pulls end now (a pull request left open would hold up the
            await puller.stop()  # connection's drain); the pumps see the flag
        pumps = list(self._pumps.values())
        if pumps:
            await asyncio.wait(pumps, timeout=1.0)
        while pumps:  # cancelled until they end: nats-py swallows a cancellation while it writes
            for pump in pumps:
                pump.cancel()
            await asyncio.wait(pumps, timeout=0.1)
            pumps = [p for p in pumps if not p.done()]
        self._pumps.clear()
        handling = list(self._handling)
        if handling:
            await asyncio.wait(handling, timeout=5.0)
        self._subs.clear()
        await self._acks.stop()

    # -- results -----------------------------------------------------------------------------------------------
    async def _subscribe(self, workflow: str) -> Puller:
        """A puller on the workflow's shared durable, made first if it is not there (an existing one is used as
        it is: another engine may run with other settings, and a setting the server cannot update would fail)."""
        durable = engine_durable(workflow)
        try:
            await self._js.consumer_info(RESULTS_STREAM, durable)
        except NotFoundError:
            config = ConsumerConfig(
                durable_name=durable,
                filter_subject=result_filter(workflow),
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=self.ack_wait,
                max_ack_pending=100_000,
            )
            await self._js.add_consumer(RESULTS_STREAM, config)
        puller = Puller(self.connection, RESULTS_STREAM, durable, stray=self._apply)
        await puller.start()
        return puller

    async def _pump(self, workflow: str) -> None:
        """Pull results while a slot is free; each is applied in its own task (holding a slot) as it arrives.

        The pull holds no slot while it waits: the workflows' pumps share the slots, and an idle one must not
        keep them from the others."""
        delay = 0.2
        while not self._closed:
            await self._room.wait()  # (until applying one more is possible)
            try:
                free = max(1, min(self.batch, self.concurrency - self._taken))  # (pumps of other workflows share)
                await self._subs[workflow].pull(free, self._apply, self.poll)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                if self._closed:
                    return
                log.warning(
                    "reading results of %s failed (%s: %s); again in %.1fs",
                    workflow,
                    type(err).__name__,
                    err or "no answer",
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                with contextlib.suppress(Exception):
                    await self._subs[workflow].stop()
                with contextlib.suppress(Exception):
                    self._subs[workflow] = await self._subscribe(workflow)  # the consumer may be gone
                continue
            delay = 0.2

    def _apply(self, msg: Msg) -> None:
        """A delivered result, also one that reached the inbox after its pull had ended (see ``Puller``): applied
        like any other. Handing it back instead could bounce it through a request the server still fills (one
        it ends with "409 Server Shutdown" goes on delivering), each bounce counting a delivery."""
        self._taken += 1
        if self._taken >= self.concurrency:
            self._room.clear()
        job = asyncio.get_running_loop().create_task(self._handle_in_slot(msg))
        self._handling.add(job)
        job.add_done_callback(self._handled)

    def _handled(self, job: asyncio.Task[None]) -> None:
        self._handling.discard(job)
        self._taken -= 1
        if self._taken < self.concurrency:
            self._room.set()

    async def _handle_in_slot(self, msg: Msg) -> None:
        async with self._slots:
            await self._handle(msg)

    async def _handle(self, msg: Msg) -> None:
        try:
            result = TaskResult.model_validate_json(msg.data)
        except ValidationError as err:
            log.warning("dropping a malformed result on %s: %s", msg.subject, err)
            await _settle(msg.ack())
            return
        try:
            deliveries = delivery(msg)[0] or 1
        except NotJSMessageError:
            log.warning("dropping a message on %s that no JetStream consumer delivered", msg.subject)
            return
        if deliveries > MAX_DELIVERIES:  # the store has been failing for a long while: stop going round
            log.error(
                "giving up on the result of task %s after %d deliveries; the task stays in flight (its instance "
                "shows it) and recovery applies the result when the engine restarts",
                result.task_id,
                deliveries,
                extra={"task_id": result.task_id, "workflow": result.workflow, "instance": result.instance_id},
            )
            await _settle(msg.term())
            return
        assert self._deliver is not None
        try:
            await self._deliver(result)
        except asyncio.CancelledError:
            await _settle(msg.nak(delay=1.0))
            raise
        except Exception as err:
            log.warning(
                "applying the result of task %s failed (%s: %s); handed back",
                result.task_id,
                type(err).__name__,
                err or "no detail",
            )
            await _settle(msg.nak(delay=1.0))
            return
        await _settle(msg.ack())


async def _settle(action: Any) -> None:
    """Ack or nak; a lost acknowledgement only means the result comes again, and applying it is idempotent."""
    with contextlib.suppress(Exception):
        await action
