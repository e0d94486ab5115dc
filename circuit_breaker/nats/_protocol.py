"""The inject protocol's JSON forms, as pydantic models: what services in any language send and get back.

A request (on ``cb.inject.<workflow>``, or a message in the inbox ``cb.inbox.<workflow>``) is always the
envelope ``{"data": {...}, "dedupe_id": "...", "actor": "..."}``; a bare token-data object is refused
(``invalid_request``) rather than guessed at, so a field named ``data`` or ``actor`` in token data can never
be misread. The reply is ``{"instance_id": "...", "duplicate": false}`` or ``{"error": {...}}``.
"""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError, field_validator

from ..dsl._data import has_lone_surrogate
from ..errors import InjectError

__all__ = [
    "DEDUPE_HEADER",
    "DEFAULT_MAX_PAYLOAD",
    "ErrorCode",
    "InjectAccepted",
    "InjectErrorBody",
    "InjectRejected",
    "InjectReply",
    "InjectRequest",
    "error_reply",
    "parse_request",
]

DEFAULT_MAX_PAYLOAD = 1024 * 1024
DEDUPE_HEADER = "Nats-Msg-Id"
DEDUPE_ID_MAX = 256
PRINTABLE = r"^[^\x00-\x1f\x7f]+$"  # no control characters (they would reach a reviewer's terminal)
_FIELDS = ("data", "dedupe_id", "actor")


class ErrorCode(StrEnum):
    """Error codes an engine answers with. ``retryable`` ones may succeed if sent again (same dedupe_id)."""

    MALFORMED_JSON = "malformed_json"
    NOT_AN_OBJECT = "not_an_object"
    INVALID_REQUEST = "invalid_request"
    UNKNOWN_WORKFLOW = "unknown_workflow"
    INVALID_DATA = "invalid_data"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


class InjectRequest(BaseModel):
    """Start an instance of the workflow named by the subject, with ``data`` in its initial place."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="InjectRequest")

    data: dict[str, Any] = Field(
        default_factory=dict, description="The token data (a JSON object); checked against the workflow's model."
    )
    dedupe_id: str | None = Field(
        None,
        min_length=1,
        max_length=DEDUPE_ID_MAX,
        pattern=PRINTABLE,
        description="Makes the injection idempotent for ever: the same dedupe_id (per workflow) always answers "
        "with the instance the first one started, with duplicate=true.",
    )
    actor: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        pattern=PRINTABLE,
        description="Who injects (recorded in the token history and events).",
    )

    @field_validator("dedupe_id", "actor")
    @classmethod
    def _utf8(cls, value: str | None) -> str | None:
        # JSON's \ud800 escape carries a lone surrogate in; no stored event could carry it out.
        if value is not None and not value.isascii() and has_lone_surrogate(value):
            raise ValueError("holds a lone surrogate (such as \\ud800), which UTF-8 cannot carry")
        return value


def dedupe_header(value: str) -> str:
    """A ``Nats-Msg-Id`` header taken as the dedupe id (an inbox message without one in its body): held to the
    same form as ``dedupe_id``, so that a retry of it over request/reply finds the same instance."""
    if len(value) > DEDUPE_ID_MAX or not re.fullmatch(PRINTABLE, value) or has_lone_surrogate(value):
        raise InjectError(
            ErrorCode.INVALID_REQUEST,
            f"{DEDUPE_HEADER} is taken as the dedupe id: 1-{DEDUPE_ID_MAX} characters, no control characters",
            field=DEDUPE_HEADER,
        )
    return value


def first_problem(err: ValidationError) -> tuple[str | None, str]:
    """The field (dotted path, None for the whole) and the message of the first thing pydantic refused."""
    first = err.errors(include_input=False, include_url=False)[0]
    return ".".join(str(p) for p in first["loc"]) or None, first["msg"]


class InjectAccepted(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, title="InjectAccepted")

    instance_id: str = Field(description="The started instance; events arrive on cb.ev.<workflow>.<instance_id>.*")
    duplicate: bool = Field(False, description="True when dedupe_id had started this instance before.")


class InjectErrorBody(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, title="InjectErrorBody")

    code: ErrorCode
    message: str = Field(description="What is wrong, for people; names the offending field when there is one.")
    field: str | None = Field(None, description="The offending field (dotted path), when there is one.")
    retryable: bool = Field(False, description="Sending the same request again (same dedupe_id) may succeed.")


class InjectRejected(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, title="InjectRejected")

    error: InjectErrorBody


class InjectReply(RootModel[InjectAccepted | InjectRejected]):
    """The reply to an inject request: accepted (``instance_id``) or rejected (``error``)."""


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def parse_request(payload: bytes, *, max_payload: int = DEFAULT_MAX_PAYLOAD) -> InjectRequest:
    """The request in ``payload``; raises :class:`InjectError` with the protocol's code and a message that says
    what to change (never quoting the payload: it may hold secrets)."""
    if len(payload) > max_payload:
        raise InjectError(
            ErrorCode.PAYLOAD_TOO_LARGE, f"the request has {len(payload)} bytes; the limit is {max_payload} bytes"
        )
    try:
        raw = json.loads(payload)
    except UnicodeDecodeError as err:
        raise InjectError(ErrorCode.MALFORMED_JSON, f"the request is not valid JSON: {err}") from None
    except ValueError as err:
        if "Exceeds the limit" in str(err):  # valid JSON, but an integer Python will not read (a DoS guard)
            digits = "a number has more digits than the engine reads (4300): send it as a string"
            raise InjectError(ErrorCode.INVALID_DATA, digits) from None
        raise InjectError(ErrorCode.MALFORMED_JSON, f"the request is not valid JSON: {err}") from None
    except RecursionError:
        raise InjectError(ErrorCode.MALFORMED_JSON, "the request is nested too deeply") from None
    if not isinstance(raw, dict):
        wanted = 'a JSON object like {"data": {...}}'
        raise InjectError(ErrorCode.NOT_AN_OBJECT, f"the request must be {wanted}, not {_json_type(raw)}")
    unknown = sorted(k for k in raw if k not in _FIELDS)
    if unknown:
        raise InjectError(
            ErrorCode.INVALID_REQUEST,
            f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}: a request is "
            '{"data": {...}, "dedupe_id": "...", "actor": "..."}, with the token data under "data"',
            field=unknown[0],
        )
    data = raw.get("data", {})
    if not isinstance(data, dict):
        raise InjectError(ErrorCode.NOT_AN_OBJECT, f"data must be a JSON object, not {_json_type(data)}", field="data")
    try:
        return InjectRequest.model_validate(raw)  # (the data is checked with the workflow's rules for data)
    except ValidationError as err:
        field, message = first_problem(err)
        raise InjectError(ErrorCode.INVALID_REQUEST, f"{field}: {message}", field=field) from None


def error_reply(err: InjectError) -> InjectRejected:
    try:
        code = ErrorCode(err.code)
    except ValueError:  # a code only clients raise (no_responders, timeout) never travels in a reply
        code = ErrorCode.INTERNAL
    return InjectRejected(
        error=InjectErrorBody(code=code, message=err.message, field=err.field, retryable=err.retryable)
    )
