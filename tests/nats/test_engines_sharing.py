"""Engines sharing one JetStream stream, in the awkward moments: a race lost while an action fails, a
follow-up lost after a manual firing, a cancel from elsewhere, ids that are not plain names, one id in two
workflows. Each scenario is checked on the stored events, the source of truth."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from circuit_breaker import Engine, InstanceStatus, Workflow
from circuit_breaker.engine._metrics import EngineMetrics
from circuit_breaker.errors import (
    ActionError,
    InstanceExistsError,
    TransitionNotEnabledError,
    UnknownInstanceError,
)
from circuit_breaker.events import ErrorInfo, Event, EventType, TokenInjected
from circuit_breaker.nats import JetStreamStore
from circuit_breaker.token import History, HistoryEntry, Token, new_id, utcnow
from tests.conftest import drop_streams
from tests.engine.test_remote_actions import ControlledQueue, Echo, result_for


@pytest.fixture
async def url(nats_url: str) -> AsyncIterator[str]:
    await drop_streams(nats_url)
    yield nats_url
    await drop_streams(nats_url)


def engine(url: str, *workflows: Workflow, **options: Any) -> Engine:
    return Engine(store=JetStreamStore(servers=[url]), workflows=workflows, **options)


async def stored(url: str, instance_id: str) -> list[Event]:
    async with engine(url, drive=False, follow=False) as reader:
        return [e async for e in reader.events(instance=instance_id)]


def racing(ok: bool) -> Workflow:
    """The same workflow as two engines run it: on one the action succeeds, on the other it fails later."""
    wf = Workflow("raced", error_place="broken")
    a, b, broken, fixed = wf.states("a", "b", "broken", "fixed")

    @wf.flow(a >> b, "work")
    async def work(token: Any) -> dict[str, Any]:
        if ok:
            await asyncio.sleep(0.2)
            return {"by": "winner"}
        await asyncio.sleep(0.6)
        raise RuntimeError("the loser's back end is down")

    wf.flow(broken >> fixed, "repair", trigger="manual")
    return wf


async def store_unstarted(url: str, workflow: str, place: str) -> str:
    """An instance as an injection leaves it, fired by nobody yet, so every engine that opens drives it."""
    iid, now = new_id(), utcnow()
    entry = HistoryEntry(time=now, kind="created", to_places=(place,))
    token = Token(id=new_id(), instance_id=iid, place=place, data={}, history=History().append(entry))
    store = JetStreamStore(servers=[url])
    await store.open()
    try:
        await store.append(TokenInjected(workflow=workflow, instance_id=iid, seq=1, token=token), 0)
    finally:
        await store.close()
    return iid


async def test_a_failure_on_the_losing_engine_neither_moves_tokens_nor_fails_the_instance(url: str) -> None:
    iid = await store_unstarted(url, "raced", "a")
    async with engine(url, racing(ok=True)) as winner, engine(url, racing(ok=False)) as loser:
        await asyncio.sleep(1.0)  # both drive it; the loser's action fails after the winner committed
        for e in (winner, loser):
            seen = await e.get(iid)
            assert seen.status is InstanceStatus.COMPLETED
            assert [t.place for t in seen.tokens] == ["b"]
    events = await stored(url, iid)
    assert [e.type for e in events] == [
        EventType.TOKEN_INJECTED,
        EventType.TRANSITION_FIRED,
        EventType.INSTANCE_COMPLETED,
    ], "no failure recorded for tokens another engine consumed"


def review() -> Workflow:
    wf = Workflow("reviewed")
    draft, pending, ok, no = wf.states("draft", "pending", "ok", "no")
    wf.flow(draft >> pending, "submit")
    wf.flow(pending >> ok, "approve", trigger="manual")
    wf.flow(pending >> no, "reject", trigger="manual")
    return wf


async def test_a_manual_firing_stored_without_its_follow_up_still_completes(url: str) -> None:
    async with engine(url, review()) as eng:
        inst = await eng.wait((await eng.start("reviewed", {})).id, timeout=5)
        firing = asyncio.create_task(eng.fire(inst.id, "approve", actor="ann"))
        await asyncio.sleep(0)
        firing.cancel()  # the caller gives up while the firing is being stored
        with pytest.raises(asyncio.CancelledError):
            await firing
        await asyncio.sleep(0.2)
        # Either the approval was stored (then reject is not enabled) or not (then reject fires).
        with contextlib.suppress(TransitionNotEnabledError):
            await eng.fire(inst.id, "reject", actor="bob")
        done = await eng.wait(inst.id, timeout=5)
        assert done.status is InstanceStatus.COMPLETED
    events = await stored(url, inst.id)
    fired = [e.transition for e in events if e.type is EventType.TRANSITION_FIRED]  # type: ignore[union-attr]
    assert fired[0] == "submit" and len(fired) == 2, "exactly one of approve/reject"
    assert events[-1].type is EventType.INSTANCE_COMPLETED


async def test_an_instance_waiting_with_its_work_done_is_completed_by_the_next_engine(url: str) -> None:
    """The engine died between storing the last firing and storing the completion."""
    wf = review()
    async with engine(url, wf) as first:
        inst = await first.wait((await first.start("reviewed", {})).id, timeout=5)
        original = first._after_fire

        async def crash(*args: Any) -> None:
            raise asyncio.CancelledError  # as if the process died right after the firing was stored

        first._after_fire = crash  # type: ignore[method-assign]
        with pytest.raises(asyncio.CancelledError):
            await first.fire(inst.id, "approve")
        first._after_fire = original  # type: ignore[method-assign]
    async with engine(url, wf) as second:
        done = await second.wait(inst.id, timeout=5)
        assert done.status is InstanceStatus.COMPLETED and done.places == ["ok"]


async def test_a_cancel_from_another_engine_stops_the_actions_here(url: str) -> None:
    charged: list[str] = []
    wf = Workflow("cancelled")
    a, b = wf.states("a", "b")

    @wf.flow(a >> b, "charge_card")
    async def charge(token: Any) -> dict[str, Any]:
        await asyncio.sleep(0.8)
        charged.append(token.instance_id)
        return {}

    async with engine(url, wf) as one, engine(url, wf) as two:
        inst = await one.start("cancelled", {})
        await asyncio.sleep(0.2)
        await two.cancel(inst.id, reason="customer cancelled")
        await asyncio.sleep(1.2)
        assert (await one.get(inst.id)).status is InstanceStatus.CANCELLED
    assert charged == [], "the action was cancelled, not finished"
    types = [e.type for e in await stored(url, inst.id)]
    assert types == [EventType.TOKEN_INJECTED, EventType.INSTANCE_STATUS_CHANGED]


@pytest.mark.parametrize("bad", ["*", ">", "a.b", "x y", "cb.ev.>"])
async def test_ids_that_are_not_plain_names_never_reach_a_subject(url: str, bad: str) -> None:
    async with engine(url, review()) as eng:
        inst = await eng.start("reviewed", {})
        with pytest.raises(UnknownInstanceError):
            await eng.get(bad)
        with pytest.raises(UnknownInstanceError):
            await eng.fire(bad, "approve")
        assert set(eng._runs) == {inst.id}


async def test_an_instance_id_is_one_instance_across_workflows(url: str) -> None:
    orders, refunds = Workflow("orders"), Workflow("refunds")
    for wf in (orders, refunds):
        a, b = wf.states("a", "b")
        wf.flow(a >> b, "go", trigger="manual")
    async with engine(url, orders) as one, engine(url, refunds, follow=False) as two:
        await one.start("orders", {}, instance_id="order-1")
        with pytest.raises(InstanceExistsError):
            await two.start("refunds", {}, instance_id="order-1")


async def test_two_engines_firing_the_same_manual_transition_apply_it_once_per_success(url: str) -> None:
    wf = Workflow("double")
    s, pending, approved, done = wf.states("s", "pending", "approved", "done")
    wf.flow(s >> pending * 3, "split")
    wf.flow(pending >> approved, "approve", trigger="manual")
    wf.flow(approved >> done, "record")
    async with engine(url, wf) as one, engine(url, wf) as two:
        metrics = EngineMetrics(two)
        for _ in range(10):
            inst = await one.wait((await one.start("double", {})).id, timeout=5)
            results = await asyncio.gather(
                one.fire(inst.id, "approve"), two.fire(inst.id, "approve"), return_exceptions=True
            )
            succeeded = sum(not isinstance(r, BaseException) for r in results)
            await asyncio.sleep(0.1)
            fired = Counter(
                e.transition  # type: ignore[union-attr]
                for e in await stored(url, inst.id)
                if e.type is EventType.TRANSITION_FIRED
            )
            assert fired["approve"] == succeeded
        # Most rounds both appended from the same state: one of them was refused, and counted.
        assert one.conflicts + two.conflicts >= 1
        assert f"cb_engine_conflicts_total {float(two.conflicts)}" in metrics.render().decode()


async def test_a_lone_engine_follows_nobody_until_another_engine_announces_itself(url: str) -> None:
    wf = review()
    async with engine(url, wf) as first:
        inst = await first.wait((await first.start("reviewed", {})).id, timeout=5)
        assert first._watcher is None, "alone: nothing to read back"
        async with engine(url, wf) as second:
            for _ in range(100):
                if first._watcher is not None and second._watcher is not None:
                    break
                await asyncio.sleep(0.02)
            assert first._watcher is not None and second._watcher is not None
            await second.fire(inst.id, "approve", actor="on-second")
            for _ in range(100):  # the first engine sees the second one's firing live
                if (await first.get(inst.id)).status is InstanceStatus.COMPLETED:
                    break
                await asyncio.sleep(0.02)
            assert (await first.get(inst.id)).places == ["ok"]


async def followed(follower: Engine, ids: list[str], status: InstanceStatus, *places: str) -> None:
    """Until ``follower`` has read every instance up to ``status`` with tokens in ``places`` (wait() on a follower
    returns as soon as what it has read so far is settled)."""
    for _ in range(250):
        seen = [await follower.get(i) for i in ids]
        if all(i.status is status and sorted(i.places) == sorted(places) for i in seen):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not all {status.value} in {places}: {Counter((i.status, *i.places) for i in seen)}")


async def test_the_engine_that_wrote_last_drives_and_the_other_steps_aside(url: str) -> None:
    """An engine that sees another live engine write an instance leaves the follow-ups to it (otherwise both
    step every automatic firing and one of them loses each race), and drives it again once it writes to it."""
    wf = Workflow("handed")
    a, b, c, d, e, f, g, h = wf.states("a", "b", "c", "d", "e", "f", "g", "h")
    wf.flow(a >> b, "go", trigger="manual")
    for step, (src, dst) in enumerate([(b, c), (c, d), (d, e), (e, f)]):
        wf.flow(src >> dst, f"step{step}")
    wf.flow(f >> g, "close", trigger="manual")
    wf.flow(g >> h, "archive")
    async with engine(url, wf) as first, engine(url, wf) as second:
        for _ in range(200):  # each has heard the other's hello and follows it
            peers = [x.store._peers for x in (first, second)]  # type: ignore[attr-defined]
            if first._watcher and second._watcher and all(peers):
                break
            await asyncio.sleep(0.02)
        ids = [(await first.start("handed", {})).id for _ in range(30)]
        for iid in ids:
            await second.wait(iid, timeout=5)  # waiting at "go", known to both
        for iid in ids:
            await second.fire(iid, "go")  # the second engine writes last: it goes on with the steps
        at_f = await asyncio.gather(*(second.wait(iid, timeout=10) for iid in ids))
        assert all(i.status is InstanceStatus.WAITING and i.places == ["f"] for i in at_f)
        await followed(first, ids, InstanceStatus.WAITING, "f")
        assert first.conflicts == 0, "the first engine did not race the second one for the steps"
        assert [first._runs[i].local for i in ids] == [False] * 30
        assert [second._runs[i].local for i in ids] == [True] * 30

        for iid in ids:
            await first.fire(iid, "close")  # now the first engine writes last, and archives
        done = await asyncio.gather(*(first.wait(iid, timeout=10) for iid in ids))
        assert all(i.status is InstanceStatus.COMPLETED and i.places == ["h"] for i in done)
        await followed(second, ids, InstanceStatus.COMPLETED, "h")
        assert second.conflicts == 0
        assert [second._runs[i].local for i in ids] == [False] * 30
    steps = ["go", "step0", "step1", "step2", "step3", "close", "archive"]
    for iid in ids:
        fired = [x.transition for x in await stored(url, iid) if x.type is EventType.TRANSITION_FIRED]  # type: ignore[union-attr]
        assert fired == steps


async def two_following(
    url: str, wf: Workflow, *, heartbeat: float = 5.0, queues: tuple[Any, Any] | None = None, **options: Any
) -> tuple[Engine, Engine]:
    """Two open engines on ``wf`` that have heard of each other (each steps aside from the other's writes);
    ``queues``: each engine's own task queue."""
    first, second = (
        Engine(
            store=JetStreamStore(servers=[url], heartbeat=heartbeat),
            workflows=[wf],
            **options,
            **({"tasks": queues[i]} if queues else {}),
        )
        for i in range(2)
    )
    await first.open()
    await second.open()
    await found_each_other(first, second)
    return first, second


async def found_each_other(first: Engine, second: Engine) -> None:
    for _ in range(200):
        if first._watcher and second._watcher and first.store._peers and second.store._peers:  # type: ignore[attr-defined]
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the engines did not find each other")


async def test_an_engine_that_stepped_aside_and_then_commits_its_action_drives_again(url: str) -> None:
    """A stepped aside (B wrote last) while its action ran; the action's commit makes A the last writer, so
    A drives the join (B steps aside from it): the instance never waits with nobody driving it."""
    calls = 0
    wf = Workflow("inflight_aside")
    s, p1, p2, q1, q2, done = wf.states("s", "p1", "p2", "q1", "q2", "done")
    wf.flow(s >> (p1, p2), "split")

    @wf.flow(p1 >> q1, "slow")
    async def slow(token: Any) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.5 if calls == 1 else 1.5)  # the first engine's run ends first
        return {"slow": calls}

    wf.flow(p2 >> q2, "approve", trigger="manual")
    wf.flow((q1, q2) >> done, "join")
    first, second = await two_following(url, wf)
    try:
        inst = await first.start("inflight_aside", {})
        await asyncio.sleep(0.2)  # split fired, "slow" runs on the first engine
        await second.fire(inst.id, "approve")  # the second engine writes last: the first one steps aside
        await asyncio.sleep(0.1)
        assert not first._runs[inst.id].local and first._runs[inst.id].inflight == 1
        await followed(first, [inst.id], InstanceStatus.COMPLETED, "done")
    finally:
        await second.close()
        await first.close()
    fired = [x.transition for x in await stored(url, inst.id) if x.type is EventType.TRANSITION_FIRED]  # type: ignore[union-attr]
    assert fired == ["split", "approve", "slow", "join"]


