"""An engine that dies for good: the engines still running take over the instances it was driving."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from circuit_breaker import Engine, EventType, InstanceStatus, Workflow
from circuit_breaker.nats import JetStreamStore
from tests.conftest import drop_streams
from tests.nats.relay_workflow import workflow
from tests.nats.test_durability import engine_process

ROOT = Path(__file__).resolve().parents[2]
RUN_ENGINE = Path(__file__).with_name("run_engine.py")


def reap(proc: subprocess.Popen[str]) -> None:
    """Kill the engine process if it still runs, and close its pipes."""
    if proc.poll() is None:
        proc.kill()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


async def until_completed(engine: Engine, count: int, timeout: float) -> list[object]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        done = [i for i in await engine.instances("relay") if i.status is InstanceStatus.COMPLETED]
        if len(done) == count or loop.time() > deadline:
            return done
        await asyncio.sleep(0.1)


async def test_a_live_engine_takes_over_the_instances_of_an_engine_killed_for_good(
    nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await drop_streams(nats_url)
    log = tmp_path / "actions.log"
    monkeypatch.setenv("RELAY_LOG", str(log))  # the survivor's actions log their runs too
    store = JetStreamStore(servers=[nats_url], heartbeat=0.5)
    async with Engine(store=store, workflows=[workflow]) as survivor:
        doomed = engine_process(nats_url, log, "--start", "20", "--heartbeat", "0.5", delay=1.0)
        try:
            assert doomed.stdout is not None and doomed.stdout.readline().strip() == "ready"
            await asyncio.sleep(0.4)  # its first actions are running
            doomed.send_signal(signal.SIGKILL)
            doomed.wait(10)
        finally:
            reap(doomed)
        known = await survivor.instances("relay")
        assert len(known) == 20 and not any(i.status is InstanceStatus.COMPLETED for i in known)
        done = await until_completed(survivor, 20, timeout=30)
        assert len(done) == 20, "every instance of the dead engine was finished by the survivor"
        fired = Counter(
            [(e.instance_id, e.transition) async for e in survivor.events(types=[EventType.TRANSITION_FIRED])]
        )
        assert len(fired) == 40 and set(fired.values()) == {1}, "each firing applied once"
    runs = Counter(line.split()[2] for line in log.read_text().splitlines())
    assert runs.get(str(os.getpid()), 0) >= 20, f"the survivor ran the actions: {runs}"
    await drop_streams(nats_url)


async def test_an_engine_closed_cleanly_hands_its_instances_over_at_once(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await drop_streams(nats_url)
    monkeypatch.setenv("RELAY_DELAY", "0.5")  # actions still running when the first engine leaves
    leaving = Engine(store=JetStreamStore(servers=[nats_url]), workflows=[workflow])
    async with Engine(store=JetStreamStore(servers=[nats_url]), workflows=[workflow]) as staying:
        await leaving.open()
        ids = [(await leaving.start(workflow, {})).id for _ in range(5)]
        for _ in range(50):  # the staying engine follows them
            if len(await staying.instances("relay")) == 5:
                break
            await asyncio.sleep(0.05)
        assert not any(i.status is InstanceStatus.COMPLETED for i in await staying.instances("relay"))
        await leaving.close()  # scaled down mid-run: says bye, so no heartbeat timeout is waited for
        done = await asyncio.gather(*(staying.wait(i, timeout=4) for i in ids))  # heartbeats: 5 s apart
        assert all(i.status is InstanceStatus.COMPLETED for i in done)
    await drop_streams(nats_url)


async def test_the_engines_left_share_the_orphans_and_run_each_step_once(
    nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await drop_streams(nats_url)
    log = tmp_path / "actions.log"
    monkeypatch.setenv("RELAY_LOG", str(log))
    monkeypatch.setenv("RELAY_DELAY", "0.3")
    leaving = Engine(store=JetStreamStore(servers=[nats_url]), workflows=[workflow])
    async with (
        Engine(store=JetStreamStore(servers=[nats_url]), workflows=[workflow]) as first,
        Engine(store=JetStreamStore(servers=[nats_url]), workflows=[workflow]) as second,
    ):
        await leaving.open()
        ids = [(await leaving.start(workflow, {})).id for _ in range(20)]
        for _ in range(100):
            if len(await first.instances("relay")) == len(await second.instances("relay")) == 20:
                break
            await asyncio.sleep(0.05)
        await leaving.close()  # its first actions were cut short: they run again, once, on one of the two
        done = await asyncio.gather(*(first.wait(i, timeout=10) for i in ids))
        assert all(i.status is InstanceStatus.COMPLETED for i in done)
        local = [sum(r.local for r in e._runs.values()) for e in (first, second)]
        assert sum(local) == 20 and min(local) > 0, f"both engines took a share: {local}"
    runs = Counter(tuple(line.split()[:2]) for line in log.read_text().splitlines())
    assert len(runs) == 40 and set(runs.values()) == {1}, "no action ran twice for one firing"
    await drop_streams(nats_url)


async def test_after_a_stall_heals_one_engine_drives_each_instance_again(
    nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engine held up (SIGSTOP: a partition, a long GC pause) is taken over; when it comes back, the last writer
    of each instance drives it and the other steps aside, so the steps after that run once, not on both."""
    await drop_streams(nats_url)
    log = tmp_path / "actions.log"
    monkeypatch.setenv("RELAY_LOG", str(log))
    monkeypatch.setenv("RELAY_DELAY", "1.5")  # the survivor's re-run of "first" is still going on at the heal
    store = JetStreamStore(servers=[nats_url], heartbeat=0.3)
    async with Engine(store=store, workflows=[workflow]) as survivor:
        stalled = engine_process(nats_url, log, "--start", "10", "--heartbeat", "0.3", delay=1.5)
        try:
            assert stalled.stdout is not None and stalled.stdout.readline().strip() == "ready"
            stalled.send_signal(signal.SIGSTOP)  # its "first" actions are running
            await asyncio.sleep(1.8)  # judged gone after 3 heartbeats; the survivor runs "first" again
            assert len([r for r in survivor._runs.values() if r.local]) == 10, "taken over"
            stalled.send_signal(signal.SIGCONT)  # back: its own "first" actions end at once and commit first
            done = await until_completed(survivor, 10, timeout=30)
            assert len(done) == 10
            assert stalled.stdout.readline().strip() == "done 10"
            stalled.wait(10)
        finally:
            reap(stalled)
        fired = Counter(
            [(e.instance_id, e.transition) async for e in survivor.events(types=[EventType.TRANSITION_FIRED])]
        )
        assert len(fired) == 20 and set(fired.values()) == {1}, "each firing applied once"
    runs = Counter((line.split()[0], line.split()[1]) for line in log.read_text().splitlines())
    seconds = [n for (_, transition), n in runs.items() if transition == "second"]
    assert len(seconds) == 10 and set(seconds) == {1}, f"after the heal one engine ran each second step: {runs}"
    await drop_streams(nats_url)


