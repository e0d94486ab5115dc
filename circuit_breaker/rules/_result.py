"""RuleResult: valid or not, with human-readable errors; combines with ``&`` and ``|``."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class RuleResult:
    valid: bool
    errors: tuple[str, ...] = field(default=())

    @classmethod
    def ok(cls) -> RuleResult:
        return _OK

    @classmethod
    def fail(cls, *errors: str) -> RuleResult:
        return cls(False, tuple(errors))

    def __bool__(self) -> bool:
        return self.valid

    def __and__(self, other: RuleResult) -> RuleResult:
        """Valid when both are; carries the errors of every failing side."""
        if self.valid and other.valid:
            return _OK
        return RuleResult(False, self.errors + other.errors)

    def __or__(self, other: RuleResult) -> RuleResult:
        """Valid when either is; when both fail, carries both sides' errors."""
        if self.valid or other.valid:
            return _OK
        return RuleResult(False, self.errors + other.errors)

    def __invert__(self) -> RuleResult:
        return _OK if not self.valid else RuleResult(False, ("expected the rule to fail",))


_OK = RuleResult(True)
