"""DAG workflows: tasks run in dependency order, independent ones at once, through a real Engine."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from circuit_breaker import Engine, InstanceStatus, RuleSet, Token
from circuit_breaker.dsl import Task, dag
from circuit_breaker.errors import DefinitionError, DuplicateNameError
from circuit_breaker.executors import Executor, param

WAIT = 5.0


def diamond(actions: dict[str, Any]) -> list[Task]:
    """a -> b, a -> c, (b, c) -> d."""
    return [
        Task("a", actions.get("a")),
        Task("b", actions.get("b"), depends_on=["a"]),
        Task("c", actions.get("c"), depends_on=["a"]),
        Task("d", actions.get("d"), depends_on=["b", "c"]),
    ]


async def test_diamond_runs_the_middle_tasks_concurrently_and_the_join_sees_both(engine: Engine) -> None:
    spans: dict[str, tuple[float, float]] = {}

    def timed(name: str, delay: float, result: dict[str, Any]) -> Any:
        async def run(token: Token) -> dict[str, Any]:
            start = time.perf_counter()
            await asyncio.sleep(delay)
            spans[name] = (start, time.perf_counter())
            return result

        return run

    def d(token: Token) -> dict[str, Any]:  # sync: runs in a worker thread
        return {"total": token.data["b"]["value"] + token.data["c"]["value"]}

    actions = {"a": timed("a", 0, {"value": 1}), "b": timed("b", 0.2, {"value": 2}), "c": timed("c", 0.2, {"value": 3})}
    wf = dag("diamond", diamond({**actions, "d": d}))
    inst = await engine.wait((await engine.start(wf, {"order": 7})).id, timeout=WAIT)

    assert inst.status is InstanceStatus.COMPLETED
    assert [t.place for t in inst.tokens] == ["done"]
    assert inst.tokens[0].data == {
        "order": 7,
        "a": {"value": 1},
        "b": {"value": 2},
        "c": {"value": 3},
        "d": {"total": 5},
    }
    (b0, b1), (c0, c1) = spans["b"], spans["c"]
    assert b0 < c1 and c0 < b1, "b and c did not overlap"
    assert spans["a"][1] <= min(b0, c0)
    fired = [h.transition for h in inst.history if h.kind == "fired"]
    assert fired[0] == "a" and fired[-1] == "d" and sorted(fired[1:3]) == ["b", "c"]


async def test_interleaved_instances_do_not_mix(engine: Engine) -> None:
    async def b(token: Token) -> dict[str, Any]:
        await asyncio.sleep(0.01 * (5 - token.data["n"]))  # finish in the reverse order of c
        return {"v": f"b{token.data['n']}"}

    async def c(token: Token) -> dict[str, Any]:
        await asyncio.sleep(0.01 * token.data["n"])
        return {"v": f"c{token.data['n']}"}

    def d(token: Token) -> dict[str, Any]:
        return {"pair": [token.data["b"]["v"], token.data["c"]["v"]]}

    wf = dag("interleaved", diamond({"b": b, "c": c, "d": d}))
    started = [await engine.start(wf, {"n": n}) for n in range(5)]
    for n, inst in enumerate([await engine.wait(i.id, timeout=WAIT) for i in started]):
        assert inst.status is InstanceStatus.COMPLETED
        (token,) = inst.tokens
        assert token.instance_id == inst.id
        assert token.data["n"] == n
        assert token.data["d"] == {"pair": [f"b{n}", f"c{n}"]}


def test_the_net_has_a_place_per_dependency_and_ends_in_done() -> None:
    wf = dag("shape", diamond({}))
    assert [p.name for p in wf.places] == ["start", "a_to_b", "a_to_c", "b_to_d", "c_to_d", "done"]
    assert {t.name: ([p.name for p, _ in t.inputs], [p.name for p, _ in t.outputs]) for t in wf.transitions} == {
        "a": (["start"], ["a_to_b", "a_to_c"]),  # a fork
        "b": (["a_to_b"], ["b_to_d"]),
        "c": (["a_to_c"], ["c_to_d"]),
        "d": (["b_to_d", "c_to_d"], ["done"]),  # a join, inputs in depends_on order
    }
    compiled = wf.compile()
    assert compiled.initial_place == "start"
    assert compiled.final_places == {"done"}
    assert wf.problems() == []


async def test_several_roots_and_sinks_get_begin_and_finish(engine: Engine) -> None:
    # Dicts work as tasks too.
    wf = dag(
        "wide",
        [
            {"name": "x", "action": lambda token: {"v": 1}},
            {"name": "y", "action": lambda token: {"v": 2}},
            {"name": "z", "action": lambda token: {"v": 3}, "depends_on": "x"},
        ],
    )
    assert [t.name for t in wf.transitions] == ["begin", "x", "y", "z", "finish"]
    inst = await engine.wait((await engine.start(wf)).id, timeout=WAIT)
    assert inst.status is InstanceStatus.COMPLETED
    assert [(t.place, t.data) for t in inst.tokens] == [("done", {"x": {"v": 1}, "y": {"v": 2}, "z": {"v": 3}})]


async def test_flat_outputs_merge_into_the_data_and_the_later_dependency_wins(engine: Engine) -> None:
    async def slow_b(token: Token) -> dict[str, Any]:
        await asyncio.sleep(0.05)  # finishes last, yet c still wins: order is depends_on order, not timing
        return {"who": "b", "b_only": True}

    tasks = [
        Task("a", lambda token: {"who": "a"}, flat=True),
        Task("b", slow_b, ["a"], flat=True),
        Task("c", lambda token: {"who": "c"}, ["a"], flat=True),
        Task("d", None, ["b", "c"]),
    ]
    inst = await engine.wait((await engine.start(dag("flat", tasks))).id, timeout=WAIT)
    assert inst.tokens[0].data == {"who": "c", "b_only": True}


class Double(Executor):
    name = "double"
    value: int = param(required=True)

    async def execute_internal(self) -> dict[str, Any]:
        return {"doubled": self.value * 2}


async def test_executor_tasks_render_templates_and_nest_their_output(engine: Engine) -> None:
    wf = dag(
        "executors",
        [Task("first", Double(value="{{ n }}")), Task("second", Double(value="{{ first.doubled }}"), ["first"])],
    )
    inst = await engine.wait((await engine.start(wf, {"n": 3})).id, timeout=WAIT)
    assert inst.tokens[0].data == {"n": 3, "first": {"doubled": 6}, "second": {"doubled": 12}}


async def test_task_rules_judge_the_output_and_stop_the_dag(engine: Engine) -> None:
    rules = RuleSet({"good_score": "score['value'] >= 0.5"})
    wf = dag(
        "gated",
        [
            Task("score", lambda token: {"value": token.data["x"]}, rules=["good_score"]),
            Task("publish", lambda token: {"ok": True}, ["score"], validations=["title"]),
        ],
        rules=rules,
    )
    low = await engine.wait((await engine.start(wf, {"x": 0.1, "title": "t"})).id, timeout=WAIT)
    assert low.status is InstanceStatus.WAITING
    assert [t.place for t in low.tokens] == ["start"]
    high = await engine.wait((await engine.start(wf, {"x": 0.9, "title": "t"})).id, timeout=WAIT)
    assert high.status is InstanceStatus.COMPLETED


# -- definition errors -------------------------------------------------------------------------------------------
def test_a_cycle_is_named() -> None:
    tasks = [Task("a", depends_on=["c"]), Task("b", depends_on=["a"]), Task("c", depends_on=["b"]), Task("e")]
    with pytest.raises(DefinitionError, match=r"cycle: a -> b -> c -> a"):
        dag("loop", tasks)
    with pytest.raises(DefinitionError, match=r"cycle: a -> a"):
        dag("self", [Task("a", depends_on=["a"])])


def test_unknown_dependencies_are_named_with_their_task() -> None:
    with pytest.raises(DefinitionError) as err:
        dag("typo", [Task("fetch"), Task("parse", depends_on=["fecth"])])
    assert "task 'parse' depends on unknown task 'fecth'" in str(err.value)
    assert "tasks: fetch, parse" in str(err.value)


def test_a_task_declared_twice_is_an_error() -> None:
    with pytest.raises(DuplicateNameError, match="task 'a' is declared twice"):
        dag("twice", [Task("a"), Task("a")])


def test_bad_task_definitions_name_the_task() -> None:
    with pytest.raises(DefinitionError, match=r"tasks\[1\]: unknown key\(s\) 'needs'"):
        dag("keys", [{"name": "a"}, {"name": "b", "needs": ["a"]}])
    with pytest.raises(DefinitionError, match="task 'a': action must be callable"):
        dag("action", [Task("a", action=42)])
    with pytest.raises(
        DefinitionError, match="task name 'finish' is taken by the transition that joins the sink tasks"
    ):
        dag("reserved", [Task("a"), Task("finish")])
    with pytest.raises(DefinitionError, match="action Double is a class; pass an instance"):
        dag("class", [Task("a", action=Double)])
    with pytest.raises(DefinitionError, match="both need a place named 'x_to_y_to_z'; rename a task"):
        dag("clash", [Task("x"), Task("y_to_z", depends_on="x"), Task("x_to_y"), Task("z", depends_on="x_to_y")])
    with pytest.raises(DefinitionError, match="no tasks"):
        dag("empty", [])
