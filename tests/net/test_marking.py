"""Markings are immutable values compared (and hashed) by content."""

from __future__ import annotations

import pytest

from circuit_breaker.net import Marking


def test_empty_places_are_dropped() -> None:
    m = Marking({"a": ("t1",), "b": ()})
    assert list(m) == ["a"]
    assert m == Marking({"a": ("t1",)})
    assert Marking({"a": ()}) == Marking()
    assert len(Marking()) == 0


def test_sequences_become_tuples() -> None:
    m = Marking({"a": ["t1", "t2"]})  # type: ignore[dict-item]
    assert m["a"] == ("t1", "t2")
    assert isinstance(m["a"], tuple)


def test_equal_content_means_equal_markings_with_equal_hashes() -> None:
    m1 = Marking({"a": ("t1", "t2"), "b": ("t3",)})
    m2 = Marking({"b": ["t3"], "a": ["t1", "t2"]})  # type: ignore[dict-item]
    assert m1 == m2
    assert m1 is not m2
    assert hash(m1) == hash(m2)
    assert len({m1, m2}) == 1
    assert {m1: "seen"}[m2] == "seen"


def test_markings_built_by_add_equal_markings_built_directly() -> None:
    built = Marking().add("a", "t1").add("b", "t2").add("a", "t3")
    assert built == Marking({"a": ("t1", "t3"), "b": ("t2",)})
    assert hash(built) == hash(Marking({"b": ("t2",), "a": ("t1", "t3")}))


@pytest.mark.parametrize(
    "other",
    [
        {"a": ("t1",)},
        {"a": ("t1", "t2", "t2")},
        {"b": ("t1", "t2")},
        {"a": ("t2", "t1")},  # order matters: the oldest token fires first
        {"a": ("t1", "t2"), "b": ("t3",)},
    ],
)
def test_different_content_means_different_markings(other: dict[str, tuple[str, ...]]) -> None:
    assert Marking({"a": ("t1", "t2")}) != Marking(other)


def test_a_marking_equals_a_plain_mapping_with_the_same_content() -> None:
    m = Marking({"a": ("t1",)})
    assert m == {"a": ("t1",)}
    assert m == {"a": ["t1"], "b": []}
    assert m != {"a": ("t2",)}
    assert m != "a"


def test_a_marking_cannot_be_changed_in_place() -> None:
    m = Marking({"a": ("t1",)})
    with pytest.raises(TypeError):
        m["a"] = ("t2",)  # type: ignore[index]
    with pytest.raises(TypeError):
        del m["a"]  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        m.extra = 1  # type: ignore[attr-defined]
    assert m == {"a": ("t1",)}


def test_changing_the_source_mapping_does_not_change_the_marking() -> None:
    source = {"a": ["t1"]}
    m = Marking(source)  # type: ignore[arg-type]
    source["a"].append("t2")
    source["b"] = ["t3"]
    assert m == {"a": ("t1",)}


def test_add_and_remove_return_new_markings_and_leave_the_old_one_alone() -> None:
    m = Marking({"a": ("t1", "t2")})
    added = m.add("a", "t3")
    removed = m.remove("a", "t1")
    emptied = m.remove("a", "t1", "t2")
    assert m == {"a": ("t1", "t2")}
    assert added == {"a": ("t1", "t2", "t3")}
    assert removed == {"a": ("t2",)}
    assert emptied == Marking()
    assert "a" not in emptied


def test_removing_a_token_that_is_not_there_raises() -> None:
    m = Marking({"a": ("t1",)})
    with pytest.raises((KeyError, ValueError)):
        m.remove("a", "t9")
    with pytest.raises((KeyError, ValueError)):
        m.remove("b", "t1")
    assert m == {"a": ("t1",)}


def test_counting_and_reading_tokens() -> None:
    m = Marking({"a": ("t1", "t2"), "b": ("t3",)})
    assert m.count("a") == 2
    assert m.count("zzz") == 0
    assert m.counts() == {"a": 2, "b": 1}
    assert m.total() == 3
    assert list(m.tokens()) == ["t1", "t2", "t3"]
    assert m.get_tokens("zzz") == ()
    assert m.get_tokens("a") == ("t1", "t2")
    with pytest.raises(KeyError):
        m["zzz"]
