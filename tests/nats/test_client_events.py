"""Reading transition events with ``Client.events``: replayed and live, filtered, durable, from a position."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import jsonschema
import nats
import pytest

from circuit_breaker import EventType
from circuit_breaker.errors import SubscriptionError
from circuit_breaker.events import Event, TransitionFired
from circuit_breaker.nats import EVENTS_STREAM, Client, event_schema

from .inject_support import orders_workflow, review_workflow, serving

GOOD = {"item": "lamp", "qty": 1}
ORDER_EVENTS = ["token_injected", "transition_fired", "instance_completed"]  # new -> packed, done


async def collect(stream: Any, count: int, timeout: float = 10.0) -> list[Event]:
    """The next ``count`` events of a live stream."""

    async def take() -> list[Event]:
        out: list[Event] = []
        async for event in stream:
            out.append(event)
            if len(out) == count:
                break
        return out

    return await asyncio.wait_for(take(), timeout)


async def last_seq(url: str) -> int:
    nc = await nats.connect(url)
    try:
        return int((await nc.jetstream().stream_info(EVENTS_STREAM)).state.last_seq)
    finally:
        await nc.close()


async def run_orders(client: Client, engine: Any, n: int, prefix: str = "o") -> list[str]:
    ids = [await client.inject("orders", GOOD, dedupe_id=f"{prefix}-{i}") for i in range(n)]
    for iid in ids:
        await engine.wait(iid, timeout=5)
    return ids


async def test_the_contract_as_written(fresh_nats: str) -> None:
    from workflows.data_pipeline import workflow as pipeline

    url = fresh_nats
    async with serving(url, pipeline) as (engine, _):
        async with Client(servers=[url]) as client:
            instance_id = await client.inject("data_pipeline", {"csv": "id,city\n1,Oslo\n"}, dedupe_id="req-1")
            await engine.wait(instance_id, timeout=10)
            seen = []
            async for event in client.events(workflow="data_pipeline", since="start"):
                seen.append((event.type, event.instance_id, getattr(event, "transition", None)))
                if event.type is EventType.INSTANCE_COMPLETED or event.type is EventType.INSTANCE_STATUS_CHANGED:
                    break
    assert seen[0] == (EventType.TOKEN_INJECTED, instance_id, None)
    assert (EventType.TRANSITION_FIRED, instance_id, "process") in seen


async def test_replay_from_the_start_gives_every_event_in_order_and_matches_the_schema(fresh_nats: str) -> None:
    async with serving(fresh_nats, orders_workflow()) as (engine, _), Client(servers=[fresh_nats]) as client:
        ids = await run_orders(client, engine, 3)
        events = [e async for e in client.events(workflow="orders", follow=False)]
    for iid in ids:
        mine = [e for e in events if e.instance_id == iid]
        assert [e.type.value for e in mine] == ORDER_EVENTS
        assert [e.seq for e in mine] == [1, 2, 3]
    assert len(events) == 9
    schema = event_schema()
    for event in events:
        jsonschema.validate(event.model_dump(mode="json"), schema)
        # Without its type an event is none of the kinds (found in a walk-through: no variant required it).
        untyped = {k: v for k, v in event.model_dump(mode="json").items() if k != "type"}
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(untyped, schema)


async def test_live_events_arrive_as_they_happen(fresh_nats: str) -> None:
    async with serving(fresh_nats, orders_workflow()) as (_, _svc), Client(servers=[fresh_nats]) as client:
        async with client.events(workflow="orders", since="new") as events:
            iid = await client.inject("orders", GOOD)
            got = await collect(events, 3)
    assert [(e.instance_id, e.type.value) for e in got] == [(iid, t) for t in ORDER_EVENTS]
    fired = got[1]
    assert isinstance(fired, TransitionFired) and fired.transition == "pack"


async def test_filters_by_workflow_instance_and_types(fresh_nats: str) -> None:
    async with (
        serving(fresh_nats, orders_workflow(), review_workflow()) as (engine, _),
        Client(servers=[fresh_nats]) as client,
    ):
        orders = await run_orders(client, engine, 2)
        review = await client.inject("reviews", {"doc": 1})
        await engine.wait(review, timeout=5)
        await engine.fire(review, "approve", actor="ann")
        await engine.wait(review, timeout=5)

        async def read(**filters: Any) -> list[Event]:
            return [e async for e in client.events(follow=False, **filters)]

        assert {e.workflow for e in await read(workflow="reviews")} == {"reviews"}
        assert {e.instance_id for e in await read(instance=orders[1])} == {orders[1]}
        fired = await read(types=[EventType.TRANSITION_FIRED])
        assert sorted((e.workflow, e.transition) for e in fired if isinstance(e, TransitionFired)) == [
            ("orders", "pack"),
            ("orders", "pack"),
            ("reviews", "approve"),
            ("reviews", "submit"),
        ]
        two = await read(workflow="reviews", types=["token_injected", "transition_fired"])
        assert [e.type.value for e in two] == ["token_injected", "transition_fired", "transition_fired"]
        one = await read(workflow="orders", instance=orders[0], types=["instance_completed"])
        assert [(e.instance_id, e.type.value) for e in one] == [(orders[0], "instance_completed")]
        assert await read(workflow="nope") == []
        approvals = await read(transition="approve")
        assert [(e.instance_id, e.type.value, e.actor) for e in approvals] == [(review, "transition_fired", "ann")]


async def test_a_late_subscriber_replays_then_follows(fresh_nats: str) -> None:
    async with serving(fresh_nats, orders_workflow()) as (engine, _), Client(servers=[fresh_nats]) as client:
        early = await run_orders(client, engine, 2, "early")
        async with client.events(workflow="orders", types=["token_injected"]) as events:
            replayed = await collect(events, 2)
            late = await client.inject("orders", GOOD)
            live = await collect(events, 1)
    assert [e.instance_id for e in replayed] == early
    assert [e.instance_id for e in live] == [late]


async def test_a_durable_subscription_resumes_with_what_it_missed_and_nothing_twice(fresh_nats: str) -> None:
    async with serving(fresh_nats, orders_workflow()) as (engine, _), Client(servers=[fresh_nats]) as client:
        await run_orders(client, engine, 2, "a")  # 6 events
        async with client.events(workflow="orders", durable="billing") as events:
            first = await collect(events, 4)  # stops in the middle of the second instance
        await run_orders(client, engine, 2, "b")  # 6 more while the service is away
        async with client.events(workflow="orders", durable="billing") as events:
            second = await collect(events, 8)
            with pytest.raises(TimeoutError):
                await collect(events, 1, timeout=0.5)  # nothing more, nothing repeated
        everything = [e async for e in client.events(workflow="orders", follow=False)]
        key = [(e.instance_id, e.seq) for e in everything]
        assert [(e.instance_id, e.seq) for e in first + second] == key
        # A subscription that breaks out of a plain loop (no `async with`) also records where it stopped.
        async for _ in client.events(workflow="orders", durable="audit"):
            break
        await asyncio.sleep(0.2)  # the abandoned iterator is finalised by the event loop
        async with client.events(workflow="orders", durable="audit") as events:
            rest = await collect(events, 11)
        assert [(e.instance_id, e.seq) for e in rest] == key[1:]
        assert await client.delete_subscription("audit") is True
        assert await client.delete_subscription("audit") is False


async def test_a_durable_name_taken_with_other_filters_is_refused(fresh_nats: str) -> None:
    async with serving(fresh_nats, orders_workflow()) as (engine, _), Client(servers=[fresh_nats]) as client:
        await run_orders(client, engine, 1)
        async with client.events(workflow="orders", durable="svc") as events:
            await collect(events, 1)
        with pytest.raises(SubscriptionError, match="svc"):
            async with client.events(workflow="reviews", durable="svc") as events:
                pass


async def test_since_a_stream_sequence_or_a_time(fresh_nats: str) -> None:
    async with serving(fresh_nats, orders_workflow()) as (engine, _), Client(servers=[fresh_nats]) as client:
        await run_orders(client, engine, 1, "before")
        boundary = await last_seq(fresh_nats)
        await asyncio.sleep(0.05)
        moment = datetime.now(UTC)
        await asyncio.sleep(0.05)
        after = await run_orders(client, engine, 1, "after")
        by_seq = [e async for e in client.events(since=boundary + 1, follow=False)]
        by_time = [e async for e in client.events(since=moment, follow=False)]
        from_seq_two = [e async for e in client.events(since=2, follow=False)]
    assert {e.instance_id for e in by_seq} == set(after) and len(by_seq) == 3
    assert [(e.instance_id, e.seq) for e in by_time] == [(e.instance_id, e.seq) for e in by_seq]
    assert len(from_seq_two) == 5


async def test_a_subscriber_may_start_before_any_engine(fresh_nats: str) -> None:
    async with Client(servers=[fresh_nats]) as client:
        assert [e async for e in client.events(follow=False)] == []  # no stream yet: nothing, at once
        stream = client.events(workflow="orders")
        reader = asyncio.ensure_future(collect(stream, 3, timeout=20))
        await asyncio.sleep(0.3)
        async with serving(fresh_nats, orders_workflow()) as (engine, _):
            iid = await client.inject("orders", GOOD)
            got = await reader
        await stream.aclose()
    assert [(e.instance_id, e.type.value) for e in got] == [(iid, t) for t in ORDER_EVENTS]


async def test_bad_arguments_are_refused_before_subscribing(fresh_nats: str) -> None:
    async with Client(servers=[fresh_nats]) as client:
        with pytest.raises(ValueError, match="unknown event type 'fired'"):
            client.events(types=["fired"])
        with pytest.raises(ValueError, match="workflow name"):
            client.events(workflow="a.b")
        with pytest.raises(ValueError, match="instance name"):
            client.events(instance="*")
        with pytest.raises(ValueError, match="stream sequences start at 1"):
            client.events(since=0)
        with pytest.raises(ValueError, match="timezone"):
            client.events(since=datetime(2024, 1, 1))
        with pytest.raises(ValueError, match="since must be"):
            client.events(since="yesterday")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="durable"):
            client.events(durable="a b")


async def test_a_live_subscription_survives_a_server_restart_without_gaps_or_repeats(
    tmp_path: Any, caplog: Any
) -> None:
    from circuit_breaker.testing.nats import nats_server

    caplog.set_level(logging.INFO, logger="circuit_breaker.nats.events")

    async with nats_server(tmp_path) as server:
        async with serving(server.url, orders_workflow()) as (engine, _), Client(servers=[server.url]) as client:
            async with (
                client.events(workflow="orders") as events,
                client.events(workflow="orders", durable="svc") as durable,
            ):
                first = await client.inject("orders", GOOD)
                assert len(await collect(events, 3)) == len(await collect(durable, 3)) == 3
                await server.stop()
                await server.start()
                second = await _inject_when_back(client)
                await engine.wait(second, timeout=10)
                after = await collect(events, 3, timeout=30)
                after_durable = await collect(durable, 3, timeout=30)
    assert [(e.instance_id, e.seq) for e in after] == [(second, 1), (second, 2), (second, 3)]
    assert [(e.instance_id, e.seq) for e in after_durable] == [(second, 1), (second, 2), (second, 3)]
    assert first != second
    said = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "circuit_breaker.nats.events"]
    assert not [m for level, m in said if level >= logging.WARNING], said  # a restart that passes is no warning


async def _inject_when_back(client: Client, timeout: float = 20.0) -> str:
    from circuit_breaker.errors import InjectError

    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await client.inject("orders", GOOD, dedupe_id="after-restart")
        except InjectError as err:
            if not err.retryable or asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)
