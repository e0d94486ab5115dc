"""Benchmark of the core engine: firing rate, join scaling, import time, memory per idle instance.

Run from the repository root::

    python bench/bench_core.py            # full run (about 2 minutes)
    python bench/bench_core.py --quick    # short run, smaller sizes, fewer repetitions
    python bench/bench_core.py --write bench/RESULTS.md   # full run, and write the results page

Measurements (all in one run):

1. Firings per second on the same 5-place cycle p0 -> p1 -> p2 -> p3 -> p4 -> p0, one cheap guard per
   transition (a check on model/token data), best of several repetitions after a warm-up:
   a. ``transitions.Machine`` (sync), ``conditions=[callable]`` on each transition;
   b. ``transitions.extensions.asyncio.AsyncMachine`` with the same *sync* callable guard (an async-guard
      variant is reported for information);
   c. ours, manual transitions fired with ``await engine.fire(instance_id, name)`` on an in-memory Engine;
   d. ours, automatic transitions: the engine fires the cycle by itself; a counting guard stops it after N;
   e. ours, seed-style sync ``wf.fire(token, name)`` without an engine (informational).
2. Instance-scoped join ``(a, b) >> c`` with 10,000 and 100,000 instances waiting at the join: the net is
   ``s >> (a, hold)`` (auto fork), ``hold >> b`` (manual "release"), ``(a, b) >> c`` (auto join). For a
   sample of waiting instances we fire "release" and wait until the join has fired and the instance is
   completed; the rate is joins completed per second.
3. ``import circuit_breaker`` time in a fresh interpreter (median of several runs), also for
   ``from circuit_breaker import Workflow, RuleSet, Token, Engine`` and, for context, for pydantic.
4. Memory per idle instance: N instances of the cycle waiting at a manual transition; tracemalloc bytes per
   instance and RSS delta per instance, each measured in its own fresh child process.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PLACES = [f"p{i}" for i in range(5)]
TRIGGERS = [f"t{i}" for i in range(5)]

# Bars from the issue.
BAR_VS_SYNC = 0.5  # ours (manual) >= 0.5x transitions.Machine
BAR_VS_ASYNC = 2.0  # ours (manual) >= 2x AsyncMachine
BAR_JOIN_DROP = 0.5  # rate at 100k >= 0.5x rate at 10k
BAR_IMPORT_MS = 300.0


# ---------------------------------------------------------------------------------------------------------
# helpers


def best_rate(run_once: Callable[[int], float], n: int, reps: int, warmup: int) -> tuple[float, list[float]]:
    """Call ``run_once(n)`` (returns seconds) ``reps`` times after a warm-up of ``warmup`` firings;
    returns the best rate and all rates."""
    if warmup:
        run_once(warmup)
    rates = []
    for _ in range(reps):
        gc.collect()
        dt = run_once(n)
        rates.append(n / dt)
    return max(rates), rates


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


# ---------------------------------------------------------------------------------------------------------
# 1. the 5-place cycle


class Model:
    def __init__(self) -> None:
        self.n = 0


def machine_cycle(n: int) -> float:
    from transitions import Machine

    model = Model()
    transitions = [
        {
            "trigger": TRIGGERS[i],
            "source": PLACES[i],
            "dest": PLACES[(i + 1) % 5],
            "conditions": [lambda: model.n >= 0],
        }
        for i in range(5)
    ]
    Machine(model=model, states=PLACES, transitions=transitions, initial="p0", auto_transitions=False)
    t0, t1, t2, t3, t4 = (getattr(model, t) for t in TRIGGERS)
    rounds = n // 5
    start = time.perf_counter()
    for _ in range(rounds):
        t0()
        t1()
        t2()
        t3()
        t4()
    dt = time.perf_counter() - start
    assert model.state == "p0", model.state
    return dt


def async_machine_cycle(n: int, async_guard: bool = False) -> float:
    from transitions.extensions.asyncio import AsyncMachine

    model = Model()
    if async_guard:

        async def guard() -> bool:
            return model.n >= 0

        cond: Any = guard
    else:

        def cond() -> bool:
            return model.n >= 0

    transitions = [
        {"trigger": TRIGGERS[i], "source": PLACES[i], "dest": PLACES[(i + 1) % 5], "conditions": [cond]}
        for i in range(5)
    ]
    AsyncMachine(model=model, states=PLACES, transitions=transitions, initial="p0", auto_transitions=False)
    t0, t1, t2, t3, t4 = (getattr(model, t) for t in TRIGGERS)
    rounds = n // 5

    async def go() -> float:
        start = time.perf_counter()
        for _ in range(rounds):
            await t0()
            await t1()
            await t2()
            await t3()
            await t4()
        dt = time.perf_counter() - start
        assert model.state == "p0", model.state
        return dt

    return asyncio.run(go())


def cycle_workflow(trigger: str, guard: Callable[[Any], bool] | None = None, name: str = "cycle") -> Any:
    from circuit_breaker import Workflow

    if guard is None:

        def guard(tok: Any) -> bool:
            return tok.data["n"] >= 0

    wf = Workflow(name)
    p = wf.states(*PLACES)
    for i in range(5):
        wf.flow(p[i] >> p[(i + 1) % 5], TRIGGERS[i], trigger=trigger, guards={"all": [guard]})  # type: ignore[arg-type]
    return wf


def ours_manual_cycle(n: int) -> float:
    from circuit_breaker import Engine, InstanceStatus

    wf = cycle_workflow("manual")
    rounds = n // 5

    async def go() -> float:
        async with Engine() as engine:
            engine.register(wf)
            inst = await engine.start("cycle", {"n": 0})
            inst = await engine.wait(inst.id)
            assert inst.status is InstanceStatus.WAITING and inst.enabled_manual == ["t0"], inst
            iid = inst.id
            fire = engine.fire
            start = time.perf_counter()
            for _ in range(rounds):
                await fire(iid, "t0")
                await fire(iid, "t1")
                await fire(iid, "t2")
                await fire(iid, "t3")
                await fire(iid, "t4")
            dt = time.perf_counter() - start
            inst = await engine.get(iid)
            assert inst.version == 2 + 5 * rounds and inst.tokens[0].place == "p0", inst.version
            return dt

    return asyncio.run(go())


def ours_auto_cycle(n: int) -> float:
    from circuit_breaker import Engine, InstanceStatus

    left = [n]

    def guard(tok: Any) -> bool:  # cheap check, and the stop after n firings
        left[0] -= 1
        return left[0] >= 0

    wf = cycle_workflow("auto", guard)

    async def go() -> float:
        async with Engine() as engine:
            engine.register(wf)
            start = time.perf_counter()
            inst = await engine.start(wf, {"n": 0})
            inst = await engine.wait(inst.id)
            dt = time.perf_counter() - start
            fired = sum(1 for e in inst.history if e.kind == "fired")
            assert fired == n and inst.status is InstanceStatus.WAITING, (fired, inst.status)
            return dt

    return asyncio.run(go())


def ours_seed_cycle(n: int) -> float:
    from circuit_breaker import Token

    wf = cycle_workflow("manual")
    tok = wf.add_token(Token(data={"n": 0}))
    fire = wf.fire
    rounds = n // 5
    start = time.perf_counter()
    for _ in range(rounds):
        tok = fire(tok, "t0")
        tok = fire(tok, "t1")
        tok = fire(tok, "t2")
        tok = fire(tok, "t3")
        tok = fire(tok, "t4")
    dt = time.perf_counter() - start
    assert tok.place == "p0" and len(tok.history) == 1 + 5 * rounds
    return dt


def bench_cycle(cfg: dict[str, Any]) -> dict[str, Any]:
    """Every case is warmed up, then the repetitions run round-robin over the cases, so that a change in the
    machine's load (other processes) affects every case alike; each case reports its best repetition."""
    n, reps, warm = cfg["cycle_n"], cfg["reps"], cfg["warmup"]
    out: dict[str, Any] = {"n": n, "reps": reps}
    cases: list[tuple[str, Callable[[int], float], int]] = [
        ("machine_sync", machine_cycle, n * 3),  # the sync machine is fast: give it more firings per rep
        ("machine_async", async_machine_cycle, n),
        ("machine_async_asyncguard", lambda k: async_machine_cycle(k, async_guard=True), n),
        ("ours_manual", ours_manual_cycle, n),
        ("ours_auto", ours_auto_cycle, n),
        ("ours_seed", ours_seed_cycle, n),
    ]
    rates: dict[str, list[float]] = {key: [] for key, _, _ in cases}
    for _key, fn, _k in cases:
        fn(warm)
    for _ in range(reps):
        for key, fn, k in cases:
            gc.collect()
            rates[key].append(k / fn(k))
    for key, _fn, k in cases:
        best = max(rates[key])
        out[key] = {"best": best, "rates": rates[key], "firings_per_rep": k}
        shown = ", ".join(fmt_rate(r) for r in rates[key])
        print(f"  {key:26s} best {fmt_rate(best):>10s} firings/s = {1e6 / best:6.1f} us/firing   (reps: {shown})")
    return out


