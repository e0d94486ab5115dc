"""The assistant executor through the real openai client against a scripted server on loopback."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any, Literal

import pytest

from circuit_breaker import Engine, InstanceStatus, Workflow
from circuit_breaker.errors import ExecutorConfigError, ExecutorError
from circuit_breaker.executors._tools import as_tool, parse_docstring
from circuit_breaker.executors.assistant import AssistantExecutor
from circuit_breaker.executors.data import SetExecutor
from circuit_breaker.testing.openai_server import RawResponse, ScriptedOpenAIServer, ServerError, reply, tool_call

KEY = "sk-test-7Qw9ZtV2xLp4"


@pytest.fixture
def server() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer() as srv:
        yield srv


def assistant(server: ScriptedOpenAIServer, **params: Any) -> AssistantExecutor:
    return AssistantExecutor(**{"model": "test", "input": "hi", "base_url": server.url, "api_key": KEY, **params})


def get_weather(city: str, unit: Literal["c", "f"] = "c") -> dict[str, Any]:
    """Current weather for a city.

    Args:
        city: The city's name.
        unit: Temperature unit.
    """
    return {"city": city, "temp": 21 if unit == "c" else 70}


async def convert(amount: float, currency: str) -> str:
    """Convert euros into another currency.

    Parameters
    ----------
    amount : float
        Euros to convert.
    currency : str
        ISO code of the target currency.
    """
    return f"{amount * 2:.2f} {currency}"


# -- plain answers ----------------------------------------------------------------------------------------------
async def test_plain_answer(server: ScriptedOpenAIServer) -> None:
    server.push(reply("The sky is blue."))
    ex = assistant(server, system_prompt="Be brief.", input="Why?", temperature=0.2, max_tokens=50)
    result = await ex.execute_detailed()
    assert result.status == "succeeded", result.error
    out = result.output
    assert out["content"] == "The sky is blue." and out["tool_calls"] == [] and out["model"] == "test"
    assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"] > 0
    assert out["latency_s"] >= 0
    sent = server.requests[0]
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}]
    assert sent["temperature"] == 0.2 and sent["max_tokens"] == 50 and "tools" not in sent
    assert server.request_headers[0]["authorization"] == f"Bearer {KEY}"
    assert result.usage["prompt_tokens"] == out["usage"]["prompt_tokens"] and result.usage["tool_calls"] == 0


async def test_streaming_joins_the_pieces(server: ScriptedOpenAIServer) -> None:
    server.push(tool_call("get_weather", {"city": "Oslo"}), "A long answer that arrives in several pieces.")
    out = await assistant(server, stream=True, tools=[get_weather]).execute()
    assert out["content"] == "A long answer that arrives in several pieces."
    assert out["tool_calls"][0]["result"] == {"city": "Oslo", "temp": 21}
    assert all(r["stream"] is True for r in server.requests)
    assert out["usage"]["completion_tokens"] > 0


# -- tools -------------------------------------------------------------------------------------------------------
async def test_tool_round_trip(server: ScriptedOpenAIServer) -> None:
    server.push(tool_call("get_weather", {"city": "Oslo"}, ("convert", {"amount": 3, "currency": "NOK"})), "Done.")
    ex = assistant(server, input="Weather in Oslo?", tools=[get_weather, convert])
    result = await ex.execute_detailed()
    out = result.output
    assert out["content"] == "Done."
    assert out["tool_calls"] == [
        {"name": "get_weather", "arguments": {"city": "Oslo"}, "result": {"city": "Oslo", "temp": 21}},
        {"name": "convert", "arguments": {"amount": 3, "currency": "NOK"}, "result": "6.00 NOK"},
    ]
    assert result.usage["tool_calls"] == 2 and result.usage["llm_requests"] == 2

    tools = {t["function"]["name"]: t["function"] for t in server.requests[0]["tools"]}
    assert tools["get_weather"] == {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city's name."},
                "unit": {"type": "string", "enum": ["c", "f"], "default": "c", "description": "Temperature unit."},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
    }
    assert tools["convert"]["parameters"]["properties"]["amount"] == {
        "type": "number",
        "description": "Euros to convert.",
    }
    assert tools["convert"]["parameters"]["required"] == ["amount", "currency"]

    second = server.requests[1]["messages"]
    call_ids = [c["id"] for c in second[1]["tool_calls"]]
    assert second[1]["role"] == "assistant" and [c["function"]["name"] for c in second[1]["tool_calls"]] == [
        "get_weather",
        "convert",
    ]
    assert second[2] == {
        "role": "tool",
        "tool_call_id": call_ids[0],
        "content": json.dumps({"city": "Oslo", "temp": 21}),
    }
    assert second[3] == {"role": "tool", "tool_call_id": call_ids[1], "content": "6.00 NOK"}


async def test_unknown_tool_and_bad_arguments_go_back_to_the_model(server: ScriptedOpenAIServer) -> None:
    server.push(tool_call("launch_rockets", {}, ("get_weather", {"unit": "k"})), "Sorry.")
    out = await assistant(server, tools=[get_weather]).execute()
    assert out["content"] == "Sorry."
    unknown, invalid = out["tool_calls"]
    assert unknown["error"] == "unknown tool launch_rockets; available: get_weather"
    assert "city: required" in invalid["error"] and "result" not in invalid
    tool_messages = [m for m in server.requests[1]["messages"] if m["role"] == "tool"]
    assert tool_messages[0]["content"] == "error: unknown tool launch_rockets; available: get_weather"
    assert tool_messages[1]["content"].startswith("error: ")


async def test_a_raising_tool_reports_its_error(server: ScriptedOpenAIServer) -> None:
    def flaky(n: int) -> int:
        """Fails."""
        raise RuntimeError(f"disk on fire ({n})")

    server.push(tool_call("flaky", {"n": 2}), "I could not.")
    out = await assistant(server, tools=[flaky]).execute()
    assert out["tool_calls"][0]["error"] == "RuntimeError: disk on fire (2)"
    assert server.requests[1]["messages"][-1]["content"] == "error: RuntimeError: disk on fire (2)"


async def test_tool_rounds_are_bounded(server: ScriptedOpenAIServer) -> None:
    server.push(*[tool_call("get_weather", {"city": "Oslo"})] * 3)
    with pytest.raises(ExecutorError) as info:
        await assistant(server, tools=[get_weather], max_tool_rounds=2).execute()
    assert info.value.kind == "max_tool_rounds" and not info.value.retryable
    assert len(server.requests) == 3


async def test_an_executor_is_a_tool(server: ScriptedOpenAIServer) -> None:
    tool = as_tool(SetExecutor(values={"fixed": 1}))
    assert "values" not in tool.parameters["properties"]  # fixed at construction: the model cannot change it
    server.push(tool_call(tool.name, {}), "ok")
    out = await assistant(server, tools=[SetExecutor(values={"fixed": 1})]).execute()
    assert out["tool_calls"][0]["result"] == {"fixed": 1}


async def test_an_executor_tool_gets_its_templates_from_the_token(server: ScriptedOpenAIServer) -> None:
    """Found in a walk-through: a tool's templates were never filled, so the tool failed with 'render(data) it
    with token data first'. They are filled from the data of the token whose action calls the model."""
    wf = Workflow("tool_templates")
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "ask").action(assistant(server, tools=[SetExecutor(values={"fixed": "{{ order_id }}"})]))
    server.push(tool_call(as_tool(SetExecutor(values={"fixed": 1})).name, {}), "ok")
    async with Engine() as engine:
        done = await engine.wait((await engine.start(wf, {"order_id": "A-17"})).id, timeout=10)
    assert done.status is InstanceStatus.COMPLETED, done.open_incidents
    assert done.tokens[0].data["tool_calls"][0]["result"] == {"fixed": "A-17"}


