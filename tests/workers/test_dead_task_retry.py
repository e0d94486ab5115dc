"""Retrying dead-lettered remote tasks one at a time (what ``dlq retry`` asks of the engine), on a real JetStream
store: each task's own incident is settled when it is handed out again or ends, the instance runs again only
when nothing else failed it, and a hand-out that fails leaves everything as it was.

The workers' side is played by handing the engine the results a worker would publish (``on_result``, where the
engine's result reader delivers them): the orders and races below cannot be arranged with real workers.
"""

from __future__ import annotations

import asyncio
from typing import Any

import nats
import pytest

from circuit_breaker import Engine, EventType, InstanceStatus, Workflow
from circuit_breaker.errors import InstanceStateError, StoreError
from circuit_breaker.events import ErrorInfo
from circuit_breaker.executors import default_registry
from circuit_breaker.nats import JetStreamStore
from circuit_breaker.nats._subjects import result_subject
from circuit_breaker.tasks import Task, TaskResult
from circuit_breaker.token import utcnow
from circuit_breaker.workers import queued_task, submit_task

FAILED, RUNNING, COMPLETED = InstanceStatus.FAILED, InstanceStatus.RUNNING, InstanceStatus.COMPLETED


def split_join(name: str) -> Workflow:
    """Two remote tasks side by side (``ta``, ``tb``), joined when both are done."""
    wf = Workflow(name)
    s, a1, b1, a2, b2, done = wf.states("s", "a1", "b1", "a2", "b2", "done")
    wf.flow(s >> (a1, b1), "split")
    wf.flow(a1 >> a2, "ta").action(default_registry().create("set", values={"a": 1}), remote=True)
    wf.flow(b1 >> b2, "tb").action(default_registry().create("set", values={"b": 1}), remote=True)
    wf.flow((a2, b2) >> done, "join")
    return wf


async def answer(engine: Engine, instance_id: str, transition: str, status: str) -> str:
    """Deliver a worker's result for the instance's task of ``transition`` (its current attempt); its task id."""
    run = engine._runs[instance_id]
    remote = engine._remote()
    pending = next(p for p in run.pending.values() if p.transition == transition)
    error = None if status == "succeeded" else ErrorInfo(kind="exit_code", message="boom", retryable=True)
    result = TaskResult.answering(
        remote._task(run, pending),
        status,
        worker="test",
        started=utcnow(),
        duration=0.0,
        error=error,
        output={"ok": 1} if status == "succeeded" else None,
    )
    await remote.on_result(result)
    return pending.task_id


async def ta_dead_tb_done(engine: Engine, workflow: str) -> tuple[Any, str]:
    """A new instance whose ``ta`` was dead-lettered and ``tb`` done; the instance and ta's task id."""
    inst = await engine.start(workflow, {})
    await both_handed_out(engine, inst.id)
    ta = await answer(engine, inst.id, "ta", "dead_lettered")
    await answer(engine, inst.id, "tb", "succeeded")
    return inst, ta


async def both_handed_out(engine: Engine, instance_id: str) -> None:
    for _ in range(100):
        if len((await engine.get(instance_id)).tasks) == 2:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the two tasks were not handed out")


async def until(engine: Engine, instance_id: str, status: InstanceStatus) -> Any:
    for _ in range(150):
        inst = await engine.get(instance_id)
        if inst.status is status:
            return inst
        await asyncio.sleep(0.02)
    return await engine.get(instance_id)


def state(inst: Any) -> tuple[str, list[str], list[tuple[str, int, bool]]]:
    tasks = sorted((t.transition, t.attempt, t.dead_lettered) for t in inst.tasks)
    return inst.status.value, sorted(i.transition for i in inst.open_incidents), tasks


@pytest.fixture
async def engine(fresh_nats: str) -> Any:
    async with Engine(JetStreamStore(servers=[fresh_nats]), workflows=[split_join("two_tasks")]) as engine:
        yield engine


