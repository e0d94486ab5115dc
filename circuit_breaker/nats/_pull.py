"""Pull requests on a durable JetStream consumer whose messages are handed out as they arrive.

nats-py's ``fetch(n)`` waits for each message with ``next_msg`` (a task and a ``wait_for`` per message) and
parses every header block with a per-character loop; when tasks trickle in one or two at a time (a worker
behind an engine, an engine behind its workers) that bookkeeping cost more than the message itself. A
:class:`Puller` sends one pull request (``{"batch": n, "expires": ...}``) to the consumer and takes the
delivered messages straight from nats-py's protocol parser (see ``_acks._ReplyRouter``): each one becomes a
``nats.aio.msg.Msg`` (so ``ack``, ``nak``, ``in_progress``, ``term`` and ``metadata`` work as usual) and goes to
the caller's function at once, while the request stays open for the rest of its batch.

A request ends when its whole batch was delivered, when the server ends it with a status message (408 expired,
409 and the like), or at the latest ``expires + END_MARGIN`` seconds after it was sent (a request lost with a
reconnection never gets its status). The server fills waiting requests in turn, so a message of a request that
ended that way may still arrive later: it goes to ``stray``, which hands it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

from nats.aio.msg import Msg

from ..errors import StoreError
from ._acks import _ReplyRouter

__all__ = ["ConsumerGoneError", "Puller", "delivery"]

END_MARGIN = 2.0  # seconds after its expiry that a request without a status message counts as ended
REFUSED_PAUSE = 0.1  # seconds a pull waits before returning when the server refused the request (409)
_STATUS = b"NATS/1.0 "
# 409 descriptions after which pulling again cannot work until the consumer is made again.
_GONE = ("consumer deleted", "consumer is push based")


class ConsumerGoneError(StoreError):
    """The consumer a puller reads is not there (deleted, never made, or JetStream itself not answering)."""


def parse_headers(block: bytes) -> tuple[int, str, dict[str, str]]:
    """A header block in the wire form: the status code (0 for none), its description, and the headers."""
    lines = block.decode("utf-8", errors="replace").split("\r\n")
    first = lines[0]
    code, description = 0, ""
    if len(first) > 9:  # "NATS/1.0 408 Request Timeout"
        parts = first[9:].split(" ", 1)
        if parts[0].isdigit():
            code = int(parts[0])
            description = parts[1] if len(parts) > 1 else ""
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip()] = value.strip()
    return code, description, headers


def delivery(msg: Msg) -> tuple[int, int]:
    """``(times delivered, stream sequence)`` of a JetStream message, read from its reply subject
    (``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>...``, or the longer form with a domain and an
    account hash) without building nats-py's ``Metadata`` (a datetime and two dataclasses per message)."""
    tokens: list[str] = msg.reply.split(".") if msg.reply else []
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[4]), int(tokens[5])
    if len(tokens) >= 11 and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[6]), int(tokens[7])
    metadata = msg.metadata  # (raises NotJSMessageError, naming what is wrong)
    return metadata.num_delivered, metadata.sequence.stream


class _Request:
    __slots__ = ("delivered", "done", "error", "pause", "token", "wanted")

    def __init__(self, token: str, wanted: int) -> None:
        self.token, self.wanted, self.delivered = token, wanted, 0
        self.done = asyncio.Event()
        self.error: Exception | None = None
        self.pause = 0.0


