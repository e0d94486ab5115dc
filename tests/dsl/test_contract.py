"""The issue's DSL contract, written exactly as a user writes it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from circuit_breaker import Engine, Place, RuleSet, Token, Transition, Workflow
from circuit_breaker.errors import UnknownRuleError
from circuit_breaker.rules import json_schema, length, matches, numericality, one_of, presence


def build(*, define_needs_review: bool = True) -> tuple[Workflow, SimpleNamespace]:
    rules = RuleSet()
    rules.add("high_confidence", "confidence_score >= 0.9", desc="the model is confident")
    rules.add("has_output", presence("processed_output"))
    rules.add("known_kind", one_of("kind", ["csv", "json"]))
    rules.add("sane_score", numericality("confidence_score", greater_than_or_equal_to=0, less_than_or_equal_to=1))
    rules.add("csv_name", matches("input_file", r"\.csv$"))
    rules.add("short_name", length("input_file", max=64))
    rules.add("meta_ok", json_schema("meta", {"type": "object"}))

    @rules.rule(desc="quality ok")
    def meets_quality(token: Token) -> bool:
        return token.data.get("quality_score", 0) >= 0.8

    if define_needs_review:
        rules.add("needs_review", "confidence_score < 0.9", desc="a person should look")

    wf = Workflow("data_pipeline", rules=rules)
    raw, processed, analyzed, review, done = wf.states("raw", "processed", "analyzed", "review", "done")

    @wf.flow(raw >> processed, "process", validations={"all": ["input_file"]}, rules={"all": ["has_output"]})
    async def process(token: Token) -> dict[str, str]:
        return {"processed_output": "..."}

    analyze = wf.flow(processed >> analyzed).transition("analyze").policy(rules={"all": ["meets_quality"]})
    complete = wf.flow(analyzed >> done, "complete", rules={"all": ["high_confidence"]})
    request_review = wf.flow(analyzed >> review, "request_review", rules={"any": ["needs_review"]})
    approve = wf.flow(review >> done, "approve", trigger="manual")
    return wf, SimpleNamespace(
        places=(raw, processed, analyzed, review, done),
        process=process,
        meets_quality=meets_quality,
        analyze=analyze,
        complete=complete,
        request_review=request_review,
        approve=approve,
    )


def test_states_returns_place_objects_and_the_first_is_initial() -> None:
    wf, parts = build()
    places = parts.places
    assert all(isinstance(p, Place) for p in places)
    assert [p.name for p in places] == ["raw", "processed", "analyzed", "review", "done"]
    assert wf.initial_place is places[0]
    assert wf.places == list(places)
    assert wf.place("review") is places[3]
    assert all(p.workflow is wf for p in places)


def test_the_decorated_action_stays_a_callable_function() -> None:
    _, parts = build()
    process = parts.process
    assert asyncio.iscoroutinefunction(process)
    assert asyncio.run(process(Token(data={}))) == {"processed_output": "..."}
    assert parts.meets_quality(Token(data={"quality_score": 0.9})) is True


def test_flow_returns_a_transition_and_chaining_returns_the_same_transition() -> None:
    wf, parts = build()
    analyze = parts.analyze
    assert isinstance(analyze, Transition)
    assert analyze.name == "analyze"
    assert wf.transition("analyze") is analyze
    assert analyze.rules.names() == {"all": ["meets_quality"]}
    approve = parts.approve
    assert approve.is_manual
    assert not parts.complete.is_manual


def test_the_workflow_compiles_with_every_transition_in_declaration_order() -> None:
    wf, _ = build()
    cw = wf.compile()
    assert list(cw.transitions) == ["process", "analyze", "complete", "request_review", "approve"]
    assert cw.initial_place == "raw"
    assert cw.final_places == frozenset({"done"})
    assert cw.transitions["process"].is_async
    assert cw.transitions["approve"].is_manual
    assert wf.problems() == []


def test_the_workflow_registers_with_an_engine() -> None:
    wf, _ = build()
    engine = Engine()
    compiled = engine.register(wf)
    assert "data_pipeline" in engine.workflows
    assert compiled.name == "data_pipeline"


def test_an_undefined_rule_stops_compile_naming_rule_and_transition() -> None:
    wf, _ = build(define_needs_review=False)
    with pytest.raises(UnknownRuleError) as info:
        wf.compile()
    assert info.value.rule == "needs_review"
    assert info.value.transition == "request_review"
    assert info.value.workflow == "data_pipeline"
    assert "needs_review" in str(info.value)
    assert "request_review" in str(info.value)


def test_an_undefined_rule_stops_registration() -> None:
    wf, _ = build(define_needs_review=False)
    engine = Engine()
    with pytest.raises(UnknownRuleError, match="needs_review"):
        engine.register(wf)
    assert engine.workflows == []


def test_defining_the_missing_rule_afterwards_lets_it_compile() -> None:
    wf, _ = build(define_needs_review=False)
    with pytest.raises(UnknownRuleError):
        wf.compile()
    wf.rules.add("needs_review", "confidence_score < 0.9")
    assert "request_review" in wf.compile().transitions


def test_fork_and_join_flows() -> None:
    wf = Workflow("forky")
    a, b, c, d = wf.states("a", "b", "c", "d")
    fork = wf.flow(a >> (b, c), "fork")
    join = wf.flow((b, c) >> d, "join")
    assert [p.name for p, _ in fork.outputs] == ["b", "c"]
    assert [p.name for p, _ in join.inputs] == ["b", "c"]
    cw = wf.compile()
    assert cw.transitions["fork"].output_places == ("b", "c")
    assert cw.transitions["join"].input_places == ("b", "c")
    assert wf.problems() == []


def test_a_run_through_the_contract_workflow_by_hand() -> None:
    wf, _ = build()
    t = wf.add_token(Token(data={"input_file": "in.csv", "quality_score": 0.9, "confidence_score": 0.95}))
    t = wf.fire(t, "process")
    assert (t.place, t.data["processed_output"]) == ("processed", "...")
    t = wf.fire(t, "analyze")
    t = wf.fire(t, "complete")
    assert t.place == "done"
    assert [e.transition for e in t.history] == [None, "process", "analyze", "complete"]
    assert [tok.place for tok in wf.tokens] == ["done"]
