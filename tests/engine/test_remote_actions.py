"""Remote actions, engine side: two-phase firing, results applied once, fencing, deadlines, failures, recovery.

Runs on the in-memory store and on JetStream, with the in-process task queue (the same protocol the workers
speak; tests/workers/test_remote_engine.py runs real worker processes).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from circuit_breaker import Engine, EventType, InstanceStatus, RetryPolicy, RuleSet, Workflow
from circuit_breaker.engine._tasks import NO_ATTEMPTS, TaskAttempts
from circuit_breaker.errors import ActionError, DefinitionError, InstanceStateError, TransitionRejectedError
from circuit_breaker.executors import Executor, ExecutorRegistry, LocalTaskQueue, ShellExecutor, default_registry, param
from circuit_breaker.nats import JetStreamStore
from circuit_breaker.store import MemoryStore
from circuit_breaker.tasks import Task, TaskResult
from circuit_breaker.token import utcnow
from tests.conftest import drop_streams


class Echo(Executor):
    name = "echo"
    value: Any = param(default=None)

    async def execute_internal(self) -> dict[str, Any]:
        return {"echo": self.value}


def registry() -> ExecutorRegistry:
    reg = default_registry()
    reg.register(Echo)
    return reg


@pytest.fixture(params=["memory", "jetstream"])
async def stores(request: pytest.FixtureRequest, nats_url: str) -> AsyncIterator[Callable[[], Any]]:
    """Makes a store on the test's storage: every engine (and a restarted one) needs its own store object."""
    if request.param == "memory":
        memory = MemoryStore()
        yield lambda: memory
        return
    await drop_streams(nats_url)
    yield lambda: JetStreamStore(servers=[nats_url])
    await drop_streams(nats_url)


def shell_flow(name: str = "remote_demo") -> Workflow:
    wf = Workflow(name)
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "run").action(ShellExecutor(argv=["python3", "-c", "print(42)"]), remote=True)
    return wf


async def test_the_contract_a_remote_shell_action_fires_in_two_phases(stores: Callable[[], Any]) -> None:
    async with Engine(stores(), tasks=LocalTaskQueue(registry())) as engine:
        inst = await engine.wait((await engine.start(shell_flow(), {"x": 1})).id, timeout=20)
        assert inst.status is InstanceStatus.COMPLETED
        assert inst.tokens[0].place == "b"
        assert inst.tokens[0].data["stdout"] == "42\n" and inst.tokens[0].data["x"] == 1
        events = [e async for e in engine.events(instance=inst.id)]
        types = [e.type for e in events]
        assert types[:3] == [EventType.TOKEN_INJECTED, EventType.TRANSITION_STARTED, EventType.TRANSITION_FIRED]
        started, fired = events[1], events[2]
        assert started.task_id == fired.task_id and started.executor == "shell" and started.attempt == 1
        assert started.consumed == fired.consumed == [events[0].token.id]
        assert started.data == {"x": 1}
        kinds = [h.kind for h in inst.tokens[0].history]
        assert kinds == ["created", "fired"]
        assert [h.kind for h in inst.history][:3] == ["created", "started", "fired"]


async def test_while_a_task_is_in_flight_its_tokens_wait_with_it_and_a_rebuilt_instance_agrees(
    stores: Callable[[], Any],
) -> None:
    wf = Workflow("slow_remote")
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "run").action(ShellExecutor(argv=["sleep", "1"]), remote=True)
    async with Engine(stores(), tasks=LocalTaskQueue(registry())) as engine:
        inst = await engine.start(wf, {"n": 1})
        await asyncio.sleep(0.3)
        now = await engine.get(inst.id)
        assert now.status is InstanceStatus.RUNNING
        assert now.tokens == []
        (task,) = now.tasks
        assert task.transition == "run" and task.executor == "shell" and task.attempt == 1
        assert task.tokens == [inst.tokens[0].id]
        async with Engine(stores(), workflows=[wf], drive=False) as observer:
            seen = await observer.get(inst.id)
            assert [t.task_id for t in seen.tasks] == [task.task_id] and seen.tokens == []
        done = await engine.wait(inst.id, timeout=20)
        assert done.status is InstanceStatus.COMPLETED and done.tasks == []


