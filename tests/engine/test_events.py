"""Events: typed, filterable, JSON round-trip, and folding them rebuilds the instance exactly."""

from __future__ import annotations

import asyncio

from circuit_breaker import Engine, EventType, RetryPolicy, Workflow
from circuit_breaker.engine._run import Run
from circuit_breaker.events import TransitionFired, parse_event


def review_workflow() -> Workflow:
    wf = Workflow("evented", error_place="errors")
    draft, review, done, errors = wf.states("draft", "review", "done", "errors")

    @wf.flow(draft >> review, "submit", retry=RetryPolicy(max_attempts=2, initial_delay=0.001, jitter=0))
    def submit(token):
        if token.data.get("explode"):
            raise ValueError("cannot submit")
        return {"submitted": True}

    wf.flow(review >> done, "approve", trigger="manual")
    wf.flow(errors >> draft, "fix", trigger="manual")
    return wf


async def test_events_filter_by_workflow_instance_type_and_transition(engine: Engine) -> None:
    wf = review_workflow()
    other = Workflow("other")
    x, y = other.states("x", "y")
    other.flow(x >> y, "hop")
    one = await engine.wait((await engine.start(wf, {})).id, timeout=5)
    two = await engine.wait((await engine.start(wf, {})).id, timeout=5)
    await engine.wait((await engine.start(other, {})).id, timeout=5)
    await engine.fire(one.id, "approve", actor="ann")

    everything = [e async for e in engine.events()]
    assert {e.workflow for e in everything} == {"evented", "other"}
    mine = [e async for e in engine.events(instance=one.id)]
    assert {e.instance_id for e in mine} == {one.id}
    assert [e.seq for e in mine] == list(range(1, len(mine) + 1))
    fired = [e async for e in engine.events(workflow="evented", types=[EventType.TRANSITION_FIRED])]
    assert sorted((e.instance_id, e.transition) for e in fired) == sorted(
        [(one.id, "submit"), (two.id, "submit"), (one.id, "approve")]
    )
    approvals = [e async for e in engine.events(transition="approve")]
    assert len(approvals) == 1 and approvals[0].actor == "ann"
    assert isinstance(approvals[0], TransitionFired)
    assert approvals[0].produced[0].place == "done"


async def test_follow_replays_then_streams_live_events_without_gaps_or_duplicates(engine: Engine) -> None:
    wf = review_workflow()
    inst = await engine.wait((await engine.start(wf, {})).id, timeout=5)
    seen: list[int] = []

    async def consume() -> None:
        async for event in engine.events(instance=inst.id, follow=True):
            seen.append(event.seq)
            if event.type is EventType.INSTANCE_COMPLETED:
                return

    task = asyncio.create_task(consume())
    await asyncio.sleep(0)
    await engine.fire(inst.id, "approve")
    await asyncio.wait_for(task, 2)
    assert seen == list(range(1, seen[-1] + 1))


async def test_events_round_trip_through_json(engine: Engine) -> None:
    wf = review_workflow()
    inst = await engine.wait((await engine.start(wf, {"explode": True})).id, timeout=5)
    events = [e async for e in engine.events(instance=inst.id)]
    assert {e.type for e in events} >= {EventType.TOKEN_INJECTED, EventType.TRANSITION_FAILED}
    for event in events:
        text = event.model_dump_json()
        assert parse_event(text).model_dump_json() == text
        assert parse_event(text).type is event.type and parse_event(text).seq == event.seq


async def test_an_events_size_does_not_grow_with_the_age_of_its_token(engine: Engine) -> None:
    wf = Workflow("ageing")
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "there", trigger="manual")
    wf.flow(b >> a, "back", trigger="manual")
    inst = await engine.wait((await engine.start(wf, {"k": "v"})).id, timeout=5)
    for i in range(200):
        await engine.fire(inst.id, "there" if i % 2 == 0 else "back")
    fired = [e async for e in engine.events(instance=inst.id, types=[EventType.TRANSITION_FIRED])]
    assert len((await engine.get(inst.id)).tokens[0].history) == 201  # the live token keeps its whole history...
    first, last = len(fired[0].model_dump_json()), len(fired[-1].model_dump_json())
    assert abs(last - first) < 16  # ...but the event carries only what changed


async def test_folding_the_stored_events_rebuilds_the_instance_exactly(engine: Engine) -> None:
    wf = review_workflow()
    ok = await engine.start(wf, {"n": 1})
    broken = await engine.start(wf, {"explode": True})
    await engine.wait(ok.id, timeout=5)
    await engine.fire(ok.id, "approve", actor="ann")
    await engine.wait(broken.id, timeout=5)
    cw = wf.compile()
    for iid in (ok.id, broken.id):
        live = await engine.get(iid)
        rebuilt = Run(iid, cw)
        async for event in engine.store.replay(instance_id=iid):
            # Through JSON, as a durable store would hand them back.
            rebuilt.apply(parse_event(event.model_dump_json()))
        again = rebuilt.snapshot()
        assert again.status == live.status
        assert again.tokens == live.tokens
        assert again.version == live.version
        assert again.incidents == live.incidents
        assert list(again.history) == list(live.history)


async def test_produced_tokens_travel_without_history_however_an_event_is_serialised() -> None:
    """The stored form, ``model_dump_json``, JSON-mode dumps and a union of events (a service's own models, a
    FastAPI response of ``list[Event]``) all leave the produced tokens' history out, without warnings."""
    import json
    import warnings

    from pydantic import BaseModel, TypeAdapter

    from circuit_breaker.events import Event

    wf = Workflow("histories")
    a, b, c = wf.states("a", "b", "c")
    wf.flow(a >> b, "one")
    wf.flow(b >> c, "two")
    async with Engine() as engine:
        done = await engine.wait((await engine.start(wf, {"n": 1})).id, timeout=5)
        events = [e async for e in engine.events(instance=done.id)]
    fired = [e for e in events if isinstance(e, TransitionFired)]
    assert len(fired) == 2 and len(fired[1].produced[0].history) == 3  # (created, one, two) in memory

    class Envelope(BaseModel):
        event: Event

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        forms = [
            type(fired[1]).__pydantic_serializer__.to_json(fired[1]),
            fired[1].model_dump_json().encode(),
            json.dumps(fired[1].model_dump(mode="json")).encode(),
            TypeAdapter(Event).dump_json(fired[1]),
            json.dumps(json.loads(Envelope(event=fired[1]).model_dump_json())["event"]).encode(),
        ]
    for form in forms:
        produced = json.loads(form)["produced"]
        assert [set(t) for t in produced] == [{"id", "instance_id", "place", "data", "created_at", "updated_at"}]
    # The fold rebuilds the history from the stored form: replay equals the live instance.
    run = Run(done.id, engine._workflow(wf))
    for event in events:
        run.apply(parse_event(type(event).__pydantic_serializer__.to_json(event)))
    assert run.snapshot().tokens == done.tokens
