"""The inbox: fire-and-forget injection through the stream ``CB_INBOX``, drained by every engine together.

Publishers put an inject request on ``cb.inbox.<workflow>`` with ``Nats-Msg-Id: <dedupe id>`` (the server
drops a repeat within the duplicate window). Each workflow has its own durable consumer, which the engines
that run the workflow share, so each message is handled by one of them at a time, and only by one that runs
it: engines of other projects on the same NATS never see it, and a message for a workflow no engine runs waits
in the stream until one does. An engine acknowledges a message only after the instance exists; one that dies
mid-way leaves the message to be redelivered. Redelivery cannot start a second instance: the instance id is
derived from the dedupe id (or, without one, from the message's place in the stream).

Messages that can never succeed (malformed, invalid data) are terminated and logged with the reason, so a bad
message is not redelivered for ever; transient failures are retried with a growing delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DiscardPolicy, RetentionPolicy
from nats.js.errors import NotFoundError

from ..config import StreamSettings
from ..errors import InjectError
from ._protocol import (
    DEDUPE_HEADER,
    DEFAULT_MAX_PAYLOAD,
    InjectAccepted,
    InjectRequest,
    dedupe_header,
    parse_request,
)
from ._pull import Puller, delivery
from ._store import ensure_stream
from ._subjects import INBOX_PREFIX, INBOX_STREAM

__all__ = ["INBOX_SUBJECTS", "InboxConsumer", "ensure_inbox_stream", "inbox_durable", "retire_shared_consumer"]

log = logging.getLogger("circuit_breaker.nats.inbox")

INBOX_SUBJECTS = [f"{INBOX_PREFIX}.>"]
UNEXPECTED_ATTEMPTS = 5  # a message that keeps hitting a bug is terminated after this many deliveries
MAX_NAK_DELAY = 30.0
STOP_WAIT = 2.0  # seconds stop() waits for the fetch loop to end

# (workflow, request, dedupe key) -> the started (or earlier) instance; raises InjectError.
Handler = Callable[[str, InjectRequest, str | None], Awaitable[InjectAccepted]]


async def ensure_inbox_stream(js: Any, settings: StreamSettings, name: str = INBOX_STREAM) -> Any:
    """Create the inbox stream, or check the existing one (never changes it); returns its ``StreamInfo``.

    Work-queue retention: a message is deleted once an engine acknowledged it. Discard-new: with a limit added
    by hand, publishing fails instead of dropping tokens nobody has handled yet.
    """
    return await ensure_stream(
        js,
        name,
        INBOX_SUBJECTS,
        settings,
        retention=RetentionPolicy.WORK_QUEUE,
        discard=DiscardPolicy.NEW,
        holds="injected tokens",
    )


def inbox_durable(durable: str, workflow: str) -> str:
    """The name of ``workflow``'s inbox consumer, shared by the engines (queue ``durable``) that run it."""
    return f"{durable}-{workflow}"


async def retire_shared_consumer(js: Any, durable: str) -> None:
    """Delete the one consumer over all of ``cb.inbox.>`` that engines shared before each workflow had its own:
    a work-queue stream takes no consumers whose filters overlap. Its messages stay in the stream, for the new
    consumers; a message it had in hand is delivered again."""
    try:
        info = await js.consumer_info(INBOX_STREAM, durable)
    except NotFoundError:
        return
    config = info.config
    if config.filter_subject == INBOX_SUBJECTS[0] or not (config.filter_subject or config.filter_subjects):
        await js.delete_consumer(INBOX_STREAM, durable)
        log.info("removed the inbox consumer %s that all workflows shared (each workflow has its own now)", durable)


