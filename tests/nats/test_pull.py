"""The puller that workers and the engine's result reader share: messages handed out as they arrive, never more
than asked for, a pull that ends on expiry, a missing consumer named, and nothing dropped between pulls."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NotJSMessageError
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from circuit_breaker.nats import JetStreamStore
from circuit_breaker.nats import _pull as pull_module
from circuit_breaker.nats._pull import ConsumerGoneError, Puller, PullRefusedError, delivery, parse_headers
from circuit_breaker.nats._subjects import EVENT_PREFIX
from tests.conftest import drop_streams

Pulled = tuple[NATS, JetStreamContext]


@pytest.fixture
async def pulled(nats_url: str) -> AsyncIterator[Pulled]:
    """A connection and a fresh work-queue stream ``PULL`` (``pull.>``), deleted afterwards."""
    nc = await nats.connect(nats_url)
    js: JetStreamContext = nc.jetstream()
    with contextlib.suppress(NotFoundError):
        await js.delete_stream("PULL")
    await js.add_stream(StreamConfig(name="PULL", subjects=["pull.>"], retention=RetentionPolicy.WORK_QUEUE))
    try:
        yield nc, js
    finally:
        with contextlib.suppress(Exception):
            await js.delete_stream("PULL")
        await nc.close()


def test_header_blocks_with_and_without_a_status() -> None:
    assert parse_headers(b"NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 3\r\n\r\n") == (
        408,
        "Request Timeout",
        {"Nats-Pending-Messages": "3"},
    )
    assert parse_headers(b"NATS/1.0\r\nNats-Msg-Id: a:1:b\r\nCb-Origin: e1\r\n\r\n") == (
        0,
        "",
        {"Nats-Msg-Id": "a:1:b", "Cb-Origin": "e1"},
    )
    assert parse_headers(b"NATS/1.0 503\r\n\r\n") == (503, "", {})


@pytest.mark.parametrize(
    "reply",
    [
        "$JS.ACK.CB_TASKS.cb-workers-set.3.42.7.1763800000000000000.5",
        "$JS.ACK.hub.ACCHASH.CB_TASKS.cb-workers-set.3.42.7.1763800000000000000.5.token",
        "$JS.ACK._.ACCHASH.CB_TASKS.cb-workers-set.3.42.7.1763800000000000000.5",
    ],
)
def test_delivery_count_and_stream_sequence_agree_with_nats_py(reply: str) -> None:
    msg = Msg(_client=None, reply=reply)  # type: ignore[arg-type]  # (no client needed to read the reply)
    assert delivery(msg) == (msg.metadata.num_delivered, msg.metadata.sequence.stream) == (3, 42)


def test_delivery_refuses_a_message_that_is_not_from_jetstream() -> None:
    with pytest.raises(NotJSMessageError):
        delivery(Msg(_client=None, reply="_INBOX.abc.1"))  # type: ignore[arg-type]


async def test_a_pull_hands_out_messages_as_they_arrive_and_ends_on_expiry(pulled: Pulled) -> None:
    nc, js = pulled
    await js.add_consumer("PULL", ConsumerConfig(durable_name="w", ack_policy=AckPolicy.EXPLICIT, ack_wait=30))
    strays: list[Msg] = []
    puller = Puller(nc, "PULL", "w", stray=strays.append)
    arrived: list[tuple[float, Msg]] = []
    acks: list[asyncio.Task[None]] = []

    def handle(msg: Msg) -> None:
        arrived.append((time.monotonic(), msg))
        acks.append(asyncio.get_running_loop().create_task(msg.ack()))

    # Nothing waiting: the pull ends when its request expires, empty-handed.
    began = time.monotonic()
    assert await puller.pull(5, handle, 0.3) == 0
    assert 0.25 < time.monotonic() - began < 2.0

    # Three waiting, two more published while the pull is open: each handed out on arrival, the pull ends
    # as soon as the fifth came (long before its expiry), headers and delivery count readable.
    for i in range(3):
        await js.publish(f"pull.{i}", b"early", headers={"Nats-Msg-Id": f"early-{i}"})

    async def later() -> float:
        await asyncio.sleep(0.3)
        sent = time.monotonic()
        for i in range(2):
            await js.publish(f"pull.late{i}", b"late")
        return sent

    sender = asyncio.create_task(later())
    began = time.monotonic()
    assert await puller.pull(5, handle, 10) == 5
    assert time.monotonic() - began < 5
    sent = await sender
    assert [m.data for _, m in arrived] == [b"early"] * 3 + [b"late"] * 2
    assert all(at < sent for at, m in arrived if m.data == b"early")  # not held back for the batch
    first = arrived[0][1]
    assert first.subject == "pull.0" and first.headers == {"Nats-Msg-Id": "early-0"}
    assert first.metadata.num_delivered == 1 and first.metadata.sequence.stream == 1

    # Never more than asked for: the rest stays for the next pull.
    for i in range(7):
        await js.publish(f"pull.more{i}", b"more")
    assert await puller.pull(4, handle, 5) == 4
    assert await puller.pull(10, handle, 0.3) == 3
    await asyncio.gather(*acks)
    await nc.flush()
    for _ in range(50):
        if (await js.stream_info("PULL")).state.messages == 0:
            break
        await asyncio.sleep(0.05)
    assert (await js.stream_info("PULL")).state.messages == 0  # every acknowledgement reached the server
    assert strays == []

    # A message reaching the puller's inbox while no pull is open is not dropped: it goes to ``stray``.
    assert puller._inbox is not None
    await nc.publish(puller._inbox.prefix + "old", b"late answer")  # (where a late delivery lands)
    await nc.flush()
    for _ in range(50):
        if strays:
            break
        await asyncio.sleep(0.02)
    assert [m.data for m in strays] == [b"late answer"]

    # Stopping ends an open pull at once.
    pulling = asyncio.create_task(puller.pull(3, handle, 30))
    await asyncio.sleep(0.2)
    await puller.stop()
    assert await asyncio.wait_for(pulling, 2) == 0


async def test_a_missing_consumer_is_named(pulled: Pulled) -> None:
    nc, _ = pulled
    puller = Puller(nc, "PULL", "nobody", stray=lambda msg: None)
    began = time.monotonic()
    with pytest.raises(ConsumerGoneError, match="'nobody'"):
        await puller.pull(1, lambda msg: None, 5)
    assert time.monotonic() - began < 2  # said at once, not after the request's expiry
    await puller.stop()


async def test_a_refused_request_is_an_error_naming_the_consumer(pulled: Pulled) -> None:
    """More waiting requests than the consumer allows: the server refuses the extra one (409), and its pull
    says so (the callers back off and log) instead of returning empty and asking again at once."""
    nc, js = pulled
    config = ConsumerConfig(durable_name="tiny", ack_policy=AckPolicy.EXPLICIT, max_waiting=1)
    await js.add_consumer("PULL", config)
    first = Puller(nc, "PULL", "tiny", stray=lambda msg: None)
    second = Puller(nc, "PULL", "tiny", stray=lambda msg: None)
    waiting = asyncio.create_task(first.pull(1, lambda msg: None, 3))
    await asyncio.sleep(0.2)
    with pytest.raises(PullRefusedError, match=r"'tiny'.*409"):
        await second.pull(1, lambda msg: None, 3)
    await js.publish("pull.x", b"for the first")
    assert await asyncio.wait_for(waiting, 3) == 1
    await first.stop()
    await second.stop()


async def test_an_interrupted_pull_leaves_no_request_behind(pulled: Pulled) -> None:
    """A pull cancelled before the server ended its request: the server must not go on filling that request
    (its messages would reach nobody, or bounce through ``stray``, counting deliveries that ran nothing); the
    next message goes to the next pull, delivered once."""
    nc, js = pulled
    await js.add_consumer("PULL", ConsumerConfig(durable_name="w", ack_policy=AckPolicy.EXPLICIT, ack_wait=30))
    strays: list[Msg] = []
    puller = Puller(nc, "PULL", "w", stray=strays.append)
    pulling = asyncio.create_task(puller.pull(5, lambda msg: None, 30))
    await asyncio.sleep(0.2)
    pulling.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await pulling
    assert puller.interrupted
    await nc.flush()
    await asyncio.sleep(0.2)
    await js.publish("pull.after", b"after the cancel")
    got: list[Msg] = []
    assert await puller.pull(1, got.append, 5) == 1
    assert not puller.interrupted
    assert [m.data for m in got] == [b"after the cancel"]
    assert delivery(got[0])[0] == 1
    assert strays == []
    await puller.stop()


async def test_a_scan_whose_pull_goes_unanswered_still_yields_every_message_once_in_order(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's scans (replay, ``instances()``, opening an engine): a pull that ends without the server's word
    loses what the server sent it, and a consumer that acknowledges nothing counts that as delivered. The scan
    goes on from the last message it yielded instead of skipping the lost ones."""
    await drop_streams(nats_url)
    async with JetStreamStore(servers=[nats_url]) as store:
        js = store.js
        for i in range(1, 1201):
            await js.publish(f"{EVENT_PREFIX}.scanned.i1.token_injected", str(i).encode())
        real_pull = Puller.pull
        interrupted: list[int] = []

        async def pull_once_unanswered(self: Puller, wanted: int, handle: Any, expires: float, **kw: Any) -> int:
            if not interrupted:  # the first answer arrives after the pull gave up on it
                monkeypatch.setattr(pull_module, "END_MARGIN", 0.0)
                got = await real_pull(self, wanted, handle, 0.0, **kw)
                monkeypatch.setattr(pull_module, "END_MARGIN", 2.0)
                interrupted.append(got)
                assert self.interrupted
                return got
            return await real_pull(self, wanted, handle, expires, **kw)

        monkeypatch.setattr(Puller, "pull", pull_once_unanswered)
        seen = [int(msg.data) async for msg in store._pull_all(f"{EVENT_PREFIX}.scanned.>")]
        assert interrupted == [0]
        assert seen == list(range(1, 1201))
    await drop_streams(nats_url)
