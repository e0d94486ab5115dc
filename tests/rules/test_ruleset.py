"""Rules and rule sets: adding by expression, callable or Rule; the decorator; duplicates; callable rules."""

from __future__ import annotations

from typing import Any

import pytest

from circuit_breaker import Rule, RuleResult, RuleSet, Token
from circuit_breaker.errors import DuplicateNameError, RuleDefinitionError
from circuit_breaker.rules import as_rule, presence


def tok(**data: Any) -> Token:
    return Token(data=data)


# -- RuleSet.add ----------------------------------------------------------------------------------------


def test_add_an_expression_with_a_description() -> None:
    rules = RuleSet()
    rule = rules.add("high_confidence", "confidence_score >= 0.9", desc="confident enough")
    assert rule.name == "high_confidence"
    assert rule.desc == "confident enough"
    assert rule.expression == "confidence_score >= 0.9"
    assert rules["high_confidence"] is rule
    assert rules.evaluate("high_confidence", tok(confidence_score=0.95)).valid
    assert not rules.evaluate("high_confidence", tok(confidence_score=0.5)).valid


def test_add_a_helper_rule_under_the_set_name_keeping_its_field_messages() -> None:
    rules = RuleSet()
    helper = presence("processed_output")
    rule = rules.add("has_output", helper)
    assert rule.name == "has_output"
    assert helper.name == "presence(processed_output)"  # the helper itself is not renamed
    result = rule.evaluate(tok())
    assert not result.valid
    assert "processed_output" in result.errors[0]


def test_add_a_callable_takes_its_docstring_as_description() -> None:
    def ready(token: Token) -> bool:
        """The order is ready to ship."""
        return bool(token.data.get("ready"))

    rules = RuleSet()
    rule = rules.add("is_ready", ready)
    assert rule.desc == "The order is ready to ship."
    assert rule.evaluate(tok(ready=True)).valid
    assert not rule.evaluate(tok(ready=False)).valid


def test_rule_set_from_a_dict_and_introspection() -> None:
    rules = RuleSet({"a": "x > 1", "b": presence("y")})
    assert len(rules) == 2
    assert rules.names() == ["a", "b"]
    assert "a" in rules and "zzz" not in rules
    assert [r.name for r in rules] == ["a", "b"]
    assert rules.get("zzz") is None
    with pytest.raises(KeyError):
        rules["zzz"]


def test_duplicate_rule_names_are_refused_naming_the_rule() -> None:
    rules = RuleSet()
    rules.add("checked", "x > 1")
    with pytest.raises(DuplicateNameError, match="checked") as info:
        rules.add("checked", "x > 2")
    assert info.value.name == "checked"
    assert rules["checked"].expression == "x > 1"


def test_update_refuses_duplicates_from_the_other_set() -> None:
    rules = RuleSet({"a": "x > 1"})
    rules.update(RuleSet({"b": "x > 2"}))
    assert rules.names() == ["a", "b"]
    with pytest.raises(DuplicateNameError):
        rules.update(RuleSet({"a": "x > 3"}))


@pytest.mark.parametrize("name", ["", None, 3])
def test_add_refuses_a_bad_rule_name(name: Any) -> None:
    with pytest.raises(RuleDefinitionError):
        RuleSet().add(name, "x > 1")


@pytest.mark.parametrize("value", [42, None, object()])
def test_add_refuses_something_that_is_not_a_rule(value: Any) -> None:
    with pytest.raises(RuleDefinitionError):
        RuleSet().add("r", value)


def test_add_refuses_an_async_callable() -> None:
    async def check(token: Token) -> bool:
        return True

    with pytest.raises(RuleDefinitionError, match="async"):
        RuleSet().add("r", check)


def test_add_refuses_a_bad_expression_naming_the_rule() -> None:
    with pytest.raises(RuleDefinitionError, match="broken") as info:
        RuleSet().add("broken", "x >")
    assert info.value.rule == "broken"


# -- @rules.rule ----------------------------------------------------------------------------------------


