"""Definition problems for ``circuit-breaker check``: errors that stop registration and structural warnings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ..errors import DefinitionError
from ..net import Arc, Net, NetTransition, analyse

if TYPE_CHECKING:
    from ._workflow import Workflow


@dataclass(frozen=True, slots=True)
class Problem:
    kind: str  # definition | unreachable_place | no_path_to_final | dead_transition
    element: str
    message: str
    severity: Literal["error", "warning"] = "error"

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "element": self.element, "message": self.message, "severity": self.severity}


def find_problems(wf: Workflow) -> list[Problem]:
    problems: list[Problem] = []
    try:
        wf.compile()
    except DefinitionError as err:
        for message in err.problems or [str(err)]:
            problems.append(Problem("definition", wf.name, str(message)))
    if not wf.places:
        return problems
    net = Net.build(
        (p.name for p in wf.places),
        (
            NetTransition(
                t.name, tuple(Arc(p.name, w) for p, w in t.inputs), tuple(Arc(p.name, w) for p, w in t.outputs)
            )
            for t in wf.transitions
        ),
    )
    analysis = analyse(net)
    for place in analysis.unreachable_places:
        problems.append(
            Problem(
                "unreachable_place",
                place,
                f"place {place!r} cannot be reached from the initial place {net.places[0]!r}",
                "warning",
            )
        )
    for place in analysis.trap_places:
        problems.append(
            Problem("no_path_to_final", place, f"no final place can be reached from place {place!r}", "warning")
        )
    for name in analysis.dead_transitions:
        t = net.transition(name)
        starved = [a.place for a in t.inputs if a.place not in analysis.reachable_places]
        problems.append(
            Problem(
                "dead_transition",
                name,
                f"transition {name!r} can never be enabled: input place(s) {starved} can never hold a token",
                "warning",
            )
        )
    return problems
