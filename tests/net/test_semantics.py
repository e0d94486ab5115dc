"""Enabling and firing as pure functions: weights, FIFO selection, exclusions, count checks."""

from __future__ import annotations

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


def T(name: str, inputs: dict[str, int], outputs: dict[str, int]) -> NetTransition:
    return NetTransition(
        name, tuple(Arc(p, w) for p, w in inputs.items()), tuple(Arc(p, w) for p, w in outputs.items())
    )


PAIR = T("pair", {"a": 2}, {"b": 1})
JOIN = T("join", {"b": 1, "c": 1}, {"d": 1})
FORK = T("fork", {"a": 1}, {"b": 1, "c": 1})


# -- arcs and nets --------------------------------------------------------------------------------------


@pytest.mark.parametrize("weight", [0, -1])
def test_arc_weight_must_be_positive(weight: int) -> None:
    with pytest.raises(ValueError, match="'a'"):
        Arc("a", weight)


def test_net_structure_queries() -> None:
    net = Net.build(["a", "b", "c", "d"], [FORK, JOIN])
    assert net.initial_place == "a"
    assert net.final_places() == ("d",)
    assert net.transition("join") is JOIN
    assert net.consumers("b") == (JOIN,)
    assert net.consumers("d") == ()
    with pytest.raises(KeyError):
        net.transition("nope")
    assert Net.build([], []).initial_place is None


# -- enabling -------------------------------------------------------------------------------------------


def test_a_weight_two_arc_needs_two_tokens() -> None:
    assert not is_enabled(PAIR, Marking({"a": ("t1",)}))
    assert is_enabled(PAIR, Marking({"a": ("t1", "t2")}))
    assert is_enabled(PAIR, Marking({"a": ("t1", "t2", "t3")}))


def test_missing_tokens_says_which_place_is_short_and_by_how_much() -> None:
    assert missing_tokens(PAIR, Marking({"a": ("t1",)})) == ["needs 2 token(s) in 'a', has 1"]
    assert missing_tokens(PAIR, Marking({"a": ("t1", "t2")})) == []
    problems = missing_tokens(JOIN, Marking())
    assert len(problems) == 2
    assert "'b'" in problems[0] and "'c'" in problems[1]


def test_a_join_needs_a_token_in_every_input() -> None:
    assert not is_enabled(JOIN, Marking({"b": ("t1",)}))
    assert not is_enabled(JOIN, Marking({"c": ("t1",)}))
    assert is_enabled(JOIN, Marking({"b": ("t1",), "c": ("t2",)}))


def test_excluded_tokens_are_not_counted() -> None:
    m = Marking({"a": ("t1", "t2", "t3")})
    assert is_enabled(PAIR, m, frozenset({"t1"}))
    assert not is_enabled(PAIR, m, frozenset({"t1", "t3"}))
    assert missing_tokens(PAIR, m, frozenset({"t1", "t3"})) == ["needs 2 token(s) in 'a', has 1"]


# -- selection ------------------------------------------------------------------------------------------


def test_select_takes_the_oldest_tokens_first() -> None:
    m = Marking({"a": ("t1", "t2", "t3")})
    assert select(PAIR, m) == {"a": ("t1", "t2")}


def test_select_skips_excluded_tokens() -> None:
    m = Marking({"a": ("t1", "t2", "t3")})
    assert select(PAIR, m, frozenset({"t1"})) == {"a": ("t2", "t3")}


def test_select_picks_one_per_input_of_a_join() -> None:
    m = Marking({"b": ("b1", "b2"), "c": ("c1",)})
    assert select(JOIN, m) == {"b": ("b1",), "c": ("c1",)}


def test_select_refuses_when_not_enabled() -> None:
    with pytest.raises(ValueError, match="pair"):
        select(PAIR, Marking({"a": ("t1",)}))
    with pytest.raises(ValueError):
        select(PAIR, Marking({"a": ("t1", "t2")}), frozenset({"t2"}))


# -- firing ---------------------------------------------------------------------------------------------


def test_fire_consumes_the_selected_and_produces_a_new_marking() -> None:
    m = Marking({"a": ("t1", "t2", "t3")})
    after = fire(PAIR, m, select(PAIR, m), {"b": ("n1",)})
    assert after == {"a": ("t3",), "b": ("n1",)}
    assert m == {"a": ("t1", "t2", "t3")}  # the old marking is unchanged
    assert after is not m


def test_fire_appends_produced_tokens_after_older_ones() -> None:
    m = Marking({"a": ("t1", "t2"), "b": ("old",)})
    after = fire(PAIR, m, {"a": ("t1", "t2")}, {"b": ("new",)})
    assert after["b"] == ("old", "new")
    assert select(T("next", {"b": 1}, {"x": 1}), after) == {"b": ("old",)}


