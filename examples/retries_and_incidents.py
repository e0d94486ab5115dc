"""Retries and incidents: a flaky action recovers by itself; a broken one becomes an incident a person retries.

``fetch`` fails twice and succeeds on its third attempt, within its ``RetryPolicy(max_attempts=3)``.
``store`` keeps failing while the database is down: when its attempts run out the instance is ``failed``
with an open incident and the token stays where it was. Once the database is back, ``engine.retry(...)``
resolves the incident and the instance runs on to the end.

    python examples/retries_and_incidents.py
"""

from __future__ import annotations

import asyncio
from typing import Any

from circuit_breaker import Engine, EventType, InstanceStatus, RetryPolicy, Token, Workflow
from circuit_breaker.events import TransitionFailed


class Upstream:
    """Stand-ins for services that fail: a flaky API and a database that is down until someone fixes it."""

    def __init__(self) -> None:
        self.fetch_calls = 0
        self.database_up = False


upstream = Upstream()

wf = Workflow("retries")
requested, fetched, stored = wf.states("requested", "fetched", "stored")


@wf.flow(requested >> fetched, "fetch", retry=RetryPolicy(max_attempts=3, initial_delay=0.01))
def fetch(token: Token) -> dict[str, Any]:
    upstream.fetch_calls += 1
    if upstream.fetch_calls < 3:
        raise ConnectionError(f"upstream timed out (call {upstream.fetch_calls})")
    return {"payload": {"id": token.data["order"], "total": 42}}


@wf.flow(fetched >> stored, "store", retry=RetryPolicy(max_attempts=2, initial_delay=0.01))
async def store(token: Token) -> dict[str, Any]:
    if not upstream.database_up:
        raise ConnectionError("database refused the connection")
    return {"stored": True}


async def main() -> None:
    async with Engine() as engine:
        inst = await engine.start(wf, {"order": "A-17"})
        inst = await engine.wait(inst.id, timeout=5)
        print(f"status: {inst.status}, token in {inst.places}")

        async for event in engine.events(instance=inst.id, types=[EventType.TRANSITION_FAILED]):
            assert isinstance(event, TransitionFailed)
            outcome = "will retry" if event.will_retry else f"incident {event.incident[:8]}" if event.incident else ""
            print(f"  {event.transition} attempt {event.attempt} failed: {event.error.message} ({outcome})")

        (incident,) = inst.open_incidents
        print(f"open incident on {incident.transition!r} after {incident.attempts} attempts: {incident.error.message}")
        if inst.status is not InstanceStatus.FAILED or inst.places != ["fetched"]:
            raise SystemExit("expected a failed instance with its token still in 'fetched'")

        upstream.database_up = True  # someone fixed the database
        await engine.retry(inst.id, actor="ops@example.com")
        inst = await engine.wait(inst.id, timeout=5)
        print(f"after retry: {inst.status}, token in {inst.places}, data {inst.data}")
        print(f"open incidents: {len(inst.open_incidents)}, fetch was called {upstream.fetch_calls} times")
        if inst.status is not InstanceStatus.COMPLETED:
            raise SystemExit(f"expected completion after the retry, got {inst.status}")


if __name__ == "__main__":
    asyncio.run(main())
