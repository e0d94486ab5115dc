"""Helpers for users' tests (and ours): an in-memory engine with workflows registered."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ..dsl import Workflow
from ..engine import Engine, Instance


@asynccontextmanager
async def memory_engine(*workflows: Workflow) -> AsyncIterator[Engine]:
    """``async with memory_engine(wf) as engine:`` an engine on the in-memory store, closed on exit."""
    async with Engine(workflows=workflows) as engine:
        yield engine


async def run_to_rest(engine: Engine, workflow: str | Workflow, data: object = None, timeout: float = 10) -> Instance:
    """Start an instance and wait until it completes, waits on a person, or fails."""
    inst = await engine.start(workflow, data)
    return await engine.wait(inst.id, timeout=timeout)


__all__ = ["memory_engine", "run_to_rest"]
