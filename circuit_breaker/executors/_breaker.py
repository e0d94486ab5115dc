"""A circuit breaker: stop calling a target that keeps failing, and probe it again after a pause.

::

    breaker = CircuitBreaker(failure_threshold=5, reset_timeout=30)
    async with breaker:                 # raises CircuitOpenError while open, without running the block
        response = await client.get(url)
        if response.status_code >= 500:
            breaker.record_failure()    # the caller decides what a failure is ...
        else:
            breaker.record_success()    # ... and the block's own outcome is then not counted again

States: *closed* (calls pass; ``failure_threshold`` consecutive failures open it), *open* (calls fail fast
with ``CircuitOpenError`` for ``reset_timeout`` seconds), *half_open* (up to ``half_open_max_calls`` trial
calls pass; a successful trial closes it, a failed one opens it again). Pure asyncio: the breaker is used
from one event loop and needs no lock, because nothing in it awaits.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from ..errors import ExecutorError

Clock = Callable[[], float]
_P = ParamSpec("_P")
_T = TypeVar("_T")


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpenError(ExecutorError):
    """A call was refused because its circuit is open. Retryable: the target may recover after ``retry_after``."""

    def __init__(
        self, breaker: str, retry_after: float, *, executor: str | None = None, failures: int = 0, probing: bool = False
    ) -> None:
        why = f" after {failures} consecutive failures" if failures else ""
        wait = "trial calls are in progress" if probing else f"next trial call in {retry_after:.1f}s"
        super().__init__(
            f"circuit {breaker!r} is open{why}; {wait}",
            executor=executor,
            kind="circuit_open",
            retryable=True,
            details={"breaker": breaker, "retry_after": retry_after},
        )
        self.breaker = breaker
        self.retry_after = retry_after


@dataclass(slots=True)
class _Call:
    """One ``async with`` block: which breaker period it belongs to and whether it already reported."""

    breaker: CircuitBreaker
    generation: int
    trial: bool
    recorded: bool = False
    token: contextvars.Token[tuple[_Call, ...]] | None = None


# The calls in progress in the current task, innermost last: lets record_success()/record_failure() find
# the call they report on without the caller passing a handle around, while concurrent tasks stay apart.
_CALLS: contextvars.ContextVar[tuple[_Call, ...]] = contextvars.ContextVar("circuit_breaker_calls", default=())


class CircuitBreaker:
    """Fail fast against a target that keeps failing; see the module docstring for the states.

    Outcomes only count for the period they started in: a slow call that began before the circuit opened
    cannot close it again, and only the trial calls of a half-open period decide whether it closes.
    """

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout: float = 30.0,
        half_open_max_calls: int = 1,
        clock: Clock = time.monotonic,
        *,
        name: str = "breaker",
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be at least 1, got {failure_threshold}")
        if reset_timeout < 0:
            raise ValueError(f"reset_timeout must not be negative, got {reset_timeout}")
        if half_open_max_calls < 1:
            raise ValueError(f"half_open_max_calls must be at least 1, got {half_open_max_calls}")
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.half_open_max_calls = half_open_max_calls
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trials = 0
        # Bumped on every state change, so late outcomes of an earlier period are recognised and ignored.
        self._generation = 0

    # -- observation -------------------------------------------------------------------------------------
    @property
    def state(self) -> BreakerState:
        """The current state; an open circuit reads half_open once ``reset_timeout`` has passed."""
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.reset_timeout:
            self._move(BreakerState.HALF_OPEN)
        return self._state

    @property
    def failures(self) -> int:
        """Consecutive failures counted while closed."""
        return self._failures

    @property
    def retry_after(self) -> float:
        """Seconds until an open circuit lets a trial call through (0 unless open)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.reset_timeout - self._clock())

    # -- the protocol ------------------------------------------------------------------------------------
    async def __aenter__(self) -> CircuitBreaker:
        call = self._admit()
        call.token = _CALLS.set((*_CALLS.get(), call))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        calls = _CALLS.get()
        call = next((c for c in reversed(calls) if c.breaker is self), None)
        if call is None:  # pragma: no cover - only if the context was entered in another task
            return
        if call.token is not None:
            _CALLS.reset(call.token)
        if call.recorded:
            return
        if exc is None:
            self._outcome(call, ok=True)
        elif isinstance(exc, Exception):
            self._outcome(call, ok=False)
        else:
            # Cancelled (or exiting): says nothing about the target, but a trial slot must not leak.
            self._release(call)

    async def call(self, fn: Callable[_P, Awaitable[_T]], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """``await fn(*args, **kwargs)`` through the breaker: an exception counts as a failure."""
        async with self:
            return await fn(*args, **kwargs)

    def record_success(self) -> None:
        """Report a success for the innermost ``async with`` block of this breaker (its first verdict stands),
        or, outside any block, for the current period."""
        self._record(ok=True)

    def record_failure(self) -> None:
        """Report a failure (a 5xx answer, say, that raised nothing): for the current block, or on its own."""
        self._record(ok=False)

    def reset(self) -> None:
        """Close the circuit and forget failures (an operator's override)."""
        self._move(BreakerState.CLOSED)

    # -- internals ---------------------------------------------------------------------------------------
    def _admit(self) -> _Call:
        state = self.state
        if state is BreakerState.OPEN:
            raise CircuitOpenError(self.name, self.retry_after, failures=self._failures)
        trial = state is BreakerState.HALF_OPEN
        if trial:
            if self._trials >= self.half_open_max_calls:
                # Trial slots are taken; wait for their verdict rather than pile onto a sick target.
                raise CircuitOpenError(self.name, 0.0, failures=self._failures, probing=True)
            self._trials += 1
        return _Call(self, self._generation, trial)

    def _record(self, *, ok: bool) -> None:
        call = next((c for c in reversed(_CALLS.get()) if c.breaker is self), None)
        if call is not None:
            if not call.recorded:  # the first verdict on a call stands
                self._outcome(call, ok=ok)
            return
        # Reported outside a block: applies to the current period.
        state = self.state
        if state is BreakerState.CLOSED:
            self._closed_outcome(ok)
        elif state is BreakerState.HALF_OPEN:
            self._move(BreakerState.CLOSED if ok else BreakerState.OPEN)
        # While open there is nothing to learn: no call was let through.

    def _outcome(self, call: _Call, *, ok: bool) -> None:
        call.recorded = True
        if call.generation != self._generation:
            return  # started in an earlier period: stale news
        if self._state is BreakerState.CLOSED:
            self._closed_outcome(ok)
        elif self._state is BreakerState.HALF_OPEN and call.trial:
            self._move(BreakerState.CLOSED if ok else BreakerState.OPEN)

    def _closed_outcome(self, ok: bool) -> None:
        if ok:
            self._failures = 0
            return
        self._failures += 1
        if self._failures >= self.failure_threshold:
            self._move(BreakerState.OPEN)

    def _release(self, call: _Call) -> None:
        call.recorded = True
        if call.trial and call.generation == self._generation and self._trials > 0:
            self._trials -= 1

    def _move(self, state: BreakerState) -> None:
        if state is BreakerState.OPEN:
            self._opened_at = self._clock()
        elif state is BreakerState.CLOSED:
            self._failures = 0
        self._state = state
        self._trials = 0
        self._generation += 1

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self.state.value}, failures={self._failures})"


