"""Remote actions end to end: an engine on JetStream publishes tasks, real worker processes run them, the engine
applies each result once; the engine killed mid-run loses nothing; dead letters become incidents."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import nats

from circuit_breaker import Engine, EventType, InstanceStatus, Workflow
from circuit_breaker.config import StreamSettings
from circuit_breaker.executors import ShellExecutor, default_registry
from circuit_breaker.nats import JetStreamStore
from circuit_breaker.nats._control import ControlService
from circuit_breaker.workers import list_dead_letters, pending_tasks, results, retry_dead_letter
from circuit_breaker.workers._queue import ensure_task_streams

from .conftest import CLI
from .remote_engine import workflow as relay_workflow

ROOT = Path(__file__).resolve().parents[2]
REMOTE_ENGINE = Path(__file__).with_name("remote_engine.py")


async def test_the_contract_an_engine_publishes_the_task_and_a_worker_process_runs_it(spawn, fresh_nats) -> None:
    worker = spawn("--executors", "shell", "--concurrency", "4")
    wf = Workflow("contract")
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "run").action(ShellExecutor(argv=["python3", "-c", "print(42)"]), remote=True)
    async with Engine(JetStreamStore(servers=[fresh_nats])) as engine:
        inst = await engine.wait((await engine.start(wf, {"x": 1})).id, timeout=30)
        assert inst.status is InstanceStatus.COMPLETED
        assert inst.tokens[0].data["stdout"] == "42\n" and inst.tokens[0].data["x"] == 1
        types = [e.type async for e in engine.events(instance=inst.id)]
        assert types[1:3] == [EventType.TRANSITION_STARTED, EventType.TRANSITION_FIRED]
    nc = await nats.connect(fresh_nats)
    try:
        (result,) = await results(nc.jetstream(), instance_id=inst.id)
    finally:
        await nc.close()
    assert result.worker == worker.ready["worker"] and result.status == "succeeded"
    assert str(os.getpid()) not in result.worker  # it ran in the worker process, not in the engine


async def test_three_workers_and_10000_instances_each_result_applied_once(spawn, fresh_nats) -> None:
    total = 10_000
    for _ in range(3):
        spawn("--executors", "set", "--concurrency", "64")
    wf = Workflow("many")
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "run").action(default_registry().create("set", values={"seen": "{{ n }}"}), remote=True)
    async with Engine(JetStreamStore(servers=[fresh_nats])) as engine:
        ids: list[str] = []
        for chunk in range(0, total, 500):  # started 500 at a time, as a busy inject service would
            started = await asyncio.gather(*(engine.start(wf, {"n": n}) for n in range(chunk, chunk + 500)))
            ids.extend(i.id for i in started)
        done = await asyncio.gather(*(engine.wait(i, timeout=300) for i in ids))
        assert all(i.status is InstanceStatus.COMPLETED for i in done)
        assert [i.tokens[0].data["seen"] for i in done] == list(range(total))
        fired = Counter([e.instance_id async for e in engine.events(types=[EventType.TRANSITION_FIRED])])
        assert set(fired.values()) == {1} and len(fired) == total
    async with Engine(JetStreamStore(servers=[fresh_nats]), workflows=[wf], drive=False) as rebuilt:
        again = await rebuilt.instances("many")
        assert len(again) == total and all(i.status is InstanceStatus.COMPLETED and not i.tasks for i in again)
    nc = await nats.connect(fresh_nats)
    try:
        stored = await results(nc.jetstream(), workflow="many")
    finally:
        await nc.close()
    assert len(stored) == total and len({r.task_id for r in stored}) == total
    assert len({r.worker for r in stored}) == 3, "the three workers shared the queue"


def engine_process(url: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(REMOTE_ENGINE), url, *args],
        cwd=ROOT,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_an_engine_killed_between_start_and_result_loses_nothing(spawn, fresh_nats) -> None:
    spawn("--executors", "wait,set", "--concurrency", "50")
    first = engine_process(fresh_nats, "--start", "40", "--seconds", "1.5")
    assert first.stdout is not None and first.stdout.readline().strip() == "ready"
    await asyncio.sleep(0.5)  # tasks are in the workers' hands now
    first.kill()
    first.wait(10)
    async with Engine(JetStreamStore(servers=[fresh_nats]), workflows=[relay_workflow()], drive=False) as observer:
        seen = await observer.instances("remote_relay")
        assert len(seen) == 40 and any(i.tasks for i in seen), "the kill came between start and result"
    second = engine_process(fresh_nats)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err[-3000:]
    assert "done 40" in out
    async with Engine(JetStreamStore(servers=[fresh_nats]), workflows=[relay_workflow()], drive=False) as observer:
        for inst in await observer.instances("remote_relay"):
            assert inst.status is InstanceStatus.COMPLETED and inst.tokens[0].place == "done"
            assert inst.tokens[0].data["finished"] is True and inst.tokens[0].data["waited"] == 1.5
            fired = [e.transition async for e in observer.events(instance=inst.id, types=["transition_fired"])]
            assert sorted(fired) == ["finish", "work"], "each firing applied once"


async def test_a_task_no_worker_serves_waits_visibly_and_runs_once_a_worker_comes(spawn, fresh_nats) -> None:
    wf = Workflow("unserved")
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "run").action(default_registry().create("set", values={"ok": True}), remote=True)
    async with Engine(JetStreamStore(servers=[fresh_nats])) as engine:
        inst = await engine.start(wf, {})
        await asyncio.sleep(0.5)
        now = await engine.get(inst.id)
        assert now.status is InstanceStatus.RUNNING and [t.executor for t in now.tasks] == ["set"]
        nc = await nats.connect(fresh_nats)
        try:
            assert await pending_tasks(nc.jetstream()) == {"set": 1}
        finally:
            await nc.close()
        spawn("--executors", "set")
        assert (await engine.wait(inst.id, timeout=30)).tokens[0].data == {"ok": True}


def poison_workflow(name: str, script: str) -> Workflow:
    """One remote shell transition running ``script`` with Python, exit code 75 counting as retryable."""
    wf = Workflow(name)
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "run").action(ShellExecutor(argv=["python3", "-c", script], retry_exit_codes=[75]), remote=True)
    return wf


async def test_a_poison_task_becomes_an_incident_and_dlq_retry_completes_the_instance(
    spawn, fresh_nats, tmp_path
) -> None:
    flag = tmp_path / "healthy"
    script = f"import os, sys; sys.exit(0 if os.path.exists({str(flag)!r}) else 75)"
    spawn("--executors", "shell")
    wf = poison_workflow("poison", script)
    async with Engine(JetStreamStore(servers=[fresh_nats])) as engine:
        inst = await engine.start(wf, {})
        failed = await engine.wait(inst.id, timeout=60)  # 3 deliveries on the backoff schedule, then the DLQ
        assert failed.status is InstanceStatus.FAILED
        (incident,) = failed.open_incidents
        assert incident.transition == "run" and "75" in incident.error.message
        assert failed.tasks[0].dead_lettered and failed.tokens == []
        nc = await nats.connect(fresh_nats)
        try:
            js = nc.jetstream()
            ((entry, letter),) = await list_dead_letters(js)
            assert letter.task is not None and letter.task.instance_id == inst.id
            flag.write_text("ok")
            await retry_dead_letter(js, entry)
        finally:
            await nc.close()
        done = await until(engine, inst.id, InstanceStatus.COMPLETED, timeout=30)
        assert done.status is InstanceStatus.COMPLETED and done.tokens[0].data["exit_code"] == 0


async def test_dlq_retry_asks_the_serving_engine_so_the_instance_records_it(spawn, fresh_nats, tmp_path) -> None:
    """``dlq retry`` of an instance's task goes through the engine serving its workflow: the retry is in the
    instance's history, the instance runs again at once (not while still failed), the letter is gone; a stale
    letter (its task no longer dead) is refused by name and kept."""
    flag = tmp_path / "healthy"
    script = f"import os, sys, time; time.sleep(0.5) if os.path.exists({str(flag)!r}) else sys.exit(75)"
    spawn("--executors", "shell")
    wf = poison_workflow("poison_cli", script)
    env = {**os.environ, "CB_NATS_URL": fresh_nats}
    async with Engine(JetStreamStore(servers=[fresh_nats]), workflows=[wf]) as engine:
        nc = await nats.connect(fresh_nats)
        control = ControlService(engine, nc)  # as `serve` runs it
        await control.start()
        try:
            js = nc.jetstream()
            # An older letter first, so the one retried below is not the oldest (nor the stream's first message).
            await ensure_task_streams(js, StreamSettings())
            await js.publish(
                "cb.dlq.other",
                b'{"reason": "malformed", "message": "x", "subject": "x", "deliveries": 1, "worker": "w"}',
            )
            ((older, _),) = await list_dead_letters(js)
            inst = await engine.start(wf, {})
            assert (await engine.wait(inst.id, timeout=60)).status is InstanceStatus.FAILED
            ((_, _), (entry, letter)) = await list_dead_letters(js)
            assert letter.task is not None
            flag.write_text("ok")
            retried = await asyncio.to_thread(
                subprocess.run, [CLI, "dlq", "retry", str(entry)], env=env, capture_output=True, text=True, timeout=60
            )
            assert retried.returncode == 0, retried.stderr
            assert f"handed out again by the engine as attempt 2 on cb.task.shell.{letter.task.task_id}" in (
                retried.stdout
            )
            assert f"instance {inst.id} is running" in retried.stdout
            now = await engine.get(inst.id)
            assert now.status is InstanceStatus.RUNNING and now.open_incidents == []
            assert [(t.attempt, t.dead_lettered) for t in now.tasks] == [(2, False)]
            assert [e for e, _ in await list_dead_letters(js)] == [older]
            done = await until(engine, inst.id, InstanceStatus.COMPLETED, timeout=30)
            assert done.status is InstanceStatus.COMPLETED
            history = [e async for e in engine.events(instance=inst.id)]
            after = [
                (e.type, getattr(e, "attempt", None), e.actor)
                for e in history[
                    history.index(
                        next(e for e in history if e.type is EventType.INSTANCE_STATUS_CHANGED and e.status == "failed")
                    )
                    + 1 :
                ]
            ]
            assert after == [
                (EventType.TRANSITION_STARTED, 2, "cli"),  # handed out again, which settles its incident
                (EventType.INSTANCE_STATUS_CHANGED, None, "cli"),  # running again: nothing else failed it
                (EventType.TRANSITION_FIRED, None, None),
                (EventType.INSTANCE_COMPLETED, None, None),
            ], after

            # A letter whose task is no longer dead (written on cb.dlq.<kind>, as workers did before letters had
            # a subject per task, so the engine's retry could not remove it): refused, named, and kept.
            await js.publish("cb.dlq.shell", letter.model_dump_json().encode())
            ((_, _), (stale, _)) = await list_dead_letters(js)
            refused = await asyncio.to_thread(
                subprocess.run, [CLI, "dlq", "retry", str(stale)], env=env, capture_output=True, text=True, timeout=60
            )
            assert refused.returncode != 0
            assert f"task {letter.task.task_id} of instance {inst.id}" in refused.stderr, refused.stderr
            assert f"dead letter {stale} is stale" in refused.stderr and "Traceback" not in refused.stderr
            assert [e for e, _ in await list_dead_letters(js)] == [older, stale]
        finally:
            await control.stop()
            await nc.close()


async def test_retry_after_a_dlq_retry_that_failed_again_runs_the_task_once_more(spawn, fresh_nats, tmp_path) -> None:
    """``dlq retry`` hands the task out as attempt 2 without the engine; when that fails for good too, the
    engine's own retry must not reuse attempt 2 (the stream would drop it as a repeat and nothing would run)."""
    flag = tmp_path / "healthy"
    runs = tmp_path / "runs"
    script = (
        f"import os, sys; open({str(runs)!r}, 'a').write('run\\n'); "
        f"sys.exit(0 if os.path.exists({str(flag)!r}) else 75)"
    )
    spawn("--executors", "shell")
    wf = poison_workflow("poison_twice", script)
    async with Engine(JetStreamStore(servers=[fresh_nats])) as engine:
        inst = await engine.start(wf, {})
        assert (await engine.wait(inst.id, timeout=60)).status is InstanceStatus.FAILED
        nc = await nats.connect(fresh_nats)
        try:
            js = nc.jetstream()
            ((entry, _),) = await list_dead_letters(js)
            assert (await retry_dead_letter(js, entry)).attempt == 2
            for _ in range(300):  # attempt 2 fails for good as well
                if [e for e, _ in await list_dead_letters(js)]:
                    break
                await asyncio.sleep(0.1)
            assert len(await list_dead_letters(js)) == 1
        finally:
            await nc.close()
        before = len(runs.read_text().splitlines())
        flag.write_text("ok")
        await engine.retry(inst.id)
        done = await until(engine, inst.id, InstanceStatus.COMPLETED, timeout=30)
        assert done.status is InstanceStatus.COMPLETED and done.tokens[0].data["exit_code"] == 0
        assert len(runs.read_text().splitlines()) == before + 1  # it ran once more
        started = [e async for e in engine.events(instance=inst.id, types=[EventType.TRANSITION_STARTED])]
        assert [getattr(e, "attempt", None) for e in started] == [1, 3]  # (attempt 2 was the dlq's)
    nc = await nats.connect(fresh_nats)
    try:  # handing the task out again settled its dead letter
        assert await list_dead_letters(nc.jetstream()) == []
    finally:
        await nc.close()


