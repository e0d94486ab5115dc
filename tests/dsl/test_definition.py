"""Workflow definition: default names, weights, policies, actions, and every definition error naming the culprit."""

from __future__ import annotations

from typing import Any

import pytest

from circuit_breaker import Engine, RuleSet, Token, Workflow
from circuit_breaker.errors import (
    DefinitionError,
    DuplicateNameError,
    ForeignPlaceError,
    UnknownPlaceError,
    UnknownRuleError,
    UnknownTransitionError,
)


def abc(name: str = "w", rules: RuleSet | None = None) -> tuple[Workflow, Any, Any, Any]:
    wf = Workflow(name, rules=rules)
    a, b, c = wf.states("a", "b", "c")
    return wf, a, b, c


# -- names ----------------------------------------------------------------------------------------------


def test_default_transition_name_is_from_to() -> None:
    wf, a, b, _ = abc()
    assert wf.flow(a >> b).name == "a_to_b"


def test_default_names_of_multi_place_flows_join_the_place_names() -> None:
    wf = Workflow("w")
    a, b, c, d = wf.states("a", "b", "c", "d")
    assert wf.flow(a >> (b, c)).name == "a_to_b_c"
    assert wf.flow((b, c) >> d).name == "b_c_to_d"
    assert wf.flow(a * 2 >> d).name == "a_to_d"


def test_transition_renames_and_keeps_the_rest() -> None:
    wf, a, b, _ = abc()
    t = wf.flow(a >> b, validations=["x"])
    assert t.transition("submit") is t
    assert t.name == "submit"
    assert list(wf.compile().transitions) == ["submit"]
    assert wf.compile().transitions["submit"].validations


def test_renaming_after_compile_is_seen_by_the_next_compile() -> None:
    wf, a, b, _ = abc()
    t = wf.flow(a >> b, "first")
    assert list(wf.compile().transitions) == ["first"]
    t.transition("second")
    assert list(wf.compile().transitions) == ["second"]


@pytest.mark.parametrize("bad", ["a.b", "a b", "a*", "a>", "", " a", "a\t", "a/b", None, 3])
def test_invalid_workflow_names_are_refused(bad: Any) -> None:
    with pytest.raises(DefinitionError, match="workflow name"):
        Workflow(bad)


@pytest.mark.parametrize("bad", ["in.review", "in review", "*", ">", "", "a\nb", "review\n"])
def test_invalid_place_names_are_refused_naming_them(bad: str) -> None:
    wf = Workflow("w")
    with pytest.raises(DefinitionError, match="place name") as info:
        wf.states("ok", bad)
    assert repr(bad) in str(info.value)


def test_states_is_all_or_nothing_when_a_name_is_invalid() -> None:
    # Like duplicates and unknown review places, a bad name must not leave earlier names declared,
    # or correcting the typo and calling states() again fails with a duplicate.
    wf = Workflow("w")
    with pytest.raises(DefinitionError):
        wf.states("draft", "in review")
    assert wf.places == []
    draft, review = wf.states("draft", "in_review")
    assert wf.initial_place is draft


@pytest.mark.parametrize("bad", ["go.now", "go now", "go*", "go>", "go\n"])
def test_invalid_transition_names_are_refused(bad: str) -> None:
    wf, a, b, _ = abc()
    with pytest.raises(DefinitionError, match="transition name"):
        wf.flow(a >> b, bad)
    with pytest.raises(DefinitionError, match="transition name"):
        wf.flow(a >> b).transition(bad)


def test_names_may_use_letters_digits_underscores_and_dashes() -> None:
    wf = Workflow("My-flow_2")
    a, b = wf.states("in-review", "Done_2")
    assert wf.flow(a >> b, "send-back_1").name == "send-back_1"
    wf.compile()


# -- places ---------------------------------------------------------------------------------------------


def test_an_unknown_place_is_refused_naming_it() -> None:
    wf, *_ = abc()
    with pytest.raises(UnknownPlaceError, match="nope") as info:
        wf.place("nope")
    assert info.value.place == "nope"
    assert info.value.workflow == "w"


