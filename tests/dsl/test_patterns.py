"""Stage patterns against a real engine: scatter/gather, broadcast, fork-join and a user-defined pattern."""

from __future__ import annotations

import asyncio
import importlib.util
import time
from pathlib import Path

import pytest

from circuit_breaker import Engine, EventType, InstanceStatus, Workflow
from circuit_breaker.errors import DefinitionError

ROOT = Path(__file__).resolve().parents[2]


class Concurrency:
    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    async def run(self, seconds: float) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.now -= 1


def scatter_gather(max_parallel: int | None = None, **gather_options: object) -> tuple[Workflow, Concurrency]:
    wf = Workflow("sg")
    start, queued, done, out = wf.states("start", "queued", "done", "out")
    split = wf.scatter(start >> queued, "split", items="files", max_parallel=max_parallel, carry=["unit"])
    seen = Concurrency()

    @wf.flow(queued >> done, "measure")
    async def measure(token):
        await seen.run(0.001)
        name = token.data["item"]
        return {"size": len(name), "unit": token.data["unit"], "parity": "even" if int(name[1:]) % 2 == 0 else "odd"}

    wf.gather(done >> out, "collect", of=split, **gather_options)
    return wf, seen


async def test_scatter_of_1000_items_never_runs_more_than_max_parallel(engine: Engine) -> None:
    wf, seen = scatter_gather(max_parallel=10)
    files = [f"f{n}" for n in range(1000)]
    inst = await engine.wait((await engine.start(wf, {"files": files, "unit": "b", "keep": 1})).id, timeout=60)
    assert inst.status is InstanceStatus.COMPLETED
    assert seen.peak == 10
    (token,) = inst.tokens
    assert token.place == "out"
    # The parent's data comes back with every item's result, in item order.
    assert token.data["keep"] == 1 and token.data["files"] == files
    assert [r["item"] for r in token.data["results"]] == files
    assert token.data["results"][7] == {"unit": "b", "item": "f7", "size": 2, "parity": "odd"}


async def test_gather_groups_results_by_a_jsonpath(engine: Engine) -> None:
    wf, _ = scatter_gather(group_by="$.parity")
    inst = await engine.wait((await engine.start(wf, {"files": ["f1", "f2", "f3"], "unit": "b"})).id, timeout=5)
    groups = inst.tokens[0].data["results"]
    assert [(g["key"], [r["item"] for r in g["items"]]) for g in groups] == [("odd", ["f1", "f3"]), ("even", ["f2"])]


async def test_scatters_of_interleaved_instances_are_gathered_separately(engine: Engine) -> None:
    wf, _ = scatter_gather(max_parallel=3)
    started = [await engine.start(wf, {"files": [f"f{n}" for n in range(i, i + 5)], "unit": str(i)}) for i in range(4)]
    for i, inst in enumerate(started):
        done = await engine.wait(inst.id, timeout=10)
        assert [r["unit"] for r in done.tokens[0].data["results"]] == [str(i)] * 5


async def test_batches_carry_lists_of_items(engine: Engine) -> None:
    wf = Workflow("batches")
    start, queued, done, out = wf.states("start", "queued", "done", "out")
    split = wf.scatter(start >> queued, "split", items="$.rows", batch_size=4, item_key="batch")
    wf.flow(queued >> done, "sum", action=lambda token: {"sum": sum(token.data["batch"])})
    wf.gather(done >> out, "collect", of=split)
    inst = await engine.wait((await engine.start(wf, {"rows": list(range(10))})).id, timeout=5)
    assert [r["sum"] for r in inst.tokens[0].data["results"]] == [6, 22, 17]


async def test_a_gather_timeout_goes_on_with_min_results_and_sets_late_items_aside(engine: Engine) -> None:
    wf = Workflow("partial")
    start, queued, done, out = wf.states("start", "queued", "done", "out")
    split = wf.scatter(start >> queued, "split", items="delays")

    @wf.flow(queued >> done, "work")
    async def work(token):
        await asyncio.sleep(token.data["item"])
        return {"slept": token.data["item"]}

    wf.gather(done >> out, "collect", of=split, timeout=0.2, min_results=2)
    started = time.monotonic()
    inst = await engine.wait((await engine.start(wf, {"delays": [0.01, 0.02, 0.6]})).id, timeout=5)
    assert inst.status is InstanceStatus.COMPLETED
    assert time.monotonic() - started >= 0.6  # the late item still finished and was set aside
    out_token = inst.tokens_in("out")[0]
    assert sorted(r["slept"] for r in out_token.data["results"]) == [0.01, 0.02]
    assert [t.data["slept"] for t in inst.tokens_in("collect_late")] == [0.6]


