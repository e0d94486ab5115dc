"""The acknowledged publisher the store and the workers share: answers taken from nats-py's parser, and
everything else on the connection left as it was."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.aio.msg import Msg
from nats.js.api import StreamConfig
from nats.js.errors import APIError, NoStreamResponseError

from circuit_breaker.nats._acks import AckedPublisher
from tests.conftest import drop_streams

HEADERS = b"NATS/1.0\r\nNats-Msg-Id: m-1\r\n\r\n"


async def test_acknowledgements_errors_and_other_subscriptions_on_one_connection(nats_url: str) -> None:
    await drop_streams(nats_url)
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="ACKS", subjects=["acks.>"]))
        got: list[bytes] = []

        async def keep(msg: Msg) -> None:
            got.append(msg.data)

        plain = await nc.subscribe("plain.>", cb=keep)
        first, second = AckedPublisher(nc), AckedPublisher(nc)
        await first.start()
        await second.start()
        assert len(nc._cb_reply_router.handlers) == 2  # type: ignore[attr-defined]  # answers come from the parser

        seqs = await asyncio.gather(
            *(
                first.publish_encoded(f"acks.{i}", HEADERS.replace(b"m-1", f"m-{i}".encode()), b"x", 5)
                for i in range(50)
            ),
            second.publish_encoded("acks.other", HEADERS.replace(b"m-1", b"other"), b"y", 5),
        )
        assert sorted(seqs) == list(range(1, 52))
        # The same message id again: the server's duplicate answer, with the stored message's sequence.
        assert await first.publish_encoded("acks.0", HEADERS.replace(b"m-1", b"m-0"), b"x", 5) == seqs[0]
        # An error answer is an exception, a subject no stream takes is "no responders".
        with pytest.raises(APIError) as refused:
            await first.publish_encoded("acks.1", b"NATS/1.0\r\nNats-Expected-Stream: NOPE\r\n\r\n", b"z", 5)
        assert refused.value.err_code == 10060
        with pytest.raises(NoStreamResponseError):
            await first.publish_encoded("nowhere.at.all", HEADERS, b"x", 5)
        # A reply to a request and a message to a plain subscription still reach their owners.
        await nc.publish("plain.a", b"hello")
        info = await nc.request("$JS.API.STREAM.INFO.ACKS", b"", timeout=5)
        assert b'"messages":51' in info.data
        await nc.flush()
        for _ in range(50):
            if got:
                break
            await asyncio.sleep(0.01)
        assert got == [b"hello"]

        # A stopped publisher's answers are not taken any more; the other one goes on.
        await first.stop()
        assert await second.publish_encoded("acks.after", HEADERS.replace(b"m-1", b"after"), b"y", 5) == 52
        assert nc.stats["in_msgs"] >= 55
        await plain.unsubscribe()
        await second.stop()
    finally:
        await nc.close()


async def test_no_answer_in_time_is_a_timeout(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        publisher = AckedPublisher(nc)
        await publisher.start()
        listener = await nc.subscribe("silent.subject")  # someone listens, nobody answers
        with pytest.raises(nats.errors.TimeoutError):
            await publisher.publish_encoded("silent.subject", HEADERS, b"x", 0.2)
        await listener.unsubscribe()
        await publisher.stop()
    finally:
        await nc.close()
