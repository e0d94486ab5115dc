"""Back-end failures seen from a workflow: each is an executor error with a sensible ``retryable``, the
instance gets an incident naming it, and the token stays where it was (nothing half-moved).

Real parts: the scripted OpenAI-compatible server through the real ``openai`` client, real handler files run
by the serverless executor's local runtime, and closed loopback ports for servers that are down.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from circuit_breaker import Engine, InstanceStatus, RetryPolicy, Workflow
from circuit_breaker.executors import Executor
from circuit_breaker.executors.agent import AgentExecutor
from circuit_breaker.executors.assistant import AssistantExecutor
from circuit_breaker.executors.serverless import ServerlessExecutor
from circuit_breaker.testing.openai_server import RawResponse, ScriptedOpenAIServer, tool_call

HANDLERS = Path(__file__).parent / "functions" / "local_handler.py"
WAIT = 30


def closed_url(path: str = "") -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}{path}"


LOOKED_UP: list[str] = []


def lookup(city: str) -> str:
    """Look up the weather in a city."""
    LOOKED_UP.append(city)
    return f"sunny in {city}"


@pytest.fixture(scope="module")
def garbage_server() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer(lambda _request: RawResponse("<html>bad gateway</html>", content_type="text/html")) as s:
        yield s


@pytest.fixture(scope="module")
def inventing_server() -> Iterator[ScriptedOpenAIServer]:
    """A model that only ever calls a tool nobody gave it."""
    with ScriptedOpenAIServer(lambda _request: tool_call("launch_rockets", {"count": 3})) as s:
        yield s


@pytest.fixture(scope="module")
def wrong_json_server() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer(lambda _request: {"content": '{"score": "high"}'}) as s:
        yield s


async def run_failing(executor: Executor, *, attempts: int = 1) -> tuple[Any, Any]:
    wf = Workflow("backend_failure")
    waiting, done = wf.states("waiting", "done")
    wf.flow(waiting >> done, "call", retry=RetryPolicy(max_attempts=attempts, initial_delay=0.01)).action(
        executor.as_action(into="result")
    )
    async with Engine(workflows=[wf]) as engine:
        inst = await engine.start(wf, {"city": "Oslo", "n": 2})
        inst = await engine.wait(inst.id, timeout=WAIT)
    assert inst.status is InstanceStatus.FAILED
    assert inst.places == ["waiting"], "the token stays where it was"
    assert inst.data == {"city": "Oslo", "n": 2}, "nothing of the failed call reached the token"
    (incident,) = inst.open_incidents
    assert incident.transition == "call"
    return incident.error, incident


async def test_model_server_down_is_a_retryable_connection_error() -> None:
    ex = AssistantExecutor(model="m", input="{{ city }}", base_url=closed_url("/v1"), api_key="sk-x")
    error, incident = await run_failing(ex, attempts=2)
    assert (error.kind, error.retryable, incident.attempts) == ("connection", True, 2)


async def test_model_server_answering_garbage_is_a_retryable_malformed_response(
    garbage_server: ScriptedOpenAIServer,
) -> None:
    ex = AssistantExecutor(model="m", input="{{ city }}", base_url=garbage_server.url, api_key="sk-x")
    error, _ = await run_failing(ex)
    assert (error.kind, error.retryable) == ("malformed_response", True)


async def test_an_answer_off_the_schema_is_a_retryable_malformed_output(
    wrong_json_server: ScriptedOpenAIServer,
) -> None:
    schema = {"type": "object", "properties": {"score": {"type": "number"}}, "required": ["score"]}
    ex = AssistantExecutor(
        model="m", input="{{ city }}", response_format=schema, base_url=wrong_json_server.url, api_key="sk-x"
    )
    error, _ = await run_failing(ex)
    assert (error.kind, error.retryable) == ("malformed_output", True)
    assert "score" in error.message


async def test_a_model_that_keeps_inventing_tools_is_told_so_and_then_stopped(
    inventing_server: ScriptedOpenAIServer,
) -> None:
    before = len(inventing_server.requests)
    ex = AssistantExecutor(
        model="m", input="{{ city }}", tools=[lookup], max_tool_rounds=2, base_url=inventing_server.url, api_key="k"
    )
    error, _ = await run_failing(ex)
    assert (error.kind, error.retryable) == ("max_tool_rounds", False)
    answers = [m for r in inventing_server.requests[before:] for m in r["messages"] if m["role"] == "tool"]
    assert answers and all("unknown tool launch_rockets" in a["content"] for a in answers)


async def test_an_agent_never_runs_an_invented_tool(inventing_server: ScriptedOpenAIServer) -> None:
    ex = AgentExecutor(
        task="weather in Oslo?", tools=[lookup], max_iterations=2, model="m", base_url=inventing_server.url
    )
    out = await ex.execute()
    assert out["status"] == "max_iterations_reached"
    assert [step["error"] for step in out["memory"]] == ["unknown tool launch_rockets; available: lookup"] * 2
    assert LOOKED_UP == [], "no tool ran in its place"


async def test_a_function_raising_keeps_its_error_type() -> None:
    error, _ = await run_failing(ServerlessExecutor(handler=f"{HANDLERS}:fail", payload={"quota": "{{ n }}"}))
    assert error.kind == "QuotaExceeded" and error.retryable
    assert "quota of 2 used up" in error.message


async def test_a_function_timing_out_is_a_retryable_timeout() -> None:
    error, _ = await run_failing(ServerlessExecutor(handler=f"{HANDLERS}:slow", payload={"sleep": 10}, timeout=0.5))
    assert (error.kind, error.retryable) == ("timeout", True)


async def test_a_function_gateway_that_is_down_is_a_retryable_connection_error() -> None:
    error, _ = await run_failing(ServerlessExecutor(function_name="score", url=closed_url(), payload={}))
    assert (error.kind, error.retryable) == ("connection", True)
