"""A secret given to an executor never shows: not in results, events, history, logs or CLI output."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from circuit_breaker import Engine, InstanceStatus

SECRET = "sk-live-7c1d9e2b44f0"

WORKFLOW = textwrap.dedent(
    f'''
    import logging
    from circuit_breaker import Workflow
    from circuit_breaker.executors import Executor, param

    class Leaky(Executor):
        """Echoes its key everywhere it can: output, logs and an error message."""
        name = "leaky"
        api_key: str = param(required=True, secret=True)
        fail: bool = param(default=False)

        async def execute_internal(self) -> dict:
            logging.getLogger("circuit_breaker.leaky").warning("calling with %s", self.api_key)
            if self.fail:
                raise RuntimeError(f"server said: bad key {{self.api_key}}")
            return {{"echo": f"Bearer {{self.api_key}}"}}

    workflow = Workflow("leaky")
    a, b, c = workflow.states("a", "b", "c")
    workflow.flow(a >> b, "call").action(Leaky(api_key="{SECRET}"))
    workflow.flow(b >> c, "call_again").action(Leaky(api_key="{SECRET}", fail=True))
    '''
)


@pytest.fixture
def workflow_file(tmp_path: Path) -> Path:
    path = tmp_path / "leaky.py"
    path.write_text(WORKFLOW)
    return path


async def test_results_events_and_history_hold_no_secret(workflow_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    from circuit_breaker.cli._loader import load_workflows
    from circuit_breaker.secrets import default_masker

    (wf,) = load_workflows(workflow_file)
    caplog.handler.addFilter(default_masker().log_filter())
    async with Engine() as engine:
        inst = await engine.wait((await engine.start(wf, {})).id, timeout=10)
        events = [e.model_dump_json() async for e in engine.events(instance=inst.id)]
    assert inst.status is InstanceStatus.FAILED
    assert inst.tokens[0].data["echo"] == "Bearer ***"
    assert "bad key ***" in inst.open_incidents[0].error.message
    everything = "\n".join([*events, inst.model_dump_json(), caplog.text])
    assert "calling with ***" in caplog.text
    assert SECRET not in everything


def test_the_command_line_never_prints_the_secret(workflow_file: Path) -> None:
    cli = Path(sys.executable).parent / "circuit-breaker"
    for extra in ([], ["--json"]):
        done = subprocess.run([str(cli), "run", str(workflow_file), *extra], capture_output=True, text=True, timeout=60)
        assert done.returncode == 1  # the second call fails: an incident
        assert "***" in done.stdout
        assert SECRET not in done.stdout and SECRET not in done.stderr


def test_credential_descriptions_are_not_secrets_but_their_values_are() -> None:
    from circuit_breaker.executors.http import HttpExecutor
    from circuit_breaker.secrets import default_masker

    HttpExecutor(
        url="http://127.0.0.1:9/x", auth={"type": "api_key", "name": "X-Key", "value": "k-9e8d7c6b", "in": "query"}
    )
    HttpExecutor(url="http://127.0.0.1:9/x", auth={"type": "basic", "username": "admin", "password": "pa55-w0rd-x"})
    text = "use a bearer header or query string with basic auth as admin via X-Key: k-9e8d7c6b / pa55-w0rd-x"
    assert (
        default_masker().mask_text(text)
        == "use a bearer header or query string with basic auth as admin via X-Key: *** / ***"
    )


async def test_secret_named_token_fields_are_masked_wherever_their_values_show_up(tmp_path: Path) -> None:
    from circuit_breaker import Workflow
    from circuit_breaker.secrets import default_masker

    wf = Workflow("data_secret")
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "note", action=lambda token: {"note": f"connect with {token.data['db_password']}"})
    async with Engine() as engine:
        inst = await engine.wait((await engine.start(wf, {"db_password": "hunter22-pw-x"})).id, timeout=5)
    shown = default_masker().mask(inst.tokens[0].data)
    assert shown == {"db_password": "***", "note": "connect with ***"}
