"""Remote actions from the engine's side: the tasks an instance has in flight, and the queue that carries them.

A :class:`TaskQueue` hands tasks to workers and brings their results back. On a JetStream store it is
``circuit_breaker.nats.NatsTaskQueue`` (work-queue streams, any number of worker processes); the embedded engine
uses :class:`circuit_breaker.executors.LocalTaskQueue`, which runs the same tasks in-process.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from ..tasks import Task, TaskResult
    from ..token import Token

__all__ = ["InFlightTask", "PendingTask", "ResultHandler", "TaskQueue"]

# Called with each result; returns once it is applied (or found moot). Raising hands the result back for later.
ResultHandler = Callable[["TaskResult"], Awaitable[None]]


class TaskAttempts(NamedTuple):
    """The attempt of a task waiting for a worker or in one's hands (0: none), and the newest attempt whose
    result is stored (0: none)."""

    queued: int
    answered: int


NO_ATTEMPTS = TaskAttempts(0, 0)


@runtime_checkable
class TaskQueue(Protocol):
    """Where an engine sends remote actions, and whence their results come."""

    async def open(self, deliver: ResultHandler) -> None:
        """Start delivering results (of the workflows later passed to :meth:`listen`) to ``deliver``."""
        ...

    async def listen(self, workflow: str) -> None:
        """Deliver the results of ``workflow``'s tasks from now on (and those stored while nobody listened)."""
        ...

    async def submit(self, task: Task) -> None:
        """Hand ``task`` to the workers; a repeated submit of the same task and attempt must not run it twice."""
        ...

    async def recover(self, task: Task) -> None:
        """After a restart: make sure ``task`` (in flight according to the store) is queued or its result known,
        submitting it again only when it was lost."""
        ...

    async def attempts(self, task: Task) -> TaskAttempts:
        """What this queue knows of ``task``'s attempts, also of ones handed out without the engine (``dlq
        retry``): the engine adopts a queued attempt nobody answered yet, or hands out one past both."""
        ...

    async def forget_dead_letters(self, task: Task) -> None:
        """Remove the dead letters this queue keeps of ``task``: the engine handed it out again, so they are
        settled (the instance's history keeps the failure)."""
        ...

    async def close(self) -> None:
        """Stop delivering results and release the connection's subscriptions (results left are kept)."""
        ...


class InFlightTask(BaseModel):
    """A remote action an instance waits for (``Instance.tasks``)."""

    model_config = ConfigDict(frozen=True)

    task_id: str
    transition: str
    attempt: int
    executor: str
    since: datetime
    tokens: list[str]
    dead_lettered: bool = False


@dataclass(slots=True)
class PendingTask:
    """A task in flight, as the fold keeps it: the tokens it took wait here until its result ends it."""

    task_id: str
    transition: str
    tokens: dict[str, tuple[Token, ...]]  # by the place they came from
    attempt: int
    executor: str
    data: dict[str, Any]
    since: datetime  # when this attempt was handed out
    spec: dict[str, Any] = field(default_factory=dict)  # the executor spec the task carries
    into: str | None = None  # the output goes under this key of the token data
    dead: bool = False  # its attempt is in the dead-letter queue: nothing happens until someone retries it
    timer: Any = field(default=None, repr=False)  # the engine's deadline timer handle, if any

    def token_ids(self) -> list[str]:
        return [t.id for ts in self.tokens.values() for t in ts]

    def view(self) -> InFlightTask:
        return InFlightTask(
            task_id=self.task_id,
            transition=self.transition,
            attempt=self.attempt,
            executor=self.executor,
            since=self.since,
            tokens=self.token_ids(),
            dead_lettered=self.dead,
        )
