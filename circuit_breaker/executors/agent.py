"""The ``agent`` executor: a model working on a task with tools until it answers or runs out of iterations.

Each iteration is one model request; the tools it asks for run and their results (or errors) go back to it.
The run's ``memory`` records every tool step, so a workflow (or a person reviewing it) can see how the
answer came about. Reaching ``max_iterations`` is an outcome, not a failure: the output says so in
``status`` and the workflow decides what to do. Model-server failures are classified as in ``assistant``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ._base import Executor
from ._params import param
from ._tools import as_tools, tool_reference
from .assistant import ChatSession

__all__ = ["AgentExecutor"]

DEFAULT_SYSTEM_PROMPT = (
    "You are an agent completing a task. Use the tools available when they help; when the task is done, "
    "answer with the result and call no more tools."
)


class AgentExecutor(Executor):
    """Let a model pursue ``task`` with ``tools`` (functions or executors) over several iterations.

    Output: ``status`` ("completed" or "max_iterations_reached"), ``iterations``, ``final_output`` (the model's
    last text), ``memory`` (one step per tool call: iteration, tool, arguments, output or error),
    ``tool_invocations`` and ``usage``.
    """

    name: ClassVar[str] = "agent"

    task: str = param(required=True, description="what the agent must do; templates are filled from token data")
    tools: list[Any] = param(default=[], description="functions or executor instances the agent may call")
    system_prompt: str = param(default=DEFAULT_SYSTEM_PROMPT, description="the system message")
    max_iterations: int = param(default=10, ge=1, description="model requests before stopping")
    model: str = param(required=True, description="the model name, as the server knows it")
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

    async def execute_internal(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.temperature is not None:
            options["temperature"] = self.temperature
        if self.max_tokens is not None:
            options["max_tokens"] = self.max_tokens
        session = ChatSession(
            executor=self,
            model=self.model,
            base_url=self.base_url,
            api_key=self.api_key,
            timeout=self.timeout,
            tools=as_tools(self.tools),
            options=options,
        )
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": self.task},
        ]
        memory: list[dict[str, Any]] = []
        status = "max_iterations_reached"
        final: str | None = None
        iteration = 0
        try:
            while iteration < self.max_iterations:
                iteration += 1
                answer = await session.complete(messages)
                final = answer.content if answer.content is not None else final
                if not answer.tool_calls:
                    status = "completed"
                    break
                sent, records = await session.run_tools(answer)
                messages.extend(sent)
                for rec in records:
                    step: dict[str, Any] = {"iteration": iteration, "tool": rec["name"], "arguments": rec["arguments"]}
                    if "error" in rec:
                        step["error"] = rec["error"]
                    else:
                        step["output"] = rec["result"]
                    memory.append(step)
        finally:
            session.record(len(memory))
            await session.close()
        return {
            "status": status,
            "iterations": iteration,
            "final_output": final,
            "memory": memory,
            "tool_invocations": len(memory),
            "usage": session.usage_block(),
        }
