"""Fast construction of pydantic models from values the engine has already checked.

``Model.model_construct`` costs about 5 µs because it walks every field for defaults and aliases; the engine
builds several models per firing (token, history entry, event, snapshot) from values it made itself, so it
uses these constructors instead (under 1 µs). Every field must be given: nothing is defaulted or validated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)

_slots = BaseModel.__dict__
_set_fields_set = _slots["__pydantic_fields_set__"].__set__
_set_extra = _slots["__pydantic_extra__"].__set__
_set_private = _slots["__pydantic_private__"].__set__
_setattr = object.__setattr__


def constructor(cls: type[M]) -> Callable[[dict[str, Any]], M]:
    """A function ``(values) -> cls`` that skips validation and adopts ``values`` (a fresh dict naming every
    field) as the instance's ``__dict__``."""
    new = object.__new__
    frozen = bool(cls.model_config.get("frozen"))
    # Nothing mutates a frozen model's fields-set in place (model_copy copies it first), so one set serves
    # every instance of a frozen model: one object fewer per model for the garbage collector to walk.
    shared = set(cls.model_fields)
    fields = frozenset(cls.model_fields)

    def make(values: dict[str, Any]) -> M:
        obj: M = new(cls)
        _setattr(obj, "__dict__", values)
        _set_fields_set(obj, shared if frozen else set(fields))
        _set_extra(obj, None)
        _set_private(obj, None)
        return obj

    make.__name__ = f"make_{cls.__name__}"
    return make


_CONSTRUCTORS: dict[type[BaseModel], Callable[[dict[str, Any]], Any]] = {}


def build(cls: type[M], /, **values: Any) -> M:
    """``cls`` from ``values`` without validation (see ``constructor``); every field must be given."""
    make = _CONSTRUCTORS.get(cls)
    if make is None:
        make = _CONSTRUCTORS[cls] = constructor(cls)
    obj: M = make(values)  # the kwargs dict is fresh, so the instance can own it
    return obj