class ControlledQueue:
    """A task queue the test drives: it keeps what the engine submits and delivers results when told."""

    def __init__(self) -> None:
        self.submitted: list[Task] = []
        self.recovered: list[Task] = []
        self.deliver: Any = None
        self.arrived = asyncio.Event()

    async def open(self, deliver: Any) -> None:
        self.deliver = deliver

    async def listen(self, workflow: str) -> None:
        return None

    async def submit(self, task: Task) -> None:
        self.submitted.append(task)
        self.arrived.set()

    async def recover(self, task: Task) -> None:
        self.recovered.append(task)

    async def attempts(self, task: Task) -> TaskAttempts:
        return NO_ATTEMPTS  # nothing but the engine hands tasks out here

    async def forget_dead_letters(self, task: Task) -> None:
        return None  # it keeps no dead letters

    async def close(self) -> None:
        return None

    async def next_task(self) -> Task:
        while not self.submitted:
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), 10)
        return self.submitted.pop(0)


def result_for(task: Task, status: str = "succeeded", attempt: int | None = None, **fields: Any) -> TaskResult:
    now = utcnow()
    return TaskResult.model_validate(
        {
            "task_id": task.task_id,
            "attempt": attempt or task.attempt,
            "workflow": task.workflow,
            "instance_id": task.instance_id,
            "transition": task.transition,
            "status": status,
            "worker": "test:1",
            "started": now,
            "finished": now,
            "duration": 0.0,
            **fields,
        }
    )


def echo_flow(name: str = "echoes", **action: Any) -> Workflow:
    wf = Workflow(name)
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "run").action(Echo(value="{{ x }}"), remote=True, **action)
    return wf


async def test_a_result_is_applied_once_however_often_it_arrives(stores: Callable[[], Any]) -> None:
    queue = ControlledQueue()
    async with Engine(stores(), tasks=queue) as engine:
        inst = await engine.start(echo_flow(), {"x": 7})
        task = await queue.next_task()
        assert task.executor == {"executor": "echo", "params": {"value": "{{ x }}"}}
        assert task.data == {"x": 7} and task.attempt == 1 and task.instance_id == inst.id
        result = result_for(task, output={"echo": 7})
        await asyncio.gather(queue.deliver(result), queue.deliver(result), queue.deliver(result))
        await queue.deliver(result)
        done = await engine.wait(inst.id, timeout=10)
        assert done.status is InstanceStatus.COMPLETED
        assert done.tokens[0].data == {"x": 7, "echo": 7}
        fired = [e async for e in engine.events(instance=inst.id, types=[EventType.TRANSITION_FIRED])]
        assert len(fired) == 1 and fired[0].task_id == task.task_id


async def test_a_result_of_another_task_or_a_late_attempt_changes_nothing(stores: Callable[[], Any]) -> None:
    queue = ControlledQueue()
    async with Engine(stores(), tasks=queue) as engine:
        inst = await engine.start(echo_flow(), {"x": 1})
        task = await queue.next_task()
        await queue.deliver(result_for(task.model_copy(update={"task_id": "someone_else"}), output={"echo": 9}))
        now = await engine.get(inst.id)
        assert now.status is InstanceStatus.RUNNING and [t.task_id for t in now.tasks] == [task.task_id]
        assert now.version == 2
        await queue.deliver(result_for(task, output={"echo": "right"}))
        assert (await engine.wait(inst.id, timeout=10)).tokens[0].data["echo"] == "right"