async def test_a_manual_firing_by_an_observer_leaves_the_instance_with_its_driver(url: str) -> None:
    """An engine that does not drive (a CLI's, drive=False) is nobody's successor: when the engine that drove the
    instance leaves, the remaining one takes it over."""
    wf = Workflow("observed")
    s, p, q, done = wf.states("s", "p", "q", "done")
    wf.flow(s >> p, "m1", trigger="manual")
    wf.flow(p >> q, "m2", trigger="manual")

    @wf.flow(q >> done, "work")
    async def work(token: Any) -> dict[str, Any]:
        await asyncio.sleep(1.0)
        return {"worked": True}

    first, second = await two_following(url, wf)
    try:
        inst = await first.start("observed", {})
        await second.wait(inst.id, timeout=5)
        await second.fire(inst.id, "m1")  # the second engine drives it now
        await asyncio.sleep(0.3)
        async with engine(url, wf, drive=False, follow=False) as cli:
            await cli.fire(inst.id, "m2")
        await asyncio.sleep(0.3)  # "work" runs on the second engine, nothing stored yet
        await second.close()  # bye: its instances are taken over at once
        await followed(first, [inst.id], InstanceStatus.COMPLETED, "done")
    finally:
        await second.close()
        await first.close()


def overdue_flow(name: str, deadline: float) -> Workflow:
    """A remote task with a deadline on one branch (overdue: to ``review``, handled automatically), a manual
    ``approve`` on the other."""
    wf = Workflow(name)
    s, t, m, done_t, done_m, review, handled = wf.states("s", "t", "m", "done_t", "done_m", "review", "handled")
    wf.flow(s >> (t, m), "split")
    wf.flow(t >> done_t, "run").action(Echo(value=1), remote=True, deadline=deadline).on_error(review)
    wf.flow(review >> handled, "handle")
    wf.flow(m >> done_m, "approve", trigger="manual")
    return wf


