"""Executor parameters: ``name: type = param(...)`` declarations turned into one pydantic model per class."""

from __future__ import annotations

import re
import types
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic_core import PydanticUndefined

_NO_DEFAULT: Any = PydanticUndefined


@dataclass(frozen=True, slots=True)
class ParamSpec:
    """What ``param()`` declared; ``annotation`` is filled in when the executor class is built."""

    required: bool = False
    default: Any = _NO_DEFAULT
    description: str = ""
    secret: bool = False
    constraints: dict[str, Any] = field(default_factory=dict)
    annotation: Any = Any

    def field_info(self) -> Any:
        if self.required or self.default is _NO_DEFAULT:
            default: Any = ... if self.required else None
        else:
            default = self.default
        return Field(default=default, description=self.description, **self.constraints)

    def describe(self, name: str) -> dict[str, Any]:
        default = None if self.default is _NO_DEFAULT else self.default
        return {
            "name": name,
            "type": type_name(self.annotation),
            "required": self.required,
            "default": "***" if self.secret and default else default,
            "description": self.description,
            "secret": self.secret,
        }


def param(
    *,
    required: bool = False,
    default: Any = _NO_DEFAULT,
    description: str = "",
    secret: bool = False,
    **constraints: Any,
) -> Any:
    """Declare an executor parameter: ``timeout: float = param(default=30, description="...", gt=0)``.

    ``constraints`` are pydantic's (``gt``, ``ge``, ``min_length``, ``pattern``...). A mutable default (``{}``,
    ``[]``) is copied for every executor, never shared. ``secret=True`` masks the value wherever the executor
    is shown (repr, spec, ``circuit-breaker executors``).
    """
    if required and default is not _NO_DEFAULT:
        raise TypeError("a parameter is either required or has a default, not both")
    return ParamSpec(
        required=required, default=default, description=description, secret=secret, constraints=constraints
    )


def collect_params(cls: type) -> dict[str, ParamSpec]:
    """Every ``param()`` declared on ``cls`` and its bases (nearer classes win), with resolved annotations."""
    hints = typing.get_type_hints(cls, include_extras=True)
    found: dict[str, ParamSpec] = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            if isinstance(value, ParamSpec):
                found[name] = ParamSpec(
                    required=value.required,
                    default=value.default,
                    description=value.description,
                    secret=value.secret,
                    constraints=value.constraints,
                    annotation=hints.get(name, Any),
                )
    return found


def params_model(cls: type, params: dict[str, ParamSpec]) -> type[BaseModel]:
    fields: dict[str, Any] = {name: (spec.annotation, spec.field_info()) for name, spec in params.items()}
    config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, validate_default=False)
    with warnings.catch_warnings():
        # Parameters such as ``json`` shadow BaseModel attributes; harmless for a model used only to validate.
        warnings.filterwarnings("ignore", message=".*shadows an attribute in parent.*")
        model: type[BaseModel] = create_model(f"{cls.__name__}Params", __config__=config, **fields)
    return model


def type_name(annotation: Any) -> str:
    """A short, readable type name for listings: ``dict``, ``list[str]``, ``int | None``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is typing.Literal:
        return "Literal[" + ", ".join(repr(a) for a in args) + "]"
    if annotation is type(None):
        return "None"
    if origin is not None:
        name = getattr(origin, "__name__", None) or str(origin)
        return f"{name}[{', '.join(type_name(a) for a in args)}]" if args else name
    if isinstance(annotation, type):
        return annotation.__name__
    # Anything else: drop module paths (circuit_breaker.executors._base.Executor -> Executor).
    return re.sub(r"\b(?:[A-Za-z_][A-Za-z0-9_]*\.)+([A-Za-z_][A-Za-z0-9_]*)", r"\1", str(annotation))
