"""Memory stays bounded however long an engine runs: beyond ``keep_finished`` finished instances, an instance
leaves memory, and get(), wait(), instances() and the metrics still answer for it from the store. Both stores."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from pydantic import ValidationError

from circuit_breaker import Engine, Instance, InstanceStatus, Workflow
from circuit_breaker.cli._durable import project_engine
from circuit_breaker.config import Settings
from circuit_breaker.engine._metrics import EngineMetrics
from circuit_breaker.errors import InstanceExistsError, InstanceStateError
from circuit_breaker.nats import JetStreamStore
from circuit_breaker.store import MemoryStore, Store
from tests.conftest import drop_streams

KEEP = 3


def review() -> Workflow:
    wf = Workflow("finishing")
    draft, pending, done, dropped = wf.states("draft", "pending", "done", "dropped")
    wf.flow(draft >> pending, "submit")
    wf.flow(pending >> done, "approve", trigger="manual")
    wf.flow(pending >> dropped, "drop", trigger="manual")
    return wf


@pytest.fixture(params=["memory", "jetstream"])
async def store_factory(request: pytest.FixtureRequest, nats_url: str) -> AsyncIterator[Callable[[], Store]]:
    """A maker of stores that all see the same stored events (a fresh engine reads what an earlier one wrote)."""
    if request.param == "memory":
        shared = MemoryStore()
        yield lambda: shared
        return
    await drop_streams(nats_url)
    yield lambda: JetStreamStore(servers=[nats_url])
    await drop_streams(nats_url)


async def finish(engine: Engine, count: int, seen: dict[str, Instance] | None = None) -> list[str]:
    """``count`` instances approved to the end; ``seen`` gets each as the engine held it when it finished."""
    ids = []
    for i in range(count):
        inst = await engine.wait((await engine.start("finishing", {"n": i})).id, timeout=5)
        await engine.fire(inst.id, "approve", actor="ann")
        if seen is not None:
            seen[inst.id] = await engine.wait(inst.id, timeout=5)
        ids.append(inst.id)
    return ids


def same(read_back: Instance, live: Instance) -> None:
    assert read_back.model_dump(exclude={"history"}) == live.model_dump(exclude={"history"})
    assert [e.model_dump() for e in read_back.history] == [e.model_dump() for e in live.history]


def in_memory(engine: Engine) -> set[str]:
    return set(engine._runs)


async def test_finished_instances_beyond_the_limit_leave_memory_and_are_read_back(
    store_factory: Callable[[], Store],
) -> None:
    async with Engine(store=store_factory(), workflows=[review()], keep_finished=KEEP) as engine:
        live: dict[str, Instance] = {}
        finished = await finish(engine, 8, live)
        waiting = (await engine.wait((await engine.start("finishing", {"n": 99})).id, timeout=5)).id
        kept = in_memory(engine)
        assert waiting in kept, "unfinished instances always stay"
        assert kept - {waiting} == set(finished[-KEEP:]), "the most recently finished ones stay"

        oldest = await engine.get(finished[0])  # read back from the store: the same as when it finished
        assert oldest.status is InstanceStatus.COMPLETED and oldest.places == ["done"]
        same(oldest, live[finished[0]])
        assert any(e.actor == "ann" and e.transition == "approve" for e in oldest.history)
        assert (await engine.wait(finished[1], timeout=1)).status is InstanceStatus.COMPLETED

        listed = await engine.instances("finishing", "completed")
        assert sorted(i.id for i in listed) == sorted(finished)
        assert {i.id for i in await engine.instances()} == {*finished, waiting}
        assert len(in_memory(engine)) <= KEEP + 1, "a listing reads back without keeping"

        with pytest.raises(InstanceExistsError):
            await engine.start("finishing", {}, instance_id=finished[0])
        with pytest.raises(InstanceStateError):
            await engine.fire(finished[0], "drop")


async def test_an_engine_that_opens_on_a_long_history_keeps_only_the_recent_finished_ones(
    store_factory: Callable[[], Store],
) -> None:
    async with Engine(store=store_factory(), workflows=[review()]) as first:
        finished = await finish(first, 7)
        waiting = (await first.wait((await first.start("finishing", {"n": 99})).id, timeout=5)).id
        cancelled = (await first.start("finishing", {"n": 100})).id
        await first.wait(cancelled, timeout=5)
        await first.cancel(cancelled, reason="not needed")
        before = {i: await first.get(i) for i in (*finished, waiting, cancelled)}

    async with Engine(store=store_factory(), workflows=[review()], keep_finished=KEEP) as engine:
        assert in_memory(engine) == {waiting, *(finished + [cancelled])[-KEEP:]}
        for iid, was in before.items():
            same(await engine.get(iid), was)
        done = await engine.fire(waiting, "approve")  # the unfinished one goes on
        assert done.places == ["done"]
        assert (await engine.wait(waiting, timeout=5)).status is InstanceStatus.COMPLETED
        assert waiting in in_memory(engine) and len(in_memory(engine)) == KEEP


async def test_the_metrics_still_count_the_instances_that_left_memory(store_factory: Callable[[], Store]) -> None:
    async with Engine(store=store_factory(), workflows=[review()], keep_finished=1) as engine:
        await finish(engine, 4)
        text = EngineMetrics(engine).render().decode()
        assert 'cb_engine_instances{status="completed",workflow="finishing"} 4.0' in text


async def test_an_instance_read_back_while_another_ends_is_not_lost(store_factory: Callable[[], Store]) -> None:
    """Reading back and finishing at the same time (many callers at once) keeps every answer right."""
    async with Engine(store=store_factory(), workflows=[review()], keep_finished=0) as engine:
        finished = await finish(engine, 5)
        seen = await asyncio.gather(*(engine.get(i) for i in finished * 3))
        assert all(i.status is InstanceStatus.COMPLETED for i in seen)
        assert len(in_memory(engine)) <= 1


def test_keep_finished_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="keep_finished"):
        Engine(keep_finished=-1)
    with pytest.raises(ValueError, match="remember_finished"):
        Engine(remember_finished=-1)


async def test_what_is_remembered_of_finished_instances_is_bounded_too(store_factory: Callable[[], Store]) -> None:
    """Out of memory an instance costs its id, workflow and status: bounded by ``remember_finished`` as well, so a
    serving engine's memory does not grow with every instance it ever finished. What it forgot, the store still
    answers: get() by id, a listing (a replay of the workflow's events), a second start with the same id."""
    async with Engine(store=store_factory(), workflows=[review()], keep_finished=0, remember_finished=2) as engine:
        live: dict[str, Instance] = {}
        finished = await finish(engine, 8, live)
        dropped = (await engine.wait((await engine.start("finishing", {"n": 8})).id, timeout=5)).id
        await engine.cancel(dropped, reason="not needed")
        waiting = (await engine.wait((await engine.start("finishing", {"n": 9})).id, timeout=5)).id
        assert len(engine._archived) <= 2 and len(in_memory(engine)) <= 2

        same(await engine.get(finished[0]), live[finished[0]])  # forgotten, read back by id
        listed = {i.id: i for i in await engine.instances("finishing", "completed")}
        assert listed.keys() == set(finished)
        for iid in finished:
            same(listed[iid], live[iid])
        assert {i.id for i in await engine.instances()} == {*finished, dropped, waiting}
        assert [i.id for i in await engine.instances(status="cancelled")] == [dropped]
        assert [i.id for i in await engine.instances(status="waiting")] == [waiting]
        assert len(in_memory(engine)) <= 3, "a listing reads back without keeping"
        with pytest.raises(InstanceExistsError):
            await engine.start("finishing", {}, instance_id=finished[1])

        text = EngineMetrics(engine).render().decode()  # what is remembered, and what is in memory
        counted = sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("cb_engine_instances{")
        )
        assert counted == len(engine._archived) + len(in_memory(engine))

    async with Engine(store=store_factory(), workflows=[review()], keep_finished=0, remember_finished=2) as again:
        assert len(again._archived) <= 2 and in_memory(again) == {waiting}  # opening on the history: the same bound
        positions = again.store._last if isinstance(again.store, JetStreamStore) else {}
        assert set(positions) <= {waiting}  # (found in review: the store kept the position of each forgotten one)
        assert {i.id for i in await again.instances("finishing", "completed")} == set(finished)
        assert set(positions) <= {waiting}