class BreakerRegistry:
    """Breakers by key (``"http:https://api.example.com:443"``), created on first use with shared settings,
    so every execution against the same target shares one breaker."""

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout: float = 30.0,
        half_open_max_calls: int = 1,
        clock: Clock = time.monotonic,
    ) -> None:
        # Build one breaker now, so bad settings fail here rather than on the first call.
        CircuitBreaker(failure_threshold, reset_timeout, half_open_max_calls, clock)
        self._settings: dict[str, Any] = {
            "failure_threshold": failure_threshold,
            "reset_timeout": reset_timeout,
            "half_open_max_calls": half_open_max_calls,
            "clock": clock,
        }
        self._breakers: dict[str, CircuitBreaker] = {}

    def get(self, key: str) -> CircuitBreaker:
        breaker = self._breakers.get(key)
        if breaker is None:
            breaker = self._breakers[key] = CircuitBreaker(**self._settings, name=key)
        return breaker

    def __contains__(self, key: object) -> bool:
        return key in self._breakers

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._breakers))

    def __len__(self) -> int:
        return len(self._breakers)

    def states(self) -> dict[str, BreakerState]:
        """Every breaker's state, for health pages and metrics."""
        return {key: b.state for key, b in self._breakers.items()}

    def clear(self) -> None:
        """Forget every breaker (all circuits start closed again)."""
        self._breakers.clear()


_default_breakers = BreakerRegistry()


def default_breakers() -> BreakerRegistry:
    """The process-wide registry executors use unless given one (``HttpExecutor.with_breakers``)."""
    return _default_breakers


def set_default_breakers(registry: BreakerRegistry) -> BreakerRegistry:
    """Replace the process-wide registry (other settings, a test's fake clock); returns the previous one."""
    global _default_breakers
    previous, _default_breakers = _default_breakers, registry
    return previous
