"""Pull requests on a durable JetStream consumer whose messages are handed out as they arrive.

nats-py's ``fetch(n)`` waits for each message with ``next_msg`` (a task and a ``wait_for`` per message) and
parses every header block with a per-character loop; when tasks trickle in one or two at a time (a worker
behind an engine, an engine behind its workers) that bookkeeping cost more than the message itself. A
:class:`Puller` sends one pull request (``{"batch": n, "expires": ...}``) to the consumer and takes the
delivered messages straight from nats-py's protocol parser (see ``_acks._ReplyRouter``): each one becomes a
``nats.aio.msg.Msg`` (so ``ack``, ``nak``, ``in_progress``, ``term`` and ``metadata`` work as usual) and goes to
the caller's function at once, while the request stays open for the rest of its batch.

A request ends when its whole batch was delivered or when the server ends it with a status message (404 no
messages, 408 expired, 409 "Server Shutdown" before a restart; other 409s and 503 are errors). Otherwise (no
status within ``expires + END_MARGIN`` seconds, a cancelled pull, ``stop``) the server may still hold the
request: the puller then drops its inbox, so the server drops the request instead of filling it, and the next
pull subscribes a fresh inbox. A message that reaches the inbox outside an open request goes to ``stray``
(whose owner applies it or hands it back) and never counts for a later pull.
While the connection is down no request is sent at all: one buffered for the reconnect would reach the server
late, with nobody waiting for its answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from functools import partial
from typing import Any

from nats.aio.msg import Msg

from ..errors import StoreError
from ._acks import _ReplyRouter

__all__ = ["ConsumerGoneError", "PullRefusedError", "Puller", "delivery"]

END_MARGIN = 2.0  # seconds after its expiry that a request without a status message counts as ended
DISCONNECTED_PAUSE = 0.25  # seconds a pull waits (and returns empty) while the connection is down
_STATUS = b"NATS/1.0 "
# 409 descriptions after which pulling again cannot work until the consumer is made again.
_GONE = ("consumer deleted", "consumer is push based")
# 409 descriptions that end a request without anything being wrong with it: the server is going away (a restart),
# and the connection's reconnect takes over from there.
_SHUTDOWN = ("server shutdown",)


class ConsumerGoneError(StoreError):
    """The consumer a puller reads is not there (deleted, never made, or JetStream itself not answering)."""


class PullRefusedError(StoreError):
    """The server refused a pull request (a 409 such as too many waiting requests, or another status)."""


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
    __slots__ = ("delivered", "done", "ended", "error", "pause", "token", "wanted")

    def __init__(self, token: str, wanted: int) -> None:
        self.token, self.wanted, self.delivered = token, wanted, 0
        self.done = asyncio.Event()
        self.ended = False  # by the server: the whole batch delivered, or a status message
        self.error: Exception | None = None
        self.pause = 0.0  # seconds to wait before the pull returns (the server is going away)


class _Inbox:
    """One inbox subscription of a puller; once dropped (``live`` false) what reaches it goes to ``stray``."""

    __slots__ = ("live", "prefix", "sub")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.sub: Any = None
        self.live = True


class Puller:
    """``Puller(nc, stream, consumer, stray)``; ``await pull(n, handle, expires)`` in a loop, ``await stop()``.

    One request is open at a time. ``handle(msg)`` is called from the connection's reader for each message as
    it arrives, so it must not block (start a task for the work); ``stray(msg)`` gets a message that arrived for
    no open request (see the module docstring). ``interrupted`` says whether the last pull ended without the
    server's word (its inbox was dropped; messages the server sent it meanwhile may be lost to this puller).
    """

    def __init__(self, nc: Any, stream: str, consumer: str, stray: Callable[[Msg], None]) -> None:
        self._nc = nc
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.consumer = consumer
        self._stray = stray
        self._routed = hasattr(nc, "_process_msg")
        self._inbox: _Inbox | None = None
        self._count = 0
        self._open: _Request | None = None
        self._handle: Callable[[Msg], None] | None = None
        self._dropping: set[asyncio.Task[None]] = set()
        self.interrupted = False

    async def start(self) -> None:
        """Subscribe the inbox (``pull`` does it when needed)."""
        if self._inbox is not None:
            return
        nc = self._nc
        inbox = _Inbox(nc.new_inbox() + ".")
        inbox.sub = await nc.subscribe(inbox.prefix + "*", cb=partial(self._on_msg, inbox))
        if self._routed:
            _ReplyRouter.of(nc).handlers[inbox.sub._id] = partial(self._on_raw, inbox)
        self._inbox = inbox

    async def stop(self) -> None:
        """Stop taking messages: an open pull returns at once (what it got so far); the inbox is dropped."""
        if self._open is not None:
            self._open.done.set()
        inbox = self._forget()
        if inbox is not None:
            await self._unsubscribe(inbox)
        if self._dropping:
            await asyncio.wait(self._dropping, timeout=2.0)

    async def pull(
        self, wanted: int, handle: Callable[[Msg], None], expires: float, *, no_wait: bool = False
    ) -> int:
        """Ask for up to ``wanted`` messages, hand each to ``handle`` as it arrives, and return how many came
        once the request ends (at most about ``expires`` seconds). With ``no_wait`` the server sends only what it
        has now and ends the request at once (404) instead of waiting for more. Raises
        :class:`ConsumerGoneError` when the consumer is gone and :class:`PullRefusedError` when the server
        refuses the request; connection errors of the request's publish propagate."""
        self.interrupted = False
        if not self._nc.is_connected:
            await asyncio.sleep(min(expires, DISCONNECTED_PAUSE))
            return 0
        await self.start()
        assert self._inbox is not None
        self._count += 1
        request = _Request(f"{self._inbox.prefix}{self._count}", wanted)
        self._open, self._handle = request, handle
        # (With an expiry the server would treat no_wait as a long poll.)
        asked = {"batch": wanted, "no_wait": True} if no_wait else {"batch": wanted, "expires": int(expires * 1e9)}
        try:
            await self._nc.publish(self._next_subject, json.dumps(asked).encode(), reply=request.token)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(expires + END_MARGIN):
                    await request.done.wait()
        finally:
            self._open = self._handle = None
            if not request.ended:  # the server may still hold it: take away its inbox so that it drops it
                self.interrupted = True
                inbox = self._forget()
                if inbox is not None:  # (a task: the UNSUB must go out even when this pull is being cancelled)
                    task = asyncio.get_running_loop().create_task(self._unsubscribe(inbox))
                    self._dropping.add(task)
                    task.add_done_callback(self._dropping.discard)
        if request.error is not None:
            raise request.error
        if request.pause:
            await asyncio.sleep(request.pause)
        return request.delivered

    def _forget(self) -> _Inbox | None:
        inbox, self._inbox = self._inbox, None
        if inbox is not None:
            inbox.live = False
        return inbox

    async def _unsubscribe(self, inbox: _Inbox) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(inbox.sub.unsubscribe(), 2.0)
        if self._routed:  # (after the UNSUB went out: what still arrives before it goes to stray, not nowhere)
            _ReplyRouter.of(self._nc).handlers.pop(inbox.sub._id, None)

    # -- the connection's reader calls these ----------------------------------------------------------------
    def _on_raw(self, inbox: _Inbox, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        self._take(inbox, subject.decode(), reply.decode(), data, headers or b"")

    async def _on_msg(self, inbox: _Inbox, msg: Msg) -> None:
        """(A client without the parser hook: the subscription's own task delivers, headers already parsed.)"""
        text = ""
        if msg.headers:
            status = msg.headers.get("Status", "")
            text = "NATS/1.0" + (f" {status} {msg.headers.get('Description', '')}" if status else "") + "\r\n"
            text += "".join(f"{k}: {v}\r\n" for k, v in msg.headers.items() if k not in ("Status", "Description"))
        self._take(inbox, msg.subject, msg.reply, msg.data, text.encode())

    def _take(self, inbox: _Inbox, subject: str, reply: str, data: bytes, block: bytes) -> None:
        request = self._open
        if block.startswith(_STATUS) and not data:
            code, description, _ = parse_headers(block)
            if code == 100 or request is None or not inbox.live or subject != request.token:
                return  # an idle heartbeat (never asked for), or the end of a request that already ended
            request.ended = True
            if code == 503 or (code == 409 and description.lower().startswith(_GONE)):
                request.error = ConsumerGoneError(
                    f"pulling from consumer {self.consumer!r}: {code} {description or 'no responders'}"
                )
            elif code == 409 and description.lower().startswith(_SHUTDOWN):
                request.pause = DISCONNECTED_PAUSE  # (what it still delivers comes to stray, not lost)
            elif code not in (404, 408):  # (404: nothing more for a no_wait request; 408: it expired)
                request.error = PullRefusedError(
                    f"pulling from consumer {self.consumer!r}: the server refused the request: {code} {description}"
                )
            request.done.set()
            return
        headers = parse_headers(block)[2] if block else None
        msg = Msg(_client=self._nc, subject=subject, reply=reply, data=data, headers=headers)
        if request is None or self._handle is None or not inbox.live or request.done.is_set():
            self._stray(msg)
            return
        request.delivered += 1
        if request.delivered >= request.wanted:
            request.ended = True
            request.done.set()
        self._handle(msg)
