"""A two-step workflow for the durability tests, run by engine processes (tests/nats/run_engine.py).

Each action appends ``<instance> <transition> <pid> <idempotency key>`` to ``$RELAY_LOG`` when it runs, so a test
can count how often actions ran (at least once) against how often their firing was applied (exactly once).
"""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

from circuit_breaker import Token, Workflow
from circuit_breaker.engine import current_firing


def _delay() -> float:
    """``$RELAY_DELAY`` seconds, plus up to ``$RELAY_JITTER`` more at random (so racing engines each win some)."""
    return float(os.environ.get("RELAY_DELAY", "0.01")) + random.uniform(0, float(os.environ.get("RELAY_JITTER", "0")))


workflow = Workflow("relay")
start, middle, end = workflow.states("start", "middle", "end")


def _record(token: Token, transition: str) -> None:
    path = os.environ.get("RELAY_LOG")
    firing = current_firing()
    key = firing.idempotency_key if firing is not None else "-"
    if path:
        with open(path, "a", encoding="utf-8") as log:
            log.write(f"{token.instance_id} {transition} {os.getpid()} {key}\n")


@workflow.flow(start >> middle, "first")
async def first(token: Token) -> dict[str, Any]:
    await asyncio.sleep(_delay())
    _record(token, "first")
    return {"first_by": os.getpid()}


@workflow.flow(middle >> end, "second")
async def second(token: Token) -> dict[str, Any]:
    await asyncio.sleep(_delay())
    _record(token, "second")
    return {"second_by": os.getpid()}
