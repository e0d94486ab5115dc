"""An engine that does not drive (``drive=False``: a dashboard, a script) may still fire a manual transition. The
engine driving the instance then goes on with it, also when it is the only driving engine and so does not follow
the stream (found in the sixth session's list: the instance stayed 'running' with nobody driving it)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from circuit_breaker import Engine, Instance, InstanceStatus, Workflow
from circuit_breaker.nats import JetStreamStore
from tests.conftest import drop_streams


def on_nats(url: str, workflow: Workflow, *, drive: bool = True) -> Engine:
    """A driving engine, or with ``drive=False`` an observer, on the JetStream store at ``url``."""
    return Engine(store=JetStreamStore(servers=[url]), workflows=[workflow], drive=drive)


def drivers(url: str, wf: Workflow, count: int, heartbeat: float) -> list[Engine]:
    """``count`` driving engines that send a heartbeat every ``heartbeat`` seconds."""
    return [Engine(store=JetStreamStore(servers=[url], heartbeat=heartbeat), workflows=[wf]) for _ in range(count)]


def observed_workflow(ran: list[str] | None = None) -> Workflow:
    wf = Workflow("observed")
    a, b, c = wf.states("a", "b", "c")
    wf.flow(a >> b, "go", trigger="manual")

    @wf.flow(b >> c, "next")  # automatic, with an action: whoever drives the instance runs it
    async def next_step(token):
        if ran is not None:
            ran.append("next")
        return {"next": True}

    return wf


async def until(engine: Engine, instance_id: str, status: InstanceStatus, seconds: float = 10) -> Instance:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    got = await engine.get(instance_id)
    while got.status is not status and loop.time() < deadline:
        await asyncio.sleep(0.05)  # (the driver hears of the observer's change a moment later)
        got = await engine.get(instance_id)
    return got


async def test_a_lone_driving_engine_goes_on_after_an_observer_fires(nats_url: str) -> None:
    """The observer stays open (a dashboard): the follow-up runs once, on the driving engine."""
    await drop_streams(nats_url)
    ran: list[str] = []
    async with on_nats(nats_url, observed_workflow(ran)) as driver:
        started = await driver.start("observed", {})
        waiting = await driver.wait(started.id, timeout=5)
        assert waiting.status is InstanceStatus.WAITING
        observer = on_nats(nats_url, observed_workflow(ran), drive=False)
        async with observer:
            fired = await observer.fire(started.id, "go", actor="dashboard")
            # The observer fired; the driver goes on, and fire() says so, as a driving engine's does (found in a
            # walk-through: it returned the state it handed over, 'waiting', so the instance looked stalled).
            assert fired.status in (InstanceStatus.RUNNING, InstanceStatus.COMPLETED) and not fired.stalled
            assert [e.actor for e in fired.history if e.transition == "go"] == ["dashboard"]
            # The observer reads what the driver does with it at once, and waits for it (found in a walk-through:
            # it read it only once it heard the driver's heartbeat, up to 5 s later, and wait() returned at once).
            seen = await observer.wait(started.id, timeout=2)
            assert seen.status is InstanceStatus.COMPLETED
            done = await until(driver, started.id, InstanceStatus.COMPLETED)
            await asyncio.sleep(0.3)  # (time for a second run of 'next', were the observer driving too)
        assert done.status is InstanceStatus.COMPLETED and [t.place for t in done.tokens] == ["c"]
        assert [e.actor for e in done.history if e.transition == "go"] == ["dashboard"]
        assert ran == ["next"] and driver.conflicts == 0
    async with on_nats(nats_url, observed_workflow(), drive=False) as reader:
        stored = await reader.get(started.id)
    assert stored.status is InstanceStatus.COMPLETED and stored.version == done.version
    await drop_streams(nats_url)


async def test_an_observers_firing_into_a_final_place_returns_the_instance_the_driver_completed(nats_url: str) -> None:
    await drop_streams(nats_url)
    wf = Workflow("signed_off")
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "sign", trigger="manual")
    async with on_nats(nats_url, wf) as driver:
        started = await driver.start(wf, {})
        assert (await driver.wait(started.id, timeout=5)).status is InstanceStatus.WAITING
        async with on_nats(nats_url, wf, drive=False) as observer:
            signed = await observer.fire(started.id, "sign", actor="reviewer")
            assert signed.status is InstanceStatus.COMPLETED and [t.place for t in signed.tokens] == ["b"]
            assert (await observer.wait(started.id, timeout=2)).status is InstanceStatus.COMPLETED
        assert (await until(driver, started.id, InstanceStatus.COMPLETED)).version == signed.version
    await drop_streams(nats_url)


async def test_with_no_driving_engine_an_observers_firing_goes_on_by_itself(nats_url: str) -> None:
    await drop_streams(nats_url)
    ran: list[str] = []
    async with on_nats(nats_url, observed_workflow(ran)) as first:
        started = await first.start("observed", {})
        await first.wait(started.id, timeout=5)
    observer = on_nats(nats_url, observed_workflow(ran), drive=False)
    async with observer:
        await observer.fire(started.id, "go")
        done = await until(observer, started.id, InstanceStatus.COMPLETED)
    assert done.status is InstanceStatus.COMPLETED and ran == ["next"]
    await drop_streams(nats_url)


async def test_an_observers_cancel_stops_the_action_running_on_the_driving_engine(nats_url: str) -> None:
    await drop_streams(nats_url)
    began, stopped = asyncio.Event(), asyncio.Event()
    wf = Workflow("long_run")
    a, b = wf.states("a", "b")

    @wf.flow(a >> b, "work")
    async def work(token):
        began.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            stopped.set()
            raise
        return {}

    async with on_nats(nats_url, wf) as driver:
        started = await driver.start(wf, {})
        await asyncio.wait_for(began.wait(), 5)
        async with on_nats(nats_url, wf, drive=False) as observer:
            await observer.cancel(started.id, actor="dashboard", reason="not needed")
        await asyncio.wait_for(stopped.wait(), 5)  # the driver heard of it and stopped the action
        assert (await driver.get(started.id)).status is InstanceStatus.CANCELLED
    await drop_streams(nats_url)


@pytest.mark.parametrize("drivers", [1, 2])
async def test_a_driving_engine_takes_up_an_instance_an_observer_started_and_fired(
    nats_url: str, drivers: int
) -> None:
    """Found in a walk-through: the serving engine never knew the instance (an observer started it), so nobody
    answered, and the observer closed with the follow-up left undone. With two driving engines, one of them (the
    one the store chooses) takes it up at once, instead of nobody until the step-aside safety net minutes later."""
    await drop_streams(nats_url)
    ran: list[str] = []
    async with contextlib.AsyncExitStack() as stack:
        engines = [await stack.enter_async_context(on_nats(nats_url, observed_workflow(ran))) for _ in range(drivers)]
        observer = on_nats(nats_url, observed_workflow(ran), drive=False)
        async with observer:
            started = await observer.start("observed", {})
            await observer.fire(started.id, "go")
        done = await until(engines[0], started.id, InstanceStatus.COMPLETED, seconds=5)
        assert done.status is InstanceStatus.COMPLETED and [t.place for t in done.tokens] == ["c"]
        await asyncio.sleep(0.3)  # (time for a second run of 'next', were two engines driving it)
        assert ran == ["next"] and sum(e.conflicts for e in engines) == 0
    await drop_streams(nats_url)


def counting_pokes(engine: Engine, took: list[str]) -> None:
    """Note each instance ``engine`` says it takes over when poked (before it opens: announce gets the hook)."""
    poked = engine._poked

    def counted(instance_id: str, workflow: str, unowned: bool = False) -> bool:
        taken = poked(instance_id, workflow, unowned)
        if taken:
            took.append(instance_id)
        return taken

    engine._poked = counted


async def test_an_engine_whose_view_lags_leaves_an_instance_another_drives_to_it(nats_url: str) -> None:
    """Found in review: with two driving engines, the one whose watcher had not yet read the other's writes took
    up instances the other drove (the rendezvous hash picked it), and both ran the follow-up. The observer asks
    the driver first; only when none answers is the instance anybody's to take."""
    await drop_streams(nats_url)
    ran: list[str] = []
    driver, lagging = on_nats(nats_url, observed_workflow(ran)), on_nats(nats_url, observed_workflow(ran))
    took: list[str] = []
    counting_pokes(lagging, took)
    async with driver, lagging:
        apply_now = lagging._apply_foreign

        async def apply_late(event: object) -> None:
            await asyncio.sleep(2)  # (a busy engine: it reads the others' events seconds late)
            await apply_now(event)

        lagging._apply_foreign = apply_late
        ids = [(await driver.wait((await driver.start("observed", {})).id, timeout=5)).id for _ in range(6)]
        async with on_nats(nats_url, observed_workflow(ran), drive=False) as observer:
            for iid in ids:
                await observer.fire(iid, "go")
        for iid in ids:
            assert (await until(driver, iid, InstanceStatus.COMPLETED)).status is InstanceStatus.COMPLETED
        await asyncio.sleep(0.3)
        assert took == [] and len(ran) == len(ids) and driver.conflicts == lagging.conflicts == 0
    await drop_streams(nats_url)


