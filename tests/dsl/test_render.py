"""Diagrams (Mermaid, DOT) and the serialisable WorkflowSpec."""

from __future__ import annotations

import re

from circuit_breaker import RetryPolicy, RuleSet, Token, Workflow
from circuit_breaker.dsl import WorkflowSpec
from circuit_breaker.rules import presence


def review_flow() -> Workflow:
    rules = RuleSet()
    rules.add("big", "n >= 10", desc="large enough")
    rules.add("named", presence("name"))
    wf = Workflow("review_flow", rules=rules, desc="demo")
    draft, left, right, review, done = wf.states("draft", "left", "right", "review", "done", review=["review"])

    @wf.flow(draft >> (left, right), "split", validations=["name"], retry=3, timeout=2.5)
    def split(token: Token) -> dict[str, int]:
        return {"n": 1}

    wf.flow((left, right * 2) >> review, "merge", rules={"all": ["big"], "any": ["named"]})
    wf.flow(review >> done, "approve", trigger="manual", desc="a person approves")
    return wf


# -- Mermaid --------------------------------------------------------------------------------------------

MERMAID_EDGE = re.compile(r"^\s+(\w+) -->(?:\|(\d+)\|)? (\w+)$")


def mermaid_edges(text: str) -> set[tuple[str, str, int]]:
    edges = set()
    for line in text.splitlines():
        m = MERMAID_EDGE.match(line)
        if m:
            edges.add((m.group(1), m.group(3), int(m.group(2) or 1)))
    return edges


EXPECTED_EDGES = {
    ("p_draft", "t_split", 1),
    ("t_split", "p_left", 1),
    ("t_split", "p_right", 1),
    ("p_left", "t_merge", 1),
    ("p_right", "t_merge", 2),
    ("t_merge", "p_review", 1),
    ("p_review", "t_approve", 1),
    ("t_approve", "p_done", 1),
}


def test_mermaid_has_every_place_transition_and_arc_with_weights() -> None:
    text = review_flow().to_mermaid()
    assert text.startswith("flowchart LR\n")
    assert mermaid_edges(text) == EXPECTED_EDGES
    for place in ("draft", "left", "right", "review", "done"):
        assert f"p_{place}" in text
    for transition in ("split", "merge", "approve"):
        assert f't_{transition}["{transition}' in text


def test_mermaid_marks_the_initial_place_review_places_and_manual_transitions() -> None:
    text = review_flow().to_mermaid()
    assert 'p_draft(["draft"])' in text  # initial: stadium shape
    assert 'p_review[/"review"/]' in text  # review queue: its own shape
    assert 'p_left("left")' in text
    assert "approve ✋" in text
    assert "split ✋" not in text


def test_mermaid_with_counts_labels_marked_places_only() -> None:
    wf = review_flow()
    text = wf.to_mermaid({"draft": 2, "review": 5, "left": 0})
    assert '"draft (2)"' in text
    assert '"review (5)"' in text
    assert '"left"' in text and "left (0)" not in text
    assert "(2)" not in wf.to_mermaid()


# -- DOT ------------------------------------------------------------------------------------------------

DOT_EDGE = re.compile(r'^\s+"(\w+)" -> "(\w+)"(?: \[label="(\d+)"\])?;$')


def dot_edges(text: str) -> set[tuple[str, str, int]]:
    edges = set()
    for line in text.splitlines():
        m = DOT_EDGE.match(line)
        if m:
            edges.add((m.group(1), m.group(2), int(m.group(3) or 1)))
    return edges


def test_dot_has_every_arc_with_weights() -> None:
    text = review_flow().to_dot()
    assert text.startswith('digraph "review_flow" {')
    assert text.rstrip().endswith("}")
    assert dot_edges(text) == EXPECTED_EDGES


def test_dot_marks_initial_final_and_manual() -> None:
    text = review_flow().to_dot()
    assert '"p_draft" [label="draft", shape=circle, style="bold"];' in text
    assert '"p_done" [label="done", shape=doublecircle];' in text
    assert '"p_left" [label="left", shape=circle];' in text
    assert '"t_approve" [label="approve", shape=box, style="dashed"];' in text
    assert '"t_split" [label="split", shape=box];' in text


def test_dot_with_counts() -> None:
    text = review_flow().to_dot({"done": 7})
    assert 'label="done (7)"' in text
    assert 'label="draft"' in text


# -- spec -----------------------------------------------------------------------------------------------


def test_spec_is_a_pydantic_model_that_round_trips_through_json() -> None:
    spec = review_flow().spec()
    assert isinstance(spec, WorkflowSpec)
    back = WorkflowSpec.model_validate_json(spec.model_dump_json())
    assert back == spec
    assert back.model_dump() == spec.model_dump()


def test_spec_describes_places() -> None:
    spec = review_flow().spec()
    assert spec.name == "review_flow"
    assert spec.desc == "demo"
    flags = {p.name: (p.initial, p.final, p.review) for p in spec.places}
    assert flags == {
        "draft": (True, False, False),
        "left": (False, False, False),
        "right": (False, False, False),
        "review": (False, False, True),
        "done": (False, True, False),
    }
    assert [p.name for p in spec.places] == ["draft", "left", "right", "review", "done"]


def test_spec_describes_transitions_by_name() -> None:
    spec = review_flow().spec()
    by_name = {t.name: t for t in spec.transitions}
    assert list(by_name) == ["split", "merge", "approve"]
    split, merge, approve = by_name["split"], by_name["merge"], by_name["approve"]
    assert [(a.place, a.weight) for a in merge.inputs] == [("left", 1), ("right", 2)]
    assert [(a.place, a.weight) for a in split.outputs] == [("left", 1), ("right", 1)]
    assert split.validations == {"all": ["name"]}
    assert merge.rules == {"all": ["big"], "any": ["named"]}
    assert split.action is not None and split.action.endswith("review_flow.<locals>.split")
    assert merge.action is None
    assert split.retry == RetryPolicy(max_attempts=3)
    assert split.timeout == 2.5
    assert (approve.trigger, approve.desc) == ("manual", "a person approves")
    assert split.trigger == "auto"


def test_spec_lists_the_rules_with_their_expressions() -> None:
    spec = review_flow().spec()
    rules = {r.name: r for r in spec.rules}
    assert rules["big"].expression == "n >= 10"
    assert rules["big"].desc == "large enough"
    assert rules["named"].expression is None


def test_spec_of_a_workflow_with_a_token_model_carries_its_json_schema() -> None:
    from pydantic import BaseModel

    class Order(BaseModel):
        amount: int
        note: str = ""

    wf = Workflow("typed", token_model=Order)
    a, b = wf.states("a", "b")
    wf.flow(a >> b)
    spec = wf.spec()
    assert spec.token_model is not None
    assert spec.token_model["required"] == ["amount"]
    assert WorkflowSpec.model_validate_json(spec.model_dump_json()) == spec