# ---------------------------------------------------------------------------------------------------------
# 2. join scaling


def join_workflow() -> Any:
    from circuit_breaker import Workflow

    wf = Workflow("joiner")
    s, a, hold, b, c = wf.states("s", "a", "hold", "b", "c")
    wf.flow(s >> (a, hold), "fork")  # automatic
    wf.flow(hold >> b, "release", trigger="manual")  # the second input of the join arrives by hand
    wf.flow((a, b) >> c, "join")  # automatic, instance-scoped join
    return wf


async def _join_at(size: int, sample: int, reps: int, seed: int) -> dict[str, Any]:
    from circuit_breaker import Engine, InstanceStatus

    wf = join_workflow()
    async with Engine() as engine:
        engine.register(wf)
        ids: list[str] = []
        # ``size`` instances stay waiting at the join for the whole measurement: the samples come on top.
        total = size + sample * (reps + 1)
        start = time.perf_counter()
        batch = 1000
        for lo in range(0, total, batch):
            chunk = [(await engine.start("joiner", {"n": i})).id for i in range(lo, min(total, lo + batch))]
            for iid in chunk:
                await engine.wait(iid)
            ids.extend(chunk)
        build = time.perf_counter() - start
        probe = await engine.get(ids[-1])
        assert probe.status is InstanceStatus.WAITING and sorted(probe.places) == ["a", "hold"], probe
        assert probe.enabled_manual == ["release"]
        rng = random.Random(seed)
        picks = rng.sample(ids, sample * (reps + 1))
        rates = []
        for r in range(reps + 1):  # the first round is the warm-up
            chosen = picks[r * sample : (r + 1) * sample]
            gc.collect()
            t0 = time.perf_counter()
            for iid in chosen:
                await engine.fire(iid, "release")
                await engine.wait(iid)
            dt = time.perf_counter() - t0
            if r:
                rates.append(sample / dt)
            done = await engine.get(chosen[-1])
            assert done.status is InstanceStatus.COMPLETED and done.places == ["c"], done
        waiting = len(await engine.instances("joiner", "waiting"))
        assert waiting == size, (waiting, size)
        return {
            "size": size,
            "sample": sample,
            "best": max(rates),
            "rates": rates,
            "build_s": build,
            "starts_per_s": total / build,
            "built": total,
            "still_waiting": waiting,
        }


