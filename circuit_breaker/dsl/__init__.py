"""The workflow DSL: states, ``>>`` flows, transitions with policies and actions."""

from typing import TYPE_CHECKING, Any

from ._compiled import CompiledTransition, CompiledWorkflow
from ._place import Flow, Place, Weighted
from ._problems import Problem
from ._transition import Transition
from ._workflow import Workflow

if TYPE_CHECKING:
    from ._spec import WorkflowSpec


def __getattr__(name: str) -> Any:
    # The spec models are only needed when a workflow is serialised; building them costs import time.
    if name == "WorkflowSpec":
        from ._spec import WorkflowSpec

        return WorkflowSpec
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CompiledTransition",
    "CompiledWorkflow",
    "Flow",
    "Place",
    "Problem",
    "Transition",
    "Weighted",
    "Workflow",
    "WorkflowSpec",
]
