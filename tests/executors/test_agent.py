"""The agent executor through the real openai client against a scripted server on loopback."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from circuit_breaker.errors import ExecutorError
from circuit_breaker.executors.agent import AgentExecutor
from circuit_breaker.testing.openai_server import ScriptedOpenAIServer, ServerError, tool_call

KEY = "sk-test-agent-Pq93LmZ"


@pytest.fixture
def server() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer() as srv:
        yield srv


def search(query: str, limit: int = 3) -> list[str]:
    """Search the knowledge base.

    Args:
        query: What to look for.
        limit: How many hits to return.
    """
    return [f"{query}-{i}" for i in range(limit)]


async def calculate(expression: str) -> float:
    """Evaluate an arithmetic expression."""
    if expression == "1/0":
        raise ZeroDivisionError("division by zero")
    return 42.0


def agent(server: ScriptedOpenAIServer, **params: Any) -> AgentExecutor:
    base = {
        "task": "Find things",
        "tools": [search, calculate],
        "model": "test",
        "base_url": server.url,
        "api_key": KEY,
    }
    return AgentExecutor(**{**base, **params})


async def test_completes_after_tool_steps(server: ScriptedOpenAIServer) -> None:
    server.push(
        tool_call("search", {"query": "cats", "limit": 2}),
        tool_call("calculate", {"expression": "6*7"}),
        "Two cats, and the answer is 42.",
    )
    result = await agent(server).execute_detailed()
    out = result.output
    assert out["status"] == "completed" and out["iterations"] == 3
    assert out["final_output"] == "Two cats, and the answer is 42."
    assert out["memory"] == [
        {"iteration": 1, "tool": "search", "arguments": {"query": "cats", "limit": 2}, "output": ["cats-0", "cats-1"]},
        {"iteration": 2, "tool": "calculate", "arguments": {"expression": "6*7"}, "output": 42.0},
    ]
    assert out["tool_invocations"] == 2 and result.usage["tool_calls"] == 2
    first = server.requests[0]
    assert first["messages"][0]["role"] == "system" and first["messages"][1] == {
        "role": "user",
        "content": "Find things",
    }
    assert {t["function"]["name"] for t in first["tools"]} == {"search", "calculate"}
    assert server.requests[1]["messages"][-1]["content"] == json.dumps(["cats-0", "cats-1"])


async def test_a_raising_tool_and_an_invented_tool_go_back_to_the_model(server: ScriptedOpenAIServer) -> None:
    server.push(tool_call("calculate", {"expression": "1/0"}), tool_call("browse", {"url": "x"}), "Gave up.")
    out = await agent(server).execute()
    assert out["status"] == "completed"
    err, invented = out["memory"]
    assert err["error"] == "ZeroDivisionError: division by zero" and "output" not in err
    assert invented == {
        "iteration": 2,
        "tool": "browse",
        "arguments": {"url": "x"},
        "error": "unknown tool browse; available: search, calculate",
    }
    assert out["tool_invocations"] == 2
    assert server.requests[1]["messages"][-1]["content"] == "error: ZeroDivisionError: division by zero"
    assert server.requests[2]["messages"][-1]["content"] == "error: unknown tool browse; available: search, calculate"


async def test_max_iterations_reached(server: ScriptedOpenAIServer) -> None:
    server.push(*[tool_call("search", {"query": "more"})] * 3)
    out = await agent(server, max_iterations=3).execute()
    assert out["status"] == "max_iterations_reached" and out["iterations"] == 3
    assert out["final_output"] is None and len(out["memory"]) == 3
    assert len(server.requests) == 3


async def test_templated_task(server: ScriptedOpenAIServer) -> None:
    server.push("done")
    ex = agent(server, task="Research {{ topic }}").render({"topic": "otters"})
    assert (await ex.execute())["final_output"] == "done"
    assert server.requests[0]["messages"][1]["content"] == "Research otters"


async def test_server_failures_are_classified(server: ScriptedOpenAIServer) -> None:
    server.push(ServerError(503, "overloaded"))
    with pytest.raises(ExecutorError) as info:
        await agent(server).execute()
    assert info.value.kind == "http_status" and info.value.retryable
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = await agent(server, base_url=f"http://127.0.0.1:{port}/v1").execute_detailed()
    assert result.error is not None and result.error.kind == "connection" and result.error.retryable


def test_api_key_is_secret(server: ScriptedOpenAIServer) -> None:
    ex = agent(server)
    assert KEY not in json.dumps(ex.spec()) and KEY not in repr(ex)


async def test_spec_names_function_tools_and_rebuilds(server: ScriptedOpenAIServer) -> None:
    spec = agent(server).spec(reveal_secrets=True)
    assert spec["params"]["tools"] == ["tests.executors.test_agent:search", "tests.executors.test_agent:calculate"]
    rebuilt = AgentExecutor(**spec["params"])  # what a worker in another process does
    server.push(tool_call("search", {"query": "x", "limit": 1}), "ok")
    out = await rebuilt.execute()
    assert out["memory"][0]["output"] == ["x-0"]
