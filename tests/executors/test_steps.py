"""StepExecutor: sequential steps that see earlier outputs, bounded parallel steps, failures, usage and specs."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, ClassVar

import pytest

from circuit_breaker import Engine, Workflow
from circuit_breaker.errors import ExecutorConfigError, ExecutorError
from circuit_breaker.executors import Executor, default_registry, param
from circuit_breaker.executors.data import InjectExecutor, SetExecutor, WaitExecutor
from circuit_breaker.executors.steps import StepExecutor


class Echo(Executor):
    """Returns its text and counts its runs (usage), like a command's stdout."""

    name = "echo"
    text: str = param(required=True)
    runs: ClassVar[list[str]] = []

    async def execute_internal(self) -> dict[str, Any]:
        Echo.runs.append(self.text)
        self.record_usage(calls=1, cpu_time=0.5)
        return {"stdout": self.text}


class Boom(Executor):
    name = "boom"
    retryable: bool = param(default=False)

    async def execute_internal(self) -> dict[str, Any]:
        raise ExecutorError("disk full", executor=self.name, kind="io", retryable=self.retryable)


class Busy(Executor):
    """Sleeps, tracking how many Busy steps run at the same time."""

    name = "busy"
    seconds: float = param(default=0.02)
    running: ClassVar[int] = 0
    peak: ClassVar[int] = 0

    async def execute_internal(self) -> dict[str, Any]:
        Busy.running += 1
        Busy.peak = max(Busy.peak, Busy.running)
        try:
            await asyncio.sleep(self.seconds)
        finally:
            Busy.running -= 1
        return {"slept": self.seconds}


@pytest.fixture(autouse=True)
def _reset() -> None:
    Echo.runs = []
    Busy.running = Busy.peak = 0


# -- sequential ----------------------------------------------------------------------------------------------
async def test_later_steps_read_earlier_outputs_through_previous_and_steps() -> None:
    ex = StepExecutor(
        steps=[
            Echo(text="build-42"),
            Echo(text="deploy {{ previous.stdout }}"),
            Echo(text="first {{ steps.0.stdout }}, then {{ steps.1.stdout }}"),
        ]
    )

    out = await ex.execute()

    assert out["status"] == "succeeded"
    assert [s["output"]["stdout"] for s in out["steps"]] == [
        "build-42",
        "deploy build-42",
        "first build-42, then deploy build-42",
    ]
    assert [s["status"] for s in out["steps"]] == ["succeeded"] * 3
    json.dumps(out)  # summaries are plain JSON: they can merge into token data


async def test_data_param_feeds_the_templates_and_set_paths_read_the_step_context() -> None:
    ex = StepExecutor(
        data={"env": "prod"},
        steps=[
            InjectExecutor(data={"items": [{"id": 1}, {"id": 2}], "target": "{{ env }}"}),
            SetExecutor(paths={"ids": "$.previous.items[*].id", "where": "env"}),
        ],
    )

    out = await ex.execute()

    assert out["steps"][0]["output"]["target"] == "prod"
    assert out["steps"][1]["output"] == {"ids": [1, 2], "where": "prod"}


async def test_a_failing_step_stops_the_sequence_and_fails_naming_the_step() -> None:
    ex = StepExecutor(steps=[Echo(text="a"), Boom(), Echo(text="never")])

    result = await ex.execute_detailed()

    assert Echo.runs == ["a"]
    assert result.status == "failed"
    assert result.error is not None
    assert result.error.kind == "step_failed"
    assert "step 1 of 3 (boom) failed: disk full" in result.error.message
    assert result.error.retryable is False  # the failed step's own verdict
    assert result.error.details["step"] == 1 and result.error.details["executor"] == "boom"
    steps = result.error.details["steps"]  # every step's record, kept with the error
    assert [s["status"] for s in steps] == ["succeeded", "failed", "cancelled"]
    assert steps[1]["error"]["message"] == "disk full"
    assert steps[2]["error"]["kind"] == "not_run"
    with pytest.raises(ExecutorError, match=r"step 1 of 3 \(boom\) failed") as caught:
        await ex.execute()
    assert caught.value.kind == "step_failed"
    assert [s["status"] for s in caught.value.details["steps"]] == ["succeeded", "failed", "cancelled"]


