"""Executors as transition actions: templates filled from the token, failures raised for the engine's retry."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import ExecutorError

if TYPE_CHECKING:
    from ..token import Token
    from ._base import Executor


class ExecutorAction:
    """A transition action that renders its executor from the token data, runs it and returns its output.

    Serialisable through ``spec()`` (registered name + parameters), so another process can run it.
    """

    __slots__ = ("executor", "into")

    def __init__(self, executor: Executor, *, into: str | None = None) -> None:
        self.executor = executor
        self.into = into

    async def __call__(self, token: Token) -> dict[str, Any]:
        runnable = self.executor.render(token.data)
        from ._base import _DATA

        reset = _DATA.set(token.data)
        try:
            result = await runnable.execute_detailed()
        finally:
            _DATA.reset(reset)
        if result.status != "succeeded":
            if isinstance(runnable.last_error, ExecutorError):
                raise runnable.masked_error(result)  # its own class, kind, retryable flag and details
            error = result.error
            assert error is not None
            raise ExecutorError(
                error.message, executor=runnable.name, kind=error.kind, retryable=error.retryable, details=error.details
            )
        return {self.into: result.output} if self.into else result.output

    def spec(self, *, reveal_secrets: bool = False) -> dict[str, Any]:
        """The executor's spec plus ``into``; ``reveal_secrets`` for handing it to a trusted worker."""
        out = self.executor.spec(reveal_secrets=reveal_secrets)
        if self.into:
            out["into"] = self.into
        return out

    @property
    def __name__(self) -> str:  # read by diagrams and specs
        return f"{self.executor.name}_executor"

    def __repr__(self) -> str:
        return f"ExecutorAction({self.executor!r}, into={self.into!r})"
