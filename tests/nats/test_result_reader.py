"""The engine's reader of task results (``NatsTaskQueue``): every workflow it listens to gets its results at
once, however many workflows share the reader's slots, and a results consumer that already exists is used as it
is (another engine may run with other settings)."""

from __future__ import annotations

import asyncio
import logging
import time

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from circuit_breaker.nats._dispatch import NatsTaskQueue, engine_durable
from circuit_breaker.nats._subjects import RESULTS_STREAM, result_subject
from circuit_breaker.tasks import Task, TaskResult
from circuit_breaker.token import utcnow
from tests.conftest import drop_streams


def result_of(workflow: str, n: int) -> TaskResult:
    spec = {"executor": "set", "params": {"values": {"ok": True}}}
    task = Task.new(workflow=workflow, instance_id=f"i{n}", transition="t", executor=spec)
    return TaskResult.answering(task, "succeeded", output={"n": n}, worker="w", started=utcnow(), duration=0.0)


async def test_each_of_several_workflows_gets_its_results_at_once(nats_url: str) -> None:
    await drop_streams(nats_url)
    nc = await nats.connect(nats_url)
    arrived: dict[str, float] = {}

    async def deliver(result: TaskResult) -> None:
        arrived[result.task_id] = time.monotonic()

    queue = NatsTaskQueue(nc, concurrency=8, batch=8)  # fewer slots than four idle pulls would hold
    try:
        await queue.open(deliver)
        workflows = [f"wf{i}" for i in range(4)]
        for workflow in workflows:
            await queue.listen(workflow)
        await asyncio.sleep(0.3)  # every reader's pull is open and waiting
        js = nc.jetstream()
        waited: list[float] = []
        for n, workflow in enumerate(reversed(workflows * 2)):
            result = result_of(workflow, n)
            sent = time.monotonic()
            subject = result_subject(workflow, result.instance_id, result.task_id)
            await js.publish(subject, result.model_dump_json().encode())
            for _ in range(200):
                if result.task_id in arrived:
                    break
                await asyncio.sleep(0.005)
            waited.append(arrived[result.task_id] - sent)
        assert max(waited) < 0.25, waited  # not held up until another workflow's pull expires (poll: 1 s)
        for _ in range(100):  # every result acknowledged once applied
            infos = [await js.consumer_info(RESULTS_STREAM, engine_durable(w)) for w in workflows]
            if all(i.num_ack_pending == 0 and i.num_pending == 0 for i in infos):
                break
            await asyncio.sleep(0.05)
        assert all(i.num_ack_pending == 0 and i.num_pending == 0 for i in infos)
    finally:
        await queue.close()
        await nc.close()
        await drop_streams(nats_url)


async def test_the_reader_takes_no_more_results_than_it_has_slots_for(nats_url: str) -> None:
    """Results it cannot apply yet stay in the stream (another engine sharing the durable may take them) instead
    of piling up in this engine, each waiting for a slot."""
    await drop_streams(nats_url)
    nc = await nats.connect(nats_url)
    release = asyncio.Event()
    applying: list[str] = []
    most = 0

    async def deliver(result: TaskResult) -> None:
        nonlocal most
        applying.append(result.task_id)
        most = max(most, len(applying))
        await release.wait()
        applying.remove(result.task_id)

    queue = NatsTaskQueue(nc, concurrency=4, batch=256)
    try:
        await queue.open(deliver)
        await queue.listen("slotted")
        js = nc.jetstream()
        for n in range(20):
            result = result_of("slotted", n)
            await js.publish(result_subject("slotted", result.instance_id, result.task_id), result.model_dump_json().encode())
        for _ in range(100):
            if len(applying) == 4:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # (time for a pull that would take more)
        info = await js.consumer_info(RESULTS_STREAM, engine_durable("slotted"))
        assert len(applying) == 4 and info.num_ack_pending <= 4 and info.num_pending >= 16, info
        release.set()
        for _ in range(200):
            info = await js.consumer_info(RESULTS_STREAM, engine_durable("slotted"))
            if info.num_ack_pending == 0 and info.num_pending == 0:
                break
            await asyncio.sleep(0.05)
        assert info.num_ack_pending == 0 and info.num_pending == 0 and most == 4
    finally:
        release.set()
        await queue.close()
        await nc.close()
        await drop_streams(nats_url)


async def test_an_existing_results_consumer_is_used_as_it_is(nats_url: str) -> None:
    await drop_streams(nats_url)
    nc = await nats.connect(nats_url)

    async def deliver(result: TaskResult) -> None:
        return None

    queue = NatsTaskQueue(nc, ack_wait=30)
    try:
        await queue.open(deliver)
        js = nc.jetstream()
        # Made by someone else with settings this engine would not choose, one of which the server cannot change.
        await js.add_consumer(
            RESULTS_STREAM,
            ConsumerConfig(
                durable_name=engine_durable("kept"),
                filter_subject="cb.result.kept.>",
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.NEW,
                ack_wait=120,
            ),
        )
        await queue.listen("kept")
        config = (await js.consumer_info(RESULTS_STREAM, engine_durable("kept"))).config
        assert config.ack_wait == 120 and config.deliver_policy == DeliverPolicy.NEW
        # A workflow without one gets one made with the reader's settings.
        await queue.listen("made")
        made = (await js.consumer_info(RESULTS_STREAM, engine_durable("made"))).config
        assert made.ack_wait == 30 and made.filter_subject == "cb.result.made.>"
    finally:
        await queue.close()
        await nc.close()
        await drop_streams(nats_url)


async def test_a_message_no_consumer_delivered_is_dropped_and_the_reader_goes_on(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="circuit_breaker")
    await drop_streams(nats_url)
    nc = await nats.connect(nats_url)
    applied: list[str] = []

    async def deliver(result: TaskResult) -> None:
        applied.append(result.task_id)

    queue = NatsTaskQueue(nc)
    try:
        await queue.open(deliver)
        await queue.listen("stray")
        inbox = queue._subs["stray"]._inbox
        assert inbox is not None
        await nc.publish(inbox.prefix + "x", result_of("stray", 1).model_dump_json().encode())  # (no $JS.ACK reply)
        await nc.flush()
        real = result_of("stray", 2)
        await nc.jetstream().publish(
            result_subject("stray", real.instance_id, real.task_id), real.model_dump_json().encode()
        )
        for _ in range(100):
            if applied:
                break
            await asyncio.sleep(0.02)
        assert applied == [real.task_id]
        assert any("no JetStream consumer delivered" in r.getMessage() for r in caplog.records)
    finally:
        await queue.close()
        await nc.close()
        await drop_streams(nats_url)
