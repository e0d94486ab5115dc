"""Engine semantics: forks and joins per instance, weights, choice order, manual vs automatic firing."""

from __future__ import annotations

import asyncio

import pytest

from circuit_breaker import Engine, Event, EventType, InstanceStatus, RuleSet, Workflow
from circuit_breaker.errors import (
    EngineClosedError,
    InstanceStateError,
    TransitionNotEnabledError,
    TransitionRejectedError,
    UnknownInstanceError,
    UnknownTransitionError,
    UnknownWorkflowError,
)
from circuit_breaker.nats import JetStreamStore


def fork_join_workflow() -> Workflow:
    wf = Workflow("fork_join")
    start, left, right, left_done, right_done, joined = wf.states(
        "start", "left", "right", "left_done", "right_done", "joined"
    )
    wf.flow(start >> (left, right), "fork")

    @wf.flow(left >> left_done, "work_left")
    async def work_left(token):
        # Instances finish their left branch in the reverse order of their right branch.
        await asyncio.sleep(0.01 * (5 - token.data["n"]))
        return {"left": f"L{token.data['n']}"}

    @wf.flow(right >> right_done, "work_right")
    async def work_right(token):
        await asyncio.sleep(0.01 * token.data["n"])
        return {"right": f"R{token.data['n']}"}

    @wf.flow((left_done, right_done) >> joined, "join")
    def join(token):
        return {"pair": [token.data["left"], token.data["right"]]}

    return wf


async def test_joins_combine_tokens_of_the_same_instance_only(engine: Engine) -> None:
    wf = fork_join_workflow()
    started = [await engine.start(wf, {"n": n}) for n in range(5)]
    finished = [await engine.wait(i.id, timeout=5) for i in started]
    for n, inst in enumerate(finished):
        assert inst.status is InstanceStatus.COMPLETED
        assert [t.place for t in inst.tokens] == ["joined"]
        assert inst.tokens[0].data["pair"] == [f"L{n}", f"R{n}"]
        assert inst.tokens[0].instance_id == inst.id


async def test_parallel_branches_run_concurrently(engine: Engine) -> None:
    wf = Workflow("parallel")
    s, a, b, a2, b2, end = wf.states("s", "a", "b", "a2", "b2", "end")
    wf.flow(s >> (a, b), "fork")
    running = 0
    peak = 0

    async def slow(token):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1
        return None

    wf.flow(a >> a2, "slow_a", action=slow)
    wf.flow(b >> b2, "slow_b", action=slow)
    wf.flow((a2, b2) >> end, "join")
    inst = await engine.start(wf, {})
    done = await engine.wait(inst.id, timeout=5)
    assert done.status is InstanceStatus.COMPLETED
    assert peak == 2


async def test_join_data_merges_in_input_order_later_input_wins(engine: Engine) -> None:
    wf = Workflow("merge_order")
    s, a, b, end = wf.states("s", "a", "b", "end")

    @wf.flow(s >> (a, b), "fork")
    def fork(token):
        return {"k": "from-fork"}

    wf.flow(a >> a, "noop_a", trigger="manual")  # keeps `a` non-final; never fired here

    @wf.flow((b, a) >> end, "join")
    def join(token):
        return None

    inst = await engine.wait((await engine.start(wf, {"x": 1})).id, timeout=5)
    assert inst.tokens_in("end")[0].data == {"x": 1, "k": "from-fork"}


async def test_weights_consume_and_produce_several_tokens(engine: Engine) -> None:
    wf = Workflow("weights")
    s, pool, pair, end = wf.states("s", "pool", "pair", "end")
    wf.flow(s >> pool * 3, "split")
    wf.flow(pool * 2 >> pair, "take_two")
    wf.flow(pool >> end, "drain", trigger="manual")
    wf.flow(pair >> end, "finish", trigger="manual")
    inst = await engine.wait((await engine.start(wf, {})).id, timeout=5)
    # Three tokens were produced; two were consumed together, one is left behind.
    assert inst.counts == {"pool": 1, "pair": 1}
    assert inst.status is InstanceStatus.WAITING
    assert sorted(inst.enabled_manual) == ["drain", "finish"]


