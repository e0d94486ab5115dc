"""What an acknowledged append costs in Python by itself, awaited or continued from its acknowledgement.

    python bench/bench_append_paths.py [--instances 1000] [--chain 7] [--size 700] [--reps 3]

A diagnosis for the NATS bench's part 1 (persisted firings vs raw ``publish_async``): ``instances`` chains of
``chain`` appends with the store's headers (``Nats-Msg-Id``, the per-instance expected-sequence check), each
append of a chain sent once the previous one is acknowledged, on file storage:

1. awaited: each chain is a coroutine awaiting ``AckedPublisher.publish_encoded`` (the store's publish path: a
   future per append, the acknowledgement taken from nats-py's parser);
2. from the acknowledgement: no coroutine, no future: the next append of a chain is written into nats-py's
   outgoing buffer from the function the parser calls with the acknowledgement (what a callback-driven engine
   could do).

No event is built or serialised here: the difference between the two rows is the cost of awaiting, and the rows
against the store alone (``bench_nats.py`` row 1d) show what building an event and the store's bookkeeping add.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import tempfile
import time
import uuid
from typing import Any

import nats
from nats.js.api import StorageType, StreamConfig

from circuit_breaker.nats._acks import AckedPublisher, _ReplyRouter
from circuit_breaker.nats._server import NatsServer

_SEQ = re.compile(rb'"seq":(\d+)')


def header_block(iid: str, k: int, seq: int) -> bytes:
    return (
        f"NATS/1.0\r\nNats-Msg-Id: {iid}:{k}:{os.urandom(6).hex()}\r\nNats-Expected-Last-Subject-Sequence: {seq}\r\n"
        f"Nats-Expected-Last-Subject-Sequence-Subject: bench.ev.*.{iid}.*\r\n\r\n"
    ).encode()


async def awaited(nc: Any, n: int, k: int, payload: bytes) -> tuple[float, float]:
    acks = AckedPublisher(nc)
    await acks.start()

    async def chain() -> None:
        iid, seq = uuid.uuid4().hex, 0
        for i in range(k):
            seq = await acks.publish_encoded(f"bench.ev.w.{iid}.fired", header_block(iid, i, seq), payload, 30.0)

    c0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(chain() for _ in range(n)))
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    await acks.stop()
    return cpu, wall


async def from_acks(nc: Any, n: int, k: int, payload: bytes) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    prefix = nc.new_inbox() + "."
    sub = await nc.subscribe(prefix + "*")
    waiting: dict[bytes, tuple[str, int]] = {}  # reply subject -> (instance, append number)
    left = [n]
    done = loop.create_future()
    flush_queue = nc._flush_queue

    def send(iid: str, i: int, seq: int) -> None:
        reply = f"{prefix}{iid}_{i}"  # (one token: the subscription is on prefix.*)
        head = header_block(iid, i, seq)
        line = f"HPUB bench.ev.w.{iid}.fired {reply} {len(head)} {len(head) + len(payload)}\r\n".encode()
        command = b"".join((line, head, payload, b"\r\n"))
        nc._pending.append(command)
        nc._pending_data_size += len(command)
        if flush_queue.empty():  # as Client.publish: wake nats-py's flusher
            flush_queue.put_nowait(loop.create_future())
        waiting[reply.encode()] = (iid, i)

    def acknowledged(subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        iid, i = waiting.pop(subject)
        found = _SEQ.search(data)
        if found is None:
            raise RuntimeError(f"append refused: {data[:200]!r}")
        if i + 1 < k:
            send(iid, i + 1, int(found[1]))
        else:
            left[0] -= 1
            if left[0] == 0:
                done.set_result(None)

    router = _ReplyRouter.of(nc)
    router.handlers[sub._id] = acknowledged
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        send(uuid.uuid4().hex, 0, 0)
    await done
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    router.handlers.pop(sub._id, None)
    await sub.unsubscribe()
    return cpu, wall


async def awaited_lean(nc: Any, n: int, k: int, payload: bytes) -> tuple[float, float]:
    """Each chain a coroutine awaiting a plain future; the append written straight into nats-py's outgoing
    buffer (no coroutine per publish), the future resolved from the acknowledgement."""
    loop = asyncio.get_running_loop()
    prefix = nc.new_inbox() + "."
    sub = await nc.subscribe(prefix + "*")
    waiting: dict[bytes, asyncio.Future[int]] = {}
    flush_queue = nc._flush_queue
    counter = [0]

    def send(iid: str, i: int, seq: int) -> asyncio.Future[int]:
        counter[0] += 1
        reply = f"{prefix}{counter[0]}"
        head = header_block(iid, i, seq)
        line = f"HPUB bench.ev.w.{iid}.fired {reply} {len(head)} {len(head) + len(payload)}\r\n".encode()
        command = b"".join((line, head, payload, b"\r\n"))
        nc._pending.append(command)
        nc._pending_data_size += len(command)
        if flush_queue.empty():
            flush_queue.put_nowait(loop.create_future())
        future: asyncio.Future[int] = loop.create_future()
        waiting[reply.encode()] = future
        return future

    def acknowledged(subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        future = waiting.pop(subject)
        found = _SEQ.search(data)
        if found is None:
            future.set_exception(RuntimeError(f"append refused: {data[:200]!r}"))
        else:
            future.set_result(int(found[1]))

    async def chain() -> None:
        iid, seq = uuid.uuid4().hex, 0
        for i in range(k):
            seq = await send(iid, i, seq)

    router = _ReplyRouter.of(nc)
    router.handlers[sub._id] = acknowledged
    c0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(chain() for _ in range(n)))
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    router.handlers.pop(sub._id, None)
    await sub.unsubscribe()
    return cpu, wall


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--chain", type=int, default=7)
    parser.add_argument("--size", type=int, default=700, help="payload bytes (a transition_fired event's size)")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    payload = (b'{"pad":"' + b"x" * args.size)[: args.size - 2] + b'"}'
    with tempfile.TemporaryDirectory() as data:
        async with NatsServer(data) as server:
            nc = await nats.connect(server.url)
            js = nc.jetstream()
            await js.add_stream(StreamConfig(name="BENCH_EV", subjects=["bench.ev.>"], storage=StorageType.FILE))
            appends = args.instances * args.chain
            rows: dict[str, list[tuple[float, float]]] = {
                "awaited": [],
                "awaited, lean send": [],
                "from the acknowledgement": [],
            }
            for _ in range(args.reps):  # round-robin, so that both see the same machine
                rows["awaited"].append(await awaited(nc, args.instances, args.chain, payload))
                rows["awaited, lean send"].append(await awaited_lean(nc, args.instances, args.chain, payload))
                rows["from the acknowledgement"].append(await from_acks(nc, args.instances, args.chain, payload))
            await nc.close()
    print(f"{args.instances} chains x {args.chain} appends of {args.size} bytes, file storage, {args.reps} reps")
    print(f"{'path':28s} {'best appends/s':>15s} {'python CPU per append (median)':>32s}")
    for name, runs in rows.items():
        best = max(appends / wall for _, wall in runs)
        cpu = sorted(cpu / appends * 1e6 for cpu, _ in runs)[len(runs) // 2]
        print(f"{name:28s} {best:15,.0f} {cpu:29.1f} us")


if __name__ == "__main__":
    asyncio.run(main())