async def test_a_retryable_step_failure_leaves_the_whole_executor_retryable() -> None:
    result = await StepExecutor(steps=[Boom(retryable=True)]).execute_detailed()

    assert result.error is not None and result.error.retryable is True


async def test_continue_on_error_runs_every_step_and_reports_each_status() -> None:
    ex = StepExecutor(steps=[Echo(text="a"), Boom(), Echo(text="after {{ previous }}")], continue_on_error=True)

    result = await ex.execute_detailed()

    assert result.status == "succeeded"
    assert result.output["status"] == "failed"
    steps = result.output["steps"]
    assert [s["status"] for s in steps] == ["succeeded", "failed", "succeeded"]
    assert steps[1]["error"]["kind"] == "io" and steps[1]["error"]["message"] == "disk full"
    assert steps[2]["output"] == {"stdout": "after {}"}  # a failed step's output is empty


async def test_a_template_naming_missing_data_fails_that_step_not_the_process() -> None:
    ex = StepExecutor(steps=[Echo(text="a"), Echo(text="{{ previous.nothing }}")], continue_on_error=True)

    out = await ex.execute()

    failed = out["steps"][1]
    assert failed["status"] == "failed" and failed["error"]["kind"] == "template"
    assert "nothing" in failed["error"]["message"] and "'echo'" in failed["error"]["message"]
    assert failed["error"]["retryable"] is False


async def test_usage_is_the_sum_of_the_steps_usage() -> None:
    result = await StepExecutor(steps=[Echo(text="a"), Echo(text="b"), Echo(text="c")]).execute_detailed()

    assert result.usage == {"calls": 3, "cpu_time": 1.5}


# -- parallel ------------------------------------------------------------------------------------------------
async def test_parallel_never_runs_more_than_max_parallel_steps_at_once() -> None:
    ex = StepExecutor(steps=[Busy(seconds=0.02) for _ in range(20)], parallel=True, max_parallel=3)

    t0 = time.perf_counter()
    out = await ex.execute()
    elapsed = time.perf_counter() - t0

    assert Busy.peak == 3
    assert out["status"] == "succeeded" and len(out["steps"]) == 20
    assert elapsed >= 7 * 0.02 * 0.9  # ceil(20 / 3) rounds of 20 ms: really bounded, not serial either
    assert elapsed < 20 * 0.02


async def test_parallel_steps_run_at_the_same_time_and_keep_step_order_in_the_output() -> None:
    steps: list[Executor] = [Busy(seconds=0.1), Echo(text="quick"), Busy(seconds=0.05)]
    t0 = time.perf_counter()

    out = await StepExecutor(steps=steps, parallel=True).execute()

    assert time.perf_counter() - t0 < 0.18
    assert [s["executor"] for s in out["steps"]] == ["busy", "echo", "busy"]
    assert out["steps"][1]["output"] == {"stdout": "quick"}


async def test_a_parallel_failure_stops_the_other_steps() -> None:
    steps: list[Executor] = [Busy(seconds=1.0), Boom(), *(Echo(text=f"e{i}") for i in range(5))]
    t0 = time.perf_counter()

    result = await StepExecutor(steps=steps, parallel=True, max_parallel=2).execute_detailed()

    assert time.perf_counter() - t0 < 0.5  # the 1 s step was cancelled, not awaited
    assert result.error is not None and result.error.kind == "step_failed"
    assert "step 1 of 7 (boom)" in result.error.message
    steps_out = result.error.details["steps"]
    assert steps_out[0]["status"] == "cancelled" and steps_out[0]["error"]["kind"] == "cancelled"
    assert {s["error"]["kind"] for s in steps_out[2:]} == {"not_run"}
    assert Echo.runs == []