async def test_choice_follows_declaration_order_and_falls_through_rejections(engine: Engine) -> None:
    rules = RuleSet()
    rules.add("big", "n >= 100")
    rules.add("medium", "n >= 10")
    wf = Workflow("choice", rules=rules)
    s, big, medium, small = wf.states("s", "big", "medium", "small")
    wf.flow(s >> big, "to_big", rules={"all": ["big"]})
    wf.flow(s >> medium, "to_medium", rules={"all": ["medium"]})
    wf.flow(s >> small, "to_small")
    results = {}
    for n in (500, 50, 5):
        inst = await engine.wait((await engine.start(wf, {"n": n})).id, timeout=5)
        results[n] = inst.tokens[0].place
    assert results == {500: "big", 50: "medium", 5: "small"}
    # Both earlier candidates were tried and rejected for n=5, in order, with their rule messages.
    inst5 = [i for i in await engine.instances("choice") if i.tokens[0].place == "small"][0]
    rejected = [e async for e in engine.events(instance=inst5.id, types=[EventType.TRANSITION_REJECTED])]
    assert [e.transition for e in rejected] == ["to_big", "to_medium"]
    assert "n >= 100" in rejected[0].errors[0]


async def test_action_result_is_judged_by_rules_after_the_action(engine: Engine) -> None:
    rules = RuleSet()
    rules.add("good", "score >= 0.5")
    wf = Workflow("post_rules", rules=rules)
    s, ok, fallback = wf.states("s", "ok", "fallback")

    @wf.flow(s >> ok, "score", rules={"all": ["good"]})
    def score(token):
        return {"score": token.data["raw"] / 10}

    wf.flow(s >> fallback, "fallback")
    high = await engine.wait((await engine.start(wf, {"raw": 9})).id, timeout=5)
    low = await engine.wait((await engine.start(wf, {"raw": 1})).id, timeout=5)
    assert high.tokens[0].place == "ok" and high.tokens[0].data["score"] == 0.9
    # A rejected action's result is discarded: the fallback sees the original data.
    assert low.tokens[0].place == "fallback" and "score" not in low.tokens[0].data


async def test_manual_transitions_wait_for_a_person(engine: Engine) -> None:
    wf = Workflow("manual")
    draft, review, done = wf.states("draft", "review", "done")
    wf.flow(draft >> review, "submit")
    wf.flow(review >> done, "approve", trigger="manual")
    inst = await engine.wait((await engine.start(wf, {"doc": 1})).id, timeout=5)
    assert inst.status is InstanceStatus.WAITING and not inst.stalled
    assert inst.enabled_manual == ["approve"]
    fired = await engine.fire(inst.id, "approve", actor="alice")
    assert fired.status is InstanceStatus.COMPLETED
    assert fired.tokens[0].place == "done"
    entry = [e for e in fired.tokens[0].history if e.transition == "approve"][0]
    assert entry.actor == "alice" and entry.from_places == ("review",) and entry.to_places == ("done",)


async def test_firing_a_manual_transition_that_is_not_enabled_says_why(engine: Engine) -> None:
    wf = Workflow("not_enabled")
    a, b, c = wf.states("a", "b", "c")
    wf.flow(a >> b, "first", trigger="manual", validations={"all": ["title"]})
    wf.flow(b >> c, "second", trigger="manual")
    inst = await engine.wait((await engine.start(wf, {})).id, timeout=5)
    with pytest.raises(TransitionNotEnabledError) as no_token:
        await engine.fire(inst.id, "second")
    assert "'b'" in str(no_token.value) and "has 0" in str(no_token.value)
    with pytest.raises(TransitionNotEnabledError) as invalid:
        await engine.fire(inst.id, "first")
    assert "title is required" in str(invalid.value)
    after = await engine.get(inst.id)
    assert after.tokens == inst.tokens and after.version == inst.version


async def test_firing_an_automatic_transition_by_hand_is_refused(engine: Engine) -> None:
    wf = Workflow("auto_only")
    a, b, c = wf.states("a", "b", "c")
    wf.flow(a >> b, "go", guards={"all": [lambda t: t.data.get("ready", False)]})
    wf.flow(b >> c, "end")
    inst = await engine.wait((await engine.start(wf, {"ready": False})).id, timeout=5)
    with pytest.raises(TransitionNotEnabledError, match="automatic"):
        await engine.fire(inst.id, "go")


