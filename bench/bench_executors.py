"""Benchmark of the executor framework's overhead per call of a no-op executor.

Run from the repository root::

    python bench/bench_executors.py             # full run (about 30 s)
    python bench/bench_executors.py --quick     # smoke run (a few seconds; smaller samples)
    python bench/bench_executors.py --markdown  # also print the section for bench/RESULTS.md
    python bench/bench_executors.py --profile   # also print where the time of one call goes (cProfile)

What one call costs, in the same process and the same run (cases interleaved round-robin, best of several
repetitions, each repetition a tight loop of N awaited calls inside one coroutine):

- ``bare``: ``await work()``, the coroutine an executor wraps (returns ``{"ok": True}``): the baseline.
- ``execute_detailed``: ``await NoOp(value=i).execute_detailed()``: build the executor (parameter
  validation by pydantic, ``validate()``), run ``before_execute``, ``execute_internal``, ``after_execute``,
  and build the ``ExecutionResult`` record (timestamps, duration, attempts, usage).
- ``execute``: ``await NoOp(value=i).execute()``: the same, returning the output dict.

The overhead is the difference to ``bare``; the bar is <= 20 us per call. For information, the parts:
constructing only, running a prebuilt executor, and the transition-action path (``render`` + run, without
and with one template to fill).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import platform
import pstats
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from circuit_breaker.executors import Executor, param  # noqa: E402

BAR_US = 20.0


class NoOp(Executor):
    """Does nothing, through every step of the framework."""

    name = "bench_noop"
    value: int = param(default=0, description="an integer parameter, validated at construction")

    def validate(self) -> None:
        if self.value < 0:
            raise ValueError("value must not be negative")

    async def before_execute(self) -> None:
        return None

    async def execute_internal(self) -> dict[str, Any]:
        return {"ok": True}

    async def after_execute(self, result: dict[str, Any]) -> None:
        return None


async def work() -> dict[str, Any]:
    return {"ok": True}


# Each case: an async function running ``n`` calls and returning the elapsed seconds.
async def case_bare(n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        out = await work()
    dt = time.perf_counter() - t0
    assert out == {"ok": True}
    return dt


async def case_execute_detailed(n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        result = await NoOp(value=i).execute_detailed()
    dt = time.perf_counter() - t0
    assert result.status == "succeeded" and result.output == {"ok": True}
    return dt


async def case_execute(n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        out = await NoOp(value=i).execute()
    dt = time.perf_counter() - t0
    assert out == {"ok": True}
    return dt


async def case_construct(n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        ex = NoOp(value=i)
    dt = time.perf_counter() - t0
    assert ex.value == n - 1  # type: ignore[attr-defined]
    return dt


async def case_prebuilt_detailed(n: int) -> float:
    ex = NoOp(value=1)
    t0 = time.perf_counter()
    for _ in range(n):
        result = await ex.execute_detailed()
    dt = time.perf_counter() - t0
    assert result.ok
    return dt


async def case_action_plain(n: int) -> float:
    action = NoOp(value=1).as_action()
    token = SimpleNamespace(data={"n": 1})
    t0 = time.perf_counter()
    for _ in range(n):
        out = await action(token)
    dt = time.perf_counter() - t0
    assert out == {"ok": True}
    return dt


async def case_action_templated(n: int) -> float:
    action = NoOp(value="{{ n }}").as_action()
    token = SimpleNamespace(data={"n": 1})
    t0 = time.perf_counter()
    for _ in range(n):
        out = await action(token)
    dt = time.perf_counter() - t0
    assert out == {"ok": True}
    return dt


CASES: dict[str, tuple[str, Callable[[int], Awaitable[float]]]] = {
    "bare": ("`await work()` (bare coroutine, baseline)", case_bare),
    "execute_detailed": ("`await NoOp(value=i).execute_detailed()`", case_execute_detailed),
    "execute": ("`await NoOp(value=i).execute()`", case_execute),
    "construct": ("part: `NoOp(value=i)` (construct + validate only)", case_construct),
    "prebuilt": ("part: `await ex.execute_detailed()` on a prebuilt executor", case_prebuilt_detailed),
    "action_plain": (
        "action path: `await action(token)`, no template (render returns the executor)",
        case_action_plain,
    ),
    "action_templated": (
        "action path: `await action(token)`, one template `{{ n }}` filled per call",
        case_action_templated,
    ),
}


def measure(n: int, reps: int) -> dict[str, list[float]]:
    """Microseconds per call for every case and repetition (round-robin, after one warm-up of each)."""

    async def run() -> dict[str, list[float]]:
        for _, fn in CASES.values():
            await fn(max(1000, n // 10))
        per_call: dict[str, list[float]] = {key: [] for key in CASES}
        for _ in range(reps):
            for key, (_, fn) in CASES.items():
                gc.collect()
                per_call[key].append(await fn(n) / n * 1e6)
        return per_call

    return asyncio.run(run())


def profile(n: int) -> str:
    """cProfile of ``execute_detailed`` calls: the functions that take the time, by own time."""

    async def run() -> None:
        await case_execute_detailed(n)

    profiler = cProfile.Profile()
    profiler.enable()
    asyncio.run(run())
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).strip_dirs().sort_stats("tottime").print_stats(15)
    return out.getvalue()


def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    import pydantic

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        if dirty:
            commit += " (with uncommitted changes in the working tree)"
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "cpu": f"{cpu} ({os.cpu_count()} cores)",
        "python": f"{platform.python_implementation()} {platform.python_version()} on {platform.platform()}",
        "pydantic": pydantic.VERSION,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
    }


def report(per_call: dict[str, list[float]], n: int, reps: int, quick: bool) -> tuple[str, bool]:
    best = {key: min(values) for key, values in per_call.items()}
    median = {key: statistics.median(values) for key, values in per_call.items()}
    ok = True
    lines = [
        "| case | best µs/call | median µs/call | overhead vs bare (best) | bar | verdict |",
        "|---|---:|---:|---:|---|---|",
    ]
    for key, (label, _) in CASES.items():
        overhead = best[key] - best["bare"]
        bar, verdict = "", ""
        if key in ("execute_detailed", "execute"):
            bar = f"<= {BAR_US:g} µs"
            verdict = "met" if overhead <= BAR_US else "MISSED"
            ok = ok and overhead <= BAR_US
        shown = "" if key == "bare" else f"{overhead:.2f} µs"
        if key == "construct":
            shown = "(part)"
        lines.append(f"| {label} | {best[key]:.2f} | {median[key]:.2f} | {shown} | {bar} | {verdict} |")
    lines.append("")
    lines.append(
        f"{'Quick run: ' if quick else ''}{n:,} calls per repetition, {reps} repetitions per case, run round-robin "
        "after a warm-up of each; all repetitions (µs/call):"
    )
    lines.append("")
    for key, values in per_call.items():
        lines.append(f"- {key}: " + ", ".join(f"{v:.2f}" for v in values))
    return "\n".join(lines), ok


def markdown_section(table: str, info: dict[str, str], wall: float) -> str:
    return f"""
