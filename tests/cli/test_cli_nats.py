"""``circuit-breaker nats``: the embedded server in the foreground, run as users run it (console script)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.api import StreamConfig

from circuit_breaker.nats._server import free_ports, running_server

from ._support import console_script


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CB_")}
    env.update(NO_COLOR="1", **extra)
    return env


@contextmanager
def serving(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    command: str = "nats",
    wrapper: tuple[str, ...] = (),
    preexec_fn: Callable[[], None] | None = None,
) -> Iterator[subprocess.Popen[str]]:
    """``circuit-breaker COMMAND ARGS`` (behind ``wrapper``, e.g. ``("nohup",)``) in its own process group;
    killed and reaped afterwards if it is still running."""
    proc = subprocess.Popen(
        [*wrapper, console_script(), command, *args],
        cwd=cwd,
        env=env or _env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
        preexec_fn=preexec_fn,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def first_line(proc: subprocess.Popen[str], timeout: float = 20) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no output within {timeout}s"
    line = proc.stdout.readline()
    assert line, f"exited {proc.wait(5)} without printing the URL: {proc.stderr.read() if proc.stderr else ''}"
    return line


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_serves_until_sigterm_then_exits_0_and_the_server_is_gone(tmp_path: Path) -> None:
    data_dir = tmp_path / "js"
    with serving("--json", "--data-dir", str(data_dir), "--sync-always", cwd=tmp_path) as proc:
        info: dict[str, Any] = json.loads(first_line(proc))
        assert set(info) == {"url", "monitor_url", "data_dir"}
        assert info["url"].startswith("nats://127.0.0.1:") and info["data_dir"] == str(data_dir)
        holder = running_server(data_dir)
        assert holder is not None and holder["url"] == info["url"]

        nc = await nats.connect(info["url"])
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="CLI", subjects=["cli.>"]))
        assert (await js.publish("cli.x", b"1", timeout=5)).seq == 1
        await nc.close()
        assert "sync_interval: always" in (data_dir / "nats-server.conf").read_text()

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert proc.stderr is not None
        assert "nats-server stopped" in proc.stderr.read()
    deadline = time.monotonic() + 5
    while not _gone(holder["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(holder["pid"])
    assert running_server(data_dir) is None


def test_port_and_data_dir_from_the_settings(tmp_path: Path) -> None:
    port = free_ports(1)[0]
    env = _env(CB_DATA_DIR=str(tmp_path / "state"))
    with serving("--port", str(port), cwd=tmp_path, env=env) as proc:
        assert first_line(proc).strip() == f"nats://127.0.0.1:{port}"
        assert running_server(tmp_path / "state" / "nats") is not None

        # A second one on the same data dir is refused: one line of error, exit 1.
        with serving(cwd=tmp_path, env=env) as second:
            assert second.wait(15) == 1
            assert second.stderr is not None
            err = second.stderr.read()
            assert err.startswith("error: data dir ") and "in use by another nats-server" in err
            assert "Traceback" not in err

        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: the server gets it as well as the command
        assert proc.wait(15) == 0


def test_a_taken_port_exits_1_quoting_the_servers_log(tmp_path: Path) -> None:
    with serving("--json", "--data-dir", str(tmp_path / "a"), cwd=tmp_path) as first:
        port = int(json.loads(first_line(first))["url"].rsplit(":", 1)[1])
        with serving("--port", str(port), "--data-dir", str(tmp_path / "b"), cwd=tmp_path) as clash:
            assert clash.wait(15) == 1
            assert clash.stdout is not None and clash.stderr is not None
            assert clash.stdout.read() == ""
            err = clash.stderr.read()
            assert err.startswith("error: nats-server exited with code 1 while starting")
            assert "address already in use" in err and "Traceback" not in err
        first.send_signal(signal.SIGTERM)
        assert first.wait(15) == 0


@pytest.mark.parametrize(
    ("signals", "codes"),
    [([signal.SIGINT], (0,)), ([signal.SIGHUP, signal.SIGHUP], (0,)), ([signal.SIGINT, signal.SIGINT], (0, 1))],
    ids=["ctrl-c", "terminal-closed", "ctrl-c-twice"],
)
def test_serve_on_the_embedded_server_stops_with_its_server(
    tmp_path: Path, signals: list[signal.Signals], codes: tuple[int, ...]
) -> None:
    """A signal reaches the whole foreground job. The embedded server runs in a session of its own, so it does
    not die before serve has closed its connections (when it did, serve could hang reconnecting); serve stops
    it, also when told twice (it then exits at once) or when its terminal is closed (SIGHUP)."""
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "tiny.py").write_text(
        "from circuit_breaker import Workflow\n"
        "wf = Workflow('tiny')\n"
        "a, b = wf.states('a', 'b')\n"
        "wf.flow(a >> b, 'go')\n"
    )
    server: dict[str, Any] | None = None
    try:
        with serving("--json", cwd=tmp_path, env=_env(CB_DATA_DIR=str(tmp_path / "state")), command="serve") as proc:
            assert json.loads(first_line(proc))["workflows"] == ["tiny"]
            server = running_server(tmp_path / "state" / "nats")
            assert server is not None and server["pid"] is not None
            assert os.getpgid(server["pid"]) != os.getpgid(proc.pid), "the server is not in serve's process group"
            for sig in signals:
                os.killpg(proc.pid, sig)
                time.sleep(0.05)  # (two signals sent at once would arrive as one)
            assert proc.wait(15) in codes  # (1: told twice, it stopped at once; hang-ups never force it)
            assert running_server(tmp_path / "state" / "nats") is None, "the embedded server stopped with it"
    finally:
        if server is not None and server.get("pid") and running_server(tmp_path / "state" / "nats"):
            os.kill(int(server["pid"]), signal.SIGTERM)  # (never left behind by a failing test)


def test_serve_under_nohup_outlives_its_terminal(tmp_path: Path) -> None:
    """SIGHUP ignored when serve starts (``nohup``): a hang-up leaves it running; Ctrl-C still stops it."""
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "tiny.py").write_text(
        "from circuit_breaker import Workflow\nwf = Workflow('tiny')\na, b = wf.states('a', 'b')\nwf.flow(a >> b, 'go')\n"
    )
    env = _env(CB_DATA_DIR=str(tmp_path / "state"))
    with serving("--json", cwd=tmp_path, env=env, command="serve", wrapper=("nohup",)) as proc:
        assert json.loads(first_line(proc))["workflows"] == ["tiny"]
        os.killpg(proc.pid, signal.SIGHUP)
        time.sleep(1.0)
        assert proc.poll() is None, "nohup: the hang-up is ignored"
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(15) == 0
        assert running_server(tmp_path / "state" / "nats") is None


@pytest.mark.parametrize("in_background", [False, True], ids=["foreground", "started-with-sigint-ignored"])
def test_a_hang_up_ends_run_durable_as_ctrl_c_does(tmp_path: Path, in_background: bool) -> None:
    """Found in review: a hang-up raised KeyboardInterrupt inside whichever task ran (an engine task), which
    printed "Task exception was never retrieved"; now it takes asyncio's Ctrl-C path, also for a command a shell
    started in the background (SIGINT ignored)."""
    (tmp_path / "spin.py").write_text(
        "from circuit_breaker import Workflow\nwf = Workflow('spin')\na, b = wf.states('a', 'b')\n"
        "wf.flow(a >> b, 'go')\nwf.flow(b >> a, 'back')\n"
    )

    def ignore_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    env = _env(CB_DATA_DIR=str(tmp_path / "state"))
    args = ("spin.py", "--durable", "--timeout", "60")
    preexec = ignore_sigint if in_background else None
    with serving(*args, cwd=tmp_path, env=env, command="run", preexec_fn=preexec) as proc:
        for _ in range(100):  # until the engine is busy firing
            if running_server(tmp_path / "state" / "nats") is not None:
                break
            time.sleep(0.05)
        time.sleep(1.0)
        os.killpg(proc.pid, signal.SIGHUP)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 130, err
        for noise in ("Traceback", "never retrieved", "never awaited", "was destroyed"):
            assert noise not in err, err
        assert running_server(tmp_path / "state" / "nats") is None
