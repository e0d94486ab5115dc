"""circuit_breaker: a Petri-net workflow engine.

from circuit_breaker import Workflow, RuleSet, Token, Engine
"""

from . import errors
from .dsl import Place, Transition, Workflow
from .engine import Engine, Incident, Instance, InstanceStatus
from .errors import CircuitBreakerError
from .events import Event, EventType
from .retry import RetryPolicy
from .rules import Rule, RuleResult, RuleSet
from .token import History, HistoryEntry, Token

__version__ = "0.1.0"

__all__ = [
    "CircuitBreakerError",
    "Engine",
    "Event",
    "EventType",
    "History",
    "HistoryEntry",
    "Incident",
    "Instance",
    "InstanceStatus",
    "Place",
    "RetryPolicy",
    "Rule",
    "RuleResult",
    "RuleSet",
    "Token",
    "Transition",
    "Workflow",
    "__version__",
    "errors",
]
