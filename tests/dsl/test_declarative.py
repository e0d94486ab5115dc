"""Declarative workflows: YAML/JSON documents that round-trip with the Python DSL and run the same."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from circuit_breaker import Engine, InstanceStatus, RetryPolicy, RuleSet, Workflow
from circuit_breaker.dsl import Task, dag, dump_workflow, load_workflow
from circuit_breaker.errors import DefinitionError, WorkflowLoadError
from circuit_breaker.executors import Executor, ExecutorRegistry, param

WAIT = 5.0
EXAMPLE = Path(__file__).parents[2] / "workflows" / "invoice_approval.yaml"


class Score(Executor):
    """Scores an amount (stands in for a real service)."""

    name = "score"
    amount: float = param(required=True)
    factor: float = param(default=1.0)
    api_key: str | None = param(default=None, secret=True)

    async def execute_internal(self) -> dict[str, Any]:
        return {"score": self.amount * self.factor}


@pytest.fixture
def registry() -> ExecutorRegistry:
    reg = ExecutorRegistry()
    reg.register(Score)
    return reg


def invoice_workflow() -> Workflow:
    """Everything the format carries: rules, review places, weights, joins, forks, manual triggers,
    validations, guards, an executor with templates, retries and timeouts, error places, descriptions."""
    rules = RuleSet({"big": "amount >= 1000", "small": "amount < 1000"})
    rules.add("high", "scored['score'] > 1500", desc="scored high")
    wf = Workflow("invoice", rules=rules, error_place="failed", desc="approve invoices")
    received, checked, review, copies, approved, rejected, failed = wf.states(
        "received", "checked", "review", "copies", "approved", "rejected", "failed", review=["review"]
    )
    score = Score(amount="{{ amount }}", factor=2).with_retry(RetryPolicy(max_attempts=2, initial_delay=0))
    wf.flow(
        received >> checked,
        "check",
        validations={"all": ["amount", "customer"]},
        guards=["big"],
        action=score.as_action(into="scored"),
        retry=RetryPolicy(max_attempts=4, initial_delay=0.01),
        timeout=10,
        error_place=failed,
        desc="score the invoice",
    )
    wf.flow(received >> approved, "fast_track", rules=["small"])
    wf.flow(checked >> (review, copies * 2), "escalate", rules={"any": ["high", "big"]})
    wf.flow((review, copies * 2) >> approved, "approve", trigger="manual", validations=["approver"])
    wf.flow(review >> rejected, "reject", trigger="manual")
    return wf


def test_python_dsl_dump_load_dump_gives_identical_text(registry: ExecutorRegistry) -> None:
    wf = invoice_workflow()
    for fmt in ("yaml", "json"):
        text = dump_workflow(wf, fmt)  # type: ignore[arg-type]
        loaded = load_workflow(text, registry=registry)
        assert dump_workflow(loaded, fmt) == text  # type: ignore[arg-type]
        # The serialisable spec (arcs, weights, policies, executor parameters with templates...) is equal too.
        assert loaded.spec() == wf.spec()
        assert loaded.compile().review_places == {"review"}


def test_the_yaml_is_readable() -> None:
    text = dump_workflow(invoice_workflow())
    assert """  - {name: high, expression: "scored['score'] > 1500", desc: scored high}\n""" in text
    assert "places:\n  - received\n  - checked\n  - {name: review, review: true}\n" in text
    assert "    to:\n      - review\n      - {place: copies, weight: 2}\n" in text
    assert "    retry: {max_attempts: 4, initial_delay: 0.01}\n    timeout: 10\n" in text
    assert "      params:\n        amount: '{{ amount }}'\n        factor: 2\n" in text
    json_doc = json.loads(dump_workflow(invoice_workflow(), "json"))
    assert json_doc["transitions"][0]["executor"] == {
        "executor": "score",
        "params": {"amount": "{{ amount }}", "factor": 2},
        "retry": {"max_attempts": 2, "initial_delay": 0},
        "into": "scored",
    }


async def outcome(wf: Workflow, data: dict[str, Any], verdict: tuple[str, dict[str, Any]] | None = None) -> Any:
    async with Engine() as engine:
        inst = await engine.wait((await engine.start(wf, data)).id, timeout=WAIT)
        if verdict is not None:
            await engine.fire(inst.id, verdict[0], data=verdict[1])
            inst = await engine.wait(inst.id, timeout=WAIT)
        fired = [(h.kind, h.transition) for h in inst.history if h.kind in ("fired", "rejected")]
        return inst.status, sorted((t.place or "", json.dumps(t.data, sort_keys=True)) for t in inst.tokens), fired


@pytest.mark.parametrize(
    ("data", "verdict", "places"),
    [
        ({"amount": 200, "customer": "acme"}, None, ["approved"]),  # fast track
        ({"amount": 1200, "customer": "acme"}, ("approve", {"approver": "bo"}), ["approved"]),  # scored, escalated
        ({"amount": 5000}, None, ["received"]),  # check is not enabled without a customer
    ],
)
async def test_loaded_workflow_behaves_like_the_python_one(
    registry: ExecutorRegistry, data: dict[str, Any], verdict: Any, places: list[str]
) -> None:
    wf = invoice_workflow()
    loaded = load_workflow(dump_workflow(wf), registry=registry)
    expected = await outcome(wf, data, verdict)
    assert await outcome(loaded, data, verdict) == expected
    assert [place for place, _ in expected[1]] == places


async def test_the_brief_example_document_loads_and_runs(registry: ExecutorRegistry) -> None:
    text = """
