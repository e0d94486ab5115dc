"""EventStream: read instance events from the ``CB_EVENTS`` stream, replayed and then live, filtered by subject.

Two kinds of reader, both on pull consumers this module drives itself (nats-py's ordered push consumer restarts
from the stream's first message when it resets before its first delivery, which would replay history to a
``since="new"`` subscriber):

- ephemeral (the default): nothing is acknowledged; the reader tracks the stream sequence it reached and, after
  any failure (a lost delivery, a reconnect, the consumer expired), creates a new consumer from the next
  sequence, so events arrive in order, without gaps or repeats;
- durable (``durable="name"``): the server remembers what was consumed, so a service that stops and comes back
  gets what it missed. An event counts as consumed when the loop asks for the next one or leaves the loop;
  events fetched but not yet handed out are returned to the server on close. A process that dies while
  handling an event gets it again (at-least-once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import nats.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from ..dsl._workflow import check_name
from ..errors import DefinitionError, SubscriptionError
from ..events import Event, EventType, parse_event
from ._subjects import EVENTS_STREAM, event_filter

__all__ = ["TRANSITION_TYPES", "EventStream", "Since", "event_filters", "subject_token"]

log = logging.getLogger("circuit_breaker.nats.events")

Since = Literal["start", "new"] | int | datetime

BATCH = 256
DURABLE_BATCH = 64
DURABLE_ACK_WAIT = 300.0  # seconds an event may stay un-consumed before the server offers it again
POLL = 5.0  # seconds a fetch waits for new events before looking again
TRANSITION_TYPES = (EventType.TRANSITION_FIRED, EventType.TRANSITION_REJECTED, EventType.TRANSITION_FAILED)
INACTIVE = 60.0  # an ephemeral consumer nobody fetches from (a stopped loop, a dead process) is removed then
QUIET_FAILURES = 3  # consecutive failures to read events before they are logged as a warning


def subject_token(kind: str, value: str) -> str:
    """``value`` if it can be one token of a subject (no dots, wildcards or spaces); else ValueError."""
    try:
        return check_name(kind, value)
    except DefinitionError as err:
        raise ValueError(str(err)) from None


def event_filters(
    workflow: str | None = None, instance: str | None = None, types: Sequence[EventType | str] | None = None
) -> list[str]:
    """The subject filters for these criteria (one per event type; one in all when types is None)."""
    if workflow is not None:
        subject_token("workflow", workflow)
    if instance is not None:
        subject_token("instance", instance)
    if types is None:
        return [event_filter(workflow, instance)]
    wanted: list[str] = []
    for t in types:
        try:
            value = EventType(t).value
        except ValueError:
            known = ", ".join(e.value for e in EventType)
            raise ValueError(f"unknown event type {t!r} (known: {known})") from None
        if value not in wanted:
            wanted.append(value)
    if not wanted:
        raise ValueError("types is empty: pass None for every type")
    return [event_filter(workflow, instance, t) for t in wanted]


def _check_since(since: Since) -> Since:
    if isinstance(since, bool) or not (isinstance(since, (int, datetime)) or since in ("start", "new")):
        raise ValueError(f"since must be 'start', 'new', a stream sequence (int >= 1) or a datetime, not {since!r}")
    if isinstance(since, int) and since < 1:
        raise ValueError(f"since={since}: stream sequences start at 1")
    if isinstance(since, datetime) and since.tzinfo is None:
        raise ValueError("since is a naive datetime: give it a timezone (events are stamped in UTC)")
    return since


class EventStream:
    """Events matching ``filters``, oldest first; follows live ones unless ``follow=False``.

    ``async for event in stream`` subscribes when the loop starts; ``async with stream:`` subscribes at once
    (so ``since="new"`` means "from here"), and closes the subscription on exit.
    """

    def __init__(
        self,
        js: Any,
        filters: list[str],
        *,
        since: Since = "start",
        durable: str | None = None,
        follow: bool = True,
        stream: str = EVENTS_STREAM,
        poll: float = POLL,
        transition: str | None = None,
    ) -> None:
        self._reader = _Reader(
            js, filters, since=since, durable=durable, follow=follow, stream=stream, poll=poll, transition=transition
        )
        self._gen: AsyncGenerator[Event, None] | None = None

    @property
    def filters(self) -> list[str]:
        return list(self._reader.filters)

    @property
    def durable(self) -> str | None:
        return self._reader.durable

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        if self._gen is None:
            self._gen = _iterate(self._reader)
        return await self._gen.__anext__()

    async def open(self) -> None:
        """Subscribe now (waiting for the events stream to exist when following)."""
        await self._reader.open()

    async def __aenter__(self) -> EventStream:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """End the subscription: a durable one records the event in hand as consumed."""
        if self._gen is not None:
            await self._gen.aclose()
        else:
            await self._reader.finish()


async def _iterate(reader: _Reader) -> AsyncGenerator[Event, None]:
    # A generator that refers to the reader only, not to the EventStream: a loop that breaks without closing
    # drops the stream, the generator with it, and the event loop then closes the generator, which releases
    # the consumer (a reference cycle back to the stream would leave that to the cyclic GC, some time later).
    try:
        await reader.open()
        while True:
            msg = await reader.next()
            if msg is None:
                return
            try:
                event = parse_event(msg.data)
            except Exception:  # a foreign message on our subjects must not stop a subscriber
                log.warning("skipping a message on %s that is not an event", msg.subject)
                event = None
            if event is None or (reader.transition and getattr(event, "transition", None) != reader.transition):
                if reader.durable is not None:
                    await _quietly(msg.ack())
                continue
            reader.current = msg
            yield event
            if reader.durable is not None:
                reader.current = None
                await _quietly(msg.ack())
    finally:
        await reader.finish()


class _Reader:
    """The consumer behind an EventStream, and where it got to."""

    def __init__(
        self,
        js: Any,
        filters: list[str],
        *,
        since: Since,
        durable: str | None,
        follow: bool,
        stream: str,
        poll: float,
        transition: str | None,
    ) -> None:
        self.js = js
        self.filters = filters
        self.since = _check_since(since)
        self.durable = subject_token("durable subscription", durable) if durable is not None else None
        self.follow = follow
        self.stream = stream
        self.poll = poll
        self.current: Msg | None = None  # durable: handed out, consumed when the loop comes back
        self.transition = transition  # keep only this transition's events (subjects do not name transitions)
        self._sub: Any = None
        self._opened = False
        self._empty = False  # follow=False and the stream does not exist: nothing to read
        self._start: dict[str, Any] = {}  # where a new ephemeral consumer starts (before any event was seen)
        self._last = 0  # stream sequence of the newest event handed out (ephemeral)
        self._cseq = 0  # consumer sequence of the newest delivery (ephemeral: a jump means a lost delivery)
        self._end: int | None = None  # follow=False: the stream's last sequence when the reader opened
        self._done = False
        self._buffer: deque[Msg] = deque()
        self._fetched_at = 0.0
        self._consumer: str | None = None  # the ephemeral consumer's name
        self._failures = 0

    # -- opening --------------------------------------------------------------------------------------
    async def open(self) -> None:
        """Create the consumer (waiting for the events stream to exist when following)."""
        if self._opened:
            return
        info = await self._stream_info()
        if info is None:
            self._empty = True
            self._opened = True
            return
        if not self.follow:
            self._end = int(info.state.last_seq)
        if self.durable is not None:
            await self._bind_durable()
        else:
            self._start = self._start_position(int(info.state.last_seq))
            await self._subscribe()
        self._opened = True

    async def _stream_info(self) -> Any:
        logged = False
        while True:
            try:
                return await self.js.stream_info(self.stream)
            except NotFoundError:
                if not self.follow:
                    return None
                if not logged:
                    log.info("waiting for stream %s (no engine has stored an event yet)", self.stream)
                    logged = True
                await asyncio.sleep(1.0)

    def _start_position(self, last_seq: int) -> dict[str, Any]:
        since = self.since
        if since == "start":
            return {"deliver_policy": DeliverPolicy.ALL}
        if since == "new":
            # Resolved now rather than DeliverPolicy.NEW, so a consumer re-created later starts here too.
            return {"deliver_policy": DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": last_seq + 1}
        if isinstance(since, datetime):
            return {"deliver_policy": DeliverPolicy.BY_START_TIME, "opt_start_time": since.astimezone(UTC)}
        return {"deliver_policy": DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": since}

    def _filter_config(self) -> dict[str, Any]:
        if len(self.filters) == 1:
            return {"filter_subject": self.filters[0]}
        return {"filter_subjects": list(self.filters)}

    async def _subscribe(self) -> None:
        """A new ephemeral consumer from the event after the last one handed out (or from ``since``)."""
        start = (
            {"deliver_policy": DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": self._last + 1}
            if self._last
            else self._start
        )
        config = ConsumerConfig(
            name=f"cb-events-{uuid.uuid4().hex[:16]}",
            ack_policy=AckPolicy.NONE,
            inactive_threshold=INACTIVE,
            mem_storage=True,
            num_replicas=1,
            **start,
            **self._filter_config(),
        )
        await self.js.add_consumer(self.stream, config=config)
        self._consumer = config.name
        self._sub = await self.js.pull_subscribe_bind(consumer=config.name, stream=self.stream)
        self._cseq = 0
        if self._end is not None and (await self._sub.consumer_info()).num_pending == 0:
            self._done = True

    async def _bind_durable(self) -> None:
        name = self.durable
        assert name is not None
        try:
            info = await self.js.consumer_info(self.stream, name)
        except NotFoundError:
            config = ConsumerConfig(
                name=name,
                durable_name=name,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=DURABLE_ACK_WAIT,
                max_ack_pending=DURABLE_BATCH * 4,
                **self._start_position(int((await self.js.stream_info(self.stream)).state.last_seq)),
                **self._filter_config(),
            )
            info = await self.js.add_consumer(self.stream, config=config)
        single = [info.config.filter_subject] if info.config.filter_subject else []
        have = sorted(info.config.filter_subjects or single)
        if have != sorted(self.filters) or info.config.deliver_subject:
            what = "a push consumer" if info.config.deliver_subject else f"filters {have}"
            raise SubscriptionError(
                f"durable subscription {name!r} exists with {what}, not {sorted(self.filters)}: "
                "use another name, or delete it first",
                durable=name,
            )
        self._sub = await self.js.pull_subscribe_bind(durable=name, stream=self.stream)
        if self._end is not None and info.num_pending == 0 and info.num_ack_pending == 0:
            self._done = True

    # -- reading --------------------------------------------------------------------------------------
    async def next(self) -> Msg | None:
        """The next message to hand out, or None when a ``follow=False`` reader reached the end."""
        while True:
            if self._buffer:
                if self.durable is not None and time.monotonic() - self._fetched_at > DURABLE_ACK_WAIT / 2:
                    await self._keep_buffer()
                return self._buffer.popleft()
            if self._empty or self._done:
                return None
            await self._fill()

    async def _fill(self) -> None:
        try:
            if self._sub is None:
                await (self._bind_durable() if self.durable is not None else self._subscribe())
                if self._done:
                    return
            msgs = await self._sub.fetch(DURABLE_BATCH if self.durable else BATCH, timeout=self.poll)
        except nats.errors.TimeoutError:
            if self._end is not None and self.durable is not None:
                info = await self._sub.consumer_info()
                self._done = info.num_pending == 0 and info.num_ack_pending == 0
            return
        except (nats.errors.ConnectionClosedError, SubscriptionError):
            raise
        except Exception as err:
            # The consumer is gone (an ephemeral one expired while the loop was busy, the server restarted) or
            # the connection is down for now: subscribe again, from where this reader got to.
            delay = min(0.2 * 2**self._failures, 5.0)
            self._failures += 1
            # A server restart or a leader election answers once or twice like this and passes: said quietly;
            # what goes on failing is a warning.
            log.log(
                logging.WARNING if self._failures >= QUIET_FAILURES else logging.INFO,
                "event subscription%s: %s: %s; subscribing again in %.1fs",
                f" {self.durable}" if self.durable else "",
                type(err).__name__,
                err,
                delay,
            )
            await self._drop()
            await asyncio.sleep(delay)
            return
        self._failures = 0
        self._fetched_at = time.monotonic()
        for msg in msgs:
            if self.durable is None:
                meta = msg.metadata
                if meta.sequence.consumer != self._cseq + 1:
                    # A delivery was lost (reconnect, slow consumer): keep what is in order, resume after it.
                    log.info("event subscription: a delivery was lost; resuming after stream seq %d", self._last)
                    await self._drop()
                    return
                self._cseq = meta.sequence.consumer
                if meta.sequence.stream <= self._last:
                    continue
                self._last = meta.sequence.stream
                if self._end is not None and (meta.sequence.stream >= self._end or meta.num_pending == 0):
                    self._done = True
                    if meta.sequence.stream > self._end:
                        return  # appended after the reader opened: not part of a snapshot
                self._buffer.append(msg)
                if self._done:
                    return
            else:
                self._buffer.append(msg)
                if self._end is not None and msg.metadata.num_pending == 0:
                    self._done = True

    async def _keep_buffer(self) -> None:
        """A slow loop: tell the server the durable's fetched events are still being worked on."""
        for msg in self._buffer:
            await _quietly(msg.in_progress())
        self._fetched_at = time.monotonic()

    async def _drop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is None:
            return
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(Exception):  # it also expires by itself after INACTIVE seconds
                await self.js.delete_consumer(self.stream, consumer)

    async def finish(self) -> None:
        if self.durable is not None:
            current, self.current = self.current, None
            if current is not None:
                await _quietly(current.ack_sync(timeout=2.0))
            while self._buffer:
                await _quietly(self._buffer.popleft().nak())
        self._buffer.clear()
        await self._drop()


async def _quietly(action: Any) -> None:
    """Acks and naks on a connection that may be gone: the server then redelivers, which is the contract."""
    try:
        await action
    except Exception as err:
        log.debug("settling an event message failed: %s", err)
