"""Rule helpers: ready-made checks on a field of the token data, each returning a ``Rule``.

Every failing helper says which field failed and why, so a rejected firing explains itself.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Collection, Iterable
from typing import TYPE_CHECKING, Any

from ..errors import RuleDefinitionError
from ._result import RuleResult
from ._rule import Rule, RuleCheck, as_rule

if TYPE_CHECKING:
    from ..token import Token

__all__ = [
    "all_of",
    "any_of",
    "custom",
    "depends_on",
    "json_schema",
    "length",
    "matches",
    "none_of",
    "numericality",
    "one_of",
    "presence",
]

_MISSING = object()


def _get(data: dict[str, Any], field: str) -> Any:
    """The value at ``field``; dotted paths (``customer.email``) walk nested objects."""
    if field in data:
        return data[field]
    node: Any = data
    for part in field.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return _MISSING
    return node


def _is_blank(value: Any) -> bool:
    return value is _MISSING or value is None or (isinstance(value, (str, list, dict, tuple, set)) and not value)


def _field_name(field: Any) -> str:
    if not isinstance(field, str) or not field:
        raise RuleDefinitionError(f"a field name must be a non-empty string, got {field!r}")
    return field


def presence(field: str) -> Rule:
    """The field exists and is not None, an empty string or an empty collection."""
    field = _field_name(field)

    def check(token: Token) -> RuleResult:
        value = _get(token.data, field)
        if value is _MISSING:
            return RuleResult.fail(f"{field} is required")
        if _is_blank(value):
            return RuleResult.fail(f"{field} must not be blank")
        return RuleResult.ok()

    return Rule(f"presence({field})", check)


def matches(field: str, pattern: str, message: str | None = None) -> Rule:
    """The field is a string matching the regular expression ``pattern`` (``re.search``)."""
    field = _field_name(field)
    if not isinstance(pattern, str):
        raise RuleDefinitionError(f"matches({field}): pattern must be a string, got {type(pattern).__name__}")
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise RuleDefinitionError(f"matches({field}): invalid pattern {pattern!r}: {err}") from err

    def check(token: Token) -> RuleResult:
        value = _get(token.data, field)
        if not isinstance(value, str) or not regex.search(value):
            return RuleResult.fail(message or f"{field} must match {pattern!r}")
        return RuleResult.ok()

    return Rule(f"matches({field}, {pattern!r})", check)


def one_of(field: str, values: Iterable[Any]) -> Rule:
    """The field's value is one of ``values``."""
    field = _field_name(field)
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise RuleDefinitionError(f"one_of({field}): values must be a list of allowed values, got {values!r}")
    allowed = list(values)
    if not allowed:
        raise RuleDefinitionError(f"one_of({field}) needs at least one allowed value")

    def check(token: Token) -> RuleResult:
        value = _get(token.data, field)
        if value is _MISSING:
            return RuleResult.fail(f"{field} is required (one of {allowed!r})")
        # `True in [1]` is true in Python; a bool only matches a bool.
        if value not in allowed or (isinstance(value, bool) and not any(v is value for v in allowed)):
            return RuleResult.fail(f"{field} must be one of {allowed!r}, got {value!r}")
        return RuleResult.ok()

    return Rule(f"one_of({field})", check)


def length(field: str, min: int | None = None, max: int | None = None) -> Rule:
    """The field (string, list or object) has at least ``min`` and at most ``max`` items/characters."""
    field = _field_name(field)
    if min is None and max is None:
        raise RuleDefinitionError(f"length({field}) needs min, max or both")
    for label, bound in (("min", min), ("max", max)):
        if bound is not None and (not isinstance(bound, int) or isinstance(bound, bool) or bound < 0):
            raise RuleDefinitionError(f"length({field}): {label} must be a non-negative integer, got {bound!r}")
    if min is not None and max is not None and min > max:
        raise RuleDefinitionError(f"length({field}): min {min} is greater than max {max}")

    def check(token: Token) -> RuleResult:
        value = _get(token.data, field)
        if value is _MISSING:
            return RuleResult.fail(f"{field} is required")
        if not isinstance(value, (str, list, dict, tuple)):
            return RuleResult.fail(f"{field} has no length (it is {type(value).__name__})")
        n = len(value)
        if min is not None and n < min:
            return RuleResult.fail(f"{field} is too short ({n}, minimum {min})")
        if max is not None and n > max:
            return RuleResult.fail(f"{field} is too long ({n}, maximum {max})")
        return RuleResult.ok()

    return Rule(f"length({field})", check)


_COMPARISONS: dict[str, tuple[Callable[[Any, Any], bool], str]] = {
    "greater_than": (lambda v, x: v > x, "greater than"),
    "greater_than_or_equal_to": (lambda v, x: v >= x, "greater than or equal to"),
    "less_than": (lambda v, x: v < x, "less than"),
    "less_than_or_equal_to": (lambda v, x: v <= x, "less than or equal to"),
    "equal_to": (lambda v, x: v == x, "equal to"),
    "other_than": (lambda v, x: v != x, "other than"),
}


