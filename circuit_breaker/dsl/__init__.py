"""The workflow DSL: states, ``>>`` flows, transitions with policies and actions."""

from ._compiled import CompiledTransition, CompiledWorkflow
from ._place import Flow, Place, Weighted
from ._problems import Problem
from ._spec import WorkflowSpec
from ._transition import Transition
from ._workflow import Workflow

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
