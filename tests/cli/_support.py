"""Running the real ``circuit-breaker`` console script from tests, and reading what it printed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


def console_script() -> str:
    # Prefer the script of the interpreter running the tests (the venv under test), then PATH.
    beside = Path(sys.executable).parent / "circuit-breaker"
    found = str(beside) if beside.exists() else shutil.which("circuit-breaker")
    if found is None:
        pytest.fail("the circuit-breaker console script is not installed (pip install -e . in this venv)")
    return found


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)  # fails unless stdout is exactly one JSON document

    def error_line(self) -> str:
        """The error report, checked to be one ``error:`` line and not a traceback."""
        assert "Traceback" not in self.err, self.err
        lines = self.err.splitlines()
        assert len(lines) == 1, self.err
        assert lines[0].startswith("error: "), self.err
        return lines[0]

    def by_name(self) -> dict[str, dict[str, Any]]:
        """``executors --json`` entries by executor name."""
        return {entry["name"]: entry for entry in self.json()}


def run_cli(
    *args: str,
    cwd: Path,
    columns: int = 200,
    pythonpath: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> Result:
    environ = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")}
    environ.update(NO_COLOR="1", COLUMNS=str(columns))  # no colour codes or wrapped table cells in what we assert on
    environ.pop("PYTHONPATH", None)
    if pythonpath is not None:
        environ["PYTHONPATH"] = str(pythonpath)
    environ.update(env or {})
    proc = subprocess.run(
        [console_script(), *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=timeout, check=False
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def start_serve(cwd: Path, env: dict[str, str], *args: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """``circuit-breaker serve --json ARGS`` in ``cwd``, started: the process and its ready line (``url``,
    ``workflows``, ``metrics_port``). The caller stops it."""
    proc = subprocess.Popen(
        [console_script(), "serve", "--json", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(10)
        pytest.fail(f"serve did not start: {proc.stderr.read() if proc.stderr else ''}")
    ready: dict[str, Any] = json.loads(line)
    return proc, ready