async def test_a_models_tool_arguments_are_never_templates(server: ScriptedOpenAIServer) -> None:
    """From a review: rendering the tool with the model's arguments in it let a model read token data it was
    never given by writing "{{ api_key }}" as an argument; the arguments are taken as they are."""
    wf = Workflow("tool_arguments")
    a, b = wf.states("a", "b")
    fixed = SetExecutor(paths={"order": "order_id"}, data={"order_id": "A-17"})  # the model may give values
    wf.flow(a >> b, "ask").action(assistant(server, tools=[fixed]))
    server.push(tool_call(as_tool(fixed).name, {"values": {"leak": "{{ api_key }}"}}), "ok")
    async with Engine() as engine:
        done = await engine.wait((await engine.start(wf, {"api_key": "sk-secret-123"})).id, timeout=10)
    assert done.tokens[0].data["tool_calls"][0]["result"] == {"leak": "{{ api_key }}", "order": "A-17"}


def test_docstring_parsing() -> None:
    summary, params = parse_docstring(get_weather.__doc__)
    assert summary == "Current weather for a city."
    assert params == {"city": "The city's name.", "unit": "Temperature unit."}
    assert parse_docstring(convert.__doc__)[1] == {
        "amount": "Euros to convert.",
        "currency": "ISO code of the target currency.",
    }


# -- JSON answers ------------------------------------------------------------------------------------------------
SCHEMA = {
    "type": "object",
    "properties": {"sentiment": {"enum": ["positive", "negative"]}, "score": {"type": "number"}},
    "required": ["sentiment", "score"],
}


async def test_json_answer_is_validated_and_parsed(server: ScriptedOpenAIServer) -> None:
    server.push('{"sentiment": "positive", "score": 0.9}', '```json\n{"sentiment": "negative", "score": 0.1}\n```')
    ex = assistant(server, response_format=SCHEMA)
    assert (await ex.execute())["content"] == {"sentiment": "positive", "score": 0.9}
    assert server.requests[0]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": SCHEMA},
    }
    assert (await ex.execute())["content"]["sentiment"] == "negative"