name: invoice_approval
rules:
  - {name: big, expression: "amount >= 1000", desc: "needs a manager"}
places: [received, checked, approved, rejected, a, b, c]
transitions:
  - {name: check, from: received, to: checked, validations: {all: [amount, customer]}}
  - {name: approve, from: checked, to: approved, trigger: manual, rules: {all: [big]}}
  - {name: notify, from: [a, b], to: c, executor: {executor: score, params: {amount: "{{ amount }}"}},
     retry: {max_attempts: 3}, timeout: 10}
"""
    wf = load_workflow(text, registry=registry)
    notify = wf.transition("notify")
    assert [p.name for p, _ in notify.inputs] == ["a", "b"]
    assert notify.retry_policy == RetryPolicy(max_attempts=3) and notify.timeout == 10
    async with Engine() as engine:
        small = await engine.wait((await engine.start(wf, {"amount": 10, "customer": "c"})).id, timeout=WAIT)
        assert small.enabled_manual == ["approve"]
        with pytest.raises(Exception, match="needs a manager"):
            await engine.fire(small.id, "approve")
        big = await engine.wait((await engine.start(wf, {"amount": 2000, "customer": "c"})).id, timeout=WAIT)
        done = await engine.fire(big.id, "approve")
        assert done.status is InstanceStatus.COMPLETED


def test_short_forms_mean_the_long_ones(registry: ExecutorRegistry) -> None:
    short = load_workflow(
        "name: s\nplaces: [a, b]\nrules: [{name: r, expression: 'x > 1'}]\n"
        "transitions: [{from: a, to: b, validations: [x], rules: r, retry: 2}]\n",
        registry=registry,
    )
    (t,) = short.transitions
    assert t.name == "a_to_b"  # the DSL's default name
    assert t.validations.names() == {"all": ["x"]} and t.rules.names() == {"all": ["r"]}
    assert t.retry_policy == RetryPolicy(max_attempts=2)


def test_the_example_workflow_is_in_the_form_dump_writes() -> None:
    wf = load_workflow(EXAMPLE)
    assert wf.name == "invoice_approval" and wf.problems() == []
    body = EXAMPLE.read_text().split("\nname:", 1)[1]  # after the comment header
    assert dump_workflow(wf) == "name:" + body


async def test_dags_of_executors_round_trip(registry: ExecutorRegistry) -> None:
    wf = dag(
        "scores",
        [
            Task("first", Score(amount="{{ n }}")),
            Task("left", Score(amount="{{ first.score }}", factor=2), ["first"]),
            Task("right", Score(amount="{{ first.score }}", factor=3), ["first"]),
            Task("total", Score(amount="{{ left.score }}"), ["left", "right"]),
        ],
    )
    text = dump_workflow(wf)
    loaded = load_workflow(text, registry=registry)
    assert dump_workflow(loaded) == text
    async with Engine() as engine:
        inst = await engine.wait((await engine.start(loaded, {"n": 5})).id, timeout=WAIT)
    assert inst.tokens[0].data["right"] == {"score": 15.0}
    assert inst.tokens[0].data["total"] == {"score": 10.0}


def test_files_load_by_extension(tmp_path: Path, registry: ExecutorRegistry) -> None:
    wf = invoice_workflow()
    (tmp_path / "w.yml").write_text(dump_workflow(wf))
    (tmp_path / "w.json").write_text(dump_workflow(wf, "json"))
    for name in ("w.yml", "w.json"):
        assert load_workflow(tmp_path / name, registry=registry).spec() == wf.spec()
        assert load_workflow(str(tmp_path / name), registry=registry).spec() == wf.spec()
    with pytest.raises(WorkflowLoadError, match="does not exist"):
        load_workflow(str(tmp_path / "missing.yaml"))


# -- document errors name their path (and line) ----------------------------------------------------------------
def problems_of(text: str, registry: ExecutorRegistry | None = None) -> str:
    with pytest.raises(DefinitionError) as err:
        load_workflow(text, registry=registry or ExecutorRegistry())
    return str(err.value)


def test_unknown_references_are_named_by_path_and_line(registry: ExecutorRegistry) -> None:
    message = problems_of(
        """name: x
