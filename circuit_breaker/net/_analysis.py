"""Structural analysis of a net: what can be reached, what can finish, what can never fire."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ._net import Net


@dataclass(frozen=True, slots=True)
class Analysis:
    reachable_places: frozenset[str]
    unreachable_places: tuple[str, ...]
    trap_places: tuple[str, ...]
    dead_transitions: tuple[str, ...]
    final_places: tuple[str, ...]


def analyse(net: Net) -> Analysis:
    """Over-approximate reachability from the initial place.

    A transition can fire only if every input place can be marked; its outputs then become markable. This
    ignores weights and token counts, so it never reports a live element as dead, though it can miss some
    dead ones. ``trap_places`` are markable places from which no final place can be reached.
    """
    if not net.places:
        return Analysis(frozenset(), (), (), tuple(t.name for t in net.transitions), ())
    reached = {net.places[0]}
    fired: set[str] = set()
    changed = True
    while changed:
        changed = False
        for t in net.transitions:
            if t.name in fired:
                continue
            if all(a.place in reached for a in t.inputs):
                fired.add(t.name)
                for a in t.outputs:
                    if a.place not in reached:
                        reached.add(a.place)
                changed = True
    finals = net.final_places()
    # Backwards: places from which some final place can be reached through transitions that can fire.
    can_finish = set(finals)
    queue = deque(finals)
    producers: dict[str, list[str]] = {}
    for t in net.transitions:
        if t.name not in fired:
            continue
        for out in t.outputs:
            producers.setdefault(out.place, []).extend(a.place for a in t.inputs)
    while queue:
        place = queue.popleft()
        for src in producers.get(place, ()):
            if src not in can_finish:
                can_finish.add(src)
                queue.append(src)
    return Analysis(
        reachable_places=frozenset(reached),
        unreachable_places=tuple(p for p in net.places if p not in reached),
        trap_places=tuple(p for p in net.places if p in reached and p not in can_finish),
        dead_transitions=tuple(t.name for t in net.transitions if t.name not in fired),
        final_places=finals,
    )
