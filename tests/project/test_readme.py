"""The README's promises: its first command runs the pipeline, its DSL tour works as written."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

from circuit_breaker import Engine, InstanceStatus, Workflow

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_the_readme_starts_with_the_setup_and_run_command_then_the_test_command() -> None:
    first = blocks("bash")[0]
    commands = [line for line in first.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2
    assert "pip install -e '.[dev]'" in commands[0] and "circuit-breaker run" in commands[0]
    assert commands[1] == "python -m pytest"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest" in ci


def test_the_readme_run_command_completes_the_pipeline() -> None:
    first = blocks("bash")[0]
    run = first.splitlines()[1].split("&& circuit-breaker ", 1)[1]
    argv = [str(Path(sys.executable).parent / "circuit-breaker"), *shlex.split(run), "--json"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert '"status": "completed"' in done.stdout


async def test_the_dsl_tour_works_as_written() -> None:
    namespace: dict[str, object] = {}
    exec(compile(blocks("python")[0], "README.md", "exec"), namespace)  # our own README
    wf = namespace["wf"]
    assert isinstance(wf, Workflow)
    async with Engine() as engine:
        engine.register(wf)
        inst = await engine.wait((await engine.start("data_pipeline", {"input_file": "x.csv"})).id, timeout=5)
    assert inst.status is InstanceStatus.COMPLETED
    assert inst.tokens[0].place == "done"


def test_the_executor_tour_builds_actions_with_templates_and_masks_the_secret() -> None:
    namespace: dict[str, object] = {}
    python_blocks = blocks("python")
    exec(compile(python_blocks[0], "README.md", "exec"), namespace)  # the workflow the tour extends
    tour = next(b for b in python_blocks if "class Summarise(Executor)" in b)
    exec(compile(tour, "README.md", "exec"), namespace)
    wf = namespace["wf"]
    assert isinstance(wf, Workflow)
    specs = {t.name: t.executor for t in wf.spec().transitions if t.executor}
    assert specs["count"] == {"executor": "shell", "params": {"argv": ["wc", "-l", "{{ input_file }}"]}}
    assert specs["notify"]["params"]["auth"] == "***"
