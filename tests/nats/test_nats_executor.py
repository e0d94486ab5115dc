"""NatsExecutor: a workflow starts (and waits for, and chains) instances of other workflows over NATS.

Real parts only: the session's nats-server, a child engine on JetStream serving inject requests, and a parent
engine (in memory or on JetStream) whose transition runs the executor. Streams are dropped before each test.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from circuit_breaker import Engine, InstanceStatus, Workflow
from circuit_breaker.errors import ExecutorConfigError
from circuit_breaker.executors import default_registry
from circuit_breaker.executors._local_tasks import ExecutorCache, run_task
from circuit_breaker.executors.nats import NatsExecutor
from circuit_breaker.nats import Client, JetStreamStore
from circuit_breaker.nats._subjects import instance_id_for
from circuit_breaker.retry import RetryPolicy
from circuit_breaker.tasks import Task

from ..conftest import drop_streams
from .inject_support import orders_workflow, serving

WAIT = 15.0


# -- child workflows, served by their own engine -------------------------------------------------------------
class Switch:
    """Whether the ``flaky`` child's action fails; flipped by a test to let a retried child through."""

    broken = True


def doubling() -> Workflow:
    """``given --double--> doubled``: doubles ``n``."""
    wf = Workflow("doubling")
    given, doubled = wf.states("given", "doubled")

    @wf.flow(given >> doubled, "double")
    async def double(token: Any) -> dict[str, Any]:
        return {"doubled": token.data["n"] * 2, "by": "doubling"}

    return wf


def forked() -> Workflow:
    """``start`` forks into two final places, each adding its own field: the final data is both merged."""
    wf = Workflow("forked")
    start, left, right = wf.states("start", "left", "right")

    @wf.flow(start >> (left, right), "split")
    async def split(token: Any) -> dict[str, Any]:
        return {"split": True}

    return wf


def flaky() -> Workflow:
    """``given --work--> done``: fails (not retryable, so the instance fails at once) while ``Switch.broken``."""
    wf = Workflow("flaky")
    given, done = wf.states("given", "done")

    @wf.flow(given >> done, "work")
    async def work(token: Any) -> dict[str, Any]:
        if Switch.broken:
            err = RuntimeError("disk full on worker-3")
            err.retryable = False  # type: ignore[attr-defined]
            raise err
        return {"worked": True}

    return wf


def manual() -> Workflow:
    """``draft --approve (manual)--> approved``: waits for a person, so it never completes by itself."""
    wf = Workflow("manual")
    draft, approved = wf.states("draft", "approved")
    wf.flow(draft >> approved, "approve", trigger="manual")
    return wf


def receiving() -> Workflow:
    """``inbox --file--> filed``: the chained workflow; keeps what it was given."""
    wf = Workflow("receiving")
    inbox, filed = wf.states("inbox", "filed")
    wf.flow(inbox >> filed, "file")
    return wf


def parent(executor: NatsExecutor, *, retry: RetryPolicy | None = None, name: str = "parent") -> Workflow:
    """``queued --call--> called``, the call being ``executor``."""
    wf = Workflow(name)
    queued, called = wf.states("queued", "called")
    wf.flow(queued >> called, "call", retry=retry).action(executor)
    return wf


@pytest.fixture
async def url(nats_url: str) -> AsyncIterator[str]:
    """The session's server with no circuit_breaker streams, and the ``flaky`` child broken again."""
    await drop_streams(nats_url)
    Switch.broken = True
    yield nats_url
    await drop_streams(nats_url)


@pytest.fixture
async def children(url: str) -> AsyncIterator[Engine]:
    """The engine that runs the child workflows, serving inject requests for them."""
    async with serving(url, doubling(), forked(), flaky(), manual(), receiving(), orders_workflow()) as (engine, _):
        yield engine


@pytest.fixture(params=["memory", "jetstream"])
async def parents(request: pytest.FixtureRequest, url: str, children: Engine) -> AsyncIterator[Engine]:
    """The parent's engine: in memory, or on the same JetStream as the children (another engine process's view)."""
    store = JetStreamStore(servers=[url]) if request.param == "jetstream" else None
    async with Engine(store=store) as engine:
        yield engine


