"""The pure Petri-net core: structure, markings, enabling, firing and analysis. Imports nothing else of ours."""

from ._analysis import Analysis, analyse
from ._marking import Marking
from ._net import Arc, Net, NetTransition
from ._semantics import enabled_transitions, fire, is_enabled, missing_tokens, select

__all__ = [
    "Analysis",
    "Arc",
    "Marking",
    "Net",
    "NetTransition",
    "analyse",
    "enabled_transitions",
    "fire",
    "is_enabled",
    "missing_tokens",
    "select",
]
