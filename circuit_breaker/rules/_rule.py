"""Named rules and the rule set a workflow draws them from."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ..errors import DuplicateNameError, RuleDefinitionError
from ._expression import compile_expression, evaluate_expression
from ._result import _OK, RuleResult

if TYPE_CHECKING:
    from ..token import Token

RuleCheck = Callable[["Token"], "bool | RuleResult"]


class Rule:
    """A named check on a token. Built from a callable ``(token) -> bool | RuleResult`` or an expression.

    Calling a rule never raises: an exception inside the check becomes a failing result that names the rule.
    """

    __slots__ = ("_check", "_compiled", "desc", "expression", "name")

    def __init__(
        self, name: str, check: RuleCheck | None = None, *, desc: str = "", expression: str | None = None
    ) -> None:
        if (check is None) == (expression is None):
            raise RuleDefinitionError(f"rule {name!r} needs exactly one of a callable or an expression", rule=name)
        if check is not None and not callable(check):
            raise RuleDefinitionError(f"rule {name!r}: {check!r} is not callable", rule=name)
        if check is not None and inspect.iscoroutinefunction(check):
            raise RuleDefinitionError(f"rule {name!r} must be a plain function, not async", rule=name)
        self.name = name
        self.desc = desc
        self._check = check
        self.expression = expression
        self._compiled: Any = None
        if expression is not None:
            try:
                self._compiled = compile_expression(expression)
            except RuleDefinitionError as err:
                raise RuleDefinitionError(f"rule {name!r}: {err}", rule=name) from err

    @classmethod
    def from_expression(cls, name: str, expression: str, desc: str = "") -> Rule:
        return cls(name, desc=desc, expression=expression)

    def evaluate(self, token: Token) -> RuleResult:
        if self._compiled is not None:
            return evaluate_expression(self._compiled, token.data, self.name, self.desc)
        check = self._check
        assert check is not None  # construction guarantees one of the two
        try:
            outcome = check(token)
        except Exception as err:
            return RuleResult.fail(f"rule {self.name!r} raised {type(err).__name__}: {err}")
        if outcome is True:
            return _OK
        if isinstance(outcome, RuleResult):
            if outcome.valid or outcome.errors:
                return outcome
            return RuleResult.fail(f"rule {self.name!r} failed")
        if outcome:
            return RuleResult.ok()
        return RuleResult.fail(f"rule {self.name!r} failed" + (f": {self.desc}" if self.desc else ""))

    __call__ = evaluate

    def named(self, name: str, desc: str | None = None) -> Rule:
        """A copy under another name (a rule set names the helpers it holds)."""
        clone = Rule.__new__(Rule)
        clone.name = name
        clone.desc = self.desc if desc is None else desc
        clone._check = self._check
        clone.expression = self.expression
        clone._compiled = self._compiled
        return clone

    def __and__(self, other: Rule) -> Rule:
        return Rule(f"({self.name} & {other.name})", lambda t: self.evaluate(t) & other.evaluate(t))

    def __or__(self, other: Rule) -> Rule:
        return Rule(f"({self.name} | {other.name})", lambda t: self.evaluate(t) | other.evaluate(t))

    def __repr__(self) -> str:
        body = f"expression={self.expression!r}" if self.expression is not None else "callable"
        return f"Rule({self.name!r}, {body})"


def as_rule(value: Rule | RuleCheck | str, name: str | None = None, desc: str = "") -> Rule:
    """A Rule from a Rule, a callable or an expression string."""
    if isinstance(value, Rule):
        return value.named(name, desc or None) if name and name != value.name else value
    if isinstance(value, str):
        return Rule(name or value, desc=desc, expression=value)
    if callable(value):
        rule_name = name or str(getattr(value, "__name__", "rule"))
        return Rule(rule_name, value, desc=desc or (inspect.getdoc(value) or ""))
    raise RuleDefinitionError(f"cannot make a rule from {value!r}", rule=name)


class RuleSet:
    """Named rules that workflows refer to by name in their policies."""

    def __init__(self, rules: dict[str, Rule | RuleCheck | str] | None = None) -> None:
        self._rules: dict[str, Rule] = {}
        for name, value in (rules or {}).items():
            self.add(name, value)

    def add(self, name: str, rule: Rule | RuleCheck | str, desc: str = "") -> Rule:
        """Add a rule: an expression string, a callable ``(token) -> bool | RuleResult`` or a helper's Rule."""
        if not isinstance(name, str) or not name:
            raise RuleDefinitionError(f"rule name must be a non-empty string, got {name!r}")
        if name in self._rules:
            raise DuplicateNameError(f"rule {name!r} is already defined in this rule set", name=name)
        built = as_rule(rule, name, desc)
        self._rules[name] = built
        return built

    def rule(self, fn: RuleCheck | None = None, /, *, name: str | None = None, desc: str = "") -> Any:
        """Decorator: ``@rules.rule`` or ``@rules.rule(desc=...)``; the rule's name is the function's name."""

        def register(f: RuleCheck) -> RuleCheck:
            self.add(name or f.__name__, f, desc)
            return f

        return register(fn) if fn is not None else register

    def update(self, other: RuleSet) -> None:
        for rule in other:
            self.add(rule.name, rule)

    def get(self, name: str) -> Rule | None:
        return self._rules.get(name)

    def __getitem__(self, name: str) -> Rule:
        return self._rules[name]

    def __contains__(self, name: object) -> bool:
        return name in self._rules

    def __iter__(self) -> Iterator[Rule]:
        return iter(self._rules.values())

    def __len__(self) -> int:
        return len(self._rules)

    def names(self) -> list[str]:
        return list(self._rules)

    def evaluate(self, name: str, token: Token) -> RuleResult:
        return self._rules[name].evaluate(token)
