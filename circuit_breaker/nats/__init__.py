"""NATS wiring: the JetStream store, the embedded server, the subject layout, and the client for services."""

from typing import Any

from ._client import Client, Published
from ._events import EventStream
from ._inbox import ensure_inbox_stream
from ._inject import InjectService
from ._protocol import InjectAccepted, InjectReply, InjectRequest
from ._schemas import event_schema, inject_reply_schema, inject_request_schema
from ._server import NatsCluster, NatsServer
from ._store import JetStreamStore, ensure_stream
from ._subjects import EVENTS_STREAM, INBOX_STREAM, event_filter, event_subject, inbox_subject, inject_subject

__all__ = [
    "EVENTS_STREAM",
    "INBOX_STREAM",
    "Client",
    "EventStream",
    "InjectAccepted",
    "InjectReply",
    "InjectRequest",
    "InjectService",
    "JetStreamStore",
    "NatsCluster",
    "NatsServer",
    "NatsTaskQueue",
    "Published",
    "ensure_inbox_stream",
    "ensure_stream",
    "event_filter",
    "event_schema",
    "event_subject",
    "inbox_subject",
    "inject_reply_schema",
    "inject_request_schema",
    "inject_subject",
]


def __getattr__(name: str) -> Any:
    # The task queue needs circuit_breaker.workers, which needs this package: imported when asked for.
    if name == "NatsTaskQueue":
        from ._dispatch import NatsTaskQueue

        return NatsTaskQueue
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
