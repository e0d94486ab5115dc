"""A 3-node JetStream cluster on loopback with the events stream replicated three times: killing the stream's
leader mid-run costs a pause, not a token or a double firing."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import nats
import pytest

from circuit_breaker import Engine, InstanceStatus
from circuit_breaker.config import StreamSettings
from circuit_breaker.events import EventType, TransitionFired
from circuit_breaker.nats import EVENTS_STREAM, JetStreamStore
from circuit_breaker.testing.nats import nats_cluster
from tests.nats.relay_workflow import workflow as relay


async def test_killing_the_stream_leader_mid_run_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_DELAY", "0.1")
    async with nats_cluster(tmp_path) as cluster:
        store = JetStreamStore(servers=cluster.urls, stream=StreamSettings(replicas=3))
        async with Engine(store=store, workflows=[relay]) as engine:
            ids = [(await engine.start(relay)).id for _ in range(150)]
            await asyncio.sleep(0.05)  # firings under way
            nc = await nats.connect(servers=cluster.urls)
            info = await nc.jetstream().stream_info(EVENTS_STREAM)
            assert info.config.num_replicas == 3
            leader = info.cluster.leader if info.cluster else None
            assert leader is not None
            await nc.close()
            running = [i for i in await engine.instances("relay") if i.status is not InstanceStatus.COMPLETED]
            await cluster.stop_node(cluster.index_of(leader), kill=True)
            assert running, "the leader went down mid-run"

            done = [await engine.wait(iid, timeout=60) for iid in ids]
            assert all(i.status is InstanceStatus.COMPLETED for i in done), Counter(i.status for i in done)

        reader = JetStreamStore(servers=cluster.urls)
        await reader.open()
        try:
            events = [e async for e in reader.replay(workflow="relay")]
        finally:
            await reader.close()
    by_instance: dict[str, list[object]] = {}
    for e in events:
        by_instance.setdefault(e.instance_id, []).append(e)
    assert sorted(by_instance) == sorted(ids)
    for iid, evs in by_instance.items():
        assert [e.seq for e in evs] == list(range(1, len(evs) + 1)), iid  # type: ignore[attr-defined]
        assert Counter(e.transition for e in evs if isinstance(e, TransitionFired)) == {"first": 1, "second": 1}
        assert evs[-1].type is EventType.INSTANCE_COMPLETED  # type: ignore[attr-defined]