async def test_rejected_manual_firing_leaves_everything_in_place(engine: Engine) -> None:
    rules = RuleSet()
    rules.add("has_approver", "approver != null")
    rules.add("urgent", "priority in ['high', 'urgent']")
    wf = Workflow("reject", rules=rules)
    review, done = wf.states("review", "done")

    @wf.flow(review >> done, "approve", trigger="manual", rules={"all": ["has_approver", "urgent"]})
    def approve(token):
        return {"approved": True}

    inst = await engine.wait((await engine.start(wf, {"priority": "low", "approver": None})).id, timeout=5)
    with pytest.raises(TransitionRejectedError) as err:
        await engine.fire(inst.id, "approve", actor="bob")
    # Every failing rule is reported, not just the first.
    assert len(err.value.errors) == 2
    assert any("has_approver" in e for e in err.value.errors) and any("urgent" in e for e in err.value.errors)
    after = await engine.get(inst.id)
    assert after.tokens == inst.tokens  # same ids, place and data: nothing moved
    assert after.status is InstanceStatus.WAITING
    kinds = [e.type async for e in engine.events(instance=inst.id)]
    assert kinds[-1] is EventType.TRANSITION_REJECTED


async def test_unknown_names_get_specific_errors(engine: Engine) -> None:
    wf = Workflow("names")
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "go", trigger="manual")
    engine.register(wf)
    with pytest.raises(UnknownWorkflowError, match="nope"):
        await engine.start("nope", {})
    inst = await engine.start("names", {})
    with pytest.raises(UnknownTransitionError, match="'fly'.*go"):
        await engine.fire(inst.id, "fly")
    with pytest.raises(UnknownInstanceError):
        await engine.get("missing")


async def test_completed_instances_cannot_be_resumed_or_fired(engine: Engine) -> None:
    wf = Workflow("lifecycle")
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "go")
    inst = await engine.wait((await engine.start(wf, {})).id, timeout=5)
    assert inst.status is InstanceStatus.COMPLETED
    with pytest.raises(InstanceStateError, match="completed"):
        await engine.resume(inst.id)
    with pytest.raises(InstanceStateError):
        await engine.pause(inst.id)


async def test_a_paused_or_cancelled_instance_offers_no_manual_transition(engine: Engine) -> None:
    """Found in a walk-through: enabled_manual still listed 'approve', which fire() then refused."""
    wf = Workflow("held")
    draft, review, done = wf.states("draft", "review", "done")
    wf.flow(draft >> review, "submit")
    wf.flow(review >> done, "approve", trigger="manual")
    inst = await engine.wait((await engine.start(wf, {})).id, timeout=5)
    assert inst.enabled_manual == ["approve"]
    paused = await engine.pause(inst.id)
    assert paused.status is InstanceStatus.PAUSED and paused.enabled_manual == []
    with pytest.raises(InstanceStateError):
        await engine.fire(inst.id, "approve")
    resumed = await engine.wait((await engine.resume(inst.id)).id, timeout=5)
    assert resumed.status is InstanceStatus.WAITING and resumed.enabled_manual == ["approve"]
    cancelled = await engine.cancel(inst.id)
    assert cancelled.status is InstanceStatus.CANCELLED and cancelled.enabled_manual == []


async def test_a_firing_into_a_final_place_right_after_resume_completes_the_instance(engine: Engine) -> None:
    """Found in a walk-through: fire() right after resume() returned 'running' with the token in a final place
    (the scheduler had not settled the resumed instance yet); it completed a moment later."""
    wf = Workflow("resumed_signoff")
    review, done = wf.states("review", "done")
    wf.flow(review >> done, "approve", trigger="manual")
    inst = await engine.wait((await engine.start(wf, {})).id, timeout=5)
    await engine.pause(inst.id)
    await engine.resume(inst.id)
    fired = await engine.fire(inst.id, "approve")
    assert fired.status is InstanceStatus.COMPLETED and [t.place for t in fired.tokens] == ["done"]