places: [a, b]
rules: [{name: big, expression: amount > 1}]
transitions:
  - {name: one, from: a, to: b}
  - {name: two, from: a, to: b, rules: [bigg]}
  - {name: three, from: [a, x], to: b}
  - {name: four, from: a, to: b, executor: {executor: nope}}
  - {name: one, from: a, to: b}
""",
        registry,
    )
    assert message.startswith("workflow document has 4 problems: ")
    assert "line 6: transitions[1].rules: unknown rule 'bigg' (rules: big)" in message
    assert "line 7: transitions[2].from: unknown place 'x' (places: a, b)" in message
    assert "line 8: transitions[3].executor: unknown executor 'nope' (registered: score)" in message
    assert "line 9: transitions[4].name: transition 'one' is defined twice (also transitions[0])" in message


def test_shape_errors_name_path_line_and_the_keys_expected() -> None:
    message = problems_of(
        """name: x
places: [a, b]
transitions:
  - name: t
    frm: a
    to: {place: b, weight: 0}
    trigger: sometimes
"""
    )
    assert "line 4: transitions[0].from: is required" in message
    assert "line 5: transitions[0].frm: unknown key (expected one of: name, desc, from, to, trigger," in message
    assert "line 6: transitions[0].to[0].weight: Input should be greater than or equal to 1" in message
    assert "line 7: transitions[0].trigger: Input should be 'auto' or 'manual'" in message


def test_other_document_errors() -> None:
    assert "line 2: rules[0].expression: rule 'r': invalid rule expression" in problems_of(
        "name: x\nrules: [{name: r, expression: 'amount >'}]\nplaces: [a]\n"
    )
    assert "line 3: places: appears twice" in problems_of("name: x\nplaces: [a]\nplaces: [b]\n")
    assert "places[1]: place 'a' is declared twice" in problems_of('{"name": "x", "places": ["a", "a"]}')
    assert "key(s) 'places' appear twice" in problems_of('{"name": "x", "places": ["a"], "places": ["b"]}')
    assert "must be a mapping" in problems_of("- a\n- b\n")
    with pytest.raises(WorkflowLoadError, match=r"workflow document, line 2: invalid YAML"):
        load_workflow("name: [x\n")


# -- what cannot be written declaratively ----------------------------------------------------------------------
def test_dump_names_every_part_only_python_can_express() -> None:
    class Data(BaseModel):
        amount: int

    rules = RuleSet()
    rules.add("code_rule", lambda token: True)
    wf = Workflow("python_only", rules=rules, token_model=Data)
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "act", action=lambda token: {"x": 1})
    wf.flow(a >> b, "inline", rules=[lambda token: True])
    with pytest.raises(DefinitionError) as err:
        dump_workflow(wf)
    problems = err.value.problems
    assert any("token model Data" in p for p in problems)
    assert any("rule 'code_rule' is a Python callable" in p for p in problems)
    assert any("transition 'act': its action" in p and "is Python code" in p for p in problems)
    assert any("transition 'inline': its rules hold Python rule(s)" in p for p in problems)


def test_secret_parameters_are_not_written_unless_asked(registry: ExecutorRegistry) -> None:
    wf = Workflow("secrets")
    a, b, c = wf.states("a", "b", "c")
    wf.flow(a >> b, "plain", action=Score(amount=1, api_key="s3cret"))
    wf.flow(b >> c, "templated", action=Score(amount=1, api_key="{{ key }}"))  # a template is no secret
    with pytest.raises(DefinitionError) as err:
        dump_workflow(wf)
    assert err.value.problems == [
        "transition 'plain': executor 'score' parameter 'params.api_key' is a secret; write it as a template "
        "('{{ field }}') or pass reveal_secrets=True to write its value"
    ]
    text = dump_workflow(wf, reveal_secrets=True)
    assert "api_key: s3cret" in text
    assert load_workflow(text, registry=registry).spec() == wf.spec()


async def test_remote_actions_round_trip_and_run_through_the_task_queue(registry: ExecutorRegistry) -> None:
    from circuit_breaker import EventType
    from circuit_breaker.executors import LocalTaskQueue

    wf = Workflow("remote_scores")
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "score").action(Score(amount="{{ n }}").as_action(into="scored"), remote=True, deadline=30)
    text = dump_workflow(wf)
    assert "remote: true" in text and "deadline: 30" in text
    loaded = load_workflow(text, registry=registry)
    assert dump_workflow(loaded) == text
    async with Engine(tasks=LocalTaskQueue(registry)) as engine:
        inst = await engine.wait((await engine.start(loaded, {"n": 2})).id, timeout=WAIT)
        assert inst.tokens[0].data == {"n": 2, "scored": {"score": 2.0}}
        assert EventType.TRANSITION_STARTED in [e.type async for e in engine.events(instance=inst.id)]