async def run_parent(engine: Engine, wf: Workflow, data: dict[str, Any]) -> Any:
    engine.register(wf)
    instance = await engine.start(wf.name, data)
    return await engine.wait(instance.id, timeout=WAIT)


async def starts(url: str, workflow: str) -> list[str]:
    """The instances of ``workflow`` ever started, from the stream (the truth, whichever engine started them)."""
    async with Client(servers=[url]) as client:
        return [e.instance_id async for e in client.events(workflow, types=["token_injected"], follow=False)]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- starting, waiting, merging, chaining ----------------------------------------------------------------------
async def test_start_only_returns_the_child_id_and_the_child_runs(url: str, children: Engine) -> None:
    ex = NatsExecutor(workflow=doubling(), nats_url=url, data={"n": "{{ n }}"})
    async with Engine() as engine:
        done = await run_parent(engine, parent(ex), {"n": 21})
    assert done.status is InstanceStatus.COMPLETED
    out = done.data
    assert out["status"] == "started" and out["workflow"] == "doubling" and "data" not in out
    child = await children.wait(out["instance_id"], timeout=WAIT)
    assert child.status is InstanceStatus.COMPLETED and child.data == {"n": 21, "doubled": 42, "by": "doubling"}


async def test_wait_and_merge_brings_the_childs_final_data_into_the_parent_token(
    url: str, parents: Engine, children: Engine
) -> None:
    ex = NatsExecutor(workflow="doubling", nats_url=url, data={"n": "{{ n }}"}, wait=True, merge=True)
    done = await run_parent(parents, parent(ex), {"n": 3, "order": "A-1"})
    assert done.status is InstanceStatus.COMPLETED and done.places == ["called"]
    data = done.data
    assert (data["order"], data["n"], data["doubled"], data["by"]) == ("A-1", 3, 6, "doubling")
    assert data["status"] == "completed" and data["workflow"] == "doubling" and "data" not in data
    assert (await children.get(data["instance_id"])).status is InstanceStatus.COMPLETED


async def test_without_data_the_child_gets_the_parent_tokens_data(url: str, children: Engine) -> None:
    ex = NatsExecutor(workflow="doubling", nats_url=url, wait=True)
    async with Engine() as engine:
        done = await run_parent(engine, parent(ex), {"n": 6})
    assert done.status is InstanceStatus.COMPLETED
    assert done.data["data"] == {"n": 6, "doubled": 12, "by": "doubling"}


async def test_waiting_without_merge_nests_the_final_data_and_a_fork_merges_its_final_tokens(
    url: str, children: Engine
) -> None:
    out = await NatsExecutor(workflow="forked", nats_url=url, data={"n": 1}, wait=True).execute()
    assert out["status"] == "completed" and out["data"] == {"n": 1, "split": True}
    assert (await children.get(out["instance_id"])).places == ["left", "right"]


async def test_a_child_that_completed_before_the_wait_began_is_not_missed(url: str, children: Engine) -> None:
    first = await NatsExecutor(workflow="doubling", nats_url=url, data={"n": 5}, workflow_id="early").execute()
    await children.wait(first["instance_id"], timeout=WAIT)
    again = NatsExecutor(workflow="doubling", nats_url=url, data={"n": 5}, workflow_id="early", wait=True)
    out = await asyncio.wait_for(again.execute(), WAIT)
    assert out["instance_id"] == first["instance_id"] and out["data"]["doubled"] == 10


async def test_chain_starts_the_next_workflow_with_the_childs_final_data(
    url: str, parents: Engine, children: Engine
) -> None:
    ex = NatsExecutor(workflow="doubling", nats_url=url, data={"n": "{{ n }}"}, next_workflow=receiving())
    done = await run_parent(parents, parent(ex), {"n": 4})
    assert done.status is InstanceStatus.COMPLETED
    out = done.data
    assert out["status"] == "completed" and out["data"] == {"n": 4, "doubled": 8, "by": "doubling"}
    chained = await children.wait(out["next_instance_id"], timeout=WAIT)
    assert chained.workflow == "receiving" and chained.status is InstanceStatus.COMPLETED
    assert chained.data == {"n": 4, "doubled": 8, "by": "doubling"}


