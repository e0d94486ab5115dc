"""Retrying dead-lettered remote tasks one at a time (what ``dlq retry`` asks of the engine), on a real JetStream
store: each task's own incident is settled when it is handed out again or ends, the instance runs again only
when nothing else failed it, and a hand-out that fails leaves everything as it was.

The workers' side is played by handing the engine the results a worker would publish (``on_result``, where the
engine's result reader delivers them): the orders and races below cannot be arranged with real workers.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from circuit_breaker import Engine, InstanceStatus, Workflow
from circuit_breaker.errors import StoreError
from circuit_breaker.events import ErrorInfo
from circuit_breaker.executors import default_registry
from circuit_breaker.nats import JetStreamStore
from circuit_breaker.tasks import TaskResult
from circuit_breaker.token import utcnow

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
    inst = await engine.start("two_tasks", {})
    await both_handed_out(engine, inst.id)
    ta = await answer(engine, inst.id, "ta", "dead_lettered")
    await answer(engine, inst.id, "tb", "succeeded")
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
