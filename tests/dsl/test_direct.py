"""Seed-style direct use: ``wf.add_token`` and ``wf.fire`` fire exactly one transition, synchronously."""

from __future__ import annotations

from typing import Any

import pytest

from circuit_breaker import RuleSet, Token, Workflow
from circuit_breaker.errors import (
    ActionError,
    TokenDataError,
    TransitionNotEnabledError,
    TransitionRejectedError,
    UnknownPlaceError,
    UnknownTransitionError,
)
from circuit_breaker.rules import presence


def pipeline() -> Workflow:
    rules = RuleSet()
    rules.add("has_output", presence("processed_output"))
    rules.add("high_confidence", "confidence_score >= 0.9")
    wf = Workflow("pipeline", rules=rules)
    raw, processed, done = wf.states("raw", "processed", "done")

    @wf.flow(raw >> processed, "process", validations={"all": ["input_file"]}, rules={"all": ["has_output"]})
    def process(token: Token) -> dict[str, Any]:
        if token.data.get("skip_output"):
            return {}
        return {"processed_output": token.data["input_file"].upper()}

    wf.flow(processed >> done, "complete", rules={"all": ["high_confidence"]})  # automatic, but not fired by hand
    return wf


def places(wf: Workflow) -> list[tuple[str | None, dict[str, Any]]]:
    return sorted(((t.place, t.data) for t in wf.tokens), key=repr)


# -- add_token ------------------------------------------------------------------------------------------


def test_add_token_puts_it_in_the_initial_place_with_a_created_entry() -> None:
    wf = pipeline()
    t = wf.add_token(Token(data={"input_file": "a"}))
    assert t.place == "raw"
    assert [e.kind for e in t.history] == ["created"]
    assert t.history[0].to_places == ("raw",)
    assert wf.tokens == [t]


def test_add_token_keeps_a_named_place_and_refuses_an_unknown_one() -> None:
    wf = pipeline()
    assert wf.add_token(Token(place="processed", data={})).place == "processed"
    with pytest.raises(UnknownPlaceError, match="nowhere"):
        wf.add_token(Token(place="nowhere", data={}))
    assert [t.place for t in wf.tokens] == ["processed"]


def test_add_token_refuses_data_json_cannot_carry() -> None:
    wf = pipeline()
    with pytest.raises(TokenDataError):
        wf.add_token(Token(data={"when": object()}))
    assert wf.tokens == []


# -- fire -----------------------------------------------------------------------------------------------


def test_fire_fires_exactly_that_transition_and_returns_the_new_token() -> None:
    wf = pipeline()
    t = wf.add_token(Token(data={"input_file": "in.csv", "confidence_score": 0.99}))
    new = wf.fire(t, "process")
    assert new.place == "processed"
    assert new.data == {"input_file": "in.csv", "confidence_score": 0.99, "processed_output": "IN.CSV"}
    assert new.id != t.id
    assert new.instance_id == t.instance_id
    # "complete" is automatic and now enabled, but wf.fire does not go on to fire it
    assert wf.tokens == [new]
    assert t.place == "raw"  # the caller's token is a value; it is unchanged


def test_fire_records_the_firing_in_the_history() -> None:
    wf = pipeline()
    t = wf.add_token(Token(data={"input_file": "x"}))
    new = wf.fire(t, "process", actor="alice")
    last = new.history[-1]
    assert (last.kind, last.transition, last.actor) == ("fired", "process", "alice")
    assert (last.from_places, last.to_places) == (("raw",), ("processed",))
    assert len(new.history) == 2


def test_fire_places_a_token_it_has_not_seen_yet() -> None:
    wf = pipeline()
    new = wf.fire(Token(data={"input_file": "x"}), "process")
    assert new.place == "processed"
    assert [t.place for t in wf.tokens] == ["processed"]


def test_fire_runs_an_async_action_when_no_loop_is_running() -> None:
    wf = Workflow("asyncy")
    a, b = wf.states("a", "b")

    @wf.flow(a >> b, "go")
    async def go(token: Token) -> dict[str, int]:
        return {"n": token.data["n"] + 1}

    new = wf.fire(wf.add_token(Token(data={"n": 1})), "go")
    assert new.data == {"n": 2}
    assert new.place == "b"