async def test_an_attempt_that_overruns_its_deadline_is_handed_out_again_and_its_late_result_is_ignored(
    stores: Callable[[], Any],
) -> None:
    queue = ControlledQueue()
    async with Engine(stores(), tasks=queue) as engine:
        wf = echo_flow("deadlines", deadline=0.3)
        wf.transition("run").retry(max_attempts=3, initial_delay=0.01)
        inst = await engine.start(wf, {"x": 1})
        first = await queue.next_task()
        assert first.deadline is not None
        second = await queue.next_task()  # no result within 0.3 s: attempt 2 of the same task
        assert (second.task_id, second.attempt) == (first.task_id, 2)
        assert second.idempotency_key == first.idempotency_key
        await queue.deliver(result_for(first, output={"echo": "late"}))  # attempt 1 answers after all: too late
        now = await engine.get(inst.id)
        assert now.status is InstanceStatus.RUNNING and now.tasks[0].attempt == 2
        await queue.deliver(result_for(second, output={"echo": "second"}))
        done = await engine.wait(inst.id, timeout=10)
        assert done.tokens[0].data["echo"] == "second"
        failed = [e async for e in engine.events(instance=inst.id, types=[EventType.TRANSITION_FAILED])]
        assert [(e.attempt, e.will_retry, e.error.kind) for e in failed] == [(1, True, "deadline")]


async def test_when_every_attempt_overruns_the_token_goes_back_with_an_incident(stores: Callable[[], Any]) -> None:
    queue = ControlledQueue()
    async with Engine(stores(), tasks=queue) as engine:
        inst = await engine.start(echo_flow("overdue", deadline=0.2), {"x": 1})
        await queue.next_task()
        failed = await engine.wait(inst.id, timeout=10)
        assert failed.status is InstanceStatus.FAILED
        (incident,) = failed.open_incidents
        assert incident.error.kind == "deadline" and incident.transition == "run"
        assert [(t.place, t.data) for t in failed.tokens] == [("a", {"x": 1})] and failed.tasks == []
        retried = await engine.retry(inst.id)  # a fresh task for the same tokens
        assert retried.status is InstanceStatus.RUNNING
        again = await queue.next_task()
        await queue.deliver(result_for(again, output={"echo": 1}))
        assert (await engine.wait(inst.id, timeout=10)).status is InstanceStatus.COMPLETED


async def test_an_overdue_task_with_an_error_place_goes_on_from_there(stores: Callable[[], Any]) -> None:
    """The deadline's last attempt moves the token to the error place, and the workflow's automatic handling of
    it runs (the scheduler is woken by the deadline, not only by results)."""
    queue = ControlledQueue()
    wf = Workflow("overdue_handled")
    a, b, review, handled = wf.states("a", "b", "review", "handled")
    wf.flow(a >> b, "run").action(Echo(value=1), remote=True, deadline=0.2).on_error(review)
    wf.flow(review >> handled, "handle")
    async with Engine(stores(), tasks=queue) as engine:
        inst = await engine.start(wf, {"x": 1})
        await queue.next_task()
        done = await engine.wait(inst.id, timeout=10)
        assert done.status is InstanceStatus.COMPLETED and done.places == ["handled"]


async def test_a_failed_task_puts_the_token_back_or_moves_it_to_the_error_place(stores: Callable[[], Any]) -> None:
    queue = ControlledQueue()
    async with Engine(stores(), tasks=queue) as engine:
        inst = await engine.start(echo_flow("fails"), {"x": 1})
        task = await queue.next_task()
        error = {"kind": "exit_code", "message": "exit 3", "retryable": False}
        await queue.deliver(result_for(task, "failed", error=error))
        failed = await engine.wait(inst.id, timeout=10)
        assert failed.status is InstanceStatus.FAILED
        assert failed.open_incidents[0].error.message == "exit 3"
        assert [(t.place, t.data) for t in failed.tokens] == [("a", {"x": 1})]

        wf = Workflow("fails_to_review")
        a, b, review, fixed = wf.states("a", "b", "review", "fixed")
        wf.flow(a >> b, "run").action(Echo(value=1), remote=True).on_error(review)
        wf.flow(review >> fixed, "fix").manual()
        other = await engine.start(wf, {"x": 2})
        task = await queue.next_task()
        await queue.deliver(result_for(task, "failed", error=error))
        waiting = await engine.wait(other.id, timeout=10)
        assert waiting.status is InstanceStatus.WAITING and waiting.open_incidents == []
        (tok,) = waiting.tokens
        assert tok.place == "review" and tok.data["_error"]["message"] == "exit 3" and tok.data["x"] == 2


