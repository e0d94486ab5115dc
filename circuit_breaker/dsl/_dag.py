"""DAG workflows: tasks with dependencies, built into a Petri net of forks and instance-scoped joins.

    wf = dag("report", [
        Task("fetch", fetch),
        Task("stats", stats, depends_on=["fetch"]),
        Task("chart", chart, depends_on=["fetch"]),
        Task("publish", publish, depends_on=["stats", "chart"]),
    ])

The net: the initial place ``start``; one transition per task (named after the task); one place per
dependency edge (``fetch_to_stats``), so a task with several dependents forks a token to each and a task
with several dependencies is a join that waits for a token of the same instance from each; the final place
``done`` after the sink tasks. Several root tasks get a ``begin`` transition forking ``start`` to them; several
sink tasks get a ``finish`` transition joining them into ``done``.

Outputs: a task's result is stored under its own name (``data["stats"]``), so parallel branches never
overwrite each other and a join sees every dependency's output. ``Task(..., flat=True)`` merges the result's
keys into the data instead; a join then merges its dependencies in ``depends_on`` order, the later one
winning on a clash. Input data keyed by a task's name is replaced by that task's output; a task whose action
returns None (or has no action) records nothing.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import DefinitionError, DuplicateNameError
from ..retry import RetryPolicy
from ..rules import Policy, RuleSet
from ..rules._policy import PolicyValue
from ._compiled import is_async_callable
from ._place import Flow, Place
from ._workflow import Workflow, check_name

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = ["Task", "dag"]

START, DONE = "start", "done"
BEGIN, FINISH = "begin", "finish"


class Task:
    """One task of a DAG: an action (a function ``(token) -> dict | None``, sync or async, or an executor;
    none just marks a point to wait at), the tasks it waits for, and the policies of its transition."""

    __slots__ = ("action", "depends_on", "desc", "flat", "name", "retry", "rules", "timeout", "validations")

    _KEYS = ("name", "action", "depends_on", "validations", "rules", "retry", "timeout", "flat", "desc")

    def __init__(
        self,
        name: str,
        action: Any = None,
        depends_on: Sequence[str] | str = (),
        *,
        validations: PolicyValue | Policy = None,
        rules: PolicyValue | Policy = None,
        retry: RetryPolicy | int | None = None,
        timeout: float | None = None,
        flat: bool = False,
        desc: str = "",
    ) -> None:
        self.name = name
        self.action = action
        self.depends_on: tuple[str, ...] = (depends_on,) if isinstance(depends_on, str) else tuple(depends_on)
        self.validations = validations
        self.rules = rules
        self.retry = retry
        self.timeout = timeout
        self.flat = flat
        self.desc = desc

    @classmethod
    def of(cls, value: Task | Mapping[str, Any], index: int) -> Task:
        """A Task from a Task or a dict with Task's keyword names (``tasks[i]`` names a bad one)."""
        if isinstance(value, Task):
            return value
        if not isinstance(value, Mapping):
            raise DefinitionError(f"tasks[{index}]: expected a Task or a dict, got {type(value).__name__}")
        unknown = [k for k in value if k not in cls._KEYS]
        if unknown:
            raise DefinitionError(
                f"tasks[{index}]: unknown key(s) {', '.join(map(repr, unknown))} (a task takes: {', '.join(cls._KEYS)})"
            )
        if "name" not in value:
            raise DefinitionError(f"tasks[{index}]: a task needs a 'name'")
        return cls(**value)

    def __repr__(self) -> str:
        deps = f", depends_on={list(self.depends_on)}" if self.depends_on else ""
        return f"Task({self.name!r}{deps})"


def dag(
    name: str,
    tasks: Iterable[Task | Mapping[str, Any]],
    *,
    rules: RuleSet | None = None,
    token_model: type[BaseModel] | None = None,
    desc: str = "",
) -> Workflow:
    """A workflow running ``tasks`` in dependency order, independent ones concurrently.

    Raises DefinitionError for a cycle (naming it, ``a -> b -> a``), a dependency on an unknown task, a task
    declared twice, or a generated name that clashes (see the module docstring for the net's layout).
    """
    check_name("workflow", name)
    items = [Task.of(t, i) for i, t in enumerate(tasks)]
    if not items:
        raise DefinitionError(f"dag {name!r} has no tasks", workflow=name)
    by_name: dict[str, Task] = {}
    for task in items:
        check_name("task", task.name, name)
        if task.name in by_name:
            raise DuplicateNameError(
                f"dag {name!r}: task {task.name!r} is declared twice", workflow=name, name=task.name
            )
        by_name[task.name] = task
    unknown = [(t.name, d) for t in items for d in t.depends_on if d not in by_name]
    if unknown:
        listed = "; ".join(f"task {t!r} depends on unknown task {d!r}" for t, d in unknown)
        raise DefinitionError(f"dag {name!r}: {listed} (tasks: {', '.join(by_name)})", workflow=name)
    deps = {t.name: list(dict.fromkeys(t.depends_on)) for t in items}
    dependents: dict[str, list[str]] = {t.name: [] for t in items}
    for t in items:
        for d in deps[t.name]:
            dependents[d].append(t.name)
    cycle = _find_cycle(list(by_name), dependents)
    if cycle:
        raise DefinitionError(
            f"dag {name!r} has a cycle: {' -> '.join(cycle)} (each task depends on the one before it)", workflow=name
        )
    ordered = [by_name[n] for n in _topological(list(by_name), deps, dependents)]
    return _build(name, ordered, deps, dependents, rules=rules, token_model=token_model, desc=desc)


