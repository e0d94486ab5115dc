"""Issue 5's contract as written, the events stream's settings, and an engine riding out a NATS restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import pytest
from nats.js.api import StorageType, StreamConfig

from circuit_breaker import Engine, InstanceStatus, Workflow
from circuit_breaker.config import StreamSettings
from circuit_breaker.errors import StreamConfigError
from circuit_breaker.events import EventType
from circuit_breaker.nats import EVENTS_STREAM, Client, InjectService, JetStreamStore
from circuit_breaker.testing.nats import nats_server
from tests.conftest import drop_streams
from tests.nats.relay_workflow import workflow as relay


def pipeline() -> Workflow:
    wf = Workflow("data_pipeline")
    raw, processed, done = wf.states("raw", "processed", "done")

    @wf.flow(raw >> processed, "process")
    def process(token: object) -> dict[str, object]:
        return {"rows": 3}

    wf.flow(processed >> done, "finish")
    return wf


async def test_the_contract_works_as_written(nats_url: str) -> None:
    await drop_streams(nats_url)
    wf = pipeline()
    url = nats_url
    async with Engine(store=JetStreamStore(servers=[url])) as engine:
        engine.register(wf)
        inst = await engine.start(wf.name, {"input_file": "a.json"})
        done = await engine.wait(inst.id)
        assert done.status is InstanceStatus.COMPLETED and done.data["rows"] == 3

        nc = await nats.connect(url)
        async with InjectService(engine, nc), Client(servers=[url]) as client:
            instance_id = await client.inject("data_pipeline", {"input_file": "a.json"}, dedupe_id="req-1")
            assert await client.inject("data_pipeline", {"input_file": "a.json"}, dedupe_id="req-1") == instance_id
            seen = []
            async for event in client.events(workflow="data_pipeline", since="start"):
                seen.append((event.type, event.instance_id, event.transition))
                if event.type is EventType.INSTANCE_COMPLETED and event.instance_id == instance_id:
                    break
        await nc.close()
    assert (EventType.TRANSITION_FIRED, instance_id, "process") in seen
    assert (EventType.TOKEN_INJECTED, inst.id, None) in seen, "replayed from the start"


async def test_an_events_stream_that_would_drop_events_is_refused_and_left_alone(nats_url: str) -> None:
    await drop_streams(nats_url)
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=EVENTS_STREAM, subjects=["cb.ev.>"], max_age=3600, max_msgs=1000))
        store = JetStreamStore(servers=[nats_url])
        with pytest.raises(StreamConfigError) as caught:
            await store.open()
        await store.close()
        message = str(caught.value)
        assert "max_age is 3600s" in message and "max_msgs is 1000" in message
        info = await js.stream_info(EVENTS_STREAM)
        assert info.config.max_age == 3600 and info.config.max_msgs == 1000, "nothing was changed"
    finally:
        await nc.close()
        await drop_streams(nats_url)


async def test_a_memory_events_stream_is_refused_for_file_storage(nats_url: str) -> None:
    await drop_streams(nats_url)
    nc = await nats.connect(nats_url)
    try:
        await nc.jetstream().add_stream(
            StreamConfig(name=EVENTS_STREAM, subjects=["cb.ev.>"], storage=StorageType.MEMORY)
        )
        with pytest.raises(StreamConfigError, match="storage is memory"):
            await JetStreamStore(servers=[nats_url], stream=StreamSettings(storage="file")).open()
    finally:
        await nc.close()
        await drop_streams(nats_url)


async def test_the_stream_is_created_once_with_the_settings_asked_for(nats_url: str) -> None:
    await drop_streams(nats_url)
    first = JetStreamStore(servers=[nats_url])
    second = JetStreamStore(servers=[nats_url])
    await asyncio.gather(first.open(), second.open())  # idempotent, also when racing
    await first.close()
    await second.close()
    nc = await nats.connect(nats_url)
    try:
        config = (await nc.jetstream().stream_info(EVENTS_STREAM)).config
        assert config.storage == StorageType.FILE
        assert (config.max_age or 0) == 0, "tokens never expire silently"
        assert config.duplicate_window == 120
    finally:
        await nc.close()
        await drop_streams(nats_url)


async def test_an_engine_rides_out_a_nats_restart_mid_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_DELAY", "0.2")
    async with nats_server(tmp_path / "nats") as server:
        async with Engine(store=JetStreamStore(servers=[server.url]), workflows=[relay]) as engine:
            ids = [(await engine.start(relay)).id for _ in range(30)]
            await asyncio.sleep(0.1)
            await server.stop()
            await asyncio.sleep(1.0)  # actions finish while NATS is away; their commits wait and retry
            await server.start()
            done = [await engine.wait(iid, timeout=60) for iid in ids]
        assert all(i.status is InstanceStatus.COMPLETED for i in done), [i.status for i in done]
        reader = JetStreamStore(servers=[server.url])
        await reader.open()
        try:
            events = [e async for e in reader.replay(workflow="relay")]
        finally:
            await reader.close()
    fired = [(e.instance_id, e.transition) for e in events if e.type is EventType.TRANSITION_FIRED]
    assert sorted(fired) == sorted((iid, t) for iid in ids for t in ("first", "second")), "each firing once"
