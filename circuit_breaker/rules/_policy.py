"""Policies: ``{"all": [...], "any": [...]}`` over rules, resolved against a rule set when a workflow is built."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import DefinitionError, RuleDefinitionError
from ._helpers import presence
from ._result import _OK, RuleResult
from ._rule import Rule, RuleSet, as_rule

if TYPE_CHECKING:
    from ..token import Token

PolicyItem = Any  # a rule name, a Rule, a callable (token) -> bool | RuleResult
PolicyValue = Mapping[str, Sequence[PolicyItem]] | Sequence[PolicyItem] | None


@dataclass(frozen=True, slots=True)
class Policy:
    """Rules that must all pass (``all``) and of which at least one must pass (``any``).

    In a *validation* policy a string names a required field (``"input_file"``); in a *rule* policy it names a
    rule of the workflow's rule set. Rules and callables may be given directly in both.
    """

    all: tuple[PolicyItem, ...] = ()
    any: tuple[PolicyItem, ...] = ()

    @classmethod
    def of(cls, value: PolicyValue | Policy, *, what: str = "policy") -> Policy:
        if value is None:
            return _EMPTY
        if isinstance(value, Policy):
            return value
        if isinstance(value, Mapping):
            unknown = set(value) - {"all", "any"}
            if unknown:
                raise DefinitionError(f"{what}: unknown key(s) {sorted(unknown)}; use 'all' and/or 'any'")
            return cls(tuple(_items(value.get("all"), what)), tuple(_items(value.get("any"), what)))
        return cls(tuple(_items(value, what)), ())

    def __bool__(self) -> bool:
        return bool(self.all or self.any)

    def resolve(self, rules: RuleSet | None, *, fields: bool, problems: list[str], where: str) -> ResolvedPolicy:
        """Rules for each item; unknown names are appended to ``problems`` (the caller raises with all of them)."""

        def one(item: PolicyItem) -> Rule | None:
            if isinstance(item, str):
                if fields:
                    return presence(item)
                rule = rules.get(item) if rules is not None else None
                if rule is None:
                    problems.append(f"{where}: unknown rule {item!r}")
                return rule
            try:
                return as_rule(item)
            except RuleDefinitionError as err:
                problems.append(f"{where}: {err}")
                return None

        all_rules = tuple(r for r in map(one, self.all) if r is not None)
        any_rules = tuple(r for r in map(one, self.any) if r is not None)
        return ResolvedPolicy(all_rules, any_rules)

    def names(self) -> dict[str, list[str]]:
        """The serialisable form: names of the rules (or fields) in each group."""
        out: dict[str, list[str]] = {}
        for key, items in (("all", self.all), ("any", self.any)):
            if items:
                out[key] = [item if isinstance(item, str) else as_rule(item).name for item in items]
        return out


def _items(value: Any, what: str) -> Iterable[PolicyItem]:
    if value is None:
        return ()
    if isinstance(value, (str, Rule)) or callable(value):
        return (value,)
    if isinstance(value, Sequence):
        return value
    raise DefinitionError(f"{what}: expected a list of rules, got {type(value).__name__}")


_EMPTY = Policy()


@dataclass(frozen=True, slots=True)
class ResolvedPolicy:
    all: tuple[Rule, ...] = ()
    any: tuple[Rule, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.all or self.any)

    def evaluate(self, token: Token) -> RuleResult:
        """Valid when every ``all`` rule passes and, if there are ``any`` rules, one of them does.

        Every failing rule is reported, not just the first.
        """
        errors: list[str] = []
        for rule in self.all:
            res = rule.evaluate(token)
            if res is not _OK and not res.valid:
                errors.extend(res.errors)
        if self.any:
            any_errors: list[str] = []
            for rule in self.any:
                res = rule.evaluate(token)
                if res.valid:
                    break
                any_errors.extend(res.errors)
            else:
                errors.append("none of the 'any' rules passed: " + "; ".join(any_errors))
        return RuleResult(False, tuple(errors)) if errors else _OK