async def until(engine: Engine, instance_id: str, status: InstanceStatus, timeout: float) -> Any:
    """The instance once it reaches ``status`` (wait() returns at once for a failed one: it is settled)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        inst = await engine.get(instance_id)
        if inst.status is status or loop.time() > deadline:
            return inst
        await asyncio.sleep(0.05)


WORKFLOW_FILE = """
from circuit_breaker import Workflow
from circuit_breaker.executors import default_registry

wf = Workflow("served_remote")
queued, done = wf.states("queued", "done")
wf.flow(queued >> done, "stamp").action(default_registry().create("set", values={"stamped": "{{ n }}"}))
"""


async def test_serve_hands_actions_of_a_kind_to_workers_and_reports_metrics(spawn, fresh_nats, tmp_path) -> None:
    """``serve --remote-executors set --metrics-port 0``: the workflow code does not say remote; the engine does."""
    from tests.cli._support import start_serve

    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "served.py").write_text(WORKFLOW_FILE)
    worker = spawn("--executors", "set", "--concurrency", "8")
    env = {**os.environ, "CB_NATS_URL": fresh_nats, "NO_COLOR": "1"}
    proc, ready = start_serve(tmp_path, env, "--remote-executors", "set", "--metrics-port", "0")
    try:
        port = ready["metrics_port"]
        from circuit_breaker.nats import Client

        async with Client(servers=[fresh_nats]) as client:
            ids = [await client.inject("served_remote", {"n": n}) for n in range(20)]
        nc = await nats.connect(fresh_nats)
        try:
            js = nc.jetstream()
            for _ in range(200):
                if len(await results(js, workflow="served_remote")) == 20:
                    break
                await asyncio.sleep(0.1)
            stored = await results(js, workflow="served_remote")
        finally:
            await nc.close()
        assert sorted(r.instance_id for r in stored) == sorted(ids)
        assert {r.worker for r in stored} == {worker.ready["worker"]}
        text = ""
        for _ in range(100):
            ready = await asyncio.to_thread(_get, port, "/readyz")
            text = (await asyncio.to_thread(_get, port, "/metrics"))[1]
            if 'cb_engine_instances{status="completed",workflow="served_remote"} 20.0' in text:
                break
            await asyncio.sleep(0.1)
        assert ready[0] == 200 and json.loads(ready[1])["ready"] is True
        assert 'cb_engine_instances{status="completed",workflow="served_remote"} 20.0' in text
        assert 'cb_engine_task_results_total{executor="set",status="succeeded"} 20.0' in text
        assert 'cb_engine_task_round_trip_seconds_count{executor="set"} 20.0' in text
        assert 'cb_engine_firing_latency_seconds_count{workflow="served_remote"} 20.0' in text
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def _get(port: int, path: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


async def test_nats_restarted_under_load_the_engine_and_workers_reconnect_and_finish(tmp_path) -> None:
    from circuit_breaker.testing.nats import nats_server

    from .conftest import WorkerProc

    total = 400
    async with nats_server(tmp_path / "nats") as server:
        workers = [WorkerProc(server.url, tmp_path, "--executors", "wait", "--concurrency", "8") for _ in range(2)]
        try:
            wf = Workflow("restarted")
            a, b = wf.states("a", "b")
            wf.flow(a >> b, "run").action(default_registry().create("wait", duration=0.1), remote=True)
            async with Engine(JetStreamStore(servers=[server.url])) as engine:
                # At least 400 x 0.1 s / 16 slots = 2.5 s of work: the restart comes while most of it waits.
                starting = asyncio.ensure_future(asyncio.gather(*(engine.start(wf, {"n": n}) for n in range(total))))
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 30
                done: list[object] = []
                while loop.time() < deadline:
                    done = [i for i in await engine.instances("restarted") if i.status is InstanceStatus.COMPLETED]
                    if len(done) >= 20:
                        break
                    await asyncio.sleep(0.02)
                assert 20 <= len(done) < total, "the restart came under load"
                await server.stop()
                await asyncio.sleep(1.0)
                await server.start()
                ids = [i.id for i in await starting]
                finished = await asyncio.gather(*(engine.wait(i, timeout=90) for i in ids))
                assert all(i.status is InstanceStatus.COMPLETED for i in finished)
                fired = Counter([e.instance_id async for e in engine.events(types=[EventType.TRANSITION_FIRED])])
                assert len(fired) == total and set(fired.values()) == {1}
            assert all(w.proc.poll() is None for w in workers), "a worker exited when the server went away"
        finally:
            for worker in workers:
                worker.close()


async def test_a_late_result_of_an_overdue_attempt_cannot_complete_the_newer_one(spawn, fresh_nats, tmp_path) -> None:
    flag = tmp_path / "first_run_started"
    script = (
        "import os, sys, time\n"
        f"flag = {str(flag)!r}\n"
        "if os.path.exists(flag):\n    print('fast')\nelse:\n"
        "    open(flag, 'w').close(); time.sleep(3); print('slow')\n"
    )
    spawn("--executors", "shell", "--concurrency", "4")
    wf = Workflow("fenced")
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "run").action(ShellExecutor(argv=["python3", "-c", script]), remote=True, deadline=1.0).retry(3)
    async with Engine(JetStreamStore(servers=[fresh_nats])) as engine:
        inst = await engine.start(wf, {})
        done = await engine.wait(inst.id, timeout=30)
        assert done.status is InstanceStatus.COMPLETED and done.tokens[0].data["stdout"] == "fast\n"
        await asyncio.sleep(3)  # attempt 1 answers now, too late
        nc = await nats.connect(fresh_nats)
        try:
            stored = {r.attempt: r for r in await results(nc.jetstream(), instance_id=inst.id)}
        finally:
            await nc.close()
        assert stored[1].output["stdout"] == "slow\n" and stored[2].output["stdout"] == "fast\n"
        after = await engine.get(inst.id)
        assert after.version == done.version and after.tokens[0].data["stdout"] == "fast\n"
        events = [e async for e in engine.events(instance=inst.id)]
        assert [e.type for e in events if e.type is EventType.TRANSITION_FIRED] == [EventType.TRANSITION_FIRED]
        started = [e.attempt for e in events if e.type is EventType.TRANSITION_STARTED]
        assert started == [1, 2]