def numericality(
    field: str,
    *,
    greater_than: float | None = None,
    greater_than_or_equal_to: float | None = None,
    less_than: float | None = None,
    less_than_or_equal_to: float | None = None,
    equal_to: float | None = None,
    other_than: float | None = None,
    only_integer: bool = False,
) -> Rule:
    """The field is a number (not a bool) meeting every bound given."""
    field = _field_name(field)
    given = {
        "greater_than": greater_than,
        "greater_than_or_equal_to": greater_than_or_equal_to,
        "less_than": less_than,
        "less_than_or_equal_to": less_than_or_equal_to,
        "equal_to": equal_to,
        "other_than": other_than,
    }
    bounds = [(name, bound) for name, bound in given.items() if bound is not None]
    for name, bound in bounds:
        if isinstance(bound, bool) or not isinstance(bound, (int, float)):
            raise RuleDefinitionError(f"numericality({field}): {name} must be a number, got {bound!r}")

    def check(token: Token) -> RuleResult:
        value = _get(token.data, field)
        if value is _MISSING:
            return RuleResult.fail(f"{field} is required")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return RuleResult.fail(f"{field} must be a number, got {value!r}")
        if only_integer and not isinstance(value, int):
            return RuleResult.fail(f"{field} must be an integer, got {value!r}")
        errors = [
            f"{field} must be {_COMPARISONS[name][1]} {bound}, got {value}"
            for name, bound in bounds
            if not _COMPARISONS[name][0](value, bound)
        ]
        return RuleResult.fail(*errors) if errors else RuleResult.ok()

    return Rule(f"numericality({field})", check)


def json_schema(field: str, schema: dict[str, Any]) -> Rule:
    """The field's value satisfies a JSON Schema (draft chosen by ``$schema``, 2020-12 by default).

    The schema is checked when the rule is built, so a broken schema fails at definition time.
    """
    field = _field_name(field)
    if not isinstance(schema, dict):
        raise RuleDefinitionError(f"json_schema({field}): schema must be a dict, got {type(schema).__name__}")
    import jsonschema  # lazy: only workflows that use schemas pay for it

    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as err:
        raise RuleDefinitionError(f"json_schema({field}): invalid schema: {err.message}") from err
    validator = cls(schema)

    def check(token: Token) -> RuleResult:
        value = _get(token.data, field)
        if value is _MISSING:
            return RuleResult.fail(f"{field} is required")
        errors = [
            f"{field}{''.join(f'[{p!r}]' for p in e.absolute_path)}: {e.message}" for e in validator.iter_errors(value)
        ]
        return RuleResult.fail(*errors) if errors else RuleResult.ok()

    return Rule(f"json_schema({field})", check)


def _rules(rules: Iterable[Rule | RuleCheck | str]) -> list[Rule]:
    built = [as_rule(r) for r in rules]
    if not built:
        raise RuleDefinitionError("a combinator needs at least one rule")
    return built


def all_of(*rules: Rule | RuleCheck | str) -> Rule:
    """Every rule passes; reports every failure."""
    parts = _rules(rules)

    def check(token: Token) -> RuleResult:
        result = RuleResult.ok()
        for rule in parts:
            result = result & rule.evaluate(token)
        return result

    return Rule("all_of(" + ", ".join(r.name for r in parts) + ")", check)


def any_of(*rules: Rule | RuleCheck | str) -> Rule:
    """At least one rule passes; when none does, reports them all."""
    parts = _rules(rules)

    def check(token: Token) -> RuleResult:
        errors: list[str] = []
        for rule in parts:
            res = rule.evaluate(token)
            if res.valid:
                return res
            errors.extend(res.errors)
        return RuleResult(False, tuple(errors))

    return Rule("any_of(" + ", ".join(r.name for r in parts) + ")", check)


def none_of(*rules: Rule | RuleCheck | str) -> Rule:
    """No rule passes; names those that did."""
    parts = _rules(rules)

    def check(token: Token) -> RuleResult:
        passed = [rule.name for rule in parts if rule.evaluate(token).valid]
        if passed:
            return RuleResult.fail(*(f"rule {name!r} must not pass" for name in passed))
        return RuleResult.ok()

    return Rule("none_of(" + ", ".join(r.name for r in parts) + ")", check)


def custom(fn: RuleCheck, message: str | None = None, *, name: str | None = None) -> Rule:
    """A rule from any ``(token) -> bool | RuleResult``; ``message`` is the error when it returns False."""
    if not callable(fn):
        raise RuleDefinitionError(f"custom() needs a callable, got {fn!r}")
    if inspect.iscoroutinefunction(fn):
        raise RuleDefinitionError("custom() needs a plain function, not an async one: rules run synchronously")
    rule_name = name or str(getattr(fn, "__name__", "custom"))

    def check(token: Token) -> bool | RuleResult:
        outcome = fn(token)
        if isinstance(outcome, RuleResult) or outcome:
            return outcome
        return RuleResult.fail(message or f"rule {rule_name!r} failed")

    return Rule(rule_name, check)


def depends_on(field: str, *required: str) -> Rule:
    """When ``field`` is present, every field in ``required`` must be present too."""
    field = _field_name(field)
    needed: Collection[str] = [_field_name(r) for r in required]
    if not needed:
        raise RuleDefinitionError(f"depends_on({field}) needs at least one field it depends on")

    def check(token: Token) -> RuleResult:
        if _is_blank(_get(token.data, field)):
            return RuleResult.ok()
        missing = [r for r in needed if _is_blank(_get(token.data, r))]
        if missing:
            return RuleResult.fail(*(f"{field} requires {m}" for m in missing))
        return RuleResult.ok()

    return Rule(f"depends_on({field})", check)
