"""Seed-style direct use without an engine: ``wf.add_token(...)`` and ``wf.fire(token, "submit")``.

Synchronous and in memory, for scripts and notebooks. ``fire`` fires exactly the named transition and does
not go on to fire what becomes enabled after it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .._construct import build
from ..errors import (
    ActionError,
    TransitionNotEnabledError,
    TransitionRejectedError,
    UnknownPlaceError,
    UnknownTransitionError,
)
from ..net import Marking, missing_tokens, select
from ..net import fire as net_fire
from ..token import HistoryEntry, Token, utcnow
from ._firing import action_failure, fired_entry, input_token, merge_result, post_check, pre_check, produce

if TYPE_CHECKING:
    from ._workflow import Workflow


def _markings(wf: Workflow) -> dict[str, Marking[Token]]:
    if wf._local is None:
        wf._local = {}
    markings: dict[str, Marking[Token]] = wf._local
    return markings


def _placed(wf: Workflow, token: Token) -> Token:
    """The token as it would sit in its place (the initial place when it names none), with a history."""
    cw = wf.compile()
    place = token.place or cw.initial_place
    if place not in cw.net.places:
        raise UnknownPlaceError(f"workflow {wf.name!r} has no place {place!r}", workflow=wf.name, place=place)
    data = cw.validate_data(token.data)
    placed = token.model_copy(update={"place": place, "data": data})
    if not placed.history:
        entry = build(
            HistoryEntry,
            time=utcnow(),
            kind="created",
            transition=None,
            from_places=(),
            to_places=(place,),
            actor=None,
            details={},
        )
        placed = placed.model_copy(update={"history": placed.history.append(entry)})
    return placed


def add_token(wf: Workflow, token: Token) -> Token:
    placed = _placed(wf, token)
    markings = _markings(wf)
    markings[placed.instance_id] = markings.get(placed.instance_id, Marking()).add(placed.place or "", placed)
    return placed


def tokens(wf: Workflow) -> list[Token]:
    return [t for m in _markings(wf).values() for t in m.tokens()]


def fire(wf: Workflow, token: Token, transition: str, *, actor: str | None = None) -> Token:
    cw = wf.compile()
    ct = cw.transitions.get(transition)
    if ct is None:
        raise UnknownTransitionError(wf.name, transition, list(cw.transitions))
    markings = _markings(wf)
    marking = markings.get(token.instance_id)
    if marking is None:
        # A token of an instance the workflow has not seen yet: place it first, as the seed did. It is kept
        # only if the firing succeeds.
        token = _placed(wf, token)
        marking = Marking[Token]().add(token.place or "", token)
    elif token not in marking.get_tokens(token.place or ""):
        raise TransitionNotEnabledError(
            wf.name,
            transition,
            token.instance_id,
            [f"token {token.id} is not in place {token.place!r} (already consumed by an earlier firing?)"],
        )
    if token.place not in ct.input_places:
        raise TransitionNotEnabledError(
            wf.name,
            transition,
            token.instance_id,
            [f"token is in {token.place!r}, the transition takes from {list(ct.input_places)}"],
        )
    missing = missing_tokens(ct.net, marking)
    if missing:
        raise TransitionNotEnabledError(wf.name, transition, token.instance_id, missing)
    consumed = select(ct.net, marking)
    # The caller's token is the one consumed from its place, whatever its age.
    place = token.place or ""
    others = tuple(t for t in marking.get_tokens(place) if t != token)
    consumed[place] = ((token,) + others)[: len(consumed[place])]
    view = input_token(ct, consumed)
    pre = pre_check(ct, view)
    if not pre.valid:
        raise TransitionNotEnabledError(wf.name, transition, token.instance_id, list(pre.errors))
    data = view.data
    if ct.handler is not None:
        try:
            result: object = ct.handler(view.with_data(dict(data)))
            if asyncio.iscoroutine(result):
                result = _run_coroutine(result)
        except Exception as err:
            raise action_failure(cw, ct, err, 1) from err
        data = merge_result(cw, ct, data, result)
    after = view if data is view.data else view.with_data(data)
    post = post_check(ct, after)
    if not post.valid:
        raise TransitionRejectedError(wf.name, transition, token.instance_id, list(post.errors))
    produced = produce(ct, view, data, fired_entry(ct, utcnow(), actor))
    markings[token.instance_id] = net_fire(ct.net, marking, consumed, produced)
    return next(iter(produced.values()))[0]


def _run_coroutine(coro: object) -> object:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    close = getattr(coro, "close", None)
    if close:
        close()
    raise ActionError(
        "wf.fire() cannot run an async action inside a running event loop; use Engine.fire() there", retryable=False
    )
