"""Marks: an engine opens by replaying only the instances that can still go on. A driving engine stores, per
workflow, the position below which every instance that began there has finished (KV bucket ``CB_MARKS``); the
next engine replays the event stream from there. Checked against a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.js.api import KeyValueConfig
from nats.js.errors import NotFoundError

from circuit_breaker import Engine, InstanceStatus, Workflow
from circuit_breaker.errors import StreamConfigError
from circuit_breaker.nats import JetStreamStore
from circuit_breaker.nats._subjects import MARKS_BUCKET
from tests.conftest import drop_streams
from tests.nats.test_engines_sharing import store_unstarted

FAST = 0.1  # seconds between marks in these tests


@pytest.fixture
async def url(nats_url: str) -> AsyncIterator[str]:
    await drop_streams(nats_url)
    yield nats_url
    await drop_streams(nats_url)


def review() -> Workflow:
    wf = Workflow("marked")
    draft, pending, done = wf.states("draft", "pending", "done")
    wf.flow(draft >> pending, "submit")
    wf.flow(pending >> done, "approve", trigger="manual")
    return wf


def engine(url: str, **options: Any) -> Engine:
    return Engine(store=JetStreamStore(servers=[url]), workflows=[review()], **options)


async def finished(eng: Engine, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        inst = await eng.wait((await eng.start("marked", {})).id, timeout=5)
        await eng.fire(inst.id, "approve")
        ids.append(inst.id)
    return ids


async def began_at(url: str, instance_id: str) -> int:
    nc = await nats.connect(url)
    try:
        msg = await nc.jetstream().get_last_msg("CB_EVENTS", f"cb.ev.marked.{instance_id}.token_injected")
        return int(msg.seq)
    finally:
        await nc.close()


async def stored_mark(url: str) -> int:
    async with JetStreamStore(servers=[url]) as store:
        return await store.read_mark("marked")


async def mark_reaches(url: str, wanted: int) -> None:
    for _ in range(100):
        if await stored_mark(url) == wanted:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the mark is {await stored_mark(url)}, not {wanted}")


async def some_mark(url: str) -> int:
    for _ in range(100):
        if mark := await stored_mark(url):
            return mark
        await asyncio.sleep(0.05)
    raise AssertionError("no mark was stored")


async def test_the_mark_stops_below_the_oldest_unfinished_instance_and_the_next_engine_starts_there(url: str) -> None:
    async with engine(url, mark_every=FAST) as first:
        early = await finished(first, 4)
        waiting = (await first.wait((await first.start("marked", {})).id, timeout=5)).id
        late = await finished(first, 3)
        await mark_reaches(url, await began_at(url, waiting) - 1)

    async with engine(url) as second:
        assert set(second._runs) == {waiting, *late}, "only what began from the mark on is replayed"
        old = await second.get(early[0])  # read back by id
        assert old.status is InstanceStatus.COMPLETED and old.places == ["done"]
        assert (await second.fire(waiting, "approve")).places == ["done"]
        assert (await second.wait(waiting, timeout=5)).status is InstanceStatus.COMPLETED

    async with engine(url, mark_every=FAST):  # nothing unfinished: the mark moves to the end
        nc = await nats.connect(url)
        try:
            end = (await nc.jetstream().stream_info("CB_EVENTS")).state.last_seq
        finally:
            await nc.close()
        await mark_reaches(url, end)
    async with engine(url) as fourth:
        assert fourth._runs == {}
        assert (await fourth.get(late[-1])).status is InstanceStatus.COMPLETED


async def test_an_instance_begun_by_a_writer_nobody_follows_holds_the_mark_and_is_not_lost(url: str) -> None:
    async with engine(url, mark_every=FAST) as eng:
        await finished(eng, 2)
        stray = await store_unstarted(url, "marked", "draft")  # no engine announced it
        after = await finished(eng, 2)
        await mark_reaches(url, await began_at(url, stray) - 1)
        run = eng._runs[stray]
        assert run.status is InstanceStatus.RUNNING and not run.local, "read in, left to whoever drives it"
        assert set(after) <= set(eng._runs)
    async with engine(url) as next_engine:  # it began above the mark: loaded, and driven from there
        assert (await next_engine.wait(stray, timeout=5)).places == ["pending"]


async def test_a_mark_of_an_earlier_stream_of_the_same_name_is_ignored(url: str) -> None:
    async with engine(url, mark_every=FAST) as eng:
        await finished(eng, 3)
        await some_mark(url)
    await drop_streams(url)  # the events are gone; the bucket keeps the old mark
    async with engine(url) as fresh:
        ids = await finished(fresh, 2)
    async with JetStreamStore(servers=[url]) as store:
        assert await store.read_mark("marked") == 0, "taken on another stream"
    async with engine(url) as reopened:
        assert set(reopened._runs) == set(ids)


async def test_an_observer_still_lists_the_whole_history(url: str) -> None:
    async with engine(url, mark_every=FAST) as eng:
        ids = await finished(eng, 3)
        await some_mark(url)
    async with engine(url, drive=False) as observer:
        listed = await observer.instances("marked", "completed")
        assert {i.id for i in listed} == set(ids)


async def test_the_marks_bucket_is_made_once_and_an_incompatible_one_is_refused(url: str) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    try:
        async with JetStreamStore(servers=[url]), JetStreamStore(servers=[url]):
            pass  # opened twice: the second finds the bucket
        info = await js.stream_info(f"KV_{MARKS_BUCKET}")
        assert info.config.max_age in (None, 0) and info.config.storage == "file"
        await js.delete_key_value(MARKS_BUCKET)
        await js.create_key_value(KeyValueConfig(bucket=MARKS_BUCKET, ttl=3600))
        store = JetStreamStore(servers=[url], startup_wait=1)
        with pytest.raises(StreamConfigError) as refused:
            await store.open()
        assert f"KV_{MARKS_BUCKET}" in str(refused.value) and "max_age" in str(refused.value)
        await store.close()
    finally:
        with contextlib.suppress(NotFoundError):
            await js.delete_key_value(MARKS_BUCKET)  # the next store makes it again, as it should be
        await nc.close()


async def test_a_workflow_registered_after_open_is_marked_only_once_loaded(url: str) -> None:
    """Found in review: the marker worked on a workflow registered after open while its load still ran, and
    stored a mark above an unfinished instance the load had not reached yet: a restart never loaded it."""
    stray = await store_unstarted(url, "marked", "draft")  # unfinished, early in the stream
    async with engine(url, mark_every=0) as first:
        await finished(first, 3)
    store = JetStreamStore(servers=[url])
    replay_after = store.replay_after

    async def slow(workflow: str, after: int) -> AsyncIterator[tuple[Any, int]]:
        async for item in replay_after(workflow, after):
            await asyncio.sleep(0.1)  # a long history
            yield item

    store.replay_after = slow  # type: ignore[method-assign]
    async with Engine(store=store, mark_every=FAST) as late:
        late.register(review())  # loads while the marker runs
        await asyncio.sleep(0.6)
        assert await stored_mark(url) < await began_at(url, stray)
        assert (await late.wait(stray, timeout=10)).places == ["pending"]  # loaded, and driven
        await asyncio.sleep(5 * FAST)  # a few passes of the marker
        assert await stored_mark(url) < await began_at(url, stray), "it waits at pending: unfinished"
