"""An engine process with remote actions, for the worker tests: ``python remote_engine.py URL [--start N]``.

The ``remote_relay`` workflow: ``queued -> worked`` runs ``wait`` on a worker (``seconds`` from the token data),
``worked -> done`` runs ``set`` on a worker. Prints ``ready`` once its instances are started and ``done N`` once
every instance it knows is completed (exit 3 on timeout).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from circuit_breaker import Engine, Workflow
from circuit_breaker.executors import default_registry
from circuit_breaker.nats import JetStreamStore
from tests.nats.run_engine import report_when_done


def workflow() -> Workflow:
    registry = default_registry()
    wf = Workflow("remote_relay")
    queued, worked, done = wf.states("queued", "worked", "done")
    wf.flow(queued >> worked, "work").action(registry.create("wait", duration="{{ seconds }}"), remote=True)
    wf.flow(worked >> done, "finish").action(registry.create("set", values={"finished": True}), remote=True)
    return wf


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=0.0)
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()
    wf = workflow()
    async with Engine(store=JetStreamStore(servers=[args.url]), workflows=[wf]) as engine:
        for n in range(args.start):
            await engine.start(wf, {"n": n, "seconds": args.seconds})
        print("ready", flush=True)
        await report_when_done(engine, "remote_relay", args.timeout)


if __name__ == "__main__":
    asyncio.run(main())