def test_a_duplicate_place_in_one_states_call_is_refused_immediately() -> None:
    wf = Workflow("w")
    with pytest.raises(DuplicateNameError, match="draft") as info:
        wf.states("draft", "review", "draft")
    assert info.value.name == "draft"
    assert wf.places == []


def test_a_place_declared_again_later_is_refused() -> None:
    wf, *_ = abc()
    with pytest.raises(DuplicateNameError, match="'b'"):
        wf.states("x", "b")
    assert [p.name for p in wf.places] == ["a", "b", "c"]  # "x" was not declared either
    with pytest.raises(DuplicateNameError, match="'a'"):
        wf.state("a")


def test_a_review_place_must_be_one_of_the_states() -> None:
    wf = Workflow("w")
    with pytest.raises(UnknownPlaceError, match="reviw") as info:
        wf.states("draft", "review", "done", review=["reviw"])
    assert info.value.place == "reviw"


def test_review_places_are_marked() -> None:
    wf = Workflow("w")
    draft, review, done = wf.states("draft", "review", "done", review=["review"])
    assert (draft.review, review.review, done.review) == (False, True, False)
    wf.flow(draft >> review)
    wf.flow(review >> done)
    assert wf.compile().review_places == frozenset({"review"})


def test_states_needs_a_name() -> None:
    with pytest.raises(DefinitionError):
        Workflow("w").states()


def test_a_workflow_without_states_does_not_compile() -> None:
    with pytest.raises(DefinitionError, match="no states"):
        Workflow("empty").compile()


def test_a_flow_to_a_place_of_another_workflow_is_refused() -> None:
    wf, a, _, _ = abc("mine")
    other = Workflow("theirs")
    (x,) = other.states("x")
    for flow in (a >> x, x >> a, (a, x) >> a, a >> (a, x)):
        with pytest.raises(ForeignPlaceError, match="theirs") as info:
            wf.flow(flow)
        assert info.value.place == "x"
        assert info.value.workflow == "mine"
    assert wf.transitions == []


def test_a_flow_must_connect_places() -> None:
    wf, a, _, _ = abc()
    with pytest.raises(DefinitionError):
        wf.flow("a >> b")  # type: ignore[arg-type]
    with pytest.raises(DefinitionError):
        a >> "b"
    with pytest.raises(DefinitionError):
        a >> ()


# -- weights --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weight", [0, -1, 1.5, True, "2"])
def test_bad_weights_are_refused_naming_the_place(weight: Any) -> None:
    wf, a, b, _ = abc()
    with pytest.raises(DefinitionError, match="'a'"):
        wf.flow(a * weight >> b)


def test_weights_on_either_side_and_either_operand_order() -> None:
    wf, a, b, c = abc()
    t = wf.flow(a * 2 >> (b, 3 * c), "batch")
    assert [(p.name, w) for p, w in t.inputs] == [("a", 2)]
    assert [(p.name, w) for p, w in t.outputs] == [("b", 1), ("c", 3)]
    net_t = wf.compile().net.transition("batch")
    assert [(arc.place, arc.weight) for arc in net_t.inputs] == [("a", 2)]
    assert [(arc.place, arc.weight) for arc in net_t.outputs] == [("b", 1), ("c", 3)]


# -- triggers, actions, policies ------------------------------------------------------------------------


@pytest.mark.parametrize("trigger", ["sometimes", "Manual", "", None])
def test_an_invalid_trigger_is_refused_naming_the_transition(trigger: Any) -> None:
    wf, a, b, _ = abc()
    with pytest.raises(DefinitionError, match="go") as info:
        wf.flow(a >> b, "go", trigger=trigger)
    assert "trigger" in str(info.value)
    assert wf.transitions == []


def test_manual_trigger() -> None:
    wf, a, b, c = abc()
    assert wf.flow(a >> b, trigger="manual").is_manual
    t = wf.flow(b >> c)
    assert not t.is_manual
    assert t.manual() is t and t.is_manual


