"""Shutting down while the NATS server does not answer (frozen, or a black-holed network): the store, the client
and the CLI's sessions close within a few seconds instead of waiting for nats-py's 30 s drain."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import time
from pathlib import Path

import pytest

from circuit_breaker.nats import Client, JetStreamStore
from circuit_breaker.testing.nats import nats_server


async def test_a_store_and_a_client_close_promptly_when_the_server_froze(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with nats_server(tmp_path) as server:
        store = JetStreamStore(servers=[server.url])
        await store.open()
        client = Client(servers=[server.url])
        await client.open()
        assert server.pid is not None
        os.kill(server.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            await asyncio.wait_for(asyncio.gather(store.close(), client.close()), 20)
            took = time.monotonic() - t0
        finally:
            os.kill(server.pid, signal.SIGCONT)
    assert took < 10, f"closing took {took:.1f}s"
    await asyncio.sleep(0.5)
    gc.collect()  # (an unread future logs its error when collected)
    leftovers = [r.getMessage() for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]
    assert not leftovers, leftovers