async def test_fire_with_an_async_action_inside_a_running_loop_fails_cleanly() -> None:
    wf = Workflow("asyncy")
    a, b = wf.states("a", "b")

    @wf.flow(a >> b, "go")
    async def go(token: Token) -> dict[str, int]:
        return {"n": 2}

    t = wf.add_token(Token(data={"n": 1}))
    with pytest.raises(ActionError, match="Engine"):
        wf.fire(t, "go")
    assert wf.tokens == [t]


def test_fire_without_an_action_moves_the_data_unchanged() -> None:
    wf = pipeline()
    t = wf.add_token(Token(place="processed", data={"confidence_score": 0.95}))
    new = wf.fire(t, "complete")
    assert (new.place, new.data) == ("done", {"confidence_score": 0.95})


def test_the_action_sees_the_data_but_cannot_change_the_callers_token() -> None:
    wf = Workflow("mutating")
    a, b = wf.states("a", "b")

    @wf.flow(a >> b, "go")
    def go(token: Token) -> None:
        token.data["sneaky"] = True

    t = wf.add_token(Token(data={"n": 1}))
    wf.fire(t, "go")
    assert t.data == {"n": 1}


# -- fire: errors leave the tokens as they were ---------------------------------------------------------


def test_unknown_transition() -> None:
    wf = pipeline()
    t = wf.add_token(Token(data={"input_file": "x"}))
    with pytest.raises(UnknownTransitionError, match="explode"):
        wf.fire(t, "explode")
    assert wf.tokens == [t]


def test_failing_validations_mean_not_enabled_and_nothing_moves() -> None:
    wf = pipeline()
    t = wf.add_token(Token(data={"other": 1}))
    before = list(wf.tokens)
    with pytest.raises(TransitionNotEnabledError, match="input_file") as info:
        wf.fire(t, "process")
    assert info.value.transition == "process"
    assert info.value.instance_id == t.instance_id
    assert any("input_file" in r for r in info.value.reasons)
    assert wf.tokens == before


def test_a_token_in_the_wrong_place_is_not_enabled_and_nothing_moves() -> None:
    wf = pipeline()
    t = wf.add_token(Token(data={"input_file": "x", "confidence_score": 1.0}))
    with pytest.raises(TransitionNotEnabledError, match="raw") as info:
        wf.fire(t, "complete")
    assert "processed" in str(info.value)
    assert wf.tokens == [t]


def test_failing_rules_after_the_action_reject_and_nothing_moves() -> None:
    wf = pipeline()
    t = wf.add_token(Token(data={"input_file": "x", "skip_output": True}))
    with pytest.raises(TransitionRejectedError, match="processed_output") as info:
        wf.fire(t, "process")
    assert info.value.transition == "process"
    assert any("processed_output" in e for e in info.value.errors)
    assert wf.tokens == [t]


def test_rejection_lists_every_failing_rule() -> None:
    rules = RuleSet({"a_set": presence("a"), "b_set": presence("b")})
    wf = Workflow("strict", rules=rules)
    x, y = wf.states("x", "y")
    wf.flow(x >> y, "go", rules={"all": ["a_set", "b_set"]})
    t = wf.add_token(Token(data={}))
    with pytest.raises(TransitionRejectedError) as info:
        wf.fire(t, "go")
    assert len(info.value.errors) == 2


def test_an_action_that_raises_is_an_action_error_and_nothing_moves() -> None:
    wf = Workflow("flaky")
    a, b = wf.states("a", "b")

    @wf.flow(a >> b, "go")
    def go(token: Token) -> dict[str, Any]:
        raise RuntimeError("disk full")

    t = wf.add_token(Token(data={}))
    with pytest.raises(ActionError, match="disk full") as info:
        wf.fire(t, "go")
    assert info.value.transition == "go"
    assert isinstance(info.value.__cause__, RuntimeError)
    assert wf.tokens == [t]


def test_an_action_returning_something_other_than_a_dict_is_refused() -> None:
    wf = Workflow("odd")
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "go", action=lambda token: ["not", "a", "dict"])
    t = wf.add_token(Token(data={}))
    with pytest.raises(TokenDataError, match="list"):
        wf.fire(t, "go")
    assert wf.tokens == [t]


def test_a_fresh_token_that_cannot_fire_is_not_left_behind() -> None:
    wf = pipeline()
    with pytest.raises(TransitionNotEnabledError):
        wf.fire(Token(data={"other": 1}), "process")
    assert wf.tokens == []


