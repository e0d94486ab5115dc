"""Task round trip through real worker processes vs raw JetStream work-queue throughput, in one run.

    python bench/bench_workers.py [--tasks 5000] [--write bench/RESULTS.md]

1. raw: publish N messages to a work-queue stream, one pull consumer ``fetch(256)`` + ``ack`` until drained;
2. ours: ``submit_task`` N no-op tasks (the ``set`` executor), 2 ``circuit-breaker worker`` processes run them,
   time until the N-th result is stored in ``CB_RESULTS``; dispatch-to-start latency = result.started -
   task.created (p50/p99). Bar: ours >= 0.3x raw.
3. end to end: an engine on the JetStream store starts N instances of a workflow whose one transition runs the
   ``set`` executor remotely (``remote=True``); the same 2 workers run the tasks; time from the first start
   until every instance is completed (start, dispatch, worker, result applied, firing, completion);
   dispatch-to-start latency = result.started - the transition_started event's time. Also with chains of 5
   remote transitions, and with the engine under ``serve``'s GC policy;
4. one instance at a time (300, after 20 for warm-up): start -> completed and dispatch-to-start latency without
   the queueing a burst adds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
import nats.errors
from bench_nats import served_gc  # the GC policy of `serve`, for one case (bench/ is this script's directory)
from nats.js.api import RetentionPolicy, StreamConfig

from circuit_breaker import Engine, EventType, InstanceStatus, Workflow
from circuit_breaker.events import TransitionStarted
from circuit_breaker.executors import default_registry
from circuit_breaker.nats import JetStreamStore
from circuit_breaker.nats._server import NatsServer
from circuit_breaker.workers import Task, TaskResult, results, submit_task

CLI = shutil.which("circuit-breaker") or str(Path(sys.executable).with_name("circuit-breaker"))


async def raw(url: str, n: int) -> float:
    nc = await nats.connect(url)
    js = nc.jetstream(timeout=10)
    await js.add_stream(StreamConfig(name="RAW", subjects=["raw.>"], retention=RetentionPolicy.WORK_QUEUE))
    await asyncio.gather(*(js.publish("raw.x", b'{"n": %d}' % i) for i in range(n)))
    sub = await js.pull_subscribe("raw.x", durable="raw", stream="RAW")
    t0, done = time.perf_counter(), 0
    while done < n:
        try:
            msgs = await sub.fetch(256, timeout=2)
        except nats.errors.TimeoutError:
            break
        for msg in msgs:
            await msg.ack()
        done += len(msgs)
    elapsed = time.perf_counter() - t0
    await nc.close()
    return done / elapsed


def start_workers(url: str, cwd: Path) -> list[subprocess.Popen[str]]:
    env = {**os.environ, "CB_NATS_URL": url}
    procs = [
        subprocess.Popen(
            [CLI, "worker", "--json", "--executors", "set", "--concurrency", "64"],
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(2)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline(), "worker did not start"
    return procs


def stop_workers(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        p.terminate()
        p.wait(30)


def percentiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[max(int(len(ordered) * 0.99) - 1, 0)]


async def ours(url: str, n: int, cwd: Path) -> tuple[float, float, float]:
    procs = start_workers(url, cwd)
    try:
        nc = await nats.connect(url)
        js = nc.jetstream(timeout=10)
        spec = {"executor": "set", "params": {"values": {"ok": True}}}
        tasks = [Task.new(workflow="bench", instance_id=f"i{i}", transition="t", executor=spec) for i in range(n)]
        t0 = time.perf_counter()
        for chunk in range(0, n, 500):
            await asyncio.gather(*(submit_task(js, t) for t in tasks[chunk : chunk + 500]))
        got: list[TaskResult] = []
        while len(got) < n:
            await asyncio.sleep(0.2)
            info = await js.stream_info("CB_RESULTS")
            if info.state.messages >= n:
                got = await results(js)
        elapsed = time.perf_counter() - t0
        created = {t.task_id: t.created for t in tasks}
        lat = [(r.started - created[r.task_id]).total_seconds() * 1000 for r in got]
        await nc.close()
        return (n / elapsed, *percentiles(lat))
    finally:
        stop_workers(procs)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def handed_out(engine: Engine) -> dict[str, Any]:
    """When each task was handed out: its transition_started event's time, by task id."""
    return {
        e.task_id: e.time
        async for e in engine.events(types=[EventType.TRANSITION_STARTED])
        if isinstance(e, TransitionStarted)
    }


