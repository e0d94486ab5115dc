"""What callers see of an instance: an immutable snapshot taken when they asked."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..events import ErrorInfo
from ..token import History, Token
from ._lifecycle import InstanceStatus
from ._tasks import InFlightTask


class Incident(BaseModel):
    """An action whose retries ran out. The instance is failed until someone retries or cancels it."""

    model_config = ConfigDict(frozen=True)

    id: str
    transition: str
    tokens: list[str]
    error: ErrorInfo
    attempts: int
    time: datetime
    error_place: str | None = None
    resolved: bool = False


class Instance(BaseModel):
    """One run of a workflow, as it was when this snapshot was taken."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    id: str
    workflow: str
    status: InstanceStatus
    tokens: list[Token]
    version: int = Field(description="sequence number of the last event applied")
    created_at: datetime
    updated_at: datetime
    incidents: list[Incident] = Field(default_factory=list)
    history: History = Field(default_factory=History, description="the instance's audit trail, oldest first")
    enabled_manual: list[str] = Field(default_factory=list, description="manual transitions that could fire now")
    tasks: list[InFlightTask] = Field(
        default_factory=list, description="remote actions in flight; the tokens they took are not in ``tokens``"
    )

    def tokens_in(self, place: str) -> list[Token]:
        return [t for t in self.tokens if t.place == place]

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tokens:
            out[t.place or ""] = out.get(t.place or "", 0) + 1
        return out

    @property
    def places(self) -> list[str]:
        return list(dict.fromkeys(t.place or "" for t in self.tokens))

    @property
    def data(self) -> dict[str, Any]:
        """The data of the instance's tokens merged (oldest first); for a single token, its data."""
        if len(self.tokens) == 1:
            return self.tokens[0].data
        merged: dict[str, Any] = {}
        for t in self.tokens:
            merged.update(t.data)
        return merged

    @property
    def stalled(self) -> bool:
        """Waiting, but not on a person: no manual transition can fire and the automatic ones were refused.

        Fix the cause (data, an outside condition) and call ``engine.retry``, or cancel the instance.
        """
        return self.status is InstanceStatus.WAITING and not self.enabled_manual

    @property
    def open_incidents(self) -> list[Incident]:
        return [i for i in self.incidents if not i.resolved]

    def summary(self) -> dict[str, Any]:
        """The JSON form the CLI prints: instance, status, tokens and history."""
        return {
            "instance": self.id,
            "workflow": self.workflow,
            "status": self.status.value,
            "tokens": [{"id": t.id, "place": t.place, "data": t.data} for t in self.tokens],
            "incidents": [i.model_dump(mode="json") for i in self.incidents],
            "enabled_manual": list(self.enabled_manual),
            "tasks": [t.model_dump(mode="json") for t in self.tasks],
            "history": self.history.to_records(),
        }