async def test_each_dead_task_retried_alone_settles_its_incident_and_the_last_one_lets_the_instance_go_on(
    engine: Engine,
) -> None:
    inst = await engine.start("two_tasks", {})
    await both_handed_out(engine, inst.id)
    ta = await answer(engine, inst.id, "ta", "dead_lettered")
    tb = await answer(engine, inst.id, "tb", "dead_lettered")
    assert state(await engine.get(inst.id)) == ("failed", ["ta", "tb"], [("ta", 1, True), ("tb", 1, True)])

    # ta alone: its incident is settled, tb's still fails the instance.
    assert state(await engine.retry(inst.id, "cli", task_id=ta)) == (
        "failed",
        ["tb"],
        [("ta", 2, False), ("tb", 1, True)],
    )
    await answer(engine, inst.id, "ta", "succeeded")
    assert state(await engine.get(inst.id)) == ("failed", ["tb"], [("tb", 1, True)])
    # tb: nothing else failed the instance, so it runs again, and the join fires once tb is done.
    assert state(await engine.retry(inst.id, "cli", task_id=tb)) == ("running", [], [("tb", 2, False)])
    await answer(engine, inst.id, "tb", "succeeded")
    done = await until(engine, inst.id, COMPLETED)
    assert done.status is COMPLETED and [t.place for t in done.tokens] == ["done"]


async def test_dead_tasks_that_ran_again_without_the_engine_let_the_instance_go_on_once_both_ended(
    engine: Engine,
) -> None:
    """``dlq retry`` with no engine answering publishes the task itself: no event until its result comes; that
    result settles the task's incident all the same."""
    inst = await engine.start("two_tasks", {})
    await both_handed_out(engine, inst.id)
    await answer(engine, inst.id, "ta", "dead_lettered")
    await answer(engine, inst.id, "tb", "dead_lettered")
    await answer(engine, inst.id, "ta", "succeeded")
    assert state(await engine.get(inst.id)) == ("failed", ["tb"], [("tb", 1, True)])
    await answer(engine, inst.id, "tb", "succeeded")
    assert (await until(engine, inst.id, COMPLETED)).status is COMPLETED


async def test_a_dead_letter_recorded_while_a_task_retry_waits_is_not_swept_away(engine: Engine) -> None:
    """tb's dead letter is recorded between the moment ``dlq retry`` of ta is asked and the moment it is done:
    the instance must stay failed with tb's incident, not run on with tb dead and nothing saying so."""
    inst = await engine.start("two_tasks", {})
    await both_handed_out(engine, inst.id)
    ta = await answer(engine, inst.id, "ta", "dead_lettered")
    run = engine._runs[inst.id]
    await run.lock.acquire()  # a write of the instance in progress
    tb_dead = asyncio.create_task(answer(engine, inst.id, "tb", "dead_lettered"))
    await asyncio.sleep(0.05)
    retried = asyncio.create_task(engine.retry(inst.id, "cli", task_id=ta))
    await asyncio.sleep(0.05)
    run.lock.release()
    await tb_dead
    await retried
    await answer(engine, inst.id, "ta", "succeeded")
    await asyncio.sleep(0.2)
    assert state(await engine.get(inst.id)) == ("failed", ["tb"], [("tb", 1, True)])


