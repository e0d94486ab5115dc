"""What the inject and events tests share: small workflows and an engine serving inject requests on a real server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import nats
from pydantic import BaseModel, Field

from circuit_breaker import Engine, Workflow
from circuit_breaker.nats import InjectService, JetStreamStore


class Order(BaseModel):
    item: str
    qty: int = Field(gt=0)


def orders_workflow() -> Workflow:
    """``new --pack--> packed``: runs to completion by itself; data must fit ``Order``."""
    wf = Workflow("orders", token_model=Order)
    new, packed = wf.states("new", "packed")

    @wf.flow(new >> packed, "pack")
    def pack(token: Any) -> dict[str, Any]:
        return {"packed": True}

    return wf


def review_workflow() -> Workflow:
    """``draft --submit--> review --approve (manual)--> done``: waits for a person after one firing."""
    wf = Workflow("reviews")
    draft, review, done = wf.states("draft", "review", "done")
    wf.flow(draft >> review, "submit")
    wf.flow(review >> done, "approve", trigger="manual")
    return wf


@asynccontextmanager
async def serving(
    url: str, *workflows: Workflow, **service_options: Any
) -> AsyncIterator[tuple[Engine, InjectService]]:
    """An engine on JetStream with ``workflows``, and an InjectService on its own connection."""
    async with AsyncExitStack() as stack:
        engine = await stack.enter_async_context(Engine(store=JetStreamStore(servers=[url]), workflows=workflows))
        nc = await nats.connect(url)
        stack.push_async_callback(nc.close)
        service = await stack.enter_async_context(InjectService(engine, nc, **service_options))
        yield engine, service


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 10.0) -> Any:
    """Poll ``check`` until it returns something truthy; fail with its last result after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"still {result!r} after {timeout}s")
        await asyncio.sleep(0.05)