async def test_pause_stops_automatic_firing_until_resumed(engine: Engine) -> None:
    wf = Workflow("pausable")
    a, b, c = wf.states("a", "b", "c")
    gate = asyncio.Event()

    @wf.flow(a >> b, "first")
    async def first(token):
        await gate.wait()
        return {"first": True}

    wf.flow(b >> c, "second")
    inst = await engine.start(wf, {})
    await asyncio.sleep(0.01)
    paused = await engine.pause(inst.id)
    assert paused.status is InstanceStatus.PAUSED
    gate.set()
    settled = await engine.wait(inst.id, timeout=5)
    # The running action finished and was recorded, but nothing new started while paused.
    assert settled.status is InstanceStatus.PAUSED
    assert [t.place for t in settled.tokens] == ["b"]
    resumed = await engine.resume(inst.id)
    assert resumed.status is InstanceStatus.RUNNING
    done = await engine.wait(inst.id, timeout=5)
    assert done.status is InstanceStatus.COMPLETED and done.tokens[0].data == {"first": True}


async def test_cancel_stops_running_actions_and_keeps_tokens(engine: Engine) -> None:
    wf = Workflow("cancellable")
    a, b = wf.states("a", "b")

    @wf.flow(a >> b, "forever")
    async def forever(token):
        await asyncio.sleep(60)

    inst = await engine.start(wf, {"x": 1})
    await asyncio.sleep(0.01)
    cancelled = await engine.cancel(inst.id, reason="no longer needed")
    assert cancelled.status is InstanceStatus.CANCELLED
    done = await engine.wait(inst.id, timeout=5)
    assert [t.place for t in done.tokens] == ["a"]


async def test_close_ends_live_subscriptions() -> None:
    wf = Workflow("follow")
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "go", trigger="manual")
    engine = Engine()
    seen: list[EventType] = []

    async def consume() -> None:
        async for event in engine.events(workflow="follow", follow=True):
            seen.append(event.type)

    inst = await engine.start(wf, {})
    await engine.wait(inst.id, timeout=5)
    task = asyncio.create_task(consume())
    await asyncio.sleep(0.01)
    await engine.fire(inst.id, "go")
    await asyncio.sleep(0.01)
    await engine.close()
    await asyncio.wait_for(task, 2)
    assert seen == [
        EventType.TOKEN_INJECTED,
        EventType.INSTANCE_STATUS_CHANGED,
        EventType.TRANSITION_FIRED,
        EventType.INSTANCE_COMPLETED,
    ]


async def test_an_endless_automatic_cycle_does_not_starve_the_event_loop(engine: Engine) -> None:
    wf = Workflow("spin")
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "there")
    wf.flow(b >> a, "back")
    inst = await engine.start(wf, {})
    # If the scheduler never yielded, this timeout could not fire and the test would hang.
    with pytest.raises(Exception, match="still running"):
        await engine.wait(inst.id, timeout=0.3)  # long enough for more than 64 firings on a busy machine
    paused = await engine.pause(inst.id)
    assert paused.status is InstanceStatus.PAUSED
    assert paused.version > 64


async def test_a_manual_firing_can_carry_a_reviewers_data(engine: Engine) -> None:
    rules = RuleSet()
    rules.add("approved", "verdict == 'ok'")
    wf = Workflow("with_data", rules=rules)
    review, done = wf.states("review", "done")

    @wf.flow(review >> done, "decide", trigger="manual", validations={"all": ["verdict"]}, rules={"all": ["approved"]})
    def decide(token):
        return {"closed_by": token.data["reviewer"]}

    inst = await engine.wait((await engine.start(wf, {"doc": "d1"})).id, timeout=5)
    with pytest.raises(TransitionNotEnabledError, match="verdict is required"):
        await engine.fire(inst.id, "decide")
    with pytest.raises(TransitionRejectedError, match="approved"):
        await engine.fire(inst.id, "decide", data={"verdict": "no", "reviewer": "bo"})
    assert (await engine.get(inst.id)).tokens == inst.tokens
    done = await engine.fire(inst.id, "decide", actor="bo", data={"verdict": "ok", "reviewer": "bo"})
    assert done.tokens[0].data == {"doc": "d1", "verdict": "ok", "reviewer": "bo", "closed_by": "bo"}