async def test_an_engine_that_does_not_follow_leaves_unowned_instances_to_one_that_does(nats_url: str) -> None:
    """Found in review: a driving engine with follow=False counted itself alone and took up every instance an
    observer started, while the engine that follows took up those the hash gave it: both drove those."""
    await drop_streams(nats_url)
    ran: list[str] = []
    quiet = Engine(store=JetStreamStore(servers=[nats_url]), workflows=[observed_workflow(ran)], follow=False)
    follows = on_nats(nats_url, observed_workflow(ran))
    took_quiet: list[str] = []
    took_follows: list[str] = []
    counting_pokes(quiet, took_quiet)
    counting_pokes(follows, took_follows)
    async with quiet, follows:
        async with on_nats(nats_url, observed_workflow(ran), drive=False) as observer:
            ids = []
            for _ in range(4):
                started = await observer.start("observed", {})
                await observer.fire(started.id, "go")
                ids.append(started.id)
        for iid in ids:
            assert (await until(follows, iid, InstanceStatus.COMPLETED)).status is InstanceStatus.COMPLETED
        await asyncio.sleep(0.3)
        assert took_quiet == [] and sorted(took_follows) == sorted(ids)
        assert len(ran) == len(ids) and quiet.conflicts == follows.conflicts == 0
    await drop_streams(nats_url)


