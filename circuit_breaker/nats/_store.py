"""JetStreamStore: instance events in a NATS JetStream stream, the source of truth for every engine.

Each event is one message on ``cb.ev.<workflow>.<instance>.<type>`` in stream ``CB_EVENTS``. An append carries

- ``Nats-Expected-Last-Subject-Sequence`` with ``...-Subject: cb.ev.*.<instance>.*``: the server
  accepts it only if the instance's last message is the one this store last saw, so two engines can never
  both commit from the same marking (the loser gets ``ConcurrencyError`` and re-reads);
- ``Nats-Msg-Id: <instance>:<seq>:<random>`` (one per append): when an acknowledgement is lost and the publish
  is retried, the server refuses the retry (the instance moved on) and the store finds its own message by this
  id, so a retried publish is never applied twice;
- ``Cb-Origin``: which store wrote it, so an engine's watcher skips its own events cheaply.

Reads use direct gets (any replica answers) for single instances and ephemeral pull consumers for scans.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Collection, Sequence
from datetime import timedelta
from functools import partial
from typing import Any, TypeVar

from nats.aio.client import Client as NATS
from nats.errors import ConnectionClosedError, NoRespondersError, OutboundBufferLimitError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import (
    APIError,
    BucketNotFoundError,
    KeyNotFoundError,
    NoStreamResponseError,
    NotFoundError,
    ServiceUnavailableError,
)

from ..config import Settings, StreamSettings
from ..errors import ConcurrencyError, EventTooLargeError, StoreError, StreamConfigError
from ..events import Event, EventType, parse_event
from ._acks import AckedPublisher, stream_sequence
from ._embedded import connect_nats, drain_connection
from ._pull import ConsumerGoneError, Puller, delivery
from ._subjects import (
    EVENT_PREFIX,
    EVENTS_STREAM,
    HELLO_SUBJECT,
    MARKS_BUCKET,
    POKE_SUBJECT,
    PROBE_SUBJECT,
    event_filter,
    event_subject,
    instance_filter,
)

__all__ = ["JetStreamStore", "ensure_bucket", "ensure_stream"]

log = logging.getLogger("circuit_breaker.nats")

WRONG_LAST_SEQUENCE = (10071, 10164)  # the server's error codes for a failed expected-sequence check
HAND_OVER_WAIT = 0.5  # seconds an observer waits for the engine driving an instance to take its change over
# No answer, or "no stream" while a cluster elects a new leader (about 5 s after a leader dies).
_TRANSIENT = (
    NatsTimeoutError,
    asyncio.TimeoutError,
    NoRespondersError,
    NoStreamResponseError,
    ServiceUnavailableError,
    ConnectionClosedError,
    OutboundBufferLimitError,
)
SCAN_BATCH = 512
PULL_TIMEOUT = 10.0  # seconds one batch request may take before it is asked again
SCAN_RESTARTS = 5  # scan consumers made again in a row without getting a message, before a scan gives up
# A starting engine's probe for running peers: how long to wait for a first answer (only when some engine
# is subscribed but slow; with none the server says so at once), and for more answers after one came.
DISCOVERY_TIMEOUT = 1.0
DISCOVERY_QUIET = 0.05
T = TypeVar("T")


FINAL_STATUSES = frozenset({"cancelled", "rolled_back"})  # (and completed): nothing changes an instance after


def _ends(event: Event) -> bool:
    """Whether ``event`` ends its instance (nobody needs to drive it any more)."""
    kind = event.type
    return kind is EventType.INSTANCE_COMPLETED or (
        kind is EventType.INSTANCE_STATUS_CHANGED and getattr(event, "status", None) in FINAL_STATUSES
    )


def _seconds(value: timedelta | None) -> float:
    return value.total_seconds() if value is not None else 0.0


async def ensure_stream(
    js: Any,
    name: str,
    subjects: list[str],
    settings: StreamSettings,
    *,
    retention: RetentionPolicy = RetentionPolicy.LIMITS,
    discard: DiscardPolicy = DiscardPolicy.OLD,
    holds: str = "events",
) -> Any:
    """Create the stream, or check that the existing one can be used (never changes one that exists); returns
    its ``StreamInfo``.

    Refused: other subjects, another retention policy, a ``max_age`` or size limit that would drop what the
    stream ``holds``, memory storage when file storage was asked for. The replica count may differ (an
    operator may have changed it on purpose); a warning is logged.
    """
    wanted = StreamConfig(
        name=name,
        subjects=subjects,
        retention=retention,
        storage=StorageType.FILE if settings.storage == "file" else StorageType.MEMORY,
        num_replicas=settings.replicas,
        max_age=_seconds(settings.max_age),
        duplicate_window=_seconds(settings.duplicate_window),
        discard=discard,
        allow_direct=True,
    )
    try:
        info = await js.stream_info(name)
    except NotFoundError:
        try:
            return await js.add_stream(wanted)
        except APIError as err:
            if err.err_code != 10058:  # 10058: created meanwhile by another process; check it below
                raise StoreError(f"cannot create stream {name!r}: {err.description}") from err
            info = await js.stream_info(name)
    have = info.config
    problems: list[str] = []
    if sorted(have.subjects or []) != sorted(subjects):
        problems.append(f"subjects are {have.subjects}, expected {subjects}")
    if (have.retention or RetentionPolicy.LIMITS) != retention:
        problems.append(f"retention is {have.retention}, expected {retention.value}")
    if (have.max_age or 0) != (wanted.max_age or 0):
        problems.append(f"max_age is {have.max_age or 0:g}s, expected {wanted.max_age or 0:g}s (0 = keep for ever)")
    for limit in ("max_msgs", "max_bytes", "max_msgs_per_subject"):
        value = getattr(have, limit, None)
        if value not in (None, -1, 0):
            problems.append(f"{limit} is {value}: {holds} could be dropped")
    if not getattr(have, "allow_direct", False):
        problems.append("allow_direct is off: single instances could not be read without a consumer")
    if settings.storage == "file" and have.storage == StorageType.MEMORY:
        problems.append(f"storage is memory, expected file ({holds} would not survive a restart)")
    if problems:
        raise StreamConfigError(name, problems)
    if have.num_replicas != wanted.num_replicas:
        log.warning(
            "stream %s has %s replicas (settings ask for %s); left as it is", name, have.num_replicas, settings.replicas
        )
    return info


async def ensure_bucket(js: Any, bucket: str, settings: StreamSettings, description: str) -> Any:
    """Create the KV bucket, or check that the existing one can be used (never changes one that exists); returns
    the bucket. Refused: entries that expire (a ``max_age``), memory storage when file storage was asked for."""
    try:
        kv = await js.key_value(bucket)
    except BucketNotFoundError:
        config = KeyValueConfig(
            bucket=bucket,
            description=description,
            history=1,
            storage=StorageType.FILE if settings.storage == "file" else StorageType.MEMORY,
            replicas=settings.replicas,
            direct=True,
        )
        try:
            return await js.create_key_value(config)
        except APIError as err:
            if err.err_code != 10058:  # created meanwhile by another process; check it below
                raise StoreError(f"cannot create key-value bucket {bucket!r}: {err.description}") from err
            kv = await js.key_value(bucket)
    have = (await js.stream_info(f"KV_{bucket}")).config
    problems: list[str] = []
    if have.max_age:
        problems.append(f"max_age is {have.max_age:g}s, expected 0 (entries must not expire)")
    if settings.storage == "file" and have.storage == StorageType.MEMORY:
        problems.append("storage is memory, expected file (entries would not survive a restart)")
    if problems:
        raise StreamConfigError(f"KV_{bucket}", problems)
    return kv


class JetStreamStore:
    """Events of every instance in one JetStream stream; see the module docstring for the protocol.

    ``JetStreamStore(servers=["nats://127.0.0.1:4222"])`` connects on ``open()`` (``connect_options`` go to
    ``nats.connect``); pass ``connection=`` to share a connection you manage.
    """

    appends_atomically = False

    def __init__(
        self,
        servers: Sequence[str] | str | None = None,
        *,
        connection: NATS | None = None,
        settings: Settings | None = None,
        stream: StreamSettings | None = None,
        stream_name: str = EVENTS_STREAM,
        publish_timeout: float = 5.0,
        publish_retry_for: float = 30.0,
        startup_wait: float = 30.0,
        heartbeat: float = 5.0,
        **connect_options: Any,
    ) -> None:
        if servers is None and connection is None:
            raise ValueError("JetStreamStore needs servers=[...] or connection=")
        self.servers = [servers] if isinstance(servers, str) else list(servers or [])
        # Explicit arguments only: a library user's store does not pick up CB_* variables by surprise.
        self._settings = settings if settings is not None else Settings.model_construct()
        self.settings = stream or (settings.stream if settings is not None else StreamSettings())
        self.stream_name = stream_name
        self.publish_timeout = publish_timeout
        self.publish_retry_for = publish_retry_for
        self.startup_wait = startup_wait
        self.origin = uuid.uuid4().hex[:12]
        self._connect_options = connect_options
        self._nc: NATS | None = connection
        self._own_connection = connection is None
        self._js: Any = None
        self._acks: AckedPublisher | None = None
        # instance id -> (instance seq, stream seq) of the newest event this store saw: the expected-sequence
        # header needs the stream position, the engine speaks in instance versions.
        self._last: dict[str, tuple[int, int]] = {}
        self._nonce = os.urandom(8).hex() + "-"  # with a counter, the message ids of this store's appends
        self._appended = 0
        self.watched_up_to = 0
        self._hello_sub: Any = None
        self._probe_sub: Any = None
        self._poke_sub: Any = None
        self._marks: Any = None  # the CB_MARKS bucket
        self._stream_created = ""  # a mark counts only for the stream it was taken on (not a re-created one)
        # Takeover: which driving engine (store origin, this one included) last wrote each unfinished instance
        # this store wrote or followed, when each peer was last heard of, and the heartbeat that tells the peers
        # this engine is alive.
        self.heartbeat = heartbeat
        self.writer_of: dict[str, str] = {}
        self.gone: set[str] = set()  # engines that said bye or stopped beating
        self._peers: dict[str, float] = {}
        self._takes: dict[str, set[str]] = {}  # peer -> the workflows it takes over (absent: it did not say)
        self._injects: dict[str, set[str]] = {}  # peer -> the workflows it takes injections for
        self._serving_injections: Callable[[], Collection[str]] | None = None
        self._takes_over = False  # whether this engine takes over instances others leave (see announce's on_gone)
        self._beats: asyncio.Task[None] | None = None
        self._beat_message: Callable[[], bytes] | None = None  # (set by announce)
        self._telling: set[asyncio.Task[None]] = set()
        self._writer = False

    # -- lifecycle -----------------------------------------------------------------------------------------
    @property
    def connection(self) -> NATS:
        if self._nc is None:
            raise StoreError("the JetStream store is not open")
        return self._nc

    @property
    def js(self) -> Any:
        if self._js is None:
            raise StoreError("the JetStream store is not open")
        return self._js

    async def open(self) -> None:
        if self._js is not None:
            return
        if self._nc is None:
            # Retries with backoff while NATS is unreachable; errors name the servers, never credentials.
            self._nc = await connect_nats(self._settings, self.servers, **self._connect_options)
        self._js = self._nc.jetstream(timeout=self.publish_timeout)
        self._acks = AckedPublisher(self._nc)
        await self._acks.start()
        # Right after a server starts or a cluster loses a node, JetStream may not answer for a few seconds
        # (leader elections): keep asking for a while rather than failing the engine's start.
        loop = asyncio.get_running_loop()
        delay, deadline = 0.2, loop.time() + self.startup_wait
        while True:
            try:
                info = await ensure_stream(self._js, self.stream_name, [f"{EVENT_PREFIX}.>"], self.settings)
                self._stream_created = info.created.isoformat() if info.created is not None else ""
                self._marks = await ensure_bucket(
                    self._js, MARKS_BUCKET, self.settings, "circuit_breaker: where each workflow's open instances begin"
                )
                return
            except (*_TRANSIENT, APIError) as err:
                if isinstance(err, APIError) and err.code not in (None, 503):
                    raise
                if loop.time() >= deadline:
                    raise StoreError(
                        f"JetStream did not answer within {self.startup_wait:g}s ({type(err).__name__}: {err});"
                        " is JetStream enabled on the server?"
                    ) from err
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def __aenter__(self) -> JetStreamStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def task_queue(self) -> Any:
        """The engine's task queue for remote actions: tasks and results on this store's NATS connection."""
        from ._dispatch import NatsTaskQueue

        return NatsTaskQueue(self.connection, stream=self.settings, publish_timeout=self.publish_timeout)

    async def close(self) -> None:
        self._js = None
        self._beat_message = None  # (advertise says nothing more)
        if self._telling:
            await asyncio.gather(*self._telling, return_exceptions=True)
        if self._beats is not None:
            self._beats.cancel()
            with contextlib.suppress(BaseException):
                await self._beats
            self._beats = None
            if self._writer and self._nc is not None and not self._nc.is_closed:  # peers take over at once
                with contextlib.suppress(Exception):
                    await self._nc.publish(HELLO_SUBJECT, json.dumps({"origin": self.origin, "bye": True}).encode())
                    await self._nc.flush(timeout=1)
        for sub in (self._hello_sub, self._probe_sub, self._poke_sub):
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        self._hello_sub = self._probe_sub = self._poke_sub = None
        if self._acks is not None:
            await self._acks.stop()
            self._acks = None
        if self._nc is not None and self._own_connection:
            nc, self._nc = self._nc, None
            if not nc.is_closed:
                await drain_connection(nc)  # (bounded: a server that froze must not hold up a shutdown)

    # -- writing -------------------------------------------------------------------------------------------
    @staticmethod
    def _too_large(event: Event, size: int, limit: int) -> EventTooLargeError:
        """An event larger than the server takes in one message can never be stored: say so, naming it."""
        return EventTooLargeError(
            f"event {event.type.value} of instance {event.instance_id} (workflow {event.workflow!r}) is {size} "
            f"bytes, more than the NATS server takes in one message (max_payload {limit}); keep large data out "
            "of tokens (store it elsewhere and keep a reference in the token)",
            workflow=event.workflow,
            size=size,
            limit=limit,
        )

    async def append(self, event: Event, expected_seq: int) -> None:
        iid = event.instance_id
        seq = event.seq
        if seq != expected_seq + 1:
            raise ConcurrencyError(iid, expected_seq, seq - 1)
        known = self._last.get(iid)
        if expected_seq == 0:
            if known is not None:
                raise ConcurrencyError(iid, 0, known[0])
            stream_seq = 0
        else:
            if known is None or known[0] != expected_seq:
                known = await self._position(iid, event.workflow)
                if known[0] != expected_seq:
                    raise ConcurrencyError(iid, expected_seq, known[0])
            stream_seq = known[1]
        acks = self._acks
        if acks is None:
            raise StoreError("the JetStream store is not open")
        # Unique per append (its own retries reuse it), so a landed earlier publish is recognised for sure: this
        # store's random nonce and a counter.
        self._appended += 1
        msg_id = f"{iid}:{seq}:{self._nonce}{self._appended:x}"
        # The headers in their wire form (what nats-py would encode from a dict, at a sixth of the cost). The
        # names in them are subject tokens (no whitespace: AckedPublisher checks the subject), so no CR or LF.
        # Any workflow in the ...-Subject filter: an instance id is one instance across workflows, as in the
        # in-memory store.
        header_block = (
            f"NATS/1.0\r\nNats-Msg-Id: {msg_id}\r\nNats-Expected-Last-Subject-Sequence: {stream_seq}\r\n"
            f"Nats-Expected-Last-Subject-Sequence-Subject: {instance_filter(iid)}\r\nCb-Origin: {self.origin}\r\n\r\n"
        ).encode()
        subject = event_subject(event.workflow, iid, event.type)  # a StrEnum: formats as its value
        # The bytes of model_dump_json().encode(), without its str round trip.
        payload = type(event).__pydantic_serializer__.to_json(event)
        size, limit = len(payload) + len(header_block), self.connection.max_payload
        if size > limit:
            raise self._too_large(event, size, limit)
        begun = time.monotonic()
        try:
            # Written now, one await for the acknowledgement; the long way when that cannot be done.
            future = acks.send_encoded(subject, header_block, payload, self.publish_timeout)
            if future is not None:
                stored_at = stream_sequence(await future)
            else:
                stored_at = await acks.publish_encoded(subject, header_block, payload, self.publish_timeout)
        except (APIError, *_TRANSIENT) as err:
            message = (subject, header_block, payload)
            stored_at = await self._append_again(acks, event, err, message, stream_seq, msg_id, begun)
        self._saw(iid, seq, stored_at)
        if self._writer:
            self._wrote(event)

    def _presence(self, takes_over: bool, workflows: Callable[[], Collection[str]] | None, **fields: Any) -> bytes:
        """A hello, heartbeat or answer: this engine's origin, ``fields``, the workflows it takes over, and those
        it takes injections for."""
        if not takes_over:
            fields["takes_over"] = []
        elif workflows is not None:
            fields["takes_over"] = sorted(workflows())
        serving = self._serving_injections
        fields["injects"] = sorted(serving()) if serving is not None else []
        return json.dumps({"origin": self.origin, **fields}).encode()

    def serve_injections(self, workflows: Callable[[], Collection[str]] | None) -> None:
        """This engine's inject service takes injections for ``workflows()`` (None: it stopped); the peers
        hear it at once, and leave requests for those workflows to it."""
        self._serving_injections = workflows
        self.advertise()

    async def _poked(self, on_poke: Callable[[str, str, bool], bool], msg: Any) -> None:
        try:
            poke = json.loads(msg.data)
            instance_id, workflow = poke["instance_id"], poke["workflow"]
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            return
        if not (isinstance(instance_id, str) and isinstance(workflow, str)) or poke.get("origin") == self.origin:
            return
        if on_poke(instance_id, workflow, poke.get("unowned") is True) and msg.reply:
            with contextlib.suppress(Exception):  # (only the engine that drives the instance answers)
                await self.connection.publish(msg.reply, json.dumps({"origin": self.origin, "taken": True}).encode())

    async def hand_over(self, workflow: str, instance_id: str, seq: int) -> bool:
        """After an engine that does not drive changed ``instance_id`` (an observer's manual firing): ask the
        driving engines on ``cb.engines.poke`` to go on with it. First the one that drives it; when none answers
        within ``HAND_OVER_WAIT`` seconds, again with ``"unowned": true`` (an observer started it, or its driver is
        gone), which the one engine chosen for it takes up (see ``takes_up``): asking the driver first means an
        engine whose view of the stream lags never takes up an instance another drives. True when an engine
        took it over (the asker then leaves it to that one), False when none did."""
        poke: dict[str, Any] = {"origin": self.origin, "workflow": workflow, "instance_id": instance_id, "seq": seq}
        for unowned in (False, True):
            if unowned:
                poke["unowned"] = True
            try:
                msg = await self.connection.request(POKE_SUBJECT, json.dumps(poke).encode(), timeout=HAND_OVER_WAIT)
            except NoRespondersError:
                return False  # no driving engine runs at all
            except Exception:  # none drives it (timeout), or NATS refused
                continue
            try:
                if json.loads(msg.data).get("taken"):
                    return True
            except (ValueError, AttributeError):
                pass
        return False

    async def _append_again(
        self,
        acks: AckedPublisher,
        event: Event,
        failure: Exception,
        message: tuple[str, bytes, bytes],
        stream_seq: int,
        msg_id: str,
        begun: float,
    ) -> int:
        """After the first attempt of an append (made at ``begun``, on the monotonic clock) failed with
        ``failure``: judge it, and publish the same message again (same id) while the failure is transient, up to
        ``publish_retry_for`` seconds after ``begun``; the stored stream sequence."""
        iid = event.instance_id
        deadline = begun + self.publish_retry_for
        delay, attempt = 0.05, 1
        while True:
            if isinstance(failure, APIError) and not isinstance(failure, ServiceUnavailableError):
                if failure.err_code not in WRONG_LAST_SEQUENCE:
                    why = failure.description
                    raise StoreError(f"appending event {event.seq} of instance {iid}: {why}") from failure
                # Someone else wrote first, or an earlier attempt of this very publish landed.
                landed = await self._landed(iid, stream_seq, msg_id) if attempt > 1 else None
                if landed is not None:
                    return landed
                raise ConcurrencyError(iid, event.seq - 1) from None
            if time.monotonic() + delay > deadline:
                raise StoreError(
                    f"appending event {event.seq} of instance {iid}: no acknowledgement after {attempt} attempts"
                    f" in {self.publish_retry_for:g}s ({type(failure).__name__})"
                ) from failure
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
            attempt += 1
            try:
                return await acks.publish_encoded(*message, self.publish_timeout)
            except (APIError, *_TRANSIENT) as err:
                failure = err

    async def _position(self, iid: str, workflow: str | None) -> tuple[int, int]:
        """The instance's current version and the stream sequence of its newest event ((0, 0) if none)."""
        try:
            msg = await self._ask(lambda: self.js.get_last_msg(self.stream_name, instance_filter(iid), direct=True))
        except NotFoundError:
            return 0, 0
        position = (int(json.loads(msg.data)["seq"]), int(msg.seq))
        self._last[iid] = position
        return position

    async def _landed(self, iid: str, after: int, msg_id: str) -> int | None:
        """The stream sequence of this store's message ``msg_id`` if it landed after stream position ``after``
        (an earlier attempt whose acknowledgement was lost; others may have appended on top since)."""
        start = after + 1
        while True:
            try:  # the leader, not a replica that may lag
                msg = await self._ask(
                    partial(self.js.get_msg, self.stream_name, seq=start, subject=instance_filter(iid), next=True)
                )
            except NotFoundError:
                return None
            if (msg.headers or {}).get("Nats-Msg-Id") == msg_id:
                return int(msg.seq)
            start = int(msg.seq) + 1

    async def _ask(self, call: Callable[[], Awaitable[T]]) -> T:
        """A read, retried while NATS or JetStream does not answer (a reconnect, a leader election), up to
        ``publish_retry_for`` seconds; NotFoundError and other answers pass through."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.publish_retry_for
        delay = 0.05
        while True:
            try:
                return await call()
            except _TRANSIENT as err:
                if time.monotonic() + delay > deadline:
                    raise StoreError(f"JetStream did not answer for {self.publish_retry_for:g}s: {err!r}") from err
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    # -- reading -------------------------------------------------------------------------------------------
    async def read(self, instance_id: str, after_seq: int = 0) -> list[Event]:
        """The instance's events with a version above ``after_seq``, oldest first (direct gets, no consumer)."""
        known = self._last.get(instance_id)
        start = known[1] + 1 if known is not None and known[0] == after_seq and after_seq > 0 else 1
        subject = instance_filter(instance_id)
        events: list[Event] = []
        while True:
            try:
                msg = await self._ask(
                    partial(self.js.get_msg, self.stream_name, seq=start, subject=subject, next=True, direct=True)
                )
            except NotFoundError:
                break
            event = parse_event(msg.data)
            if event.seq > after_seq:
                events.append(event)
                self._saw(instance_id, event.seq, int(msg.seq))
            start = int(msg.seq) + 1
        return events

    async def replay(self, *, workflow: str | None = None, instance_id: str | None = None) -> AsyncIterator[Event]:
        if instance_id is not None:
            for event in await self.read(instance_id):
                if workflow is None or event.workflow == workflow:
                    yield event
            return
        async for event, _ in self.scan(event_filter(workflow)):
            yield event

    async def scan(self, subject: str, start_seq: int = 1) -> AsyncIterator[tuple[Event, int]]:
        """Every stored event on ``subject`` (a filter) from ``start_seq`` up to the stream's end when the scan
        began, with its stream sequence."""
        async with contextlib.aclosing(self._pull_all(subject, start_seq)) as msgs:  # (its consumer ends with us)
            async for msg in msgs:
                event = parse_event(msg.data)
                position = delivery(msg)[1]
                known = self._last.get(event.instance_id)
                self._saw(event.instance_id, event.seq, position)
                if known is None or known[0] < event.seq:
                    self._scanned(event, (msg.headers or {}).get("Cb-Origin"))
                yield event, position

    async def _pull_all(
        self, subject: str, start_seq: int = 1, *, headers_only: bool = False
    ) -> AsyncGenerator[Any, None]:
        """Every stored message on ``subject`` from ``start_seq`` up to the stream's end when the pull began,
        through an ephemeral consumer that acknowledges nothing (``headers_only``: without payloads).

        Batches are pulled by a :class:`Puller` (``no_wait`` requests whose answers are taken from nats-py's
        parser): nats-py's ``fetch`` spends two tasks on every message and parses headers character by
        character, which made a scan three times slower than the server can deliver. When a pull ends without
        the server's word (no answer within ``PULL_TIMEOUT``, a reconnect) or the consumer goes away, what the
        server sent meanwhile may never arrive, and the consumer counts it as delivered: the scan goes on through
        a new consumer from the message after the last one it yielded, so every message comes once, in order.
        """
        next_seq = start_seq
        left: int | None = None
        restarts = 0
        while True:
            config = ConsumerConfig(
                ack_policy=AckPolicy.NONE,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE if next_seq > 1 else DeliverPolicy.ALL,
                opt_start_seq=next_seq if next_seq > 1 else None,
                inactive_threshold=60.0,
                mem_storage=True,
                headers_only=headers_only or None,
                filter_subject=subject,
            )
            info = await self._ask(lambda: self.js.add_consumer(self.stream_name, config))  # noqa: B023 (awaited here)
            left = info.num_pending if left is None else min(left, info.num_pending)
            msgs: list[Any] = []  # (a late answer to this consumer's pulls lands here too, in stream order)
            puller = Puller(self.connection, self.stream_name, info.name, stray=msgs.append)
            try:
                while left > 0:
                    try:
                        await puller.pull(min(left, SCAN_BATCH), msgs.append, PULL_TIMEOUT, no_wait=True)
                        lost = puller.interrupted
                    except ConsumerGoneError:
                        lost = True
                    got, msgs[:] = list(msgs), []
                    for msg in got:
                        yield msg
                    if got:
                        next_seq = delivery(got[-1])[1] + 1
                        left -= len(got)
                        restarts = 0
                    if lost:
                        break
                    if not got:  # the server ended the request with nothing (messages deleted meanwhile)
                        name = info.name
                        pending = await self._ask(partial(self.js.consumer_info, self.stream_name, name))
                        left = min(left, pending.num_pending)
                else:
                    return
            finally:
                await puller.stop()
                with contextlib.suppress(Exception):  # (else it ends by itself after inactive_threshold)
                    await asyncio.wait_for(self.js.delete_consumer(self.stream_name, info.name), 2.0)
            restarts += 1
            if restarts > SCAN_RESTARTS:
                raise StoreError(
                    f"reading {subject} in stream {self.stream_name}: no answer to {restarts} pull requests in a row"
                )

    async def instance_ids(self, workflow: str | None = None) -> list[str]:
        ids: list[str] = []
        async for event, _ in self.scan(event_filter(workflow, None, "token_injected")):
            ids.append(event.instance_id)
        return ids

    # -- marks: an engine opens without replaying the whole history ------------------------------------------
    def _mark_key(self, workflow: str) -> str:
        return f"{self.stream_name}.{workflow}"

    async def read_mark(self, workflow: str) -> int:
        """The stored position below which every instance of ``workflow`` has finished (0: none stored, or one
        taken on an earlier stream of the same name)."""
        if self._marks is None:
            raise StoreError("the JetStream store is not open")
        try:
            entry = await self._ask(partial(self._marks.get, self._mark_key(workflow)))
        except KeyNotFoundError:
            return 0
        try:
            mark = json.loads(entry.value or b"{}")
            position = int(mark["position"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed mark for workflow %s", workflow)
            return 0
        return position if mark.get("stream_created") == self._stream_created else 0

    async def write_mark(self, workflow: str, position: int) -> None:
        """Store that every instance of ``workflow`` that began at or below ``position`` has finished."""
        if self._marks is None:
            raise StoreError("the JetStream store is not open")
        value = {"position": position, "stream_created": self._stream_created, "origin": self.origin}
        await self._marks.put(self._mark_key(workflow), json.dumps(value).encode())

    async def starts(self, workflow: str, after: int) -> tuple[list[tuple[str, int]], int]:
        """The instances of ``workflow`` that began after stream position ``after``, with the position of their
        first event, and the position up to which that answer is complete (headers only: no event is parsed)."""
        end = await self.last_sequence()
        found: list[tuple[str, int]] = []
        if end <= after:
            return found, max(end, after)
        subject = event_filter(workflow, None, EventType.TOKEN_INJECTED.value)
        async with contextlib.aclosing(self._pull_all(subject, after + 1, headers_only=True)) as msgs:
            async for msg in msgs:
                position = delivery(msg)[1]
                found.append((msg.subject.split(".")[3], position))
                end = max(end, position)
        return found, end

    def replay_after(self, workflow: str, after: int) -> AsyncIterator[tuple[Event, int]]:
        """Every stored event of ``workflow`` after stream position ``after``, with its position."""
        return self.scan(event_filter(workflow), after + 1)

    async def last_sequence(self) -> int:
        """The stream's newest sequence number (0 when empty): where a watcher starting now picks up."""
        info = await self._ask(lambda: self.js.stream_info(self.stream_name))
        return int(info.state.last_seq)

    async def watch(self, start_seq: int) -> AsyncIterator[Event]:
        """Events other stores append, live, from stream sequence ``start_seq`` on (an ordered consumer, which
        re-creates itself after a reconnect). This store's own events are skipped: its engine applied them."""
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=max(start_seq, 1))
        queue: asyncio.Queue[Any] = asyncio.Queue()
        # A callback feeding our own queue: cancelling the consumer of this generator then never depends on
        # the client's message iterator.
        sub = await self.js.subscribe(
            f"{EVENT_PREFIX}.>", stream=self.stream_name, ordered_consumer=True, config=config, cb=queue.put
        )
        try:
            while True:
                msg = await queue.get()
                position = delivery(msg)[1]
                self.watched_up_to = max(self.watched_up_to, position)
                if (msg.headers or {}).get("Cb-Origin") == self.origin:
                    continue
                try:
                    event = parse_event(msg.data)
                except Exception:  # a foreign message on our subjects must not stop the engine
                    log.warning("skipping a message on %s that is not an event", msg.subject)
                    continue
                known = self._last.get(event.instance_id)
                self._saw(event.instance_id, event.seq, position)
                if known is None or known[0] <= event.seq:  # not read late (this store knows nothing newer)
                    self._followed(event, (msg.headers or {}).get("Cb-Origin"))
                yield event
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sub.unsubscribe(), 2.0)

    async def announce(
        self,
        since: int,
        on_peer: Callable[[int], None],
        *,
        writer: bool = True,
        on_gone: Callable[[str], None] | None = None,
        workflows: Callable[[], Collection[str]] | None = None,
        on_poke: Callable[[str, str, bool], bool] | None = None,
    ) -> None:
        """Presence on ``cb.engines.hello``: ``{"origin", "since", "reply"}``, heartbeats ``{"origin", "beat"}``
        every ``heartbeat`` seconds and ``{"origin", "bye"}`` on close. Hello and beats also say ``takes_over``:
        the workflows whose orphaned instances this engine takes over (``[]`` without ``on_gone``), so a peer
        never chooses it for another workflow's instance.

        A writer says hello with ``since`` = the stream position before its first write; every engine that
        hears a hello from another origin follows from there, and answers (``reply: true``) with the same
        ``since`` so the newcomer follows it too. A peer that says bye, or is not heard of for three heartbeats,
        is gone: ``on_gone(origin)`` lets this engine take over the instances it drove (``writer_of``). Core
        NATS, so a lost hello only costs liveness, never correctness: conflicts are caught by the CAS.

        A writer answers the requests on ``cb.engines.poke`` (see ``hand_over``) for which
        ``on_poke(instance_id, workflow, unowned)`` says it takes the instance over.
        """
        nc = self.connection
        loop = asyncio.get_running_loop()

        presence = partial(self._presence, on_gone is not None, workflows)

        async def heard(msg: Any) -> None:
            try:
                hello = json.loads(msg.data)
                origin = str(hello["origin"])
            except (ValueError, KeyError, TypeError, RecursionError):
                return
            if origin == self.origin:
                return
            if hello.get("bye"):
                if self._peers.pop(origin, None) is not None:
                    self._gone_now(origin, on_gone)
                return
            known = origin in self._peers
            self._peers[origin] = loop.time()
            self.gone.discard(origin)  # it was only cut off, and is back
            takes = hello.get("takes_over")
            if isinstance(takes, list):
                self._takes[origin] = {str(w) for w in takes}
            injects = hello.get("injects")
            self._injects[origin] = {str(w) for w in injects} if isinstance(injects, list) else set()
            if hello.get("beat"):
                if not known:
                    on_peer(self.watched_up_to)  # a peer this engine missed the hello of: follow from here on
                return
            try:
                position = int(hello["since"])
            except (KeyError, TypeError, ValueError):
                return
            on_peer(position)
            if writer and not hello.get("reply"):  # a probe is answered to its asker, a hello to everyone
                with contextlib.suppress(Exception):
                    await nc.publish(msg.reply or HELLO_SUBJECT, presence(since=position, reply=True))

        self._hello_sub = await nc.subscribe(HELLO_SUBJECT, cb=heard)
        self._writer = writer
        self._takes_over = on_gone is not None
        if writer and on_poke is not None:
            self._poke_sub = await nc.subscribe(POKE_SUBJECT, cb=partial(self._poked, on_poke))
        if writer:
            await self._discover(presence(since=since), heard)
            self._probe_sub = await nc.subscribe(PROBE_SUBJECT, cb=heard)  # (after our own probe: no self-answer)
            await nc.publish(HELLO_SUBJECT, presence(since=since))
            await nc.flush()
        self._beat_message = partial(presence, beat=True)
        self._beats = loop.create_task(self._beat(writer, on_gone, self._beat_message))

    async def _discover(self, hello: bytes, heard: Callable[[Any], Awaitable[None]]) -> None:
        """Ask the driving engines already running to introduce themselves before this one loads its instances,
        so that it leaves the instances they drive to them instead of running their actions in flight again.

        Returns at once when none runs (the server's no-responders status), else once the answers stop coming
        for a moment. A peer that does not answer in time is found by its heartbeat later (the store's check on
        every append keeps that safe: it only costs an action run twice).
        """
        nc = self.connection
        answers: asyncio.Queue[Any] = asyncio.Queue()
        sub = await nc.subscribe(nc.new_inbox(), cb=answers.put)
        try:
            await nc.publish(PROBE_SUBJECT, hello, reply=sub.subject)
            wait = DISCOVERY_TIMEOUT
            while True:
                try:
                    msg = await asyncio.wait_for(answers.get(), wait)
                except TimeoutError:
                    return
                if (msg.headers or {}).get("Status") == "503":
                    return  # no driving engine is subscribed: this one is alone
                await heard(msg)
                wait = DISCOVERY_QUIET
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _beat(self, writer: bool, on_gone: Callable[[str], None] | None, beat: Callable[[], bytes]) -> None:
        """Say this engine is alive (if it writes), and notice peers that stopped saying so.

        A peer is judged only on what this engine could have heard: after this engine was disconnected, or its
        event loop was held up (a blocking action), every peer starts a fresh three-heartbeat window.
        """
        loop = asyncio.get_running_loop()
        blind = False
        while True:
            before = loop.time()
            await asyncio.sleep(self.heartbeat)
            try:
                now = loop.time()
                if writer and self.connection.is_connected:
                    await self.connection.publish(HELLO_SUBJECT, beat())
                if not self.connection.is_connected or now - before > 2 * self.heartbeat:
                    blind = True  # cut off, or stalled: what this engine did not hear says nothing of the others
                    continue
                if blind:
                    blind = False
                    for origin in self._peers:
                        self._peers[origin] = now
                    continue
                silent = [o for o, seen in self._peers.items() if now - seen > 3 * self.heartbeat]
                for origin in silent:
                    del self._peers[origin]
                    log.warning("engine %s was not heard of for %.0fs", origin, 3 * self.heartbeat)
                    self._gone_now(origin, on_gone)
            except asyncio.CancelledError:
                raise
            except Exception:  # the heartbeat must outlive any one failure, or live peers would judge us gone
                log.exception("engine heartbeat round failed")

    def _gone_now(self, origin: str, on_gone: Callable[[str], None] | None) -> None:
        self.gone.add(origin)
        self._takes.pop(origin, None)
        self._injects.pop(origin, None)
        if on_gone is None:
            return
        try:
            on_gone(origin)
        except Exception:
            log.exception("taking over the instances of engine %s failed", origin)

    def _followed(self, event: Event, writer: str | None) -> None:
        """Another engine's newest event of an instance: note who drives the instance now."""
        if _ends(event):
            self.writer_of.pop(event.instance_id, None)  # ended: nobody needs to drive it any more
        elif writer in self._peers or writer in self.gone:
            # A driving engine (it announced itself; it may have left since, if this watcher lags). A write by one
            # that does not drive (an observer's manual firing) leaves the instance with the engine that drove it.
            self.writer_of[event.instance_id] = writer

    def _scanned(self, event: Event, writer: str | None) -> None:
        """An event read from the stream that is newer than any this store saw of its instance: note its writer,
        so that an engine loading its instances knows which of them a live peer drives. A writer it does not know
        to be alive (one that crashed before this engine started, or an observer) leaves the instance to the
        loading engine: should a live peer drive it too, the store's check lets one of them fire each step and
        the other steps aside, which beats an instance nobody drives."""
        if _ends(event):
            self.writer_of.pop(event.instance_id, None)
        elif writer is not None:
            self.writer_of[event.instance_id] = writer

    def _wrote(self, event: Event) -> None:
        """This engine wrote ``event``: if it drives (it announced itself as a writer), it is the instance's driver
        now, until another driving engine writes."""
        if not self._writer:
            return
        if _ends(event):
            self.writer_of.pop(event.instance_id, None)
        else:
            self.writer_of[event.instance_id] = self.origin

    def drives_elsewhere(self, instance_id: str) -> bool:
        """Whether the newest event of ``instance_id`` this store followed was written by a live peer (one that
        announced itself and beats): the last writer drives an instance. An engine that writes without
        announcing itself (an observer's manual firing) is no driver, so its instances stay with this one."""
        writer = self.writer_of.get(instance_id)
        return writer is not None and writer in self._peers

    def takes_over(self, instance_id: str, workflow: str | None = None) -> bool:
        """Whether this engine should drive ``instance_id`` because the engine that last wrote it is gone (it then
        forgets that writer). One live engine per instance (the highest rendezvous hash among this engine and the
        live peers it knows), so the survivors share the orphans instead of all driving each of them."""
        if self.writer_of.get(instance_id) not in self.gone or self._choose(instance_id, workflow) != self.origin:
            return False
        self.writer_of[instance_id] = self.origin  # this engine drives it from now on
        return True

    def takes_up(self, instance_id: str, workflow: str, unowned: bool) -> bool:
        """Whether this engine should drive ``instance_id`` of ``workflow`` (one of its workflows, an instance it
        does not drive now) after an engine that does not drive changed it: when it knows no other driving
        engine, nobody else can drive it; else only when the asker found no driver (``unowned``) and this is the
        one live engine chosen for it, as ``takes_over`` chooses, so that of several one goes on with it. The
        others note the chosen one as its driver: should it be gone, they take the instance over from it."""
        if self._peers:
            if not unowned or self.drives_elsewhere(instance_id):
                return False
            chosen = self._choose(instance_id, workflow)
            if chosen != self.origin:
                if chosen is not None:
                    self.writer_of[instance_id] = chosen
                return False
        self.writer_of[instance_id] = self.origin
        return True

    def advertise(self) -> None:
        """Tell the other engines now, not at the next heartbeat, which workflows this one takes over: one was
        registered while it runs, or it began to stop (so that none is chosen for what it will not drive)."""
        beat, nc = self._beat_message, self._nc
        if beat is None or not self._writer or nc is None or not nc.is_connected:
            return
        task = asyncio.get_running_loop().create_task(nc.publish(HELLO_SUBJECT, beat()))
        self._telling.add(task)
        task.add_done_callback(self._telling.discard)

    def peer_injects(self) -> set[str]:
        """The workflows the live engines this one hears of take injections for."""
        return {w for origin in self._peers for w in self._injects.get(origin, ())}

    def peer_workflows(self) -> set[str] | None:
        """The workflows the live driving engines this one hears of run (what they take over: none while they
        stop); None when one of them did not say."""
        running: set[str] = set()
        for origin in self._peers:
            takes = self._takes.get(origin)
            if takes is None:
                return None
            running |= takes
        return running

    def _choose(self, instance_id: str, workflow: str | None) -> str | None:
        """The live engine with the highest rendezvous hash for ``instance_id`` among those that take over
        ``workflow``, this one included if it takes over (it runs the workflow, follows the others and is not
        stopping): every engine that knows the same peers picks the same one. None when none takes over."""
        takes = self._takes
        candidates = [self.origin] if self._takes_over else []
        candidates += [p for p in self._peers if workflow is None or p not in takes or workflow in takes[p]]
        return max(candidates, key=lambda origin: zlib.crc32(f"{origin}:{instance_id}".encode()), default=None)

    def _saw(self, instance_id: str, seq: int, stream_seq: int) -> None:
        known = self._last.get(instance_id)
        if known is None or known[0] < seq:
            self._last[instance_id] = (seq, stream_seq)

    def forget(self, instance_id: str) -> None:
        """Drop what the store remembers of an instance's position (after a conflict)."""
        self._last.pop(instance_id, None)

    def __repr__(self) -> str:
        return f"JetStreamStore(servers={self.servers!r}, stream={self.stream_name!r})"