@pytest.mark.parametrize("action", [42, "module:function", None, object()])
def test_a_non_callable_action_is_refused(action: Any) -> None:
    wf, a, b, _ = abc()
    with pytest.raises(DefinitionError, match="go"):
        wf.flow(a >> b, "go").action(action)


def test_a_non_callable_action_given_to_flow_is_refused() -> None:
    wf, a, b, _ = abc()
    with pytest.raises(DefinitionError, match="callable"):
        wf.flow(a >> b, "go", action=42)  # type: ignore[arg-type]


def test_an_action_that_takes_no_argument_is_refused_naming_it() -> None:
    wf, a, b, _ = abc()

    def no_args() -> dict[str, int]:
        return {}

    with pytest.raises(DefinitionError, match="no_args"):
        wf.flow(a >> b, "go", action=no_args)
    with pytest.raises(DefinitionError, match="no_args"):
        wf.flow(a >> b, "go2")(no_args)


def test_an_action_that_needs_two_arguments_is_refused() -> None:
    wf, a, b, _ = abc()
    with pytest.raises(DefinitionError, match="one argument"):
        wf.flow(a >> b, "go").action(lambda token, extra: None)


def test_actions_with_optional_extras_are_accepted() -> None:
    wf, a, b, _ = abc()

    async def act(token: Token, retries: int = 0, *rest: Any, **kw: Any) -> None:
        return None

    t = wf.flow(a >> b, "go").action(act)
    assert t.handler is act
    assert wf.compile().transitions["go"].is_async


def test_a_callable_object_is_an_action() -> None:
    wf, a, b, _ = abc()

    class Doubler:
        async def __call__(self, token: Token) -> dict[str, int]:
            return {"n": token.data["n"] * 2}

    wf.flow(a >> b, "go", action=Doubler())
    assert wf.compile().transitions["go"].is_async


def test_policy_chaining_sets_validations_and_rules() -> None:
    rules = RuleSet({"big": "n > 10"})
    wf, a, b, _ = abc(rules=rules)
    t = wf.flow(a >> b, "go").policy(validations={"all": ["n"]}, rules={"any": ["big"]})
    assert t.validations.names() == {"all": ["n"]}
    assert t.rules.names() == {"any": ["big"]}
    ct = wf.compile().transitions["go"]
    assert not ct.validations.evaluate(Token(data={})).valid
    assert ct.rules.evaluate(Token(data={"n": 11})).valid


def test_the_chainable_methods_all_return_the_same_transition() -> None:
    rules = RuleSet({"big": "n > 10"})
    wf, a, b, _ = abc(rules=rules)

    def act(token: Token) -> dict[str, int]:
        return {"n": 11}

    t = wf.flow(a >> b)
    assert t.transition("grow").policy(validations=["n"], rules=["big"]).action(act) is t
    assert (t.name, t.handler) == ("grow", act)
    ct = wf.compile().transitions["grow"]
    assert ct.handler is act
    assert ct.rules.evaluate(Token(data={"n": 11})).valid


def test_a_policy_with_an_unknown_key_is_refused() -> None:
    wf, a, b, _ = abc()
    with pytest.raises(DefinitionError, match="every"):
        wf.flow(a >> b, rules={"every": ["x"]})


# -- compile-time checks --------------------------------------------------------------------------------


def test_a_duplicate_transition_name_is_refused_at_compile() -> None:
    wf, a, b, c = abc()
    wf.flow(a >> b, "step")
    wf.flow(b >> c, "step")  # allowed while defining...
    with pytest.raises(DuplicateNameError, match="step") as info:
        wf.compile()  # ...refused when built
    assert info.value.name == "step"
    with pytest.raises(DuplicateNameError):
        Engine().register(wf)


def test_two_flows_with_the_same_default_name_collide() -> None:
    wf, a, b, _ = abc()
    wf.flow(a >> b)
    wf.flow(a >> b)
    with pytest.raises(DuplicateNameError, match="a_to_b"):
        wf.compile()


