"""Delivery guarantees with real worker processes: exactly one result per task, crash recovery, drain."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from circuit_breaker.workers import pending_tasks, results

from .conftest import make_task, submit_task, wait_results

NOOP = {"executor": "set", "params": {"values": {"ok": True, "n": "{{ n }}"}}}


async def test_three_workers_run_every_task_once(spawn, js) -> None:
    workers = [spawn("--executors", "set", "--concurrency", "32") for _ in range(3)]
    total = 2000
    tasks = [make_task(NOOP, n, data={"n": n}) for n in range(total)]
    await asyncio.gather(*(submit_task(js, t) for t in tasks))
    # A repeated publish of the same attempt is dropped by the stream (Nats-Msg-Id), not run twice.
    assert await submit_task(js, tasks[0]) is False

    got = await wait_results(js, total, timeout=45)
    per_task = Counter(r.task_id for r in got)
    assert len(per_task) == total, f"lost {total - len(per_task)} task(s)"
    assert max(per_task.values()) == 1
    assert all(r.status == "succeeded" and r.attempt == 1 for r in got)
    by_id = {r.task_id: r for r in got}
    assert all(by_id[t.task_id].output == {"ok": True, "n": t.data["n"]} for t in tasks)  # rendered from data
    assert len({r.worker for r in got}) == 3, "the three workers share the queue"
    assert (await pending_tasks(js)).get("set", 0) == 0
    for worker in workers:
        assert worker.terminate() == 0


async def test_kill_9_mid_task_is_redelivered_after_ack_wait_and_completes_once(spawn, js) -> None:
    first = spawn("--executors", "wait")
    task = make_task({"executor": "wait", "params": {"duration": 3}})
    await submit_task(js, task)
    for _ in range(50):  # until the first worker has it in hand
        if any(r.get("task_id") == task.task_id for r in first.records()) or await _in_hand(js):
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    first.kill()
    killed = time.monotonic()
    second = spawn("--executors", "wait")

    got = await wait_results(js, 1, timeout=20)
    assert [r.task_id for r in got] == [task.task_id]
    assert got[0].worker == second.ready["worker"]
    assert got[0].deliveries == 2
    # Redelivered ack_wait (2 s) after the last heartbeat (every ack_wait/3 before the kill), then the 3 s run.
    assert time.monotonic() - killed >= 2 - 2 / 3 + 3 - 0.3
    await asyncio.sleep(1.0)
    assert len(await results(js)) == 1


async def test_heartbeats_keep_a_long_task_with_its_worker(spawn, js) -> None:
    spawn("--executors", "wait")
    spawn("--executors", "wait")
    task = make_task({"executor": "wait", "params": {"duration": 5}})  # 2.5x ack_wait
    await submit_task(js, task)
    got = await wait_results(js, 1, timeout=20)
    await asyncio.sleep(2.5)  # a wrongly redelivered copy would finish by now
    got = await results(js)
    assert len(got) == 1 and got[0].deliveries == 1


async def test_sigterm_lets_a_running_task_finish_and_exits_0(spawn, js) -> None:
    worker = spawn("--executors", "wait")
    task = make_task({"executor": "wait", "params": {"duration": 2}})
    await submit_task(js, task)
    await asyncio.sleep(0.8)  # in hand
    started = time.monotonic()
    assert worker.terminate(timeout=20) == 0
    assert time.monotonic() - started >= 1.0  # it waited for the task
    got = await results(js)
    assert [(r.task_id, r.status) for r in got] == [(task.task_id, "succeeded")]


async def test_sigterm_hands_back_what_does_not_finish_within_the_grace(spawn, js) -> None:
    worker = spawn("--executors", "wait", env={"CB_WORKER__GRACE": "0.5"})
    task = make_task({"executor": "wait", "params": {"duration": 30}})
    await submit_task(js, task)
    await asyncio.sleep(0.8)
    assert worker.terminate(timeout=20) == 0
    assert await results(js) == []
    assert (await pending_tasks(js)) == {"wait": 1}  # handed back, not lost
    short = make_task({"executor": "wait", "params": {"duration": 0.1}})
    await submit_task(js, short)
    spawn("--executors", "wait", env={"CB_WORKER__GRACE": "0.5"})
    got = await wait_results(js, 1, timeout=10)
    assert [r.task_id for r in got] == [short.task_id]  # the worker serves again; the long one is back in line


async def test_an_idle_kind_does_not_hold_back_another_kinds_tasks(spawn, js) -> None:
    """A worker serving two kinds keeps a pull open for each while nothing comes; a task of either kind starts
    at once, not when the other kind's pull expires (``poll``: 5 s here)."""
    spawn("--executors", "set,wait", "--concurrency", "2", env={"CB_WORKER__POLL": "5"})
    await asyncio.sleep(1.0)  # both kinds' pulls are open and waiting
    for kind, executor in (("wait", {"executor": "wait", "params": {"duration": 0.01}}), ("set", NOOP)):
        task = make_task(executor, data={"n": 1})
        began = time.monotonic()
        await submit_task(js, task)
        got = [r for r in await wait_results(js, 1, timeout=10) if r.task_id == task.task_id]
        while not got and time.monotonic() - began < 10:
            got = [r for r in await results(js) if r.task_id == task.task_id]
            await asyncio.sleep(0.1)
        assert got and got[0].status == "succeeded", kind
        waited = (got[0].started - task.created).total_seconds()
        assert waited < 2.0, f"the {kind} task waited {waited:.1f}s for a slot"


async def _in_hand(js) -> bool:
    info = await js.consumer_info("CB_TASKS", "cb-workers-wait")
    return info.num_ack_pending > 0
