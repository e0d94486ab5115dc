"""The NATS server restarts under load: the worker processes keep running, reconnect, and every task ends with
exactly one stored result."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from pathlib import Path

import nats
import pytest

from circuit_breaker import Engine, InstanceStatus, Workflow
from circuit_breaker.executors import default_registry
from circuit_breaker.nats import JetStreamStore
from circuit_breaker.testing.nats import nats_server
from circuit_breaker.workers import pending_tasks, results

from .conftest import WorkerProc, make_task, submit_task, wait_results

SLOW = {"executor": "wait", "params": {"duration": 0.05}}


async def _results_soon(url: str, count: int, timeout: float) -> int:
    """Poll through a fresh connection (the test's own one may be reconnecting) until ``count`` results."""
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        try:
            nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0)
        except Exception:
            await asyncio.sleep(0.3)
            continue
        try:
            seen = len(await results(nc.jetstream(timeout=5.0)))
        except Exception:
            seen = 0
        finally:
            await nc.close()
        if seen >= count:
            break
        await asyncio.sleep(0.2)
    return seen


async def test_server_restart_under_load_every_task_finishes_once(tmp_path: Path) -> None:
    total = 300
    async with nats_server(tmp_path / "nats") as server:
        workers = [
            WorkerProc(server.url, tmp_path, "--executors", "wait", "--concurrency", "4") for _ in range(3)
        ]
        try:
            nc = await nats.connect(server.url)
            try:
                js = nc.jetstream(timeout=5.0)
                tasks = [make_task(SLOW, n) for n in range(total)]
                await asyncio.gather(*(submit_task(js, t) for t in tasks))
            finally:
                await nc.close()

            # Restart while tasks are running and most are still queued.
            assert await _results_soon(server.url, 40, timeout=15) >= 40
            await server.stop()
            await asyncio.sleep(1.0)
            await server.start()
            assert all(w.proc.poll() is None for w in workers), "a worker exited when the server went away"

            nc = await nats.connect(server.url)
            try:
                js = nc.jetstream(timeout=5.0)
                got = await wait_results(js, total, timeout=25)
                per_task = Counter(r.task_id for r in got)
                assert len(per_task) == total, f"lost {total - len(per_task)} task(s)"
                assert max(per_task.values()) == 1, "a task has more than one stored result"
                assert {r.task_id for r in got} == {t.task_id for t in tasks}
                assert all(r.status == "succeeded" and r.attempt == 1 for r in got)
                assert len({r.worker for r in got}) == 3, "every worker kept taking tasks"
                assert (await pending_tasks(js)).get("wait", 0) == 0
            finally:
                await nc.close()
            logs = "".join(w.log() for w in workers)
            assert "reconnected to NATS" in logs, logs[-2000:]
            for worker in workers:
                assert worker.terminate() == 0, worker.log()[-2000:]
        finally:
            for worker in workers:
                worker.close()


async def test_an_engine_applies_every_result_across_a_server_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Results in flight while the server shuts down (it ends waiting pulls with "409 Server Shutdown" and may
    still deliver a moment longer): each is applied once the server is back, none is handed back so often that
    the engine gives up on it, and every instance completes."""
    caplog.set_level(logging.WARNING, logger="circuit_breaker")
    async with nats_server(tmp_path / "nats") as server:
        workers = [
            WorkerProc(server.url, tmp_path, "--executors", "wait,set", "--concurrency", "4") for _ in range(2)
        ]
        try:
            flows = []
            for name in ("restart_a", "restart_b", "restart_c"):
                wf = Workflow(name)
                a, b, c = wf.states("a", "b", "c")
                wf.flow(a >> b, "slow").action(default_registry().create("wait", duration=0.5), remote=True)
                wf.flow(b >> c, "quick").action(default_registry().create("set", values={"ok": True}), remote=True)
                flows.append(wf)
            async with Engine(JetStreamStore(servers=[server.url])) as engine:
                ids = [(await engine.start(flows[i % 3], {"n": i})).id for i in range(60)]
                await asyncio.sleep(1.5)  # tasks running, results arriving
                await server.stop()
                await asyncio.sleep(3.0)
                await server.start()
                done = await asyncio.gather(*(engine.wait(i, timeout=60) for i in ids))
                assert [d.status for d in done] == [InstanceStatus.COMPLETED] * 60
                nc = await nats.connect(server.url)
                try:
                    js = nc.jetstream(timeout=5.0)
                    for wf in flows:
                        info = await js.consumer_info("CB_RESULTS", f"cb-engine-{wf.name}")
                        assert info.num_ack_pending == 0 and info.num_pending == 0
                        assert info.num_redelivered < 20, f"{wf.name}: results went round {info.num_redelivered} times"
                finally:
                    await nc.close()
            assert not [r for r in caplog.records if "giving up" in r.getMessage()]
        finally:
            for worker in workers:
                worker.close()
