"""Serves of different projects on one NATS: each project's injections reach its own serve, with the defaults
(found in a walk-through: one project's serve refused about half of the other's as 'unknown workflow') and with
``CB_ANSWER_UNKNOWN=false``, which only changes what a caller hears for a workflow no serve runs."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

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


@pytest.mark.parametrize(
    ("answer_unknown", "refusal"),
    [("true", "unknown workflow 'invoicing' (registered: billing, shipping)"), ("false", "no engine serves workflow")],
)
def test_serves_of_two_projects_each_answer_their_own_injections(
    tmp_path: Path, nats_url: str, answer_unknown: str, refusal: str
) -> None:
    asyncio.run(drop_streams(nats_url))
    env = {**os.environ, "CB_NATS_URL": nats_url, "CB_ANSWER_UNKNOWN": answer_unknown, "NO_COLOR": "1"}
    serves = [start_serve(project(tmp_path, name), env)[0] for name in ("billing", "shipping")]
    try:
        for n in range(6):  # (with every serve answering for every workflow, one in two went to the wrong one)
            for name in ("billing", "shipping"):
                done = run_cli("inject", name, "--data", f'{{"n": {n}}}', "--json", cwd=tmp_path, env=env)
                assert done.code == 0, done.err
        # The other project's instance is named as such (found in a walk-through: 'unknown instance').
        elsewhere = run_cli(
            "status", done.json()["instance_id"], "--project", str(tmp_path / "billing"), cwd=tmp_path, env=env
        )
        assert elsewhere.code == 5 and "workflow 'shipping' of instance" in elsewhere.err, elsewhere.err
        unknown = run_cli("inject", "invoicing", "--data", "{}", cwd=tmp_path, env=env)
        assert unknown.code != 0 and refusal in unknown.err, unknown.err
    finally:
        for proc in serves:
            proc.terminate()
            proc.wait(30)
    asyncio.run(drop_streams(nats_url))


def test_a_workflow_defined_in_two_files_names_both(tmp_path: Path, nats_url: str) -> None:
    """Found in a walk-through: 'another workflow named ... is already registered', naming neither file."""
    root = project(tmp_path, "billing")
    (root / "workflows" / "billing_copy.py").write_text(PROJECT.format(name="billing"))
    refused = run_cli("serve", cwd=root, env={"CB_NATS_URL": nats_url})
    assert refused.code == 3, refused.err
    assert (
        "'billing' is defined in both" in refused.err
        and "billing.py" in refused.err
        and "billing_copy.py" in refused.err
    )
