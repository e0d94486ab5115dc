"""Rule helpers: each passes and fails as documented, names the field in its errors, and refuses bad
arguments with RuleDefinitionError when the rule is built (not when it is evaluated)."""

from __future__ import annotations

from typing import Any

import pytest

from circuit_breaker import Token
from circuit_breaker.errors import RuleDefinitionError
from circuit_breaker.rules import (
    Rule,
    RuleResult,
    all_of,
    any_of,
    custom,
    depends_on,
    json_schema,
    length,
    matches,
    none_of,
    numericality,
    one_of,
    presence,
)


def check(rule: Rule, **data: Any) -> RuleResult:
    return rule.evaluate(Token(data=data))


def only_error(result: RuleResult) -> str:
    assert not result.valid
    assert len(result.errors) == 1, result.errors
    return result.errors[0]


# -- presence -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["x", 0, False, 0.0, [0], {"k": None}])
def test_presence_passes_for_any_non_blank_value_including_falsy_scalars(value: Any) -> None:
    assert check(presence("field"), field=value).valid


def test_presence_fails_when_the_field_is_missing_and_names_it() -> None:
    msg = only_error(check(presence("processed_output"), other=1))
    assert "processed_output" in msg
    assert "required" in msg


@pytest.mark.parametrize("value", [None, "", [], {}])
def test_presence_fails_for_blank_values_and_names_the_field(value: Any) -> None:
    msg = only_error(check(presence("title"), title=value))
    assert "title" in msg
    assert "blank" in msg


def test_presence_walks_dotted_paths_into_nested_objects() -> None:
    rule = presence("customer.email")
    assert check(rule, customer={"email": "a@b.c"}).valid
    assert "customer.email" in only_error(check(rule, customer={"name": "x"}))
    assert not check(rule, customer="not an object").valid


def test_presence_prefers_a_literal_dotted_key_over_the_nested_path() -> None:
    assert check(presence("a.b"), **{"a.b": 1}).valid


@pytest.mark.parametrize("field", ["", None, 3])
def test_presence_refuses_a_bad_field_name(field: Any) -> None:
    with pytest.raises(RuleDefinitionError):
        presence(field)


# -- matches --------------------------------------------------------------------------------------------


def test_matches_uses_search_semantics() -> None:
    rule = matches("code", r"\d")
    assert check(rule, code="ab3c").valid
    assert not check(rule, code="abc").valid


def test_matches_fails_with_a_message_naming_the_field_and_pattern() -> None:
    msg = only_error(check(matches("email", r"^[^@]+@[^@]+$"), email="nope"))
    assert "email" in msg
    assert "^[^@]+@[^@]+$" in msg


def test_matches_uses_the_given_message_verbatim() -> None:
    result = check(matches("email", r"@", message="email looks wrong"), email="nope")
    assert result.errors == ("email looks wrong",)


@pytest.mark.parametrize("data", [{}, {"email": None}, {"email": 42}, {"email": ["a@b"]}])
def test_matches_fails_for_missing_or_non_string_values(data: dict[str, Any]) -> None:
    assert "email" in only_error(check(matches("email", r"@"), **data))


def test_matches_refuses_an_invalid_regular_expression() -> None:
    with pytest.raises(RuleDefinitionError, match="email"):
        matches("email", "(unclosed")


def test_matches_refuses_a_pattern_that_is_not_a_string() -> None:
    with pytest.raises(RuleDefinitionError):
        matches("email", 5)  # type: ignore[arg-type]


# -- one_of ---------------------------------------------------------------------------------------------


def test_one_of_passes_for_an_allowed_value() -> None:
    assert check(one_of("status", ["new", "done"]), status="done").valid


def test_one_of_accepts_any_iterable_of_values() -> None:
    assert check(one_of("status", (v for v in ("new", "done"))), status="new").valid


def test_one_of_fails_naming_field_allowed_values_and_actual_value() -> None:
    msg = only_error(check(one_of("status", ["new", "done"]), status="lost"))
    assert "status" in msg
    assert "'new'" in msg and "'done'" in msg
    assert "'lost'" in msg


