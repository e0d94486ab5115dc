"""Pins the public API: what ``circuit_breaker`` exports, and the error tree."""

from __future__ import annotations

import importlib
import inspect
import re

import pytest

import circuit_breaker
from circuit_breaker import errors

EXPECTED_ALL = [
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

# error -> its direct parent, as drawn in the docstring of circuit_breaker/errors.py
ERROR_TREE = {
    "DefinitionError": "CircuitBreakerError",
    "UnknownPlaceError": "DefinitionError",
    "DuplicateNameError": "DefinitionError",
    "UnknownRuleError": "DefinitionError",
    "ForeignPlaceError": "DefinitionError",
    "RuleDefinitionError": "CircuitBreakerError",
    "TokenDataError": "CircuitBreakerError",
    "EventTooLargeError": "TokenDataError",
    "UnknownWorkflowError": "CircuitBreakerError",
    "UnknownTransitionError": "CircuitBreakerError",
    "UnknownInstanceError": "CircuitBreakerError",
    "TransitionNotEnabledError": "CircuitBreakerError",
    "TransitionRejectedError": "CircuitBreakerError",
    "ActionError": "CircuitBreakerError",
    "ActionTimeoutError": "ActionError",
    "InstanceExistsError": "CircuitBreakerError",
    "InstanceStateError": "CircuitBreakerError",
    "TaskStateError": "InstanceStateError",
    "ConcurrencyError": "CircuitBreakerError",
    "WaitTimeoutError": "CircuitBreakerError",
    "EngineClosedError": "CircuitBreakerError",
    "WorkflowLoadError": "CircuitBreakerError",
    "ExecutorConfigError": "CircuitBreakerError",
    "UnknownExecutorError": "ExecutorConfigError",
    "TemplateError": "ExecutorConfigError",
    "ExecutorError": "CircuitBreakerError",
    "ExecutorTimeoutError": "ExecutorError",
    "ConfigError": "CircuitBreakerError",
    "NatsServerError": "CircuitBreakerError",
    "NatsUnavailableError": "CircuitBreakerError",
    "StoreError": "CircuitBreakerError",
    "StreamConfigError": "StoreError",
    "InjectError": "CircuitBreakerError",
    "ControlError": "CircuitBreakerError",
    "SubscriptionError": "CircuitBreakerError",
    "WorkerError": "CircuitBreakerError",
    "DeadLetterError": "CircuitBreakerError",
}


def error_classes() -> dict[str, type[BaseException]]:
    return {
        name: obj
        for name, obj in vars(errors).items()
        if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == errors.__name__
    }


def test_all_is_pinned_and_sorted() -> None:
    assert circuit_breaker.__all__ == EXPECTED_ALL
    assert sorted(circuit_breaker.__all__) == circuit_breaker.__all__


@pytest.mark.parametrize("name", EXPECTED_ALL)
def test_every_exported_name_is_importable(name: str) -> None:
    module = importlib.import_module("circuit_breaker")
    assert getattr(module, name) is not None
    namespace: dict[str, object] = {}
    exec(f"from circuit_breaker import {name}", namespace)
    assert namespace[name] is getattr(circuit_breaker, name)


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from circuit_breaker import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == sorted(EXPECTED_ALL)


def test_version_is_a_version_string() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", circuit_breaker.__version__)


def test_the_error_root_is_exported() -> None:
    assert circuit_breaker.CircuitBreakerError is errors.CircuitBreakerError
    assert circuit_breaker.errors is errors
    assert issubclass(errors.CircuitBreakerError, Exception)


def test_every_error_class_subclasses_the_root() -> None:
    classes = error_classes()
    assert len(classes) >= len(ERROR_TREE) + 1
    for name, cls in classes.items():
        assert issubclass(cls, errors.CircuitBreakerError), name


def test_the_error_tree_is_pinned() -> None:
    classes = error_classes()
    assert set(classes) == set(ERROR_TREE) | {"CircuitBreakerError"}
    for name, parent in ERROR_TREE.items():
        assert classes[name].__bases__ == (classes[parent],), name


def test_the_error_tree_docstring_names_every_error() -> None:
    doc = errors.__doc__ or ""
    for name in error_classes():
        assert name in doc, name


def test_transient_errors_are_retryable_and_mistakes_are_not() -> None:
    assert errors.CircuitBreakerError.retryable is False
    assert errors.ConcurrencyError.retryable is True
    assert errors.ConcurrencyError("i", 1).retryable is True
    assert errors.DefinitionError("x").retryable is False
    assert errors.StoreError("no ack").retryable is True  # NATS may come back
    assert errors.StreamConfigError("S", ["max_age"]).retryable is False  # needs an operator
