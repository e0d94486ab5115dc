"""``worker --project`` serves the project's own executors; bad metrics ports are one error line; a function's
exception is not retried on a worker unless it says so, as in a local run."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from .conftest import CLI, make_task, submit_task, wait_results

BOOMER = '''
from typing import Any

from circuit_breaker.executors import Executor


class Boomer(Executor):
    """Says boom."""

    name = "boomer"

    async def execute_internal(self) -> dict[str, Any]:
        return {"boom": True}
'''


def project(root: Path) -> Path:
    (root / "executors").mkdir(parents=True)
    (root / "executors" / "boomer.py").write_text(BOOMER)
    return root


async def test_a_worker_serves_the_executors_of_the_project_folder(spawn, js, tmp_path: Path) -> None:
    chosen = spawn("--executors", "boomer", "--project", str(project(tmp_path / "proj")))
    assert chosen.ready["executors"] == ["boomer"]
    await submit_task(js, make_task({"executor": "boomer", "params": {}}))
    got = await wait_results(js, 1, timeout=15)
    assert [(r.status, r.output) for r in got] == [("succeeded", {"boom": True})], chosen.log()


def test_a_default_worker_serves_the_current_directorys_project(spawn, tmp_path: Path) -> None:
    project(tmp_path)  # the spawn fixture runs workers in tmp_path
    assert "boomer" in spawn().ready["executors"]


def run_worker(url: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CB_NATS_URL": url, "CB_CONNECT_ATTEMPTS": "1"}
    return subprocess.run([CLI, "worker", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


def test_a_broken_project_executor_is_one_error_line(fresh_nats: str, tmp_path: Path) -> None:
    (tmp_path / "executors").mkdir()
    (tmp_path / "executors" / "broken.py").write_text("import no_such_module_here\n")
    out = run_worker(fresh_nats, tmp_path, "--executors", "set")
    assert out.returncode == 5, out
    assert "broken.py" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_a_metrics_port_out_of_range_is_a_usage_error(fresh_nats: str, tmp_path: Path) -> None:
    out = run_worker(fresh_nats, tmp_path, "--executors", "set", "--metrics-port", "99999")
    assert out.returncode == 2, out
    assert out.stderr.strip().splitlines() == [
        "error: invalid settings: worker.metrics_port: Input should be less than or equal to 65535"
    ]


def test_a_metrics_port_in_use_is_a_usage_error_naming_the_port(fresh_nats: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = run_worker(fresh_nats, tmp_path, "--executors", "set", "--metrics-port", str(port))
    assert out.returncode == 2, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert f"127.0.0.1:{port}" in lines[0] and "already in use" in lines[0]


def test_worker_project_uses_the_projects_settings_and_embedded_server(tmp_path: Path) -> None:
    """Found in a review: `worker --project DIR` read the settings and made the embedded store of the current
    directory, so serve --project DIR and worker --project DIR run elsewhere used two different servers."""
    project, elsewhere = tmp_path / "proj", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    (project / "circuit_breaker.toml").write_text('data_dir = "state"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("CB_")}
    out = subprocess.run(
        [CLI, "worker", "--project", str(project), "--status", "--json"],
        env=env,
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert (project / "state" / "nats").is_dir() and not (elsewhere / ".circuit_breaker").exists()


def test_a_worker_project_that_is_no_directory_is_a_usage_error(fresh_nats: str, tmp_path: Path) -> None:
    """Found in a walk-through: a typo in --project gave an idle worker on a new, empty embedded server there."""
    out = run_worker(fresh_nats, tmp_path, "--executors", "set", "--project", str(tmp_path / "nowhere"))
    assert out.returncode == 2 and "is not a directory" in out.stderr, out
    assert not (tmp_path / "nowhere").exists()
