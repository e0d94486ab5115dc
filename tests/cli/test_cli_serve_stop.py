"""Stopping ``circuit-breaker serve`` (SIGTERM) while local actions run: they get ``stop_grace`` seconds to
finish and what they finish is stored; one that outlasts the grace is cancelled and runs again later."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import nats
import pytest

from tests.cli._support import run_cli, start_serve
from tests.conftest import drop_streams

WORKFLOW = '''
import asyncio
import os
from pathlib import Path

from circuit_breaker import Workflow

slow_stop = Workflow("slow_stop")
a, b, c = slow_stop.states("a", "b", "c")


@slow_stop.flow(a >> b, "work")
async def work(token):
    log = Path(os.environ["STOP_LOG"])
    with log.open("a") as out:
        out.write(f"start {token.data['n']}\\n")
    await asyncio.sleep(token.data["seconds"])
    with log.open("a") as out:
        out.write(f"done {token.data['n']}\\n")
    return {"worked": True}


slow_stop.flow(b >> c, "close", trigger="manual")

blocking = Workflow("blocking")
x, y = blocking.states("x", "y")


@blocking.flow(x >> y, "block")
def block(token):  # a sync action: it runs in a thread, which cannot be cancelled
    import time

    with Path(os.environ["STOP_LOG"]).open("a") as out:
        out.write("start sync\\n")
    time.sleep(120)
    return {}


threaded = Workflow("threaded")
t1, t2 = threaded.states("t1", "t2")


@threaded.flow(t1 >> t2, "offload")
async def offload(token):  # an async action that hands blocking work to a thread
    import time

    with Path(os.environ["STOP_LOG"]).open("a") as out:
        out.write("start threaded\\n")
    await asyncio.to_thread(time.sleep, 120)
    return {}
'''


def test_sigterm_lets_running_local_actions_finish_within_the_grace_period(tmp_path: Path, nats_url: str) -> None:
    asyncio.run(drop_streams(nats_url))
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "slow_stop.py").write_text(WORKFLOW)
    log = tmp_path / "actions.log"
    env = {**os.environ, "CB_NATS_URL": nats_url, "CB_STOP_GRACE": "3", "STOP_LOG": str(log), "NO_COLOR": "1"}
    # (A thread would hold the process at exit for its whole 120 s; serve does not wait for one.)
    proc, _ = start_serve(tmp_path, env)
    try:
        cli_env = {"CB_NATS_URL": nats_url}

        def inject(n: int, seconds: float) -> str:
            data = json.dumps({"n": n, "seconds": seconds})
            done = run_cli("inject", "slow_stop", "--data", data, "--json", cwd=tmp_path, env=cli_env)
            assert done.code == 0, done.err
            return str(done.json()["instance_id"])

        quick, slow, unwanted = inject(1, 1.0), inject(2, 120.0), inject(3, 120.0)
        for workflow in ("blocking", "threaded"):
            injected = run_cli("inject", workflow, "--data", "{}", "--json", cwd=tmp_path, env=cli_env)
            assert injected.code == 0, injected.err
        deadline = time.monotonic() + 20
        expected = {"start 1", "start 2", "start 3", "start sync", "start threaded"}
        while not (log.exists() and expected <= set(log.read_text().splitlines())):
            assert time.monotonic() < deadline, "the actions did not start"
            time.sleep(0.05)
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        # While it stops, it still cancels (found in a walk-through: nothing answered any control request), and
        # leaves what would start something to other engines (here none: nothing answers).
        cancelled = asyncio.run(ask(nats_url, "slow_stop", "cancel", {"instance_id": unwanted, "reason": "stop"}))
        assert cancelled["instance"]["status"] == "cancelled", cancelled
        with pytest.raises(nats.errors.NoRespondersError):
            asyncio.run(ask(nats_url, "slow_stop", "fire", {"instance_id": quick, "transition": "close"}))
        assert proc.wait(timeout=30) == 0
        took = time.monotonic() - began
        err = proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert 2.5 < took < 20, (took, err)  # it waited for the grace period (3 s), not for the slow actions
    assert sorted(log.read_text().splitlines()) == [
        "done 1",
        "start 1",
        "start 2",
        "start 3",
        "start sync",
        "start threaded",
    ]
    assert "3 action(s) still running after 3.0s are cancelled" in err
    assert "2 call(s) still running in threads (synchronous actions) cannot be cancelled" in err
    # The quick action's firing was stored before serve exited (the next engine settles the instance: it waits
    # for 'close'); the slow one's token is where it was.
    first = run_cli("status", quick, "--json", cwd=tmp_path, env=cli_env)
    assert first.code == 0, first.err
    assert [t["place"] for t in first.json()["tokens"]] == ["b"] and first.json()["tokens"][0]["data"]["worked"]
    second = run_cli("status", slow, "--json", cwd=tmp_path, env=cli_env)
    assert second.json()["status"] == "running" and [t["place"] for t in second.json()["tokens"]] == ["a"]
    asyncio.run(drop_streams(nats_url))


async def ask(url: str, workflow: str, verb: str, request: dict[str, object]) -> dict[str, Any]:
    """A control request as any NATS client sends it."""
    nc = await nats.connect(url)
    try:
        reply = await nc.request(f"cb.ctl.{workflow}.{verb}", json.dumps(request).encode(), timeout=5)
    finally:
        await nc.close()
    return json.loads(reply.data)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("command", "setting"),
    [(("serve",), "CB_STOP_GRACE"), (("instances",), "CB_STOP_GRACE"), (("worker", "--executors", "set"), "CB_WORKER__GRACE")],
)
def test_a_bad_setting_is_a_usage_error_naming_it(tmp_path: Path, command: tuple[str, ...], setting: str) -> None:
    (tmp_path / "workflows").mkdir()
    done = run_cli(*command, cwd=tmp_path, env={setting: "-1"})
    assert done.code == 2, done.err
    name = setting.removeprefix("CB_").lower().replace("__", ".")
    assert name in done.error_line() and "greater than or equal to 0" in done.error_line()


SIGNOFF = '''
import asyncio
import os
from pathlib import Path

from circuit_breaker import Workflow

signoff = Workflow("signoff")
a, b = signoff.states("a", "b")


@signoff.flow(a >> b, "sign", trigger="manual")
async def sign(token):
    Path(os.environ["STOP_LOG"]).write_text("signing")
    await asyncio.sleep(60)
    return {}
'''


def test_a_second_sigterm_answers_the_requests_in_hand_before_it_ends(tmp_path: Path, nats_url: str) -> None:
    """A leftover of the eighth session: stopping at once left the askers of control requests in hand to their
    timeouts (30 s for the CLI); they are told 'unavailable' first."""
    asyncio.run(drop_streams(nats_url))
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "signoff.py").write_text(SIGNOFF)
    log = tmp_path / "actions.log"
    env = {**os.environ, "CB_NATS_URL": nats_url, "CB_STOP_GRACE": "30", "STOP_LOG": str(log), "NO_COLOR": "1"}
    proc, _ = start_serve(tmp_path, env)
    try:
        injected = run_cli("inject", "signoff", "--data", "{}", "--json", cwd=tmp_path, env={"CB_NATS_URL": nats_url})
        iid = injected.json()["instance_id"]

        async def fire_and_stop() -> tuple[dict[str, Any], float]:
            nc = await nats.connect(nats_url)
            try:
                request = json.dumps({"instance_id": iid, "transition": "sign"}).encode()
                asked = asyncio.ensure_future(nc.request("cb.ctl.signoff.fire", request, timeout=20))
                for _ in range(200):
                    if log.exists():
                        break
                    await asyncio.sleep(0.05)
                assert log.exists(), "the action did not begin"
                proc.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.5)
                began = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                reply = await asked
                return json.loads(reply.data), time.monotonic() - began
            finally:
                await nc.close()

        answer, took = asyncio.run(fire_and_stop())
        assert answer["error"]["code"] == "unavailable" and "stopped at once" in answer["error"]["message"], answer
        assert took < 5, took
        assert proc.wait(timeout=30) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    asyncio.run(drop_streams(nats_url))
