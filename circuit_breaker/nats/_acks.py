"""Acknowledged JetStream publishes on one shared reply subscription, for the event store and the workers.

``js.publish`` makes a request per message (its own inbox bookkeeping and timer, about twice the cost of the
publish itself); ``js.publish_async`` shares a subscription but leaves the future unresolved when the server
answers with an error — and a refused expected-sequence check is an everyday answer for the event store.

Per message this costs one future and one dict entry: the timeouts are enforced by a single timer that fires
at the earliest deadline (not a timer per message). The event store's path (``publish_encoded``) takes the
header block already encoded and writes the ``HPUB`` command into nats-py's outgoing buffer itself, with the
checks ``Client.publish`` makes; nats-py's own header encoding (a regular expression and a ``str.translate``
per header) cost more than the rest of a publish. Its acknowledgement is read without ``json.loads`` when it
has the usual shape, and taken from nats-py's protocol parser as it arrives (see ``_ReplyRouter``): no
``Msg`` object, no trip through the subscription's queue and task.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.js.errors import APIError, NoStreamResponseError

from ..errors import StoreError

__all__ = ["AckedPublisher", "msg_id_block"]

# The acknowledgement of a stored message, as the server writes it (an optional domain, an optional duplicate
# flag); anything else (errors, fields added by later servers) goes through json.loads.
_PLAIN_ACK = re.compile(rb'\{"stream":"[^"\\]*",(?:"domain":"[^"\\]*",)?"seq":(\d+)(?:,"duplicate":true)?\}')
# What nats-py's Client.publish refuses in a subject: it would break the protocol line.
_BAD_SUBJECT = re.compile(r"[ \t\r\n]")
# Client internals the direct path uses (nats-py 2.x); without them publish_encoded goes through Client.publish.
_INTERNALS = (
    "_pending",
    "_pending_data_size",
    "_flush_queue",
    "_flusher_task",
    "_max_payload",
    "_max_pending_size",
    "stats",
)
_NO_RESPONDERS = b"NATS/1.0 503"


class _ReplyRouter:
    """Hands the messages of chosen subscriptions straight from nats-py's parser to a function.

    nats-py's parser calls ``Client._process_msg`` for every message, which builds a ``Msg``, queues it for the
    subscription's task, and that task calls the callback: for an acknowledgement, most of its cost. One
    router per connection stands in for ``_process_msg`` on that client object and passes every other
    subscription's messages to the original, untouched.
    """

    def __init__(self, nc: Any) -> None:
        self._original: Callable[..., Awaitable[None]] = nc._process_msg
        self._stats: dict[str, int] = nc.stats
        self.handlers: dict[int, Callable[[bytes, bytes, bytes, bytes], None]] = {}  # (subject, reply, data, headers)
        nc._process_msg = self._process_msg

    @classmethod
    def of(cls, nc: Any) -> _ReplyRouter:
        router: _ReplyRouter | None = getattr(nc, "_cb_reply_router", None)
        if router is None:
            router = nc._cb_reply_router = cls(nc)
        return router

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        handler = self.handlers.get(sid)
        if handler is None:
            await self._original(sid, subject, reply, data, headers)
            return
        stats = self._stats
        stats["in_msgs"] += 1
        stats["in_bytes"] += len(data)
        handler(subject, reply, data, headers)


class AckedPublisher:
    """Publishes that wait for the server's acknowledgement (``{"stream", "seq", "duplicate"}``), resolved by
    one reply subscription; server errors become exceptions (APIError, NoStreamResponseError), no answer
    within ``timeout`` becomes nats.errors.TimeoutError."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._prefix = ""
        # reply token -> (future, deadline on the loop's clock)
        self._futures: dict[str, tuple[asyncio.Future[bytes], float]] = {}
        self._next = 0
        self._sub: Any = None
        self._stopped = False
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweep_at = float("inf")
        self._sweep_loop: asyncio.AbstractEventLoop | None = None
        self._direct = all(hasattr(nc, name) for name in _INTERNALS)
        # Acknowledgements taken from the parser (see _ReplyRouter) when the client has what that needs.
        self._routed = self._direct and hasattr(nc, "_process_msg")

    async def start(self) -> None:
        self._stopped = False
        self._prefix = self._nc.new_inbox() + "."
        self._sub = await self._nc.subscribe(self._prefix + "*", cb=self._on_reply)
        if self._routed:
            _ReplyRouter.of(self._nc).handlers[self._sub._id] = self._on_raw_reply

    async def _started(self) -> None:
        """Subscribed for the answers (on first use); a stopped publisher stays stopped."""
        if self._sub is None:
            if self._stopped:
                raise StoreError("acknowledged publishing was stopped (the store or queue is closed)")
            await self.start()

    async def stop(self) -> None:
        self._stopped = True
        if self._sub is not None:
            if self._routed:
                _ReplyRouter.of(self._nc).handlers.pop(self._sub._id, None)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._sub.unsubscribe(), 2.0)
            self._sub = None
        if self._sweeper is not None and not self._futures:  # publishes still waiting time out as promised
            self._sweeper.cancel()
            self._sweeper, self._sweep_at = None, float("inf")

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str], timeout: float) -> dict[str, Any]:
        """The server's answer; raises APIError, NoStreamResponseError, nats.errors.TimeoutError or a
        connection error."""
        await self._started()
        token, future = self._expect(timeout)
        try:
            await self._nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
            return _answer(await future)
        finally:
            self._futures.pop(token, None)

    async def publish_encoded(self, subject: str, header_block: bytes, payload: bytes, timeout: float) -> int:
        """Publish with a header block already in the wire form (``b"NATS/1.0\\r\\nKey: value\\r\\n...\\r\\n"``,
        values free of CR and LF) and return the stored message's stream sequence; raises like ``publish``."""
        future = self.send_encoded(subject, header_block, payload, timeout)
        if future is None:  # not started, or a nats-py without the internals send_encoded uses
            await self._started()
            token, future = self._expect(timeout)
            try:
                await self._nc.publish(subject, payload, reply=self._prefix + token, headers=_header_dict(header_block))
            except BaseException:
                self._futures.pop(token, None)
                future.cancel()  # (nobody will await it: no "exception never retrieved" from the sweeper)
                raise
        return stream_sequence(await future)

    def send_encoded(
        self, subject: str, header_block: bytes, payload: bytes, timeout: float
    ) -> asyncio.Future[bytes] | None:
        """Write the publish into the client's outgoing buffer now, as ``Client.publish`` would after the same
        checks, and return the future of the server's answer (``stream_sequence`` reads it); None when that
        cannot be done without awaiting (not started yet, an outgoing buffer over its limit, a flusher that
        died, a nats-py without the internals used here): ``publish_encoded`` then takes the long way.

        No coroutine, no header encoding: for the event store, one append is one future and one buffer entry."""
        nc: Any = self._nc
        if self._sub is None or not self._direct:
            return None
        if not subject or _BAD_SUBJECT.search(subject):
            raise nats.errors.BadSubjectError
        if nc.is_closed:
            raise nats.errors.ConnectionClosedError
        if nc.is_draining_pubs:
            raise nats.errors.ConnectionDrainingError
        size = len(payload)
        connected = nc.is_connected
        if not connected and (nc._max_pending_size <= 0 or size + nc._pending_data_size > nc._max_pending_size):
            raise nats.errors.OutboundBufferLimitError  # a reconnection without buffering, or the buffer is full
        if size > nc._max_payload:
            raise nats.errors.MaxPayloadError
        token, future = self._expect(timeout)
        head = len(header_block)
        command = b"".join(
            (
                f"HPUB {subject} {self._prefix}{token} {head} {head + size}\r\n".encode(),
                header_block,
                payload,
                b"\r\n",
            )
        )
        pending_size = nc._pending_data_size + len(command)
        if connected and (
            (0 < nc._max_pending_size < pending_size) or nc._flusher_task is None or nc._flusher_task.done()
        ):
            # nats-py flushes inline here, which needs awaiting: let it, in a task of its own.
            self._futures.pop(token, None)
            return None
        stats = nc.stats
        stats["out_msgs"] += 1
        stats["out_bytes"] += size
        nc._pending.append(command)
        nc._pending_data_size = pending_size
        flush_queue = nc._flush_queue
        if connected and flush_queue.empty():  # as Client.publish: wake the flusher (it resolves the future)
            flush_queue.put_nowait(future.get_loop().create_future())
        return future

    def _expect(self, timeout: float) -> tuple[str, asyncio.Future[bytes]]:
        """A reply token and the future its answer resolves; the sweeper fails it after ``timeout``."""
        self._next += 1
        token = str(self._next)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes] = loop.create_future()
        deadline = loop.time() + timeout
        self._futures[token] = (future, deadline)
        if deadline < self._sweep_at or loop is not self._sweep_loop:
            self._arm(loop, deadline)
        return token, future

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._sweeper = loop.call_at(when, self._sweep)
        self._sweep_at, self._sweep_loop = when, loop

    def _sweep(self) -> None:
        """Fail the futures whose deadline passed; then wait for the earliest deadline still pending."""
        self._sweeper, self._sweep_at = None, float("inf")
        loop = asyncio.get_running_loop()
        now = loop.time()
        earliest = float("inf")
        expired = []
        for token, (future, deadline) in self._futures.items():
            if deadline <= now:
                expired.append(token)
                if not future.done():
                    future.set_exception(nats.errors.TimeoutError())
            elif deadline < earliest:
                earliest = deadline
        for token in expired:
            del self._futures[token]
        if earliest != float("inf"):
            self._arm(loop, earliest)

    async def _on_reply(self, msg: Any) -> None:
        no_responders = bool(msg.headers and msg.headers.get("Status") == "503")
        self._resolve(msg.subject[len(self._prefix) :], msg.data, no_responders)

    def _on_raw_reply(self, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        """An acknowledgement as nats-py's parser read it (subject and headers as bytes)."""
        self._resolve(subject[len(self._prefix) :].decode(), data, bool(headers) and headers.startswith(_NO_RESPONDERS))

    def _resolve(self, token: str, data: bytes, no_responders: bool) -> None:
        entry = self._futures.pop(token, None)
        if entry is None or entry[0].done():
            return  # an answer after the timeout: the retry finds out (by the message id) whether it landed
        future = entry[0]
        if no_responders:
            future.set_exception(NoStreamResponseError())
        else:
            future.set_result(data)


def stream_sequence(data: bytes) -> int:
    """The stream sequence an acknowledgement names; an error answer raises APIError."""
    plain = _PLAIN_ACK.fullmatch(data)
    return int(plain[1]) if plain is not None else int(_answer(data)["seq"])


def msg_id_block(msg_id: str) -> bytes:
    """The wire-form header block of a publish de-duplicated by ``msg_id`` (for ``publish_encoded``)."""
    if "\r" in msg_id or "\n" in msg_id:
        raise ValueError(f"a message id cannot hold a line break: {msg_id!r}")
    return f"NATS/1.0\r\nNats-Msg-Id: {msg_id}\r\n\r\n".encode()


def _answer(data: bytes) -> dict[str, Any]:
    """The acknowledgement as a dict; an error answer raises APIError."""
    try:
        reply = json.loads(data)
    except ValueError:
        raise StoreError(f"JetStream answered with something that is not JSON: {data[:200]!r}") from None
    if not isinstance(reply, dict):
        raise StoreError(f"JetStream answered with something unexpected: {data[:200]!r}")
    error = reply.get("error")
    if error is not None:
        raise APIError(code=error.get("code"), err_code=error.get("err_code"), description=error.get("description"))
    return reply


def _header_dict(header_block: bytes) -> dict[str, str]:
    """The headers of a wire-form block, for Client.publish."""
    lines = header_block.decode().split("\r\n")[1:]
    return dict(line.split(": ", 1) for line in lines if line)
