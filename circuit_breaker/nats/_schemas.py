"""JSON schemas of what crosses NATS, generated from the models the engine itself uses, so they cannot drift.

``circuit-breaker schema inject|event`` prints them; services in other languages validate against them or
generate types from them.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from ..events import Event
from ._protocol import InjectReply, InjectRequest

__all__ = ["event_schema", "inject_reply_schema", "inject_request_schema"]

_DRAFT = "https://json-schema.org/draft/2020-12/schema"


def _schema(title: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"$schema": _DRAFT, "title": title, "description": description, **schema}


def inject_request_schema() -> dict[str, Any]:
    """The request on ``cb.inject.<workflow>`` and the message in ``cb.inbox.<workflow>``."""
    schema = InjectRequest.model_json_schema()
    description = schema.pop("description", "")
    return _schema("InjectRequest", schema, description)


def inject_reply_schema() -> dict[str, Any]:
    """The reply to a request on ``cb.inject.<workflow>``: an accepted instance or an error."""
    schema = InjectReply.model_json_schema()
    description = schema.pop("description", "")
    schema.pop("title", None)
    return _schema("InjectReply", schema, description)


def event_schema() -> dict[str, Any]:
    """An event on ``cb.ev.<workflow>.<instance>.<type>``, told apart by ``type``."""
    # Validation mode: what a reader accepts; the wire form (tokens in produced lists travel without their
    # history, which has a default) conforms to it.
    schema = TypeAdapter(Event).json_schema()
    for ref in schema["discriminator"]["mapping"].values():
        # Every stored event carries its type (it has a default only for building one in Python): required,
        # so that a validator without OpenAPI's `discriminator` still tells the kinds apart by it.
        variant = schema["$defs"][ref.rsplit("/", 1)[-1]]
        variant["required"] = ["type", *[name for name in variant.get("required", []) if name != "type"]]
    return _schema("Event", schema, "One state change of an instance; `type` tells the kinds apart.")
