"""``circuit-breaker run/graph/check`` on YAML and JSON workflow documents, through the installed console script."""

from __future__ import annotations

from pathlib import Path

from ._support import Result, run_cli

ROOT = Path(__file__).parents[2]
FIXTURES = Path(__file__).parent / "fixtures"
EXAMPLE = "workflows/invoice_approval.yaml"


def cli(*args: str, cwd: Path = ROOT) -> Result:
    return run_cli(*args, cwd=cwd)


def test_run_the_example_approves_a_small_invoice_at_once() -> None:
    res = cli("run", EXAMPLE, "--json", "--data", '{"amount": 250, "customer": "acme"}')
    assert res.code == 0, res.err
    summary = res.json()
    assert summary["workflow"] == "invoice_approval"
    assert summary["status"] == "completed"
    assert [t["place"] for t in summary["tokens"]] == ["approved"]
    assert [h["transition"] for h in summary["history"] if h["kind"] == "fired"] == ["check", "auto_approve"]


def test_run_the_example_queues_a_big_invoice_for_a_manager() -> None:
    res = cli("run", EXAMPLE, "--json", "--data", '{"amount": 5000, "customer": "acme"}')
    assert res.code == 0, res.err  # waiting on a manual transition is a normal end
    summary = res.json()
    assert summary["status"] == "waiting"
    assert [t["place"] for t in summary["tokens"]] == ["manager_review"]
    assert summary["enabled_manual"] == ["approve", "reject"]


def test_run_the_example_without_a_customer_is_stuck_and_says_why() -> None:
    res = cli("run", EXAMPLE, "--json", "--data", '{"amount": 5}')
    assert res.code == 1
    assert "stuck in received" in res.error_line()
    assert "check: customer is required" in res.error_line()


def test_check_and_graph_the_example() -> None:
    res = cli("check", EXAMPLE, "--json")
    assert res.code == 0, res.err
    assert res.json()["workflows"] == [{"workflow": "invoice_approval", "ok": True, "problems": []}]
    graph = cli("graph", EXAMPLE)
    assert graph.code == 0, graph.err
    assert '    p_manager_review[/"manager_review"/]' in graph.out  # a review place
    assert '    t_approve["approve ✋"]' in graph.out  # a manual transition


def test_a_json_workflow_runs_forks_and_joins_weighted_arcs() -> None:
    res = cli("run", "split_merge.json", "--json", "--data", '{"items": 3}', cwd=FIXTURES)
    assert res.code == 0, res.err
    summary = res.json()
    assert summary["status"] == "completed"
    assert [(t["place"], t["data"]) for t in summary["tokens"]] == [("merged", {"items": 3})]


def test_a_document_error_names_file_line_and_path() -> None:
    run = cli("run", "unknown_place.yaml", cwd=FIXTURES)
    assert run.code == 3  # the workflow is defined wrongly
    assert run.error_line() == (
        "error: unknown_place.yaml, line 5: transitions[0].to: unknown place 'shiped' (places: new, shipped)"
    )
    check = cli("check", "unknown_place.yaml", cwd=FIXTURES)
    assert check.code == 1
    assert "transitions[0].to: unknown place 'shiped'" in check.out


def test_invalid_yaml_is_a_load_error(tmp_path: Path) -> None:
    (tmp_path / "broken.yml").write_text("name: [unclosed\n")
    res = cli("run", "broken.yml", cwd=tmp_path)
    assert res.code == 5
    assert res.error_line().startswith("error: broken.yml, line 2: invalid YAML:")


def test_executors_come_from_the_projects_executors_folder(tmp_path: Path) -> None:
    (tmp_path / "executors").mkdir()
    (tmp_path / "executors" / "greeting.py").write_text(
        "from circuit_breaker.executors import Executor, param\n\n\n"
        "class Greet(Executor):\n"
        "    name = 'greet'\n"
        "    who: str = param(required=True)\n\n"
        "    async def execute_internal(self):\n"
        "        return {'greeting': f'hello {self.who}'}\n"
    )
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "hello.yaml").write_text(
        "name: hello\nplaces: [new, greeted]\ntransitions:\n"
        "  - {name: greet, from: new, to: greeted, executor: {executor: greet, params: {who: '{{ name }}'}}}\n"
    )
    res = cli("run", "workflows/hello.yaml", "--json", "--data", '{"name": "ann"}', cwd=tmp_path)
    assert res.code == 0, res.err
    assert res.json()["tokens"][0]["data"] == {"name": "ann", "greeting": "hello ann"}
