"""An engine that does not drive (``drive=False``: a dashboard, a script) may still fire a manual transition. The
engine driving the instance then goes on with it, also when it is the only driving engine and so does not follow
the stream (found in the sixth session's list: the instance stayed 'running' with nobody driving it)."""

from __future__ import annotations

import asyncio

from circuit_breaker import Engine, InstanceStatus, Workflow
from circuit_breaker.nats import JetStreamStore
from tests.conftest import drop_streams


def observed_workflow() -> Workflow:
    wf = Workflow("observed")
    a, b, c = wf.states("a", "b", "c")
    wf.flow(a >> b, "go", trigger="manual")
    wf.flow(b >> c, "next")  # automatic: whoever drives the instance fires it
    return wf


async def test_a_lone_driving_engine_goes_on_after_an_observer_fires(nats_url: str) -> None:
    await drop_streams(nats_url)
    async with Engine(store=JetStreamStore(servers=[nats_url]), workflows=[observed_workflow()]) as driver:
        started = await driver.start("observed", {})
        waiting = await driver.wait(started.id, timeout=5)
        assert waiting.status is InstanceStatus.WAITING
        observer = Engine(store=JetStreamStore(servers=[nats_url]), workflows=[observed_workflow()], drive=False)
        async with observer:
            fired = await observer.fire(started.id, "go", actor="dashboard")
        assert [t.place for t in fired.tokens] == ["b"]  # the observer fired; it does not go on by itself
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        done = await driver.get(started.id)
        while done.status is not InstanceStatus.COMPLETED and loop.time() < deadline:
            await asyncio.sleep(0.05)  # (the driver hears of the observer's write a moment later)
            done = await driver.get(started.id)
        assert done.status is InstanceStatus.COMPLETED and [t.place for t in done.tokens] == ["c"]
        assert [e.actor for e in done.history if e.transition == "go"] == ["dashboard"]
    async with Engine(store=JetStreamStore(servers=[nats_url]), drive=False, workflows=[observed_workflow()]) as reader:
        stored = await reader.get(started.id)
    assert stored.status is InstanceStatus.COMPLETED and stored.version == done.version
    await drop_streams(nats_url)


async def test_a_store_used_on_its_own_says_nothing_on_the_poke_subject(nats_url: str) -> None:
    """Only an engine announced as an observer pokes: a store used directly (a tool, a benchmark) does not."""
    import nats

    from circuit_breaker.events import EventType, TokenInjected
    from circuit_breaker.nats._subjects import POKE_SUBJECT
    from circuit_breaker.token import Token

    await drop_streams(nats_url)
    nc = await nats.connect(nats_url)
    heard: list[bytes] = []

    async def listen(msg: nats.aio.msg.Msg) -> None:
        heard.append(msg.data)

    sub = await nc.subscribe(POKE_SUBJECT, cb=listen)
    store = JetStreamStore(servers=[nats_url])
    await store.open()
    try:
        token = Token(place="a", instance_id="i1")
        event = TokenInjected(workflow="observed", instance_id="i1", seq=1, token=token, type=EventType.TOKEN_INJECTED)
        await store.append(event, 0)
        await nc.flush()
        await asyncio.sleep(0.2)
        assert heard == []
    finally:
        await store.close()
        await sub.unsubscribe()
        await nc.close()
        await drop_streams(nats_url)
