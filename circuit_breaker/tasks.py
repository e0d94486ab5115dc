"""The task protocol between engines and workers: what is published, where, with which de-duplication id.

Every model here crosses a process boundary (and a language one: docs/nats-protocol.md documents the JSON), so
each is strict (``extra="forbid"``) and versioned by its fields only. The engine and the workers both import
this module; it imports no NATS client (the subjects are spelled in :mod:`circuit_breaker.nats._subjects`).

- :class:`Task` on ``cb.task.<kind>.<task_id>`` (stream ``CB_TASKS``, work queue),
  ``Nats-Msg-Id: <task_id>:<attempt>``;
- :class:`TaskResult` on ``cb.result.<workflow>.<instance>.<task_id>`` (``CB_RESULTS``),
  ``Nats-Msg-Id: <task_id>:<attempt>:result``: one per attempt, however often the task was delivered;
- :class:`DeadLetter` on ``cb.dlq.<kind>.<task_id>`` (``CB_DLQ``): a task no worker could finish (a malformed
  message: on ``cb.dlq.<kind>``).
  A task that parsed is also answered by a result with status ``dead_lettered``, so the engine learns of it
  from ``CB_RESULTS`` alone.

The task id is the last subject token of both the task and its result, so one task's message and its newest
result can be read directly by subject (``task_queued``, ``stored_result`` in :mod:`circuit_breaker.workers`).

``attempt`` is the fencing token: the engine raises it whenever it hands the same task out again (a timeout, a
retry from the dead-letter queue), and applies a result only if its attempt is the one it last recorded for
that task (or higher, for a retry made from the dead-letter queue), so a late result cannot complete a newer
attempt.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .events import ErrorInfo
from .token import utcnow

__all__ = [
    "DeadLetter",
    "DeadLetterReason",
    "ResultStatus",
    "Task",
    "TaskResult",
    "parse_task",
    "result_msg_id",
    "task_msg_id",
]

_TOKEN = re.compile(r"^[A-Za-z0-9_\-]+$")  # a plain subject token: no '.', '*', '>' or whitespace
_KIND = re.compile(r"^[a-z][a-z0-9_\-]*$")  # an executor's registered name

DeadLetterReason = Literal["max_deliver", "malformed"]
ResultStatus = Literal["succeeded", "failed", "dead_lettered"]


def _token(value: str, what: str) -> str:
    if not _TOKEN.match(value):
        raise ValueError(f"{what} {value!r} must be letters, digits, '_' or '-' (it is a NATS subject token)")
    return value


class Task(BaseModel):
    """One remote execution of a transition's action, as the engine hands it to the workers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task_id: str = Field(min_length=1, max_length=200, description="unique per firing; stable across attempts")
    attempt: int = Field(1, ge=1, description="fencing token: raised by the engine each time it re-dispatches")
    workflow: str
    instance_id: str
    transition: str = Field(min_length=1)
    idempotency_key: str = Field(
        min_length=1, description="for the action's outside effects; the same for every attempt of a firing"
    )
    executor: dict[str, Any] = Field(description='{"executor": kind, "params": {...}} as Executor.spec() makes it')
    data: dict[str, Any] = Field(default_factory=dict, description="the token data (templates are filled from it)")
    timeout: float | None = Field(None, gt=0, description="seconds one run may take (when the spec sets none)")
    deadline: datetime | None = Field(None, description="a worker that gets the task later fails it as 'expired'")
    created: datetime = Field(default_factory=utcnow)
    traceparent: str | None = Field(None, description="W3C trace context, passed through to logs and the result")

    @field_validator("task_id")
    @classmethod
    def _task_id_token(cls, value: str) -> str:
        return _token(value, "task id")

    @field_validator("workflow", "instance_id")
    @classmethod
    def _subject_token(cls, value: str) -> str:
        return _token(value, "workflow/instance name")

    @field_validator("executor")
    @classmethod
    def _spec(cls, value: dict[str, Any]) -> dict[str, Any]:
        kind = value.get("executor")
        if not isinstance(kind, str) or not _KIND.match(kind):
            raise ValueError("executor spec needs 'executor': a registered name (lower-case letters, digits, _ -)")
        if not isinstance(value.get("params", {}), dict):
            raise ValueError("executor spec 'params' must be an object")
        return value

    @property
    def kind(self) -> str:
        """The executor kind: which workers serve this task (``cb.task.<kind>.<task_id>``)."""
        return str(self.executor["executor"])

    @classmethod
    def new(cls, *, workflow: str, instance_id: str, transition: str, executor: dict[str, Any], **rest: Any) -> Task:
        """A first attempt with a fresh task id; the idempotency key defaults to the task id."""
        task_id = rest.pop("task_id", None) or uuid.uuid4().hex
        rest.setdefault("idempotency_key", task_id)
        return cls(
            task_id=task_id,
            workflow=workflow,
            instance_id=instance_id,
            transition=transition,
            executor=executor,
            **rest,
        )


