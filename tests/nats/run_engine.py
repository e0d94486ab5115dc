"""An engine process for the durability tests: ``python run_engine.py URL [--start N]``.

Opens an engine on the JetStream store (loading and driving every stored ``relay`` instance), optionally
starts N new ones (``--go-file F``: waits for F to exist before opening), prints ``ready`` and then ``done <instances>`` once every instance it knows is completed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from circuit_breaker import Engine, InstanceStatus
from circuit_breaker.nats import JetStreamStore
from tests.nats.relay_workflow import workflow


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--heartbeat", type=float, default=5.0, help="seconds between the engine's heartbeats")
    parser.add_argument("--go-file", help="open the engine only once this file exists (to start racers together)")
    args = parser.parse_args()
    if args.go_file:
        print("waiting", flush=True)
        while not Path(args.go_file).exists():
            await asyncio.sleep(0.005)
    store = JetStreamStore(servers=[args.url], heartbeat=args.heartbeat)
    async with Engine(store=store, workflows=[workflow]) as engine:
        for _ in range(args.start):
            await engine.start(workflow)
        print("ready", flush=True)
        await report_when_done(engine, "relay", args.timeout)


async def report_when_done(engine: Engine, workflow: str, timeout: float) -> None:
    """Print ``done N`` once every instance of ``workflow`` the engine knows is completed; exit 3 on timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        instances = await engine.instances(workflow)
        if instances and all(i.status is InstanceStatus.COMPLETED for i in instances):
            print(f"done {len(instances)}", flush=True)
            return
        await asyncio.sleep(0.1)
    print("timeout", flush=True)
    sys.exit(3)


if __name__ == "__main__":
    asyncio.run(main())
