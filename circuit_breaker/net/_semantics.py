"""Enabling and firing as pure functions of a transition and a marking (after pm4py's semantics)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import TypeVar

from ._marking import Marking
from ._net import Net, NetTransition

T = TypeVar("T")


def missing_tokens(transition: NetTransition, marking: Marking[T], excluded: AbstractSet[T] = frozenset()) -> list[str]:
    """Why ``transition`` is not enabled: one message per input place short of tokens; empty when enabled."""
    problems = []
    for arc in transition.inputs:
        have = marking.get_tokens(arc.place)
        n = len(have) if not excluded else sum(1 for t in have if t not in excluded)
        if n < arc.weight:
            problems.append(f"needs {arc.weight} token(s) in {arc.place!r}, has {n}")
    return problems


def is_enabled(transition: NetTransition, marking: Marking[T], excluded: AbstractSet[T] = frozenset()) -> bool:
    """True when every input place holds at least its arc's weight of tokens (not counting ``excluded``)."""
    get = marking.get_tokens
    if not excluded:
        for arc in transition.inputs:
            if len(get(arc.place)) < arc.weight:
                return False
        return True
    n_excluded = len(excluded)
    for arc in transition.inputs:
        have = get(arc.place)
        # Cheap when few tokens are excluded among many (a scatter's items with a handful in flight).
        if len(have) - n_excluded >= arc.weight:
            continue
        if sum(1 for t in have if t not in excluded) < arc.weight:
            return False
    return True


def enabled_transitions(net: Net, marking: Marking[T]) -> list[NetTransition]:
    """Enabled transitions in declaration order; looks only at consumers of marked places."""
    seen: set[str] = set()
    out = []
    for place in marking:
        for t in net.consumers(place):
            if t.name not in seen:
                seen.add(t.name)
                if is_enabled(t, marking):
                    out.append(t)
    order = {t.name: i for i, t in enumerate(net.transitions)}
    out.sort(key=lambda t: order[t.name])
    return out


def select(
    transition: NetTransition, marking: Marking[T], excluded: AbstractSet[T] = frozenset()
) -> dict[str, tuple[T, ...]]:
    """The tokens a firing would consume: the oldest ``weight`` tokens of each input place (FIFO)."""
    chosen: dict[str, tuple[T, ...]] = {}
    for arc in transition.inputs:
        have = marking.get_tokens(arc.place)
        if excluded:
            have = tuple(t for t in have if t not in excluded)
        if len(have) < arc.weight:
            raise ValueError(f"transition {transition.name!r} is not enabled: {arc.place!r} has {len(have)} token(s)")
        chosen[arc.place] = have[: arc.weight]
    return chosen


def fire(
    transition: NetTransition,
    marking: Marking[T],
    consumed: Mapping[str, Sequence[T]],
    produced: Mapping[str, Sequence[T]],
) -> Marking[T]:
    """The marking after ``transition`` consumes ``consumed`` and produces ``produced``.

    Checks the firing against the arcs: each input place gives up exactly its weight, each output place
    receives exactly its weight, and every consumed token was in the marking. The input marking is unchanged.
    """
    ins, outs = transition.inputs, transition.outputs
    if len(ins) == 1 and len(outs) == 1 and len(consumed) == 1 and len(produced) == 1:
        # The common sequence step, one token in and one out: same checks, less work.
        arc_in, arc_out = ins[0], outs[0]
        take = consumed.get(arc_in.place)
        give = produced.get(arc_out.place)
        current = marking._places.get(arc_in.place, ())
        if (
            take is not None
            and give is not None
            and arc_in.weight == len(take) == 1
            and arc_out.weight == len(give) == 1
            and current
            and current[0] is take[0]
        ):
            places = dict(marking._places)
            if len(current) > 1:
                places[arc_in.place] = current[1:]
            else:
                del places[arc_in.place]
            places[arc_out.place] = places.get(arc_out.place, ()) + tuple(give)
            return Marking._of(places)
    if len(consumed) > len(transition.inputs) or len(produced) > len(transition.outputs):
        inputs = {a.place for a in transition.inputs}
        outputs = {a.place for a in transition.outputs}
        stray = sorted(set(consumed) - inputs) + sorted(set(produced) - outputs)
        raise ValueError(f"transition {transition.name!r} has no arc to place(s) {stray}")
    places = dict(marking._places)
    for arc in transition.inputs:
        take = consumed.get(arc.place, ())
        if len(take) != arc.weight and not (arc.variable and len(take) >= arc.weight):
            raise ValueError(f"transition {transition.name!r} must consume {arc.weight} from {arc.place!r}")
        current = places.get(arc.place, ())
        if len(take) == 1 and current and current[0] is take[0]:
            rest = current[1:]
        else:
            lst = list(current)
            for tok in take:
                lst.remove(tok)
            rest = tuple(lst)
        if rest:
            places[arc.place] = rest
        else:
            places.pop(arc.place, None)
    for arc in transition.outputs:
        give = tuple(produced.get(arc.place, ()))
        if len(give) != arc.weight and not arc.variable:
            raise ValueError(f"transition {transition.name!r} must produce {arc.weight} into {arc.place!r}")
        if give:
            places[arc.place] = places.get(arc.place, ()) + give
    return Marking._of(places)