def test_one_of_fails_when_the_field_is_missing() -> None:
    msg = only_error(check(one_of("status", ["new"])))
    assert "status" in msg
    assert "required" in msg


def test_one_of_refuses_an_empty_list_of_values() -> None:
    with pytest.raises(RuleDefinitionError, match="status"):
        one_of("status", [])


def test_one_of_refuses_values_that_are_not_iterable() -> None:
    with pytest.raises(RuleDefinitionError):
        one_of("status", 5)  # type: ignore[arg-type]


# -- length ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["ab", "abcd", [1, 2, 3], {"a": 1, "b": 2}])
def test_length_passes_within_inclusive_bounds(value: Any) -> None:
    assert check(length("v", min=2, max=4), v=value).valid


def test_length_fails_when_too_short_naming_field_and_minimum() -> None:
    msg = only_error(check(length("name", min=3), name="ab"))
    assert "name" in msg
    assert "short" in msg
    assert "3" in msg


def test_length_fails_when_too_long_naming_field_and_maximum() -> None:
    msg = only_error(check(length("tags", max=2), tags=["a", "b", "c"]))
    assert "tags" in msg
    assert "long" in msg
    assert "2" in msg


def test_length_fails_when_missing_or_without_a_length() -> None:
    assert "name" in only_error(check(length("name", min=1)))
    assert "name" in only_error(check(length("name", min=1), name=12345))


def test_length_needs_a_bound() -> None:
    with pytest.raises(RuleDefinitionError, match="name"):
        length("name")


def test_length_refuses_min_greater_than_max() -> None:
    with pytest.raises(RuleDefinitionError, match="name"):
        length("name", min=5, max=2)


@pytest.mark.parametrize("bounds", [{"min": "3"}, {"max": "10"}, {"min": "1", "max": "5"}])
def test_length_refuses_bounds_that_are_not_integers(bounds: dict[str, Any]) -> None:
    with pytest.raises(RuleDefinitionError):
        length("name", **bounds)


def test_length_refuses_a_negative_maximum() -> None:
    # No value can ever satisfy max=-1: a definition mistake, not a runtime failure.
    with pytest.raises(RuleDefinitionError):
        length("name", max=-1)


# -- numericality ---------------------------------------------------------------------------------------

BOUNDS = [
    ("greater_than", 5, 6, 5, "greater than"),
    ("greater_than_or_equal_to", 5, 5, 4.9, "greater than or equal to"),
    ("less_than", 5, 4.99, 5, "less than"),
    ("less_than_or_equal_to", 5, 5, 5.1, "less than or equal to"),
    ("equal_to", 5, 5.0, 6, "equal to"),
    ("other_than", 5, 4, 5, "other than"),
]


@pytest.mark.parametrize(("kw", "bound", "good", "bad", "words"), BOUNDS)
def test_numericality_bounds(kw: str, bound: float, good: float, bad: float, words: str) -> None:
    rule = numericality("score", **{kw: bound})
    assert check(rule, score=good).valid
    msg = only_error(check(rule, score=bad))
    assert "score" in msg
    assert words in msg
    assert str(bound) in msg


def test_numericality_reports_every_failing_bound() -> None:
    result = check(numericality("n", greater_than=10, less_than=0, other_than=5), n=5)
    assert not result.valid
    assert len(result.errors) == 3
    assert all("n must be" in e for e in result.errors)


@pytest.mark.parametrize("value", [True, False, "5", None, [5]])
def test_numericality_rejects_non_numbers_including_bools(value: Any) -> None:
    assert "amount" in only_error(check(numericality("amount"), amount=value))


def test_numericality_without_bounds_only_requires_a_number() -> None:
    assert check(numericality("amount"), amount=-3.5).valid


def test_numericality_fails_when_missing() -> None:
    msg = only_error(check(numericality("amount", greater_than=0)))
    assert "amount" in msg
    assert "required" in msg


