"""``circuit-breaker status`` shows the remote actions an instance waits for (their tokens are with the task, so
the Tokens table alone would look empty)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from circuit_breaker import Engine, InstanceStatus
from circuit_breaker.cli._loader import load_workflows
from circuit_breaker.nats import JetStreamStore
from tests.cli._support import run_cli
from tests.conftest import drop_streams

WORKFLOW = """
from circuit_breaker import Workflow
from circuit_breaker.executors import default_registry

wf = Workflow("calls_out")
asked, answered = wf.states("asked", "answered")
wf.flow(asked >> answered, "call").action(
    default_registry().create("http", method="GET", url="http://127.0.0.1:9/x"), remote=True
)
"""


async def test_status_lists_a_task_in_flight_with_its_executor(nats_url: str, tmp_path: Path) -> None:
    await drop_streams(nats_url)
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "calls_out.py").write_text(WORKFLOW)
    (wf,) = load_workflows(tmp_path / "workflows" / "calls_out.py")
    async with Engine(JetStreamStore(servers=[nats_url])) as engine:  # no worker serves http: it stays queued
        inst = await engine.start(wf, {})
        for _ in range(100):
            inst = await engine.get(inst.id)
            if inst.tasks:
                break
            await asyncio.sleep(0.02)
        assert inst.status is InstanceStatus.RUNNING and inst.tokens == []
    shown = run_cli("status", inst.id, cwd=tmp_path, env={"CB_NATS_URL": nats_url, "COLUMNS": "200"})
    assert shown.code == 0, shown.err
    assert "In flight" in shown.out
    rows = [line for line in shown.out.splitlines() if "queued or running" in line]
    assert len(rows) == 1 and all(part in rows[0] for part in ("call", "http", inst.tasks[0].task_id)), shown.out

    async with Engine(JetStreamStore(servers=[nats_url]), workflows=[wf]) as engine:
        await engine.cancel(inst.id, reason="not needed")
    cancelled = run_cli("status", inst.id, cwd=tmp_path, env={"CB_NATS_URL": nats_url, "COLUMNS": "200"})
    assert cancelled.code == 0, cancelled.err
    assert "In flight" not in cancelled.out and "queued or running" not in cancelled.out, cancelled.out
    assert "Abandoned" in cancelled.out and "its result will be ignored" in cancelled.out, cancelled.out
    await drop_streams(nats_url)