async def test_retry_reconsiders_refused_automatic_transitions_of_a_waiting_instance(engine: Engine) -> None:
    ready = {"value": False}
    wf = Workflow("external_gate")
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "go", guards={"all": [lambda t: ready["value"]]})
    inst = await engine.wait((await engine.start(wf, {})).id, timeout=5)
    assert inst.status is InstanceStatus.WAITING and inst.enabled_manual == []
    assert inst.stalled
    ready["value"] = True
    await engine.retry(inst.id)
    done = await engine.wait(inst.id, timeout=5)
    assert done.status is InstanceStatus.COMPLETED


async def test_diagrams_show_the_token_counts_of_an_instance(engine: Engine) -> None:
    wf = Workflow("drawn")
    s, pool, end = wf.states("s", "pool", "end")
    wf.flow(s >> pool * 2, "split")
    wf.flow(pool >> end, "finish", trigger="manual")
    inst = await engine.wait((await engine.start(wf, {})).id, timeout=5)
    assert 'p_pool("pool (2)")' in wf.to_mermaid(inst)
    assert '"p_pool" [label="pool (2)"' in wf.to_dot(inst)
    assert "pool (2)" not in wf.to_mermaid()


def graceful_workflow(calls: dict[str, int], started: asyncio.Event) -> Workflow:
    """``work`` takes ``token.data["seconds"]`` on its first run and no time on a later one; ``then`` follows it."""
    wf = Workflow("graceful_stop")
    a, b, c = wf.states("a", "b", "c")

    @wf.flow(a >> b, "work")
    async def work(token):
        key = f"work{token.data['n']}"
        calls[key] = calls.get(key, 0) + 1
        started.set()
        if calls[key] == 1:
            await asyncio.sleep(token.data["seconds"])
        return {"worked": True}

    @wf.flow(b >> c, "then")
    def then(token):
        calls["then"] = calls.get("then", 0) + 1
        return {}

    return wf


@pytest.mark.parametrize("kind", ["memory", "jetstream"])
async def test_closing_with_a_grace_period_lets_running_actions_finish_and_starts_nothing_new(
    kind: str, nats_url: str
) -> None:
    """What a stopping ``serve`` does: the quick action finishes and is stored, the one that outlasts the grace
    period is cancelled, nothing new starts; an engine opening the store later runs on from there."""
    from circuit_breaker.nats import JetStreamStore
    from circuit_breaker.store import MemoryStore
    from tests.conftest import drop_streams

    memory = MemoryStore()

    async def store() -> MemoryStore | JetStreamStore:
        if kind == "memory":
            return memory
        return JetStreamStore(servers=[nats_url])

    if kind == "jetstream":
        await drop_streams(nats_url)
    calls: dict[str, int] = {}
    started = asyncio.Event()
    wf = graceful_workflow(calls, started)
    engine = Engine(store=await store(), workflows=[wf])
    await engine.open()
    quick = await engine.start(wf, {"n": 1, "seconds": 0.3})
    slow = await engine.start(wf, {"n": 2, "seconds": 60})
    await asyncio.wait_for(started.wait(), 5)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await engine.close(grace=1.5)
    assert loop.time() - began < 5  # the slow one did not hold the stop up
    assert calls == {"work1": 1, "work2": 1}  # 'then' never started while stopping

    async with Engine(store=await store(), workflows=[wf]) as again:
        first = await again.wait(quick.id, timeout=10)
        second = await again.wait(slow.id, timeout=10)
    assert first.status is InstanceStatus.COMPLETED and second.status is InstanceStatus.COMPLETED
    # The quick one's work was stored before the stop (it did not run again); the slow one ran again.
    assert calls == {"work1": 1, "work2": 2, "then": 2}
    if kind == "jetstream":
        await drop_streams(nats_url)


