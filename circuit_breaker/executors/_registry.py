"""Executors by name: built-ins, third-party packages (entry points) and the project's ``executors/`` folder.

A registry is an object you build and pass around, not a process-wide list: ``default_registry()`` gives one
with the built-ins, the entry-point group ``circuit_breaker.executors`` and, if given, a project folder.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..errors import ExecutorConfigError, UnknownExecutorError
from ._base import Executor

ENTRY_POINT_GROUP = "circuit_breaker.executors"
log = logging.getLogger("circuit_breaker.executors")

# Built-ins by import path, so listing names does not import what they need (httpx, ...).
BUILTINS: dict[str, str] = {}


class ExecutorRegistry:
    def __init__(self) -> None:
        self._classes: dict[str, type[Executor]] = {}
        self._lazy: dict[str, str] = {}
        self._origin: dict[str, str] = {}

    def register(self, cls: type[Executor], *, name: str | None = None, origin: str = "code") -> type[Executor]:
        """Add an executor class (usable as a class decorator); a clashing name is an error."""
        if not (inspect.isclass(cls) and issubclass(cls, Executor)):
            raise ExecutorConfigError(f"{cls!r} is not an Executor subclass")
        key = name or cls.name
        lazy = self._lazy.get(key)
        if lazy is not None and lazy != f"{cls.__module__}:{cls.__qualname__}":
            raise ExecutorConfigError(
                f"executor name {key!r} is taken by {lazy} ({self._origin[key]}); pick another name", executor=key
            )
        known = self._classes.get(key)
        if known is not None and known is not cls:
            raise ExecutorConfigError(
                f"executor name {key!r} is taken by {known.__module__}:{known.__qualname__} ({self._origin[key]})",
                executor=key,
            )
        self._classes[key] = cls
        self._lazy.pop(key, None)
        self._origin[key] = origin
        return cls

    def register_lazy(self, name: str, target: str, *, origin: str = "builtin") -> None:
        """Register ``module:Class`` to be imported on first use; a name already taken is refused."""
        taken = self._lazy.get(name) or (
            f"{self._classes[name].__module__}:{self._classes[name].__qualname__}" if name in self._classes else None
        )
        if taken is not None:
            if taken == target:
                return
            raise ExecutorConfigError(
                f"executor name {name!r} ({origin}) is taken by {taken} ({self._origin[name]})", executor=name
            )
        self._lazy[name] = target
        self._origin[name] = origin

    def get(self, name: str) -> type[Executor]:
        cls = self._classes.get(name)
        if cls is not None:
            return cls
        target = self._lazy.get(name)
        if target is None:
            raise UnknownExecutorError(name, self.names())
        return self.register(_import(target), name=name, origin=self._origin.get(name, "builtin"))

    def __contains__(self, name: object) -> bool:
        return name in self._classes or name in self._lazy

    def names(self) -> list[str]:
        return sorted({*self._classes, *self._lazy})

    def __iter__(self) -> Iterator[type[Executor]]:
        for name in self.names():
            yield self.get(name)

    def origin(self, name: str) -> str:
        return self._origin.get(name, "code")

    def create(self, name: str, **params: Any) -> Executor:
        return self.get(name)(**params)

    def from_spec(self, spec: Mapping[str, Any]) -> Executor:
        """Rebuild an executor from ``Executor.spec()`` (nested executors too)."""
        if "executor" not in spec:
            raise ExecutorConfigError(f"an executor spec needs an 'executor' name, got keys {sorted(spec)}")
        masked = sorted(k for k, v in dict(spec.get("params") or {}).items() if v == "***")
        if masked:
            raise ExecutorConfigError(
                f"executor {spec['executor']!r}: parameter(s) {masked} were masked in this spec; build it with "
                "spec(reveal_secrets=True) to hand it to a trusted worker",
                executor=str(spec["executor"]),
                parameter=masked[0],
            )
        params = {k: self._param_from_spec(v) for k, v in dict(spec.get("params") or {}).items()}
        executor = self.create(str(spec["executor"]), **params)
        if spec.get("retry") is not None:
            from ..retry import RetryPolicy

            executor.with_retry(RetryPolicy.model_validate(spec["retry"]))
        if spec.get("timeout") is not None:
            executor.with_timeout(float(spec["timeout"]))
        return executor

    def action_from_spec(self, spec: Mapping[str, Any]) -> Any:
        """Rebuild a transition action from ``ExecutorAction.spec()`` (the executor and its ``into``)."""
        into = spec.get("into")
        return self.from_spec(spec).as_action(into=str(into) if into else None)

    def _param_from_spec(self, value: Any) -> Any:
        if isinstance(value, Mapping) and "executor" in value and "params" in value:
            return self.from_spec(value)
        if isinstance(value, list):
            return [self._param_from_spec(v) for v in value]
        return value

    def describe(self) -> list[dict[str, Any]]:
        return [{**self.get(name).describe(), "origin": self.origin(name)} for name in self.names()]

    # -- discovery ---------------------------------------------------------------------------------------
    def discover_entry_points(self) -> list[str]:
        """Register executors that installed packages declare under ``circuit_breaker.executors``."""
        from importlib.metadata import entry_points

        found = []
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in self:
                # A plug-in must not silently replace what is there (a built-in, say): skip it, loudly.
                log.warning(
                    "executor entry point %s=%s ignored: the name is taken (%s)",
                    ep.name,
                    ep.value,
                    self.origin(ep.name),
                )
                continue
            self.register_lazy(ep.name, ep.value, origin=f"entry point {ep.value}")
            found.append(ep.name)
        return found

    def discover_folder(self, folder: str | Path) -> list[str]:
        """Register every Executor subclass defined in the ``*.py`` files of a project's ``executors/`` folder."""
        path = Path(folder)
        found: list[str] = []
        if not path.is_dir():
            return found
        # Executor files import the project's own modules (``from lib import x``), as workflow files do.
        roots = [str(path.resolve().parent), str(path.resolve())]
        added = [r for r in roots if r not in sys.path]
        sys.path[:0] = added
        try:
            modules = [_load_file(f) for f in sorted(path.glob("*.py")) if not f.name.startswith("_")]
        finally:
            for root in added:
                if root in sys.path:
                    sys.path.remove(root)
        for module in modules:
            file = Path(module.__file__ or "")
            for value in vars(module).values():
                if inspect.isclass(value) and issubclass(value, Executor) and value.__module__ == module.__name__:
                    self.register(value, origin=str(file))
                    found.append(value.name)
        return found


def default_registry(project: str | Path | None = None) -> ExecutorRegistry:
    """Built-ins, entry points and (when given) the executors of a project folder (``<project>/executors``)."""
    registry = ExecutorRegistry()
    for name, target in BUILTINS.items():
        registry.register_lazy(name, target)
    registry.discover_entry_points()
    if project is not None:
        registry.discover_folder(Path(project) / "executors")
    return registry


def _import(target: str) -> type[Executor]:
    module_name, _, attr = target.partition(":")
    try:
        value = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ExecutorConfigError(f"cannot load executor {target!r}: {err}") from err
    if not (inspect.isclass(value) and issubclass(value, Executor)):
        raise ExecutorConfigError(f"{target!r} is not an Executor subclass")
    return value


def _load_file(file: Path) -> Any:
    module_name = f"_cb_executors_{file.stem}_{abs(hash(str(file.resolve())))}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise ExecutorConfigError(f"cannot load executors from {file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[module_name]
        raise ExecutorConfigError(f"cannot load executors from {file}: {type(err).__name__}: {err}") from err
    return module
