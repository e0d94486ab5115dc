"""Real nats-servers for tests (ours and users'): one node or a loopback cluster, on free ports, in a temp dir.

::

    async with nats_server(tmp_path) as server:
        nc = await nats.connect(server.url)

    @pytest.fixture(scope="module")
    def cluster(tmp_path_factory):
        with nats_cluster_sync(tmp_path_factory.mktemp("nats")) as c:
            yield c

The sync forms suit module- or session-scoped fixtures: the server is a plain process, not tied to the event
loop that started it, so tests on other loops can use it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from ..nats._server import NatsCluster, NatsServer

__all__ = ["NatsCluster", "NatsServer", "nats_cluster", "nats_cluster_sync", "nats_server", "nats_server_sync"]


@asynccontextmanager
async def nats_server(tmp_dir: str | os.PathLike[str], **opts: Any) -> AsyncIterator[NatsServer]:
    """A JetStream server with its data in ``tmp_dir``, stopped on exit; ``opts`` go to :class:`NatsServer`."""
    async with NatsServer(tmp_dir, **opts) as server:
        yield server


@asynccontextmanager
async def nats_cluster(tmp_dir: str | os.PathLike[str], nodes: int = 3, **opts: Any) -> AsyncIterator[NatsCluster]:
    """``nodes`` routed JetStream servers (``tmp_dir/n1``...), ready for replicated streams; stopped on exit."""
    async with NatsCluster(tmp_dir, nodes, **opts) as cluster:
        yield cluster


@contextmanager
def nats_server_sync(tmp_dir: str | os.PathLike[str], **opts: Any) -> Iterator[NatsServer]:
    """:func:`nats_server` for sync code, such as a module-scoped pytest fixture."""
    with NatsServer(tmp_dir, **opts) as server:
        yield server


@contextmanager
def nats_cluster_sync(tmp_dir: str | os.PathLike[str], nodes: int = 3, **opts: Any) -> Iterator[NatsCluster]:
    """:func:`nats_cluster` for sync code."""
    with NatsCluster(tmp_dir, nodes, **opts) as cluster:
        yield cluster