async def test_a_scheduler_pass_under_way_when_the_stop_begins_starts_nothing_more() -> None:
    """Found in review: a pass that was awaiting a store append (here a rejection's) when close(grace) began went
    on to the next candidate and started its action during the drain."""
    from circuit_breaker.store import MemoryStore

    class NetworkedStore(MemoryStore):
        async def append(self, event: Event, expected_seq: int) -> None:
            await asyncio.sleep(0.1)  # an append yields, as JetStream's does (a round trip)
            await super().append(event, expected_seq)

    started: list[int] = []
    wf = Workflow("drain_step")
    a, b, c = wf.states("a", "b", "c")
    wf.flow(a >> c, "refused", validations={"all": ["missing_field"]})  # judged first: rejected (an append)

    @wf.flow(a >> b, "work")
    async def work(token):
        started.append(token.data["n"])
        return {}

    engine = Engine(store=NetworkedStore(), workflows=[wf])
    await engine.open()
    start = asyncio.create_task(engine.start(wf, {"n": 1}))
    await asyncio.sleep(0.15)  # token_injected is stored (0.1 s); the pass awaits the rejection's append
    await engine.close(grace=2.0)
    await asyncio.gather(start, return_exceptions=True)
    assert started == []


async def test_an_instance_whose_last_action_finishes_while_stopping_is_stored_completed() -> None:
    """Found in a walk-through: it stayed 'running' in its final place until an engine loaded it again."""
    from circuit_breaker.store import MemoryStore

    store = MemoryStore()
    wf = Workflow("last_step")
    a, b = wf.states("a", "b")
    began = asyncio.Event()

    @wf.flow(a >> b, "work")
    async def work(token):
        began.set()
        await asyncio.sleep(0.3)
        return {"worked": True}

    engine = Engine(store=store, workflows=[wf])
    await engine.open()
    inst = await engine.start(wf, {})
    await asyncio.wait_for(began.wait(), 5)
    await engine.close(grace=5)
    async with Engine(store=store, workflows=[wf], drive=False) as reader:
        stored = await reader.get(inst.id)
    assert stored.status is InstanceStatus.COMPLETED and stored.tokens[0].data["worked"]


async def test_after_stop_starting_a_manual_firing_in_progress_ends_but_starts_no_follow_up() -> None:
    """serve's first step of a stop: what runs goes on, nothing new starts (found in review: a follow-up action
    started while serve waited for a manual firing)."""
    ran: list[str] = []
    began = asyncio.Event()
    wf = Workflow("stop_follow_up")
    a, b, c = wf.states("a", "b", "c")

    @wf.flow(a >> b, "approve", trigger="manual")
    async def approve(token):
        began.set()
        await asyncio.sleep(0.2)
        return {"approved": True}

    @wf.flow(b >> c, "ship")
    async def ship(token):
        ran.append("ship")
        return {}

    engine = Engine(workflows=[wf])
    await engine.open()
    inst = await engine.wait((await engine.start(wf, {})).id, timeout=5)
    firing = asyncio.create_task(engine.fire(inst.id, "approve"))
    await asyncio.wait_for(began.wait(), 5)
    engine.stop_starting()
    fired = await firing
    await asyncio.sleep(0.3)
    assert [t.place for t in fired.tokens] == ["b"] and ran == []
    await engine.close(grace=1)


async def stored_after_close(engine: Engine, instance_id: str) -> list[Event]:
    """What the closed engine's store holds of an instance (on JetStream through a store opened anew)."""
    if not isinstance(engine.store, JetStreamStore):
        return await engine.store.read(instance_id)
    store = JetStreamStore(servers=engine.store.servers)
    await store.open()
    try:
        return await store.read(instance_id)
    finally:
        await store.close()


def slow_approval(began: asyncio.Event, seconds: float) -> Workflow:
    wf = Workflow("slow_approval")
    a, b = wf.states("a", "b")

    @wf.flow(a >> b, "approve", trigger="manual")
    async def approve(token):
        began.set()
        await asyncio.sleep(seconds)
        return {"approved": True}

    return wf


