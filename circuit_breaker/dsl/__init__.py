"""The workflow DSL: states, ``>>`` flows, transitions with policies and actions."""

from typing import TYPE_CHECKING, Any

from ._compiled import CompiledTransition, CompiledWorkflow
from ._dag import Task, dag
from ._place import Flow, Place, Weighted
from ._problems import Problem
from ._transition import Transition
from ._workflow import Workflow

if TYPE_CHECKING:
    from ._declarative import WorkflowDocument, dump_workflow, load_workflow
    from ._spec import WorkflowSpec

_DECLARATIVE = ("WorkflowDocument", "dump_workflow", "load_workflow")


def __getattr__(name: str) -> Any:
    # The spec models are only needed when a workflow is serialised; building them costs import time.
    if name == "WorkflowSpec":
        from ._spec import WorkflowSpec

        return WorkflowSpec
    if name in _DECLARATIVE:  # so is YAML, and the document models
        from . import _declarative

        return getattr(_declarative, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CompiledTransition",
    "CompiledWorkflow",
    "Flow",
    "Place",
    "Problem",
    "Task",
    "Transition",
    "Weighted",
    "Workflow",
    "WorkflowDocument",
    "WorkflowSpec",
    "dag",
    "dump_workflow",
    "load_workflow",
]