async def test_a_deadline_counted_by_an_engine_that_stepped_aside_still_moves_the_instance_on(url: str) -> None:
    """Only the engine that dispatched a task counts its deadline; when it has stepped aside meanwhile, its
    failure event makes it the driver again, so the error place's automatic handling runs."""
    first, second = await two_following(url, overdue_flow("deadline_aside", 0.6), tasks=ControlledQueue())
    try:
        inst = await first.start("deadline_aside", {})
        await asyncio.sleep(0.2)  # "run" is dispatched by the first engine, which counts its deadline
        await second.fire(inst.id, "approve")  # the first engine steps aside
        await asyncio.sleep(0.1)
        assert not first._runs[inst.id].local
        await followed(second, [inst.id], InstanceStatus.COMPLETED, "handled", "done_m")
    finally:
        await second.close()
        await first.close()


def three_manual_steps(name: str) -> Workflow:
    """Manual m1, m2, m3, then the automatic ``finish``: who follows up after m3 is the engine that drives."""
    wf = Workflow(name)
    s, p, q, r, done = wf.states("s", "p", "q", "r", "done")
    wf.flow(s >> p, "m1", trigger="manual")
    wf.flow(p >> q, "m2", trigger="manual")
    wf.flow(q >> r, "m3", trigger="manual")
    wf.flow(r >> done, "finish")
    return wf