def _find_cycle(order: list[str], dependents: dict[str, list[str]]) -> list[str] | None:
    """The first cycle a depth-first walk (in declaration order) meets, closed: ``[a, b, c, a]``."""
    state: dict[str, int] = {}  # 1 on the current path, 2 finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in dependents[node]:
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in order:
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def _topological(order: list[str], deps: dict[str, list[str]], dependents: dict[str, list[str]]) -> list[str]:
    """Kahn's order, ties broken by declaration order (so the net reads like the task list)."""
    remaining = {n: len(deps[n]) for n in order}
    ready = [n for n in order if remaining[n] == 0]
    out: list[str] = []
    while ready:
        node = ready.pop(0)
        out.append(node)
        for nxt in dependents[node]:
            remaining[nxt] -= 1
            if remaining[nxt] == 0:
                ready.append(nxt)
        ready.sort(key=order.index)
    return out


def _build(
    name: str,
    tasks: list[Task],
    deps: dict[str, list[str]],
    dependents: dict[str, list[str]],
    *,
    rules: RuleSet | None,
    token_model: type[BaseModel] | None,
    desc: str,
) -> Workflow:
    roots = [t.name for t in tasks if not deps[t.name]]
    sinks = [t.name for t in tasks if not dependents[t.name]]
    for reserved, needed, role in (
        (BEGIN, len(roots) > 1, "forks the start to the root tasks"),
        (FINISH, len(sinks) > 1, "joins the sink tasks into 'done'"),
    ):
        if needed and any(t.name == reserved for t in tasks):
            raise DefinitionError(
                f"dag {name!r}: task name {reserved!r} is taken by the transition that {role}; rename the task",
                workflow=name,
            )
    places, inputs, outputs = _layout(name, tasks, deps, dependents, roots, sinks)

    wf = Workflow(name, rules=rules, token_model=token_model, desc=desc)
    declared = {p: wf.state(p) for p in places}

    def flow(sources: list[str], targets: list[str]) -> Flow:
        return Flow(_arcs(declared, sources), _arcs(declared, targets))

    if len(roots) > 1:
        wf.flow(flow([START], [f"{START}_to_{r}" for r in roots]), BEGIN, desc="start every root task")
    for t in tasks:
        wf.flow(
            flow(inputs[t.name], outputs[t.name]),
            t.name,
            validations=t.validations,
            rules=t.rules,
            action=_action(t) if t.action is not None else None,
            retry=t.retry,
            timeout=t.timeout,
            desc=t.desc,
        )
    if len(sinks) > 1:
        wf.flow(flow([f"{s}_to_{DONE}" for s in sinks], [DONE]), FINISH, desc="wait for every sink task")
    return wf


def _layout(
    name: str,
    tasks: list[Task],
    deps: dict[str, list[str]],
    dependents: dict[str, list[str]],
    roots: list[str],
    sinks: list[str],
) -> tuple[list[str], dict[str, list[str]], dict[str, list[str]]]:
    """The places in order (``start`` first, ``done`` last) and each task's input and output places."""
    # Every place with what it stands for, so a generated name that clashes is reported, not merged.
    places: dict[str, str] = {}

    def place(pname: str, what: str) -> str:
        if pname in places:
            raise DefinitionError(
                f"dag {name!r}: {what} and {places[pname]} both need a place named {pname!r}; rename a task",
                workflow=name,
            )
        places[pname] = what
        return pname

    place(START, "the start place")
    inputs: dict[str, list[str]] = {t.name: [] for t in tasks}
    outputs: dict[str, list[str]] = {t.name: [] for t in tasks}
    if len(roots) == 1:
        inputs[roots[0]].append(START)
    else:
        for r in roots:
            inputs[r].append(place(f"{START}_to_{r}", f"the start of root task {r!r}"))
    for t in tasks:
        for d in dependents[t.name]:
            outputs[t.name].append(place(f"{t.name}_to_{d}", f"the edge {t.name!r} -> {d!r}"))
    for t in tasks:
        # A join takes its inputs in depends_on order: that order decides which flat output wins a clash.
        inputs[t.name] += [f"{d}_to_{t.name}" for d in deps[t.name]]
    if len(sinks) == 1:
        outputs[sinks[0]].append(DONE)
    else:
        for s in sinks:
            outputs[s].append(place(f"{s}_to_{DONE}", f"the end of sink task {s!r}"))
    place(DONE, "the done place")
    return list(places), inputs, outputs


def _arcs(declared: dict[str, Place], names: list[str]) -> tuple[tuple[Place, int], ...]:
    return tuple((declared[n], 1) for n in names)


def _action(task: Task) -> Any:
    action = task.action
    into = None if task.flat else task.name
    if isinstance(action, type):
        raise DefinitionError(f"task {task.name!r}: action {action.__name__} is a class; pass an instance")
    if hasattr(action, "as_action"):  # an executor: it nests its own output
        return action.as_action(into=into)
    if not callable(action):
        raise DefinitionError(f"task {task.name!r}: action must be callable or an executor, got {action!r}")
    return action if into is None else _nested(action, into)


def _nested(fn: Callable[..., Any], into: str) -> Callable[..., Any]:
    """``fn`` with its result stored under ``data[into]``; stays sync or async, like ``fn``, so that the
    engine still runs a sync action in a worker thread. ``None`` (nothing to record) and non-dicts (an
    error the engine reports) pass through unchanged."""

    def wrap(result: Any) -> Any:
        return {into: result} if isinstance(result, dict) else result

    if is_async_callable(fn):

        @functools.wraps(fn)
        async def run_async(token: Any) -> Any:
            return wrap(await fn(token))

        return run_async

    async def later(awaitable: Any) -> Any:
        return wrap(await awaitable)

    @functools.wraps(fn)
    def run(token: Any) -> Any:
        result = fn(token)
        return later(result) if asyncio.iscoroutine(result) else wrap(result)

    return run