async def test_an_instance_left_to_an_engine_that_went_silent_is_taken_up_when_it_is_found_gone(
    nats_url: str,
) -> None:
    """Found in a walk-through (kill -9 of one of two serves): the observer's instance was chosen for the engine
    that had died, nobody answered, the observer went on with it and closed, cancelling its action; the instance
    stayed running with nobody driving it. The survivor now takes it up once it finds the other gone."""
    import zlib

    await drop_streams(nats_url)
    finished: list[str] = []
    wf = Workflow("left_behind")
    a, b, c = wf.states("a", "b", "c")
    wf.flow(a >> b, "go", trigger="manual")

    @wf.flow(b >> c, "work")
    async def work(token):
        await asyncio.sleep(0.5)
        finished.append(token.instance_id)
        return {}

    silent, survivor = drivers(nats_url, wf, 2, 0.3)
    async with silent, survivor:
        # As if its process froze: no heartbeat, no answer to pokes (its peers find it gone after 3 heartbeats).
        assert silent.store._beats is not None and silent.store._poke_sub is not None
        silent.store._beats.cancel()
        await silent.store._poke_sub.unsubscribe()
        origins = (silent.store.origin, survivor.store.origin)
        iid = next(  # an instance id the rendezvous hash gives to the silent engine
            f"left{n}"
            for n in range(1000)
            if max(origins, key=lambda o, n=n: zlib.crc32(f"{o}:left{n}".encode())) == origins[0]
        )
        async with on_nats(nats_url, wf, drive=False) as observer:
            await observer.start(wf, {}, instance_id=iid)
            await observer.fire(iid, "go")  # nobody answers: the observer goes on, then closes mid-action
        done = await until(survivor, iid, InstanceStatus.COMPLETED, seconds=10)
        assert done.status is InstanceStatus.COMPLETED and finished == [iid]  # (it may have begun on the observer)
    await drop_streams(nats_url)


def slow_work(name: str, seconds: float, finished: list[str], *, manual_first: bool = False) -> Workflow:
    """``[a --go (manual)-->] b --work--> c``: ``work`` is automatic and takes ``seconds``."""
    wf = Workflow(name)
    a, b, c = wf.states("a", "b", "c")
    if manual_first:
        wf.flow(a >> b, "go", trigger="manual")
    first = b if manual_first else a

    @wf.flow(first >> c, "work")
    async def work(token):
        await asyncio.sleep(seconds)
        finished.append(token.instance_id)
        return {}

    return wf


async def test_an_engine_leaving_does_not_make_another_drive_an_instance_an_observer_drives(nats_url: str) -> None:
    """Found in review: when any engine left, the one chosen for an observer's instance took it up while the
    observer still ran its action, and ran it a second time."""
    await drop_streams(nats_url)
    finished: list[str] = []
    wf = slow_work("observer_drives", 1.0, finished)
    staying, leaving = drivers(nats_url, wf, 2, 0.3)
    async with staying:
        await leaving.open()
        async with on_nats(nats_url, wf, drive=False) as observer:
            started = await observer.start(wf, {})  # the observer runs 'work' itself
            await leaving.close()  # (scaled down meanwhile)
            done = await observer.wait(started.id, timeout=5)
        assert done.status is InstanceStatus.COMPLETED and finished == [started.id] and staying.conflicts == 0
    await drop_streams(nats_url)


