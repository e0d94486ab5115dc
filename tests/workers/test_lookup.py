"""Looking one task up for engine recovery: is it still queued, what is its newest result; and the result a
dead-lettered task leaves in CB_RESULTS."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import nats.errors
import pytest
from nats.js.errors import NotFoundError

from circuit_breaker.config import StreamSettings
from circuit_breaker.nats._subjects import result_filter, result_subject, task_filter, task_subject
from circuit_breaker.tasks import TaskResult, result_msg_id
from circuit_breaker.workers import (
    ensure_task_streams,
    list_dead_letters,
    results,
    stored_result,
    task_queued,
)

from .conftest import make_task, submit_task, wait_results

WAIT = {"executor": "wait", "params": {"duration": 2}}


def test_subjects_carry_the_task_id() -> None:
    assert task_subject("shell", "t-1") == "cb.task.shell.t-1"
    assert task_filter("shell") == "cb.task.shell.>"
    assert result_subject("wf", "i1", "t-1") == "cb.result.wf.i1.t-1"
    assert result_filter() == "cb.result.>"
    assert result_filter("wf") == "cb.result.wf.>"
    assert result_filter("wf", "i1") == "cb.result.wf.i1.*"
    assert result_filter(instance_id="i1") == "cb.result.*.i1.*"


@pytest.mark.parametrize("direct", [True, False])
async def test_task_queued_while_waiting_and_in_hand_then_not_once_the_result_is_stored(
    spawn, js, direct: bool
) -> None:
    await ensure_task_streams(js, StreamSettings())
    task = make_task(WAIT)
    assert await task_queued(js, "wait", task.task_id, direct=direct) is False
    assert await stored_result(js, task.workflow, task.instance_id, task.task_id, direct=direct) is None
    await submit_task(js, task)
    assert await task_queued(js, "wait", task.task_id, direct=direct) is True  # waiting: no worker yet
    assert await task_queued(js, "wait", "another-task", direct=direct) is False
    assert await task_queued(js, "set", task.task_id, direct=direct) is False  # the kind is part of the subject

    spawn("--executors", "wait")
    for _ in range(50):  # until a worker has it in hand
        if (await js.consumer_info("CB_TASKS", "cb-workers-wait")).num_ack_pending > 0:
            break
        await asyncio.sleep(0.1)
    assert await task_queued(js, "wait", task.task_id, direct=direct) is True  # running: not acknowledged yet
    assert await stored_result(js, task.workflow, task.instance_id, task.task_id, direct=direct) is None

    got = await wait_results(js, 1, timeout=15)
    assert [r.task_id for r in got] == [task.task_id]
    for _ in range(20):  # the worker acknowledges right after publishing the result
        if not await task_queued(js, "wait", task.task_id, direct=direct):
            break
        await asyncio.sleep(0.1)
    assert await task_queued(js, "wait", task.task_id, direct=direct) is False
    found = await stored_result(js, task.workflow, task.instance_id, task.task_id, direct=direct)
    assert found == got[0] and found.status == "succeeded"
    assert await stored_result(js, task.workflow, "other-instance", task.task_id, direct=direct) is None


async def test_stored_result_is_the_newest_of_the_task(fresh_nats, js) -> None:
    await ensure_task_streams(js, StreamSettings())
    task = make_task(WAIT)
    now = datetime.now(UTC)

    def result(attempt: int, status: str) -> TaskResult:
        return TaskResult.model_validate(
            {
                "task_id": task.task_id,
                "attempt": attempt,
                "workflow": task.workflow,
                "instance_id": task.instance_id,
                "transition": task.transition,
                "status": status,
                "worker": "test:1",
                "started": now,
                "finished": now,
                "duration": 0.0,
            }
        )

    subject = result_subject(task.workflow, task.instance_id, task.task_id)
    for attempt, status in ((1, "failed"), (1001, "succeeded")):
        headers = {"Nats-Msg-Id": result_msg_id(task.task_id, attempt)}
        await js.publish(subject, result(attempt, status).model_dump_json().encode(), headers=headers)
    other = make_task(WAIT, 0)  # the same instance, another task
    await js.publish(
        result_subject(other.workflow, other.instance_id, other.task_id),
        result(7, "failed").model_copy(update={"task_id": other.task_id}).model_dump_json().encode(),
    )
    newest = await stored_result(js, task.workflow, task.instance_id, task.task_id)
    assert newest is not None and (newest.attempt, newest.status) == (1001, "succeeded")
    assert [r.attempt for r in await results(js, workflow=task.workflow, instance_id=task.instance_id)] == [
        1,
        1001,
        7,
    ]


async def test_lookups_raise_when_the_streams_are_missing(fresh_nats, js) -> None:
    with pytest.raises(nats.errors.NoRespondersError):  # direct get: nobody serves a stream that is not there
        await task_queued(js, "wait", "t1")
    with pytest.raises(NotFoundError):  # the API answers "stream not found", which is not "no message"
        await task_queued(js, "wait", "t1", direct=False)
    with pytest.raises(NotFoundError):
        await stored_result(js, "wf", "i1", "t1", direct=False)


async def test_a_task_whose_workers_keep_dying_is_dead_lettered_with_a_result(spawn, js) -> None:
    first = spawn("--executors", "wait", env={"CB_WORKER__MAX_DELIVER": "1"})
    task = make_task({"executor": "wait", "params": {"duration": 30}})
    await submit_task(js, task)
    for _ in range(50):
        if (await js.consumer_info("CB_TASKS", "cb-workers-wait")).num_ack_pending > 0:
            break
        await asyncio.sleep(0.1)
    first.kill()
    spawn("--executors", "wait", env={"CB_WORKER__MAX_DELIVER": "1"})  # gets it again after ack_wait (2 s)

    got = await wait_results(js, 1, timeout=15)
    assert [(r.task_id, r.attempt, r.status, r.deliveries, r.output) for r in got] == [
        (task.task_id, 1, "dead_lettered", 2, {})
    ]
    assert got[0].error is not None and got[0].error.kind == "orphaned"
    letters = await list_dead_letters(js)  # published before the result
    assert [(lt.reason, lt.task, lt.last_error) for _, lt in letters] == [("max_deliver", task, got[0].error)]
    assert letters[0][1].subject == f"cb.task.wait.{task.task_id}"
    assert await task_queued(js, "wait", task.task_id) is False
    assert await stored_result(js, task.workflow, task.instance_id, task.task_id) == got[0]
