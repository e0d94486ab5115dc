"""A user-defined stage pattern: a transition whose action starts at most N times per second.

Patterns are plain functions that take the workflow first and build with the public DSL, so a project can
ship its own next to its executors and apply them like the built-in ones::

    from executors.rate_limited import rate_limited

    wf.apply(rate_limited, pending >> called, "call_api", per_second=5, action=HttpExecutor(url="..."))

The limit is engine-wide (all instances share it), which is what an API quota needs.
"""

from __future__ import annotations

from typing import Any

from circuit_breaker.dsl import Flow, Transition, Workflow


def rate_limited(
    wf: Workflow,
    flow: Flow,
    name: str | None = None,
    *,
    per_second: float,
    action: Any,
    max_parallel: int | None = None,
    **options: Any,
) -> Transition:
    """``flow`` with ``action``, started at most ``per_second`` times a second (and ``max_parallel`` at once)."""
    return wf.flow(flow, name, action=action, **options).limit(max_parallel, per_second=per_second)
