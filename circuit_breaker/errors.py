"""The error tree: one root, specific subclasses, attributes that name the culprit.

::

    CircuitBreakerError
    ├── DefinitionError                 a workflow is defined wrongly (raised when built or registered)
    │   ├── UnknownPlaceError
    │   ├── DuplicateNameError
    │   ├── UnknownRuleError
    │   └── ForeignPlaceError
    ├── RuleDefinitionError             a rule cannot be built (bad expression, too long)
    ├── TokenDataError                  data is not a JSON object or fails the workflow's token model
    │   └── EventTooLargeError          an event would be larger than the NATS server takes in one message
    ├── UnknownWorkflowError
    ├── UnknownTransitionError
    ├── UnknownInstanceError
    ├── TransitionNotEnabledError       firing by hand what is not enabled; says why
    ├── TransitionRejectedError         the policy's rules failed after the action; lists every failing rule
    ├── ActionError                     an action raised (or timed out) and no retry is left
    │   └── ActionTimeoutError
    ├── InstanceExistsError             start() with an instance id that is taken
    ├── InstanceStateError              an illegal lifecycle move (resume a completed instance)
    │   └── TaskStateError              retrying a task the instance does not wait for, or that is not dead
    ├── ConcurrencyError                someone else changed the instance first (retryable)
    ├── WaitTimeoutError                engine.wait() gave up
    ├── EngineClosedError               a change asked of an engine that is closed or stopping (names it; retryable)
    ├── WorkflowLoadError               a workflow file cannot be loaded
    ├── ExecutorConfigError             an executor's parameters are missing or of the wrong type
    │   ├── UnknownExecutorError        no executor registered under that name
    │   └── TemplateError               a template names a field the token data does not have
    ├── ExecutorError                   an execution failed (``kind``, ``retryable``)
    │   ├── ExecutorTimeoutError
    │   └── CircuitOpenError            (circuit_breaker.executors) a breaker refused the call
    ├── ConfigError                     settings (env CB_*, circuit_breaker.toml, flags) are invalid
    ├── NatsServerError                 the embedded nats-server is missing, or cannot start (quotes its log)
    ├── NatsUnavailableError            NATS cannot be reached at start-up (names the URLs, never credentials)
    ├── StoreError                      the store cannot do what was asked (no acknowledgement after retries)
    │   └── StreamConfigError           a stream exists with settings that would lose events; nothing changed
    ├── InjectError                     an injection over NATS was refused or not delivered (``code``, ``field``)
    ├── ControlError                    a serving engine refused a fire/retry/cancel request (``code``)
    ├── SubscriptionError               an event subscription cannot be made (a durable name taken with other filters)
    ├── WorkerError                     a worker cannot start (no permission on a subject, no executor to serve)
    └── DeadLetterError                 a dead letter cannot be shown, retried or dropped (unknown id, no task)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class CircuitBreakerError(Exception):
    """Root of every error circuit_breaker raises on purpose."""

    retryable: bool = False


class DefinitionError(CircuitBreakerError):
    """A workflow definition is wrong; ``problems`` lists every problem found, not just the first."""

    def __init__(self, message: str, *, workflow: str | None = None, problems: Sequence[Any] = ()) -> None:
        super().__init__(message)
        self.workflow = workflow
        self.problems = list(problems)


class UnknownPlaceError(DefinitionError):
    """A flow or token names a place the workflow does not have."""

    def __init__(self, message: str, *, workflow: str | None = None, place: str | None = None) -> None:
        super().__init__(message, workflow=workflow)
        self.place = place


class DuplicateNameError(DefinitionError):
    """Two places, two transitions or two rules share a name."""

    def __init__(self, message: str, *, workflow: str | None = None, name: str | None = None) -> None:
        super().__init__(message, workflow=workflow)
        self.name = name


class UnknownRuleError(DefinitionError):
    """A policy names a rule its workflow's rule set does not define."""

    def __init__(
        self, message: str, *, workflow: str | None = None, transition: str | None = None, rule: str | None = None
    ) -> None:
        super().__init__(message, workflow=workflow)
        self.transition = transition
        self.rule = rule


class ForeignPlaceError(DefinitionError):
    """A flow joins places that belong to another workflow."""

    def __init__(self, message: str, *, workflow: str | None = None, place: str | None = None) -> None:
        super().__init__(message, workflow=workflow)
        self.place = place


class RuleDefinitionError(CircuitBreakerError):
    """A rule cannot be built: an expression that does not parse, is too long, or a bad helper argument."""

    def __init__(self, message: str, *, rule: str | None = None) -> None:
        super().__init__(message)
        self.rule = rule


