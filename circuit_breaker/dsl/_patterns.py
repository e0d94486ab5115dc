"""Stage patterns: scatter, gather, broadcast and fork-join, built as Petri-net constructs.

- ``scatter(a >> b)``: one token per item of a list in the data goes to ``b``; the rest of the data waits in a
  hidden *parent* place. Items carry only ``{item_key: item}`` plus the keys named in ``carry``.
- ``gather(c >> d, of=scatter)``: a barrier that consumes the parent and every item of its group once all
  have arrived in ``c`` (or, after ``timeout``, at least ``min_results`` of them) and puts one token in ``d``
  with the parent's data and ``results`` (optionally grouped by a JSONPath: ``[{key, items}]``). Items that
  arrive after a partial gather are moved to a hidden ``<gather>_late`` place, so the instance can finish.
- ``broadcast(a >> b, executors=[...])``: the same input to several executors in parallel branches; with
  ``wait_for_all`` their outputs are joined under their branch names (b0, b1... for a list), otherwise the
  first to finish goes on.
- ``fork_join(a >> b, branches={"geo": ex1, "credit": ex2})``: named parallel branches whose outputs merge
  under their branch names.

Users add their own with ``Workflow.apply(pattern, ...)``: a pattern is any function that takes the
workflow first and builds places and flows with the public DSL (see ``executors/rate_limited.py``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any

from ..errors import DefinitionError, TemplateError
from ..token import Token, new_id
from ._place import Flow, Place

if TYPE_CHECKING:
    from ._transition import Action, Transition
    from ._workflow import Workflow

SCATTER_KEY = "_scatter"


def _one_to_one(flow: Flow, what: str) -> tuple[Place, Place]:
    if len(flow.sources) != 1 or len(flow.targets) != 1 or flow.sources[0][1] != 1 or flow.targets[0][1] != 1:
        raise DefinitionError(f"{what} takes one place to one place (a >> b), got {flow.default_name()}")
    return flow.sources[0][0], flow.targets[0][0]


def scatter(
    wf: Workflow,
    flow: Flow,
    name: str | None = None,
    *,
    items: str,
    item_key: str = "item",
    batch_size: int | None = None,
    max_parallel: int | None = None,
    carry: Sequence[str] = (),
    **flow_options: Any,
) -> Transition:
    """One token per item (or per batch of ``batch_size`` items) of the list at ``items`` (a field name,
    dotted path or JSONPath). ``max_parallel`` caps how many items the next transitions work on at once."""
    source, target = _one_to_one(flow, "scatter")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise DefinitionError(f"scatter {name or flow.default_name()!r}: batch_size must be a positive integer")
    if max_parallel is not None and (not isinstance(max_parallel, int) or max_parallel < 1):
        raise DefinitionError(f"scatter {name or flow.default_name()!r}: max_parallel must be a positive integer")
    tname = name or flow.default_name()
    parent = wf.state(f"{tname}_parent", desc=f"data waiting while {tname}'s items are worked on")
    transition = wf.flow(source >> (target, parent), tname, **flow_options)
    transition.variable_outputs = frozenset({target.name})

    def expand(view: Token, consumed: dict[str, tuple[Token, ...]]) -> dict[str, list[dict[str, Any]]]:
        from ..executors._template import lookup

        try:
            values = lookup(view.data, items)
        except TemplateError as err:
            raise TemplateError(f"scatter {tname!r}: {err}", field=err.field) from None
        if not isinstance(values, list):
            raise TemplateError(f"scatter {tname!r}: {items!r} is a {type(values).__name__}, not a list", field=items)
        if not values:
            raise TemplateError(f"scatter {tname!r}: {items!r} is an empty list, nothing to scatter", field=items)
        chunks: list[Any] = (
            values if batch_size is None else [values[i : i + batch_size] for i in range(0, len(values), batch_size)]
        )
        outer = view.data.get(SCATTER_KEY, [])
        group = new_id()[:16]
        total = len(chunks)
        carried = {k: view.data[k] for k in carry if k in view.data}
        item_tokens = [
            {
                **carried,
                item_key: chunk,
                SCATTER_KEY: [{"of": tname, "group": group, "index": i, "total": total}, *outer],
            }
            for i, chunk in enumerate(chunks)
        ]
        parent_data = {**view.data, SCATTER_KEY: [_frame(tname, group, total, at=time.time()), *outer]}
        return {target.name: item_tokens, parent.name: [parent_data]}

    transition.expand = expand
    if max_parallel is not None:
        _limit_consumers(wf, target, max_parallel)
    return transition


def _limit_consumers(wf: Workflow, place: Place, max_parallel: int) -> None:
    """Cap the transitions taking from ``place`` — declared now or later — at ``max_parallel`` actions."""
    wf._place_limits[place.name] = max_parallel


def gather(
    wf: Workflow,
    flow: Flow,
    name: str | None = None,
    *,
    of: Transition | None = None,
    results_key: str = "results",
    group_by: str | None = None,
    min_results: int | None = None,
    timeout: float | None = None,
    **flow_options: Any,
) -> Transition:
    """Wait until every item scattered by ``of`` reached the flow's source place, then continue with one token.

    With ``timeout`` (seconds since the scatter) the gather goes on with what has arrived once at least
    ``min_results`` items are there (default: all of them, so a timeout alone never drops results).
    """
    source, target = _one_to_one(flow, "gather")
    tname = name or flow.default_name()
    scatter_t = of if of is not None else _only_scatter(wf, tname)
    if timeout is not None and timeout <= 0:
        raise DefinitionError(f"gather {tname!r}: timeout must be positive")
    if min_results is not None and min_results < 1:
        raise DefinitionError(f"gather {tname!r}: min_results must be at least 1")
    barrier = _Barrier(scatter_t.name, wf.place(f"{scatter_t.name}_parent").name, source.name, timeout, min_results)
    transition = wf.flow((wf.place(barrier.parent), source) >> target, tname, **flow_options)
    transition.variable_inputs = frozenset({source.name})
    transition.collect = barrier.collect
    transition.expand = lambda view, consumed: {target.name: [barrier.merge(consumed, results_key, group_by)]}
    if timeout is None:
        return transition  # without a timeout every item is gathered: none can arrive late
    late = wf.state(f"{tname}_late", desc=f"items that reached {tname} after it had gathered their group")
    # Items of a group already gathered (after a timeout) have no parent any more: move them aside.
    drop = wf.flow(source >> late, f"{tname}_drop_late")
    drop.variable_inputs = frozenset({source.name})
    drop.variable_outputs = frozenset({late.name})
    drop.collect = barrier.collect_orphans
    drop.expand = lambda view, consumed: {late.name: [t.data for t in consumed[source.name]]}
    return transition


class _Barrier:
    """Which tokens a gather consumes: a parent and its whole group (or enough of it after the timeout)."""

    def __init__(self, of: str, parent: str, source: str, timeout: float | None, min_results: int | None) -> None:
        self.of, self.parent, self.source = of, parent, source
        self.timeout, self.min_results = timeout, min_results

    def frame(self, tok: Token) -> dict[str, Any] | None:
        frames = tok.data.get(SCATTER_KEY)
        if isinstance(frames, list) and frames and isinstance(frames[0], dict) and frames[0].get("of") == self.of:
            return frames[0]
        return None

    def collect(self, marking: Any, reserved: AbstractSet[Any], now: float) -> dict[str, tuple[Token, ...]] | None:
        arrived = marking.get_tokens(self.source)
        for parent_tok in marking.get_tokens(self.parent):
            head = self.frame(parent_tok)
            if head is None or parent_tok in reserved:
                continue
            total = int(head["total"])
            expired = self.timeout is not None and time.time() - float(head.get("at", 0)) >= self.timeout
            if len(arrived) < total and not expired:
                continue  # cheap: not even enough tokens in the place
            group = head["group"]
            mine = [t for t in arrived if t not in reserved and (self.frame(t) or {}).get("group") == group]
            if len(mine) == total or (expired and len(mine) >= (self.min_results or total)):
                mine.sort(key=lambda t: (self.frame(t) or {}).get("index", 0))
                return {self.parent: (parent_tok,), self.source: tuple(mine)}
        return None

    def next_check(self, marking: Any, now: float) -> float | None:
        """Seconds until the earliest waiting group times out (the engine wakes up then), or None."""
        if self.timeout is None:
            return None
        started = [float(h.get("at", 0)) for t in marking.get_tokens(self.parent) if (h := self.frame(t)) is not None]
        return max(0.0, min(started) + self.timeout - time.time()) if started else None

    def collect_orphans(
        self, marking: Any, reserved: AbstractSet[Any], now: float
    ) -> dict[str, tuple[Token, ...]] | None:
        open_groups = {h["group"] for t in marking.get_tokens(self.parent) if (h := self.frame(t)) is not None}
        orphans = tuple(
            t
            for t in marking.get_tokens(self.source)
            if t not in reserved and (f := self.frame(t)) is not None and f["group"] not in open_groups
        )
        return {self.source: orphans} if orphans else None

    def merge(self, consumed: dict[str, tuple[Token, ...]], results_key: str, group_by: str | None) -> dict[str, Any]:
        parent_tok = consumed[self.parent][0]
        results = [{k: v for k, v in t.data.items() if k != SCATTER_KEY} for t in consumed[self.source]]
        data = dict(parent_tok.data)
        outer = data.pop(SCATTER_KEY, [])[1:]
        if outer:
            data[SCATTER_KEY] = outer
        data[results_key] = _grouped(results, group_by) if group_by else results
        return data


def _frame(of: str, group: str, total: int, *, index: int | None = None, at: float | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"of": of, "group": group, "total": total}
    if index is not None:
        frame["index"] = index
    if at is not None:
        frame["parent"] = True
        frame["at"] = at
    return frame


def _only_scatter(wf: Workflow, gather_name: str) -> Transition:
    scatters = [t for t in wf.transitions if t.expand is not None and t.collect is None and t.variable_outputs]
    if len(scatters) != 1:
        names = [t.name for t in scatters]
        raise DefinitionError(
            f"gather {gather_name!r}: say which scatter it gathers with of=... (the workflow has {names or 'none'})",
            workflow=wf.name,
        )
    return scatters[0]


def _grouped(results: list[dict[str, Any]], group_by: str) -> list[dict[str, Any]]:
    from ..executors._template import lookup

    groups: dict[str, list[dict[str, Any]]] = {}
    keys: dict[str, Any] = {}
    for item in results:
        try:
            key = lookup(item, group_by)
        except TemplateError:
            key = None
        marker = repr(key)
        keys.setdefault(marker, key)
        groups.setdefault(marker, []).append(item)
    return [{"key": keys[m], "items": items} for m, items in groups.items()]


def fork_join(
    wf: Workflow,
    flow: Flow,
    name: str | None = None,
    *,
    branches: Mapping[str, Action | Any],
) -> list[Transition]:
    """Named parallel branches; each branch's output lands under its name, then they join."""
    source, target = _one_to_one(flow, "fork_join")
    tname = name or flow.default_name()
    if not branches:
        raise DefinitionError(f"fork_join {tname!r} needs at least one branch")
    starts = [wf.state(f"{tname}_{b}") for b in branches]
    ends = [wf.state(f"{tname}_{b}_done") for b in branches]
    made = [wf.flow(source >> tuple(starts), f"{tname}_fork")]
    for (branch, action), start, end in zip(branches.items(), starts, ends):
        made.append(wf.flow(start >> end, f"{tname}_{branch}", action=_nested(action, branch)))
    made.append(wf.flow(tuple(ends) >> target, f"{tname}_join"))
    return made