def test_numericality_only_integer() -> None:
    rule = numericality("count", only_integer=True, greater_than_or_equal_to=0)
    assert check(rule, count=3).valid
    msg = only_error(check(rule, count=3.5))
    assert "count" in msg
    assert "integer" in msg


@pytest.mark.parametrize("kw", ["greater_than", "less_than", "equal_to"])
def test_numericality_refuses_a_bound_that_is_not_a_number(kw: str) -> None:
    with pytest.raises(RuleDefinitionError):
        numericality("score", **{kw: "5"})


# -- json_schema ----------------------------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {"id": {"type": "integer"}, "name": {"type": "string"}},
    "required": ["id"],
}


def test_json_schema_passes_for_a_valid_value() -> None:
    assert check(json_schema("payload", SCHEMA), payload={"id": 1, "name": "x"}).valid


def test_json_schema_reports_every_violation_with_field_and_path() -> None:
    result = check(json_schema("payload", SCHEMA), payload={"name": 3})
    assert not result.valid
    assert len(result.errors) == 2
    assert all(e.startswith("payload") for e in result.errors)
    assert any("'id' is a required property" in e for e in result.errors)
    assert any("['name']" in e and "'string'" in e for e in result.errors)


def test_json_schema_fails_when_missing() -> None:
    assert "payload" in only_error(check(json_schema("payload", SCHEMA)))


def test_json_schema_honours_the_declared_draft() -> None:
    # Draft 4 uses a boolean exclusiveMaximum; 2020-12 would reject this schema.
    schema = {"$schema": "http://json-schema.org/draft-04/schema#", "maximum": 10, "exclusiveMaximum": True}
    rule = json_schema("n", schema)
    assert check(rule, n=9).valid
    assert not check(rule, n=10).valid


def test_json_schema_refuses_a_schema_that_is_not_a_dict() -> None:
    with pytest.raises(RuleDefinitionError, match="payload"):
        json_schema("payload", [1, 2])  # type: ignore[arg-type]


def test_json_schema_refuses_an_invalid_schema_at_definition() -> None:
    with pytest.raises(RuleDefinitionError, match="payload"):
        json_schema("payload", {"type": "no-such-type"})


# -- combinators ----------------------------------------------------------------------------------------


def test_all_of_passes_when_every_rule_passes() -> None:
    rule = all_of(presence("a"), "b > 1", lambda t: t.data["a"] == "x")
    assert check(rule, a="x", b=2).valid


def test_all_of_reports_every_failure() -> None:
    result = check(all_of(presence("a"), presence("b"), presence("c")), b=1)
    assert not result.valid
    assert len(result.errors) == 2
    assert "a" in result.errors[0] and "c" in result.errors[1]


def test_any_of_passes_when_one_rule_passes() -> None:
    assert check(any_of(presence("a"), presence("b")), b=1).valid


def test_any_of_reports_every_failure_when_none_passes() -> None:
    result = check(any_of(presence("email"), presence("phone")))
    assert not result.valid
    assert any("email" in e for e in result.errors)
    assert any("phone" in e for e in result.errors)


def test_none_of_passes_when_no_rule_passes() -> None:
    assert check(none_of(presence("banned"), "score < 0"), score=3).valid


def test_none_of_fails_naming_each_rule_that_passed() -> None:
    result = check(none_of(presence("banned"), presence("flagged"), presence("ok")), banned=1, flagged=1)
    assert not result.valid
    assert len(result.errors) == 2
    assert "presence(banned)" in result.errors[0]
    assert "presence(flagged)" in result.errors[1]


def test_combinators_nest() -> None:
    rule = all_of(any_of(presence("a"), presence("b")), none_of(presence("c")))
    assert check(rule, b=1).valid
    assert not check(rule, b=1, c=1).valid
    assert not check(rule).valid


@pytest.mark.parametrize("combinator", [all_of, any_of, none_of])
def test_combinators_need_at_least_one_rule(combinator: Any) -> None:
    with pytest.raises(RuleDefinitionError):
        combinator()


