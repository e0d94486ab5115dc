"""A workflow compiled for execution: the net, resolved policies and lookup tables the engine needs."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..net import Net, NetTransition
from ..retry import RetryPolicy
from ..rules._policy import ResolvedPolicy

if TYPE_CHECKING:
    from pydantic import BaseModel

    from ._remote import RemoteAction
    from ._transition import Action, Trigger


@dataclass(slots=True, eq=False)
class CompiledTransition:
    name: str
    net: NetTransition
    trigger: Trigger
    handler: Action | None
    is_async: bool
    validations: ResolvedPolicy
    guards: ResolvedPolicy
    rules: ResolvedPolicy
    retry: RetryPolicy | None
    timeout: float | None
    error_place: str | None
    input_places: tuple[str, ...]
    output_places: tuple[str, ...]
    # True when producing into an output place can enable an automatic transition.
    feeds_auto: bool = False
    # True for one input arc of weight 1: any token in that place enables it (a fast path for the engine).
    single_input: bool = False
    # True when every output place is final: only then can this firing complete the instance.
    outputs_final: bool = False
    # Stage patterns: decide at firing time how many tokens move (see Transition.expand / collect).
    expand: Any = None
    collect: Any = None
    max_parallel: int | None = None
    rate_limit: tuple[int, float] | None = None
    desc: str = ""
    # Set when the action runs on a worker: the engine fires in two phases (started, then fired).
    remote: RemoteAction | None = None

    @property
    def is_manual(self) -> bool:
        return self.trigger == "manual"


@dataclass(slots=True, eq=False)
class CompiledWorkflow:
    name: str
    net: Net
    transitions: dict[str, CompiledTransition]
    ordered: tuple[CompiledTransition, ...]
    auto_by_place: dict[str, tuple[CompiledTransition, ...]]
    manual_by_place: dict[str, tuple[CompiledTransition, ...]]
    initial_place: str
    final_places: frozenset[str]
    review_places: frozenset[str]
    token_model: type[BaseModel] | None
    source: Any = field(default=None, repr=False)

    def validate_data(self, data: dict[str, Any]) -> dict[str, Any]:
        """The data as the token model accepts it (defaults filled in); raises TokenDataError."""
        from ._data import validate_token_data

        return validate_token_data(self, data)


def is_async_callable(fn: Any) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - callable objects with an async __call__
    return call is not None and inspect.iscoroutinefunction(call)
