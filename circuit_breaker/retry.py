"""Retry policy shared by transitions and executors: exponential backoff with jitter."""

from __future__ import annotations

import random

from pydantic import BaseModel, ConfigDict, Field, model_validator


class RetryPolicy(BaseModel):
    """``max_attempts`` counts the first try: 3 means one try and two retries."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_attempts: int = Field(default=3, ge=1)
    initial_delay: float = Field(default=0.1, ge=0)
    max_delay: float = Field(default=30.0, ge=0)
    backoff: float = Field(default=2.0, ge=1)
    jitter: float = Field(default=0.1, ge=0, le=1, description="fraction of the delay added at random")

    @model_validator(mode="after")
    def _delays_ordered(self) -> RetryPolicy:
        if self.max_delay < self.initial_delay:
            raise ValueError(f"max_delay {self.max_delay} is less than initial_delay {self.initial_delay}")
        return self

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        base = min(self.max_delay, self.initial_delay * self.backoff ** (attempt - 1))
        return base + base * self.jitter * random.random()


NO_RETRY = RetryPolicy(max_attempts=1, initial_delay=0, max_delay=0)