@pytest.mark.parametrize("answer", ['{"sentiment": "meh", "score": 1}', "not json at all", '{"score": 1'])
async def test_malformed_json_answer_is_a_retryable_error(server: ScriptedOpenAIServer, answer: str) -> None:
    server.push(answer)
    with pytest.raises(ExecutorError) as info:
        await assistant(server, response_format=SCHEMA).execute()
    assert info.value.kind == "malformed_output" and info.value.retryable


async def test_json_object_mode(server: ScriptedOpenAIServer) -> None:
    server.push('{"a": 1}')
    assert (await assistant(server, response_format="json").execute())["content"] == {"a": 1}
    assert server.requests[0]["response_format"] == {"type": "json_object"}


def test_bad_configuration_is_found_at_construction() -> None:
    with pytest.raises(ExecutorConfigError, match="response_format"):
        AssistantExecutor(model="m", input="x", response_format="yaml")
    with pytest.raises(ExecutorConfigError, match="not a valid JSON schema"):
        AssistantExecutor(model="m", input="x", response_format={"type": 12})
    with pytest.raises(ExecutorConfigError, match="not a tool"):
        AssistantExecutor(model="m", input="x", tools=[42])


# -- failures ----------------------------------------------------------------------------------------------------
async def test_server_down_is_a_retryable_connection_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ex = AssistantExecutor(model="m", input="x", base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, timeout=5)
    result = await ex.execute_detailed()
    assert result.status == "failed" and result.error is not None
    assert result.error.kind == "connection" and result.error.retryable


@pytest.mark.parametrize(("status", "retryable"), [(500, True), (503, True), (429, True), (400, False), (401, False)])
async def test_http_errors(server: ScriptedOpenAIServer, status: int, retryable: bool) -> None:
    server.push(ServerError(status, "nope"))
    result = await assistant(server).execute_detailed()
    assert result.error is not None and result.error.kind == "http_status"
    assert result.error.retryable is retryable and result.error.details["status_code"] == status


async def test_retry_policy_recovers_from_a_500(server: ScriptedOpenAIServer) -> None:
    server.push(ServerError(500), "recovered")
    result = await assistant(server).with_retry(2).execute_detailed()
    assert result.status == "succeeded" and result.attempts == 2 and result.output["content"] == "recovered"


async def test_malformed_server_response(server: ScriptedOpenAIServer) -> None:
    server.push(RawResponse("{this is not json"))
    result = await assistant(server).execute_detailed()
    assert result.error is not None and result.error.kind == "malformed_response" and result.error.retryable


async def test_missing_api_key_without_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CB_LLM_BASE_URL", "OPENAI_BASE_URL", "CB_LLM_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    result = await AssistantExecutor(model="m", input="x").execute_detailed()
    assert result.error is not None and result.error.kind == "missing_api_key" and not result.error.retryable


async def test_environment_supplies_url_and_key(server: ScriptedOpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    env_key = "sk-env-Hh3kLq81"
    monkeypatch.setenv("CB_LLM_BASE_URL", server.url)
    monkeypatch.setenv("CB_LLM_API_KEY", env_key)
    server.push(f"your key is {env_key}")
    out = await AssistantExecutor(model="m", input="x").execute()
    assert server.request_headers[0]["authorization"] == f"Bearer {env_key}"
    assert env_key not in json.dumps(out)  # masked: a key from the environment is still a secret


# -- secrets and workflows -----------------------------------------------------------------------------------------
async def test_api_key_never_shows(server: ScriptedOpenAIServer) -> None:
    server.push(f"echo {KEY}")
    ex = assistant(server)
    result = await ex.execute_detailed()
    assert KEY not in json.dumps(ex.spec()) and KEY not in repr(ex)
    assert KEY not in result.model_dump_json()
    assert ex.spec()["params"]["api_key"] == "***"


async def test_templated_input_from_token_data_in_a_workflow(server: ScriptedOpenAIServer) -> None:
    server.push("Looks positive.")
    wf = Workflow("analysis")
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "analyze").action(
        AssistantExecutor(model="test", input="Analyse {{ text }}", base_url=server.url, api_key=KEY).as_action(
            into="analysis"
        )
    )
    async with Engine(workflows=[wf]) as engine:
        instance = await engine.start(wf, {"text": "great product"})
        done = await engine.wait(instance.id, timeout=10)
        assert done.status is InstanceStatus.COMPLETED
        assert done.tokens[0].data["analysis"]["content"] == "Looks positive."
        events = [e.model_dump_json() async for e in engine.events(instance=instance.id)]
    assert server.requests[0]["messages"][-1] == {"role": "user", "content": "Analyse great product"}
    assert KEY not in done.model_dump_json() and all(KEY not in e for e in events)
