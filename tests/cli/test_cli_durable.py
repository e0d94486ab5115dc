"""The NATS commands through the real console script: ``serve`` in one process, the others in their own, all
on a real nats-server — and ``run --durable`` on the embedded default, with no server set up by hand."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli._support import console_script, run_cli, start_serve
from tests.conftest import drop_streams

ROOT = Path(__file__).resolve().parents[2]


def project_copy(tmp: Path) -> Path:
    for folder in ("workflows", "rules", "executors", "examples"):
        shutil.copytree(ROOT / folder, tmp / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return project_copy(tmp_path_factory.mktemp("project"))


@pytest.fixture(scope="module")
def served(project: Path, nats_url: str) -> Iterator[str]:
    """``circuit-breaker serve`` for the project, on the session's server with empty streams."""
    import asyncio

    asyncio.run(drop_streams(nats_url))
    proc, started = start_serve(project, {**os.environ, "CB_NATS_URL": nats_url, "NO_COLOR": "1"})
    assert started["workflows"] == ["data_pipeline", "document_review", "invoice_approval"]
    yield nats_url
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    asyncio.run(drop_streams(nats_url))


def cli(project: Path, url: str, *args: str) -> object:
    return run_cli(*args, cwd=project, env={"CB_NATS_URL": url})


def test_inject_then_query_fire_and_read_the_history(project: Path, served: str) -> None:
    data = json.dumps({"csv": "a,b\n1,2\n"})
    first = cli(project, served, "inject", "data_pipeline", "--data", data, "--dedupe-id", "order-7", "--json")
    assert first.code == 0, first.err  # type: ignore[attr-defined]
    reply = first.json()  # type: ignore[attr-defined]
    assert reply["duplicate"] is False
    again = cli(project, served, "inject", "data_pipeline", "--data", data, "--dedupe-id", "order-7", "--json")
    assert again.json() == {"instance_id": reply["instance_id"], "duplicate": True}  # type: ignore[attr-defined]
    iid = reply["instance_id"]

    status = cli(project, served, "status", iid, "--json").json()  # type: ignore[attr-defined]
    for _ in range(50):  # the engine works in its own process: wait until it rests
        if status["status"] == "waiting":
            break
        status = cli(project, served, "status", iid, "--json").json()  # type: ignore[attr-defined]
    assert status["status"] == "waiting"
    assert status["enabled_manual"] == ["approve", "reject"]

    listed = cli(project, served, "instances", "--workflow", "data_pipeline", "--status", "waiting", "--json").json()  # type: ignore[attr-defined]
    assert [i["instance"] for i in listed] == [iid]

    fired = cli(project, served, "fire", iid, "approve", "--data", '{"note": "fine"}', "--json")
    assert fired.code == 0, fired.err  # type: ignore[attr-defined]
    after = fired.json()  # type: ignore[attr-defined]
    assert after["status"] == "completed"
    assert after["tokens"][0]["place"] == "completed" and after["tokens"][0]["data"]["note"] == "fine"

    again_fired = cli(project, served, "fire", iid, "approve")
    assert again_fired.code == 1  # type: ignore[attr-defined]
    assert "it is completed" in again_fired.error_line()  # type: ignore[attr-defined]

    history = cli(project, served, "history", iid, "--at", "3", "--json").json()  # type: ignore[attr-defined]
    assert history["at"] == 3 and history["status"] == "running"
    assert list(history["marking"]) == ["analyzed"]
    assert [e["type"] for e in history["events"]] == ["token_injected", "transition_fired", "transition_fired"]

    events = cli(project, served, "events", "--instance", iid, "--type", "transition_fired", "--json")
    fired_names = [json.loads(line)["transition"] for line in events.out.splitlines()]  # type: ignore[attr-defined]
    assert fired_names == ["process", "analyze", "request_review", "approve"]


def test_bad_input_is_one_error_line_and_a_meaningful_exit_code(project: Path, served: str) -> None:
    unknown = cli(project, served, "inject", "no_such_workflow", "--data", "{}")
    assert unknown.code == 1 and "no_such_workflow" in unknown.error_line()  # type: ignore[attr-defined]
    bad = cli(project, served, "inject", "data_pipeline", "--data", "[1]")
    assert bad.code == 4 and "must be a JSON object" in bad.error_line()  # type: ignore[attr-defined]
    missing = cli(project, served, "status", "0" * 32)
    assert missing.code == 1 and "0" * 32 in missing.error_line()  # type: ignore[attr-defined]
    wrong = cli(project, served, "instances", "--status", "sleeping")
    assert wrong.code == 2 and "sleeping" in wrong.error_line()  # type: ignore[attr-defined]
    nope = cli(project, served, "instances", "--workflow", "nope")
    assert nope.code == 2 and "'nope' is not a workflow of the project" in nope.error_line()  # type: ignore[attr-defined]
    bogus = cli(project, served, "events", "--type", "bogus")
    assert bogus.code == 2 and "unknown event type 'bogus'" in bogus.err  # type: ignore[attr-defined]
    assert "Traceback" not in bogus.err  # type: ignore[attr-defined]