def test_every_unknown_rule_is_listed_when_there_are_several() -> None:
    wf, a, b, c = abc(rules=RuleSet({"known": "x > 1"}))
    wf.flow(a >> b, "one", rules={"all": ["known", "missing_one"]})
    wf.flow(b >> c, "two", rules={"any": ["missing_two"]}, guards=["missing_three"])
    with pytest.raises(UnknownRuleError) as info:
        wf.compile()
    err = info.value
    assert (err.rule, err.transition) == ("missing_one", "one")
    assert len(err.problems) == 3
    message = str(err)
    for name in ("missing_one", "missing_two", "missing_three", "'one'", "'two'"):
        assert name in message
    assert any("missing_two" in p and "'two'" in p for p in err.problems)


def test_unknown_rules_are_reported_by_problems_as_definition_errors() -> None:
    wf, a, b, c = abc()
    wf.flow(a >> b, "one", rules=["missing"])
    wf.flow(b >> c)
    problems = wf.problems()
    assert [(p.kind, p.severity) for p in problems] == [("definition", "error")]
    assert "missing" in problems[0].message
    assert problems[0].to_dict()["kind"] == "definition"


def test_a_workflow_error_place_must_be_a_state() -> None:
    wf = Workflow("w", error_place="failed")
    a, b = wf.states("a", "b")
    wf.flow(a >> b)
    with pytest.raises(UnknownPlaceError, match="failed"):
        wf.compile()


def test_unknown_transition_lookup_names_what_exists() -> None:
    wf, a, b, _ = abc()
    wf.flow(a >> b, "go")
    with pytest.raises(UnknownTransitionError, match="go") as info:
        wf.transition("stop")
    assert info.value.transition == "stop"


def test_compile_is_cached_until_the_definition_changes() -> None:
    wf, a, b, c = abc()
    wf.flow(a >> b)
    first = wf.compile()
    assert wf.compile() is first
    wf.flow(b >> c)
    second = wf.compile()
    assert second is not first
    assert list(second.transitions) == ["a_to_b", "b_to_c"]


def test_register_refuses_another_workflow_of_the_same_name() -> None:
    engine = Engine()
    wf1, a, b, _ = abc("same")
    wf1.flow(a >> b)
    wf2, a2, b2, _ = abc("same")
    wf2.flow(a2 >> b2)
    engine.register(wf1)
    engine.register(wf1)  # registering the same definition again is fine
    with pytest.raises(DuplicateNameError, match="same"):
        engine.register(wf2)


# -- structural problems --------------------------------------------------------------------------------


def test_problems_is_empty_for_a_sound_workflow() -> None:
    wf, a, b, c = abc()
    wf.flow(a >> b)
    wf.flow(b >> c)
    assert wf.problems() == []


def test_problems_finds_unreachable_places_traps_and_dead_transitions() -> None:
    wf = Workflow("w")
    start, loop, end, orphan, after = wf.states("start", "loop", "end", "orphan", "after")
    wf.flow(start >> end, "finish")
    wf.flow(start >> loop, "enter")
    wf.flow(loop >> loop, "spin")
    wf.flow(orphan >> after, "never")
    found = {(p.kind, p.element) for p in wf.problems()}
    assert found == {
        ("unreachable_place", "orphan"),
        ("unreachable_place", "after"),
        ("no_path_to_final", "loop"),
        ("dead_transition", "never"),
    }
    # structural findings do not stop registration: they are warnings, unlike definition errors
    assert {p.severity for p in wf.problems()} == {"warning"}
    messages = {p.element: p.message for p in wf.problems()}
    assert "orphan" in messages["orphan"] and "start" in messages["orphan"]
    assert "orphan" in messages["never"]


def test_problems_does_not_stop_compile() -> None:
    wf = Workflow("w")
    a, b, orphan = wf.states("a", "b", "orphan")
    wf.flow(a >> b)
    assert wf.problems()
    assert wf.compile().initial_place == "a"
