"""Executors: how transitions do work.

    from circuit_breaker.executors import Executor, param

Built-in executors are imported from their modules on first use (``circuit_breaker.executors.shell``...),
so listing them does not import what they need.
"""

from typing import Any

from ._action import ExecutorAction
from ._base import Executor
from ._breaker import (
    BreakerRegistry,
    BreakerState,
    CircuitBreaker,
    CircuitOpenError,
    default_breakers,
    set_default_breakers,
)
from ._local_tasks import LocalTaskQueue, run_task
from ._params import ParamSpec, param
from ._registry import BUILTINS, ENTRY_POINT_GROUP, ExecutorRegistry, default_registry
from ._result import ExecutionResult
from ._template import has_template, render

# name -> (module, class); the registry and attribute access both resolve them lazily.
_BUILTIN_CLASSES: dict[str, tuple[str, str]] = {}


def _builtin(name: str, module: str, cls: str) -> None:
    _BUILTIN_CLASSES[cls] = (module, cls)
    BUILTINS[name] = f"{module}:{cls}"


_builtin("shell", "circuit_breaker.executors.shell", "ShellExecutor")
_builtin("python", "circuit_breaker.executors.python", "PythonExecutor")
_builtin("file", "circuit_breaker.executors.files", "FileExecutor")
_builtin("http", "circuit_breaker.executors.http", "HttpExecutor")
_builtin("step", "circuit_breaker.executors.steps", "StepExecutor")
_builtin("set", "circuit_breaker.executors.data", "SetExecutor")
_builtin("wait", "circuit_breaker.executors.data", "WaitExecutor")
_builtin("inject", "circuit_breaker.executors.data", "InjectExecutor")
_builtin("docker", "circuit_breaker.executors.docker", "DockerExecutor")
_builtin("assistant", "circuit_breaker.executors.assistant", "AssistantExecutor")
_builtin("agent", "circuit_breaker.executors.agent", "AgentExecutor")
_builtin("serverless", "circuit_breaker.executors.serverless", "ServerlessExecutor")
_builtin("nats", "circuit_breaker.executors.nats", "NatsExecutor")


def __getattr__(attr: str) -> Any:
    target = _BUILTIN_CLASSES.get(attr)
    if target is None:
        raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
    import importlib

    return getattr(importlib.import_module(target[0]), target[1])


__all__ = [
    "LocalTaskQueue",
    "run_task",
    "BUILTINS",
    "ENTRY_POINT_GROUP",
    "BreakerRegistry",
    "BreakerState",
    "CircuitBreaker",
    "CircuitOpenError",
    "ExecutionResult",
    "Executor",
    "ExecutorAction",
    "ExecutorRegistry",
    "ParamSpec",
    "default_breakers",
    "default_registry",
    "has_template",
    "param",
    "render",
    "set_default_breakers",
]
