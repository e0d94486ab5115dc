"""rule-engine expressions: compiled once, errors at definition, failures (not crashes) at evaluation, and no
way to reach Python attributes."""

from __future__ import annotations

from typing import Any

import pytest

from circuit_breaker import Rule, RuleSet, Token
from circuit_breaker.errors import RuleDefinitionError
from circuit_breaker.rules._expression import MAX_EXPRESSION_LENGTH, compile_expression


def evaluate(expression: str, **data: Any) -> Any:
    return Rule.from_expression("r", expression).evaluate(Token(data=data))


def expression_of_length(n: int) -> str:
    text = "name == '" + "a" * (n - len("name == ''")) + "'"
    assert len(text) == n
    return text


# -- compilation and caching ----------------------------------------------------------------------------


def test_the_same_text_gives_the_same_compiled_object() -> None:
    assert compile_expression("quality_score >= 0.8") is compile_expression("quality_score >= 0.8")
    assert compile_expression("quality_score >= 0.8") is not compile_expression("quality_score >= 0.9")


def test_an_expression_is_compiled_once_however_many_rules_use_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import rule_engine

    built: list[str] = []
    real = rule_engine.Rule

    def counting(text: str, *args: Any, **kwargs: Any) -> Any:
        built.append(text)
        return real(text, *args, **kwargs)

    monkeypatch.setattr(rule_engine, "Rule", counting)
    text = "cache_probe_field_8d1f > 41"  # unique to this test, so nothing has compiled it before
    rules = RuleSet()
    rules.add("one", text)
    rules.add("two", text)
    Rule.from_expression("three", text)
    assert built == [text]
    assert rules.evaluate("two", Token(data={"cache_probe_field_8d1f": 42})).valid


def test_a_syntax_error_is_refused_at_definition_naming_the_rule() -> None:
    with pytest.raises(RuleDefinitionError, match="score >") as info:
        Rule.from_expression("bad", "score >")
    assert info.value.rule == "bad"
    assert "bad" in str(info.value)


def test_an_expression_at_the_length_cap_is_accepted() -> None:
    assert MAX_EXPRESSION_LENGTH == 2000
    text = expression_of_length(2000)
    assert Rule.from_expression("long", text).evaluate(Token(data={"name": "a" * 1990})).valid


def test_an_expression_over_the_length_cap_is_refused() -> None:
    with pytest.raises(RuleDefinitionError, match="2000"):
        Rule.from_expression("too_long", expression_of_length(2001))
    with pytest.raises(RuleDefinitionError):
        compile_expression(expression_of_length(2001))


# -- evaluation -----------------------------------------------------------------------------------------


def test_an_expression_passes_and_fails_on_token_data() -> None:
    expr = "quality_score >= 0.8 and status != 'error'"
    assert evaluate(expr, quality_score=0.9, status="ok").valid
    failed = evaluate(expr, quality_score=0.9, status="error")
    assert not failed.valid
    assert "'r'" in failed.errors[0]
    assert expr in failed.errors[0]


def test_a_missing_field_is_a_failure_naming_the_field() -> None:
    result = evaluate("confidence_score >= 0.9", other=1)
    assert not result.valid
    assert "confidence_score" in result.errors[0]
    assert "missing" in result.errors[0]


@pytest.mark.parametrize(
    ("expression", "data"),
    [
        ("score > 3", {"score": "high"}),
        ("score + 1 > 3", {"score": "high"}),
        ("name.length > 3", {"name": 5}),
        ("items[3] == 1", {"items": [1]}),
    ],
)
def test_type_errors_inside_an_expression_are_failures_not_exceptions(expression: str, data: dict[str, Any]) -> None:
    result = evaluate(expression, **data)
    assert not result.valid
    assert result.errors


def test_rule_engine_attributes_on_its_own_types_work() -> None:
    assert evaluate("name.length == 3", name="abc").valid


@pytest.mark.parametrize(
    "expression",
    [
        "x.__class__",
        "x.__class__ == x.__class__",
        "x.__class__.__name__ == 'str'",
        "x.__doc__ != null",
        "x.upper() == 'S'",
    ],
)
def test_python_attributes_cannot_be_reached(expression: str) -> None:
    try:
        rule = Rule.from_expression("sneaky", expression)
    except RuleDefinitionError:
        return  # refused at definition: fine
    result = rule.evaluate(Token(data={"x": "s"}))
    assert not result.valid


def test_attributes_of_python_objects_in_the_data_are_never_read() -> None:
    read: list[str] = []

    class Secretive:
        def __getattr__(self, name: str) -> str:
            read.append(name)
            return "leak"

        secret = "leak"

    result = evaluate("obj.secret == 'leak'", obj=Secretive())
    assert not result.valid
    assert read == []
