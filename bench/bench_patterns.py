"""Scatter/gather of 10,000 items: wall time and peak memory (issue "Executors", performance).

Run from the repository root::

    python bench/bench_patterns.py            # 10,000 items, best of 3
    python bench/bench_patterns.py --items 1000 --repeat 1

The workflow scatters a list of N items, runs a small async action per item (bounded by ``max_parallel``)
and gathers the results into one token. Peak memory is tracemalloc's peak during the run (Python
allocations only), measured in a separate run from the timing so tracing does not slow the clock.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import platform
import time
import tracemalloc

from circuit_breaker import Engine, Workflow


def build(max_parallel: int | None) -> Workflow:
    wf = Workflow("scatter_gather")
    start, queued, done, out = wf.states("start", "queued", "done", "out")
    split = wf.scatter(start >> queued, "split", items="items", max_parallel=max_parallel)

    @wf.flow(queued >> done, "work")
    async def work(token):
        return {"square": token.data["item"] ** 2}

    wf.gather(done >> out, "collect", of=split)
    return wf


async def run_once(n: int, max_parallel: int | None) -> float:
    wf = build(max_parallel)
    async with Engine() as engine:
        t0 = time.perf_counter()
        inst = await engine.start(wf, {"items": list(range(n))})
        inst = await engine.wait(inst.id, timeout=600)
        elapsed = time.perf_counter() - t0
    results = inst.tokens[0].data["results"]
    if len(results) != n or results[-1]["square"] != (n - 1) ** 2:
        raise SystemExit(f"wrong result: {len(results)} results")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"python {platform.python_version()} on {platform.machine()}, {time.strftime('%Y-%m-%d %H:%M')}")
    for max_parallel in (None, 10):
        times = []
        for _ in range(args.repeat):
            gc.collect()
            times.append(asyncio.run(run_once(args.items, max_parallel)))
        gc.collect()
        tracemalloc.start()
        asyncio.run(run_once(args.items, max_parallel))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        best = min(times)
        label = f"max_parallel={max_parallel}"
        print(
            f"{label:18s} {args.items:,} items: best {best:.2f} s ({args.items / best:,.0f} items/s), "
            f"peak traced memory {peak / 2**20:.1f} MiB ({peak / args.items:,.0f} B/item)"
        )


if __name__ == "__main__":
    main()
