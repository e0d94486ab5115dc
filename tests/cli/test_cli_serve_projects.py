"""Serves of different projects on one NATS: with ``CB_ANSWER_UNKNOWN=false`` each answers injections for its
own workflows only, so one project's serve never refuses another's ('unknown workflow'; found in a walk-through,
where the setting existed only in code)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from tests.cli._support import run_cli, start_serve
from tests.conftest import drop_streams

PROJECT = """
from circuit_breaker import Workflow

{name} = Workflow("{name}")
a, b = {name}.states("a", "b")
{name}.flow(a >> b, "go", trigger="manual")
"""


def project(root: Path, name: str) -> Path:
    (root / name / "workflows").mkdir(parents=True)
    (root / name / "workflows" / f"{name}.py").write_text(PROJECT.format(name=name))
    return root / name


def test_serves_of_two_projects_each_answer_their_own_injections(tmp_path: Path, nats_url: str) -> None:
    asyncio.run(drop_streams(nats_url))
    env = {**os.environ, "CB_NATS_URL": nats_url, "CB_ANSWER_UNKNOWN": "false", "NO_COLOR": "1"}
    serves = [start_serve(project(tmp_path, name), env)[0] for name in ("billing", "shipping")]
    try:
        for n in range(6):  # (with every serve answering for every workflow, one in two went to the wrong one)
            for name in ("billing", "shipping"):
                done = run_cli("inject", name, "--data", f'{{"n": {n}}}', "--json", cwd=tmp_path, env=env)
                assert done.code == 0, done.err
        unknown = run_cli("inject", "invoicing", "--data", "{}", cwd=tmp_path, env=env)
        assert unknown.code != 0 and "no engine serves workflow 'invoicing'" in unknown.err, unknown.err
    finally:
        for proc in serves:
            proc.terminate()
            proc.wait(30)
    asyncio.run(drop_streams(nats_url))