@pytest.mark.parametrize("combinator", [all_of, any_of, none_of])
def test_combinators_refuse_things_that_are_not_rules(combinator: Any) -> None:
    with pytest.raises(RuleDefinitionError):
        combinator(presence("a"), 42)


@pytest.mark.parametrize("combinator", [all_of, any_of, none_of])
def test_combinators_refuse_a_bad_expression(combinator: Any) -> None:
    with pytest.raises(RuleDefinitionError):
        combinator("score >")


# -- custom ---------------------------------------------------------------------------------------------


def test_custom_passes_when_the_function_returns_true() -> None:
    assert check(custom(lambda t: t.data["n"] > 1), n=2).valid


def test_custom_fails_with_the_given_message() -> None:
    result = check(custom(lambda t: t.data["n"] > 1, message="n must exceed 1"), n=0)
    assert result.errors == ("n must exceed 1",)


def test_custom_default_message_names_the_function() -> None:
    def is_even(token: Token) -> bool:
        return token.data["n"] % 2 == 0

    rule = custom(is_even)
    assert rule.name == "is_even"
    assert "is_even" in only_error(check(rule, n=3))


def test_custom_passes_a_rule_result_through() -> None:
    rule = custom(lambda t: RuleResult.fail("n is odd", "n is small"))
    assert check(rule, n=1).errors == ("n is odd", "n is small")


def test_custom_turns_an_exception_into_a_failure_with_its_message() -> None:
    def explode(token: Token) -> bool:
        raise ValueError("the sensor is offline")

    msg = only_error(check(custom(explode)))
    assert "the sensor is offline" in msg
    assert "explode" in msg


def test_custom_refuses_a_non_callable() -> None:
    with pytest.raises(RuleDefinitionError):
        custom("not callable")  # type: ignore[arg-type]


def test_custom_refuses_an_async_function() -> None:
    # An async check returns a coroutine, which is truthy: it would pass every token unseen.
    async def slow_check(token: Token) -> bool:
        return False

    with pytest.raises(RuleDefinitionError):
        custom(slow_check)


# -- depends_on -----------------------------------------------------------------------------------------


def test_depends_on_passes_when_the_field_is_absent_or_blank() -> None:
    rule = depends_on("card_number", "expiry", "cvc")
    assert check(rule).valid
    assert check(rule, card_number="").valid


def test_depends_on_passes_when_every_required_field_is_present() -> None:
    assert check(depends_on("card_number", "expiry", "cvc"), card_number="4", expiry="01/30", cvc="1").valid


def test_depends_on_names_each_missing_required_field() -> None:
    result = check(depends_on("card_number", "expiry", "cvc"), card_number="4", cvc="")
    assert not result.valid
    assert result.errors == ("card_number requires expiry", "card_number requires cvc")


def test_depends_on_needs_a_required_field() -> None:
    with pytest.raises(RuleDefinitionError, match="card_number"):
        depends_on("card_number")


def test_depends_on_refuses_bad_field_names() -> None:
    with pytest.raises(RuleDefinitionError):
        depends_on("card_number", "")
    with pytest.raises(RuleDefinitionError):
        depends_on(None, "expiry")  # type: ignore[arg-type]


# -- helper rules in general ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "name"),
    [
        (presence("f"), "presence(f)"),
        (matches("f", "x"), "matches(f, 'x')"),
        (one_of("f", [1]), "one_of(f)"),
        (length("f", min=1), "length(f)"),
        (numericality("f"), "numericality(f)"),
        (json_schema("f", {"type": "string"}), "json_schema(f)"),
        (depends_on("f", "g"), "depends_on(f)"),
        (all_of(presence("a"), presence("b")), "all_of(presence(a), presence(b))"),
    ],
)
def test_helper_rules_are_named_after_the_helper_and_field(rule: Rule, name: str) -> None:
    # These names appear in rejection messages (none_of) and in the serialised spec.
    assert rule.name == name