CPU: dict[str, float] = {}  # CPU per task (us) of the last end_to_end run: engine, workers


async def end_to_end(url: str, n: int, cwd: Path, chain: int = 1) -> tuple[float, float, float]:
    """``n`` tasks through an engine: ``n / chain`` instances, each a chain of ``chain`` remote transitions,
    until every instance is completed. Returns tasks/s and the dispatch-to-start latency p50/p99 (ms); the
    engine's and the workers' CPU per task go to ``CPU``."""
    procs = start_workers(url, cwd)
    name = f"bench_remote_{chain}_{len(CPU)}"
    try:
        wf = Workflow(name)
        places = wf.states(*(f"p{i}" for i in range(chain + 1)))
        for i in range(chain):
            action = default_registry().create("set", values={f"ok{i}": True})
            wf.flow(places[i] >> places[i + 1], f"run{i}").action(action, remote=True)
        instances = n // chain
        async with Engine(JetStreamStore(servers=[url])) as engine:
            workers0 = sum(cpu_seconds(p.pid) for p in procs)
            t0, cpu0 = time.perf_counter(), time.process_time()
            ids: list[str] = []
            for chunk in range(0, instances, 500):
                batch = range(chunk, min(chunk + 500, instances))
                ids.extend(i.id for i in await asyncio.gather(*(engine.start(wf, {"n": i}) for i in batch)))
            done = await asyncio.gather(*(engine.wait(i, timeout=600) for i in ids))
            elapsed = time.perf_counter() - t0
            CPU["engine"] = (time.process_time() - cpu0) / n * 1e6
            CPU["workers"] = (sum(cpu_seconds(p.pid) for p in procs) - workers0) / n * 1e6
            assert all(i.status is InstanceStatus.COMPLETED for i in done)
            since = await handed_out(engine)
        nc = await nats.connect(url)
        got = await results(nc.jetstream(timeout=10), workflow=name)
        await nc.close()
        lat = [(r.started - since[r.task_id]).total_seconds() * 1000 for r in got]
        return (instances * chain / elapsed, *percentiles(lat))
    finally:
        stop_workers(procs)