async def test_a_listing_counts_each_instance_once_while_others_finish_meanwhile() -> None:
    """Found in review: replaying a workflow whose finished instances were forgotten, the listing skipped the
    instances in memory as it reached them, so one that left memory meanwhile was listed twice."""

    class SlowReplay(MemoryStore):  # (suspends between events, as JetStream's replay does)
        async def replay(self, *, workflow: str | None = None, instance_id: str | None = None) -> AsyncIterator[Any]:
            async for event in super().replay(workflow=workflow, instance_id=instance_id):
                await asyncio.sleep(0)
                yield event

    async with Engine(store=SlowReplay(), workflows=[review()], keep_finished=1, remember_finished=1) as engine:
        finished = await finish(engine, 6)
        pending = (await engine.wait((await engine.start("finishing", {"n": 99})).id, timeout=5)).id
        listing = asyncio.create_task(engine.instances("finishing"))
        await asyncio.sleep(0)  # (the listing took what is in memory and began the replay)
        await engine.fire(pending, "approve")  # finishes: the last of the others leaves memory meanwhile
        listed = [i.id for i in await listing]
        assert sorted(listed) == sorted([*finished, pending])


async def test_a_long_listing_of_finished_instances_is_read_back_in_one_pass(
    store_factory: Callable[[], Store],
) -> None:
    async with Engine(store=store_factory(), workflows=[review()], keep_finished=0) as engine:
        live: dict[str, Instance] = {}
        finished = await finish(engine, 60, live)  # more than are read back one by one
        listed = {i.id: i for i in await engine.instances(status="completed")}
        assert listed.keys() == set(finished)
        for iid in finished:
            same(listed[iid], live[iid])
        assert len(in_memory(engine)) <= 1


async def test_a_served_engine_keeps_as_many_as_cb_keep_finished_says(
    nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CB_KEEP_FINISHED", "7")
    monkeypatch.setenv("CB_REMEMBER_FINISHED", "70")
    monkeypatch.setenv("CB_MARK_EVERY", "12.5")
    settings = Settings()
    (tmp_path / "workflows").mkdir()
    nc = await nats.connect(nats_url)
    try:
        async with project_engine(nc, settings, tmp_path, drive=False) as engine:
            assert engine.keep_finished == 7 and engine.mark_every == 12.5
            assert engine._archived.limit == 70
    finally:
        await nc.close()
    monkeypatch.setenv("CB_KEEP_FINISHED", "-1")
    with pytest.raises(ValidationError, match="keep_finished"):
        Settings()
