"""The circuit breaker on its own, driven by a fake clock: no sleeping, no network."""

from __future__ import annotations

import asyncio

import pytest

from circuit_breaker.errors import ExecutorError
from circuit_breaker.executors._breaker import BreakerRegistry, BreakerState, CircuitBreaker, CircuitOpenError


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Target:
    """Counts calls, so tests can prove a refused call never reached it."""

    def __init__(self) -> None:
        self.calls = 0

    async def ok(self) -> str:
        self.calls += 1
        return "ok"

    async def fail(self) -> str:
        self.calls += 1
        raise ConnectionError("down")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def breaker(clock: FakeClock, **kwargs: float) -> CircuitBreaker:
    settings = {"failure_threshold": 3, "reset_timeout": 30.0, **kwargs}
    return CircuitBreaker(clock=clock, name="svc", **settings)  # type: ignore[arg-type]


async def trip(b: CircuitBreaker, target: Target, times: int) -> None:
    for _ in range(times):
        with pytest.raises(ConnectionError):
            await b.call(target.fail)


async def test_closed_breaker_passes_calls_and_their_results(clock: FakeClock) -> None:
    b, target = breaker(clock), Target()
    assert await b.call(target.ok) == "ok"
    async with b:
        await target.ok()
    assert target.calls == 2
    assert b.state is BreakerState.CLOSED and b.state == "closed"


async def test_opens_after_threshold_and_refuses_without_calling(clock: FakeClock) -> None:
    b, target = breaker(clock), Target()
    await trip(b, target, 3)
    assert b.state is BreakerState.OPEN
    clock.advance(10)
    with pytest.raises(CircuitOpenError) as caught:
        await b.call(target.ok)
    assert target.calls == 3  # the refused call never reached the target
    err = caught.value
    assert isinstance(err, ExecutorError)
    assert err.kind == "circuit_open" and err.retryable
    assert err.breaker == "svc" and err.retry_after == pytest.approx(20)
    assert "'svc' is open after 3 consecutive failures" in str(err)
    with pytest.raises(CircuitOpenError):
        async with b:
            pytest.fail("the block must not run while the circuit is open")


async def test_only_consecutive_failures_count(clock: FakeClock) -> None:
    b, target = breaker(clock), Target()
    await trip(b, target, 2)
    await b.call(target.ok)
    await trip(b, target, 2)
    assert b.state is BreakerState.CLOSED and b.failures == 2


async def test_half_open_trial_success_closes(clock: FakeClock) -> None:
    b, target = breaker(clock), Target()
    await trip(b, target, 3)
    clock.advance(30)
    assert b.state is BreakerState.HALF_OPEN
    assert await b.call(target.ok) == "ok"
    assert b.state is BreakerState.CLOSED and b.failures == 0


async def test_half_open_trial_failure_reopens_for_a_full_timeout(clock: FakeClock) -> None:
    b, target = breaker(clock), Target()
    await trip(b, target, 3)
    clock.advance(30)
    await trip(b, target, 1)
    assert b.state is BreakerState.OPEN
    clock.advance(29)
    with pytest.raises(CircuitOpenError):
        await b.call(target.ok)
    clock.advance(1)
    assert await b.call(target.ok) == "ok"
    assert target.calls == 5


@pytest.mark.parametrize("max_calls", [1, 2])
async def test_half_open_lets_only_max_calls_trials_through(clock: FakeClock, max_calls: int) -> None:
    b, target = breaker(clock, half_open_max_calls=max_calls), Target()
    await trip(b, target, 3)
    clock.advance(30)
    release = asyncio.Event()

    async def slow_trial() -> str:
        await release.wait()
        return await target.ok()

    trials = [asyncio.create_task(b.call(slow_trial)) for _ in range(max_calls)]
    await asyncio.sleep(0)
    with pytest.raises(CircuitOpenError, match="trial calls are in progress"):
        await b.call(target.ok)
    release.set()
    assert await asyncio.gather(*trials) == ["ok"] * max_calls
    assert b.state is BreakerState.CLOSED


