"""Every example script runs from the repository root, exits 0 and prints what its README line promises.

Examples are the first code users copy; a broken one costs more trust than a broken internal.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

# One line of output per example that only appears when it did what it is about.
EXPECTED = {
    "quickstart.py": "exported 4 history entries as JSON, YAML and CSV; all round-trip",
    "fork_join.py": "every join combined tokens of its own instance",
    "seed_style.py": "submit rejected:",
    "events.py": "3 completions seen live, 1 approval replayed",
    "retries_and_incidents.py": "after retry: completed, token in ['stored']",
    "remote_workers.py": "each of the 6 results applied once: True",
}


# Examples that need a running engine on NATS; each is run by its own test (see the comment).
NEEDS_NATS = {"inject_with_bare_nats.py": "tests/nats/test_example_bare_client.py"}


def test_every_example_is_tested_and_listed() -> None:
    scripts = sorted(p.name for p in EXAMPLES.glob("*.py"))
    assert scripts == sorted([*EXPECTED, *NEEDS_NATS])
    for test in NEEDS_NATS.values():
        assert (ROOT / test).is_file()
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    for name in scripts:
        assert f"`{name}`" in readme, f"{name} is missing from examples/README.md"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name: str) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr}"
    assert EXPECTED[name] in result.stdout, result.stdout
    assert result.stderr == "", result.stderr


def test_seed_style_shows_the_failing_rules_message() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "seed_style.py")], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert "content has 2 words; at least 20 are needed" in result.stdout
    assert "approve -> approved" in result.stdout