# -- failures --------------------------------------------------------------------------------------------------
async def test_a_failed_child_fails_the_action_and_the_parent_token_stays_put(
    url: str, parents: Engine, children: Engine
) -> None:
    ex = NatsExecutor(workflow="flaky", nats_url=url, data={"job": 1}, wait=True)
    done = await run_parent(parents, parent(ex), {"job": 1})
    assert done.status is InstanceStatus.FAILED
    assert done.places == ["queued"] and done.data == {"job": 1}
    (incident,) = done.open_incidents
    assert (incident.error.kind, incident.error.retryable) == ("child_failed", False)
    child_id = incident.error.details["instance_id"]
    message = incident.error.message
    assert "'flaky'" in message and child_id in message and "disk full on worker-3" in message
    assert (await children.get(child_id)).status is InstanceStatus.FAILED

    # Someone repairs and retries the child, then the parent: the re-run finds the same child, now completed.
    Switch.broken = False
    await children.retry(child_id)
    assert (await children.wait(child_id, timeout=WAIT)).status is InstanceStatus.COMPLETED
    await parents.retry(done.id)
    again = await parents.wait(done.id, timeout=WAIT)
    assert again.status is InstanceStatus.COMPLETED
    assert again.data["instance_id"] == child_id and again.data["data"]["worked"] is True
    assert await starts(url, "flaky") == [child_id]


async def test_a_child_that_does_not_complete_in_time_is_a_retryable_timeout(url: str, children: Engine) -> None:
    ex = NatsExecutor(workflow="manual", nats_url=url, wait=True, timeout=0.5, workflow_id="slow-1")
    started = time.perf_counter()
    result = await ex.execute_detailed()
    assert time.perf_counter() - started < 5
    assert result.status == "timed_out" and result.error is not None
    assert (result.error.kind, result.error.retryable) == ("timeout", True)
    child_id = instance_id_for("manual", "slow-1")
    assert child_id in result.error.message and "waiting" in result.error.message
    assert (await children.get(child_id)).status is InstanceStatus.WAITING  # the child itself is left alone


async def test_a_timeout_in_a_workflow_becomes_an_incident_of_kind_timeout(url: str, children: Engine) -> None:
    ex = NatsExecutor(workflow="manual", nats_url=url, wait=True, timeout=0.3)
    async with Engine() as engine:
        done = await run_parent(engine, parent(ex), {})
    assert done.status is InstanceStatus.FAILED and done.places == ["queued"]
    (incident,) = done.open_incidents
    assert (incident.error.kind, incident.error.retryable) == ("timeout", True)


async def test_running_the_same_firing_again_does_not_start_a_second_child(url: str, parents: Engine) -> None:
    # ``parents`` brings the engine serving the children.
    seen: list[str] = []

    async def call_then_crash(token: Any) -> dict[str, Any]:
        # The child is started, then the action dies before its result is stored: the engine runs it again.
        out = await NatsExecutor(workflow="doubling", nats_url=url, data={"n": token.data["n"]}).execute()
        seen.append(out["instance_id"])
        if len(seen) == 1:
            raise ConnectionError("lost the engine's connection after starting the child")
        return out

    wf = Workflow("crashy")
    queued, called = wf.states("queued", "called")
    wf.flow(queued >> called, "call", retry=RetryPolicy(max_attempts=2, initial_delay=0.01)).action(call_then_crash)
    done = await run_parent(parents, wf, {"n": 2})
    assert done.status is InstanceStatus.COMPLETED
    assert len(seen) == 2 and seen[0] == seen[1] == done.data["instance_id"]
    assert await starts(url, "doubling") == [seen[0]]


async def test_a_task_run_again_on_a_worker_does_not_start_a_second_child(url: str, children: Engine) -> None:
    """On a worker no engine sets the firing: the task's idempotency key stands in for it, so a redelivered task,
    or its next attempt, finds the child the first run started (each run used to start another)."""
    spec = NatsExecutor(workflow="doubling", nats_url=url, data={"n": 3}).spec(reveal_secrets=True)
    task = Task.new(workflow="parent", instance_id="p1", transition="call", executor=spec, idempotency_key="p1:call:x")
    cache = ExecutorCache(default_registry())
    first, error = await run_task(cache, task)
    assert error is None, error
    again, error = await run_task(cache, task.model_copy(update={"attempt": 2}))
    assert error is None, error
    assert first["instance_id"] == again["instance_id"] == instance_id_for("doubling", "p1:call:x")
    assert await starts(url, "doubling") == [first["instance_id"]]