def test_fire_empties_a_place_completely() -> None:
    m = Marking({"a": ("t1",)})
    after = fire(FORK, m, {"a": ("t1",)}, {"b": ("b1",), "c": ("c1",)})
    assert after == Marking({"b": ("b1",), "c": ("c1",)})
    assert "a" not in after
    assert hash(after) == hash(Marking({"c": ("c1",), "b": ("b1",)}))


def test_fire_can_consume_tokens_that_are_not_the_oldest() -> None:
    m = Marking({"a": ("t1", "t2", "t3")})
    after = fire(PAIR, m, {"a": ("t3", "t1")}, {"b": ("n",)})
    assert after["a"] == ("t2",)


@pytest.mark.parametrize("consumed", [{"a": ("t1",)}, {"a": ("t1", "t2", "t3")}, {}])
def test_fire_refuses_the_wrong_number_of_consumed_tokens(consumed: dict[str, tuple[str, ...]]) -> None:
    m = Marking({"a": ("t1", "t2", "t3")})
    with pytest.raises(ValueError, match="consume"):
        fire(PAIR, m, consumed, {"b": ("n",)})
    assert m == {"a": ("t1", "t2", "t3")}


@pytest.mark.parametrize("produced", [{}, {"b": ()}, {"b": ("n1", "n2")}])
def test_fire_refuses_the_wrong_number_of_produced_tokens(produced: dict[str, tuple[str, ...]]) -> None:
    m = Marking({"a": ("t1", "t2")})
    with pytest.raises(ValueError, match="produce"):
        fire(PAIR, m, {"a": ("t1", "t2")}, produced)
    assert m == {"a": ("t1", "t2")}


def test_fire_refuses_to_consume_a_token_that_is_not_there() -> None:
    m = Marking({"a": ("t1", "t2")})
    with pytest.raises(ValueError):
        fire(PAIR, m, {"a": ("t1", "ghost")}, {"b": ("n",)})
    with pytest.raises(ValueError):
        fire(PAIR, m, {"a": ("t1", "t1")}, {"b": ("n",)})
    with pytest.raises(ValueError):
        fire(FORK, Marking({"a": ("t1",)}), {"a": ("other",)}, {"b": ("b",), "c": ("c",)})


def test_fire_refuses_tokens_for_places_without_an_arc() -> None:
    # Tokens "produced" into a place the transition has no arc to would silently vanish.
    m = Marking({"a": ("t1", "t2")})
    with pytest.raises(ValueError):
        fire(PAIR, m, {"a": ("t1", "t2")}, {"b": ("n",), "elsewhere": ("lost",)})
    with pytest.raises(ValueError):
        fire(PAIR, Marking({"a": ("t1", "t2"), "x": ("x1",)}), {"a": ("t1", "t2"), "x": ("x1",)}, {"b": ("n",)})


def test_fire_with_a_weighted_output_produces_that_many() -> None:
    split = T("split", {"a": 1}, {"b": 3})
    after = fire(split, Marking({"a": ("t",)}), {"a": ("t",)}, {"b": ("x", "y", "z")})
    assert after.count("b") == 3


# -- enabled_transitions --------------------------------------------------------------------------------


def test_enabled_transitions_come_in_declaration_order() -> None:
    t_c = T("from_c", {"c": 1}, {"x": 1})
    t_a = T("from_a", {"a": 1}, {"x": 1})
    t_b = T("from_b", {"b": 1}, {"x": 1})
    t_a2 = T("from_a_again", {"a": 1}, {"y": 1})
    net = Net.build(["a", "b", "c", "x", "y"], [t_c, t_a, t_b, t_a2])
    m = Marking({"a": ("1",), "b": ("2",), "c": ("3",)})  # marked in a different order
    assert [t.name for t in enabled_transitions(net, m)] == ["from_c", "from_a", "from_b", "from_a_again"]


def test_enabled_transitions_excludes_those_short_of_tokens() -> None:
    net = Net.build(["a", "b", "c", "d"], [PAIR, JOIN, FORK])
    m = Marking({"a": ("t1",), "b": ("t2",)})
    assert [t.name for t in enabled_transitions(net, m)] == ["fork"]
    assert enabled_transitions(net, Marking()) == []


def test_enabled_transitions_lists_each_join_once() -> None:
    net = Net.build(["b", "c", "d"], [JOIN])
    assert enabled_transitions(net, Marking({"b": ("1",), "c": ("2",)})) == [JOIN]


def test_a_net_refuses_a_transition_without_inputs() -> None:
    # It would be enabled for ever; instances are started by the engine instead.
    source = T("source", {}, {"a": 1})
    with pytest.raises(ValueError, match="source"):
        Net.build(["a"], [source])
