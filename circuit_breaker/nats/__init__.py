"""NATS wiring: the JetStream store, the embedded server, the subject layout, and the client for services."""

from ._client import Client, Published
from ._dispatch import NatsTaskQueue
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