def bench_join(cfg: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for size in cfg["join_sizes"]:
        gc.collect()
        res = asyncio.run(_join_at(size, cfg["join_sample"], cfg["join_reps"], seed=size))
        gc.collect()
        out[str(size)] = res
        print(
            f"  {size:>7,d} waiting: best {fmt_rate(res['best']):>8s} joins/s "
            f"(reps: {', '.join(fmt_rate(r) for r in res['rates'])}); "
            f"built in {res['build_s']:.1f} s ({fmt_rate(res['starts_per_s'])} starts/s incl. the fork)"
        )
    return out


# ---------------------------------------------------------------------------------------------------------
# 3. import time


IMPORT_SNIPPETS = {
    "import circuit_breaker": "import circuit_breaker",
    "from circuit_breaker import Workflow, RuleSet, Token, Engine": (
        "from circuit_breaker import Workflow, RuleSet, Token, Engine"
    ),
    "import pydantic; from pydantic import BaseModel": "import pydantic; from pydantic import BaseModel",
}


def time_import(stmt: str, runs: int, pycache: str | None) -> list[float]:
    """Milliseconds for ``stmt`` in fresh interpreters. With ``pycache`` (a directory), bytecode is cached
    there (PYTHONPYCACHEPREFIX), as for an installed package; without it, the environment is used as it is."""
    code = f"import time; t = time.perf_counter(); {stmt}; print(time.perf_counter() - t)"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if pycache is not None:
        env["PYTHONPYCACHEPREFIX"] = pycache
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    times = []
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, env=env, cwd=ROOT)  # warm-up
    for _ in range(runs):
        res = subprocess.run(
            [sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env, cwd=ROOT
        )
        times.append(float(res.stdout.strip()) * 1000)
    return times


def bench_import(cfg: dict[str, Any]) -> dict[str, Any]:
    import shutil
    import tempfile

    out: dict[str, Any] = {}
    own_pyc = any((ROOT / "circuit_breaker").glob("__pycache__/*.pyc"))
    no_write = bool(os.environ.get("PYTHONDONTWRITEBYTECODE"))
    cache_dir = tempfile.mkdtemp(prefix="cb-bench-pycache-")
    try:
        modes = [("cached", cache_dir)]
        if no_write and not own_pyc:
            # This environment compiles circuit_breaker from source on every start; report that too.
            modes.append(("no bytecode cache", None))
        for mode, pycache in modes:
            for label, stmt in IMPORT_SNIPPETS.items():
                times = time_import(stmt, cfg["import_runs"], pycache)
                key = label if mode == "cached" else f"{label} [{mode}]"
                out[key] = {
                    "median_ms": statistics.median(times),
                    "min_ms": min(times),
                    "max_ms": max(times),
                    "mode": mode,
                    "stmt": label,
                }
                print(
                    f"  {key:82s} median {statistics.median(times):6.1f} ms "
                    f"(min {min(times):.1f}, max {max(times):.1f})"
                )
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    return out


# ---------------------------------------------------------------------------------------------------------
# 4. memory per idle instance (each way of measuring in its own child process)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _fill(engine: Any, n: int) -> list[Any]:
    from circuit_breaker import InstanceStatus

    ids = []
    batch = 1000
    for lo in range(0, n, batch):
        chunk = [(await engine.start("cycle", {"n": i})).id for i in range(lo, min(n, lo + batch))]
        for iid in chunk:
            inst = await engine.wait(iid)
            assert inst.status is InstanceStatus.WAITING
        ids.extend(chunk)
    return ids


def _short(filename: str) -> str:
    for marker in ("/circuit_breaker/", "/site-packages/", "/lib/python3"):
        if marker in filename:
            return filename[filename.index(marker) + 1 :]
    return filename


def allocation_sites(snap0: Any, snap1: Any, n: int) -> list[dict[str, Any]]:
    """Memory growth per instance, grouped by the innermost line of the library that led to it, and the line
    that allocated when that is elsewhere (inside pydantic or asyncio, say)."""
    sites: dict[str, list[float]] = {}
    for stat in snap1.compare_to(snap0, "traceback"):
        frames = list(stat.traceback)  # oldest call first; the allocating line is the last
        alloc = frames[-1]
        ours = next((f for f in reversed(frames) if "/circuit_breaker/" in f.filename), None)
        key = f"{_short(ours.filename)}:{ours.lineno}" if ours is not None else "(outside the library)"
        if ours is None or ours is not alloc:
            key += f" via {_short(alloc.filename)}:{alloc.lineno}"
        acc = sites.setdefault(key, [0.0, 0.0])
        acc[0] += stat.size_diff
        acc[1] += stat.count_diff
    rows = [
        {"where": k, "bytes_per_instance": v[0] / n, "blocks_per_instance": v[1] / n}
        for k, v in sorted(sites.items(), key=lambda kv: -kv[1][0])
    ]
    return rows[:15]


def memory_child(n: int, mode: str) -> dict[str, Any]:
    import tracemalloc

    from circuit_breaker import Engine

    wf = cycle_workflow("manual")

    async def go() -> dict[str, Any]:
        async with Engine() as engine:
            engine.register(wf)
            await _fill(engine, 200)  # warm: first-use caches, compiled workflow, lifecycle table
            gc.collect()
            traced = mode in ("tracemalloc", "sites")
            if traced:
                # Totals need one frame; the allocation-site breakdown needs the stack (slow: use a small N).
                tracemalloc.start(8 if mode == "sites" else 1)
                before = tracemalloc.get_traced_memory()[0]
                snap0 = tracemalloc.take_snapshot() if mode == "sites" else None
            else:
                before = rss_bytes()
            await _fill(engine, n)
            for _ in range(3):  # let the last done-callbacks of the scheduler tasks run
                await asyncio.sleep(0)
            gc.collect()
            res: dict[str, Any] = {"n": n, "mode": mode}
            if traced:
                after = tracemalloc.get_traced_memory()[0]
                if mode == "sites":
                    res["top"] = allocation_sites(snap0, tracemalloc.take_snapshot(), n)
                tracemalloc.stop()
            else:
                after = rss_bytes()
            res["bytes_per_instance"] = (after - before) / n
            return res

    return asyncio.run(go())


def bench_memory(cfg: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    for mode, n in (("tracemalloc", cfg["mem_n"]), ("rss", cfg["mem_n"]), ("sites", cfg["mem_sites_n"])):
        res = subprocess.run(
            [sys.executable, __file__, "--memory-child", str(n), mode],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        )
        out[mode] = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"  {mode:12s} {out[mode]['bytes_per_instance']:8,.0f} bytes per idle instance (N = {n:,d})")
    print(f"  largest allocation sites (tracemalloc, bytes per instance, N = {cfg['mem_sites_n']:,d}):")
    for row in out["sites"]["top"][:8]:
        print(f"    {row['bytes_per_instance']:7,.0f} B  {row['blocks_per_instance']:5.1f} blocks  {row['where']}")
    return out


# ---------------------------------------------------------------------------------------------------------
# report


def machine_info() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        date = subprocess.run(["date"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        date = time.strftime("%a %b %d %H:%M:%S %Z %Y")
    import pydantic
    import transitions

    try:  # read-only: which library state was measured
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "--no-optional-locks", "status", "--porcelain", "--", "circuit_breaker"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
        changed = sorted(line[3:] for line in dirty if line.strip())
        source = head + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")
    except (OSError, subprocess.CalledProcessError):
        source = "unknown"
    return {
        "source": source,
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "date": date,
        "transitions": transitions.__version__,
        "pydantic": pydantic.VERSION,
    }


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def summary_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(measurement, value, bar, verdict) rows."""
    rows: list[tuple[str, str, str, str]] = []
    c = results["cycle"]
    sync, amach, amach_a = c["machine_sync"]["best"], c["machine_async"]["best"], c["machine_async_asyncguard"]["best"]
    manual, auto, seed = c["ours_manual"]["best"], c["ours_auto"]["best"], c["ours_seed"]["best"]
    rows.append(("1a transitions.Machine (sync guard)", f"{fmt_rate(sync)} firings/s", "", ""))
    rows.append(("1b AsyncMachine (sync guard)", f"{fmt_rate(amach)} firings/s", "", ""))
    rows.append(("1b' AsyncMachine (async guard), info", f"{fmt_rate(amach_a)} firings/s", "", ""))
    rows.append(("1c ours, manual `await engine.fire`", f"{fmt_rate(manual)} firings/s", "", ""))
    rows.append(("1d ours, automatic (engine fires the cycle)", f"{fmt_rate(auto)} firings/s", "", ""))
    rows.append(("1e ours, seed-style sync `wf.fire`, info", f"{fmt_rate(seed)} firings/s", "", ""))
    rows.append(
        (
            "ratio ours manual / Machine",
            f"{manual / sync:.3f}x",
            f">= {BAR_VS_SYNC}x",
            verdict(manual / sync >= BAR_VS_SYNC),
        )
    )
    rows.append(
        (
            "ratio ours manual / AsyncMachine",
            f"{manual / amach:.3f}x",
            f">= {BAR_VS_ASYNC}x",
            verdict(manual / amach >= BAR_VS_ASYNC),
        )
    )
    rows.append(
        (
            "ratio ours auto / Machine (info)",
            f"{auto / sync:.3f}x",
            f"(>= {BAR_VS_SYNC}x)",
            verdict(auto / sync >= BAR_VS_SYNC),
        )
    )
    rows.append(
        (
            "ratio ours auto / AsyncMachine (info)",
            f"{auto / amach:.3f}x",
            f"(>= {BAR_VS_ASYNC}x)",
            verdict(auto / amach >= BAR_VS_ASYNC),
        )
    )
    j = results["join"]
    sizes = sorted(j, key=int)
    for s in sizes:
        rows.append((f"2 join, {int(s):,d} instances waiting", f"{fmt_rate(j[s]['best'])} joins/s", "", ""))
    if len(sizes) >= 2:
        lo, hi = j[sizes[0]]["best"], j[sizes[-1]]["best"]
        rows.append(
            (
                f"ratio join rate {int(sizes[-1]):,d} / {int(sizes[0]):,d}",
                f"{hi / lo:.3f}x",
                f">= {BAR_JOIN_DROP}x",
                verdict(hi / lo >= BAR_JOIN_DROP),
            )
        )
    for r in results["import"].values():
        is_ours = "circuit_breaker" in r["stmt"]
        cached = r["mode"] == "cached"
        bar = f"<= {BAR_IMPORT_MS:.0f} ms" if cached else f"(<= {BAR_IMPORT_MS:.0f} ms)"
        rows.append(
            (
                f"3 `{r['stmt']}`" + ("" if is_ours else " (baseline)") + ("" if cached else ", no bytecode cache"),
                f"{r['median_ms']:.1f} ms",
                bar if is_ours else "",
                verdict(r["median_ms"] <= BAR_IMPORT_MS) if is_ours else "",
            )
        )
    m = results["memory"]
    n = m["tracemalloc"]["n"]
    rows.append(
        (
            f"4 memory per idle instance, tracemalloc (N={n:,d})",
            f"{m['tracemalloc']['bytes_per_instance']:,.0f} B",
            "",
            "",
        )
    )
    rows.append(
        (f"4 memory per idle instance, RSS delta (N={n:,d})", f"{m['rss']['bytes_per_instance']:,.0f} B", "", "")
    )
    return rows


def print_table(rows: list[tuple[str, str, str, str]]) -> None:
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    w = [max(w[0], 11), max(w[1], 5), max(w[2], 3), max(w[3], 7)]
    head = ("measurement", "value", "bar", "verdict")
    line = "  ".join(h.ljust(w[i]) for i, h in enumerate(head))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(r[i].ljust(w[i]) for i in range(4)))


def markdown(results: dict[str, Any], rows: list[tuple[str, str, str, str]]) -> str:
    info = results["machine"]
    cfg = results["config"]
    c = results["cycle"]
    out = [
        "# Core engine benchmark results",
        "",
        "Produced by `python bench/bench_core.py --write bench/RESULTS.md` (one full run, not `--quick`).",
        "",
        "## Machine",
        "",
        f"- CPU: {info['cpu']} ({info['cores']} cores)",
        f"- Python: {info['python']} on {info['platform']}",
        f"- pydantic {info['pydantic']}, transitions {info['transitions']}",
        f"- Date: {info['date']}",
        f"- Library measured: commit {info.get('source', 'unknown')}",
        f"- Wall time of the run: {results['elapsed_s']:.0f} s",
        "",
        "## Results",
        "",
        "| measurement | value | bar | verdict |",
        "|---|---|---|---|",
    ]
    out += [f"| {a} | {b} | {c_} | {d} |" for a, b, c_, d in rows]
    out += [
        "",
        "Cycle rates are the best of "
        f"{cfg['reps']} repetitions, run round-robin over the cases after a warm-up of each (the machine is shared,",
        "so round-robin spreads any change of load over every case). Firings per repetition: "
        f"{c['machine_sync']['firings_per_rep']:,d} for the sync Machine, {cfg['cycle_n']:,d} for the others; each",
        "repetition uses a fresh machine / engine and instance. Join rates are the best of "
        f"{cfg['join_reps']} samples.",
        "",
        "All repetitions (firings/s):",
        "",
    ]
    for key in ("machine_sync", "machine_async", "machine_async_asyncguard", "ours_manual", "ours_auto", "ours_seed"):
        out.append(f"- {key}: " + ", ".join(fmt_rate(r) for r in c[key]["rates"]))
    for s, r in sorted(results["join"].items(), key=lambda kv: int(kv[0])):
        out.append(
            f"- join at {int(s):,d} waiting: "
            + ", ".join(fmt_rate(x) for x in r["rates"])
            + f" (sample of {r['sample']:,d} instances per repetition; building the population ran at "
            f"{fmt_rate(r['starts_per_s'])} starts/s including each instance's automatic fork)"
        )
    out += [
        "",
        "Largest allocation sites per idle instance (tracemalloc; grouped by the innermost line of circuit_breaker",
        f"on the allocating stack, then the line that allocated when it is elsewhere; N = {cfg['mem_sites_n']:,d}):",
        "",
    ]
    out += ["| bytes | blocks | where |", "|---:|---:|---|"]
    for row in results["memory"]["sites"]["top"][:10]:
        out.append(f"| {row['bytes_per_instance']:,.0f} | {row['blocks_per_instance']:.1f} | `{row['where']}` |")
    out += [
        "",
        "## What is measured",
        "",
        "1. **Cycle** p0 -> p1 -> p2 -> p3 -> p4 -> p0, one cheap guard per transition.",
        "   - 1a `transitions.Machine` with `conditions=[lambda: model.n >= 0]`, `auto_transitions=False`, triggers",
        "     called as bound model methods in a loop.",
        "   - 1b `transitions.extensions.asyncio.AsyncMachine`, the same **sync** guard callable (our guards are",
        "     sync too); 1b' the same with an `async def` guard, for information.",
        "   - 1c ours: `wf.flow(p[i] >> p[i+1], 't<i>', trigger='manual', guards={'all': [lambda tok:",
        "     tok.data['n'] >= 0]})`, fired with `await engine.fire(instance_id, 't<i>')` on an in-memory `Engine()`;",
        "     each call returns an `Instance` snapshot, as the API does.",
        "   - 1d ours: the same net with `trigger='auto'`; a guard closure counts down and fails after N firings,",
        "     so the instance settles in `waiting`; timed from `engine.start(wf, {'n': 0})` to `engine.wait(id)`;",
        "     the number of `fired` history entries is checked to be N.",
        "   - 1e ours: seed-style `tok = wf.fire(tok, 't<i>')`, synchronous, no engine.",
        "2. **Join**: `s >> (a, hold)` (auto fork), `hold >> b` (manual `release`), `(a, b) >> c` (auto join).",
        f"   N + {cfg['join_sample'] * (cfg['join_reps'] + 1):,d} instances are started in one in-memory engine and",
        "   each waits with tokens in `a` and `hold`. For random samples of "
        f"{cfg['join_sample']:,d} of them (one warm-up sample, then {cfg['join_reps']} measured)",
        "   the bench calls `await engine.fire(id, 'release')` then `await engine.wait(id)` (the join fires",
        "   automatically and the instance completes), so N instances stay waiting throughout. The rate is",
        "   completed joins per second, each including the manual firing, the status change back to running, the",
        "   join firing and the completion.",
        "3. **Import**: a fresh `python -c` per run timing the statement with `time.perf_counter()`; median of",
        f"   {cfg['import_runs']} runs after one warm-up run. *Cached*: bytecode is written to and read from a",
        "   temporary `PYTHONPYCACHEPREFIX`, as for an installed package (the bar applies to this). *No bytecode",
        "   cache*: the environment as it is here (`PYTHONDONTWRITEBYTECODE=1` and no `__pycache__` in the",
        "   checkout, so circuit_breaker is compiled from source at every start); reported when it applies.",
        "4. **Memory**: N instances of the manual cycle, each waiting at `t0` (one token, two events in the",
        "   in-memory store, status `waiting`). Measured after 200 warm-up instances and `gc.collect()`, once with",
        "   `tracemalloc` (traced bytes / N) and once, in another fresh process, as the RSS delta / N.",
        "",
        "## Caveats",
        "",
        "- The machine is shared with other jobs; every repetition is listed above so the spread is visible.",
        "- The engine keeps every event (in-memory store) and every history entry of an instance, so an",
        "  instance's firing rate falls as it accumulates firings (more live objects for the cyclic GC to",
        f"  scan); the cycle cases use a fresh instance with {cfg['cycle_n']:,d} firings per repetition.",
        "  `transitions` keeps nothing per firing.",
        "- Figures for the library as it was at the commit named above (with the uncommitted changes listed).",
        "",
        "## How to reproduce",
        "",
        "```",
        ". /work/venv/bin/activate        # Python >= 3.11 with the project installed and transitions 0.9.x",
        "python bench/bench_core.py --write bench/RESULTS.md   # full run, about 2-3 minutes",
        "python bench/bench_core.py --quick                     # smoke run, about 15 s (smaller sizes: not comparable)",
        "python bench/bench_core.py --json out.json             # raw figures as JSON",
        "python bench/profile_core.py                           # where a firing's time goes (cProfile, what-ifs)",
        "```",
        "",
    ]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short run: small sizes, fewer repetitions")
    ap.add_argument("--write", metavar="PATH", help="write the results page (markdown) to PATH")
    ap.add_argument("--json", metavar="PATH", help="write the raw results as JSON to PATH")
    ap.add_argument(
        "--only", default="cycle,join,import,memory", help="comma-separated sections (cycle, join, import, memory)"
    )
    ap.add_argument("--memory-child", nargs=2, metavar=("N", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.memory_child:
        print(json.dumps(memory_child(int(args.memory_child[0]), args.memory_child[1])))
        return

    if args.quick:
        cfg = {
            "cycle_n": 3_000,
            "reps": 2,
            "warmup": 500,
            "join_sizes": [1_000, 5_000],
            "join_sample": 200,
            "join_reps": 2,
            "import_runs": 2,
            "mem_n": 1_000,
            "mem_sites_n": 500,
        }
    else:
        cfg = {
            "cycle_n": 20_000,
            "reps": 5,
            "warmup": 5_000,
            "join_sizes": [10_000, 100_000],
            "join_sample": 2_000,
            "join_reps": 3,
            "import_runs": 10,
            "mem_n": 20_000,
            "mem_sites_n": 1_000,
        }
    sections = set(args.only.split(","))
    t_start = time.perf_counter()
    results: dict[str, Any] = {"config": cfg, "quick": args.quick, "machine": machine_info()}
    print(f"machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, {results['machine']['python']}")
    if "cycle" in sections:
        print("\n1. firings per second, 5-place cycle with one guard per transition")
        results["cycle"] = bench_cycle(cfg)
    if "join" in sections:
        print("\n2. instance-scoped join (a, b) >> c with many instances waiting")
        results["join"] = bench_join(cfg)
    if "import" in sections:
        print("\n3. import time in a fresh interpreter")
        results["import"] = bench_import(cfg)
    if "memory" in sections:
        print("\n4. memory per idle instance")
        results["memory"] = bench_memory(cfg)
    results["elapsed_s"] = time.perf_counter() - t_start

    if {"cycle", "join", "import", "memory"} <= sections:
        rows = summary_rows(results)
        print(f"\nsummary ({'quick' if args.quick else 'full'} run, {results['elapsed_s']:.0f} s)\n")
        print_table(rows)
        if args.write:
            if args.quick:
                print("\n(not writing the results page from a --quick run)")
            else:
                Path(args.write).write_text(markdown(results, rows))
                print(f"\nwrote {args.write}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