async def test_parallel_continue_on_error_runs_everything() -> None:
    steps: list[Executor] = [Boom(), *(Echo(text=f"e{i}") for i in range(4))]

    out = await StepExecutor(steps=steps, parallel=True, max_parallel=2, continue_on_error=True).execute()

    assert out["status"] == "failed"
    assert sorted(Echo.runs) == ["e0", "e1", "e2", "e3"]
    assert [s["status"] for s in out["steps"]] == ["failed"] + ["succeeded"] * 4


async def test_a_timeout_on_the_step_executor_cancels_running_parallel_steps() -> None:
    ex = StepExecutor(steps=[Busy(seconds=5) for _ in range(3)], parallel=True).with_timeout(0.05)

    result = await ex.execute_detailed()

    assert result.status == "timed_out"
    await asyncio.sleep(0)
    assert Busy.running == 0


# -- configuration and specs ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"steps": []}, "steps"),
        ({}, "'steps' is required"),
        ({"steps": ["echo hi"]}, "steps"),
        ({"steps": [Echo(text="a")], "parallel": True, "max_parallel": 0}, "max_parallel"),
        ({"steps": [Echo(text="a")], "max_parallel": 2}, "parallel=True"),
    ],
)
def test_bad_configuration_is_refused_when_built(params: dict[str, Any], says: str) -> None:
    with pytest.raises(ExecutorConfigError, match="step") as caught:
        StepExecutor(**params)
    assert says in str(caught.value)


async def test_a_spec_rebuilds_a_working_step_executor_with_nested_steps() -> None:
    inner = StepExecutor(steps=[SetExecutor(values={"n": 2}), SetExecutor(values={"m": "{{ previous.n }}"})])
    ex = StepExecutor(
        steps=[WaitExecutor(duration="PT0.01S"), inner, InjectExecutor(data={"last": "{{ previous.status }}"})],
        continue_on_error=True,
    ).with_retry(2)

    spec = json.loads(json.dumps(ex.spec()))  # as it travels to a worker
    rebuilt = default_registry().from_spec(spec)

    assert isinstance(rebuilt, StepExecutor)
    assert rebuilt.spec() == ex.spec()
    assert rebuilt.retry_policy == ex.retry_policy
    out = await rebuilt.execute()
    assert out["status"] == "succeeded"
    assert out["steps"][1]["output"]["steps"][1]["output"] == {"m": 2}
    assert out["steps"][2]["output"] == {"last": "succeeded"}
    assert spec["params"]["steps"][2]["params"]["data"] == {"last": "{{ previous.status }}"}  # kept for later


# -- as a transition action ----------------------------------------------------------------------------------
async def test_as_an_action_the_steps_read_the_token_data_and_the_output_merges(engine: Engine) -> None:
    wf = Workflow("release")
    new, done = wf.states("new", "done")
    steps = StepExecutor(
        steps=[Echo(text="tag {{ version }}"), SetExecutor(paths={"tagged": "$.previous.stdout", "who": "owner"})]
    )
    wf.flow(new >> done, "ship", action=steps.as_action(into="release"))

    inst = await engine.wait((await engine.start(wf, {"version": "1.2", "owner": "ana"})).id, timeout=5)

    assert inst.status.value == "completed"
    release = inst.data["release"]
    assert release["status"] == "succeeded"
    assert release["steps"][1]["output"] == {"tagged": "tag 1.2", "who": "ana"}


async def test_as_an_action_a_failing_step_becomes_an_incident_naming_it(engine: Engine) -> None:
    wf = Workflow("release")
    new, done = wf.states("new", "done")
    wf.flow(new >> done, "ship", action=StepExecutor(steps=[Echo(text="{{ version }}"), Boom()]).as_action())

    inst = await engine.wait((await engine.start(wf, {"version": "1.2"})).id, timeout=5)

    assert inst.status.value == "failed"
    (incident,) = inst.open_incidents
    assert "step 1 of 2 (boom) failed: disk full" in incident.error.message
