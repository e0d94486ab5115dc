"""examples/inject_with_bare_nats.py, run as a separate process against a real server and an engine in this one.

The example must work with nats-py alone: it runs with an import hook that fails any import of circuit_breaker.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

from circuit_breaker import InstanceStatus
from workflows.data_pipeline import workflow as pipeline

from .inject_support import serving

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "inject_with_bare_nats.py"

# Runs the example with circuit_breaker made unimportable.
NO_CIRCUIT_BREAKER = """
import runpy, sys

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "circuit_breaker":
            raise ImportError("the bare-NATS example must not import circuit_breaker")
        return None

sys.meta_path.insert(0, Blocker())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


async def test_the_bare_nats_example_injects_both_ways_and_follows_events(fresh_nats: str) -> None:
    async with serving(fresh_nats, pipeline) as (engine, _):
        env = {**os.environ, "CB_NATS_URL": fresh_nats}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            NO_CIRCUIT_BREAKER,
            str(EXAMPLE),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        stdout, stderr = out.decode(), err.decode()
        assert proc.returncode == 0, f"{stdout}\n{stderr}"
        assert stderr == ""
        ids = re.findall(r"instance ([0-9a-f]{32})", stdout)
        first, again, second = ids[0], ids[1], ids[2]
        assert "request/reply: instance" in stdout and "(duplicate=false)" in stdout
        assert again == first and "same dedupe_id again" in stdout and "(duplicate=true)" in stdout
        assert "the repeat was a duplicate: true" in stdout
        assert "event #1 token_injected" in stdout and "event #2 transition_fired process" in stdout
        assert "done: 2 instances injected without circuit_breaker" in stdout
        for iid in (first, second):
            instance = await engine.wait(iid, timeout=10)
            assert instance.status in (InstanceStatus.COMPLETED, InstanceStatus.WAITING)
        assert sorted(i.id for i in await engine.instances("data_pipeline")) == sorted([first, second])
