"""Workers with different ``ack_wait`` share one consumer per kind: no running task is handed to a second worker
because a later worker changed the consumer's ack_wait."""

from __future__ import annotations

import asyncio
from pathlib import Path

from nats.js.api import AckPolicy, ConsumerConfig

from .conftest import make_task, submit_task, wait_results


def slow_task(runs: Path, seconds: float):  # type: ignore[no-untyped-def]
    script = f"import time; open({str(runs)!r}, 'a').write('ran\\n'); time.sleep({seconds})"
    return make_task({"executor": "shell", "params": {"argv": ["python3", "-c", script]}})


async def wait_started(runs: Path) -> None:
    for _ in range(100):
        if runs.exists():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the task did not start")


async def test_a_later_worker_with_a_shorter_ack_wait_does_not_lower_it_under_a_running_task(
    spawn, js, tmp_path: Path
) -> None:
    spawn("--executors", "shell", env={"CB_WORKER__ACK_WAIT": "30"})  # heartbeats every 10 s
    runs = tmp_path / "runs"
    task = slow_task(runs, 6)
    await submit_task(js, task)
    await wait_started(runs)
    later = spawn("--executors", "shell", env={"CB_WORKER__ACK_WAIT": "2"})
    got = await wait_results(js, 1, timeout=30)
    await asyncio.sleep(1.0)
    assert [(r.status, r.deliveries) for r in got] == [("succeeded", 1)]
    assert runs.read_text().count("ran") == 1  # ran once, not a second time on the later worker
    info = await js.consumer_info("CB_TASKS", "cb-workers-shell")
    assert info.config.ack_wait == 30
    said = later.log()
    assert "keeps ack_wait 30s, longer than this worker's 2s" in said, said


async def test_a_longer_ack_wait_raises_the_shared_one(spawn, js) -> None:
    spawn("--executors", "shell", env={"CB_WORKER__ACK_WAIT": "2"})
    spawn("--executors", "shell", env={"CB_WORKER__ACK_WAIT": "9"})
    assert (await js.consumer_info("CB_TASKS", "cb-workers-shell")).config.ack_wait == 9


async def test_heartbeats_follow_an_ack_wait_lowered_while_a_task_runs(spawn, js, tmp_path: Path) -> None:
    spawn("--executors", "shell", env={"CB_WORKER__ACK_WAIT": "30"})  # heartbeats every 10 s
    runs = tmp_path / "runs"
    await submit_task(js, slow_task(runs, 9))
    await wait_started(runs)
    info = await js.consumer_info("CB_TASKS", "cb-workers-shell")
    lowered = ConsumerConfig(
        durable_name="cb-workers-shell",
        filter_subjects=info.config.filter_subjects,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=6,
        max_deliver=-1,
        max_ack_pending=info.config.max_ack_pending,
    )
    await js.add_consumer("CB_TASKS", lowered)  # (an operator, or an older worker that lowers it)
    got = await wait_results(js, 1, timeout=30)
    await asyncio.sleep(1.0)
    assert [(r.status, r.deliveries) for r in got] == [("succeeded", 1)]
    assert runs.read_text().count("ran") == 1  # the worker beat every 2 s from then on: never redelivered


async def test_with_no_other_worker_running_a_shorter_ack_wait_is_taken(spawn, js) -> None:
    """Found in a walk-through: the durable consumer outlives its workers, so the advice "stop every worker of
    the kind first" never lowered ack_wait. With no task in hand and nobody pulling, a worker sets its own."""
    first = spawn("--executors", "shell", env={"CB_WORKER__ACK_WAIT": "30"})
    assert first.terminate() == 0
    later = spawn("--executors", "shell", env={"CB_WORKER__ACK_WAIT": "3"})
    assert (await js.consumer_info("CB_TASKS", "cb-workers-shell")).config.ack_wait == 3
    assert "keeps ack_wait" not in later.log()
