"""The ``nats`` executor: start an instance of another workflow on NATS, optionally wait for it and chain one more.

The child is started through the inject protocol (``cb.inject.<workflow>``, answered by whichever engine runs
that workflow) with a dedupe id, so running the action again — a retry, or the engine re-running it after a
crash (actions run at least once) — finds the child the first run started instead of starting a second one.
By default the dedupe id is the running firing's ``idempotency_key``.

Waiting reads the child's events from the start (a child that finished before the subscription was made is
not missed) and folds them into the child's marking, so the final data needs nothing beyond the event
protocol: the data of the tokens in final places when ``instance_completed`` arrives.

Failures: NATS unreachable → ``kind="connection"`` (retryable); the inject error code as ``kind`` for a refused
injection (``unknown_workflow``, ``no_responders``, ``invalid_data``: not retryable; ``timeout`` and
``unavailable``: retryable, safe with the dedupe id); a child that fails or is cancelled → ``"child_failed"``
(not retryable: running the action again would find the same failed child); no completion within ``timeout``
→ ``"timeout"`` (retryable: the next run waits for the same child).

One connection per execution: a nats-py connection belongs to one event loop, and this keeps the executor
usable from any loop without connections outliving it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, ClassVar

import nats.errors

from ..config import Settings, load_settings, redact_url
from ..engine import current_firing
from ..errors import ConfigError, ExecutorError, InjectError, NatsUnavailableError
from ..events import Event, InstanceCompleted, InstanceStatusChanged, TokenInjected, TransitionFailed, TransitionFired
from ..nats import Client
from ..nats._events import subject_token
from ._base import Executor, token_data
from ._params import param

__all__ = ["NatsExecutor"]

# Statuses after which a child will not complete by itself (a person may still retry a failed one).
_FAILED = frozenset({"failed", "cancelled", "rolled_back"})
# Inject errors that asking again cannot fix.
_PERMANENT = frozenset({"unknown_workflow", "no_responders", "invalid_data", "not_an_object", "invalid_request"})


class NatsExecutor(Executor):
    """Start an instance of another workflow on NATS; optionally wait for it, merge its data, chain a next one.

    The output is ``{"status": "started" | "completed", "instance_id", "workflow", "data" (when waited),
    "next_instance_id" (when chained)}``. With ``merge`` the child's final data is merged into the output
    itself instead of under ``data`` (the output's own keys win a clash).
    """

    name: ClassVar[str] = "nats"

    workflow: str = param(required=True, description="the workflow to start (a name, or a Workflow object)")
    nats_url: str | list[str] | None = param(
        description="NATS server(s); default: the settings' nats_url (CB_NATS_URL)"
    )
    workflow_id: str | None = param(
        description="dedupe id: the same id always finds the same child; default: the firing's idempotency key"
    )
    data: dict[str, Any] | None = param(description="the child's token data; default: the parent token's data")
    wait: bool = param(default=False, description="wait for the child to complete")
    timeout: float | None = param(default=None, gt=0, description="seconds to wait for the child; None: no limit")
    merge: bool = param(default=False, description="when waiting: merge the child's final data into the output")
    next_workflow: str | None = param(
        description="when the child completes, start this workflow with its final data (implies waiting)"
    )
    connect_timeout: float = param(default=2.0, gt=0, description="seconds to wait for the NATS connection")
    request_timeout: float = param(default=5.0, gt=0, description="seconds to wait for an engine's inject reply")

    def __init__(self, **params: Any) -> None:
        # A Workflow object is kept by name, so spec() stays serialisable for workers in other processes.
        for key in ("workflow", "next_workflow"):
            value = params.get(key)
            if value is not None and not isinstance(value, str) and isinstance(getattr(value, "name", None), str):
                params[key] = value.name
        super().__init__(**params)

    def validate(self) -> None:
        for key in ("workflow", "next_workflow"):
            value = getattr(self, key)
            if value is not None:
                subject_token(key, value)  # ValueError names the parameter and the value
        if self.merge and not self.waits:
            raise ValueError("merge needs wait=True (there is no final data without waiting)")

    @property
    def waits(self) -> bool:
        return self.wait or self.next_workflow is not None

    # -- running -----------------------------------------------------------------------------------------
    async def execute_internal(self) -> dict[str, Any]:
        settings = self._settings()
        try:
            return await self._run(Client(servers=self._servers(), settings=settings, timeout=self.request_timeout))
        except (NatsUnavailableError, nats.errors.Error) as err:
            # Unreachable, or lost for longer than the requests wait: the dedupe id makes another run safe.
            where = ", ".join(redact_url(u) for u in self._servers() or settings.nats_url)
            raise self._error(
                "connection",
                f"NATS at {where}: {type(err).__name__}: {err}",
                retryable=True,
                details={"servers": where},
            ) from err

    async def _run(self, client: Client) -> dict[str, Any]:
        data = dict(token_data()) if self.data is None else self.data
        async with client:
            instance_id = await self._inject(client, self.workflow, data, self._dedupe_id())
            out: dict[str, Any] = {"status": "started", "instance_id": instance_id, "workflow": self.workflow}
            if not self.waits:
                return out
            final = await self._wait(client, instance_id)
            out["status"] = "completed"
            if self.next_workflow is not None:
                # Keyed on the child, so a re-run chains the same next instance.
                out["next_instance_id"] = await self._inject(
                    client, self.next_workflow, final, f"{instance_id}:then:{self.next_workflow}"
                )
        return {**final, **out} if self.merge else {**out, "data": final}

    def _dedupe_id(self) -> str | None:
        if self.workflow_id is not None:
            return self.workflow_id
        firing = current_firing()
        return firing.idempotency_key if firing is not None else None

    def _servers(self) -> list[str] | None:
        if self.nats_url is None:
            return None  # the settings' nats_url
        return [self.nats_url] if isinstance(self.nats_url, str) else list(self.nats_url)

    def _settings(self) -> Settings:
        """The project's settings (URL, credentials, TLS) with one connection attempt: the executor's retry
        policy, not a start-up back-off, decides when to try again."""
        try:
            settings = load_settings()
        except ConfigError as err:
            raise self._error("config", f"cannot read the NATS settings: {err}", retryable=False) from err
        if self.nats_url is None and not settings.nats_url:
            raise self._error("config", "no NATS server: give nats_url or set CB_NATS_URL", retryable=False)
        return settings.model_copy(update={"connect_attempts": 1, "connect_timeout": self.connect_timeout})

    async def _inject(self, client: Client, workflow: str, data: Mapping[str, Any], dedupe_id: str | None) -> str:
        try:
            return str(await client.inject(workflow, dict(data), dedupe_id))
        except InjectError as err:
            retryable = err.retryable and err.code not in _PERMANENT
            raise self._error(
                err.code,
                f"cannot start workflow {workflow!r}: {err.message}",
                retryable=retryable,
                details={"workflow": workflow, "field": err.field} if err.field else {"workflow": workflow},
            ) from err

    async def _wait(self, client: Client, instance_id: str) -> dict[str, Any]:
        """The child's final data once it completes; raises for a failed child or when ``timeout`` passes.

        What is stored is folded first, so a child that failed and was then retried by hand is judged by where
        it is now; then live events follow, skipping those already folded.
        """
        child = _Child(self.workflow, instance_id)
        deadline = asyncio.timeout(self.timeout)
        try:
            async with deadline:
                async with client.events(instance=instance_id, follow=False) as stored:
                    async for event in stored:
                        child.apply(event)
                if child.outcome() is None:
                    seen = child.seq
                    async with client.events(instance=instance_id, since="start") as events:
                        async for event in events:
                            if event.seq > seen:
                                child.apply(event)
                                if child.outcome() is not None:
                                    break
        except TimeoutError:
            if not deadline.expired():
                raise  # a NATS request timed out, not the wait
            raise self._error(
                "timeout",
                f"child {self.workflow!r} instance {instance_id} did not complete within {self.timeout:g}s "
                f"(last status: {child.status})",
                retryable=True,
                details={"workflow": self.workflow, "instance_id": instance_id, "child_status": child.status},
            ) from None
        if child.outcome() == "completed":
            return child.final_data
        raise self._error(
            "child_failed",
            f"child {self.workflow!r} instance {instance_id} {child.status}"
            + (f": {child.reason}" if child.reason else ""),
            retryable=False,
            details={"workflow": self.workflow, "instance_id": instance_id, "child_status": child.status},
        )

    def _error(
        self, kind: str, message: str, *, retryable: bool, details: dict[str, Any] | None = None
    ) -> ExecutorError:
        return ExecutorError(
            f"executor {self.name!r}: {message}", executor=self.name, kind=kind, retryable=retryable, details=details
        )


class _Child:
    """The child instance as its events describe it: tokens by id (in arrival order), status and seq."""

    def __init__(self, workflow: str, instance_id: str) -> None:
        self.workflow = workflow
        self.instance_id = instance_id
        self.tokens: dict[str, tuple[str, dict[str, Any]]] = {}  # id -> (place, data)
        self.status = "running"
        self.reason: str | None = None
        self.final_places: list[str] = []
        self.seq = 0

    def apply(self, event: Event) -> None:
        if isinstance(event, TokenInjected):
            self.tokens[event.token.id] = (event.token.place or "", dict(event.token.data))
        elif isinstance(event, (TransitionFired, TransitionFailed)):
            for token_id in event.consumed:
                self.tokens.pop(token_id, None)
            for token in event.produced:
                self.tokens[token.id] = (token.place or "", dict(token.data))
        elif isinstance(event, InstanceCompleted):
            self.status, self.final_places = "completed", list(event.final_places)
        elif isinstance(event, InstanceStatusChanged):
            self.status, self.reason = event.status, event.reason
        self.seq = max(self.seq, event.seq)

    def outcome(self) -> str | None:
        """``"completed"``, ``"failed"`` (failed, cancelled, rolled back) or None while it may still go on."""
        if self.status == "completed":
            return "completed"
        return "failed" if self.status in _FAILED else None

    @property
    def final_data(self) -> dict[str, Any]:
        """The data of the tokens in final places, merged oldest first (as ``Instance.data`` does)."""
        places = set(self.final_places)
        merged: dict[str, Any] = {}
        for place, data in self.tokens.values():
            if not places or place in places:
                merged.update(data)
        return merged