async def test_an_observers_firing_after_handovers_is_followed_up_by_the_engine_that_wrote_last(url: str) -> None:
    """The instance went from the first engine to the second and back; an observer's manual firing then must not
    send the first engine aside on account of the second engine's older write."""
    wf = three_manual_steps("handed_back")
    first, second = await two_following(url, wf)
    try:
        inst = await first.start("handed_back", {})
        await second.wait(inst.id, timeout=5)
        await second.fire(inst.id, "m1")  # to the second engine
        await followed(first, [inst.id], InstanceStatus.WAITING, "p")
        await first.fire(inst.id, "m2")  # and back to the first
        await followed(second, [inst.id], InstanceStatus.WAITING, "q")
        async with engine(url, wf, drive=False, follow=False) as cli:
            await cli.fire(inst.id, "m3")
        await followed(first, [inst.id], InstanceStatus.COMPLETED, "done")
        assert first._runs[inst.id].local
    finally:
        await second.close()
        await first.close()


async def test_a_failed_manual_firing_on_the_other_engine_leaves_the_instance_driven(url: str) -> None:
    """The second engine's manual firing fails (its action raises) and stores that; the first engine steps aside
    from the write, so the second one now drives: the rate-limited step still runs when its time comes."""
    wf = Workflow("limited")
    s, a, b, done_a, done_b = wf.states("s", "a", "b", "done_a", "done_b")
    wf.flow(s >> (a, b), "split")

    async def work(token: Any) -> dict[str, Any]:
        return {"worked": True}

    wf.flow(a >> done_a, "work", action=work).limit(per_second=1)

    @wf.flow(b >> done_b, "approve", trigger="manual")
    async def approve(token: Any) -> dict[str, Any]:
        raise ValueError("the approval service said no")

    first, second = await two_following(url, wf)
    try:
        await first.start("limited", {})  # takes the first engine's budget for "work"
        inst = await first.start("limited", {})  # its "work" waits for the first engine's timer
        await followed(second, [inst.id], InstanceStatus.RUNNING, "a", "b")
        with pytest.raises(ActionError):
            await second.fire(inst.id, "approve")
        await followed(second, [inst.id], InstanceStatus.WAITING, "b", "done_a")
    finally:
        await second.close()
        await first.close()