async def test_a_dead_lettered_task_fails_the_instance_and_completes_when_retried_from_the_queue(
    stores: Callable[[], Any],
) -> None:
    queue = ControlledQueue()
    async with Engine(stores(), tasks=queue) as engine:
        wf = echo_flow("dead")
        inst = await engine.start(wf, {"x": 1})
        task = await queue.next_task()
        error = {"kind": "ConnectionError", "message": "backend down", "retryable": True}
        await queue.deliver(result_for(task, "dead_lettered", error=error))
        failed = await engine.wait(inst.id, timeout=10)
        assert failed.status is InstanceStatus.FAILED
        assert failed.tokens == [] and failed.tasks[0].dead_lettered
        assert failed.open_incidents[0].error.message == "backend down"
        # `circuit-breaker dlq retry` puts attempt 2 on the queue; its result completes the instance.
        await queue.deliver(result_for(task, attempt=2, output={"echo": "at last"}))
        done = await engine.wait(inst.id, timeout=10)
        assert done.status is InstanceStatus.COMPLETED and done.tokens[0].data["echo"] == "at last"
        assert done.open_incidents == []

        second = await engine.start(wf, {"x": 2})
        task = await queue.next_task()
        await queue.deliver(result_for(task, "dead_lettered", error=error))
        await engine.wait(second.id, timeout=10)
        await engine.retry(second.id)  # or retry the instance: the engine hands the task out again
        again = await queue.next_task()
        assert (again.task_id, again.attempt) == (task.task_id, 2)
        await queue.deliver(result_for(again, output={"echo": 2}))
        assert (await engine.wait(second.id, timeout=10)).status is InstanceStatus.COMPLETED


async def test_rules_that_refuse_a_result_put_the_token_back(stores: Callable[[], Any]) -> None:
    queue = ControlledQueue()
    rules = RuleSet()
    rules.add("big_echo", "echo > 5")
    wf = Workflow("refused", rules=rules)
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "run", rules={"all": ["big_echo"]}).action(Echo(value="{{ x }}"), remote=True)
    async with Engine(stores(), tasks=queue) as engine:
        inst = await engine.start(wf, {"x": 1})
        task = await queue.next_task()
        await queue.deliver(result_for(task, output={"echo": 1}))
        stalled = await engine.wait(inst.id, timeout=10)
        assert stalled.status is InstanceStatus.WAITING and stalled.stalled
        assert [(t.place, t.data) for t in stalled.tokens] == [("a", {"x": 1})]


async def test_a_manual_remote_transition_returns_once_its_result_is_applied(stores: Callable[[], Any]) -> None:
    wf = Workflow("manual_remote")
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "approve").action(Echo(value="{{ who }}"), remote=True).manual()
    async with Engine(stores(), tasks=LocalTaskQueue(registry())) as engine:
        inst = await engine.wait((await engine.start(wf, {})).id, timeout=10)
        assert inst.enabled_manual == ["approve"]
        done = await engine.fire(inst.id, "approve", actor="ann", data={"who": "ann"})
        assert done.status is InstanceStatus.COMPLETED and done.tokens[0].data == {"who": "ann", "echo": "ann"}

    queue = ControlledQueue()
    async with Engine(MemoryStore(), tasks=queue) as engine:
        inst = await engine.wait((await engine.start(wf, {})).id, timeout=10)
        firing = asyncio.ensure_future(engine.fire(inst.id, "approve"))
        task = await queue.next_task()
        await queue.deliver(result_for(task, "failed", error={"kind": "x", "message": "no", "retryable": False}))
        with pytest.raises(ActionError, match="no"):
            await firing
        assert [t.place for t in (await engine.get(inst.id)).tokens] == ["a"]


async def test_refused_results_of_a_manual_remote_transition_raise_like_a_local_one() -> None:
    rules = RuleSet()
    rules.add("said_yes", "echo == 'yes'")
    wf = Workflow("manual_refused", rules=rules)
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "approve", rules={"all": ["said_yes"]}).action(Echo(value="{{ v }}"), remote=True).manual()
    async with Engine(tasks=LocalTaskQueue(registry())) as engine:
        inst = await engine.wait((await engine.start(wf, {"v": "no"})).id, timeout=10)
        with pytest.raises(TransitionRejectedError):
            await engine.fire(inst.id, "approve")
        assert [t.place for t in (await engine.get(inst.id)).tokens] == ["a"]


