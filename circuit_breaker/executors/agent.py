"""The ``agent`` executor: a model working on a task with tools until it answers or runs out of iterations.

Each iteration is one model request; the tools it asks for run and their results (or errors) go back to it.
The run's ``memory`` records every tool step, so a workflow (or a person reviewing it) can see how the
answer came about. Reaching ``max_iterations`` is an outcome, not a failure: the output says so in
``status`` and the workflow decides what to do. Model-server failures are classified as in ``assistant``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ._params import param
from ._tools import as_tools
from .assistant import ChatSession, ModelExecutor

__all__ = ["AgentExecutor"]

DEFAULT_SYSTEM_PROMPT = (
    "You are an agent completing a task. Use the tools available when they help; when the task is done, "
    "answer with the result and call no more tools."
)


class AgentExecutor(ModelExecutor):
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
