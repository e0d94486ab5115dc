"""The engine's fast constructors must give the same models validation would."""

from __future__ import annotations

from circuit_breaker._construct import build
from circuit_breaker.events import TransitionFired, parse_event
from circuit_breaker.token import History, HistoryEntry, Token, utcnow


def test_built_models_equal_validated_ones_and_behave_like_them() -> None:
    now = utcnow()
    entry = build(
        HistoryEntry,
        time=now,
        kind="fired",
        transition="t",
        from_places=("a",),
        to_places=("b",),
        actor=None,
        details={},
    )
    assert entry == HistoryEntry(time=now, kind="fired", transition="t", from_places=("a",), to_places=("b",))
    token = build(
        Token,
        id="x",
        instance_id="i",
        place="b",
        data={"k": 1},
        created_at=now,
        updated_at=now,
        history=History([entry]),
    )
    assert token == Token.model_validate_json(token.model_dump_json())
    # model_copy with an update must not leak into other built instances (they share a fields-set).
    other = build(Token, id="y", instance_id="i", place="b", data={}, created_at=now, updated_at=now, history=History())
    changed = token.model_copy(update={"place": "c"})
    assert changed.place == "c" and token.place == "b" and other.model_fields_set == token.model_fields_set
    event = build(
        TransitionFired,
        workflow="w",
        instance_id="i",
        seq=2,
        time=now,
        actor=None,
        type="transition_fired",
        transition="t",
        consumed=["a1"],
        produced=[token],
        task_id=None,
    )
    text = event.model_dump_json()
    assert parse_event(text).model_dump_json() == text