class Puller:
    """``Puller(nc, stream, consumer)``; ``await start()``, then ``await pull(n, handle, expires)`` in a loop.

    One request is open at a time. ``handle(msg)`` is called from the connection's reader for each message as
    it arrives, so it must not block (start a task for the work); ``stray(msg)`` gets a message that arrived
    when no request of this puller was open (see the module docstring).
    """

    def __init__(self, nc: Any, stream: str, consumer: str, stray: Callable[[Msg], None]) -> None:
        self._nc = nc
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.consumer = consumer
        self._stray = stray
        self._prefix = ""
        self._sub: Any = None
        self._routed = False
        self._count = 0
        self._open: _Request | None = None
        self._handle: Callable[[Msg], None] | None = None

    async def start(self) -> None:
        nc = self._nc
        self._prefix = nc.new_inbox() + "."
        self._sub = await nc.subscribe(self._prefix + "*", cb=self._on_msg)
        if hasattr(nc, "_process_msg"):
            _ReplyRouter.of(nc).handlers[self._sub._id] = self._on_raw
            self._routed = True

    async def stop(self) -> None:
        """Stop taking messages; an open pull returns at once (what it got so far)."""
        sub, self._sub = self._sub, None
        if sub is None:
            return
        if self._routed:
            _ReplyRouter.of(self._nc).handlers.pop(sub._id, None)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(sub.unsubscribe(), 2.0)
        if self._open is not None:
            self._open.done.set()

    async def pull(
        self, wanted: int, handle: Callable[[Msg], None], expires: float, *, no_wait: bool = False
    ) -> int:
        """Ask for up to ``wanted`` messages, hand each to ``handle`` as it arrives, and return how many came
        once the request ends (at most about ``expires`` seconds). With ``no_wait`` the server sends only what it
        has now and ends the request at once (404) instead of waiting for more. Raises
        :class:`ConsumerGoneError` when the consumer is gone; connection errors of the request's publish
        propagate."""
        if self._sub is None:
            await self.start()
        self._count += 1
        request = _Request(f"{self._prefix}{self._count}", wanted)
        self._open, self._handle = request, handle
        # (With an expiry the server would treat no_wait as a long poll.)
        asked = {"batch": wanted, "no_wait": True} if no_wait else {"batch": wanted, "expires": int(expires * 1e9)}
        payload = json.dumps(asked).encode()
        try:
            await self._nc.publish(self._next_subject, payload, reply=request.token)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(expires + END_MARGIN):
                    await request.done.wait()
        finally:
            self._open = self._handle = None
        if request.error is not None:
            raise request.error
        if request.pause:
            await asyncio.sleep(request.pause)
        return request.delivered

    # -- the connection's reader calls these ----------------------------------------------------------------
    def _on_raw(self, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        self._take(subject.decode(), reply.decode(), data, headers or b"")

    async def _on_msg(self, msg: Msg) -> None:
        """(A client without the parser hook: the subscription's own task delivers, headers already parsed.)"""
        text = ""
        if msg.headers:
            status = msg.headers.get("Status", "")
            text = "NATS/1.0" + (f" {status} {msg.headers.get('Description', '')}" if status else "") + "\r\n"
            text += "".join(f"{k}: {v}\r\n" for k, v in msg.headers.items() if k not in ("Status", "Description"))
        self._take(msg.subject, msg.reply, msg.data, text.encode())

    def _take(self, subject: str, reply: str, data: bytes, block: bytes) -> None:
        request = self._open
        if block.startswith(_STATUS) and not data:
            code, description, _ = parse_headers(block)
            if request is None or subject != request.token:
                return  # the end of a request that already counted as ended
            if code == 503 or (code == 409 and description.lower().startswith(_GONE)):
                request.error = ConsumerGoneError(
                    f"pulling from consumer {self.consumer!r}: {code} {description or 'no responders'}"
                )
            elif code == 409:  # a leader change, too many waiting requests...: worth asking again, not at once
                request.pause = REFUSED_PAUSE
            if code != 100:  # (100: an idle heartbeat, which these requests never ask for)
                request.done.set()
            return
        headers = parse_headers(block)[2] if block else None
        msg = Msg(_client=self._nc, subject=subject, reply=reply, data=data, headers=headers)
        if request is None or self._handle is None or request.done.is_set():
            self._stray(msg)
            return
        request.delivered += 1
        if request.delivered >= request.wanted:
            request.done.set()
        self._handle(msg)
