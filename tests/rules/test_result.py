"""RuleResult: truthiness, errors, and combination with & and |."""

from __future__ import annotations

import pytest

from circuit_breaker import RuleResult

OK = RuleResult.ok()
A = RuleResult.fail("a is wrong")
B = RuleResult.fail("b is wrong", "b is also odd")


def test_ok_is_truthy_with_no_errors() -> None:
    assert OK.valid is True
    assert bool(OK) is True
    assert OK.errors == ()
    assert RuleResult(True) == OK


def test_fail_is_falsy_and_keeps_its_errors_in_order() -> None:
    assert bool(B) is False
    assert B.valid is False
    assert B.errors == ("b is wrong", "b is also odd")


def test_a_result_can_be_used_directly_in_a_condition() -> None:
    assert (1 if A else 0) == 0
    assert (1 if OK else 0) == 1


def test_and_of_two_passes_passes() -> None:
    assert (OK & OK) == OK


@pytest.mark.parametrize(("left", "right"), [(OK, A), (A, OK)])
def test_and_fails_when_one_side_fails_and_keeps_its_errors(left: RuleResult, right: RuleResult) -> None:
    result = left & right
    assert not result
    assert result.errors == ("a is wrong",)


def test_and_of_two_failures_carries_both_sides_errors_left_first() -> None:
    assert (A & B).errors == ("a is wrong", "b is wrong", "b is also odd")
    assert (B & A).errors == ("b is wrong", "b is also odd", "a is wrong")


@pytest.mark.parametrize(("left", "right"), [(OK, A), (A, OK), (OK, OK)])
def test_or_passes_when_either_side_passes(left: RuleResult, right: RuleResult) -> None:
    result = left | right
    assert result.valid
    assert result.errors == ()


def test_or_of_two_failures_carries_both_sides_errors() -> None:
    result = A | B
    assert not result
    assert result.errors == ("a is wrong", "b is wrong", "b is also odd")


def test_invert_flips_validity() -> None:
    assert (~A).valid
    assert not (~OK).valid
    assert (~OK).errors


def test_results_are_immutable_values() -> None:
    with pytest.raises(AttributeError):
        A.valid = True  # type: ignore[misc]
    assert RuleResult.fail("x") == RuleResult(False, ("x",))
    assert hash(RuleResult.fail("x")) == hash(RuleResult(False, ("x",)))


def test_combining_does_not_change_the_operands() -> None:
    _ = A & B
    _ = A | B
    assert A.errors == ("a is wrong",)
    assert B.errors == ("b is wrong", "b is also odd")