class TokenDataError(CircuitBreakerError):
    """Token data is not a JSON object, or fails the workflow's token model."""

    def __init__(self, message: str, *, workflow: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.workflow = workflow
        self.field = field


class EventTooLargeError(TokenDataError):
    """An event (the token data with its envelope) is larger than the NATS server takes in one message
    (``size`` and ``limit`` in bytes): it can never be stored, so the change is refused and nothing moved."""

    def __init__(self, message: str, *, workflow: str | None = None, size: int, limit: int) -> None:
        super().__init__(message, workflow=workflow)
        self.size = size
        self.limit = limit


class UnknownWorkflowError(CircuitBreakerError):
    def __init__(self, workflow: str, known: Sequence[str] = ()) -> None:
        hint = f" (registered: {', '.join(sorted(known))})" if known else " (none registered)"
        super().__init__(f"unknown workflow {workflow!r}{hint}")
        self.workflow = workflow


class UnknownTransitionError(CircuitBreakerError):
    def __init__(self, workflow: str, transition: str, known: Sequence[str] = ()) -> None:
        hint = f" (it has: {', '.join(known)})" if known else ""
        super().__init__(f"workflow {workflow!r} has no transition {transition!r}{hint}")
        self.workflow = workflow
        self.transition = transition


class UnknownInstanceError(CircuitBreakerError):
    def __init__(self, instance_id: str) -> None:
        super().__init__(f"unknown instance {instance_id!r}")
        self.instance_id = instance_id


class TransitionNotEnabledError(CircuitBreakerError):
    """Firing by hand a transition that is not enabled; ``reasons`` says why."""

    def __init__(self, workflow: str, transition: str, instance_id: str, reasons: Sequence[str]) -> None:
        why = "; ".join(reasons) or "not enabled"
        super().__init__(f"transition {transition!r} of {workflow!r} is not enabled for instance {instance_id}: {why}")
        self.workflow = workflow
        self.transition = transition
        self.instance_id = instance_id
        self.reasons = list(reasons)


class TransitionRejectedError(CircuitBreakerError):
    """The policy rejected a firing; nothing moved. ``errors`` holds every failing rule's message."""

    def __init__(self, workflow: str, transition: str, instance_id: str | None, errors: Sequence[str]) -> None:
        where = f" for instance {instance_id}" if instance_id else ""
        super().__init__(f"transition {transition!r} of {workflow!r} rejected{where}: {'; '.join(errors)}")
        self.workflow = workflow
        self.transition = transition
        self.instance_id = instance_id
        self.errors = list(errors)


class ActionError(CircuitBreakerError):
    """A transition's action failed and its retries ran out."""

    def __init__(
        self,
        message: str,
        *,
        workflow: str | None = None,
        transition: str | None = None,
        instance_id: str | None = None,
        attempts: int = 1,
        retryable: bool = True,
    ) -> None:
        super().__init__(message)
        self.workflow = workflow
        self.transition = transition
        self.instance_id = instance_id
        self.attempts = attempts
        self.retryable = retryable


class ActionTimeoutError(ActionError):
    """An action ran longer than its transition's timeout."""


class InstanceStateError(CircuitBreakerError):
    """An illegal lifecycle move, such as resuming a completed instance."""

    def __init__(self, instance_id: str, status: str, action: str) -> None:
        super().__init__(f"cannot {action} instance {instance_id}: it is {status}")
        self.instance_id = instance_id
        self.status = status
        self.action = action


class TaskStateError(InstanceStateError):
    """A task of an instance cannot be retried: the instance does not wait for it, or it is not dead-lettered."""

    def __init__(self, instance_id: str, task_id: str, state: str, *, reason: str) -> None:
        CircuitBreakerError.__init__(self, f"cannot retry task {task_id} of instance {instance_id}: {state}")
        self.instance_id = instance_id
        self.task_id = task_id
        self.status = state
        self.action = "retry"
        self.reason = reason  # "gone": the instance does not wait for it; "out": an attempt is out, not dead


class InstanceExistsError(CircuitBreakerError):
    def __init__(self, instance_id: str) -> None:
        super().__init__(f"instance {instance_id!r} already exists")
        self.instance_id = instance_id


class ConcurrencyError(CircuitBreakerError):
    """The instance changed since it was read (another engine fired first)."""

    retryable = True

    def __init__(self, instance_id: str, expected: int, actual: int | None = None) -> None:
        seen = f", found {actual}" if actual is not None else ""
        super().__init__(f"instance {instance_id} changed concurrently (expected version {expected}{seen})")
        self.instance_id = instance_id
        self.expected = expected
        self.actual = actual


class WaitTimeoutError(CircuitBreakerError):
    def __init__(self, instance_id: str, timeout: float, status: str) -> None:
        super().__init__(f"instance {instance_id} still {status} after {timeout:g}s")
        self.instance_id = instance_id
        self.timeout = timeout
        self.status = status


class EngineClosedError(CircuitBreakerError):
    """A change (start, fire, retry, pause, resume, cancel) asked of an engine that was closed, one that would
    start something (all but pause and cancel) asked of an engine that is stopping (``stopping``), or a manual
    firing whose action a closing engine cancelled: nothing moved, unless ``maybe_stored`` (the engine closed while
    the firing was being stored: read the instance). Retryable: another engine, or this one started again, can."""

    retryable = True

    def __init__(
        self, operation: str, instance_id: str | None = None, *, maybe_stored: bool = False, stopping: bool = False
    ) -> None:
        on = f" instance {instance_id}" if instance_id is not None else ""
        if maybe_stored:
            what = "it closed while the firing was being stored, so it may be stored: read the instance"
        else:
            what = "nothing moved"
        state = "stopping" if stopping else "closed"
        super().__init__(f"the engine is {state}: cannot {operation}{on}; {what}")
        self.operation = operation
        self.instance_id = instance_id
        self.maybe_stored = maybe_stored
        self.stopping = stopping


class WorkflowLoadError(CircuitBreakerError):
    """A workflow file cannot be loaded (missing, raises on import, defines no workflow)."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class ExecutorConfigError(CircuitBreakerError):
    """An executor's parameters are missing or of the wrong type; names the executor and parameter."""

    def __init__(self, message: str, *, executor: str | None = None, parameter: str | None = None) -> None:
        super().__init__(message)
        self.executor = executor
        self.parameter = parameter


class UnknownExecutorError(ExecutorConfigError):
    def __init__(self, name: str, known: Sequence[str] = ()) -> None:
        hint = f" (registered: {', '.join(sorted(known))})" if known else ""
        super().__init__(f"unknown executor {name!r}{hint}", executor=name)


class TemplateError(ExecutorConfigError):
    """A parameter template refers to data that is not there, or is malformed."""

    def __init__(
        self, message: str, *, executor: str | None = None, parameter: str | None = None, field: str | None = None
    ) -> None:
        super().__init__(message, executor=executor, parameter=parameter)
        self.field = field


class ExecutorError(CircuitBreakerError):
    """An execution failed. ``kind`` classifies it (the exception type or a domain word such as
    ``http_status``); ``retryable`` tells retry logic whether trying again can help."""

    def __init__(
        self,
        message: str,
        *,
        executor: str | None = None,
        kind: str = "error",
        retryable: bool = True,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.executor = executor
        self.kind = kind
        self.retryable = retryable
        self.details = dict(details or {})


class ExecutorTimeoutError(ExecutorError):
    def __init__(self, executor: str, timeout: float) -> None:
        super().__init__(f"executor {executor!r} timed out after {timeout:g}s", executor=executor, kind="timeout")
        self.timeout = timeout


class ConfigError(CircuitBreakerError):
    """Settings are invalid; the message names the setting (``nats_url``, ``stream.replicas``), never a secret value."""

    def __init__(self, message: str, *, setting: str | None = None, source: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting
        self.source = source


class NatsServerError(CircuitBreakerError):
    """The nats-server binary is missing, or exited or stayed unhealthy while starting; ``log_tail`` quotes its log."""

    def __init__(
        self, message: str, *, log_file: str | None = None, log_tail: str = "", returncode: int | None = None
    ) -> None:
        super().__init__(f"{message}\n{log_tail}" if log_tail else message)
        self.log_file = log_file
        self.log_tail = log_tail
        self.returncode = returncode


class NatsUnavailableError(CircuitBreakerError):
    """No NATS server answered at start-up after every attempt; ``servers`` are the URLs without credentials."""

    retryable = True

    def __init__(self, message: str, *, servers: Sequence[str] = (), attempts: int = 0) -> None:
        super().__init__(message)
        self.servers = list(servers)
        self.attempts = attempts


class StoreError(CircuitBreakerError):
    """The store could not do what was asked (NATS unreachable after retries, a stream it cannot use)."""

    retryable = True


class StreamConfigError(StoreError):
    """A stream or bucket exists with settings circuit_breaker cannot work with; nothing was changed."""

    retryable = False

    def __init__(self, stream: str, problems: Sequence[str]) -> None:
        super().__init__(f"stream {stream!r} exists with incompatible settings: {'; '.join(problems)}")
        self.stream = stream
        self.problems = list(problems)


class InjectError(CircuitBreakerError):
    """An injection was refused or could not be delivered; ``code`` is the protocol's error code
    (``invalid_data``, ``unknown_workflow``, ``no_responders``...; see docs/nats-protocol.md), ``field`` the
    offending field when there is one."""

    def __init__(self, code: str, message: str, *, field: str | None = None, retryable: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.field = field
        self.retryable = retryable


class SubscriptionError(CircuitBreakerError):
    """An event subscription cannot be made as asked (a durable name taken with other filters, a bad filter)."""

    def __init__(self, message: str, *, durable: str | None = None) -> None:
        super().__init__(message)
        self.durable = durable


class ControlError(CircuitBreakerError):
    """A serving engine refused a control request (fire, retry, cancel...); ``code`` is the protocol's code
    (``not_enabled``, ``rejected``, ``unknown_instance``, ``no_responders``...; see docs/nats-protocol.md)."""

    def __init__(self, code: str, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}


class WorkerError(CircuitBreakerError):
    """A worker cannot start or serve as configured; ``subject`` names the subject it was refused, if any."""

    def __init__(self, message: str, *, subject: str | None = None) -> None:
        super().__init__(message)
        self.subject = subject


class DeadLetterError(CircuitBreakerError):
    """A dead letter cannot be handled as asked: no entry with that id, or no task in it to retry."""

    def __init__(self, message: str, *, entry: int | None = None) -> None:
        super().__init__(message)
        self.entry = entry