async def test_a_task_retry_whose_hand_out_fails_leaves_the_instance_failed_and_can_be_asked_again(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    inst, ta = await ta_dead_tb_done(engine, "two_tasks")
    remote = engine._remote()
    again = remote._again

    async def store_down(*args: Any, **kwargs: Any) -> None:
        raise StoreError("no acknowledgement after 3 attempts")

    monkeypatch.setattr(remote, "_again", store_down)
    with pytest.raises(StoreError):
        await engine.retry(inst.id, "cli", task_id=ta)
    assert state(await engine.get(inst.id)) == ("failed", ["ta"], [("ta", 1, True)])
    monkeypatch.setattr(remote, "_again", again)
    assert state(await engine.retry(inst.id, "cli", task_id=ta)) == ("running", [], [("ta", 2, False)])
    await answer(engine, inst.id, "ta", "succeeded")
    assert (await until(engine, inst.id, COMPLETED)).status is COMPLETED


async def test_a_task_dead_lettered_while_paused_and_retried_does_not_fail_the_instance_on_resume(
    engine: Engine,
) -> None:
    inst = await engine.start("two_tasks", {})
    await both_handed_out(engine, inst.id)
    await engine.pause(inst.id)
    ta = await answer(engine, inst.id, "ta", "dead_lettered")
    assert state(await engine.get(inst.id)) == ("paused", ["ta"], [("ta", 1, True), ("tb", 1, False)])
    assert state(await engine.retry(inst.id, "cli", task_id=ta)) == ("paused", [], [("ta", 2, False), ("tb", 1, False)])
    await answer(engine, inst.id, "ta", "succeeded")
    await answer(engine, inst.id, "tb", "succeeded")
    assert (await engine.resume(inst.id)).status is RUNNING
    assert (await until(engine, inst.id, COMPLETED)).status is COMPLETED


async def test_an_instance_failed_by_an_internal_error_is_not_brought_back_by_a_task_retry(engine: Engine) -> None:
    """Only incidents are settled by retrying a task: a failure without one (here a result too large to store)
    keeps the instance failed."""
    inst = await engine.start("two_tasks", {})
    await both_handed_out(engine, inst.id)
    run = engine._runs[inst.id]
    remote = engine._remote()
    tb = next(p for p in run.pending.values() if p.transition == "tb")
    huge = TaskResult.answering(
        remote._task(run, tb), "succeeded", worker="test", started=utcnow(), duration=0.0, output={"x": "y" * 1_500_000}
    )
    await remote.on_result(huge)
    failed = await until(engine, inst.id, FAILED)
    assert failed.status is FAILED and failed.open_incidents == []
    ta = await answer(engine, inst.id, "ta", "dead_lettered")
    retried = await engine.retry(inst.id, "cli", task_id=ta)
    assert state(retried) == ("failed", [], [("ta", 2, False), ("tb", 1, False)])
    await answer(engine, inst.id, "ta", "succeeded")
    await asyncio.sleep(0.2)
    assert (await engine.get(inst.id)).status is FAILED


async def test_a_retry_that_stopped_before_the_instance_ran_again_is_finished_when_the_task_ends(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    inst, ta = await ta_dead_tb_done(engine, "two_tasks")
    set_status = engine._set_status

    async def store_down(run: Any, trigger: str, *args: Any, **kwargs: Any) -> None:
        if trigger == "retry":
            raise StoreError("no acknowledgement after 3 attempts")
        await set_status(run, trigger, *args, **kwargs)

    monkeypatch.setattr(engine, "_set_status", store_down)
    with pytest.raises(StoreError):
        await engine.retry(inst.id, "cli", task_id=ta)
    assert state(await engine.get(inst.id)) == ("failed", [], [("ta", 2, False)])
    # A dlq retry of the letter the engine saw (attempt 1) is stale now that attempt 2 is out.
    with pytest.raises(InstanceStateError, match="attempt 2 of it is out"):
        await engine.retry(inst.id, "cli", task_id=ta, attempt=1)
    monkeypatch.setattr(engine, "_set_status", set_status)
    await answer(engine, inst.id, "ta", "succeeded")  # its end finishes the retry: nothing else failed it
    assert (await until(engine, inst.id, COMPLETED)).status is COMPLETED


async def ta_dead_under_a_first_engine(url: str, wf: Workflow) -> tuple[str, str, Task]:
    """An instance of ``wf`` whose ``ta`` was dead-lettered and ``tb`` done, left by an engine that then stopped:
    the instance id, ta's task id, and ta's task as handed out."""
    async with Engine(JetStreamStore(servers=[url]), workflows=[wf]) as first:
        inst, ta = await ta_dead_tb_done(first, wf.name)
        run = first._runs[inst.id]
        return inst.id, ta, first._remote()._task(run, run.pending[ta])


async def ta_attempts(engine: Engine, instance_id: str) -> list[int | None]:
    started = [e async for e in engine.events(instance=instance_id, types=[EventType.TRANSITION_STARTED])]
    return [getattr(e, "attempt", None) for e in started if e.transition == "ta"]


async def test_a_retry_by_hand_adopts_an_attempt_queued_without_the_engine(fresh_nats: str, engine: Engine) -> None:
    """``dlq retry`` with no engine answering publishes attempt 2 itself: a retry by hand afterwards records that
    attempt instead of handing out an attempt 3 next to it (the action would run twice)."""
    inst, ta = await ta_dead_tb_done(engine, "two_tasks")
    run = engine._runs[inst.id]
    dead_task = engine._remote()._task(run, run.pending[ta])
    nc = await nats.connect(fresh_nats)
    try:
        js = nc.jetstream()
        await submit_task(js, dead_task.model_copy(update={"attempt": 2}))
        assert state(await engine.retry(inst.id, "cli")) == ("running", [], [("ta", 2, False)])
        assert (await queued_task(js, "set", ta)).attempt == 2  # type: ignore[union-attr]
    finally:
        await nc.close()
    assert await ta_attempts(engine, inst.id) == [1, 2]
    await answer(engine, inst.id, "ta", "succeeded")
    assert (await until(engine, inst.id, COMPLETED)).status is COMPLETED


async def test_an_engine_starting_after_a_dlq_retry_without_an_engine_records_the_attempt(fresh_nats: str) -> None:
    """The instance then shows the task running again (not dead-lettered at attempt 1), and a retry by hand
    cannot hand it out a second time."""
    wf = split_join("adopted")
    iid, ta, dead_task = await ta_dead_under_a_first_engine(fresh_nats, wf)
    nc = await nats.connect(fresh_nats)
    try:
        await submit_task(nc.jetstream(), dead_task.model_copy(update={"attempt": 2}))  # dlq retry, no engine
    finally:
        await nc.close()
    async with Engine(JetStreamStore(servers=[fresh_nats]), workflows=[wf]) as second:
        now = await until(second, iid, RUNNING)
        assert state(now) == ("running", [], [("ta", 2, False)])
        with pytest.raises(InstanceStateError):
            await second.retry(iid, "cli")
        assert await ta_attempts(second, iid) == [1, 2]
        await answer(second, iid, "ta", "succeeded")
        assert (await until(second, iid, COMPLETED)).status is COMPLETED


async def test_an_attempt_answered_but_not_yet_acknowledged_is_not_adopted(fresh_nats: str) -> None:
    """A worker stores the dead letter and the result before it acknowledges the task, so an answered attempt can
    look queued for a moment: its stored result decides (the instance stays failed, a retry hands out attempt 3)
    instead of an adoption that would wait for a result already gone by."""
    wf = split_join("answered")
    iid, ta, dead_task = await ta_dead_under_a_first_engine(fresh_nats, wf)
    second_attempt = dead_task.model_copy(update={"attempt": 2})
    nc = await nats.connect(fresh_nats)
    try:
        js = nc.jetstream()
        await submit_task(js, second_attempt)  # dlq retry without an engine; a worker ran it and it died again,
        died = TaskResult.answering(  # its result stored, the task message not yet acknowledged
            second_attempt,
            "dead_lettered",
            worker="test",
            started=utcnow(),
            duration=0.0,
            error=ErrorInfo(kind="exit_code", message="boom", retryable=True),
        )
        await js.publish(result_subject("answered", iid, ta), died.model_dump_json().encode())
        async with Engine(JetStreamStore(servers=[fresh_nats]), workflows=[wf]) as second:
            await asyncio.sleep(0.5)
            assert state(await second.get(iid)) == ("failed", ["ta"], [("ta", 1, True)])
            assert state(await second.retry(iid, "cli")) == ("running", [], [("ta", 3, False)])
            assert await ta_attempts(second, iid) == [1, 3]
    finally:
        await nc.close()
