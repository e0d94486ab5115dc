"""Durability on a real nats-server: engine processes racing, kill -9 and restart, replay equals live.

Exactly once is checked on the stored events themselves: every instance has contiguous versions and each
transition fired once, whatever the number of engines, crashes and action re-runs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from circuit_breaker import Engine, InstanceStatus, Workflow
from circuit_breaker.events import EventType, TokenInjected, TransitionFired
from circuit_breaker.nats import JetStreamStore
from circuit_breaker.token import History, HistoryEntry, Token, new_id, utcnow
from tests.conftest import drop_streams
from tests.nats.relay_workflow import workflow as relay

ROOT = Path(__file__).resolve().parents[2]
RUN_ENGINE = Path(__file__).with_name("run_engine.py")


@pytest.fixture
async def url(nats_url: str) -> str:
    await drop_streams(nats_url)
    return nats_url


def engine_process(url: str, log: Path, *args: str, delay: float = 0.01, jitter: float = 0.0) -> subprocess.Popen[str]:
    env = {**os.environ, "RELAY_LOG": str(log), "RELAY_DELAY": str(delay), "RELAY_JITTER": str(jitter)}
    return subprocess.Popen(
        [sys.executable, str(RUN_ENGINE), url, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"engine process exited {proc.returncode}: {err[-3000:]}"
    return out


async def store_waiting_instances(url: str, count: int) -> list[str]:
    """Instances as an injection leaves them: a token in ``start``, nothing fired yet."""
    ids = []
    store = JetStreamStore(servers=[url])
    await store.open()
    try:
        for _ in range(count):
            iid, now = new_id(), utcnow()
            entry = HistoryEntry(time=now, kind="created", to_places=("start",))
            token = Token(id=new_id(), instance_id=iid, place="start", data={}, history=History().append(entry))
            await store.append(TokenInjected(workflow="relay", instance_id=iid, seq=1, token=token), 0)
            ids.append(iid)
    finally:
        await store.close()
    return ids


async def stored_events(url: str) -> dict[str, list[object]]:
    store = JetStreamStore(servers=[url])
    await store.open()
    by_instance: dict[str, list[object]] = {}
    try:
        async for event in store.replay(workflow="relay"):
            by_instance.setdefault(event.instance_id, []).append(event)
    finally:
        await store.close()
    return by_instance


def assert_each_firing_applied_once(events: dict[str, list[object]], ids: list[str]) -> None:
    assert sorted(events) == sorted(ids)
    for iid, evs in events.items():
        assert [e.seq for e in evs] == list(range(1, len(evs) + 1)), f"{iid}: versions not contiguous"  # type: ignore[attr-defined]
        fired = Counter(e.transition for e in evs if isinstance(e, TransitionFired))
        assert fired == {"first": 1, "second": 1}, f"{iid}: {fired}"
        assert evs[-1].type is EventType.INSTANCE_COMPLETED  # type: ignore[attr-defined]


def action_runs(log: Path) -> Counter[tuple[str, str]]:
    lines = log.read_text().split("\n") if log.exists() else []
    return Counter((line.split()[0], line.split()[1]) for line in lines if line)


async def test_two_engine_processes_racing_on_1000_instances_apply_each_firing_once(url: str, tmp_path: Path) -> None:
    ids = await store_waiting_instances(url, 1000)
    log, go = tmp_path / "actions.log", tmp_path / "go"
    engines = [engine_process(url, log, "--go-file", str(go), delay=0.0, jitter=0.5) for _ in range(2)]
    for proc in engines:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "waiting"
    go.touch()
    outputs = [finish(p, timeout=240) for p in engines]
    assert all("done 1000" in out for out in outputs), outputs

    events = await stored_events(url)
    assert_each_firing_applied_once(events, ids)
    committed_by = Counter(
        e.produced[0].data["first_by"]
        for evs in events.values()
        for e in evs
        if isinstance(e, TransitionFired) and e.transition == "first"
    )
    assert set(committed_by) == {p.pid for p in engines}, f"both engines won some firings: {committed_by}"
    runs = action_runs(log)
    assert all(runs[(iid, "first")] >= 1 for iid in ids)


async def test_an_engine_killed_mid_run_loses_nothing_when_restarted(url: str, tmp_path: Path) -> None:
    log = tmp_path / "actions.log"
    first = engine_process(url, log, "--start", "200", delay=0.5)
    assert first.stdout is not None
    assert first.stdout.readline().strip() == "ready"
    await asyncio.sleep(0.7)  # "first" has fired for most, "second" actions are in flight
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL

    partial = await stored_events(url)
    assert len(partial) == 200
    unfinished = [iid for iid, evs in partial.items() if evs[-1].type is not EventType.INSTANCE_COMPLETED]  # type: ignore[attr-defined]
    assert unfinished, "the kill came mid-run"

    second = engine_process(url, log, delay=0.01)
    assert "done 200" in finish(second)
    events = await stored_events(url)
    assert_each_firing_applied_once(events, list(partial))
    runs = action_runs(log)
    assert all(runs[(iid, t)] >= 1 for iid in events for t in ("first", "second"))
    keys = {}
    for line in log.read_text().splitlines():
        iid, transition, _pid, key = line.split()
        assert keys.setdefault((iid, transition), key) == key, "a re-run action gets the same idempotency key"


async def test_a_fresh_engine_rebuilds_every_instance_exactly_from_the_stream(url: str) -> None:
    wf = Workflow("rebuilt", error_place="broken")
    a, b, c, broken = wf.states("a", "b", "c", "broken")

    @wf.flow(a >> b, "work")
    def work(token: Token) -> dict[str, object]:
        if token.data.get("explode"):
            raise ValueError("boom")
        return {"worked": True}

    wf.flow(b >> c, "finish", trigger="manual")
    wf.flow(broken >> a, "repair", trigger="manual")
    async with Engine(store=JetStreamStore(servers=[url]), workflows=[wf]) as live:
        started = [await live.start(wf, {"n": n, "explode": n % 3 == 0}) for n in range(12)]
        for inst in started:
            await live.wait(inst.id, timeout=10)
        await live.fire(started[1].id, "finish", actor="ann")
        await live.pause(started[2].id, actor="bob")
        before = {i.id: i for i in await live.instances("rebuilt")}
    async with Engine(store=JetStreamStore(servers=[url]), workflows=[wf]) as fresh:
        after = {i.id: i for i in await fresh.instances("rebuilt")}
    assert after == before
    assert after[started[1].id].status is InstanceStatus.COMPLETED
    assert after[started[0].id].places == ["broken"]


async def test_an_engine_follows_instances_another_engine_drives(url: str) -> None:
    wf = Workflow("shared")
    a, b, c = wf.states("a", "b", "c")
    wf.flow(a >> b, "submit", trigger="manual")
    wf.flow(b >> c, "approve", trigger="manual")
    async with (
        Engine(store=JetStreamStore(servers=[url]), workflows=[wf]) as one,
        Engine(store=JetStreamStore(servers=[url]), workflows=[wf]) as two,
    ):
        inst = await one.start(wf, {"k": 1})
        for _ in range(100):
            if inst.id in {i.id for i in await two.instances()}:
                break
            await asyncio.sleep(0.02)
        await two.fire(inst.id, "submit", actor="on-two")
        await one.fire(inst.id, "approve", actor="on-one")  # one learnt of two's firing before judging
        done = await one.wait(inst.id, timeout=5)
        assert done.status is InstanceStatus.COMPLETED
        assert [e.actor for e in done.history if e.kind == "fired"] == ["on-two", "on-one"]
        for _ in range(100):  # and two follows along
            if (await two.get(inst.id)).status is InstanceStatus.COMPLETED:
                break
            await asyncio.sleep(0.02)
        assert await two.get(inst.id) == done


async def test_engines_that_do_not_follow_each_other_still_apply_each_firing_once(url: str) -> None:
    ids = await store_waiting_instances(url, 100)
    stores = [JetStreamStore(servers=[url]), JetStreamStore(servers=[url])]
    async with (
        Engine(store=stores[0], workflows=[relay], follow=False) as one,
        Engine(store=stores[1], workflows=[relay], follow=False) as two,
    ):
        for iid in ids:  # both drive every instance: only conflicts tell them about each other
            a, b = await one.wait(iid, timeout=30), await two.wait(iid, timeout=30)
            assert InstanceStatus.COMPLETED in (a.status, b.status)
    assert_each_firing_applied_once(await stored_events(url), ids)
