"""Client: what a Python service needs to talk to engines over NATS: inject tokens, publish to the inbox, and
read transition events. It speaks the same protocol as any other language would (docs/nats-protocol.md).

::

    async with Client(servers=["nats://127.0.0.1:4222"]) as client:
        instance_id = await client.inject("data_pipeline", {"input_file": "a.json"}, dedupe_id="req-1")
        async for event in client.events(workflow="data_pipeline", since="start"):
            print(event.type, event.instance_id)
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError
from pydantic import ValidationError

from ..config import Settings
from ..dsl._data import json_problem
from ..errors import InjectError
from ..events import EventType
from ._acks import msg_id_block
from ._embedded import connect_nats, drain_connection
from ._events import TRANSITION_TYPES, EventStream, Since, event_filters, subject_token
from ._inbox import ensure_inbox_stream
from ._protocol import DEDUPE_HEADER, InjectAccepted, InjectReply, InjectRequest, first_problem
from ._subjects import EVENTS_STREAM, inbox_subject, inject_subject, instance_id_for

__all__ = ["Client", "Published"]


@dataclass(frozen=True)
class Published:
    """An inbox publish the stream accepted: the instance it will start (or started, when ``duplicate``)."""

    instance_id: str
    seq: int
    duplicate: bool


class Client:
    """A connection to the engines' NATS. ``Client(servers=[url])`` connects on entry (with the retries of
    :func:`connect_nats`; ``connect_options`` go to ``nats.connect``); ``connection=`` shares one you manage.
    ``settings`` supplies credentials, TLS and the inbox stream's settings (if the client has to create it).
    """

    def __init__(
        self,
        servers: Sequence[str] | str | None = None,
        *,
        connection: NATS | None = None,
        settings: Settings | None = None,
        timeout: float = 5.0,
        **connect_options: Any,
    ) -> None:
        self._settings = settings if settings is not None else Settings.model_construct()
        urls = [servers] if isinstance(servers, str) else list(servers or [])
        self.servers = urls or list(self._settings.nats_url or [])
        if not self.servers and connection is None:
            raise ValueError("Client needs servers=[...], connection= or settings with nats_url")
        self.timeout = timeout
        self._connect_options = connect_options
        self._nc = connection
        self._own_connection = connection is None
        self._js: Any = None
        self._inbox_ready = False

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def open(self) -> None:
        if self._nc is None:
            self._nc = await connect_nats(self._settings, self.servers, **self._connect_options)
        if self._js is None:
            self._js = self._nc.jetstream(timeout=self.timeout)

    async def close(self) -> None:
        """Close the connection if the client made it (a shared one stays open)."""
        self._js = None
        if self._own_connection and self._nc is not None:
            nc, self._nc = self._nc, None
            if not nc.is_closed:
                await drain_connection(nc)

    async def __aenter__(self) -> Client:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connection(self) -> NATS:
        if self._nc is None or self._js is None:
            raise RuntimeError("the client is not open: use `async with Client(...) as client:`")
        return self._nc

    @property
    def jetstream(self) -> Any:
        """The JetStream context of :attr:`connection`."""
        if self._js is None:
            raise RuntimeError("the client is not open: use `async with Client(...) as client:`")
        return self._js

    # -- injecting ---------------------------------------------------------------------------------------
    async def inject(
        self,
        workflow: str,
        data: dict[str, Any] | None = None,
        dedupe_id: str | None = None,
        *,
        actor: str | None = None,
        timeout: float | None = None,
    ) -> str:
        """Start an instance of ``workflow`` and return its id once an engine has stored it.

        With ``dedupe_id``, asking again (a retry after a timeout, a second service) returns the same instance.
        Raises :class:`InjectError`: ``.code`` is the engine's code (``invalid_data``, ``unknown_workflow``...)
        or ``no_responders`` (no engine serves the workflow) or ``timeout`` (no answer in time; with a
        dedupe_id it is safe to try again).
        """
        return (await self.inject_reply(workflow, data, dedupe_id, actor=actor, timeout=timeout)).instance_id

    async def inject_reply(
        self,
        workflow: str,
        data: dict[str, Any] | None = None,
        dedupe_id: str | None = None,
        *,
        actor: str | None = None,
        timeout: float | None = None,
    ) -> InjectAccepted:
        """:meth:`inject`, returning the whole reply (``instance_id`` and ``duplicate``)."""
        subject = inject_subject(subject_token("workflow", workflow))
        payload = _request(data, dedupe_id, actor)
        wait = timeout if timeout is not None else self.timeout
        try:
            msg = await self.connection.request(subject, payload, timeout=wait)
        except nats.errors.NoRespondersError:
            raise InjectError(
                "no_responders",
                f"no engine serves workflow {workflow!r}: nothing answers on {subject} (is an engine running it?)",
                retryable=True,
            ) from None
        except nats.errors.TimeoutError:
            raise InjectError(
                "timeout",
                f"no answer on {subject} within {wait:g}s; the instance may have started"
                + (" (asking again with the same dedupe_id is safe)" if dedupe_id else ""),
                retryable=True,
            ) from None
        except nats.errors.MaxPayloadError as err:
            raise InjectError("payload_too_large", f"the request is larger than the server accepts: {err}") from None
        except nats.errors.Error as err:  # the connection is down, reconnecting, or closed
            raise InjectError("unavailable", f"NATS: {_said(err)}", retryable=not self.connection.is_closed) from None
        return _reply(msg.data, subject)

    async def publish(
        self,
        workflow: str,
        data: dict[str, Any] | None = None,
        dedupe_id: str | None = None,
        *,
        actor: str | None = None,
        timeout: float | None = None,
    ) -> Published:
        """Put an injection in the durable inbox and return once the stream holds it (no engine needs to run).

        Without ``dedupe_id`` one is made up, so this publish's own retries cannot start two instances and the
        returned ``instance_id`` is the one the instance will have. The instance may not exist yet on return.
        """
        key = dedupe_id if dedupe_id is not None else uuid.uuid4().hex
        subject = inbox_subject(subject_token("workflow", workflow))
        payload = _request(data, key, actor)
        headers = {DEDUPE_HEADER: key}
        # nats-py checks the payload alone, but the server counts the headers too, and closes the connection
        # (for good, for this client) when the whole is over its limit: refused here instead.
        size = len(payload) + len(msg_id_block(key))  # (the header block nats-py writes for headers)
        limit = self.connection.max_payload
        if size > limit:
            raise InjectError(
                "payload_too_large", f"the message has {size} bytes with its headers; the server takes {limit}"
            )
        wait = timeout if timeout is not None else self.timeout
        js = self.jetstream
        for attempt in (1, 2):
            try:
                ack = await js.publish(subject, payload, timeout=wait, headers=headers)
            except NoStreamResponseError:
                if attempt == 2 or self._inbox_ready:
                    raise InjectError("unavailable", "the inbox stream does not answer", retryable=True) from None
                # No engine has run here yet: create the inbox, so the token waits for one.
                try:
                    await ensure_inbox_stream(js, self._settings.stream)
                except nats.errors.Error as err:
                    said = f"JetStream does not answer: {_said(err)}"
                    raise InjectError("unavailable", said, retryable=True) from None
                self._inbox_ready = True
                continue
            except nats.errors.TimeoutError:
                raise InjectError(
                    "timeout",
                    f"no acknowledgement from the inbox within {wait:g}s (publishing again is safe)",
                    retryable=True,
                ) from None
            except nats.errors.MaxPayloadError as err:
                message = f"the message is larger than the server accepts: {err}"
                raise InjectError("payload_too_large", message) from None
            except APIError as err:
                raise InjectError(
                    "unavailable", f"the inbox refused the message: {_said(err)}", retryable=err.code == 503
                ) from None
            except nats.errors.Error as err:  # the connection is down, reconnecting, or closed
                raise InjectError(
                    "unavailable", f"NATS: {_said(err)}", retryable=not self.connection.is_closed
                ) from None
            return Published(instance_id_for(workflow, key), int(ack.seq), bool(ack.duplicate))
        raise AssertionError("unreachable")

    # -- events ------------------------------------------------------------------------------------------
    def events(
        self,
        workflow: str | None = None,
        instance: str | None = None,
        types: Sequence[EventType | str] | None = None,
        *,
        transition: str | None = None,
        since: Since = "start",
        durable: str | None = None,
        follow: bool = True,
    ) -> EventStream:
        """Events matching the filters, oldest first, then live ones as they are stored.

        ``transition`` keeps the events of that transition (fired, rejected, failed); subjects do not carry
        transition names, so this one filter is applied here, after the server's subject filters.

        ``since``: ``"start"`` (everything stored), ``"new"`` (from when the subscription is made), a stream
        sequence (``int``) or a ``datetime``. ``durable="name"`` makes a named subscription the server
        remembers: it resumes where it stopped (``since`` only matters when it is first made). ``follow=False``
        ends at the events stored when the subscription was made. Use ``async with client.events(...) as
        events:`` to subscribe before doing what makes the events, and to close a durable one cleanly.
        """
        if transition is not None:
            subject_token("transition", transition)
            if types is None:
                types = TRANSITION_TYPES
        filters = event_filters(workflow, instance, types)
        return EventStream(self.jetstream, filters, since=since, durable=durable, follow=follow, transition=transition)

    async def delete_subscription(self, durable: str) -> bool:
        """Forget a durable subscription (its position); True if it existed."""
        try:
            name = subject_token("durable subscription", durable)
            return bool(await self.jetstream.delete_consumer(EVENTS_STREAM, name))
        except NotFoundError:
            return False


def _request(data: dict[str, Any] | None, dedupe_id: str | None, actor: str | None) -> bytes:
    try:
        request = InjectRequest(data=data if data is not None else {}, dedupe_id=dedupe_id, actor=actor)
    except ValidationError as err:
        field, message = first_problem(err)
        code = "not_an_object" if field == "data" else "invalid_request"
        raise InjectError(code, f"{field}: {message}", field=field) from None
    # What the engine would refuse, refused here (JSON itself could not carry some of it: a lone surrogate
    # fails the encoding, or is quietly replaced in a key).
    problem = json_problem(request.data)
    if problem:
        raise InjectError("invalid_data", problem)
    return request.model_dump_json(exclude_none=True).encode()


def _reply(payload: bytes, subject: str) -> InjectAccepted:
    try:
        reply = InjectReply.model_validate_json(payload).root
    except ValidationError:
        message = f"the answer on {subject} is not an inject reply: {payload[:200]!r}"
        raise InjectError("invalid_reply", message) from None
    if isinstance(reply, InjectAccepted):
        return reply
    error = reply.error
    raise InjectError(error.code.value, error.message, field=error.field, retryable=error.retryable)


def _said(err: Exception) -> str:
    """What a NATS error says (nats-py's ``str`` of some errors is only their class name, or 'None' fields)."""
    description = getattr(err, "description", None)
    text = description if description else str(err)
    return f"{type(err).__name__}: {text}" if text and text != type(err).__name__ else type(err).__name__
