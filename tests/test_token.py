"""Tokens are frozen values with an immutable, cheaply appendable history that exports and round-trips."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from circuit_breaker import History, HistoryEntry, Token


def entry(n: int, **kw: object) -> HistoryEntry:
    return HistoryEntry(kind="fired", transition=f"t{n}", **kw)  # type: ignore[arg-type]


def rich_entries() -> list[HistoryEntry]:
    """Entries that exercise every column: tuples of places, nested details, awkward strings, a timezone."""
    return [
        HistoryEntry(
            time=datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC),
            kind="created",
            to_places=("raw",),
        ),
        HistoryEntry(
            time=datetime(2024, 5, 1, 12, 0, 1, tzinfo=timezone(timedelta(hours=2))),
            kind="fired",
            transition="join",
            from_places=("left", "right"),
            to_places=("joined", "audit"),
            actor='alice, "the reviewer"\nsecond line',
            details={
                "score": 0.95,
                "count": 3,
                "ok": True,
                "nothing": None,
                "looks_like_yaml": "yes",
                "looks_like_null": "null",
                "looks_like_number": "1.0",
                "nested": {"items": [1, "two", {"three": [3.5]}], "empty": {}},
                "unicode": "naïve — ✓",
            },
        ),
        HistoryEntry(
            time=datetime(2024, 5, 1, 12, 0, 2, tzinfo=UTC),
            kind="rejected",
            transition="complete",
            from_places=("analyzed",),
            details={"errors": ["rule 'high_confidence' failed"]},
        ),
    ]


# -- Token ----------------------------------------------------------------------------------------------


def test_a_token_is_frozen() -> None:
    t = Token(data={"a": 1})
    with pytest.raises(ValidationError):
        t.place = "elsewhere"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        t.data = {}  # type: ignore[misc]
    assert t.place is None
    assert t.data == {"a": 1}


def test_a_token_refuses_unknown_fields() -> None:
    with pytest.raises(ValidationError):
        Token(data={}, colour="red")  # type: ignore[call-arg]


def test_new_tokens_get_distinct_ids_and_instances() -> None:
    a, b = Token(), Token()
    assert a.id != b.id
    assert a.instance_id != b.instance_id
    assert a.history == History()


def test_moved_gives_a_new_token_of_the_same_instance_with_one_more_entry() -> None:
    source = Token(place="raw", data={"n": 1}, history=History([entry(0)]))
    before = source.model_copy(deep=True)
    e = entry(1, from_places=("raw",), to_places=("done",))
    moved = source.moved("done", {"n": 2}, e)
    assert moved.id != source.id
    assert moved.instance_id == source.instance_id
    assert moved.place == "done"
    assert moved.data == {"n": 2}
    assert len(moved.history) == 2
    assert moved.history[-1] == e
    assert moved.history[0] == source.history[0]
    assert moved.updated_at == e.time
    # the source is unchanged
    assert source == before
    assert source.place == "raw"
    assert source.data == {"n": 1}
    assert len(source.history) == 1


def test_moving_the_same_token_twice_forks_its_history() -> None:
    source = Token(history=History([entry(0)]))
    left = source.moved("left", {}, entry(1))
    right = source.moved("right", {}, entry(2))
    assert [e.transition for e in left.history] == ["t0", "t1"]
    assert [e.transition for e in right.history] == ["t0", "t2"]
    assert [e.transition for e in source.history] == ["t0"]
    assert left.id != right.id


def test_a_token_round_trips_through_json_with_its_history() -> None:
    t = Token(place="raw", data={"n": 1, "nested": {"l": [1, 2]}}, history=History(rich_entries()))
    t2 = t.moved("processed", {"n": 2}, entry(9, from_places=("raw",), to_places=("processed",)))
    back = Token.model_validate_json(t2.model_dump_json())
    assert back == t2
    assert isinstance(back.history, History)
    assert list(back.history) == list(t2.history)
    assert back.history[1].from_places == ("left", "right")
    assert back.history[1].details["nested"] == {"items": [1, "two", {"three": [3.5]}], "empty": {}}


def test_a_token_json_form_has_the_history_as_a_list_of_entries() -> None:
    t = Token(history=History([entry(1)]))
    dumped = t.model_dump(mode="json")
    assert isinstance(dumped["history"], list)
    assert dumped["history"][0]["transition"] == "t1"
    assert Token.model_validate(dumped) == t


# -- History --------------------------------------------------------------------------------------------


def test_history_is_an_immutable_sequence() -> None:
    h = History([entry(0), entry(1)])
    with pytest.raises(TypeError):
        h[0] = entry(5)  # type: ignore[index]
    with pytest.raises(AttributeError):
        h.extra = 1  # type: ignore[attr-defined]
    with pytest.raises(ValidationError):
        h[0].kind = "changed"  # type: ignore[misc]


def test_building_a_history_copies_the_given_list() -> None:
    entries = [entry(0)]
    h = History(entries)
    entries.append(entry(1))
    assert len(h) == 1


def test_append_returns_a_new_history_and_leaves_the_old_one_alone() -> None:
    h0 = History()
    h1 = h0.append(entry(1))
    h2 = h1.append(entry(2))
    assert len(h0) == 0 and list(h0) == []
    assert [e.transition for e in h1] == ["t1"]
    assert [e.transition for e in h2] == ["t1", "t2"]


def test_appending_to_an_older_view_forks_without_changing_the_newer_one() -> None:
    h1 = History([entry(1)])
    h2 = h1.append(entry(2))
    h3 = h2.append(entry(3))
    fork = h1.append(entry(99))
    fork_of_h2 = h2.append(entry(42))
    assert [e.transition for e in h3] == ["t1", "t2", "t3"]
    assert [e.transition for e in h2] == ["t1", "t2"]
    assert [e.transition for e in fork] == ["t1", "t99"]
    assert [e.transition for e in fork_of_h2] == ["t1", "t2", "t42"]
    # and extending the fork leaves every other view alone too
    fork2 = fork.append(entry(100))
    assert [e.transition for e in fork2] == ["t1", "t99", "t100"]
    assert [e.transition for e in h3] == ["t1", "t2", "t3"]
    assert h3[-1].transition == "t3"
    assert h3[1:] == [h3[1], h3[2]]


def test_older_views_never_see_newer_entries_when_read_any_way() -> None:
    h1 = History([entry(1)])
    h1.append(entry(2)).append(entry(3))
    assert len(h1) == 1
    assert list(h1) == h1[:] == h1[0:10]
    assert [e.transition for e in h1[:]] == ["t1"]
    assert h1[-1].transition == "t1"
    with pytest.raises(IndexError):
        h1[1]
    assert h1 == History([h1[0]])


def test_append_to_the_newest_view_shares_storage() -> None:
    # O(1) amortised append: extending the newest view must not copy the entries (white-box check).
    h = History([entry(0)])
    first = h
    for i in range(1, 2000):
        h = h.append(entry(i))
    assert len(h) == 2000
    assert h._buf is first._buf
    assert [e.transition for e in h[-3:]] == ["t1997", "t1998", "t1999"]


def test_history_indexing_and_slicing() -> None:
    h = History([entry(i) for i in range(5)])
    assert h[0].transition == "t0"
    assert h[-1].transition == "t4"
    assert h[-5].transition == "t0"
    with pytest.raises(IndexError):
        h[5]
    with pytest.raises(IndexError):
        h[-6]
    assert [e.transition for e in h[1:3]] == ["t1", "t2"]
    assert [e.transition for e in h[::-2]] == ["t4", "t2", "t0"]
    assert [e.transition for e in h[-2:]] == ["t3", "t4"]
    assert h[10:] == []


def test_history_equality() -> None:
    fixed = datetime(2024, 1, 1, tzinfo=UTC)
    a = History([entry(1, time=fixed), entry(2, time=fixed)])
    b = History([entry(1, time=fixed)]).append(entry(2, time=fixed))
    assert a == b
    assert a == list(a)
    assert a == tuple(a)
    assert a != History([entry(1, time=fixed)])
    assert a != History([entry(1, time=fixed), entry(3, time=fixed)])
    assert History() == []


def test_equal_histories_hash_equal() -> None:
    fixed = datetime(2024, 1, 1, tzinfo=UTC)
    a = History([entry(1, time=fixed, details={"k": [1]})])
    b = History([entry(1, time=fixed, details={"k": [1]})])
    assert hash(a) == hash(b)


# -- exports --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "yaml", "csv"])
def test_history_exports_round_trip_exactly(fmt: str) -> None:
    h = History(rich_entries())
    text = getattr(h, f"to_{fmt}")()
    back = getattr(History, f"from_{fmt}")(text)
    assert back == h
    assert [e.model_dump() for e in back] == [e.model_dump() for e in h]
    assert back[1].from_places == ("left", "right")
    assert back[1].time.utcoffset() == timedelta(hours=2)
    assert back[1].details["nested"]["items"][2] == {"three": [3.5]}


@pytest.mark.parametrize("fmt", ["json", "yaml", "csv"])
def test_export_history_of_a_token_round_trips(fmt: str) -> None:
    t = Token(history=History(rich_entries()))
    text = t.export_history(fmt)
    assert text == getattr(t.history, f"to_{fmt}")()
    assert getattr(History, f"from_{fmt}")(text) == t.history


@pytest.mark.parametrize("fmt", ["json", "yaml", "csv"])
def test_an_empty_history_round_trips(fmt: str) -> None:
    text = Token().export_history(fmt)
    assert getattr(History, f"from_{fmt}")(text) == History()


def test_csv_has_a_header_and_one_row_per_entry() -> None:
    h = History(rich_entries()[:1] + rich_entries()[2:])
    lines = h.to_csv().splitlines()
    assert lines[0] == "time,kind,transition,from_places,to_places,actor,details"
    assert len(lines) == 3


def test_export_history_refuses_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="xml"):
        Token().export_history("xml")


def test_ids_are_32_random_hex_characters_never_repeated_also_across_a_fork() -> None:
    """Ids are made ahead in blocks; a forked child (a worker's subprocess, say) must not hand out the ids its
    parent still holds."""
    import os

    from circuit_breaker.token import new_id

    ids = [new_id() for _ in range(5_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids
        os.write(write, "".join(new_id() for _ in range(10)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        child = pipe.read()
    theirs = {child[i : i + 32] for i in range(0, len(child), 32)}
    mine = {new_id() for _ in range(10)}
    assert len(theirs) == 10 and not theirs & mine
