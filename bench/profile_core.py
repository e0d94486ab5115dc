"""Where a firing's time goes: cProfile of ours-manual and ours-auto on the bench cycle, micro-timings of
the parts, and what-if experiments that patch the library *in this process only* to show what a change buys.

    python bench/profile_core.py            # everything (about a minute)
    python bench/profile_core.py --top 25   # more rows in the profiles

The what-if patches are monkeypatches applied here for measurement; they do not change the library.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import os
import pstats
import sys
import time
import timeit
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import bench_core as bc  # noqa: E402

N = 20_000


# ---------------------------------------------------------------------------------------------------------
# cProfile


def profile(kind: str, n: int, top: int) -> None:
    from circuit_breaker import Engine

    if kind == "manual":
        wf = bc.cycle_workflow("manual")
    else:
        left = [n]

        def guard(tok: Any) -> bool:
            left[0] -= 1
            return left[0] >= 0

        wf = bc.cycle_workflow("auto", guard)

    prof = cProfile.Profile()

    async def go() -> None:
        async with Engine() as engine:
            engine.register(wf)
            if kind == "manual":
                inst = await engine.start("cycle", {"n": 0})
                iid = (await engine.wait(inst.id)).id
                for _ in range(200):  # warm-up
                    for t in bc.TRIGGERS:
                        await engine.fire(iid, t)
                prof.enable()
                for _ in range(n // 5):
                    for t in bc.TRIGGERS:
                        await engine.fire(iid, t)
                prof.disable()
            else:
                prof.enable()
                inst = await engine.start(wf, {"n": 0})
                await engine.wait(inst.id)
                prof.disable()

    asyncio.run(go())
    st = pstats.Stats(prof)
    total = st.total_tt  # type: ignore[attr-defined]
    print(f"\n--- cProfile, ours {kind}: {n:,d} firings, {total / n * 1e6:.1f} us per firing under the profiler ---")
    rows = []
    for (file, line, func), (_cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        rows.append((tt, ct, nc, f"{short(file)}:{line}({func})"))
    print(f"{'self us/firing':>14s} {'cum us/firing':>13s} {'calls/firing':>12s}  function")
    for tt, ct, nc, where in sorted(rows, reverse=True)[:top]:
        print(f"{tt / n * 1e6:14.2f} {ct / n * 1e6:13.2f} {nc / n:12.2f}  {where}")
    print(f"  by cumulative time (top {top}):")
    for tt, ct, nc, where in sorted(rows, key=lambda r: -r[1])[:top]:
        print(f"{tt / n * 1e6:14.2f} {ct / n * 1e6:13.2f} {nc / n:12.2f}  {where}")


def short(path: str) -> str:
    for marker in ("/circuit_breaker/", "/site-packages/", "/lib/python3"):
        if marker in path:
            return path[path.index(marker) + 1 :]
    return path


# ---------------------------------------------------------------------------------------------------------
# micro-timings of the parts


def micro() -> None:
    import uuid

    from circuit_breaker.engine._instance import Instance
    from circuit_breaker.engine._lifecycle import InstanceStatus
    from circuit_breaker.events import EventType, TransitionFired
    from circuit_breaker.token import History, HistoryEntry, Token, utcnow

    now = utcnow()
    tok = Token(data={"n": 0})
    hist = History()
    entry = HistoryEntry.model_construct(time=now, kind="fired")
    fields_he = set(HistoryEntry.model_fields)
    new, setattr_ = object.__new__, object.__setattr__

    def direct(cls: Any, fs: set[str], d: dict[str, Any]) -> Any:
        m = new(cls)
        setattr_(m, "__dict__", d)
        setattr_(m, "__pydantic_fields_set__", fs)
        setattr_(m, "__pydantic_extra__", None)
        setattr_(m, "__pydantic_private__", None)
        return m

    g = dict(locals(), uuid=uuid, os=os, EventType=EventType, TransitionFired=TransitionFired, Instance=Instance)
    g.update(InstanceStatus=InstanceStatus, HistoryEntry=HistoryEntry, Token=Token, utcnow=utcnow)
    cases = [
        (
            "HistoryEntry.model_construct (7 fields)",
            "HistoryEntry.model_construct(time=now, kind='fired', transition='t0', from_places=('p0',),"
            " to_places=('p1',), actor=None, details={})",
        ),
        (
            "Token.model_construct (7 fields)",
            "Token.model_construct(id='x', instance_id='y', place='p1', data={}, created_at=now, updated_at=now,"
            " history=hist)",
        ),
        (
            "TransitionFired.model_construct (10 fields)",
            "TransitionFired.model_construct(workflow='c', instance_id='y', seq=3, time=now, actor=None,"
            " type=EventType.TRANSITION_FIRED, transition='t0', consumed=['a'], produced=[tok])",
        ),
        (
            "Instance.model_construct (10 fields)",
            "Instance.model_construct(id='i', workflow='c', status=InstanceStatus.WAITING, tokens=[tok], version=3,"
            " created_at=now, updated_at=now, incidents=[], history=hist, enabled_manual=['t0'])",
        ),
        (
            "direct construct (object.__new__ + __dict__), 7 fields",
            "direct(HistoryEntry, fields_he, {'time': now, 'kind': 'fired', 'transition': 't0',"
            " 'from_places': ('p0',), 'to_places': ('p1',), 'actor': None, 'details': {}})",
        ),
        ("uuid.uuid4().hex (new_id)", "uuid.uuid4().hex"),
        ("os.urandom(16).hex()", "os.urandom(16).hex()"),
        ("utcnow()", "utcnow()"),
        ("History.append", "hist.append(entry)"),
        ("Token.model_copy(update={'data': ...})", "tok.model_copy(update={'data': {}})"),
    ]
    print("\n--- micro-timings (best of 5, us per call) ---")
    for label, stmt in cases:
        n = 100_000
        best = min(timeit.repeat(stmt, number=n, repeat=5, globals=g))
        print(f"{best / n * 1e6:8.2f} us  {label}")
    micro_live()


def micro_live() -> None:
    """Parts of the engine, timed on a live instance of the manual cycle (waiting at t0)."""
    from circuit_breaker import Engine

    wf = bc.cycle_workflow("manual")

    async def go() -> None:
        async with Engine() as engine:
            engine.register(wf)
            inst = await engine.start("cycle", {"n": 0})
            iid = (await engine.wait(inst.id)).id
            run = engine._runs[iid]
            n = 50_000

            def best(fn: Any) -> float:
                out = []
                for _ in range(5):
                    t0 = time.perf_counter()
                    for _ in range(n):
                        fn()
                    out.append(time.perf_counter() - t0)
                return min(out) / n * 1e6

            async def abest(make: Any) -> float:
                out = []
                for _ in range(5):
                    t0 = time.perf_counter()
                    for _ in range(n):
                        await make()
                    out.append(time.perf_counter() - t0)
                return min(out) / n * 1e6

            ct = run.cw.transitions["t0"]
            from circuit_breaker.dsl._firing import input_token, pre_check
            from circuit_breaker.net import missing_tokens, select

            consumed = select(ct.net, run.marking, run.reserved)
            view = input_token(ct, consumed)
            lock = run.lock

            async def locked() -> None:
                async with lock:
                    pass

            async def nothing() -> None:
                return None

            print("\n--- parts of one manual firing, on a live instance (best of 5, us per call) ---")
            print(f"{best(run.snapshot):8.2f} us  Run.snapshot() (returned by every engine.fire)")
            print(f"{best(run.enabled_manual):8.2f} us    of which Run.enabled_manual()")
            print(f"{best(lambda: missing_tokens(ct.net, run.marking, run.reserved)):8.2f} us  missing_tokens")
            print(f"{best(lambda: select(ct.net, run.marking, run.reserved)):8.2f} us  select")
            print(f"{best(lambda: pre_check(ct, view)):8.2f} us  pre_check (one callable guard)")
            print(f"{best(run.all_final):8.2f} us  Run.all_final()")
            print(f"{best(run.update_settled):8.2f} us  Run.update_settled()")
            print(f"{await abest(locked):8.2f} us  async with run.lock (uncontended), incl. one coroutine")
            print(f"{await abest(nothing):8.2f} us  await of an empty coroutine (reference)")

    asyncio.run(go())


# ---------------------------------------------------------------------------------------------------------
# what-if experiments


def patch_cheap_snapshot() -> None:
    """What fire() would cost if the snapshot it returns were cheap (here: not built at all)."""
    from circuit_breaker.engine._run import Run

    Run.snapshot = lambda self: None  # type: ignore[method-assign,assignment,return-value]


def retained_objects(n: int = 2_000) -> None:
    """GC-tracked objects a manual firing leaves on the heap (events, tokens, history), by type."""
    import collections

    from circuit_breaker import Engine

    wf = bc.cycle_workflow("manual")

    async def go() -> None:
        async with Engine() as engine:
            engine.register(wf)
            await engine.start("cycle", {"n": 0}, instance_id="bench")
            await engine.wait("bench")
            for k in range(100):
                await engine.fire("bench", bc.TRIGGERS[k % 5])
            gc.collect()
            before = collections.Counter(type(o).__name__ for o in gc.get_objects())
            for k in range(n):
                await engine.fire("bench", bc.TRIGGERS[k % 5])
            gc.collect()
            after = collections.Counter(type(o).__name__ for o in gc.get_objects())
            diff = {k: (after[k] - before[k]) / n for k in after if abs(after[k] - before[k]) / n >= 0.05}
            total = sum(diff.values())
            shown = ", ".join(f"{k} {v:.1f}" for k, v in sorted(diff.items(), key=lambda kv: -kv[1]))
            print(f"\n--- GC-tracked objects retained per manual firing: {total:.1f} ({shown}) ---")

    asyncio.run(go())


def manual_unchecked(n: int) -> float:
    """bench_core.ours_manual_cycle without reading the snapshots (a what-if may not build them)."""
    from circuit_breaker import Engine

    wf = bc.cycle_workflow("manual")

    async def go() -> float:
        async with Engine() as engine:
            engine.register(wf)
            await engine.start("cycle", {"n": 0}, instance_id="bench")
            await engine.wait("bench")
            fire = engine.fire
            start = time.perf_counter()
            for _ in range(n // 5):
                await fire("bench", "t0")
                await fire("bench", "t1")
                await fire("bench", "t2")
                await fire("bench", "t3")
                await fire("bench", "t4")
            dt = time.perf_counter() - start
            assert engine._runs["bench"].seq == 2 + n // 5 * 5
            return dt

    return asyncio.run(go())


def auto_unchecked(n: int) -> float:
    from circuit_breaker import Engine

    left = [n]

    def guard(tok: Any) -> bool:
        left[0] -= 1
        return left[0] >= 0

    wf = bc.cycle_workflow("auto", guard)

    async def go() -> float:
        async with Engine() as engine:
            engine.register(wf)
            start = time.perf_counter()
            await engine.start(wf, {"n": 0}, instance_id="bench")
            await engine.wait("bench")
            dt = time.perf_counter() - start
            assert engine._runs["bench"].seq == n + 3, engine._runs["bench"].seq  # inject, n fired, reject, wait
            return dt

    return asyncio.run(go())


def measure(label: str, n: int, reps: int = 3) -> None:
    manual, _ = bc.best_rate(manual_unchecked, n, reps, 2_000)
    auto, _ = bc.best_rate(auto_unchecked, n, reps, 2_000)
    print(f"{manual:10,.0f} {1e6 / manual:7.1f} us {auto:10,.0f} {1e6 / auto:7.1f} us  {label}")


def whatif(n: int) -> None:
    print(f"\n--- what-if (cumulative monkeypatches in this process; {n:,d} firings, best of 3) ---")
    print(f"{'manual/s':>10s} {'per firing':>10s} {'auto/s':>10s} {'per firing':>10s}  change")
    measure("baseline (library as is)", n)
    patch_cheap_snapshot()
    measure("+ fire() does not build an Instance snapshot (upper bound of a lazy snapshot)", n)
    gc.disable()
    measure("+ gc disabled (the cyclic GC's share; not a suggestion)", n)
    gc.enable()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--top", type=int, default=18)
    ap.add_argument("--n", type=int, default=N)
    ap.add_argument("--only", default="profile,micro,whatif")
    args = ap.parse_args()
    only = set(args.only.split(","))
    if "profile" in only:
        profile("manual", args.n, args.top)
        profile("auto", args.n, args.top)
    if "micro" in only:
        micro()
        retained_objects()
    if "whatif" in only:
        whatif(args.n)


if __name__ == "__main__":
    main()