async def test_an_engine_restarted_mid_task_recovers_it_and_applies_its_result(stores: Callable[[], Any]) -> None:
    first = ControlledQueue()
    engine = Engine(stores(), tasks=first)
    await engine.open()
    inst = await engine.start(echo_flow("restart"), {"x": 5})
    task = await first.next_task()
    await engine.close()  # the engine stops with the task in a worker's hands

    second = ControlledQueue()
    async with Engine(stores(), workflows=[echo_flow("restart")], tasks=second) as engine:
        for _ in range(100):
            if second.recovered:
                break
            await asyncio.sleep(0.05)
        (recovered,) = second.recovered
        assert (recovered.task_id, recovered.attempt, recovered.data) == (task.task_id, 1, {"x": 5})
        await second.deliver(result_for(task, output={"echo": 5}))
        done = await engine.wait(inst.id, timeout=10)
        assert done.status is InstanceStatus.COMPLETED and done.tokens[0].data["echo"] == 5


async def test_remote_executors_makes_every_action_of_a_kind_remote() -> None:
    wf = Workflow("by_kind")
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "run").action(Echo(value=3))
    async with Engine(tasks=LocalTaskQueue(registry()), remote_executors=["echo"]) as engine:
        inst = await engine.wait((await engine.start(wf, {})).id, timeout=10)
        assert inst.tokens[0].data == {"echo": 3}
        types = [e.type async for e in engine.events(instance=inst.id)]
        assert EventType.TRANSITION_STARTED in types
    async with Engine() as local:  # the same workflow on another engine still runs the action in-process
        inst = await local.wait((await local.start(wf, {})).id, timeout=10)
        assert EventType.TRANSITION_STARTED not in [e.type async for e in local.events(instance=inst.id)]


def test_only_an_executor_can_run_remotely_and_never_with_secrets_in_its_spec() -> None:
    wf = Workflow("bad_remote")
    a, b = wf.states("a", "b")
    with pytest.raises(DefinitionError, match="'run'.*executor"):
        wf.flow(a >> b, "run").action(lambda token: {}, remote=True)
    from circuit_breaker.executors import HttpExecutor

    wf2 = Workflow("secret_remote")
    c, d = wf2.states("c", "d")
    with pytest.raises(DefinitionError, match="secret"):
        wf2.flow(c >> d, "call").action(
            HttpExecutor(url="http://127.0.0.1:1/x", auth={"type": "bearer", "token": "s3cr3t-value"}), remote=True
        )
    with pytest.raises(DefinitionError, match="deadline"):
        wf2.flow(c >> d, "late").action(Echo(value=1), remote=True, deadline=0)
    # A literal under a secret name is stored as it is, though output masks it (found in a walk-through).
    from circuit_breaker.executors import ShellExecutor

    with pytest.raises(DefinitionError, match=r"env\['API_TOKEN'\]") as literal:
        wf2.flow(c >> d, "env").action(ShellExecutor(argv=["true"], env={"API_TOKEN": "hunter2-literal"}), remote=True)
    assert "hunter2" not in str(literal.value)
    with pytest.raises(DefinitionError, match=r"headers\['Authorization'\]"):
        wf2.flow(c >> d, "hdr").action(
            HttpExecutor(url="http://127.0.0.1:1/x", headers={"Authorization": "Bearer abc123"}), remote=True
        )
    # A template is filled on the worker, and other names are fine.
    wf2.flow(c >> d, "templ").action(
        ShellExecutor(
            argv=["true"],
            env={"API_TOKEN": "{{ token_ref }}", "REGION": "eu-1", "AWS_SECRET_ACCESS_KEY_FILE": "/run/secrets/aws"},
        ),
        remote=True,
    )


