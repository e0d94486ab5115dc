"""Structural analysis: unreachable places, trap places (no path to a final place), dead transitions."""

from __future__ import annotations

from circuit_breaker.net import Arc, Net, NetTransition, analyse


def T(name: str, inputs: list[str], outputs: list[str]) -> NetTransition:
    return NetTransition(name, tuple(Arc(p) for p in inputs), tuple(Arc(p) for p in outputs))


def test_a_sound_linear_net_has_no_findings() -> None:
    net = Net.build(["a", "b", "c"], [T("ab", ["a"], ["b"]), T("bc", ["b"], ["c"])])
    result = analyse(net)
    assert result.reachable_places == frozenset({"a", "b", "c"})
    assert result.unreachable_places == ()
    assert result.trap_places == ()
    assert result.dead_transitions == ()
    assert result.final_places == ("c",)


def test_places_with_no_incoming_path_are_unreachable_and_their_transitions_dead() -> None:
    net = Net.build(
        ["start", "end", "orphan", "after_orphan"],
        [T("finish", ["start"], ["end"]), T("orphan_go", ["orphan"], ["after_orphan"])],
    )
    result = analyse(net)
    assert result.unreachable_places == ("orphan", "after_orphan")
    assert result.dead_transitions == ("orphan_go",)
    assert "orphan" not in result.reachable_places
    # unreachable places are not reported as traps as well
    assert result.trap_places == ()


def test_a_cycle_without_an_exit_is_a_trap() -> None:
    net = Net.build(
        ["start", "loop_a", "loop_b", "end"],
        [
            T("enter", ["start"], ["loop_a"]),
            T("spin", ["loop_a"], ["loop_b"]),
            T("back", ["loop_b"], ["loop_a"]),
            T("finish", ["start"], ["end"]),
        ],
    )
    result = analyse(net)
    assert result.trap_places == ("loop_a", "loop_b")
    assert result.unreachable_places == ()
    assert result.dead_transitions == ()


def test_a_net_whose_every_place_has_an_exit_has_no_final_place_and_all_are_traps() -> None:
    net = Net.build(["a", "b"], [T("ab", ["a"], ["b"]), T("ba", ["b"], ["a"])])
    result = analyse(net)
    assert result.final_places == ()
    assert result.trap_places == ("a", "b")


def test_a_join_with_an_unreachable_input_is_dead_and_starves_its_output() -> None:
    net = Net.build(
        ["a", "b", "never", "joined", "end"],
        [T("ab", ["a"], ["b"]), T("join", ["b", "never"], ["joined"]), T("out", ["b"], ["end"])],
    )
    result = analyse(net)
    assert result.dead_transitions == ("join",)
    assert result.unreachable_places == ("never", "joined")
    assert result.trap_places == ()


def test_a_fork_reaches_both_branches_and_a_join_completes_them() -> None:
    net = Net.build(
        ["a", "b", "c", "d"],
        [T("fork", ["a"], ["b", "c"]), T("join", ["b", "c"], ["d"])],
    )
    result = analyse(net)
    assert result.reachable_places == frozenset("abcd")
    assert result.trap_places == ()
    assert result.dead_transitions == ()


def test_a_place_that_only_leads_into_a_trap_is_a_trap_too() -> None:
    net = Net.build(
        ["start", "doomed", "pit", "end"],
        [
            T("go_bad", ["start"], ["doomed"]),
            T("fall", ["doomed"], ["pit"]),
            T("stuck", ["pit"], ["pit"]),
            T("finish", ["start"], ["end"]),
        ],
    )
    assert analyse(net).trap_places == ("doomed", "pit")


def test_an_empty_net() -> None:
    result = analyse(Net.build([], []))
    assert result.reachable_places == frozenset()
    assert result.unreachable_places == ()
    assert result.dead_transitions == ()
