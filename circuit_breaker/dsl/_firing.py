"""The steps of one firing, shared by the engine and by seed-style ``wf.fire``.

Order (design §3): inputs are merged, validations and guards are checked, the action runs, its result
merges into the data, the rules judge the result, and only then are output tokens made.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .._construct import build
from ..errors import ActionError, TokenDataError
from ..rules import RuleResult
from ..rules._result import _OK
from ..token import HistoryEntry, Token
from ._data import json_problem

if TYPE_CHECKING:
    from ._compiled import CompiledTransition, CompiledWorkflow


def input_token(ct: CompiledTransition, consumed: dict[str, tuple[Token, ...]]) -> Token:
    """The token the policy and action see: the consumed token itself, or for a join (or weight > 1) a view
    whose data merges every consumed token's data in input order (a later input wins on the same key)."""
    if len(consumed) == 1:
        (tokens,) = consumed.values()
        if len(tokens) == 1:
            return tokens[0]
    if ct.expand is not None:
        # Stage patterns read the consumed tokens themselves; the view is the first input's first token.
        return consumed[ct.input_places[0]][0]
    merged: dict[str, Any] = {}
    first: Token | None = None
    for place in ct.input_places:
        for tok in consumed.get(place, ()):
            if first is None:
                first = tok
            merged.update(tok.data)
    assert first is not None  # a transition has at least one input arc
    return first.with_data(merged)


def pre_check(ct: CompiledTransition, token: Token) -> RuleResult:
    """Validations and guards: whether the transition is enabled for this data."""
    validations, guards = ct.validations, ct.guards
    if validations.all or validations.any:
        res = validations.evaluate(token)
        if guards.all or guards.any:
            res = res & guards.evaluate(token)
        return res
    if guards.all or guards.any:
        return guards.evaluate(token)
    return _OK


def post_check(ct: CompiledTransition, token: Token) -> RuleResult:
    rules = ct.rules
    return rules.evaluate(token) if rules.all or rules.any else _OK


def action_failure(cw: CompiledWorkflow, ct: CompiledTransition, err: BaseException, attempts: int) -> ActionError:
    if isinstance(err, ActionError):
        return err
    retryable = getattr(err, "retryable", True) and not isinstance(err, TokenDataError)
    return ActionError(
        f"action of transition {ct.name!r} in workflow {cw.name!r} failed: {type(err).__name__}: {err}",
        workflow=cw.name,
        transition=ct.name,
        attempts=attempts,
        retryable=bool(retryable),
    )


async def run_action(ct: CompiledTransition, token: Token) -> Any:
    """Run the action once. Sync actions run in a worker thread so they cannot stall the event loop."""
    handler = ct.handler
    assert handler is not None
    if ct.is_async:
        return await handler(token)  # type: ignore[misc]
    result = await asyncio.to_thread(handler, token)
    if asyncio.iscoroutine(result):
        return await result
    return result


def merge_result(cw: CompiledWorkflow, ct: CompiledTransition, data: dict[str, Any], result: Any) -> dict[str, Any]:
    """The data after the action: the result's top-level keys replace the data's. Raises TokenDataError."""
    if result is None:
        return data
    if not isinstance(result, dict):
        raise TokenDataError(
            f"action of transition {ct.name!r} in workflow {cw.name!r} returned {type(result).__name__}, "
            "expected a dict (or None)",
            workflow=cw.name,
        )
    if not result:
        return data
    problem = json_problem(result, "result")
    if problem:
        raise TokenDataError(f"action of transition {ct.name!r} in workflow {cw.name!r}: {problem}", workflow=cw.name)
    merged = {**data, **result}
    if cw.token_model is not None:
        merged = cw.validate_data(merged)
    return merged


def fired_entry(ct: CompiledTransition, time: datetime, actor: str | None) -> HistoryEntry:
    """The history entry a firing adds to every token it produces."""
    return build(
        HistoryEntry,
        time=time,
        kind="fired",
        transition=ct.name,
        from_places=ct.input_places,
        to_places=ct.output_places,
        actor=actor,
        details={},
    )


def produce(
    ct: CompiledTransition,
    source: Token,
    data: dict[str, Any],
    entry: HistoryEntry,
    *,
    places: tuple[str, ...] | None = None,
    weights: dict[str, int] | None = None,
    expanded: dict[str, list[dict[str, Any]]] | None = None,
) -> dict[str, tuple[Token, ...]]:
    """Output tokens per output place (or per ``places``, for a move to an error place); ``expanded`` (a scatter's
    data per output place, from ``ct.expand``) gives one token per item instead."""
    if expanded is not None:
        return {place: tuple(source.moved(place, d, entry) for d in datas) for place, datas in expanded.items()}
    out: dict[str, tuple[Token, ...]] = {}
    if places is None:
        outputs = ct.net.outputs
        if len(outputs) == 1 and outputs[0].weight == 1:  # the common case, kept cheap
            place = outputs[0].place
            return {place: (source.moved(place, data, entry),)}
        for arc in outputs:
            out[arc.place] = tuple(source.moved(arc.place, data, entry) for _ in range(arc.weight))
    else:
        for place in places:
            n = (weights or {}).get(place, 1)
            out[place] = tuple(source.moved(place, data, entry) for _ in range(n))
    return out


def to_error_place(
    ct: CompiledTransition, view: Token, data: dict[str, Any], error: dict[str, Any], now: datetime
) -> list[Token]:
    """The tokens a failed firing puts in ``ct``'s error place: the input data with ``_error`` added."""
    assert ct.error_place is not None
    entry = build(
        HistoryEntry,
        time=now,
        kind="failed",
        transition=ct.name,
        from_places=ct.input_places,
        to_places=(ct.error_place,),
        actor=None,
        details={"error": error},
    )
    moved = produce(ct, view, {**data, "_error": error}, entry, places=(ct.error_place,))
    return [t for ts in moved.values() for t in ts]
