"""Property tests of the net core over many random nets and markings (seeded, so failures reproduce)."""

from __future__ import annotations

import random

import pytest

from circuit_breaker.net import (
    Arc,
    Marking,
    Net,
    NetTransition,
    enabled_transitions,
    fire,
    is_enabled,
    missing_tokens,
    select,
)

PLACES = ["p0", "p1", "p2", "p3", "p4"]
SEEDS = range(40)


def random_marking(rng: random.Random) -> dict[str, tuple[tuple[str, int], ...]]:
    """Up to four unique tokens in each of a random subset of places; tokens are (place, n)."""
    content = {}
    for place in rng.sample(PLACES, rng.randint(0, len(PLACES))):
        content[place] = tuple((place, n) for n in rng.sample(range(50), rng.randint(0, 4)))
    return content


def random_transition(rng: random.Random, name: str) -> NetTransition:
    def arcs() -> tuple[Arc, ...]:
        return tuple(Arc(p, rng.randint(1, 3)) for p in rng.sample(PLACES, rng.randint(1, 3)))

    return NetTransition(name, arcs(), arcs())


def random_net(rng: random.Random) -> Net:
    return Net.build(PLACES, [random_transition(rng, f"t{i}") for i in range(rng.randint(1, 6))])


@pytest.mark.parametrize("seed", SEEDS)
def test_marking_equality_and_hash_do_not_depend_on_insertion_order(seed: int) -> None:
    content = random_marking(random.Random(seed))
    forward = Marking(content)
    backward = Marking(dict(reversed(list(content.items()))))
    assert forward == backward
    assert hash(forward) == hash(backward)
    assert forward.total() == sum(len(ts) for ts in content.values())


@pytest.mark.parametrize("seed", SEEDS)
def test_enabled_transitions_are_exactly_the_enabled_ones_in_declaration_order(seed: int) -> None:
    rng = random.Random(seed)
    net = random_net(rng)
    for _ in range(5):
        m = Marking(random_marking(rng))
        assert enabled_transitions(net, m) == [t for t in net.transitions if is_enabled(t, m)]
        for t in net.transitions:
            assert is_enabled(t, m) == (missing_tokens(t, m) == [])


@pytest.mark.parametrize("seed", SEEDS)
def test_firing_what_select_chose_moves_exactly_the_arc_weights(seed: int) -> None:
    rng = random.Random(seed)
    net = random_net(rng)
    for _ in range(5):
        m = Marking(random_marking(rng))
        before = Marking(dict(m))
        for t in enabled_transitions(net, m):
            consumed = select(t, m)
            produced = {a.place: tuple(("new", f"{t.name}-{i}") for i in range(a.weight)) for a in t.outputs}
            after = fire(t, m, consumed, produced)
            assert m == before  # firing never changes its input
            moved = sum(a.weight for a in t.outputs) - sum(a.weight for a in t.inputs)
            assert after.total() == m.total() + moved
            for arc in t.inputs:
                # the oldest tokens went ...
                assert consumed[arc.place] == m.get_tokens(arc.place)[: arc.weight]
            for place in PLACES:
                # ... and the rest kept their order, with the new ones after them
                kept = [tok for tok in after.get_tokens(place) if tok[0] != "new"]
                gone = set(consumed.get(place, ()))
                assert kept == [tok for tok in m.get_tokens(place) if tok not in gone]
                assert list(after.get_tokens(place)[len(kept) :]) == list(produced.get(place, ()))