async def test_an_explicit_workflow_id_finds_the_first_child(url: str, children: Engine) -> None:
    one = await NatsExecutor(workflow="doubling", nats_url=url, data={"n": 1}, workflow_id="order-9").execute()
    two = await NatsExecutor(workflow="doubling", nats_url=url, data={"n": 7}, workflow_id="order-9").execute()
    assert one["instance_id"] == two["instance_id"] == instance_id_for("doubling", "order-9")
    assert (await children.wait(one["instance_id"], timeout=WAIT)).data["n"] == 1  # the first start's data
    assert await starts(url, "doubling") == [one["instance_id"]]


async def test_an_unknown_workflow_is_a_clear_permanent_error(url: str, children: Engine) -> None:
    result = await NatsExecutor(workflow="no_such_flow", nats_url=url).execute_detailed()
    assert result.error is not None
    assert (result.error.kind, result.error.retryable) == ("unknown_workflow", False)
    assert "no_such_flow" in result.error.message


async def test_no_engine_serving_the_workflow_is_no_responders(url: str) -> None:
    result = await NatsExecutor(workflow="doubling", nats_url=url, request_timeout=2).execute_detailed()
    assert result.error is not None
    assert (result.error.kind, result.error.retryable) == ("no_responders", False)
    assert "doubling" in result.error.message


async def test_data_the_child_refuses_is_invalid_data(url: str, children: Engine) -> None:
    result = await NatsExecutor(workflow="orders", nats_url=url, data={"item": "lamp", "qty": 0}).execute_detailed()
    assert result.error is not None
    assert (result.error.kind, result.error.retryable) == ("invalid_data", False)
    assert "qty" in result.error.message and result.error.details["field"] == "qty"


async def test_nats_down_is_a_retryable_connection_error() -> None:
    ex = NatsExecutor(workflow="doubling", nats_url=f"nats://127.0.0.1:{closed_port()}", connect_timeout=1)
    started = time.perf_counter()
    result = await ex.execute_detailed()
    assert time.perf_counter() - started < 5, "one attempt: the retry policy decides about more"
    assert result.error is not None
    assert (result.error.kind, result.error.retryable) == ("connection", True)
    assert "127.0.0.1" in result.error.message


# -- configuration -----------------------------------------------------------------------------------------------
async def test_the_url_comes_from_cb_nats_url_by_default(
    url: str, children: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CB_NATS_URL", url)
    out = await NatsExecutor(workflow="doubling", data={"n": 1}, wait=True).execute()
    assert out["data"]["doubled"] == 2


async def test_no_url_anywhere_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CB_NATS_URL", raising=False)
    monkeypatch.delenv("CB_CONFIG", raising=False)
    result = await NatsExecutor(workflow="doubling").execute_detailed()
    assert result.error is not None
    assert (result.error.kind, result.error.retryable) == ("config", False)
    assert "CB_NATS_URL" in result.error.message


def test_bad_parameters_are_refused_when_built() -> None:
    with pytest.raises(ExecutorConfigError, match="'a.b'"):
        NatsExecutor(workflow="a.b")
    with pytest.raises(ExecutorConfigError, match="next_workflow"):
        NatsExecutor(workflow="a", next_workflow="b c")
    with pytest.raises(ExecutorConfigError, match="merge needs wait"):
        NatsExecutor(workflow="a", merge=True)
    with pytest.raises(ExecutorConfigError, match="timeout"):
        NatsExecutor(workflow="a", wait=True, timeout=0)


def test_a_workflow_object_is_kept_by_name_and_the_spec_round_trips() -> None:
    ex = NatsExecutor(workflow=doubling(), next_workflow=receiving(), data={"n": "{{ n }}"}, nats_url="nats://x:1")
    spec = ex.spec()
    assert spec["params"]["workflow"] == "doubling" and spec["params"]["next_workflow"] == "receiving"
    rebuilt = default_registry().from_spec(spec).render({"n": 3})
    assert isinstance(rebuilt, NatsExecutor) and rebuilt.data == {"n": 3}