async def test_a_retry_policy_does_not_hand_out_again_a_task_whose_deadline_is_not_set() -> None:
    queue = ControlledQueue()
    async with Engine(tasks=queue) as engine:
        wf = echo_flow("no_deadline")
        wf.transition("run").retry(RetryPolicy(max_attempts=3, initial_delay=0.01))
        inst = await engine.start(wf, {"x": 1})
        await queue.next_task()
        await asyncio.sleep(0.3)
        assert queue.submitted == [] and (await engine.get(inst.id)).tasks[0].attempt == 1


# -- regressions found in review ----------------------------------------------------------------------------


async def test_a_late_result_does_not_end_a_manual_firing_waiting_for_the_newer_attempt() -> None:
    queue = ControlledQueue()
    wf = Workflow("manual_deadline")
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "approve").action(Echo(value=1), remote=True, deadline=0.2).retry(3).manual()
    async with Engine(tasks=queue) as engine:
        inst = await engine.wait((await engine.start(wf, {})).id, timeout=10)
        firing = asyncio.ensure_future(engine.fire(inst.id, "approve"))
        first = await queue.next_task()
        second = await queue.next_task()
        await queue.deliver(result_for(first, output={"echo": "late"}))
        await asyncio.sleep(0.05)
        assert not firing.done(), "a superseded attempt's result must not answer the caller"
        await queue.deliver(result_for(second, output={"echo": "now"}))
        done = await asyncio.wait_for(firing, 10)
        assert done.tokens[0].data["echo"] == "now"


async def test_cancelling_with_a_task_in_flight_settles_the_instance_and_ignores_the_result(
    stores: Callable[[], Any],
) -> None:
    queue = ControlledQueue()
    wf = echo_flow("cancelled_mid_task")
    async with Engine(stores(), tasks=queue) as engine:
        inst = await engine.start(wf, {"x": 1})
        task = await queue.next_task()
        await engine.cancel(inst.id)
        cancelled = await engine.wait(inst.id, timeout=5)
        assert cancelled.status is InstanceStatus.CANCELLED
        await queue.deliver(result_for(task, output={"echo": 1}))
        after = await engine.get(inst.id)
        assert after.status is InstanceStatus.CANCELLED and after.version == cancelled.version
    again = ControlledQueue()
    async with Engine(stores(), workflows=[echo_flow("cancelled_mid_task")], tasks=again) as engine:
        await asyncio.sleep(0.2)
        assert again.recovered == [] and again.submitted == [], "a cancelled instance's task is not handed out"


async def test_a_manual_firing_waiting_on_a_task_hears_of_a_cancel() -> None:
    queue = ControlledQueue()
    wf = Workflow("manual_cancelled")
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "approve").action(Echo(value=1), remote=True).manual()
    async with Engine(tasks=queue) as engine:
        inst = await engine.wait((await engine.start(wf, {})).id, timeout=10)
        firing = asyncio.ensure_future(engine.fire(inst.id, "approve"))
        await queue.next_task()
        await engine.cancel(inst.id)
        with pytest.raises(InstanceStateError):
            await asyncio.wait_for(firing, 5)


async def test_a_task_failing_while_the_instance_is_paused_fails_it_on_resume() -> None:
    queue = ControlledQueue()
    async with Engine(tasks=queue) as engine:
        inst = await engine.start(echo_flow("paused_failure"), {"x": 1})
        task = await queue.next_task()
        await engine.pause(inst.id)
        await queue.deliver(result_for(task, "failed", error={"kind": "k", "message": "boom", "retryable": False}))
        paused = await engine.get(inst.id)
        assert paused.status is InstanceStatus.PAUSED and len(paused.open_incidents) == 1
        resumed = await engine.resume(inst.id)
        assert resumed.status is InstanceStatus.FAILED
        await asyncio.sleep(0.1)
        assert queue.submitted == [], "the failed token is not handed out again behind the incident"


