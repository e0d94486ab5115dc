"""Retries on the backoff schedule, the dead-letter queue and its CLI, malformed tasks, metrics, bad set-ups."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest

from circuit_breaker.nats._server import NatsServer
from circuit_breaker.workers import list_dead_letters, pending_tasks, results, stored_result, task_queued

from .conftest import CLI, make_task, submit_task, wait_results

POISON = {
    "executor": "shell",
    "params": {"argv": ["python3", "-c", "import sys; sys.exit(3)"], "retry_exit_codes": [3]},
}


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CB_NATS_URL": url}
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=30)


async def wait_letters(js, count: int, timeout: float = 20.0):
    for _ in range(int(timeout / 0.2)):
        letters = await list_dead_letters(js)
        if len(letters) >= count:
            return letters
        await asyncio.sleep(0.2)
    return await list_dead_letters(js)


async def test_a_poison_task_is_retried_on_the_backoff_schedule_then_dead_lettered_and_retried_from_the_cli(
    spawn, js, fresh_nats
) -> None:
    worker = spawn("--executors", "shell")  # max_deliver 3, backoff 0.5 s doubling (conftest.FAST)
    task = make_task(POISON)
    await submit_task(js, task)
    letters = await wait_letters(js, 1)
    assert len(letters) == 1
    entry, letter = letters[0]
    assert letter.reason == "max_deliver" and letter.deliveries == 3
    assert letter.task == task
    assert letter.last_error is not None and letter.last_error.kind == "exit_code" and letter.last_error.retryable
    # The engine learns of it from CB_RESULTS: a dead_lettered result of the attempt, with the last error.
    got = await results(js)
    assert [(r.task_id, r.attempt, r.status, r.deliveries, r.output) for r in got] == [
        (task.task_id, 1, "dead_lettered", 3, {})
    ]
    assert got[0].error == letter.last_error and got[0].transition == task.transition
    assert await stored_result(js, task.workflow, task.instance_id, task.task_id) == got[0]
    assert await task_queued(js, task.kind, task.task_id) is False  # acked after the DLQ entry and the result

    # Two naks: after 0.5 s, then after 1 s; the third failure goes to the DLQ.
    times = [
        datetime.strptime(r["time"], "%Y-%m-%dT%H:%M:%S.%f")
        for r in worker.records()
        if r.get("task_id") == task.task_id and ("retry in" in r["message"] or "dead-lettered" in r["message"])
    ]
    assert len(times) == 3, worker.log()
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert 0.45 <= gaps[0] <= 1.3, gaps
    assert 0.95 <= gaps[1] <= 2.0, gaps

    listed = cli(fresh_nats, "dlq", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["id"], r["task"]["task_id"], r["reason"]) for r in rows] == [(entry, task.task_id, "max_deliver")]
    text = cli(fresh_nats, "dlq", "list").stdout  # which instance and transition, without a dlq show each
    assert f"{entry}  task {task.task_id} attempt 1 (shell) of {task.workflow} instance {task.instance_id}" in text
    assert f"transition {task.transition}  max_deliver: " in text
    shown = cli(fresh_nats, "dlq", "show", str(entry))
    assert json.loads(shown.stdout)["last_error"]["kind"] == "exit_code"

    retried = cli(fresh_nats, "dlq", "retry", str(entry))
    assert retried.returncode == 0, retried.stderr
    assert "attempt 2" in retried.stdout
    assert f"on cb.task.shell.{task.task_id}" in retried.stdout
    letters = await wait_letters(js, 1)  # the old entry is gone; the retried attempt fails again and is back
    assert [(lt.task.attempt if lt.task else None) for _, lt in letters] == [2]
    assert letters[0][0] != entry
    for _ in range(50):  # the result follows its dead letter
        newest = await stored_result(js, task.workflow, task.instance_id, task.task_id)
        if newest is not None and newest.attempt == 2:
            break
        await asyncio.sleep(0.1)
    assert newest is not None and (newest.attempt, newest.status) == (2, "dead_lettered")
    assert [(r.attempt, r.status) for r in await results(js)] == [(1, "dead_lettered"), (2, "dead_lettered")]

    dropped = cli(fresh_nats, "dlq", "drop", str(letters[0][0]))
    assert dropped.returncode == 0, dropped.stderr
    assert await list_dead_letters(js) == []
    missing = cli(fresh_nats, "dlq", "retry", str(entry))
    assert missing.returncode != 0 and f"no dead letter {entry}" in missing.stderr
    for command in ("show", "retry", "drop"):  # ids start at 1: said so, not a server's bad-request traceback
        zero = cli(fresh_nats, "dlq", command, "0")
        assert zero.returncode != 0 and "no dead letter 0" in zero.stderr and "Traceback" not in zero.stderr, zero
    bad_id = cli(fresh_nats, "retry", "bad.id")  # an instance id that is no subject token, refused by name
    assert bad_id.returncode != 0 and "instance_id" in bad_id.stderr and "Traceback" not in bad_id.stderr, bad_id
    for gone in (letters[0][0], 10**6):  # dropped already; past the end of the stream
        again = cli(fresh_nats, "dlq", "drop", str(gone))
        assert again.returncode != 0 and f"no dead letter {gone}" in again.stderr, again.stderr
        assert "Traceback" not in again.stderr


async def test_malformed_task_messages_go_to_the_dlq_with_the_reason(spawn, js) -> None:
    spawn("--executors", "set")
    await js.publish("cb.task.set.t0", b"this is not json", timeout=5)
    await js.publish("cb.task.set.t1", json.dumps({"task_id": "t1"}).encode(), timeout=5)  # fields missing
    other_kind = make_task({"executor": "wait", "params": {"duration": 0}})
    await js.publish(f"cb.task.set.{other_kind.task_id}", other_kind.model_dump_json().encode(), timeout=5)
    other_id = make_task({"executor": "set", "params": {"values": {}}})
    await js.publish("cb.task.set.someone-else", other_id.model_dump_json().encode(), timeout=5)
    letters = await wait_letters(js, 4)
    assert [lt.reason for _, lt in letters] == ["malformed"] * 4
    assert letters[0][1].raw == "this is not json" and "not a valid task" in letters[0][1].message
    assert "workflow" in letters[1][1].message  # names a missing field
    assert "do not match its subject" in letters[2][1].message
    assert f"expected 'cb.task.set.{other_id.task_id}'" in letters[3][1].message
    assert [lt.subject for _, lt in letters][-1] == "cb.task.set.someone-else"
    for _ in range(50):  # each is terminated right after its dead letter is stored
        if await pending_tasks(js) == {}:
            break
        await asyncio.sleep(0.1)
    assert await pending_tasks(js) == {}  # none is redelivered
    assert await results(js) == []  # malformed messages answer no task: CB_DLQ only


async def test_a_message_on_the_kinds_own_subject_without_a_task_id_is_dead_lettered(spawn, js, fresh_nats) -> None:
    """``cb.task.<kind>`` has no task id token: no task goes there, so it is malformed, not waiting for ever."""
    spawn("--executors", "set")
    task = make_task({"executor": "set", "params": {"values": {}}})
    await js.publish("cb.task.set", task.model_dump_json().encode(), timeout=5)
    await js.publish("cb.task.set", b"garbage", timeout=5)
    letters = await wait_letters(js, 2)
    assert [(lt.reason, lt.subject, lt.task) for _, lt in letters] == [("malformed", "cb.task.set", None)] * 2
    assert all("has no task id" in lt.message for _, lt in letters), letters
    assert letters[1][1].raw == "garbage"
    for _ in range(50):
        if await pending_tasks(js) == {}:
            break
        await asyncio.sleep(0.1)
    assert await pending_tasks(js) == {}  # not counted as waiting by `worker --status`
    status = cli(fresh_nats, "worker", "--status", "--json")
    assert json.loads(status.stdout) == {"pending": {}, "dead_letters": 2}, status


def test_a_task_id_must_be_a_subject_token() -> None:
    for bad in ("a.b", "a*", ">", "a b", "a:1"):
        with pytest.raises(ValueError, match="task id"):
            make_task({"executor": "set", "params": {}}, task_id=bad)


async def test_a_non_retryable_failure_is_a_failed_result_at_once(spawn, js) -> None:
    spawn("--executors", "shell")
    task = make_task({"executor": "shell", "params": {"argv": ["python3", "-c", "import sys; sys.exit(2)"]}})
    await submit_task(js, task)
    got = await wait_results(js, 1, timeout=15)
    assert [(r.task_id, r.status, r.deliveries) for r in got] == [(task.task_id, "failed", 1)]
    assert got[0].error is not None and got[0].error.kind == "exit_code" and not got[0].error.retryable


async def test_a_task_for_a_kind_no_worker_serves_waits_visibly(spawn, js, fresh_nats) -> None:
    spawn("--executors", "set")
    for n in range(3):  # one subject per task: counted per kind
        await submit_task(js, make_task({"executor": "docker", "params": {"image": "x", "command": ["true"]}}, n))
    await submit_task(js, make_task({"executor": "http", "params": {"url": "http://127.0.0.1:9/"}}))
    await asyncio.sleep(1.0)
    assert await pending_tasks(js) == {"docker": 3, "http": 1}
    status = cli(fresh_nats, "worker", "--status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout) == {"pending": {"docker": 3, "http": 1}, "dead_letters": 0}


async def test_metrics_and_health_endpoints(spawn, js) -> None:
    worker = spawn("--executors", "set,shell", "--metrics-port", "0")
    port = worker.ready["metrics_port"]
    for n in range(5):
        await submit_task(js, make_task({"executor": "set", "params": {"values": {"n": n}}}, n))
    await submit_task(js, make_task(POISON))
    await wait_results(js, 5, timeout=15)
    await wait_letters(js, 1)

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    assert get("/healthz")[0] == 200
    code, body = get("/readyz")
    assert code == 200 and json.loads(body)["ready"] is True
    code, text = await asyncio.to_thread(get, "/metrics")
    assert code == 200
    values = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert values['cb_worker_tasks_total{executor="set",status="succeeded"}'] == 5
    assert values['cb_worker_retries_total{executor="shell"}'] == 2
    assert values['cb_worker_dead_letters_total{executor="shell",reason="max_deliver"}'] == 1
    assert values['cb_worker_task_duration_seconds_count{executor="set"}'] == 5
    assert values['cb_worker_in_flight{executor="set"}'] == 0


def test_unknown_executor_kind_fails_at_start_up(fresh_nats: str) -> None:
    out = cli(fresh_nats, "worker", "--executors", "set,nosuch")
    assert out.returncode == 2, out.stderr  # a usage error, found before NATS is reached
    assert "['nosuch'] are not" in out.stderr and "registered" in out.stderr


def test_a_worker_without_permission_fails_at_start_up_naming_the_subject(tmp_path: Path) -> None:
    users = """
authorization {
  users = [
    {user: admin, password: admin}
    {user: weak, password: weak, permissions: {publish: {deny: ["$JS.API.CONSUMER.>"]}}}
  ]
}
"""
    with NatsServer(tmp_path / "auth", config_extra=users) as server:
        url = server.url.replace("nats://", "nats://weak:weak@")
        env = {**os.environ, "CB_NATS_URL": url, "CB_CONNECT_ATTEMPTS": "1"}
        out = subprocess.run(
            [CLI, "worker", "--executors", "set"], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path
        )
    assert out.returncode != 0
    said = out.stderr.lower()
    assert "worker cannot start" in said and "permissions violation" in said, out.stderr
    assert "$js.api.consumer.info.cb_tasks.cb-workers-set" in said  # names the refused subject (its first)