async def one_at_a_time(url: str, n: int, cwd: Path) -> tuple[float, float, float, float]:
    """Latency without queueing: ``n`` instances of the one-remote-transition workflow, one after the other.
    Returns start -> completed p50/p99 and dispatch-to-start p50/p99 (ms); the first 20 are a warm-up."""
    procs = start_workers(url, cwd)
    try:
        wf = Workflow("bench_one_at_a_time")
        a, b = wf.states("a", "b")
        wf.flow(a >> b, "run").action(default_registry().create("set", values={"ok": True}), remote=True)
        whole: list[float] = []
        async with Engine(JetStreamStore(servers=[url])) as engine:
            for i in range(n + 20):
                t0 = time.perf_counter()
                instance = await engine.start(wf, {"n": i})
                await engine.wait(instance.id, timeout=30)
                whole.append((time.perf_counter() - t0) * 1000)
            since = await handed_out(engine)
        nc = await nats.connect(url)
        got = sorted(await results(nc.jetstream(timeout=10), workflow=wf.name), key=lambda r: r.started)[20:]
        await nc.close()
        dispatch = [(r.started - since[r.task_id]).total_seconds() * 1000 for r in got]
        return (*percentiles(whole[20:]), *percentiles(dispatch))
    finally:
        stop_workers(procs)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        async with NatsServer(Path(tmp) / "nats") as server:
            raw_rate = await raw(server.url, args.tasks)
            rate, p50, p99 = await ours(server.url, args.tasks, Path(tmp))
            e2e, e2e_p50, e2e_p99 = await end_to_end(server.url, args.tasks, Path(tmp))
            cpu = dict(CPU)
            e2e5, e2e5_p50, e2e5_p99 = await end_to_end(server.url, args.tasks, Path(tmp), chain=5)
            with served_gc():
                served, served_p50, served_p99 = await end_to_end(server.url, args.tasks, Path(tmp))
            served_cpu = dict(CPU)
            seq_p50, seq_p99, seq_d50, seq_d99 = await one_at_a_time(server.url, 300, Path(tmp))
    ratio = rate / raw_rate
    e2e_ratio = e2e / raw_rate
    e2e5_ratio = e2e5 / raw_rate
    lines = [
        "",
        "## Workers: task round trip (bench/bench_workers.py)",
        "",
        f"`python bench/bench_workers.py --tasks {args.tasks}`; one nats-server on loopback, 2 worker processes",
        "(`--concurrency 64`, `set` executor as the no-op), the same machine as above (2 cores: publisher, server",
        "and both workers share them).",
        "",
        "| measurement | value | bar | verdict |",
        "|---|---|---|---|",
        f"| raw work queue `fetch(256)` + `ack`, 1 consumer | {raw_rate:,.0f} msgs/s |  |  |",
        f"| round trip submit -> worker -> result stored | {rate:,.0f} tasks/s |  |  |",
        f"| ratio round trip / raw | {ratio:.3f}x | >= 0.3x | {'met' if ratio >= 0.3 else 'missed'} |",
        f"| dispatch-to-start latency p50 | {p50:.1f} ms |  |  |",
        f"| dispatch-to-start latency p99 | {p99:.1f} ms |  |  |",
        f"| end to end: engine start -> dispatch -> worker -> result -> firing -> completed | {e2e:,.0f} tasks/s |  |  |",
        f"| ratio end to end / raw | {e2e_ratio:.3f}x | >= 0.3x | {'met' if e2e_ratio >= 0.3 else 'missed'} |",
        f"| end to end dispatch-to-start latency p50 | {e2e_p50:.1f} ms |  |  |",
        f"| end to end dispatch-to-start latency p99 | {e2e_p99:.1f} ms |  |  |",
        f"| end to end: CPU per task, engine / both workers | {cpu['engine']:,.0f} / {cpu['workers']:,.0f} us |  |  |",
        f"| end to end with `serve`'s GC policy in the engine | {served:,.0f} tasks/s |  |  |",
        f"| ratio end to end with `serve`'s GC policy / raw | {served / raw_rate:.3f}x | >= 0.3x |"
        f" {'met' if served / raw_rate >= 0.3 else 'missed'} |",
        f"| the same: dispatch-to-start p50 / p99 | {served_p50:.1f} / {served_p99:.1f} ms |  |  |",
        f"| the same: CPU per task, engine / both workers | {served_cpu['engine']:,.0f} / "
        f"{served_cpu['workers']:,.0f} us |  |  |",
        f"| one instance at a time: start -> completed p50 / p99 | {seq_p50:.2f} / {seq_p99:.2f} ms |  |  |",
        f"| one instance at a time: dispatch-to-start p50 / p99 | {seq_d50:.2f} / {seq_d99:.2f} ms |  |  |",
        f"| end to end, chains of 5 remote transitions per instance | {e2e5:,.0f} tasks/s |  |  |",
        f"| ratio chains of 5 / raw | {e2e5_ratio:.3f}x | >= 0.3x | {'met' if e2e5_ratio >= 0.3 else 'missed'} |",
        f"| chains of 5: dispatch-to-start latency p50 / p99 | {e2e5_p50:.1f} / {e2e5_p99:.1f} ms |  |  |",
        "",
        "Latency is measured under a burst (all tasks submitted at once), so it includes queueing behind earlier",
        "tasks. End to end, the engine writes four events per instance (started instance, task started, task",
        "result fired, completed) and publishes the task; the worker publishes the result.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        with args.write.open("a") as f:
            f.write(text)


if __name__ == "__main__":
    asyncio.run(main())