def test_a_consumed_token_cannot_fire_again() -> None:
    wf = pipeline()
    t = wf.add_token(Token(data={"input_file": "x"}))
    wf.fire(t, "process")
    with pytest.raises(TransitionNotEnabledError):
        wf.fire(t, "process")
    assert [tok.place for tok in wf.tokens] == ["processed"]


# -- weights, forks and joins ---------------------------------------------------------------------------


def test_fire_consumes_the_callers_token_even_when_it_is_not_the_oldest() -> None:
    wf = pipeline()
    first = wf.add_token(Token(data={"input_file": "first"}))
    second = wf.add_token(Token(instance_id=first.instance_id, data={"input_file": "second"}))
    new = wf.fire(second, "process")
    assert new.data["processed_output"] == "SECOND"
    assert places(wf) == sorted(
        [("raw", first.data), ("processed", new.data)],
        key=repr,
    )


def test_a_weighted_input_needs_enough_tokens_of_the_instance() -> None:
    wf = Workflow("pairs")
    single, pair = wf.states("single", "pair")
    wf.flow(single * 2 >> pair, "couple")
    one = wf.add_token(Token(data={"a": 1}))
    wf.add_token(Token(data={"b": 2}))  # another instance does not help
    with pytest.raises(TransitionNotEnabledError, match="2"):
        wf.fire(one, "couple")
    wf.add_token(Token(instance_id=one.instance_id, data={"c": 3}))
    new = wf.fire(one, "couple")
    assert new.place == "pair"
    assert new.data == {"a": 1, "c": 3}
    assert sorted(t.place for t in wf.tokens if t.instance_id == one.instance_id) == ["pair"]


def test_a_fork_produces_a_token_in_each_branch() -> None:
    wf = Workflow("forky")
    a, b, c, d = wf.states("a", "b", "c", "d")
    wf.flow(a >> (b, c), "fork")
    wf.flow((b, c) >> d, "join")
    t = wf.add_token(Token(data={"k": 1}))
    first = wf.fire(t, "fork")
    assert first.place == "b"
    mine = [tok for tok in wf.tokens if tok.instance_id == t.instance_id]
    assert sorted(tok.place for tok in mine) == ["b", "c"]  # type: ignore[type-var]
    assert all(tok.data == {"k": 1} for tok in mine)
    assert len({tok.id for tok in mine}) == 2


def test_a_join_combines_tokens_of_the_same_instance_only() -> None:
    wf = Workflow("joiny")
    b, c, d = wf.states("b", "c", "d")

    @wf.flow((b, c) >> d, "join")
    def join(token: Token) -> dict[str, bool]:
        return {"joined": True}

    case = "case-1"
    left = wf.add_token(Token(instance_id=case, place="b", data={"k": "from_b", "x": 1}))
    wf.add_token(Token(instance_id="case-2", place="c", data={"k": "other case"}))
    with pytest.raises(TransitionNotEnabledError, match="'c'"):
        wf.fire(left, "join")
    right = wf.add_token(Token(instance_id=case, place="c", data={"k": "from_c", "y": 2}))
    # fired with the token of the second input: data still merges in input order (b, then c)
    joined = wf.fire(right, "join")
    assert joined.place == "d"
    assert joined.instance_id == case
    assert joined.data == {"k": "from_c", "x": 1, "y": 2, "joined": True}
    assert sorted((t.instance_id, t.place) for t in wf.tokens) == [("case-1", "d"), ("case-2", "c")]


def test_fork_then_join_by_hand() -> None:
    wf = Workflow("roundtrip")
    a, b, c, d = wf.states("a", "b", "c", "d")
    wf.flow(a >> (b, c), "fork")
    wf.flow((b, c) >> d, "join")
    t1 = wf.add_token(Token(data={"n": 1}))
    t2 = wf.add_token(Token(data={"n": 2}))
    wf.fire(t1, "fork")
    wf.fire(t2, "fork")
    in_c = next(t for t in wf.tokens if t.place == "c" and t.instance_id == t2.instance_id)
    done = wf.fire(in_c, "join")
    assert (done.place, done.instance_id, done.data) == ("d", t2.instance_id, {"n": 2})
    left = sorted((t.place, t.instance_id == t1.instance_id) for t in wf.tokens)  # type: ignore[type-var]
    assert left == [("b", True), ("c", True), ("d", False)]
