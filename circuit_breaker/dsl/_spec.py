"""The serialisable form of a workflow (pydantic), read by stores, workers, the review page and the CLI.

Actions and rules appear by name; code stays in the process that defined it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from ..retry import RetryPolicy

if TYPE_CHECKING:
    from ._workflow import Workflow


class ArcSpec(BaseModel):
    place: str
    weight: int = 1


class PlaceSpec(BaseModel):
    name: str
    initial: bool = False
    final: bool = False
    review: bool = False
    desc: str = ""


class TransitionSpec(BaseModel):
    name: str
    inputs: list[ArcSpec]
    outputs: list[ArcSpec]
    trigger: Literal["auto", "manual"] = "auto"
    validations: dict[str, list[str]] = Field(default_factory=dict)
    guards: dict[str, list[str]] = Field(default_factory=dict)
    rules: dict[str, list[str]] = Field(default_factory=dict)
    action: str | None = None
    executor: dict[str, Any] | None = Field(
        default=None, description="for an executor action: its registered name and parameters (templates kept)"
    )
    retry: RetryPolicy | None = None
    timeout: float | None = None
    error_place: str | None = None
    desc: str = ""


class RuleSpec(BaseModel):
    name: str
    desc: str = ""
    expression: str | None = None


class WorkflowSpec(BaseModel):
    name: str
    desc: str = ""
    places: list[PlaceSpec]
    transitions: list[TransitionSpec]
    rules: list[RuleSpec] = Field(default_factory=list)
    token_model: dict[str, Any] | None = None

    @classmethod
    def of(cls, wf: Workflow) -> WorkflowSpec:
        finals = {p.name for p in wf.places} - {p.name for t in wf.transitions for p, _ in t.inputs}
        initial = wf.initial_place
        return cls(
            name=wf.name,
            desc=wf.desc,
            places=[
                PlaceSpec(name=p.name, initial=p is initial, final=p.name in finals, review=p.review, desc=p.desc)
                for p in wf.places
            ],
            transitions=[
                TransitionSpec(
                    name=t.name,
                    inputs=[ArcSpec(place=p.name, weight=w) for p, w in t.inputs],
                    outputs=[ArcSpec(place=p.name, weight=w) for p, w in t.outputs],
                    trigger=t.trigger,
                    validations=t.validations.names(),
                    guards=t.guards.names(),
                    rules=t.rules.names(),
                    action=_action_name(t.handler),
                    executor=_executor_spec(t.handler),
                    retry=t.retry_policy,
                    timeout=t.timeout,
                    error_place=t.error_place.name if t.error_place is not None else None,
                    desc=t.desc,
                )
                for t in wf.transitions
            ],
            rules=[RuleSpec(name=r.name, desc=r.desc, expression=r.expression) for r in wf.rules],
            token_model=wf.token_model.model_json_schema() if wf.token_model is not None else None,
        )


def _executor_spec(handler: Any) -> dict[str, Any] | None:
    spec = getattr(handler, "spec", None)
    return spec() if callable(spec) else None


def _action_name(handler: Any) -> str | None:
    if handler is None:
        return None
    module = getattr(handler, "__module__", None)
    qual = getattr(handler, "__qualname__", None) or type(handler).__qualname__
    return f"{module}:{qual}" if module else qual