def test_bad_options_are_usage_errors_not_tracebacks(project: Path, served: str) -> None:
    """Found in a walk-through: these printed a traceback (exit 1), or, for a timeout of 0, asked the engine to
    start an instance and then reported that nothing answered in time."""
    cases = [
        (("events", "--since", "0"), "--since"),
        (("events", "--workflow", "a.b"), "'a.b' is invalid"),
        (("events", "--instance", "*"), "'*' is invalid"),
        (("inject", "a.b", "--data", "{}"), "'a.b' is invalid"),
        (("inject", "data_pipeline", "--data", "{}", "--timeout", "0"), "more than 0 seconds"),
        (("fire", "0" * 32, "approve", "--timeout", "-1"), "more than 0 seconds"),
        # A --project that is no directory (found in a walk-through: a traceback, or an empty server made there).
        (("status", "0" * 32, "--project", str(project / "workflows" / "data_pipeline.py")), "is not a directory"),
        (("inject", "data_pipeline", "--data", "{}", "--project", str(project / "nowhere")), "is not a directory"),
    ]
    # Data larger than one NATS message (found in a walk-through: nats-py's MaxPayloadError as a traceback).
    big = project / "big.json"
    big.write_text(json.dumps({"comment": "x" * 2_000_000}))
    too_big = cli(project, served, "fire", "0" * 32, "approve", "--data", f"@{big}", "--json")
    assert too_big.code == 4 and too_big.json()["error"]["code"] == "payload_too_large", too_big  # type: ignore[attr-defined]
    before = len(cli(project, served, "instances", "--json").json())  # type: ignore[attr-defined]
    for args, named in cases:
        got = cli(project, served, *args)
        assert got.code == 2 and named in got.err and "Traceback" not in got.err, (args, got)  # type: ignore[attr-defined]
    assert len(cli(project, served, "instances", "--json").json()) == before  # type: ignore[attr-defined]  # none started
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = cli(project, served, "serve", "--metrics-port", str(port))
    assert busy.code == 2 and f"cannot serve on 127.0.0.1:{port}" in busy.error_line()  # type: ignore[attr-defined]
    # A kind no executor has would leave those actions running in the engine without a word (found in a walk-through).
    typo = cli(project, served, "serve", "--remote-executors", "shell,dockr")
    assert typo.code == 2 and "no executor is named 'dockr'" in typo.error_line()  # type: ignore[attr-defined]


def test_pause_resume_and_cancel_an_instance_through_the_serving_engine(project: Path, served: str) -> None:
    data = json.dumps({"csv": "a,b\n1,2\n"})
    iid = cli(project, served, "inject", "data_pipeline", "--data", data, "--json").json()["instance_id"]  # type: ignore[attr-defined]
    status = cli(project, served, "status", iid, "--json").json()  # type: ignore[attr-defined]
    for _ in range(50):
        if status["status"] == "waiting":
            break
        status = cli(project, served, "status", iid, "--json").json()  # type: ignore[attr-defined]
    paused = cli(project, served, "pause", iid, "--actor", "ops", "--json")
    assert paused.code == 0 and paused.json()["status"] == "paused", paused.err  # type: ignore[attr-defined]
    refused = cli(project, served, "fire", iid, "approve")
    assert refused.code == 1 and "paused" in refused.error_line()  # type: ignore[attr-defined]
    resumed = cli(project, served, "resume", iid, "--json")
    assert resumed.json()["status"] in ("running", "waiting")  # type: ignore[attr-defined]
    cancelled = cli(project, served, "cancel", iid, "--reason", "a duplicate order", "--json").json()  # type: ignore[attr-defined]
    assert cancelled["status"] == "cancelled"
    assert cancelled["history"][-1]["details"]["reason"] == "a duplicate order"
    again = cli(project, served, "retry", iid)
    assert again.code == 1 and "cancelled" in again.error_line()  # type: ignore[attr-defined]