class InboxConsumer:
    """Pulls ``workflow``'s inbox messages (all of the inbox when None) through the durable consumer ``durable``
    and hands each to ``handler``.

    One pull request (see ``Puller``) asks for as many messages as there are free handler slots, and each message
    is handled as it arrives. The puller is made again (and the stream and consumer re-ensured) after any
    failure: a lost connection, a restarted server, a deleted consumer.
    """

    def __init__(
        self,
        connection: NATS,
        handler: Handler,
        *,
        settings: StreamSettings,
        durable: str,
        workflow: str | None = None,
        concurrency: int = 64,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        poll: float = 5.0,
        ack_wait: float = 30.0,
    ) -> None:
        self.connection = connection
        self.js = connection.jetstream(timeout=poll)
        self.handler = handler
        self.settings = settings
        self.durable = durable
        self.filter_subject = INBOX_SUBJECTS[0] if workflow is None else f"{INBOX_PREFIX}.{workflow}"
        self.concurrency = concurrency
        self.max_payload = max_payload
        self.poll = poll
        self.ack_wait = ack_wait
        self._puller: Puller | None = None
        self._stream_created = ""
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._stopping = False

    async def start(self) -> None:
        """Subscribe now, so an incompatible stream fails the start instead of a background loop."""
        await self._subscribe()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"cb-inbox {self.filter_subject}")

    async def stop(self, grace: float = 5.0) -> None:
        """Stop fetching, let messages in hand finish for up to ``grace`` seconds; the rest are redelivered."""
        self._stopping = True
        if self._puller is not None:  # an open pull ends now (its request left open would hold up a drain)
            await self._puller.stop()
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=STOP_WAIT)
            self._task = None
        if self._inflight:
            _, pending = await asyncio.wait(set(self._inflight), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._unsubscribe()

    async def _subscribe(self) -> None:
        info = await ensure_inbox_stream(self.js, self.settings)
        self._stream_created = info.created.isoformat() if info.created is not None else ""
        try:  # the engines share it: one that is there is used as it is
            await self.js.consumer_info(INBOX_STREAM, self.durable)
        except NotFoundError:
            config = ConsumerConfig(
                durable_name=self.durable,
                filter_subject=self.filter_subject,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self.ack_wait,
                max_ack_pending=max(self.concurrency * 4, 256),
            )
            await self.js.add_consumer(INBOX_STREAM, config)
        self._puller = Puller(self.connection, INBOX_STREAM, self.durable, stray=self._start)
        await self._puller.start()

    async def _unsubscribe(self) -> None:
        puller, self._puller = self._puller, None
        if puller is not None:  # the durable stays on the server
            with contextlib.suppress(Exception):
                await puller.stop()

    async def _run(self) -> None:
        delay = 0.1
        while not self._stopping:
            try:
                if self.connection.is_closed:
                    log.error("inbox consumer stops: the NATS connection is closed")
                    return
                if self._puller is None:
                    await self._subscribe()
                delay = 0.1
                await self._pump()
            except asyncio.CancelledError:
                raise
            except Exception as err:
                if self.connection.is_closed or self._stopping:
                    continue  # (said above, or asked for)
                log.warning(
                    "inbox consumer: %s: %s; subscribing again in %.1fs", type(err).__name__, err or "no answer", delay
                )
                await self._unsubscribe()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _pump(self) -> None:
        """Pull as many messages as there are free handler slots (never more: their ack timers run)."""
        while self._puller is not None and not self._stopping and not self.connection.is_closed:
            free = self.concurrency - len(self._inflight)
            if free <= 0:
                await asyncio.wait(set(self._inflight), return_when=asyncio.FIRST_COMPLETED)
                continue
            await self._puller.pull(free, self._start, self.poll)

    def _start(self, msg: Msg) -> None:
        """Handle a message in its own task: one delivered for a pull, or one that reached the inbox after its
        pull had ended (handled too: the handler is idempotent, and handing it back could bounce it through a
        request the server still fills, each bounce counting a delivery); while stopping, handed back."""
        loop = asyncio.get_running_loop()
        task = loop.create_task(_settle(msg.nak()) if self._stopping else self._handle(msg))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    def _dedupe_key(self, msg: Msg, request: InjectRequest) -> str:
        """The body's dedupe_id, else the Nats-Msg-Id header, else the message's place in this very stream
        (the stream's creation time tells a re-created stream's sequence numbers apart), so a redelivery finds
        the instance the first delivery started."""
        if request.dedupe_id is not None:
            return request.dedupe_id
        header = (msg.headers or {}).get(DEDUPE_HEADER)
        if header:
            return dedupe_header(header)
        return f"\x00inbox\x00{self._stream_created}\x00{delivery(msg)[1]}"

    async def _handle(self, msg: Msg) -> None:
        workflow = msg.subject[len(INBOX_PREFIX) + 1 :]
        try:
            request = parse_request(msg.data, max_payload=self.max_payload)
            accepted = await self.handler(workflow, request, self._dedupe_key(msg, request))
        except InjectError as err:
            if err.retryable:
                await self._nak(msg, f"{err.code}: {err.message}")
            else:
                log.warning(
                    "inbox message %s on %s terminated: %s: %s",
                    _seq(msg),
                    msg.subject,
                    err.code,
                    err.message,
                )
                await _settle(msg.term())
            return
        except asyncio.CancelledError:
            raise
        except Exception as err:
            attempts = delivery(msg)[0]
            if attempts >= UNEXPECTED_ATTEMPTS:
                log.exception("inbox message %s on %s terminated after %d attempts", _seq(msg), msg.subject, attempts)
                await _settle(msg.term())
            else:
                log.exception("inbox message %s on %s failed", _seq(msg), msg.subject)
                await self._nak(msg, f"{type(err).__name__}: {err}")
            return
        if accepted.duplicate:
            log.debug("inbox message %s on %s: instance %s exists", _seq(msg), msg.subject, accepted.instance_id)
        await _settle(msg.ack())

    async def _nak(self, msg: Msg, reason: str) -> None:
        delay = min(0.5 * 2 ** (delivery(msg)[0] - 1), MAX_NAK_DELAY)
        log.info("inbox message %s on %s retried in %.1fs: %s", _seq(msg), msg.subject, delay, reason)
        await _settle(msg.nak(delay=delay))


def _seq(msg: Msg) -> int | None:
    try:
        return delivery(msg)[1]
    except Exception:  # not a JetStream message (cannot happen on a pull subscription; never fail on a log line)
        return None


async def _settle(action: Awaitable[None]) -> None:
    """Ack, nak or term; a lost connection only means the message comes again, which is safe."""
    try:
        await action
    except Exception as err:
        log.debug("settling an inbox message failed: %s", err)
