"""Remote actions: a transition whose executor runs on a worker process instead of inside the engine.

The engine then fires in two phases (``transition_started`` consumes the inputs and hands a task to the workers;
``transition_fired`` produces the outputs from the result), so an engine crash in between loses nothing. What
travels is the executor's spec (registered name + parameters, templates unfilled) and the token data: workers
need the executor registry, never the workflow code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import DefinitionError

__all__ = ["RemoteAction", "remote_action"]


@dataclass(frozen=True, slots=True)
class RemoteAction:
    """What a task for this transition carries, and how long the engine waits for one attempt's result."""

    executor: dict[str, Any]  # Executor.spec(): {"executor": kind, "params": {...}, "retry"?, "timeout"?}
    kind: str
    into: str | None = None  # the executor's output goes under this key of the token data
    deadline: float | None = None  # seconds one attempt may take, counted by the engine, before it is handed out again


def remote_action(handler: Any, *, deadline: float | None, transition: str, workflow: str) -> RemoteAction:
    """The remote form of ``handler``, which must be an executor (or ``executor.as_action(into=...)``)."""
    executor = getattr(handler, "executor", None)
    spec_of = getattr(executor, "spec", None)
    if executor is None or spec_of is None:
        raise DefinitionError(
            f"transition {transition!r}: remote=True needs an executor action (a worker rebuilds it from its spec), "
            f"got {getattr(handler, '__name__', handler)!r}",
            workflow=workflow,
        )
    if deadline is not None and deadline <= 0:
        raise DefinitionError(
            f"transition {transition!r}: deadline must be positive, got {deadline}", workflow=workflow
        )
    spec: dict[str, Any] = spec_of()
    masked = sorted(k for k, v in spec.get("params", {}).items() if v == "***")
    if masked:
        raise DefinitionError(
            f"transition {transition!r}: executor {spec['executor']!r} has secret parameter(s) {masked} set in the "
            "workflow; a remote action's spec is stored in NATS, so secrets must not be in it (give the worker its "
            "own registry entry holding them, or run this action in the engine)",
            workflow=workflow,
        )
    named = [where for key, value in spec.get("params", {}).items() for where in _literal_secrets(key, value, key)]
    if named:
        raise DefinitionError(
            f"transition {transition!r}: executor {spec['executor']!r} has a literal value under a secret name "
            f"({', '.join(named)}); a remote action's spec is stored in NATS, where every event reader sees it (give "
            "the worker its own registry entry holding it, or run this action in the engine)",
            workflow=workflow,
        )
    return RemoteAction(
        executor=spec, kind=str(spec["executor"]), into=getattr(handler, "into", None), deadline=deadline
    )


_NAMES_A_PLACE = ("_FILE", "_PATH", "_DIR")


def _literal_secrets(key: object, value: Any, where: str) -> list[str]:
    """Where a plain string sits under a key the masker calls secret (``env={"API_TOKEN": "..."}``, an
    ``Authorization`` header): the masker hides it in output, but a remote spec is stored as it is. A template
    (``{{ ... }}``) is filled on the worker and holds no secret itself."""
    from ..secrets import default_masker

    if isinstance(key, str) and isinstance(value, str) and value and "{{" not in value:
        if key.upper().endswith(_NAMES_A_PLACE):  # (GIT_CREDENTIALS_FILE names where a secret is, not it)
            return []
        return [where] if default_masker().is_secret_name(key) else []
    if isinstance(value, dict):
        return [found for k, v in value.items() for found in _literal_secrets(k, v, f"{where}[{k!r}]")]
    if isinstance(value, list):
        return [found for i, v in enumerate(value) for found in _literal_secrets(None, v, f"{where}[{i}]")]
    return []