def broadcast(
    wf: Workflow,
    flow: Flow,
    name: str | None = None,
    *,
    executors: Sequence[Any] | Mapping[str, Any],
    wait_for_all: bool = True,
) -> list[Transition]:
    """The same input to several executors at once. With ``wait_for_all`` every output is kept under its
    branch name; otherwise the first to finish continues and the others' outputs are set aside."""
    named = dict(executors) if isinstance(executors, Mapping) else {f"b{i}": e for i, e in enumerate(executors)}
    if wait_for_all:
        return fork_join(wf, flow, name, branches=named)
    source, target = _one_to_one(flow, "broadcast")
    tname = name or flow.default_name()
    starts = [wf.state(f"{tname}_{b}") for b in named]
    arrived = wf.state(f"{tname}_arrived")
    gate = wf.state(f"{tname}_gate")
    late = wf.state(f"{tname}_late")
    made = [wf.flow(source >> (*starts, gate), f"{tname}_fork")]
    for (branch, action), start in zip(named.items(), starts):
        made.append(wf.flow(start >> arrived, f"{tname}_{branch}", action=_nested(action, branch)))
    # Declared first, so the first arrival takes the gate; later ones find it gone and are set aside.
    made.append(wf.flow((arrived, gate) >> target, f"{tname}_first"))
    made.append(wf.flow(arrived >> late, f"{tname}_late"))
    return made


def _nested(action: Any, key: str) -> Action:
    """An action whose output lands under ``key``: executors nest natively, callables get a wrapper."""
    if hasattr(action, "as_action"):
        nested: Action = action.as_action(into=key)
        return nested
    if not callable(action):
        raise DefinitionError(f"branch {key!r}: expected an executor or a function, got {action!r}")
    import inspect

    if inspect.iscoroutinefunction(action):

        async def run_async(token: Token) -> dict[str, Any]:
            return {key: await action(token)}

        return run_async

    def run(token: Token) -> dict[str, Any]:
        return {key: action(token)}

    return run
