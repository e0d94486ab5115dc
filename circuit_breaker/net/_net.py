"""The structure of a Petri net: places, transitions and weighted arcs. No data, no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Arc:
    """An arc between a place and a transition; ``weight`` tokens move along it per firing.

    A *variable* arc moves a number of tokens decided at firing time (one per item of a scatter, a whole
    group for a gather); ``weight`` is then the least an input arc needs to be enabled.
    """

    place: str
    weight: int = 1
    variable: bool = False

    def __post_init__(self) -> None:
        if self.weight < 1:
            raise ValueError(f"arc weight for place {self.place!r} must be >= 1, got {self.weight}")


@dataclass(frozen=True, slots=True)
class NetTransition:
    """A transition of the net: the arcs in and the arcs out."""

    name: str
    inputs: tuple[Arc, ...]
    outputs: tuple[Arc, ...]


@dataclass(frozen=True, slots=True)
class Net:
    """Places in declaration order (the first is the initial place) and transitions in declaration order."""

    places: tuple[str, ...]
    transitions: tuple[NetTransition, ...]
    _by_name: Mapping[str, NetTransition] = field(init=False, repr=False, compare=False)
    _consumers: Mapping[str, tuple[NetTransition, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for t in self.transitions:
            # A transition without inputs would be enabled for ever; workflows start instances instead.
            if not t.inputs:
                raise ValueError(f"transition {t.name!r} has no input place")
        object.__setattr__(self, "_by_name", {t.name: t for t in self.transitions})
        consumers: dict[str, list[NetTransition]] = {p: [] for p in self.places}
        for t in self.transitions:
            for arc in t.inputs:
                consumers.setdefault(arc.place, []).append(t)
        object.__setattr__(self, "_consumers", {p: tuple(ts) for p, ts in consumers.items()})

    @classmethod
    def build(cls, places: Iterable[str], transitions: Iterable[NetTransition]) -> Net:
        return cls(tuple(places), tuple(transitions))

    @property
    def initial_place(self) -> str | None:
        return self.places[0] if self.places else None

    def transition(self, name: str) -> NetTransition:
        return self._by_name[name]

    def consumers(self, place: str) -> tuple[NetTransition, ...]:
        """Transitions with an input arc from ``place``, in declaration order."""
        return self._consumers.get(place, ())

    def final_places(self) -> tuple[str, ...]:
        """Places with no outgoing transition."""
        return tuple(p for p in self.places if not self._consumers.get(p))
