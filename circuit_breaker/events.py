"""Typed events: every state change of an instance is one event; the instance is the fold of its events.

The JSON form (``event.model_dump(mode="json")``) is what the NATS store persists and what services in any
language read; ``type`` tells the kinds apart. Every event has ``workflow``, ``instance_id``, ``seq``, ``time``,
``actor`` and ``transition`` (null when the event is not about one transition).
"""

from __future__ import annotations

import abc
import functools
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, TypeAdapter
from pydantic_core import CoreSchema

from .token import Token, utcnow


class _WireToken(abc.ABC):  # noqa: B024 (no abstract methods: a virtual base, for register())
    """Stands in for ``Token`` in the serialisation schema below, so pydantic-core builds a serializer from
    that schema instead of reusing ``Token``'s own (it reuses a complete model's serializer). A virtual base of
    ``Token``, so that serialising through a union of events (``TypeAdapter(Event)``) takes a token for it
    without a warning."""


_WireToken.register(Token)


class _WithoutHistory:
    """Serialise a list of tokens without their ``history``, natively.

    Validation is ``list[Token]`` as is. Serialisation uses a copy of ``Token``'s field schema with ``history``
    excluded: the same bytes a Python callback dropping it would give, at about a third of the cost of one
    (this runs for every stored event that produces tokens).
    """

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        schema: Any = handler(source)
        token_schema: Any = handler.resolve_ref_schema(schema["items_schema"])
        fields_schema = dict(token_schema["schema"])
        fields = dict(fields_schema["fields"])
        fields["history"] = {**fields["history"], "serialization_exclude": True}
        fields_schema["fields"] = fields
        item = {k: v for k, v in token_schema.items() if k != "ref"}
        item["serialization"] = {"type": "model", "cls": _WireToken, "schema": fields_schema}
        return {**schema, "items_schema": item}


# Produced tokens travel without their history: the fold rebuilds it from the consumed token's history and
# the event itself, so an event's size does not grow with the age of the token.
ProducedTokens = Annotated[list[Token], _WithoutHistory]


class EventType(StrEnum):
    TOKEN_INJECTED = "token_injected"
    TRANSITION_STARTED = "transition_started"
    TRANSITION_FIRED = "transition_fired"
    TRANSITION_REJECTED = "transition_rejected"
    TRANSITION_FAILED = "transition_failed"
    INSTANCE_COMPLETED = "instance_completed"
    INSTANCE_STATUS_CHANGED = "instance_status_changed"


class ErrorInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: str
    message: str
    retryable: bool = True
    details: dict[str, Any] = Field(default_factory=dict, description="what the failure carried (status, excerpt...)")


class _EventBase(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    workflow: str
    instance_id: str
    seq: int = Field(description="the instance's version after this event; 1 for its first event")
    time: datetime = Field(default_factory=utcnow)
    actor: str | None = None


class TokenInjected(_EventBase):
    """An instance started: its first token was placed in the initial place."""

    type: Literal[EventType.TOKEN_INJECTED] = EventType.TOKEN_INJECTED
    token: Token
    transition: None = Field(None, description="always null: this event is not about one transition")


class TransitionStarted(_EventBase):
    """A remote action was handed to the workers as task ``task_id``: its input tokens left their places and
    wait with the task until a ``transition_fired`` (or ``transition_failed`` / ``transition_rejected``) with the
    same ``task_id`` ends it. A later ``transition_started`` of the same task (``consumed`` empty) records that
    it was handed out again with a higher ``attempt``."""

    type: Literal[EventType.TRANSITION_STARTED] = EventType.TRANSITION_STARTED
    transition: str
    consumed: list[str] = Field(description="ids of the tokens the task took; empty when it is handed out again")
    task_id: str
    attempt: int = Field(1, ge=1, description="fencing token: only a result of this attempt (or a later one) counts")
    executor: str = Field(description="the executor kind: which workers serve the task")
    data: dict[str, Any] = Field(default_factory=dict, description="the input data the task carries")
    spec: dict[str, Any] = Field(
        default_factory=dict, description="the executor spec the task carries (registered name, parameters)"
    )
    into: str | None = Field(None, description="the result goes under this key of the token data")


class TransitionFired(_EventBase):
    """Tokens were consumed and produced, atomically. For a remote action (``task_id`` set) the tokens were
    consumed when it started; this event produces the outputs from the task's result."""

    type: Literal[EventType.TRANSITION_FIRED] = EventType.TRANSITION_FIRED
    transition: str
    consumed: list[str] = Field(description="ids of the consumed tokens, in the transition's input order")
    produced: ProducedTokens
    task_id: str | None = Field(None, description="the remote task whose result this is")


class TransitionRejected(_EventBase):
    """A policy said no; nothing moved."""

    type: Literal[EventType.TRANSITION_REJECTED] = EventType.TRANSITION_REJECTED
    transition: str
    tokens: list[str]
    errors: list[str]
    stage: Literal["validations", "rules"] = "rules"
    task_id: str | None = Field(None, description="a remote task whose result the rules refused: its tokens go back")


class TransitionFailed(_EventBase):
    """An action attempt failed. With ``incident`` set, retries ran out and the instance needs a person.

    ``consumed``/``produced`` are filled only when the failure moved tokens to an error place.
    """

    type: Literal[EventType.TRANSITION_FAILED] = EventType.TRANSITION_FAILED
    transition: str
    tokens: list[str]
    attempt: int
    error: ErrorInfo
    will_retry: bool = False
    incident: str | None = None
    consumed: list[str] = Field(default_factory=list)
    produced: ProducedTokens = Field(default_factory=list)
    task_id: str | None = Field(
        None,
        description="a remote task. With ``consumed`` set it ended: its tokens went to the error place "
        "(``produced``) or, with nothing produced, back where they were. Without, it stays in flight: it will be "
        "handed out again (``will_retry``) or, with an ``incident``, waits in the dead-letter queue",
    )


class InstanceCompleted(_EventBase):
    """Every token of the instance rests in a final place."""

    type: Literal[EventType.INSTANCE_COMPLETED] = EventType.INSTANCE_COMPLETED
    final_places: list[str] = Field(default_factory=list)
    transition: None = Field(None, description="always null: this event is not about one transition")


class InstanceStatusChanged(_EventBase):
    type: Literal[EventType.INSTANCE_STATUS_CHANGED] = EventType.INSTANCE_STATUS_CHANGED
    status: str
    previous: str
    reason: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    transition: None = Field(None, description="always null: this event is not about one transition")


Event = Annotated[
    TokenInjected
    | TransitionStarted
    | TransitionFired
    | TransitionRejected
    | TransitionFailed
    | InstanceCompleted
    | InstanceStatusChanged,
    Field(discriminator="type"),
]

_ADAPTER: TypeAdapter[Event] | None = None


@functools.cache
def type_of(cls: type[Event]) -> EventType:
    """The ``type`` every event of class ``cls`` has (pydantic's ``model_fields`` is slow to read)."""
    value: EventType = cls.model_fields["type"].default
    return value


def parse_event(data: bytes | str | dict[str, Any]) -> Event:
    """An event from its JSON form (bytes, text or an already-decoded dict)."""
    global _ADAPTER
    if _ADAPTER is None:
        _ADAPTER = TypeAdapter(Event)
    if isinstance(data, dict):
        return _ADAPTER.validate_python(data)
    return _ADAPTER.validate_json(data)