async def test_a_worker_reporting_the_deadline_passed_gets_the_next_attempt_not_an_incident() -> None:
    queue = ControlledQueue()
    wf = echo_flow("worker_expired", deadline=30)
    wf.transition("run").retry(3)
    async with Engine(tasks=queue) as engine:
        inst = await engine.start(wf, {"x": 1})
        first = await queue.next_task()
        expired = {"kind": "expired", "message": "the task's deadline had passed", "retryable": False}
        await queue.deliver(result_for(first, "failed", error=expired))
        second = await queue.next_task()
        assert (second.task_id, second.attempt) == (first.task_id, 2)
        await queue.deliver(result_for(second, output={"echo": 1}))
        assert (await engine.wait(inst.id, timeout=10)).status is InstanceStatus.COMPLETED


async def test_a_result_a_stage_cannot_expand_puts_the_token_back_instead_of_coming_back_for_ever() -> None:
    queue = ControlledQueue()
    wf = Workflow("remote_scatter")
    a, b, c = wf.states("a", "b", "c")
    wf.scatter(a >> b, "split", items="items").action(Echo(value=[]), remote=True)
    async with Engine(tasks=queue) as engine:
        inst = await engine.start(wf, {})
        task = await queue.next_task()
        await queue.deliver(result_for(task, output={"items": "not a list"}))
        stalled = await engine.wait(inst.id, timeout=5)
        assert stalled.status is InstanceStatus.WAITING and [t.place for t in stalled.tokens] == ["a"]
        (rejected,) = [e async for e in engine.events(instance=inst.id, types=[EventType.TRANSITION_REJECTED])]
        assert rejected.task_id == task.task_id and rejected.errors


async def test_a_restart_without_the_remote_setting_still_finishes_the_tasks_in_flight() -> None:
    store = MemoryStore()
    wf = Workflow("by_kind_restart")
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "run").action(Echo(value="{{ x }}"))
    first = ControlledQueue()
    async with Engine(store, tasks=first, remote_executors=["echo"]) as engine:
        inst = await engine.start(wf, {"x": 4})
        task = await first.next_task()
    second = ControlledQueue()
    async with Engine(store, workflows=[wf], tasks=second) as engine:  # remote_executors not given this time
        for _ in range(100):
            if second.recovered:
                break
            await asyncio.sleep(0.02)
        (recovered,) = second.recovered
        assert recovered.executor == {"executor": "echo", "params": {"value": "{{ x }}"}}
        await second.deliver(result_for(task, output={"echo": 4}))
        assert (await engine.wait(inst.id, timeout=10)).tokens[0].data == {"x": 4, "echo": 4}


async def test_a_join_rebuilt_from_the_store_equals_the_live_instance(stores: Callable[[], Any]) -> None:
    queue = ControlledQueue()
    wf = Workflow("remote_join")
    s, a, b, b2, c = wf.states("s", "a", "b", "b2", "c")
    wf.flow(s >> (b, a), "fork")
    wf.flow(b >> b2, "stepb")
    wf.flow((b2, a) >> c, "join").action(Echo(value=1), remote=True)
    async with Engine(stores(), tasks=queue) as engine:
        inst = await engine.start(wf, {"x": 1})
        task = await queue.next_task()
        assert task.data == {"x": 1}
        await queue.deliver(result_for(task, output={"echo": 1}))
        live = await engine.wait(inst.id, timeout=10)
    async with Engine(stores(), workflows=[wf], drive=False) as observer:
        rebuilt = await observer.get(inst.id)
    assert rebuilt.model_dump(mode="json") == live.model_dump(mode="json")
    assert [h.transition for h in live.tokens[0].history] == [None, "fork", "stepb", "join"]


async def test_a_scatter_expands_its_action_result_whether_the_action_runs_here_or_on_a_worker() -> None:
    for remote in (False, True):
        wf = Workflow(f"scatter_result_{remote}")
        a, b = wf.states("a", "b")
        wf.scatter(a >> b, "split", items="echo").action(Echo(value=[1, 2, 3]), remote=remote)
        async with Engine(tasks=LocalTaskQueue(registry())) as engine:
            inst = await engine.start(wf, {})
            await asyncio.sleep(0.3)
            now = await engine.get(inst.id)
            assert sorted(t.data.get("item") for t in now.tokens if t.place == "b") == [1, 2, 3], remote
