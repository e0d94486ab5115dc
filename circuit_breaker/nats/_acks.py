"""Acknowledged JetStream publishes on one shared reply subscription, for the event store and the workers.

``js.publish`` makes a request per message (its own inbox bookkeeping and timer, about twice the cost of the
publish itself); ``js.publish_async`` shares a subscription but leaves the future unresolved when the server
answers with an error — and a refused expected-sequence check is an everyday answer for the event store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.js.errors import APIError, NoStreamResponseError

from ..errors import StoreError

__all__ = ["AckedPublisher"]


class AckedPublisher:
    """Publishes that wait for the server's acknowledgement (``{"stream", "seq", "duplicate"}``), resolved by
    one reply subscription; server errors become exceptions (APIError, NoStreamResponseError), no answer
    within ``timeout`` becomes nats.errors.TimeoutError."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._prefix = ""
        self._futures: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._next = 0
        self._sub: Any = None

    async def start(self) -> None:
        self._prefix = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(self._prefix + ".*", cb=self._on_reply)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._sub.unsubscribe(), 2.0)
            self._sub = None

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str], timeout: float) -> dict[str, Any]:
        """The server's answer; raises APIError, NoStreamResponseError, nats.errors.TimeoutError or a
        connection error."""
        if self._sub is None:
            await self.start()
        self._next += 1
        token = str(self._next)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._futures[token] = future
        expiry = loop.call_later(timeout, _expire, future)
        try:
            await self._nc.publish(subject, payload, reply=f"{self._prefix}.{token}", headers=headers)
            return await future
        finally:
            expiry.cancel()
            self._futures.pop(token, None)

    async def _on_reply(self, msg: Any) -> None:
        future = self._futures.get(msg.subject[len(self._prefix) + 1 :])
        if future is None or future.done():
            return  # an answer after the timeout: the retry finds out (by the message id) whether it landed
        if msg.headers and msg.headers.get("Status") == "503":
            future.set_exception(NoStreamResponseError())
            return
        try:
            reply = json.loads(msg.data)
        except ValueError:
            future.set_exception(StoreError(f"JetStream answered with something that is not JSON: {msg.data[:200]!r}"))
            return
        error = reply.get("error") if isinstance(reply, dict) else None
        if error is not None:
            future.set_exception(
                APIError(code=error.get("code"), err_code=error.get("err_code"), description=error.get("description"))
            )
        elif not isinstance(reply, dict):
            future.set_exception(StoreError(f"JetStream answered with something unexpected: {msg.data[:200]!r}"))
        else:
            future.set_result(reply)


def _expire(future: asyncio.Future[dict[str, Any]]) -> None:
    if not future.done():
        future.set_exception(nats.errors.TimeoutError())
