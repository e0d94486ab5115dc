"""Places and the ``>>`` flows between them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import DefinitionError

if TYPE_CHECKING:
    from ._workflow import Workflow


class Place:
    """A place of a workflow (a state). ``a >> b`` is a flow; ``a * 2 >> b`` weighs the arc."""

    __slots__ = ("desc", "name", "review", "workflow")

    def __init__(self, name: str, workflow: Workflow, *, review: bool = False, desc: str = "") -> None:
        self.name = name
        self.workflow = workflow
        self.review = review
        self.desc = desc

    def __rshift__(self, other: Any) -> Flow:
        return Flow(_ends(self), _ends(other))

    def __rrshift__(self, other: Any) -> Flow:
        return Flow(_ends(other), _ends(self))

    def __mul__(self, weight: int) -> Weighted:
        return Weighted(self, weight)

    __rmul__ = __mul__

    def __repr__(self) -> str:
        return f"Place({self.name!r})"

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class Weighted:
    """A place with an arc weight: ``raw * 3 >> batch`` consumes three tokens from ``raw`` per firing."""

    place: Place
    weight: int

    def __post_init__(self) -> None:
        if not isinstance(self.weight, int) or isinstance(self.weight, bool) or self.weight < 1:
            raise DefinitionError(f"arc weight for place {self.place.name!r} must be a positive integer")

    def __rshift__(self, other: Any) -> Flow:
        return Flow(_ends(self), _ends(other))

    def __rrshift__(self, other: Any) -> Flow:
        return Flow(_ends(other), _ends(self))


@dataclass(frozen=True, slots=True)
class Flow:
    """Arcs from ``sources`` through one transition to ``targets``, as (place, weight) pairs."""

    sources: tuple[tuple[Place, int], ...]
    targets: tuple[tuple[Place, int], ...]

    def default_name(self) -> str:
        return "_".join(p.name for p, _ in self.sources) + "_to_" + "_".join(p.name for p, _ in self.targets)


def _ends(value: Any) -> tuple[tuple[Place, int], ...]:
    items: Iterable[Any] = value if isinstance(value, (tuple, list)) else (value,)
    out: list[tuple[Place, int]] = []
    for item in items:
        if isinstance(item, Place):
            out.append((item, 1))
        elif isinstance(item, Weighted):
            out.append((item.place, item.weight))
        else:
            raise DefinitionError(f"a flow connects places, got {item!r}")
    if not out:
        raise DefinitionError("a flow needs at least one place on each side")
    return tuple(out)
