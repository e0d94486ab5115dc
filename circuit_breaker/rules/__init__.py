"""Rules: named checks on token data, rule sets, helpers and rule-engine expressions."""

from ._helpers import (
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
from ._policy import Policy
from ._result import RuleResult
from ._rule import Rule, RuleSet, as_rule

__all__ = [
    "Policy",
    "Rule",
    "RuleResult",
    "RuleSet",
    "all_of",
    "any_of",
    "as_rule",
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