async def test_a_cancelled_trial_does_not_hold_its_slot(clock: FakeClock) -> None:
    b, target = breaker(clock), Target()
    await trip(b, target, 3)
    clock.advance(30)
    trial = asyncio.create_task(b.call(asyncio.sleep, 10))
    await asyncio.sleep(0)
    trial.cancel()
    with pytest.raises(asyncio.CancelledError):
        await trial
    assert b.state is BreakerState.HALF_OPEN
    assert await b.call(target.ok) == "ok"
    assert b.state is BreakerState.CLOSED


async def test_caller_decides_what_counts_as_failure(clock: FakeClock) -> None:
    """An HTTP 503 raises nothing but is a failure; a 404 raised afterwards says the host is fine."""
    b = breaker(clock)
    for _ in range(3):
        async with b:
            b.record_failure()  # e.g. a 5xx response
    assert b.state is BreakerState.OPEN

    b2 = breaker(clock)
    for _ in range(5):
        with pytest.raises(LookupError):
            async with b2:
                b2.record_success()  # the host answered
                b2.record_failure()  # the first verdict on a call stands
                raise LookupError("404 is the caller's problem, not the host's")
    assert b2.state is BreakerState.CLOSED and b2.failures == 0


async def test_reports_outside_a_block_apply_to_the_breaker(clock: FakeClock) -> None:
    b = breaker(clock)
    for _ in range(3):
        b.record_failure()
    assert b.state is BreakerState.OPEN
    clock.advance(30)
    b.record_success()
    assert b.state is BreakerState.CLOSED


async def test_concurrent_blocks_report_their_own_outcome(clock: FakeClock) -> None:
    b = breaker(clock)
    both_inside = asyncio.Barrier(2)

    async def answered_then_raised() -> None:
        async with b:
            b.record_success()
            await both_inside.wait()
            raise LookupError("not a host failure")

    async def crashed() -> None:
        async with b:
            await both_inside.wait()
            raise ConnectionError("host failure")

    results = await asyncio.gather(answered_then_raised(), crashed(), return_exceptions=True)
    assert [type(r) for r in results] == [LookupError, ConnectionError]
    assert b.failures == 1  # the explicit success of one task did not swallow the other task's failure


async def test_a_late_success_from_before_opening_does_not_close(clock: FakeClock) -> None:
    b, target = breaker(clock), Target()
    release = asyncio.Event()

    async def slow() -> str:
        await release.wait()
        return "late"

    slow_call = asyncio.create_task(b.call(slow))
    await asyncio.sleep(0)
    await trip(b, target, 3)
    release.set()
    assert await slow_call == "late"
    assert b.state is BreakerState.OPEN


async def test_reset_closes_by_hand(clock: FakeClock) -> None:
    b, target = breaker(clock), Target()
    await trip(b, target, 3)
    b.reset()
    assert b.state is BreakerState.CLOSED
    assert await b.call(target.ok) == "ok"


def test_registry_shares_one_breaker_per_key_with_its_settings(clock: FakeClock) -> None:
    registry = BreakerRegistry(failure_threshold=2, reset_timeout=5, half_open_max_calls=3, clock=clock)
    a = registry.get("http:https://a.example:443")
    assert registry.get("http:https://a.example:443") is a
    b = registry.get("http:https://b.example:443")
    assert b is not a
    assert (a.failure_threshold, a.reset_timeout, a.half_open_max_calls) == (2, 5, 3)
    a.record_failure()
    a.record_failure()
    assert registry.states() == {"http:https://a.example:443": "open", "http:https://b.example:443": "closed"}
    assert len(registry) == 2 and "http:https://a.example:443" in registry
    registry.clear()
    assert registry.get("http:https://a.example:443").state is BreakerState.CLOSED


@pytest.mark.parametrize(
    "settings", [{"failure_threshold": 0}, {"reset_timeout": -1}, {"half_open_max_calls": 0}], ids=str
)
def test_bad_settings_are_refused_up_front(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(settings))):
        CircuitBreaker(**settings)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=next(iter(settings))):
        BreakerRegistry(**settings)  # type: ignore[arg-type]