async def test_an_engine_that_stepped_aside_drives_again_when_the_instance_does_not_move_on(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The safety net: should the engine that wrote last not go on (here its scheduler is switched off), the one
    that stepped aside drives the instance again after a few heartbeats."""
    wf = Workflow("net")
    s, p, q, done = wf.states("s", "p", "q", "done")
    wf.flow(s >> p, "go", trigger="manual")
    wf.flow(p >> q, "on")
    wf.flow(q >> done, "end")
    monkeypatch.setattr("circuit_breaker.engine._engine.STEP_ASIDE_CHECKS", 12)  # 1.2 s at these heartbeats
    first, second = await two_following(url, wf, heartbeat=0.1)
    try:
        inst = await first.start("net", {})
        await second.wait(inst.id, timeout=5)
        second._kick = lambda run: None  # type: ignore[method-assign]  # writes, then never steps it
        await second.fire(inst.id, "go")
        await asyncio.sleep(0.3)
        assert not first._runs[inst.id].local
        await followed(first, [inst.id], InstanceStatus.COMPLETED, "done")  # checked every 12 heartbeats (1.2 s)
        assert first._runs[inst.id].local
    finally:
        await second.close()
        await first.close()


async def test_an_event_the_watcher_reads_late_does_not_make_its_writer_the_driver_again(url: str) -> None:
    """The second engine wrote the newest event itself; its watcher then delivers an older event of the first
    engine (it lagged, waiting for another instance's commit). That older write must not count as the latest:
    after an observer's firing the second engine still drives."""
    wf = three_manual_steps("late")
    first, second = await two_following(url, wf)
    try:
        x = (await first.start("late", {})).id
        y = (await first.start("late", {})).id
        await second.wait(x, timeout=5)
        await second.wait(y, timeout=5)
        await second._runs[y].lock.acquire()  # the second engine's watcher will wait at y's next event
        await first.fire(y, "m1")
        await first.fire(x, "m1")
        await asyncio.sleep(0.2)
        await second.fire(x, "m2")  # reads the first engine's m1 directly, and writes the newest event
        second._runs[y].lock.release()
        await asyncio.sleep(0.3)  # the watcher delivers the first engine's m1 on x, late
        async with engine(url, wf, drive=False, follow=False) as cli:
            await cli.fire(x, "m3")
        await followed(second, [x], InstanceStatus.COMPLETED, "done")
        assert second._runs[x].local and not first._runs[x].local
    finally:
        await second.close()
        await first.close()


async def test_the_deadline_of_a_task_whose_dispatcher_left_is_counted_by_the_engine_driving_the_instance(
    url: str,
) -> None:
    """The first engine dispatched the task (its deadline on its clock); the second one drives the instance after
    a manual firing; when the first leaves, the second counts the deadline, and the error place's handling runs."""
    first, second = await two_following(url, overdue_flow("deadline_left", 1.0), tasks=ControlledQueue())
    try:
        inst = await first.start("deadline_left", {})
        for _ in range(100):
            known = second._runs.get(inst.id)
            if known is not None and known.pending and "m" in known.marking:
                break
            await asyncio.sleep(0.02)
        await second.fire(inst.id, "approve")  # the second engine drives it now
        await asyncio.sleep(0.2)
        assert second._runs[inst.id].local
        assert not any(p.timer for p in second._runs[inst.id].pending.values()), "its clock is the first engine's"
        await first.close()  # says bye before the deadline passes
        await followed(second, [inst.id], InstanceStatus.COMPLETED, "done_m", "handled")
    finally:
        await first.close()
        await second.close()


def slow_work(name: str, seconds: float) -> Workflow:
    """An instance either waits for the manual ``m1`` or runs the automatic ``work`` for ``seconds``."""
    wf = Workflow(name)
    s, p, done = wf.states("s", "p", "done")
    wf.flow(s >> p, "m1", trigger="manual")

    @wf.flow(s >> done, "work")
    async def work(token: Any) -> dict[str, Any]:
        await asyncio.sleep(seconds)
        return {"worked": True}

    return wf


async def hold_watcher(first: Engine, second: Engine, workflow: str) -> asyncio.Lock:
    """Make the first engine's watcher lag: it waits at an event of an instance whose commit lock is held (as
    while an append of its own is in flight). Returns the lock, to be released."""
    y = (await first.start(workflow, {})).id
    await asyncio.sleep(0.2)
    lock = first._runs[y].lock
    assert isinstance(lock, asyncio.Lock)
    await lock.acquire()
    await second.fire(y, "m1")  # the watcher will wait at this event
    return lock


async def test_an_instance_read_directly_before_the_watcher_delivers_it_is_still_taken_over(url: str) -> None:
    """The first engine reads an instance of the second directly (a get) while its watcher lags; the writer of
    what it read still counts, so when the second engine leaves, the first takes the instance over."""
    first, second = await two_following(url, slow_work("adopted", 1.0))
    try:
        held = await hold_watcher(first, second, "adopted")
        x = (await second.start("adopted", {})).id  # the second engine drives x and runs "work"
        await asyncio.sleep(0.2)
        assert (await first.get(x)).status is InstanceStatus.RUNNING  # read directly
        held.release()
        await asyncio.sleep(0.3)
        await second.close()  # bye while "work" runs
        await followed(first, [x], InstanceStatus.COMPLETED, "done")
    finally:
        await second.close()
        await first.close()


async def test_a_new_attempt_sent_by_another_engine_is_clocked_after_it_leaves(url: str) -> None:
    """The first engine dispatched attempt 1; the second handed out attempt 2 (a worker reported the deadline
    passed) and left; the first, driving the instance, counts attempt 2's deadline, not its old timer's."""
    wf = Workflow("reclocked")
    s, t, m, done_t, done_m, review = wf.states("s", "t", "m", "done_t", "done_m", "review")
    wf.flow(s >> (t, m), "split")
    run = wf.flow(t >> done_t, "run").action(Echo(value=1), remote=True, deadline=1.0).on_error(review)
    run.retry(max_attempts=2, initial_delay=0.01)
    wf.flow(m >> done_m, "approve", trigger="manual")
    mine, theirs = ControlledQueue(), ControlledQueue()
    first, second = await two_following(url, wf, queues=(mine, theirs))
    try:
        x = (await first.start("reclocked", {})).id
        task = await mine.next_task()
        for _ in range(100):
            known = second._runs.get(x)
            if known is not None and known.pending and "m" in known.marking:
                break
            await asyncio.sleep(0.02)
        expired = ErrorInfo(kind="expired", message="too slow")
        await theirs.deliver(result_for(task, status="failed", error=expired))  # attempt 2, from the second
        await asyncio.sleep(0.3)
        await first.fire(x, "approve")  # the first engine drives x
        await asyncio.sleep(0.1)
        await second.close()
        # Attempt 2 overruns too, and it was the last: the task ends, its token in the error place.
        for _ in range(150):
            if not first._runs[x].pending:
                break
            await asyncio.sleep(0.02)
        assert not first._runs[x].pending
        assert sorted((await first.get(x)).places) == ["done_m", "review"]
    finally:
        await second.close()
        await first.close()


async def test_an_instance_whose_events_arrive_after_its_driver_left_is_taken_over(url: str) -> None:
    """The first engine's watcher lags; the second starts an instance and leaves before the first has read any
    of it. When the events arrive, their writer is already gone: the first engine takes the instance over."""
    first, second = await two_following(url, slow_work("late_orphan", 0.5))
    try:
        held = await hold_watcher(first, second, "late_orphan")
        x = (await second.start("late_orphan", {})).id  # the second engine drives x and runs "work"
        await asyncio.sleep(0.2)
        await second.close()  # bye, before the first engine has read x
        await asyncio.sleep(0.2)
        assert x not in first._runs
        held.release()  # now the watcher delivers x's events, their writer gone
        await followed(first, [x], InstanceStatus.COMPLETED, "done")
    finally:
        await second.close()
        await first.close()


def slow_counted(name: str, tag: str, runs: Counter[str]) -> Workflow:
    """``s -> done`` whose action takes a second and counts its runs under ``tag``."""
    wf = Workflow(name)
    s, done = wf.states("s", "done")

    @wf.flow(s >> done, "work")
    async def work(token: Any) -> dict[str, Any]:
        runs[tag] += 1
        await asyncio.sleep(1.0)
        return {"worked": True}

    return wf


async def test_a_workflow_registered_later_leaves_the_instances_another_engine_drives_alone(url: str) -> None:
    """An open engine that follows another registers the other's workflow: it loads the instances, but leaves
    those the other engine drives to it, so their actions do not run twice."""
    runs: Counter[str] = Counter()

    def slow(tag: str) -> Workflow:
        return slow_counted("registered_later", tag, runs)

    elsewhere = Workflow("elsewhere")
    a, b = elsewhere.states("a", "b")
    elsewhere.flow(a >> b, "go", trigger="manual")
    first, second = engine(url, slow("first")), engine(url, elsewhere)  # the second runs another workflow for now
    await first.open()
    await second.open()
    try:
        await found_each_other(first, second)
        ids = [(await first.start("registered_later", {})).id for _ in range(5)]
        await asyncio.sleep(0.3)
        second.register(slow("second"))
        done = await asyncio.gather(*(first.wait(i, timeout=10) for i in ids))
        assert all(i.status is InstanceStatus.COMPLETED for i in done)
        assert runs == {"first": 5}
    finally:
        await second.close()
        await first.close()


async def test_an_engine_that_opens_next_to_a_running_one_leaves_it_the_instances_it_drives(url: str) -> None:
    """A second engine (a scale-out, a rolling restart) loads the instances the running engine drives, with
    their actions in flight: it knows that engine as soon as it is open and leaves them to it, so the actions
    do not run twice; it still drives the instances that engine does not."""
    runs: Counter[str] = Counter()

    def slow(tag: str) -> Workflow:
        return slow_counted("opened_next", tag, runs)

    orphan = await store_unstarted(url, "opened_next", "s")  # stored by a writer that is gone: nobody drives it
    first = engine(url, slow("first"), follow=False)  # (it drives the orphan too: it does not step aside)
    await first.open()
    try:
        ids = [(await first.start("opened_next", {})).id for _ in range(5)]
        await asyncio.sleep(0.3)  # every action is running on the first engine
        second = engine(url, slow("second"))
        await second.open()
        try:
            assert first.store.origin in second.store._peers, "the running engine introduced itself"  # type: ignore[attr-defined]
            assert all(not second._runs[i].local for i in ids)
            assert second._runs[orphan].local, "the gone writer's instance is driven here"
            done = await asyncio.gather(*(first.wait(i, timeout=10) for i in ids))
            assert all(i.status is InstanceStatus.COMPLETED for i in done)
            assert (await second.wait(orphan, timeout=10)).status is InstanceStatus.COMPLETED
        finally:
            await second.close()
    finally:
        await first.close()
    assert runs["first"] == 6 and runs["second"] <= 1, runs  # each of the five ran once; the orphan once or twice


def gated_watch(store: JetStreamStore, permits: asyncio.Semaphore) -> None:
    """A watcher that lags: each event it delivers needs a permit."""
    original = store.watch

    async def watch(start: int) -> AsyncIterator[Event]:
        events = original(start)
        try:
            while True:
                await permits.acquire()
                yield await events.__anext__()
        finally:
            await events.aclose()

    store.watch = watch  # type: ignore[method-assign]


async def test_a_late_event_of_a_finished_instance_out_of_memory_neither_revives_nor_reruns_it(url: str) -> None:
    """Found in review: a lagging watcher delivered the first event of an instance that had finished and left
    memory; the engine rebuilt it as running, listed it twice, and ran its action again once its writer left."""
    runs: Counter[str] = Counter()

    def lagged(tag: str) -> Workflow:
        wf = Workflow("lagged")
        s, mid, done = wf.states("s", "mid", "done")

        @wf.flow(s >> mid, "work")
        async def work(token: Any) -> dict[str, Any]:
            runs[tag] += 1
            return {"by": tag}

        wf.flow(mid >> done, "finish")
        return wf

    first = engine(url, lagged("first"))
    store = JetStreamStore(servers=[url])
    permits = asyncio.Semaphore(0)
    gated_watch(store, permits)
    second = Engine(store=store, workflows=[lagged("second")], keep_finished=0)
    await first.open()
    await second.open()
    try:
        x = (await first.start("lagged", {})).id
        assert (await first.wait(x, timeout=5)).status is InstanceStatus.COMPLETED
        assert (await second.get(x)).status is InstanceStatus.COMPLETED  # read back, out of memory again
        assert x in second._archived
        permits.release()  # the watcher now delivers the instance's first event
        await asyncio.sleep(0.3)
        assert (await second.get(x)).status is InstanceStatus.COMPLETED
        assert [i.id for i in await second.instances()].count(x) == 1
        await first.close()  # its writer leaves: nothing of it is taken over
        for _ in range(10):
            permits.release()
        await asyncio.sleep(0.5)
    finally:
        await second.close()
        await first.close()
    assert runs == {"first": 1}


async def test_an_engine_restarted_after_a_crash_drives_what_the_crashed_one_drove(url: str) -> None:
    """Found in review: the replacement of a crashed engine (no bye) that opened at once stepped aside from the
    instances the crashed one drove, because another live engine had written them before; the live one later
    chose the replacement for half of them, which never heard of the crashed one: nobody drove those."""
    heartbeat = 0.2
    runs: Counter[str] = Counter()

    def crashy(tag: str) -> Workflow:
        wf = Workflow("crashy")
        s, m, n, done = wf.states("s", "m", "n", "done")
        wf.flow(s >> m, "prep")
        wf.flow(m >> n, "go", trigger="manual")

        @wf.flow(n >> done, "work")
        async def work(token: Any) -> dict[str, Any]:
            runs[tag] += 1
            await asyncio.sleep(0.3 if tag != "crashed" else 30)
            return {"by": tag}

        return wf

    def start(tag: str) -> Engine:
        return Engine(store=JetStreamStore(servers=[url], heartbeat=heartbeat), workflows=[crashy(tag)])

    live, crashed = start("live"), start("crashed")
    await live.open()
    await crashed.open()
    ids = []
    for _ in range(8):
        x = (await live.start("crashy", {})).id
        await live.wait(x, timeout=5)
        await crashed.fire(x, "go")  # the crashed engine writes last: it drives x, its long action in flight
        ids.append(x)
    await asyncio.sleep(0.3)
    beats = crashed.store._beats  # type: ignore[attr-defined]
    beats.cancel()  # it dies: no bye, no more heartbeats
    crashed.store._beats = None  # type: ignore[attr-defined]
    await crashed.close()
    replacement = start("replacement")
    await replacement.open()
    try:
        done = await asyncio.gather(*(replacement.wait(x, timeout=10) for x in ids))
        assert all(i.status is InstanceStatus.COMPLETED for i in done)
    finally:
        await replacement.close()
        await live.close()


async def test_peers_learn_at_once_what_an_engine_runs_and_that_it_stops(url: str) -> None:
    """Found in the eighth session's list: a workflow registered on an open engine, and an engine beginning to
    stop, reached the peers only with the next heartbeat (5 s by default), so a stopping engine was still chosen
    to take up instances, and a newly registered workflow's injections were answered 'unknown'."""

    def simple(name: str) -> Workflow:
        wf = Workflow(name)
        a, b = wf.states("a", "b")
        wf.flow(a >> b, "go", trigger="manual")
        return wf

    async def heard(check: Any) -> bool:
        for _ in range(100):
            if check():
                return True
            await asyncio.sleep(0.02)
        return False

    slow_beat = {"heartbeat": 60.0}
    first = Engine(store=JetStreamStore(servers=[url], **slow_beat), workflows=[simple("alpha")])
    second = Engine(store=JetStreamStore(servers=[url], **slow_beat), workflows=[simple("beta")])
    async with first, second:
        store = first.store
        assert isinstance(store, JetStreamStore)
        assert await heard(lambda: store.peer_workflows() == {"beta"})
        second.register(simple("gamma"))
        assert await heard(lambda: store.peer_workflows() == {"beta", "gamma"})
        second.stop_starting()
        assert await heard(lambda: store.peer_workflows() == set())
