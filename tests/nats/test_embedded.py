"""The embedded default and start-up connecting: ensure_server, connect_nats, nats_connection, on real servers."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.js.api import StreamConfig

from circuit_breaker.config import connect_options, load_settings
from circuit_breaker.errors import ConfigError, NatsUnavailableError
from circuit_breaker.nats._embedded import connect_nats, ensure_server, nats_connection, server_urls
from circuit_breaker.nats._server import NatsServer, free_ports, running_server
from circuit_breaker.testing.nats import nats_server_sync

TLS = Path(__file__).parent / "fixtures" / "tls"
TOKEN = "s3cret-token-value"


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    with nats_server_sync(tmp_path_factory.mktemp("auth"), config_extra=f'authorization {{ token: "{TOKEN}" }}') as s:
        yield s


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """Mutual TLS: the server wants a client certificate signed by the test CA."""
    block = (
        f'tls {{ cert_file: "{TLS / "server-cert.pem"}", key_file: "{TLS / "server-key.pem"}", '
        f'ca_file: "{TLS / "ca.pem"}", verify: true }}'
    )
    with nats_server_sync(tmp_path_factory.mktemp("tls"), config_extra=block) as s:
        yield s


async def test_configured_urls_are_used_as_they_are(tmp_path: Path) -> None:
    settings = load_settings(nats_url="nats://a:4222,nats://b:4222", data_dir=tmp_path)
    assert await ensure_server(settings) == (["nats://a:4222", "nats://b:4222"], None)
    assert not (tmp_path / "nats").exists()


async def test_no_url_starts_the_embedded_server_in_the_data_dir_and_shares_it(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, stream={"sync_always": True})
    urls, server = await ensure_server(settings)
    assert server is not None
    try:
        assert urls == [server.url]
        assert server.data_dir == tmp_path / "nats"
        assert server.sync_always
        # A second process (or engine) of the same project connects to it instead of starting its own.
        assert await ensure_server(settings) == ([server.url], None)
    finally:
        await server.stop()
    assert running_server(tmp_path / "nats") is None


async def test_nats_connection_gives_a_working_connection_and_stops_what_it_started(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    async with nats_connection(settings) as nc:
        assert nc.is_connected
        assert running_server(tmp_path / "nats") is not None
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="EMB", subjects=["emb.>"]))
        assert (await js.publish("emb.x", b"1", timeout=5)).seq == 1
    assert nc.is_closed
    assert running_server(tmp_path / "nats") is None
    async with nats_connection(settings) as nc:  # the embedded store keeps its data between runs
        assert (await nc.jetstream().stream_info("EMB")).state.messages == 1


async def test_the_embedded_server_stays_up_while_another_process_uses_it(tmp_path: Path) -> None:
    """Found in a walk-through: stopping the command that happened to start the server (``events --follow``)
    pulled it from under a ``serve`` still running on it. The last one to leave stops it, whoever started it.
    (Two uses in one process hold two lock descriptions, as two processes do.)"""
    settings = load_settings(data_dir=tmp_path)
    first, second = server_urls(settings), server_urls(settings)
    urls = await first.__aenter__()
    assert await second.__aenter__() == urls
    holder = running_server(tmp_path / "nats")
    assert holder is not None
    await first.__aexit__(None, None, None)  # the starter leaves: the other still uses it
    assert running_server(tmp_path / "nats") == holder
    nc = await connect_nats(settings, urls)
    assert nc.is_connected
    await nc.close()
    await second.__aexit__(None, None, None)  # the last one leaves: stopped, though it did not start it
    assert running_server(tmp_path / "nats") is None


async def test_a_server_whose_starter_was_killed_is_stopped_by_the_next_process_that_leaves_it(tmp_path: Path) -> None:
    """Found in a walk-through: after ``kill -9`` of serve its nats-server ran on for ever (the next serve used it
    and left it running, as it had not started it)."""
    script = (
        "import asyncio, os, signal, sys\n"
        "from circuit_breaker.config import load_settings\n"
        "from circuit_breaker.nats._embedded import server_urls\n"
        "async def main():\n"
        "    async with server_urls(load_settings(data_dir=sys.argv[1])) as urls:\n"
        "        print(urls[0], flush=True)\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "asyncio.run(main())\n"
    )
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script, str(tmp_path), stdout=subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == -9
    url = out.decode().strip()
    assert (running_server(tmp_path / "nats") or {}).get("url") == url  # orphaned, still running
    async with server_urls(load_settings(data_dir=tmp_path)) as urls:
        assert urls == [url]  # used as it is
    assert running_server(tmp_path / "nats") is None  # and stopped by the last one to leave


async def test_a_server_run_by_the_nats_command_is_never_stopped_by_the_commands_that_use_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "nats"
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "circuit-breaker"),
        "nats",
        "--json",
        "--data-dir",
        str(data_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        async with server_urls(load_settings(data_dir=tmp_path)) as urls:
            assert urls == [ready["url"]]
        assert (running_server(data_dir) or {}).get("url") == ready["url"]  # still up for the others
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert running_server(data_dir) is None


async def test_unreachable_nats_fails_after_the_attempts_naming_the_urls_but_no_secret() -> None:
    port = free_ports(1)[0]
    settings = load_settings(nats_url=[f"nats://engine:pa55word@127.0.0.1:{port}"], connect_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(NatsUnavailableError) as caught:
        await connect_nats(settings, attempts=3, first_delay=0.05)
    elapsed = time.monotonic() - started
    message = str(caught.value)
    assert f"nats://engine:***@127.0.0.1:{port}" in message and "after 3 attempts" in message
    assert "pa55word" not in message and "refused" in message.lower()
    assert caught.value.servers == [f"nats://engine:***@127.0.0.1:{port}"] and caught.value.attempts == 3
    assert elapsed < 3  # each attempt ends once every server failed, not after nats-py's own reconnect wait


async def test_a_server_that_comes_up_late_is_reached(tmp_path: Path) -> None:
    server = NatsServer(tmp_path)
    server.port = free_ports(1)[0]
    settings = load_settings(nats_url=[server.url])

    async def late_start() -> None:
        await asyncio.sleep(0.3)
        await server.start()

    starter = asyncio.create_task(late_start())
    try:
        nc = await connect_nats(settings, attempts=8, first_delay=0.1)
        assert nc.is_connected
        await nc.close()
    finally:
        await starter
        await server.stop()


async def test_rejected_credentials_fail_at_once_and_right_ones_connect(token_server: NatsServer) -> None:
    started = time.monotonic()
    with pytest.raises(NatsUnavailableError, match="rejected the connection.*Authorization Violation") as caught:
        await connect_nats(load_settings(nats_url=[token_server.url], nats_token="wrong-token"), attempts=5)
    assert time.monotonic() - started < 2 and caught.value.attempts == 1
    assert "wrong-token" not in str(caught.value)

    nc = await connect_nats(load_settings(nats_url=[token_server.url], nats_token=TOKEN))
    assert nc.is_connected
    await nc.close()


async def test_mutual_tls_from_the_settings(tls_server: NatsServer) -> None:
    settings = load_settings(
        nats_url=[tls_server.url],
        nats_tls_ca=TLS / "ca.pem",
        nats_tls_cert=TLS / "client-cert.pem",
        nats_tls_key=TLS / "client-key.pem",
        connect_timeout=1,
    )
    nc = await connect_nats(settings, attempts=1)
    try:
        assert nc.is_connected
        await nc.publish("tls.hello", b"over tls")
        await nc.flush()
    finally:
        await nc.close()
    # Without the client certificate the server refuses the handshake.
    with pytest.raises(NatsUnavailableError):
        await connect_nats(load_settings(nats_url=[tls_server.url], nats_tls_ca=TLS / "ca.pem"), attempts=1)


async def test_creds_need_the_nkeys_package(tmp_path: Path) -> None:
    creds = tmp_path / "user.creds"
    creds.write_text("not used: the check comes first\n")
    settings = load_settings(nats_url=["nats://127.0.0.1:1"], nats_creds=creds)
    assert connect_options(settings)["user_credentials"] == str(creds)
    if importlib.util.find_spec("nkeys") is None:
        with pytest.raises(ConfigError, match="pip install nkeys"):
            await connect_nats(settings, attempts=1)
    else:  # with nkeys installed the bogus file is read and refused; either way nothing hangs
        with pytest.raises(Exception):  # noqa: B017
            await connect_nats(settings, attempts=1)
