"""The ``assistant`` executor: one chat-completion exchange with a language model, tools included.

It speaks the OpenAI chat-completions API through the ``openai`` client, so the same workflow runs against
any compatible server. To point it at a real model, set ``CB_LLM_BASE_URL`` (or ``OPENAI_BASE_URL``) and
``CB_LLM_API_KEY`` (or ``OPENAI_API_KEY``) in the environment, or pass ``base_url``/``api_key``: OpenAI itself
(no base URL), vLLM (``http://host:8000/v1``), Ollama (``http://localhost:11434/v1``) and llama.cpp's server
(``http://localhost:8080/v1``) all work. Tests use ``circuit_breaker.testing.openai_server`` instead.

Failures carry what retry logic needs: ``connection`` and ``timeout`` (retryable), ``http_status`` (retryable
for 429 and 5xx only), ``malformed_response`` (the server's answer was not a completion; retryable),
``malformed_output`` (the model's JSON did not parse or match ``response_format``; retryable, a model may do
better next time), ``max_tool_rounds`` and ``missing_api_key`` (not retryable).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import jsonschema
import openai

from ..errors import ExecutorError
from ..secrets import default_masker
from ._base import Executor
from ._params import param
from ._tools import Tool, as_tools, tool_reference

__all__ = ["AssistantExecutor", "ChatSession"]

_FENCE = re.compile(r"^\s*```(?:json)?\s*\n(.*?)\n\s*```\s*$", re.S)


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


@dataclass
class _Answer:
    content: str | None
    tool_calls: list[dict[str, Any]]
    finish_reason: str | None
    model: str
    usage: dict[str, int]


@dataclass
class ChatSession:
    """A conversation with one model: sends requests, maps failures to ``ExecutorError``, runs tool calls.

    Shared by ``assistant`` and ``agent`` so both classify errors and report tool results the same way.
    """

    executor: Executor
    model: str
    base_url: str | None
    api_key: str | None
    timeout: float
    tools: dict[str, Tool]
    options: dict[str, Any] = field(default_factory=dict)
    stream: bool = False
    usage: dict[str, int] = field(default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0})
    requests: int = 0

    def __post_init__(self) -> None:
        base_url = self.base_url or _env("CB_LLM_BASE_URL", "OPENAI_BASE_URL")
        api_key = self.api_key
        if api_key is None:
            api_key = _env("CB_LLM_API_KEY", "OPENAI_API_KEY")
            if api_key:  # from the environment: still must never show up in results or logs
                default_masker().add(api_key)
        if not api_key:
            if base_url is None:
                raise ExecutorError(
                    f"executor {self.executor.name!r}: no api_key, and none in CB_LLM_API_KEY or OPENAI_API_KEY",
                    executor=self.executor.name,
                    kind="missing_api_key",
                    retryable=False,
                )
            api_key = "not-needed"  # local servers (Ollama, llama.cpp) take any key
        # Retries belong to the executor's policy, visible in its results, not hidden inside the client.
        self.client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=self.timeout, max_retries=0)

    @property
    def name(self) -> str:
        return self.executor.name

    async def close(self) -> None:
        await self.client.close()

    async def complete(self, messages: list[dict[str, Any]], **extra: Any) -> _Answer:
        """One request; the answer's message and usage, usage also added to the session's totals."""
        kwargs: dict[str, Any] = {"model": self.model, "messages": messages, **self.options, **extra}
        if self.tools:
            kwargs["tools"] = [t.schema() for t in self.tools.values()]
        self.requests += 1
        try:
            if self.stream:
                answer = await self._streamed(kwargs)
            else:
                response = await self.client.chat.completions.create(**kwargs)
                choice = response.choices[0]
                calls = [
                    {"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                    for c in choice.message.tool_calls or []
                    if c.type == "function"
                ]
                usage = response.usage
                answer = _Answer(
                    choice.message.content,
                    calls,
                    choice.finish_reason,
                    response.model or self.model,
                    {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens}
                    if usage
                    else {},
                )
        except openai.APIStatusError as err:
            code = err.status_code
            raise ExecutorError(
                f"executor {self.name!r}: the model server answered {code}: {err.message}",
                executor=self.name,
                kind="http_status",
                retryable=code == 429 or code >= 500,
                details={"status_code": code},
            ) from err
        except openai.APITimeoutError as err:
            raise ExecutorError(
                f"executor {self.name!r}: the model server did not answer within {self.timeout}s",
                executor=self.name,
                kind="timeout",
                retryable=True,
            ) from err
        except openai.APIConnectionError as err:
            raise ExecutorError(
                f"executor {self.name!r}: cannot reach the model server at {self.client.base_url}: {err}",
                executor=self.name,
                kind="connection",
                retryable=True,
            ) from err
        except (ValueError, TypeError, AttributeError, IndexError, openai.APIResponseValidationError) as err:
            raise ExecutorError(
                f"executor {self.name!r}: the model server's answer is not a chat completion: {err}",
                executor=self.name,
                kind="malformed_response",
                retryable=True,
            ) from err
        for key in ("prompt_tokens", "completion_tokens"):
            self.usage[key] += answer.usage.get(key, 0)
        return answer

    async def _streamed(self, kwargs: dict[str, Any]) -> _Answer:
        stream = await self.client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}
        )
        parts: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        finish: str | None = None
        model = self.model
        usage: dict[str, int] = {}
        async for chunk in stream:
            model = chunk.model or model
            if chunk.usage is not None:
                usage = {"prompt_tokens": chunk.usage.prompt_tokens, "completion_tokens": chunk.usage.completion_tokens}
            for choice in chunk.choices:
                finish = choice.finish_reason or finish
                if choice.delta.content:
                    parts.append(choice.delta.content)
                for delta in choice.delta.tool_calls or []:
                    call = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
                    call["id"] = delta.id or call["id"]
                    if delta.function is not None:
                        call["name"] += delta.function.name or ""
                        call["arguments"] += delta.function.arguments or ""
        ordered = [calls[i] for i in sorted(calls)]
        return _Answer("".join(parts) if parts else None, ordered, finish, model, usage)

    async def run_tools(self, answer: _Answer) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Run the tool calls of ``answer``: the messages to send back and a record of each call.

        Nothing a tool does ends the conversation: an unknown tool, bad arguments or an exception become the
        tool's result text, which the model can read and act on.
        """
        messages: list[dict[str, Any]] = [
            {
                "role": "assistant",
                "content": answer.content,
                "tool_calls": [
                    {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                    for c in answer.tool_calls
                ],
            }
        ]
        records: list[dict[str, Any]] = []
        for call in answer.tool_calls:
            record: dict[str, Any] = {"name": call["name"], "arguments": call["arguments"]}
            try:
                arguments = json.loads(call["arguments"] or "{}")
                record["arguments"] = arguments
                if not isinstance(arguments, dict):
                    raise ValueError("arguments must be a JSON object")
                tool = self.tools.get(call["name"])
                if tool is None:
                    raise LookupError(f"unknown tool {call['name']}; available: {', '.join(self.tools) or 'none'}")
                result = await tool.call(arguments)
                record["result"] = result
                text = result if isinstance(result, str) else json.dumps(result, default=str)
            except Exception as err:
                if isinstance(err, json.JSONDecodeError):
                    message = f"arguments are not valid JSON: {err}"
                elif isinstance(err, LookupError):
                    message = str(err.args[0]) if err.args else str(err)
                else:
                    message = f"{type(err).__name__}: {err}"
                record["error"] = message
                text = f"error: {message}"
            records.append(record)
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": text})
        return messages, records

    def record(self, tool_calls: int) -> None:
        self.executor.record_usage(
            tool_calls=tool_calls,
            prompt_tokens=self.usage["prompt_tokens"],
            completion_tokens=self.usage["completion_tokens"],
            llm_requests=self.requests,
        )

    def usage_block(self) -> dict[str, int]:
        prompt, completion = self.usage["prompt_tokens"], self.usage["completion_tokens"]
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class ModelExecutor(Executor):
    """What the assistant and the agent share: the model server, the model, its tools and their spec form."""

    name: ClassVar[str] = "model"

    model: str = param(required=True, description="the model name, as the server knows it")
    tools: list[Any] = param(default=[], description="functions or executor instances the model may call")
    temperature: float | None = param(ge=0, le=2, description="sampling temperature (server default if unset)")
    max_tokens: int | None = param(gt=0, description="cap on each answer's tokens")
    base_url: str | None = param(description="the server's base URL; default CB_LLM_BASE_URL or OPENAI_BASE_URL")
    api_key: str | None = param(secret=True, description="default CB_LLM_API_KEY or OPENAI_API_KEY")
    timeout: float = param(default=60.0, gt=0, description="seconds one request may take")

    def spec(self, *, reveal_secrets: bool = False) -> dict[str, Any]:
        """Functions among the tools become ``"module:function"`` references, so the spec is plain JSON."""
        out = super().spec(reveal_secrets=reveal_secrets)
        tools = out["params"].get("tools")
        if isinstance(tools, list):
            out["params"]["tools"] = [t if isinstance(t, dict) else tool_reference(t) for t in tools]
        return out

    def validate(self) -> None:
        try:  # a bad tool is a configuration error, found before any request is sent
            as_tools(self.tools)
        except TypeError as err:
            raise ValueError(str(err)) from None


class AssistantExecutor(ModelExecutor):
    """Ask a language model, letting it call tools, and return its answer (text or schema-checked JSON).

    ``input`` is usually templated from token data (``"Analyse: {{ processed_output }}"``). ``tools`` are plain
    functions (schema from signature and docstring) or executor instances. With a JSON schema as
    ``response_format`` the answer is parsed, validated and returned as a dict in ``content``.
    """

    name: ClassVar[str] = "assistant"

    input: str = param(required=True, description="the user message; templates are filled from token data")
    system_prompt: str | None = param(description="the system message")
    response_format: str | dict[str, Any] = param(
        default="text", description='"text", "json" (any JSON object) or a JSON schema the answer must match'
    )
    max_tool_rounds: int = param(default=5, ge=0, description="rounds of tool calls before giving up")
    stream: bool = param(default=False, description="receive the answer as server-sent events")

    def validate(self) -> None:
        super().validate()
        if isinstance(self.response_format, str):
            if self.response_format not in ("text", "json"):
                raise ValueError(
                    f'response_format must be "text", "json" or a JSON schema, not {self.response_format!r}'
                )
        else:
            try:
                jsonschema.validators.validator_for(self._schema()).check_schema(self._schema())
            except jsonschema.SchemaError as err:
                raise ValueError(f"response_format is not a valid JSON schema: {err.message}") from None

    def _schema(self) -> dict[str, Any]:
        fmt = self.response_format
        assert isinstance(fmt, dict)
        if fmt.get("type") == "json_schema" and isinstance(fmt.get("json_schema"), Mapping):
            return dict(fmt["json_schema"].get("schema") or {})  # already in the API's own form
        return fmt

    def _format_option(self) -> dict[str, Any] | None:
        fmt = self.response_format
        if fmt == "text":
            return None
        if fmt == "json":
            return {"type": "json_object"}
        assert isinstance(fmt, dict)
        if fmt.get("type") == "json_schema" and "json_schema" in fmt:
            return fmt
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": fmt}}

    def _session(self) -> ChatSession:
        options: dict[str, Any] = {}
        if self.temperature is not None:
            options["temperature"] = self.temperature
        if self.max_tokens is not None:
            options["max_tokens"] = self.max_tokens
        fmt = self._format_option()
        if fmt is not None:
            options["response_format"] = fmt
        return ChatSession(
            executor=self,
            model=self.model,
            base_url=self.base_url,
            api_key=self.api_key,
            timeout=self.timeout,
            tools=as_tools(self.tools),
            options=options,
            stream=self.stream,
        )

    async def execute_internal(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        session = self._session()
        messages: list[dict[str, Any]] = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        messages.append({"role": "user", "content": self.input})
        calls: list[dict[str, Any]] = []
        try:
            rounds = 0
            while True:
                answer = await session.complete(messages)
                if not answer.tool_calls:
                    break
                if rounds >= self.max_tool_rounds:
                    raise ExecutorError(
                        f"executor {self.name!r}: the model still wants tools after {rounds} round(s) "
                        "(max_tool_rounds)",
                        executor=self.name,
                        kind="max_tool_rounds",
                        retryable=False,
                        details={"tool_calls": calls},
                    )
                rounds += 1
                sent, records = await session.run_tools(answer)
                messages.extend(sent)
                calls.extend(records)
        finally:
            session.record(len(calls))
            await session.close()
        return {
            "content": self._content(answer.content),
            "tool_calls": calls,
            "usage": session.usage_block(),
            "latency_s": round(time.perf_counter() - t0, 6),
            "model": answer.model,
        }

    def _content(self, content: str | None) -> Any:
        if self.response_format == "text":
            return content or ""
        text = content or ""
        fenced = _FENCE.match(text)  # some local models wrap JSON in a Markdown fence
        try:
            value = json.loads(fenced.group(1) if fenced else text)
        except ValueError as err:
            raise ExecutorError(
                f"executor {self.name!r}: the model's answer is not valid JSON: {err}",
                executor=self.name,
                kind="malformed_output",
                retryable=True,
                details={"content": text[:2000]},
            ) from None
        if isinstance(self.response_format, dict):
            try:
                jsonschema.validate(value, self._schema())
            except jsonschema.ValidationError as err:
                where = "/".join(str(p) for p in err.absolute_path) or "(root)"
                raise ExecutorError(
                    f"executor {self.name!r}: the model's answer does not match the schema at {where}: {err.message}",
                    executor=self.name,
                    kind="malformed_output",
                    retryable=True,
                    details={"content": text[:2000], "path": where},
                ) from None
        elif not isinstance(value, dict):
            raise ExecutorError(
                f"executor {self.name!r}: the model's answer is JSON but not an object",
                executor=self.name,
                kind="malformed_output",
                retryable=True,
                details={"content": text[:2000]},
            )
        return value