async def test_an_observer_whose_caller_gives_up_while_it_asks_for_a_driver_still_hands_the_instance_over(
    nats_url: str,
) -> None:
    """Found in review: the caller's timeout during the hand-over left the observer believing it did not drive
    the instance, so neither it nor anybody went on with it."""
    await drop_streams(nats_url)
    finished: list[str] = []
    wf = slow_work("given_up", 0.2, finished, manual_first=True)
    first, second = drivers(nats_url, wf, 2, 0.2)
    async with first, second:
        async with on_nats(nats_url, wf, drive=False) as observer:
            started = await observer.wait((await observer.start(wf, {})).id, timeout=5)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(observer.fire(started.id, "go"), 0.2)  # (while it asks: 0.5 s per ask)
            done = await until(observer, started.id, InstanceStatus.COMPLETED, seconds=5)
        assert done.status is InstanceStatus.COMPLETED and finished == [started.id]
        assert first.conflicts == second.conflicts == 0
    await drop_streams(nats_url)


async def test_an_instance_an_observer_left_behind_is_driven_by_one_engine_after_the_safety_net(
    nats_url: str,
) -> None:
    """An observer starts an instance and dies while its action runs: nobody was asked to drive it, so after the
    safety net (60 heartbeats) the one engine chosen for it does; found in review: every engine did."""
    await drop_streams(nats_url)
    finished: list[str] = []
    wf = slow_work("left_by_a_script", 0.5, finished)
    engines = drivers(nats_url, wf, 3, 0.05)
    async with contextlib.AsyncExitStack() as stack:
        for engine in engines:
            await stack.enter_async_context(engine)
        observer = on_nats(nats_url, wf, drive=False)
        await observer.open()
        started = await observer.start(wf, {})
        await asyncio.sleep(0.1)
        await observer._close()  # (as if its process died: its action ends, and it hands nothing over)
        done = await engines[0].wait(started.id, timeout=15)
        await asyncio.sleep(0.6)  # (time for a second engine to finish 'work' too)
        assert done.status is InstanceStatus.COMPLETED and finished == [started.id]
        assert sum(e.conflicts for e in engines) == 0
    await drop_streams(nats_url)


async def test_an_observer_that_closes_hands_over_what_it_still_drives(nats_url: str) -> None:
    """Found in a walk-through: closed while it asked for a driver, the observer's fire failed ('store not open')
    and the instance waited ten minutes for the safety net; closed while its own action ran (a script), five."""
    await drop_streams(nats_url)
    finished: list[str] = []
    wf = slow_work("closing_observer", 0.3, finished, manual_first=True)
    wf2 = slow_work("closing_script", 1.0, finished)
    first, second = (Engine(store=JetStreamStore(servers=[nats_url]), workflows=[wf, wf2]) for _ in range(2))
    async with first, second:
        observer = on_nats(nats_url, wf, drive=False)
        await observer.open()
        asked = (await observer.wait((await observer.start(wf, {})).id, timeout=5)).id
        firing = asyncio.create_task(observer.fire(asked, "go"))
        await asyncio.sleep(0.2)  # (it is asking the drivers)
        await observer.close()
        fired = await firing
        assert [t.place for t in fired.tokens] == ["b"]
        done = await until(first, asked, InstanceStatus.COMPLETED, seconds=5)
        assert done.status is InstanceStatus.COMPLETED

        async with on_nats(nats_url, wf2, drive=False) as script:
            ran = (await script.start(wf2, {})).id  # it runs 'work' itself, and closes meanwhile
        done = await until(first, ran, InstanceStatus.COMPLETED, seconds=5)
        assert done.status is InstanceStatus.COMPLETED
        await asyncio.sleep(0.3)
        assert sorted(finished) == sorted([asked, ran]) and first.conflicts == second.conflicts == 0
    await drop_streams(nats_url)


async def test_malformed_pokes_are_ignored(nats_url: str) -> None:
    import nats

    from circuit_breaker.nats._subjects import POKE_SUBJECT

    await drop_streams(nats_url)
    async with on_nats(nats_url, observed_workflow()) as driver:
        nc = await nats.connect(nats_url)
        try:
            for body in (b"", b"\xff\xfe", b"[1]", b"null", b"3", b'{"instance_id": 1}', b"[" * 100_000):
                with contextlib.suppress(nats.errors.TimeoutError, nats.errors.NoRespondersError):
                    await nc.request(POKE_SUBJECT, body, timeout=0.2)
        finally:
            await nc.close()
        started = await driver.start("observed", {})  # still working
        assert (await driver.wait(started.id, timeout=5)).status is InstanceStatus.WAITING
    await drop_streams(nats_url)


async def test_a_store_used_on_its_own_says_nothing_on_the_poke_subject(nats_url: str) -> None:
    """Only an observer engine's own changes are handed over: a store used directly (a tool, a benchmark) says
    nothing on the poke subject."""
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
