"""Transitions as users declare them: arcs, policies, an action, a trigger, retry and timeout."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, runtime_checkable

from ..errors import DefinitionError
from ..retry import RetryPolicy
from ..rules import Policy
from ..rules._policy import PolicyValue
from ._remote import RemoteAction, remote_action

if TYPE_CHECKING:
    from ..token import Token
    from ._place import Place
    from ._workflow import Workflow

Trigger = Literal["auto", "manual"]
# expand(view, consumed) -> data of the tokens to produce, per output place (stage patterns).
Expand = Callable[["Token", dict[str, tuple["Token", ...]]], dict[str, list[dict[str, Any]]]]
# collect(marking, reserved, now) -> the tokens a variable-input firing consumes, or None when not ready.
Collect = Callable[[Any, AbstractSet[Any], float], "dict[str, tuple[Token, ...]] | None"]
ActionResult = dict[str, Any] | None
Action = Callable[["Token"], "ActionResult | Awaitable[ActionResult]"]
F = TypeVar("F", bound=Callable[..., Any])


@runtime_checkable
class ActionProvider(Protocol):
    """Anything that can serve as an action, such as an executor (``executor.as_action()``)."""

    def as_action(self) -> Action: ...


ActionLike = Action | ActionProvider

TRIGGERS = ("auto", "manual")


class Transition:
    """A transition of a workflow; returned by ``wf.flow(...)``.

    Used as a decorator, the decorated function becomes the action and is returned unchanged, so it stays
    callable (and testable) on its own. The chainable methods return the transition itself.
    """

    __slots__ = (
        "collect",
        "desc",
        "error_place",
        "expand",
        "guards",
        "handler",
        "inputs",
        "max_parallel",
        "name",
        "outputs",
        "rate_limit",
        "remote",
        "retry_policy",
        "rules",
        "timeout",
        "trigger",
        "validations",
        "variable_inputs",
        "variable_outputs",
        "workflow",
    )

    def __init__(
        self,
        workflow: Workflow,
        name: str,
        inputs: tuple[tuple[Place, int], ...],
        outputs: tuple[tuple[Place, int], ...],
        *,
        validations: PolicyValue | Policy = None,
        guards: PolicyValue | Policy = None,
        rules: PolicyValue | Policy = None,
        action: ActionLike | None = None,
        trigger: Trigger = "auto",
        retry: RetryPolicy | int | None = None,
        timeout: float | None = None,
        error_place: Place | None = None,
        desc: str = "",
    ) -> None:
        self.workflow = workflow
        self.name = name
        self.inputs = inputs
        self.outputs = outputs
        self.validations = Policy.of(validations, what=f"transition {name!r} validations")
        self.guards = Policy.of(guards, what=f"transition {name!r} guards")
        self.rules = Policy.of(rules, what=f"transition {name!r} rules")
        self.handler: Action | None = None
        self.remote: RemoteAction | None = None
        if trigger not in TRIGGERS:
            raise DefinitionError(
                f"transition {name!r}: trigger must be 'auto' or 'manual', got {trigger!r}", workflow=workflow.name
            )
        self.trigger: Trigger = trigger
        self.retry_policy = _retry(retry, name, workflow.name)
        self.timeout = _timeout(timeout, name, workflow.name)
        self.error_place = error_place
        self.desc = desc
        # Set by stage patterns (scatter, gather...): arcs whose token count is decided at firing time, and the
        # functions that decide it. Plain flows leave them empty.
        self.variable_inputs: frozenset[str] = frozenset()
        self.variable_outputs: frozenset[str] = frozenset()
        self.expand: Expand | None = None
        self.collect: Collect | None = None
        self.max_parallel: int | None = None
        self.rate_limit: tuple[int, float] | None = None
        if action is not None:
            self.action(action)

    # -- decorator and chainable configuration -----------------------------------------------------------
    def __call__(self, fn: F) -> F:
        self.action(fn)
        return fn

    def transition(self, name: str) -> Transition:
        """Rename the transition (the default name is ``<from>_to_<to>``)."""
        self.workflow._rename(self, name)
        return self

    def policy(
        self,
        validations: PolicyValue | Policy = None,
        rules: PolicyValue | Policy = None,
        guards: PolicyValue | Policy = None,
    ) -> Transition:
        """Set the validations (checked before the action), guards and rules (checked after the action)."""
        if validations is not None:
            self.validations = Policy.of(validations, what=f"transition {self.name!r} validations")
        if guards is not None:
            self.guards = Policy.of(guards, what=f"transition {self.name!r} guards")
        if rules is not None:
            self.rules = Policy.of(rules, what=f"transition {self.name!r} rules")
        self.workflow._changed()
        return self

    def action(self, fn: ActionLike, *, remote: bool = False, deadline: float | None = None) -> Transition:
        """Set the action: a function ``(token) -> dict | None``, sync or async, or an executor.

        ``remote=True`` (executors only) runs it on a worker (``circuit-breaker worker``) when the engine has a
        JetStream store; the embedded engine runs it in-process the same way. ``deadline``: seconds the engine
        waits for one attempt's result before handing the task out again (``.retry``) or failing it.
        """
        if inspect.isclass(fn):
            raise DefinitionError(
                f"transition {self.name!r}: action {fn.__name__} is a class; pass an instance, e.g. {fn.__name__}(...)",
                workflow=self.workflow.name,
            )
        if not callable(fn) and not hasattr(fn, "as_action"):
            raise DefinitionError(
                f"transition {self.name!r}: action must be callable or an executor, got {fn!r}",
                workflow=self.workflow.name,
            )
        if hasattr(fn, "as_action"):
            fn = fn.as_action()
        elif callable(fn) and not _accepts_one_argument(fn):
            raise DefinitionError(
                f"transition {self.name!r}: action {getattr(fn, '__name__', fn)!r} must take one argument (the token)",
                workflow=self.workflow.name,
            )
        self.remote = (
            remote_action(fn, deadline=deadline, transition=self.name, workflow=self.workflow.name) if remote else None
        )
        self.handler = fn
        self.workflow._changed()
        return self

    def limit(self, max_parallel: int | None = None, *, per_second: float | None = None) -> Transition:
        """At most ``max_parallel`` actions of this transition run at once per instance, and (engine-wide) at
        most ``per_second`` start per second."""
        if max_parallel is not None and (not isinstance(max_parallel, int) or max_parallel < 1):
            raise DefinitionError(f"transition {self.name!r}: max_parallel must be a positive integer")
        if per_second is not None and per_second <= 0:
            raise DefinitionError(f"transition {self.name!r}: per_second must be positive")
        self.max_parallel = max_parallel
        if per_second is not None:
            # n starts per window: whole numbers per second, or one start every 1/per_second seconds.
            self.rate_limit = (int(per_second), 1.0) if per_second >= 1 else (1, 1.0 / per_second)
        self.workflow._changed()
        return self

    def manual(self) -> Transition:
        self.trigger = "manual"
        self.workflow._changed()
        return self

    def retry(self, policy: RetryPolicy | int | None = None, **kwargs: Any) -> Transition:
        """``.retry(3)`` or ``.retry(max_attempts=3, initial_delay=0.5)``."""
        self.retry_policy = _retry(RetryPolicy(**kwargs) if kwargs else policy, self.name, self.workflow.name)
        self.workflow._changed()
        return self

    def timeout_after(self, seconds: float | None) -> Transition:
        self.timeout = _timeout(seconds, self.name, self.workflow.name)
        self.workflow._changed()
        return self

    def on_error(self, place: Place) -> Transition:
        """Where input tokens go when the action fails for good (default: they stay where they are)."""
        self.error_place = place
        self.workflow._changed()
        return self

    @property
    def is_manual(self) -> bool:
        return self.trigger == "manual"

    def __repr__(self) -> str:
        src = ", ".join(p.name for p, _ in self.inputs)
        dst = ", ".join(p.name for p, _ in self.outputs)
        return f"Transition({self.name!r}: {src} >> {dst}, {self.trigger})"


def _accepts_one_argument(fn: Callable[..., Any]) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return True
    try:
        sig.bind(object())
    except TypeError:
        return False
    return True


def _retry(value: RetryPolicy | int | None, name: str, workflow: str) -> RetryPolicy | None:
    if value is None or isinstance(value, RetryPolicy):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return RetryPolicy(max_attempts=value)
    raise DefinitionError(
        f"transition {name!r}: retry must be a RetryPolicy or a number of attempts", workflow=workflow
    )


def _timeout(value: float | None, name: str, workflow: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise DefinitionError(f"transition {name!r}: timeout must be a positive number of seconds", workflow=workflow)
    return float(value)