async def test_orphans_go_only_to_engines_that_take_over_their_workflow(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Engines say in their heartbeats which workflows they take over: one that runs other workflows, or one that
    never takes over (follow=False), is not chosen for an orphan it would leave alone."""
    await drop_streams(nats_url)
    monkeypatch.setenv("RELAY_DELAY", "0.5")  # actions still running when the driving engine leaves
    other = Workflow("elsewhere")
    a, b = other.states("a", "b")
    other.flow(a >> b, "go")

    def make(*workflows: Workflow, **options: Any) -> Engine:
        return Engine(store=JetStreamStore(servers=[nats_url], heartbeat=0.2), workflows=workflows, **options)

    leaving = make(workflow)
    async with make(workflow) as heir, make(other) as stranger, make(workflow, follow=False) as loner:
        await leaving.open()
        for _ in range(200):  # everyone has heard everyone's heartbeat (with what it takes over)
            if all(len(e.store._takes) >= 3 for e in (heir, stranger)):  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.02)
        assert heir.store._takes[stranger.store.origin] == {"elsewhere"}  # type: ignore[attr-defined]
        assert heir.store._takes[loner.store.origin] == set()  # type: ignore[attr-defined]
        ids = [(await leaving.start(workflow, {})).id for _ in range(20)]
        for _ in range(100):
            if len(await heir.instances("relay")) == 20:
                break
            await asyncio.sleep(0.05)
        await leaving.close()  # bye: every orphan goes to the heir, the only engine that takes relay over
        done = await asyncio.gather(*(heir.wait(i, timeout=10) for i in ids))
        assert all(i.status is InstanceStatus.COMPLETED for i in done)
    await drop_streams(nats_url)