async def test_scattering_something_that_is_not_a_list_is_refused_naming_it(engine: Engine) -> None:
    wf, _ = scatter_gather()
    for data, message in (
        ({"unit": "b"}, "files"),
        ({"files": "f1", "unit": "b"}, "not a list"),
        ({"files": []}, "empty"),
    ):
        inst = await engine.wait((await engine.start(wf, data)).id, timeout=5)
        assert inst.stalled and inst.tokens[0].place == "start"
        (rejection,) = [e async for e in engine.events(instance=inst.id, types=[EventType.TRANSITION_REJECTED])]
        assert "split" in rejection.errors[0] and message in rejection.errors[0]


def test_gather_needs_to_know_its_scatter() -> None:
    wf = Workflow("two_scatters")
    a, b, c, d, e = wf.states("a", "b", "c", "d", "e")
    wf.scatter(a >> b, "one", items="x")
    wf.scatter(b >> c, "two", items="y")
    with pytest.raises(DefinitionError, match="of="):
        wf.gather(c >> d, "collect")
    with pytest.raises(DefinitionError, match="max_parallel"):
        wf.scatter(d >> e, "bad", items="z", max_parallel=0)


async def test_fork_join_merges_branch_outputs_under_their_names(engine: Engine) -> None:
    wf = Workflow("enrich")
    start, end = wf.states("start", "end")
    seen = Concurrency()

    async def geo(token):
        await seen.run(0.05)
        return {"country": "NL"}

    async def credit(token):
        await seen.run(0.05)
        return {"score": 700}

    wf.fork_join(start >> end, "enrich", branches={"geo": geo, "credit": credit})
    inst = await engine.wait((await engine.start(wf, {"customer": "c1"})).id, timeout=5)
    assert inst.tokens[0].data == {"customer": "c1", "geo": {"country": "NL"}, "credit": {"score": 700}}
    assert seen.peak == 2


async def test_broadcast_waits_for_all_or_takes_the_first(engine: Engine) -> None:
    def sender(delay: float, name: str):
        async def send(token):
            await asyncio.sleep(delay)
            return {"by": name}

        return send

    both = Workflow("notify_all")
    a, b = both.states("a", "b")
    both.broadcast(a >> b, "notify", executors={"mail": sender(0.01, "mail"), "sms": sender(0.03, "sms")})
    inst = await engine.wait((await engine.start(both, {})).id, timeout=5)
    assert inst.tokens[0].data == {"mail": {"by": "mail"}, "sms": {"by": "sms"}}

    first = Workflow("notify_first")
    a, b = first.states("a", "b")
    first.broadcast(
        a >> b, "race", executors={"slow": sender(0.2, "slow"), "fast": sender(0.01, "fast")}, wait_for_all=False
    )
    inst = await engine.wait((await engine.start(first, {})).id, timeout=5)
    assert inst.status is InstanceStatus.COMPLETED
    (winner,) = inst.tokens_in("b")
    assert winner.data["fast"] == {"by": "fast"} and "slow" not in winner.data
    assert [t.data["slow"] for t in inst.tokens_in("race_late")] == [{"by": "slow"}]


async def test_a_user_pattern_limits_starts_per_second(engine: Engine) -> None:
    spec = importlib.util.spec_from_file_location("rate_limited_example", ROOT / "executors" / "rate_limited.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    starts: list[float] = []

    async def call(token):
        starts.append(time.monotonic())
        return {"called": token.data["item"]}

    wf = Workflow("throttled")
    start, queued, done, out = wf.states("start", "queued", "done", "out")
    split = wf.scatter(start >> queued, "split", items="ids")
    wf.apply(module.rate_limited, queued >> done, "call_api", per_second=10, action=call)
    wf.gather(done >> out, "collect", of=split)
    inst = await engine.wait((await engine.start(wf, {"ids": list(range(25))})).id, timeout=10)
    assert inst.status is InstanceStatus.COMPLETED and len(inst.tokens[0].data["results"]) == 25
    # The engine lets at most 10 start in any one-second window, so 25 starts span two seconds. The times
    # here are taken inside the actions, a little after the engine started them: allow 0.1 s of that lag.
    assert all(sum(1 for t in starts if s <= t < s + 0.9) <= 10 for s in starts)
    assert starts[-1] - starts[0] >= 1.9
