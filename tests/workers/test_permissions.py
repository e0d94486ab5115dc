"""A worker checks at start-up that NATS lets it publish where it must (without storing anything), and a result
it cannot publish at run time neither runs its task for ever nor dead-letters an attempt twice."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from circuit_breaker.nats._server import NatsServer
from circuit_breaker.nats._subjects import DLQ_STREAM, RESULTS_STREAM
from circuit_breaker.tasks import DeadLetter
from circuit_breaker.workers import list_dead_letters, results, task_queued

from .conftest import CLI, make_task, submit_task

USERS = """
authorization {{
  users = [
    {{user: admin, password: admin}}
    {{user: weak, password: weak, permissions: {{publish: {{deny: ["{denied}"]}}}}}}
  ]
}}
"""


def start_worker(url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CB_NATS_URL": url, "CB_CONNECT_ATTEMPTS": "1"}
    return subprocess.run(
        [CLI, "worker", "--executors", "set"], env=env, capture_output=True, text=True, timeout=60, cwd=cwd
    )


@pytest.mark.parametrize(
    ("denied", "named"),
    [
        ("cb.result.>", "cb.result.cb-permission-check"),
        ("cb.dlq.>", "cb.dlq.set.cb-permission-check"),
        ("$JS.ACK.>", "$js.ack.cb_tasks.cb-workers-set."),
    ],
)
def test_a_worker_that_may_not_publish_results_dead_letters_or_acks_refuses_to_start(
    tmp_path: Path, denied: str, named: str
) -> None:
    with NatsServer(tmp_path / "auth", config_extra=USERS.format(denied=denied)) as server:
        out = start_worker(server.url.replace("nats://", "nats://weak:weak@"), tmp_path)
    assert out.returncode == 1, out
    said = out.stderr.lower()
    assert "worker cannot start" in said and "permissions violation" in said, out.stderr
    assert named in said, out.stderr  # names the refused subject
    assert "traceback" not in said


async def test_the_start_up_check_stores_nothing(spawn, js) -> None:
    spawn("--executors", "set,shell")  # a user that may publish everywhere starts
    for stream in (RESULTS_STREAM, DLQ_STREAM):
        assert (await js.stream_info(stream)).state.messages == 0, stream


async def test_a_result_that_cannot_be_published_runs_the_task_at_most_max_deliver_times_and_is_dead_lettered_once(
    spawn, js, fresh_nats, tmp_path: Path
) -> None:
    worker = spawn("--executors", "shell")  # max_deliver 3, backoff 0.5 s doubling (conftest.FAST)
    await js.delete_stream(RESULTS_STREAM)  # from now on no result can be stored
    runs = tmp_path / "runs"
    script = f"open({str(runs)!r}, 'a').write('ran\\n')"
    task = make_task({"executor": "shell", "params": {"argv": ["python3", "-c", script]}})
    await submit_task(js, task)
    for _ in range(150):
        if not await task_queued(js, task.kind, task.task_id):
            break
        await asyncio.sleep(0.2)
    assert not await task_queued(js, task.kind, task.task_id), worker.log()  # not handed round for ever
    await asyncio.sleep(2.0)  # (time for a redelivery that should not come)
    assert runs.read_text().count("ran") == 3, worker.log()
    letters = await list_dead_letters(js)
    assert len(letters) == 1, letters
    letter = letters[0][1]
    assert letter.reason == "max_deliver" and letter.deliveries == 3 and letter.task == task
    assert "result could not be published" in letter.message, letter.message
    assert letter.last_error is not None and letter.last_error.kind == "result_not_published"


async def test_an_attempt_already_dead_lettered_is_not_dead_lettered_again(spawn, js) -> None:
    """A delivery past max_deliver of an attempt whose letter CB_DLQ holds already (an earlier delivery stored
    it, then failed) publishes the dead_lettered result only: no second letter, whatever the duplicate window."""
    spawn("--executors", "set").terminate()  # (makes the streams and the consumer)
    task = make_task({"executor": "set", "params": {"values": {}}})
    await submit_task(js, task)
    sub = await js.pull_subscribe_bind("cb-workers-set", "CB_TASKS")
    for _ in range(3):  # max_deliver 3 (conftest.FAST): delivered and handed back, as by workers that failed
        [msg] = await sub.fetch(1, timeout=5)
        await msg.nak()
    await sub.unsubscribe()
    earlier = DeadLetter.model_validate(
        {"reason": "max_deliver", "message": "stored by an earlier delivery", "subject": f"cb.task.set.{task.task_id}",
         "task": task, "raw": None, "deliveries": 3, "last_error": None, "worker": "w"}
    )  # fmt: skip
    await js.publish(f"cb.dlq.set.{task.task_id}", earlier.model_dump_json().encode(), timeout=5)
    worker = spawn("--executors", "set")
    for _ in range(100):
        if await results(js):
            break
        await asyncio.sleep(0.1)
    assert [(r.task_id, r.status) for r in await results(js)] == [(task.task_id, "dead_lettered")], worker.log()
    letters = await list_dead_letters(js)
    assert [lt.message for _, lt in letters] == ["stored by an earlier delivery"], worker.log()
    assert not await task_queued(js, task.kind, task.task_id)
