"""Checks that token data is a JSON object and, if the workflow has one, fits its token model."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import TokenDataError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from ._compiled import CompiledWorkflow

_SCALARS = (str, int, float, bool, type(None))


def json_problem(value: Any, path: str = "data") -> str | None:
    """A description of the first part of ``value`` that JSON cannot carry, or None."""
    found = json_problem_at(value, path)
    return None if found is None else found[1]


def json_problem_at(value: Any, path: str = "data", depth: int = 0) -> tuple[str, str] | None:
    """Where in ``value`` (a path such as ``data.items[2]``) the first part JSON cannot carry is, and what is
    wrong with it; None when JSON carries all of it."""
    if depth > 64:
        return path, f"{path} is nested too deeply"
    if isinstance(value, _SCALARS):
        if isinstance(value, float) and not math.isfinite(value):
            return path, f"{path} is {value}, which JSON cannot carry"
        if isinstance(value, str) and not value.isascii() and has_lone_surrogate(value):
            return path, f"{path} holds a lone surrogate (such as \\ud800), which UTF-8 cannot carry"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return path, f"{path} has a non-string key {key!r}"
            if not key.isascii() and has_lone_surrogate(key):
                return path, f"{path} has a key with a lone surrogate (such as \\ud800), which UTF-8 cannot carry"
            problem = json_problem_at(item, f"{path}.{key}", depth + 1)
            if problem:
                return problem
        return None
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            problem = json_problem_at(item, f"{path}[{i}]", depth + 1)
            if problem:
                return problem
        return None
    return path, f"{path} is a {type(value).__name__}, which JSON cannot carry"


def has_lone_surrogate(text: str) -> bool:
    """Whether ``text`` cannot be written as UTF-8 (a lone surrogate, which JSON's ``\\ud800`` escape can carry
    in, but no stored event could carry out)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def ensure_json_object(data: Any, *, workflow: str | None, what: str = "token data") -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise TokenDataError(
            f"{what} for workflow {workflow!r} must be a JSON object, got {type(data).__name__}", workflow=workflow
        )
    obj: dict[str, Any] = dict(data)
    problem = json_problem_at(obj)
    if problem:
        path, message = problem
        field = path.removeprefix("data.") if path != "data" else None  # (the key path, as a model's errors name it)
        raise TokenDataError(f"{what} for workflow {workflow!r}: {message}", workflow=workflow, field=field)
    return obj


def validate_token_data(cw: CompiledWorkflow, data: Any) -> dict[str, Any]:
    obj = ensure_json_object(data, workflow=cw.name)
    model = cw.token_model
    if model is None:
        return obj
    from pydantic import ValidationError

    try:
        validated = model.model_validate(obj)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ())) or None
        details = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())) or '(root)'}: {e.get('msg')}" for e in err.errors()
        )
        raise TokenDataError(
            f"token data for workflow {cw.name!r} fails {model.__name__}: {details}", workflow=cw.name, field=field
        ) from err
    # By alias: the data is validated again at every merge (an action's result, a manual firing's data), and a
    # model reads its fields by alias, so a field stored under its name would fall back to its default.
    checked: dict[str, Any] = validated.model_dump(mode="json", by_alias=True)
    if model.model_config.get("extra") is None:
        # A model that does not say what to do with fields it does not declare (pydantic would drop them) keeps
        # them as given: an action's result, a reviewer's comment must not vanish without a word. A model
        # that says extra="ignore" drops them, and one that says extra="forbid" refuses them, naming the field.
        declared = _declared_keys(model)
        for key, value in obj.items():
            if key not in declared:
                checked[key] = value
    return checked


@functools.cache
def _declared_keys(model: type[BaseModel]) -> frozenset[str]:
    """The keys a model reads: its fields' names and aliases."""
    from pydantic import AliasChoices

    keys: set[str] = set()
    for name, info in model.model_fields.items():
        keys.add(name)
        for alias in (info.alias, info.validation_alias):
            if isinstance(alias, str):
                keys.add(alias)
            elif isinstance(alias, AliasChoices):
                keys.update(a for a in alias.choices if isinstance(a, str))
    return frozenset(keys)
