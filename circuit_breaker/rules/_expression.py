"""Rule-engine expressions (``"quality_score >= 0.8 and status != 'error'"``), compiled once and cached.

rule-engine parses and evaluates its own small language: no Python ``eval``, and attribute access only on
its own data types (``name.length``), never on Python objects. rule-engine itself is imported on first use
because importing it costs half a second.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from ..errors import RuleDefinitionError
from ._result import RuleResult

MAX_EXPRESSION_LENGTH = 2000


@lru_cache(maxsize=4096)
def compile_expression(text: str) -> Any:
    """The compiled rule for ``text``; raises RuleDefinitionError naming the problem."""
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise RuleDefinitionError(
            f"rule expression is {len(text)} characters long; the limit is {MAX_EXPRESSION_LENGTH}"
        )
    import rule_engine

    context = rule_engine.Context(resolver=rule_engine.resolve_item)
    try:
        return rule_engine.Rule(text, context=context)
    except rule_engine.errors.EngineError as err:
        raise RuleDefinitionError(f"invalid rule expression {text!r}: {_describe(err)}") from err


def evaluate_expression(compiled: Any, data: dict[str, Any], name: str, desc: str = "") -> RuleResult:
    """Evaluate against token data; any error inside the expression is a failure of this rule, not a crash."""
    import rule_engine

    try:
        if compiled.matches(data):
            return RuleResult.ok()
        why = f" ({desc})" if desc else ""
        return RuleResult.fail(f"rule {name!r} failed: {compiled.text}{why}")
    except rule_engine.errors.SymbolResolutionError as err:
        return RuleResult.fail(f"rule {name!r} failed: field {err.symbol_name!r} is missing")
    except rule_engine.errors.EngineError as err:
        return RuleResult.fail(f"rule {name!r} failed: {_describe(err)}")
    except Exception as err:
        return RuleResult.fail(f"rule {name!r} raised {type(err).__name__}: {err}")


def _describe(err: Exception) -> str:
    message = getattr(err, "message", None) or str(err)
    return f"{type(err).__name__}: {message}"