# Executor framework overhead

Produced by `python bench/bench_executors.py --markdown` (one full run, not `--quick`).

## Machine

- CPU: {info["cpu"]}
- Python: {info["python"]}
- pydantic {info["pydantic"]}
- Date: {info["date"]}
- Library measured: commit {info["commit"]}
- Wall time of the run: {wall:.0f} s

## Results

{table}

## What is measured

A no-op executor (`NoOp`: one `int` parameter with a default, a `validate()` that checks it, async
`before_execute` / `execute_internal` / `after_execute` that do nothing; `execute_internal` returns
`{{"ok": True}}`) against awaiting the bare coroutine that returns the same dict, in the same process and run.
Each repetition is a tight loop of awaited calls inside one coroutine on one event loop, timed with
`time.perf_counter()`; the cases run round-robin (so a change of load on the shared machine spreads over all
of them) after a warm-up of each, with `gc.collect()` before each repetition and the collector left on.

- `execute_detailed` builds a new executor per call (pydantic validation of the parameters, `validate()`),
  runs the three hooks and builds the `ExecutionResult` record (start/finish timestamps, duration, attempts,
  usage). `execute` is the same and returns the output dict.
- The overhead is best-of-repetitions minus the bare coroutine's best. The bar (<= 20 µs per call) applies to
  those two rows; the other rows split the cost up for information: constructing only, running a prebuilt
  executor, and the transition-action path (`ExecutorAction.__call__`: `render(token.data)`, run, check the
  status), without a template (render returns the executor itself) and with one `{{{{ n }}}}` template
  (render builds and validates a new executor per call).

## How to reproduce

```
. /work/venv/bin/activate
python bench/bench_executors.py --markdown   # full run, about 30 s; prints this section
python bench/bench_executors.py --quick      # smoke run, a few seconds (smaller samples)
python bench/bench_executors.py --profile    # plus a cProfile of execute_detailed, by own time
```
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short run with smaller samples")
    parser.add_argument("--markdown", action="store_true", help="print the bench/RESULTS.md section too")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of execute_detailed too")
    args = parser.parse_args(argv)

    n, reps = (5_000, 3) if args.quick else (50_000, 7)
    started = time.perf_counter()
    per_call = measure(n, reps)
    table, ok = report(per_call, n, reps, args.quick)
    wall = time.perf_counter() - started
    info = machine()
    print(f"Executor framework overhead ({'quick' if args.quick else 'full'} run, {info['date']})")
    print(f"{info['cpu']}; {info['python']}; pydantic {info['pydantic']}; commit {info['commit']}")
    print()
    print(table)
    print()
    print(f"bar <= {BAR_US:g} µs per call: {'met' if ok else 'MISSED'}")
    if args.profile or not ok:
        print()
        print(profile(20_000 if not args.quick else 5_000))
    if args.markdown:
        print(markdown_section(table, info, wall))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