class TaskResult(BaseModel):
    """The outcome of one attempt of a task: what the engine applies (once) to the instance."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task_id: str
    attempt: int = Field(ge=1)
    workflow: str
    instance_id: str
    transition: str
    status: ResultStatus = Field(
        description="succeeded; failed (final: retryable failures were retried); dead_lettered (in CB_DLQ)"
    )
    output: dict[str, Any] = Field(default_factory=dict, description="the executor's output (succeeded only)")
    error: ErrorInfo | None = Field(
        None, description="why it failed or was dead-lettered: kind, message, retryable, details"
    )
    worker: str = Field(description="which worker ran it (host:pid)")
    deliveries: int = Field(1, ge=1, description="how often the queue delivered this attempt (retries + 1)")
    started: datetime
    finished: datetime
    duration: float = Field(ge=0, description="seconds the last run took")
    traceparent: str | None = None

    @classmethod
    def answering(
        cls,
        task: Task,
        status: ResultStatus,
        *,
        worker: str,
        started: datetime,
        duration: float,
        output: dict[str, Any] | None = None,
        error: ErrorInfo | None = None,
        deliveries: int = 1,
    ) -> TaskResult:
        """The result of ``task``'s current attempt (its ids and trace context copied), finished now."""
        return cls(
            task_id=task.task_id,
            attempt=task.attempt,
            workflow=task.workflow,
            instance_id=task.instance_id,
            transition=task.transition,
            status=status,
            output=output or {},
            error=error,
            worker=worker,
            deliveries=deliveries,
            started=started,
            finished=utcnow(),
            duration=duration,
            traceparent=task.traceparent,
        )


class DeadLetter(BaseModel):
    """A task that will not be retried by itself, in ``CB_DLQ``: ``circuit-breaker dlq retry`` puts it back."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reason: DeadLetterReason
    message: str
    subject: str = Field(description="where the message came from (cb.task.<kind>.<task_id>)")
    task: Task | None = Field(None, description="the task; None when the message was malformed")
    raw: str | None = Field(None, description="a malformed message's payload (UTF-8, cut at 64 KiB)")
    deliveries: int = Field(ge=1)
    last_error: ErrorInfo | None = None
    worker: str
    time: datetime = Field(default_factory=utcnow)


def task_msg_id(task_id: str, attempt: int) -> str:
    """The Nats-Msg-Id of a task: a re-published attempt is dropped by the stream within its duplicate window."""
    return f"{task_id}:{attempt}"


def result_msg_id(task_id: str, attempt: int) -> str:
    """The Nats-Msg-Id of a result: a worker that runs an attempt again publishes no second result."""
    return f"{task_id}:{attempt}:result"


def parse_task(payload: bytes) -> Task:
    """A task from a message payload; raises ValueError (pydantic's ValidationError is one) naming the problem."""
    return Task.model_validate_json(payload)