def test_rule_decorator_with_desc_names_the_rule_after_the_function() -> None:
    rules = RuleSet()

    @rules.rule(desc="quality ok")
    def meets_quality(token: Token) -> bool:
        return token.data.get("quality_score", 0) >= 0.8

    assert rules.names() == ["meets_quality"]
    assert rules["meets_quality"].desc == "quality ok"
    # the function is returned unchanged and stays callable on its own
    assert meets_quality(tok(quality_score=0.9)) is True
    assert rules.evaluate("meets_quality", tok(quality_score=0.9)).valid
    failed = rules.evaluate("meets_quality", tok(quality_score=0.1))
    assert not failed.valid
    assert "meets_quality" in failed.errors[0]
    assert "quality ok" in failed.errors[0]


def test_bare_rule_decorator() -> None:
    rules = RuleSet()

    @rules.rule
    def positive(token: Token) -> bool:
        return token.data["n"] > 0

    assert callable(positive)
    assert rules.names() == ["positive"]


def test_rule_decorator_with_an_explicit_name() -> None:
    rules = RuleSet()

    @rules.rule(name="is_positive")
    def positive(token: Token) -> bool:
        return token.data["n"] > 0

    assert rules.names() == ["is_positive"]


def test_rule_decorator_refuses_a_duplicate_name() -> None:
    rules = RuleSet()
    rules.add("meets_quality", "quality_score >= 0.8")
    with pytest.raises(DuplicateNameError, match="meets_quality"):

        @rules.rule(desc="again")
        def meets_quality(token: Token) -> bool:
            return True


# -- Rule: callable rules -------------------------------------------------------------------------------


def test_a_callable_rule_that_raises_becomes_a_failure_with_the_message() -> None:
    def strict(token: Token) -> bool:
        raise KeyError("quality_score")

    result = Rule("strict", strict).evaluate(tok())
    assert not result.valid
    assert "strict" in result.errors[0]
    assert "KeyError" in result.errors[0]
    assert "quality_score" in result.errors[0]


def test_a_callable_rule_can_return_a_rule_result_with_its_own_errors() -> None:
    rule = Rule("r", lambda t: RuleResult.fail("amount too high"))
    assert rule.evaluate(tok()).errors == ("amount too high",)


def test_a_failing_rule_result_without_errors_still_names_the_rule() -> None:
    result = Rule("quiet", lambda t: RuleResult(False)).evaluate(tok())
    assert not result.valid
    assert result.errors and "quiet" in result.errors[0]


def test_falsy_return_values_fail_and_truthy_ones_pass() -> None:
    assert not Rule("r", lambda t: None).evaluate(tok()).valid
    assert not Rule("r", lambda t: 0).evaluate(tok()).valid
    assert Rule("r", lambda t: 1).evaluate(tok()).valid


def test_calling_a_rule_evaluates_it() -> None:
    assert Rule("r", lambda t: True)(tok()).valid


def test_rule_needs_exactly_one_of_a_callable_or_an_expression() -> None:
    with pytest.raises(RuleDefinitionError):
        Rule("r")
    with pytest.raises(RuleDefinitionError):
        Rule("r", lambda t: True, expression="x > 1")
    with pytest.raises(RuleDefinitionError):
        Rule("r", "not callable")  # type: ignore[arg-type]


def test_rules_combine_with_and_and_or() -> None:
    a = Rule.from_expression("a", "x > 1")
    b = Rule.from_expression("b", "x < 10")
    both, either = a & b, a | b
    assert both.evaluate(tok(x=5)).valid
    assert not both.evaluate(tok(x=50)).valid
    assert either.evaluate(tok(x=50)).valid
    failed = both.evaluate(tok(x=0, y=1))
    assert "'a'" in failed.errors[0]
    assert not either.evaluate(tok()).valid


def test_as_rule_keeps_a_rule_and_renames_a_copy() -> None:
    rule = presence("x")
    assert as_rule(rule) is rule
    renamed = as_rule(rule, "has_x", "x is there")
    assert (renamed.name, renamed.desc) == ("has_x", "x is there")
    assert rule.name == "presence(x)"