async def test_a_closing_engine_gives_a_manual_firings_action_its_grace_too(engine: Engine) -> None:
    """A library user's close(grace=...) while a manual firing's action runs: the action is one of the running
    actions, so it finishes and is stored, and the caller gets the fired instance (it used to find the engine
    closed under it)."""
    began = asyncio.Event()
    wf = slow_approval(began, 0.3)
    inst = await engine.wait((await engine.start(wf, {})).id, timeout=5)
    firing = asyncio.create_task(engine.fire(inst.id, "approve", actor="ann"))
    await asyncio.wait_for(began.wait(), 5)
    await engine.close(grace=5)
    fired = await firing
    assert [t.place for t in fired.tokens] == ["b"] and fired.tokens[0].data["approved"] is True
    stored = await stored_after_close(engine, inst.id)
    assert [e.transition for e in stored if e.type is EventType.TRANSITION_FIRED] == ["approve"]


async def test_closing_without_grace_during_a_manual_firing_says_so_and_moves_nothing(engine: Engine) -> None:
    began = asyncio.Event()
    wf = slow_approval(began, 30)
    inst = await engine.wait((await engine.start(wf, {})).id, timeout=5)
    firing = asyncio.create_task(engine.fire(inst.id, "approve"))
    await asyncio.wait_for(began.wait(), 5)
    await engine.close()
    with pytest.raises(EngineClosedError, match=f"fire 'approve' on instance {inst.id}; nothing moved"):
        await firing
    assert [e.type for e in await stored_after_close(engine, inst.id)] == [
        EventType.TOKEN_INJECTED,
        EventType.INSTANCE_STATUS_CHANGED,
    ], "only the start and its wait are stored: the token stays in 'a'"


async def test_cancelling_an_instance_during_a_manual_firing_ends_the_firing_with_a_clear_error(
    engine: Engine,
) -> None:
    began = asyncio.Event()
    wf = slow_approval(began, 30)
    inst = await engine.wait((await engine.start(wf, {})).id, timeout=5)
    firing = asyncio.create_task(engine.fire(inst.id, "approve"))
    await asyncio.wait_for(began.wait(), 5)
    await engine.cancel(inst.id, reason="withdrawn")
    with pytest.raises(InstanceStateError, match="it is cancelled"):
        await firing
    assert [t.place for t in (await engine.get(inst.id)).tokens] == ["a"]


async def test_a_closed_engine_refuses_changes_naming_them() -> None:
    wf = Workflow("after_close")
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "go", trigger="manual")
    async with Engine(workflows=[wf]) as engine:
        inst = await engine.wait((await engine.start(wf, {})).id, timeout=5)
    with pytest.raises(EngineClosedError, match="cannot start an instance of workflow 'after_close'"):
        await engine.start(wf, {})
    with pytest.raises(EngineClosedError, match=f"cannot fire 'go' on instance {inst.id}"):
        await engine.fire(inst.id, "go")
    for operation in ("pause", "resume", "cancel", "retry"):
        with pytest.raises(EngineClosedError, match=f"the engine is closed: cannot {operation} instance {inst.id}"):
            await getattr(engine, operation)(inst.id)
    assert (await engine.get(inst.id)).status is InstanceStatus.WAITING  # reading still works; nothing moved


async def test_a_caller_giving_up_just_as_its_manual_firing_is_stored_leaves_the_follow_up_to_the_engine() -> None:
    """Found in review: cancelled (a timeout) between the action's task ending and the caller waking, the caller
    skipped the follow-up, and the instance stayed waiting with an automatic transition enabled."""
    wf = Workflow("give_up_window")
    a, b, c = wf.states("a", "b", "c")
    callers: list[asyncio.Task[object]] = []

    @wf.flow(a >> b, "approve", trigger="manual")
    async def approve(token):
        await asyncio.sleep(0.05)
        asyncio.get_running_loop().call_soon(callers[0].cancel)  # (runs before the caller wakes)
        return {"ok": True}

    wf.flow(b >> c, "ship")  # automatic

    async with Engine(workflows=[wf]) as engine:
        inst = await engine.wait((await engine.start(wf, {})).id, timeout=5)
        callers.append(asyncio.create_task(engine.fire(inst.id, "approve")))
        with pytest.raises(asyncio.CancelledError):
            await callers[0]
        done = await engine.wait(inst.id, timeout=5)
        assert done.status is InstanceStatus.COMPLETED and [t.place for t in done.tokens] == ["c"]


