"""The ``circuit-breaker`` command, run as users run it: the installed console script in a subprocess.

Fixture workflows live in ``fixtures/``, laid out like a project root (``workflows/`` importing from
``rules/``); commands run with that directory as the working directory unless a test says otherwise.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

import circuit_breaker

from ._support import Result, run_cli

FIXTURES = Path(__file__).parent / "fixtures"


def cli(*args: str, cwd: Path = FIXTURES) -> Result:
    return run_cli(*args, cwd=cwd)


# -- run -----------------------------------------------------------------------------------------------------
def test_run_json_completes_a_linear_workflow_and_merges_action_results() -> None:
    # workflows/order.py imports ``rules.pricing`` from the project root (the working directory).
    res = cli("run", "workflows/order.py", "--json", "--data", '{"qty": 4, "unit_price": 2.5}')

    assert res.code == 0, res.err
    assert res.err == ""
    summary = res.json()
    assert summary["status"] == "completed"
    assert summary["workflow"] == "order"
    assert isinstance(summary["instance"], str) and summary["instance"]
    assert [(t["place"], t["data"]) for t in summary["tokens"]] == [
        ("shipped", {"qty": 4, "unit_price": 2.5, "total": 10.0, "carrier": "post", "shipped": True})
    ]
    assert [h["kind"] for h in summary["history"]] == ["created", "fired", "fired", "completed"]
    assert [h["transition"] for h in summary["history"] if h["kind"] == "fired"] == ["price", "ship"]
    assert summary["history"][1]["from_places"] == ["new"] and summary["history"][1]["to_places"] == ["priced"]


def test_run_reads_data_from_a_file_and_prints_tables() -> None:
    res = cli("run", "workflows/order.py", "--data", "@order.json")

    assert res.code == 0, res.err
    first = res.out.splitlines()[0]
    assert first.startswith("order") and first.endswith("completed")
    assert "shipped" in res.out
    assert '"customer": "ada"' in res.out  # from order.json
    assert '"total": 10.0' in res.out  # merged by the action
    assert "new → priced" in res.out and "priced → shipped" in res.out


def test_run_stops_waiting_at_a_manual_transition() -> None:
    res = cli("run", "manual.py", "--json")

    assert res.code == 0, res.err
    summary = res.json()
    assert summary["status"] == "waiting"
    assert summary["enabled_manual"] == ["approve"]
    assert [(t["place"], t["data"]) for t in summary["tokens"]] == [("in_review", {"queued": True})]
    assert [h["kind"] for h in summary["history"]] == ["created", "fired", "status"]


def test_run_of_a_failing_action_exits_1_with_the_incident() -> None:
    res = cli("run", "two.py:crash", "--json")

    assert res.code == 1
    summary = res.json()  # the final state is still printed for the caller
    assert summary["status"] == "failed"
    assert summary["tokens"][0]["place"] == "start"
    incident = summary["incidents"][0]
    assert incident["transition"] == "charge"
    assert incident["error"]["kind"] == "ConnectionError"
    assert "failed" in [h["kind"] for h in summary["history"]]
    line = res.error_line()
    assert "charge" in line and "payment gateway down" in line


def test_run_times_out_with_exit_6() -> None:
    started = time.monotonic()
    res = cli("run", "two.py", "--workflow", "slow", "--timeout", "0.3")

    assert res.code == 6
    assert "still running after 0.3s" in res.error_line()
    assert time.monotonic() - started < 15  # the 30 s action was cancelled, not awaited


def test_run_of_a_file_with_several_workflows_needs_a_name() -> None:
    res = cli("run", "two.py")

    assert res.code == 2
    line = res.error_line()
    assert "crash" in line and "slow" in line and "--workflow" in line


def test_run_with_an_unknown_rule_is_a_definition_error() -> None:
    res = cli("run", "unknown_rule.py")

    assert res.code == 3
    line = res.error_line()
    assert "unknown rule 'no_such_rule'" in line and "grant" in line


def test_an_exception_while_importing_is_a_load_error_naming_file_and_exception() -> None:
    res = cli("run", "broken.py")

    assert res.code == 5
    line = res.error_line()
    assert "broken.py" in line and "RuntimeError" in line and "SETTINGS_URL is not set" in line


@pytest.mark.parametrize(
    ("args", "exit_code", "code", "kind"),
    [
        (("run", "unknown_rule.py"), 3, "definition", "UnknownRuleError"),
        (("run", "broken.py"), 5, "load", "WorkflowLoadError"),
        (("check", "missing.py"), 5, "load", "WorkflowLoadError"),
    ],
)
def test_with_json_a_failure_is_also_one_json_object_on_stdout(
    args: tuple[str, ...], exit_code: int, code: str, kind: str
) -> None:
    res = cli(*args, "--json")

    assert res.code == exit_code
    line = res.error_line()  # (the line for people stays)
    assert res.json() == {
        "error": {"code": code, "message": line.removeprefix("error: "), "exit_code": exit_code, "type": kind}
    }


@pytest.mark.parametrize(
    ("args", "kind", "named"),
    [
        (("run", "missing.py", "--timeout", "0"), "BadParameter", "--timeout"),
        (("status",), "MissingParameter", "instance"),
        (("run", "missing.py", "--no-such-flag"), "NoSuchOption", "--no-such-flag"),
    ],
)
def test_with_json_a_usage_error_is_also_one_json_object(args: tuple[str, ...], kind: str, named: str) -> None:
    """Found in a walk-through: a bad option or argument printed only typer's box, so a script reading stdout
    got nothing, though every other error came as JSON."""
    res = cli(*args, "--json")

    assert res.code == 2 and named in res.err
    error = res.json()["error"]
    assert error["code"] == "usage" and error["exit_code"] == 2 and error["type"] == kind and named in error["message"]


@pytest.mark.parametrize(
    ("path", "message"),
    [("missing.py", "does not exist"), ("rules/pricing.py", "defines no Workflow")],
)
def test_a_missing_file_or_one_without_workflows_cannot_be_loaded(path: str, message: str) -> None:
    res = cli("run", path)

    assert res.code == 5
    assert message in res.error_line()


def test_data_rejected_by_the_token_model_exits_4_naming_the_field() -> None:
    res = cli("run", "typed.py", "--data", '{"qty": "lots", "address": "1 Main St"}')

    assert res.code == 4
    line = res.error_line()
    assert "Shipment" in line and "qty" in line


@pytest.mark.parametrize(
    ("data", "message"),
    [("[1, 2]", "must be a JSON object, got an array"), ('{"qty": ', "is not valid JSON")],
)
def test_data_that_is_not_a_json_object_exits_4(data: str, message: str) -> None:
    res = cli("run", "manual.py", "--data", data)

    assert res.code == 4
    assert message in res.error_line()


# -- check ---------------------------------------------------------------------------------------------------
def test_check_lists_structural_problems_as_json() -> None:
    res = cli("check", "structure.py", "--json")

    assert res.code == 1
    report = res.json()
    assert report["ok"] is False
    [wf] = report["workflows"]
    assert wf["workflow"] == "ticket"
    found = {(p["kind"], p["element"]) for p in wf["problems"]}
    assert found == {("unreachable_place", "orphan"), ("dead_transition", "adopt")}


def test_check_reports_an_unknown_rule() -> None:
    res = cli("check", "unknown_rule.py")

    assert res.code == 1
    assert "FAIL  loan" in res.out
    assert "unknown rule 'no_such_rule'" in res.out


def test_check_of_a_clean_file_checks_every_workflow_and_says_ok() -> None:
    res = cli("check", "two.py")

    assert res.code == 0, res.out + res.err
    lines = res.out.splitlines()
    assert [line.split()[:2] for line in lines] == [["OK", "crash:"], ["OK", "slow:"]]


# -- graph ---------------------------------------------------------------------------------------------------
def test_graph_mermaid_shows_places_transitions_and_arcs() -> None:
    res = cli("graph", "workflows/order.py", "--format", "mermaid")

    assert res.code == 0, res.err
    assert res.out.startswith("flowchart")
    for node in ("p_new", "p_priced", "p_shipped", "t_price", "t_ship"):
        assert node in res.out
    assert "p_new --> t_price" in res.out and "t_price --> p_priced" in res.out


def test_graph_dot_picks_the_workflow_by_path_name_syntax() -> None:
    res = cli("graph", "manual.py:expense", "--format", "dot")

    assert res.code == 0, res.err
    assert res.out.startswith('digraph "expense"')
    assert '"p_in_review" -> "t_approve"' in res.out
    assert '"t_approve" [label="approve", shape=box, style="dashed"]' in res.out  # manual transitions are dashed


# -- the command itself --------------------------------------------------------------------------------------
def test_version_and_help_document_the_exit_codes() -> None:
    assert cli("version").out.strip() == circuit_breaker.__version__

    res = cli("--help")
    assert res.code == 0
    assert "Exit codes:" in res.out
    for code in range(7):
        assert f" {code}  " in res.out


def test_importing_the_library_does_not_import_the_cli_stack() -> None:
    probe = "import sys, circuit_breaker; print(sorted(m for m in ('typer', 'rich', 'click') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
