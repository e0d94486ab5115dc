"""Policies: ``{"all": [...], "any": [...]}`` resolved against a rule set, every failing rule reported."""

from __future__ import annotations

from typing import Any

import pytest

from circuit_breaker import Rule, RuleSet, Token
from circuit_breaker.errors import DefinitionError
from circuit_breaker.rules import presence
from circuit_breaker.rules._policy import Policy, ResolvedPolicy


def tok(**data: Any) -> Token:
    return Token(data=data)


RULES = RuleSet(
    {
        "big": "n >= 10",
        "even": "n % 2 == 0",
        "named": presence("name"),
    }
)


def resolve(value: Any, *, fields: bool = False) -> ResolvedPolicy:
    problems: list[str] = []
    resolved = Policy.of(value).resolve(RULES, fields=fields, problems=problems, where="t")
    assert problems == []
    return resolved


# -- Policy.of ------------------------------------------------------------------------------------------


def test_none_and_empty_policies_are_falsy() -> None:
    assert not Policy.of(None)
    assert not Policy.of({})
    assert not Policy.of([])
    assert not resolve(None)
    assert resolve(None).evaluate(tok()).valid


def test_a_list_or_a_single_item_means_all() -> None:
    assert Policy.of(["a", "b"]) == Policy(all=("a", "b"))
    assert Policy.of("a") == Policy(all=("a",))
    assert Policy.of({"any": "a"}) == Policy(any=("a",))


def test_a_policy_is_passed_through() -> None:
    policy = Policy(all=("a",))
    assert Policy.of(policy) is policy


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(DefinitionError, match="every"):
        Policy.of({"every": ["a"]})


def test_a_group_that_is_not_a_list_is_refused() -> None:
    with pytest.raises(DefinitionError):
        Policy.of({"all": 42})


# -- resolve --------------------------------------------------------------------------------------------


def test_unknown_rule_names_are_all_collected_with_where() -> None:
    problems: list[str] = []
    resolved = Policy.of({"all": ["big", "nope1"], "any": ["nope2"]}).resolve(
        RULES, fields=False, problems=problems, where="transition 'go'"
    )
    assert problems == ["transition 'go': unknown rule 'nope1'", "transition 'go': unknown rule 'nope2'"]
    assert [r.name for r in resolved.all] == ["big"]


def test_without_a_rule_set_every_name_is_unknown() -> None:
    problems: list[str] = []
    Policy.of(["big"]).resolve(None, fields=False, problems=problems, where="w")
    assert problems == ["w: unknown rule 'big'"]


def test_in_a_validation_policy_names_are_required_fields() -> None:
    resolved = resolve({"all": ["input_file", "owner"]}, fields=True)
    result = resolved.evaluate(tok(owner="me"))
    assert not result.valid
    assert len(result.errors) == 1
    assert "input_file" in result.errors[0]


def test_rules_and_callables_can_be_given_directly() -> None:
    resolved = resolve([Rule.from_expression("small", "n < 5"), lambda t: t.data["n"] > 0])
    assert resolved.evaluate(tok(n=3)).valid
    assert not resolved.evaluate(tok(n=7)).valid


def test_names_gives_the_serialisable_form() -> None:
    def positive(token: Token) -> bool:
        return True

    policy = Policy.of({"all": ["big", positive], "any": [presence("x")]})
    assert policy.names() == {"all": ["big", "positive"], "any": ["presence(x)"]}
    assert Policy.of(None).names() == {}


# -- evaluate -------------------------------------------------------------------------------------------


def test_all_passes_only_when_every_rule_passes_and_reports_every_failure() -> None:
    policy = resolve({"all": ["big", "even", "named"]})
    assert policy.evaluate(tok(n=12, name="x")).valid
    result = policy.evaluate(tok(n=3))
    assert not result.valid
    assert len(result.errors) == 3
    assert "'big'" in result.errors[0]
    assert "'even'" in result.errors[1]
    assert "name" in result.errors[2]


def test_any_passes_when_one_rule_passes() -> None:
    policy = resolve({"any": ["big", "even"]})
    assert policy.evaluate(tok(n=3 * 4)).valid
    assert policy.evaluate(tok(n=11)).valid
    assert policy.evaluate(tok(n=2)).valid


def test_any_fails_listing_every_rule_when_none_passes() -> None:
    result = resolve({"any": ["big", "named"]}).evaluate(tok(n=1))
    assert not result.valid
    assert len(result.errors) == 1
    assert "any" in result.errors[0]
    assert "'big'" in result.errors[0]
    assert "name" in result.errors[0]


def test_all_and_any_together_report_both_groups() -> None:
    policy = resolve({"all": ["named"], "any": ["big", "even"]})
    assert policy.evaluate(tok(n=4, name="x")).valid
    assert not policy.evaluate(tok(n=4)).valid
    assert not policy.evaluate(tok(n=3, name="x")).valid
    result = policy.evaluate(tok(n=3))
    assert len(result.errors) == 2