async def test_closing_while_a_manual_firing_is_being_stored_says_it_may_be_stored() -> None:
    """Found in review: the event was on the server, its acknowledgement on the way, when the engine closed; the
    caller was told nothing moved."""
    from circuit_breaker.store import MemoryStore

    storing = asyncio.Event()

    class SlowAcknowledgement(MemoryStore):
        appends_atomically = False  # (its append suspends)

        async def append(self, event: Event, expected_seq: int) -> None:
            await super().append(event, expected_seq)
            if event.type is EventType.TRANSITION_FIRED:
                storing.set()
                await asyncio.sleep(5)  # (stored; the acknowledgement still on its way)

    wf = Workflow("closed_while_storing")
    a, b = wf.states("a", "b")

    @wf.flow(a >> b, "approve", trigger="manual")
    async def approve(token):
        return {"ok": True}

    store = SlowAcknowledgement()
    engine = Engine(store=store, workflows=[wf])
    await engine.open()
    inst = await engine.wait((await engine.start(wf, {})).id, timeout=5)
    firing = asyncio.create_task(engine.fire(inst.id, "approve"))
    await asyncio.wait_for(storing.wait(), 5)
    await engine.close()
    with pytest.raises(EngineClosedError, match="may be stored: read the instance") as caught:
        await firing
    assert caught.value.maybe_stored and caught.value.retryable
    assert [e.type for e in await store.read(inst.id)][-1] is EventType.TRANSITION_FIRED


async def test_a_manual_firing_right_after_the_start_is_not_followed_by_a_stale_wait(engine: Engine) -> None:
    """Found in a walk-through: the scheduler judged the new instance (nothing automatic to do: wait) while the
    manual firing was being stored, and then stored that stale 'waiting' on top of it. On a driving engine it only
    cost a 'waiting' and a 'running'; written by an observer, the driver fired the next transition while waiting."""
    wf = Workflow("quick_approval")
    a, b, c = wf.states("a", "b", "c")
    wf.flow(a >> b, "approve", trigger="manual")
    wf.flow(b >> c, "ship")  # automatic
    inst = await engine.start(wf, {})
    await engine.fire(inst.id, "approve")  # (before the scheduler's first pass could store anything)
    done = await engine.wait(inst.id, timeout=5)
    assert done.status is InstanceStatus.COMPLETED
    assert [e.type for e in await engine.store.read(inst.id)] == [
        EventType.TOKEN_INJECTED,
        EventType.TRANSITION_FIRED,
        EventType.TRANSITION_FIRED,
        EventType.INSTANCE_COMPLETED,
    ]


async def test_a_stopping_engine_starts_nothing_new_for_callers_either() -> None:
    """Found in a walk-through: during close(grace=...) a library caller could still start an instance (left
    running for a later engine) and fire a manual transition whose action then ran unawaited and was cancelled."""
    ran: list[str] = []
    began = asyncio.Event()
    wf = Workflow("stopping_callers")
    a, b = wf.states("a", "b")

    @wf.flow(a >> b, "approve", trigger="manual")
    async def approve(token):
        ran.append(token.instance_id)
        began.set()
        await asyncio.sleep(0.3)
        return {}

    engine = Engine(workflows=[wf])
    await engine.open()
    first, second = [(await engine.wait((await engine.start(wf, {})).id, timeout=5)).id for _ in range(2)]
    firing = asyncio.create_task(engine.fire(first, "approve"))
    await asyncio.wait_for(began.wait(), 5)
    closing = asyncio.create_task(engine.close(grace=5))
    await asyncio.sleep(0.05)
    with pytest.raises(EngineClosedError, match="the engine is stopping: cannot start an instance") as refused:
        await engine.start(wf, {})
    assert refused.value.stopping and refused.value.retryable
    with pytest.raises(EngineClosedError, match=f"stopping: cannot fire 'approve' on instance {second}"):
        await engine.fire(second, "approve")
    with pytest.raises(EngineClosedError, match="stopping: cannot resume"):
        await engine.resume(second)
    paused = await engine.pause(second)  # (stops something: still done)
    assert paused.status is InstanceStatus.PAUSED
    await closing
    assert [t.place for t in (await firing).tokens] == ["b"] and ran == [first]
