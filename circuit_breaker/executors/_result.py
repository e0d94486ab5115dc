"""The record every execution returns: status, output, error, timings, attempts and resource usage."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..events import ErrorInfo

Status = Literal["succeeded", "failed", "timed_out", "cancelled"]


class ExecutionResult(BaseModel):
    """What happened when an executor ran (``await executor.execute_detailed()``)."""

    model_config = ConfigDict(frozen=True)

    executor: str
    status: Status
    output: dict[str, Any] = Field(default_factory=dict)
    error: ErrorInfo | None = None
    started_at: datetime
    finished_at: datetime
    duration: float = Field(description="wall-clock seconds, all attempts and retry delays included")
    attempts: int = Field(default=1, description="tries made; attempts - 1 is the retry count")
    usage: dict[str, float] = Field(
        default_factory=dict,
        description="what was measurable: wall_time, cpu_time, peak_memory_kb, http_requests, tool_calls...",
    )

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"

    @property
    def retries(self) -> int:
        return self.attempts - 1

    def summary(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