def test_a_project_is_usable_from_any_directory(project: Path, served: str, tmp_path: Path) -> None:
    """Found in review: with --project (or a path to a project's workflow) from another directory, the
    workflows' own imports (``from rules import ...``) failed, and the queries silently found nothing."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    data = json.dumps({"input_file": str(project / "examples" / "data" / "measurements.csv")})
    started = cli(project, served, "inject", "data_pipeline", "--data", data, "--json")
    iid = started.json()["instance_id"]  # type: ignore[attr-defined]
    listed = run_cli("instances", "--project", str(project), "--json", cwd=elsewhere, env={"CB_NATS_URL": served})
    assert listed.code == 0 and "warning" not in listed.err, listed.err
    assert iid in {i["instance"] for i in listed.json()}
    shown = run_cli("status", iid, "--project", str(project), "--json", cwd=elsewhere, env={"CB_NATS_URL": served})
    assert shown.code == 0 and shown.json()["instance"] == iid, shown.err
    ran = run_cli("run", str(project / "workflows" / "data_pipeline.py"), "--data", data, "--json", cwd=elsewhere)
    assert ran.code in (0, 3) and "cannot load" not in ran.err, ran.err  # (3: it waits for a review)


def test_schemas_are_json_schema_documents(project: Path) -> None:
    for which, title in (("inject", "InjectRequest"), ("event", "Event")):
        result = run_cli("schema", which, cwd=project)
        assert result.code == 0, result.err
        assert result.json()["title"] == title


def test_run_durable_keeps_the_instance_in_the_embedded_server(tmp_path: Path) -> None:
    project = project_copy(tmp_path)
    data = json.dumps({"input_file": "examples/data/measurements.csv"})
    ran = run_cli("run", "workflows/data_pipeline.py", "--durable", "--json", "--data", data, cwd=project, timeout=90)
    assert ran.code == 0, ran.err
    iid = ran.json()["instance"]
    assert (project / ".circuit_breaker" / "nats").is_dir(), "JetStream data lives in the project"
    # A later command, another embedded server on the same data: the instance is still there.
    status = run_cli("status", iid, "--json", cwd=project, timeout=90)
    assert status.code == 0, status.err
    assert status.json()["status"] == "completed"
    assert status.json()["tokens"][0]["data"]["row_count"] == 24
    # From elsewhere with --project: the project's embedded store (found in a walk-through: a new, empty one in
    # the current directory, so nothing was found).
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shown = run_cli("status", iid, "--project", str(project), "--json", cwd=elsewhere, timeout=90)
    assert shown.code == 0 and shown.json()["status"] == "completed", shown.err
    assert not (elsewhere / ".circuit_breaker").exists()


def test_with_json_an_error_is_also_one_json_object_naming_its_code(project: Path, served: str) -> None:
    """Scripts read stdout: with --json they learn why a command failed, in the protocol's codes, not just that."""
    data = json.dumps({"input_file": "orders.csv"})
    iid = cli(project, served, "inject", "data_pipeline", "--data", data, "--json").json()["instance_id"]  # type: ignore[attr-defined]
    cases = [
        (("fire", iid, "no_such_transition"), 1, "unknown_transition", "no_such_transition"),
        (("fire", iid, "approve", "--data", "[1]"), 4, "bad_data", "must be a JSON object"),
        (("status", "0" * 32), 1, "unknown_instance", "0" * 32),
        (("inject", "no_such_workflow", "--data", "{}"), 1, "unknown_workflow", "no_such_workflow"),
        (("instances", "--status", "sleeping"), 2, "usage", "sleeping"),
    ]
    for args, exit_code, code, named in cases:
        got = cli(project, served, *args, "--json")
        assert got.code == exit_code, (args, got)  # type: ignore[attr-defined]
        assert named in got.error_line(), (args, got)  # type: ignore[attr-defined]
        error = got.json()["error"]  # type: ignore[attr-defined]
        assert error["code"] == code and error["exit_code"] == exit_code, (args, error)
        assert named in error["message"], (args, error)
    plain = cli(project, served, "status", "0" * 32)
    assert plain.out == ""  # type: ignore[attr-defined]  # (without --json nothing but the error line)


SLOW = """
import asyncio
from pathlib import Path

from circuit_breaker import Workflow

slow = Workflow("slow")
a, b = slow.states("a", "b")


@slow.flow(a >> b, "wait")
async def wait(token):
    Path("began").write_text("yes")
    await asyncio.sleep(60)
    return {}
"""


def test_ctrl_c_during_run_durable_says_where_the_instance_is(tmp_path: Path) -> None:
    """Found in a walk-through: Ctrl-C printed nothing at all (exit 130), not even the instance's id."""
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "slow.py").write_text(SLOW)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CB_")} | {"NO_COLOR": "1"}
    proc = subprocess.Popen(
        [console_script(), "run", "workflows/slow.py", "--durable", "--json"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "began").exists():
            assert time.monotonic() < deadline and proc.poll() is None, "the action did not begin"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    reply = json.loads(out)
    iid = reply["instance"]
    assert reply["error"]["code"] == "interrupted" and iid in err and "circuit-breaker status" in err
    status = run_cli("status", iid, "--json", cwd=tmp_path, env={"NO_COLOR": "1"}, timeout=90)
    assert status.code == 0 and status.json()["status"] == "running", status.err  # stored, for serve to go on
