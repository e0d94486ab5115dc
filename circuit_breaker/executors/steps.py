"""Several executors as one action: in order (each step sees the outputs before it) or in parallel, bounded.

::

    StepExecutor(steps=[
        HttpExecutor(url="{{ api }}/orders/{{ order_id }}"),
        SetExecutor(paths={"total": "$.previous.body.total"}),
        ShellExecutor(argv=["notify", "{{ steps.0.body.customer }}"]),
    ])

Before step ``i`` runs, its templates are filled from ``{**data, "steps": [output_0, ...], "previous":
output_(i-1)}``: ``data`` is the token data when the executor is a transition's action, updated by the ``data``
parameter; ``steps`` and ``previous`` are reserved (they win over data keys of the same name; ``previous`` is
absent for the first step). In parallel mode no step sees another's output: templates are filled from ``data``.

The output is ``{"steps": [summary, ...], "status": "succeeded" | "failed"}`` with one entry per step, in step
order: the step's ``ExecutionResult.summary()`` (status, output, error, timings, attempts, usage). A step that
never ran because another failed first is recorded with status ``cancelled`` and error kind ``not_run``
(``cancelled`` when it was stopped while running). Usage is the sum of the steps' usage.

A failing step fails the whole executor (``ExecutorError``, kind ``step_failed``, naming the step's index and
executor and repeating its error; ``retryable`` is the step's) unless ``continue_on_error``: then every step
runs, the executor succeeds and the output's ``status`` says whether all steps did. Failing is what makes a
transition's retry and incident handling see the failure. The per-step list is not lost with it: it is in the
error's details, ``execute_detailed().error.details["steps"]`` (``ExecutorError.details["steps"]`` from
``execute()``, and the incident's error in a workflow), next to ``step`` (the index) and ``executor``. A retry
of the step executor runs every step again, the succeeded ones included; give retry policies to the steps
themselves when that is not wanted.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ..errors import ExecutorConfigError, ExecutorError, TemplateError
from ..events import ErrorInfo
from ..token import utcnow
from ._base import Executor
from ._params import param
from ._result import ExecutionResult

__all__ = ["StepExecutor"]


class _StopSteps(Exception):
    """Raised inside the parallel task group to stop the other steps once one failed."""


class StepExecutor(Executor):
    """Run several executors as one: in order, each seeing the earlier outputs, or in parallel, bounded."""

    name = "step"

    steps: list[Executor] = param(
        required=True, min_length=1, description="the executors to run, in order (nested specs in a spec)"
    )
    parallel: bool = param(default=False, description="run all steps at once instead of one after another")
    max_parallel: int | None = param(default=None, ge=1, description="in parallel mode, at most this many at once")
    continue_on_error: bool = param(
        default=False, description="run every step even when one fails; the output's status says how it went"
    )
    data: dict[str, Any] = param(
        default={}, description="extra template data for the steps, over the token data in a workflow"
    )

    # The data the executor was rendered with (token data in a workflow); runtime only, never in the spec.
    _context: Mapping[str, Any] | None = None

    def validate(self) -> None:
        if self.max_parallel is not None and not self.parallel:
            raise ValueError("max_parallel only applies with parallel=True")

    def render(self, data: Mapping[str, Any]) -> StepExecutor:
        """A copy that keeps ``data`` for its steps' templates (the steps are rendered as they run)."""
        rendered = super().render(data)
        clone = copy.copy(rendered) if rendered is self else rendered
        assert isinstance(clone, StepExecutor)
        clone._context = data
        return clone

    async def execute_internal(self) -> dict[str, Any]:
        base = {**self._context, **self.data} if self._context else dict(self.data)
        if self.parallel:
            results, failed = await self._run_parallel(base)
        else:
            results, failed = await self._run_sequential(base)
        for result in results:
            self.record_usage(**result.usage)
        summaries = [result.summary() for result in results]
        if failed is not None and not self.continue_on_error:
            result = results[failed]
            error = result.error
            message = error.message if error is not None else result.status
            raise ExecutorError(
                f"step {failed} of {len(results)} ({result.executor}) {result.status}: {message}",
                executor=self.name,
                kind="step_failed",
                retryable=error.retryable if error is not None else True,
                details={"step": failed, "executor": result.executor, "steps": summaries},
            )
        status = "succeeded" if all(result.ok for result in results) else "failed"
        return {"steps": summaries, "status": status}

    async def _run_sequential(self, base: dict[str, Any]) -> tuple[list[ExecutionResult], int | None]:
        results: list[ExecutionResult] = []
        outputs: list[dict[str, Any]] = []
        failed: int | None = None
        for index, step in enumerate(self.steps):
            context = {**base, "steps": list(outputs)}
            if outputs:
                context["previous"] = outputs[-1]
            result = await _run_step(step, context)
            results.append(result)
            outputs.append(result.output)
            if not result.ok and failed is None:
                failed = index
                if not self.continue_on_error:
                    break
        if failed is not None and len(results) < len(self.steps):
            reason = f"not run: step {failed} ({results[failed].executor}) failed first"
            results.extend(_not_run(step, "not_run", reason) for step in self.steps[len(results) :])
        return results, failed

    async def _run_parallel(self, base: dict[str, Any]) -> tuple[list[ExecutionResult], int | None]:
        steps = self.steps
        semaphore = asyncio.Semaphore(self.max_parallel or len(steps))
        results: list[ExecutionResult | None] = [None] * len(steps)
        started: dict[int, tuple[datetime, float]] = {}
        failures: list[int] = []

        async def run(index: int, step: Executor) -> None:
            async with semaphore:
                if failures and not self.continue_on_error:
                    return  # woken by the failed step's release, before the task group could cancel us
                started[index] = (utcnow(), time.perf_counter())
                result = results[index] = await _run_step(step, base)
                if not result.ok:
                    failures.append(index)
                    if not self.continue_on_error:
                        raise _StopSteps

        try:
            async with asyncio.TaskGroup() as group:
                for index, step in enumerate(steps):
                    group.create_task(run(index, step))
        except* _StopSteps:
            pass
        failed = min(failures) if failures else None
        out: list[ExecutionResult] = []
        for index, (step, result) in enumerate(zip(steps, results)):
            if result is None:  # only when a failure stopped the others
                assert failed is not None
                why = f"step {failed} ({steps[failed].name}) failed"
                if index in started:
                    out.append(_not_run(step, "cancelled", f"cancelled while running: {why}", started[index]))
                else:
                    out.append(_not_run(step, "not_run", f"not run: {why} first"))
            else:
                out.append(result)
        return out, failed


async def _run_step(step: Executor, context: Mapping[str, Any]) -> ExecutionResult:
    """Fill the step's templates and run it; a template that cannot be filled fails the step, not the run."""
    started = utcnow()
    try:
        runnable = step.render(context)
        return await runnable.execute_detailed()
    except ExecutorConfigError as err:  # TemplateError, or a rendered value of the wrong type
        kind = "template" if isinstance(err, TemplateError) else "config"
        info = ErrorInfo(kind=kind, message=str(err), retryable=False)
        return ExecutionResult(
            executor=step.name,
            status="failed",
            error=info,
            started_at=started,
            finished_at=utcnow(),
            duration=0.0,
            attempts=0,
        )


def _not_run(step: Executor, kind: str, message: str, started: tuple[datetime, float] | None = None) -> ExecutionResult:
    now = utcnow()
    return ExecutionResult(
        executor=step.name,
        status="cancelled",
        error=ErrorInfo(kind=kind, message=message, retryable=True),
        started_at=started[0] if started else now,
        finished_at=now,
        duration=time.perf_counter() - started[1] if started else 0.0,
        attempts=1 if started else 0,
    )
