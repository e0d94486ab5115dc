"""ControlService: manual operations on instances, asked of a serving engine over NATS.

A person's verdict in a review queue, a service approving an order, the CLI's ``fire``: all reach the engine
that serves the workflow as a request on ``cb.ctl.<workflow>.<verb>`` (verbs ``fire``, ``retry``, ``pause``,
``resume``, ``cancel``), in the engines' queue group. The engine that answers drives the instance on from
there, so a caller does not need the workflow's code or to stay around while actions run.

Request: ``{"instance_id": "...", "transition": "approve", "data": {...}, "actor": "..."}`` (``transition`` and
``data`` only for ``fire``). Reply: ``{"instance": {...}}`` (the instance afterwards, as ``Instance`` JSON) or
``{"error": {"code": "...", "message": "..."}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import NotFoundError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import (
    ActionError,
    CircuitBreakerError,
    ConcurrencyError,
    ControlError,
    EngineClosedError,
    EventTooLargeError,
    InstanceStateError,
    TaskStateError,
    TokenDataError,
    TransitionNotEnabledError,
    TransitionRejectedError,
    UnknownInstanceError,
    UnknownTransitionError,
)
from ._protocol import PRINTABLE, first_problem
from ._subjects import EVENTS_STREAM, control_subject, instance_filter

if TYPE_CHECKING:
    from ..engine import Engine
    from ..tasks import Task

__all__ = [
    "ControlError",
    "ControlRequest",
    "ControlService",
    "DeadLetterRetry",
    "control_request",
    "request_control",
    "request_fire",
    "retry_dead_letter_via_engine",
]

log = logging.getLogger("circuit_breaker.nats.control")

Verb = Literal["fire", "retry", "pause", "resume", "cancel"]
VERBS: tuple[Verb, ...] = ("fire", "retry", "pause", "resume", "cancel")
STOPPING_VERBS: frozenset[Verb] = frozenset({"pause", "cancel"})  # what a stopping engine still does
MAX_PAYLOAD = 1024 * 1024

# Engine errors -> the protocol's codes.
_CODES: tuple[tuple[type[CircuitBreakerError], str], ...] = (
    (UnknownInstanceError, "unknown_instance"),
    (UnknownTransitionError, "unknown_transition"),
    (TransitionNotEnabledError, "not_enabled"),
    (TransitionRejectedError, "rejected"),
    (InstanceStateError, "instance_state"),
    (EventTooLargeError, "payload_too_large"),
    (TokenDataError, "invalid_data"),
    (ActionError, "action_failed"),
    (ConcurrencyError, "conflict"),
    (EngineClosedError, "unavailable"),
)


def protocol_code(err: BaseException) -> str | None:
    """The protocol's error code for an engine's refusal (None for an error it has no code for)."""
    return next((code for cls, code in _CODES if isinstance(err, cls)), None)


class ControlRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, title="ControlRequest")

    instance_id: str = Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9_-]+$")
    transition: str | None = Field(None, description="The manual transition to fire (fire only).")
    data: dict[str, Any] | None = Field(None, description="Merged into the token before the policy is judged.")
    actor: str | None = Field(None, min_length=1, max_length=256, pattern=PRINTABLE)
    reason: str | None = Field(None, max_length=2000, description="Why (cancel only).")
    task_id: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Retry only: hand out just this dead-lettered remote task again (what `dlq retry` asks).",
    )
    attempt: int | None = Field(
        None, ge=1, description="With task_id: the attempt seen dead-lettered (a later one out makes it stale)."
    )


def control_request(**fields: Any) -> ControlRequest:
    """A ``ControlRequest``; what it cannot be (an instance id that is no subject token...) raises
    ``ControlError("invalid_request", ...)`` naming the field, as a serving engine would answer."""
    try:
        return ControlRequest(**fields)
    except ValidationError as err:
        where, message = first_problem(err)
        raise ControlError("invalid_request", f"{where or '(request)'}: {message}") from None


class ControlService:
    """Answers ``cb.ctl.<workflow>.<verb>`` for the engine's workflows (queue group ``queue``)."""

    def __init__(self, engine: Engine, connection: NATS, *, queue: str = "cb-engines") -> None:
        self.engine = engine
        self.connection = connection
        self.queue = queue
        self._subs: list[tuple[Verb, Any]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_hand: dict[asyncio.Task[None], Msg] = {}  # the request each task answers

    async def start(self) -> None:
        for workflow in self.engine.workflows:
            for verb in VERBS:
                handler = self._handler(verb, workflow)
                sub = await self.connection.subscribe(control_subject(workflow, verb), queue=self.queue, cb=handler)
                self._subs.append((verb, sub))

    async def stop_starting(self, grace: float | None = None) -> None:
        """The engine is stopping: leave the requests that start something (fire, retry, resume) to the other
        engines of the queue group at once, but go on answering pause and cancel, which a stopping engine still
        does; the requests being answered finish first (as in ``stop``)."""
        await self._unsubscribe(lambda verb: verb not in STOPPING_VERBS)
        await self._finish(grace)

    async def stop(self, grace: float | None = None) -> None:
        """Stop taking requests; the ones being answered finish first (within ``grace`` seconds, if given: the
        rest are cancelled, a manual action with them, and their askers are answered ``unavailable``)."""
        await self._unsubscribe(lambda verb: True)
        await self._finish(grace)

    async def _unsubscribe(self, which: Callable[[Verb], bool]) -> None:
        leaving = [(verb, sub) for verb, sub in self._subs if which(verb)]
        self._subs = [(verb, sub) for verb, sub in self._subs if not which(verb)]
        for _, sub in leaving:
            try:
                await sub.unsubscribe()
            except Exception:  # the connection may be closing already
                log.debug("unsubscribing %s failed", sub.subject, exc_info=True)

    async def _finish(self, grace: float | None) -> None:
        if not self._tasks:
            return
        _, left = await asyncio.wait(set(self._tasks), timeout=grace)
        if left:
            log.warning("%d control request(s) still being answered after %.1fs are cancelled", len(left), grace)
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)

    def _handler(self, verb: Verb, workflow: str) -> Any:
        async def handle(msg: Msg) -> None:
            # Its own task: a manual action that takes a while must not hold up the requests behind it
            # (the client runs one subscription's callbacks one after another).
            task = asyncio.get_running_loop().create_task(self._serve(verb, workflow, msg))
            self._tasks.add(task)
            self._in_hand[task] = msg
            task.add_done_callback(self._done)

        return handle

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._in_hand.pop(task, None)

    async def answer_unavailable(self) -> None:
        """The engine ends at once (a second Ctrl-C): tell the askers of the requests in hand, whose answer would
        never come, rather than leave them to their timeouts."""
        stopped = "the engine stopped at once, before it was done; the instance is as stored (read it), ask again"
        body = _fitted(_error("unavailable", stopped), self.connection.max_payload)
        for msg in list(self._in_hand.values()):
            if msg.reply:
                with contextlib.suppress(Exception):
                    await msg.respond(body)
        with contextlib.suppress(Exception):
            await self.connection.flush(timeout=1)

    async def _serve(self, verb: Verb, workflow: str, msg: Msg) -> None:
        try:
            reply = await self._answer(verb, workflow, msg.data)
        except asyncio.CancelledError:
            # Stopping ran out of grace: tell the asker now rather than leave it waiting for its timeout.
            stopped = "the engine stopped before it was done; the instance is as stored (read it), ask again if needed"
            await self._respond(msg, _error("unavailable", stopped))
            raise
        except Exception as err:  # one bad request must never stop the service
            log.exception("control request on %s failed", msg.subject)
            reply = _error("internal", f"{type(err).__name__}: {err}")
        await self._respond(msg, reply)

    async def _respond(self, msg: Msg, reply: dict[str, Any]) -> None:
        if msg.reply:
            try:
                await msg.respond(_fitted(reply, self.connection.max_payload))
            except Exception:  # the caller is gone
                log.warning("could not answer the control request on %s", msg.subject, exc_info=True)

    async def _answer(self, verb: Verb, workflow: str, payload: bytes) -> dict[str, Any]:
        if len(payload) > MAX_PAYLOAD:
            return _error("payload_too_large", f"the request has {len(payload)} bytes; the limit is {MAX_PAYLOAD}")
        try:
            request = ControlRequest.model_validate_json(payload)
        except ValidationError as err:
            where, message = first_problem(err)
            return _error("invalid_request", f"{where or '(request)'}: {message}")
        engine = self.engine
        try:
            if (await engine.get(request.instance_id)).workflow != workflow:
                # Asked on another workflow's subject: NATS permissions are granted per subject, so a caller
                # allowed cb.ctl.<one>.> must not act on (nor learn of) the instances of the others.
                return _error("unknown_instance", f"no instance {request.instance_id!r} of workflow {workflow!r}")
            if verb == "fire":
                if not request.transition:
                    return _error("invalid_request", "transition: a fire request names the transition")
                inst = await engine.fire(request.instance_id, request.transition, request.actor, data=request.data)
            elif verb == "retry":
                inst = await engine.retry(
                    request.instance_id, request.actor, task_id=request.task_id, attempt=request.attempt
                )
            elif verb == "pause":
                inst = await engine.pause(request.instance_id, request.actor)
            elif verb == "resume":
                inst = await engine.resume(request.instance_id, request.actor)
            else:
                inst = await engine.cancel(request.instance_id, request.actor, request.reason)
        except CircuitBreakerError as err:
            code = protocol_code(err)
            if code is None:
                raise
            details: dict[str, Any] | None = None
            if isinstance(err, TransitionRejectedError):
                details = {"errors": list(err.errors)}
            elif isinstance(err, TaskStateError):
                details = {"task": err.reason}
            return _error(code, str(err), details)
        return {"instance": inst.model_dump(mode="json")}


def _error(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    return {"error": body}


def _fitted(reply: dict[str, Any], limit: int) -> bytes:
    """The reply as JSON within the server's ``max_payload``: an instance too large to send loses its history,
    then its tokens' data (``"truncated"`` names what is left out; ``circuit-breaker status`` shows it all)."""
    body = json.dumps(reply, default=str).encode()
    instance = reply.get("instance")
    if len(body) <= limit or not isinstance(instance, dict):
        return body
    slim = {**instance, "history": []}
    body = json.dumps({"instance": slim, "truncated": ["history"]}, default=str).encode()
    if len(body) <= limit:
        return body
    slim["tokens"] = [{k: v for k, v in t.items() if k != "data"} for t in instance.get("tokens", [])]
    body = json.dumps({"instance": slim, "truncated": ["history", "token data"]}, default=str).encode()
    if len(body) <= limit:
        return body
    message = f"the instance is too large to send ({len(body)} bytes); read it with `circuit-breaker status`"
    return json.dumps(_error("reply_too_large", message, {"instance_id": instance.get("id")}), default=str).encode()


async def workflow_of(connection: NATS, instance_id: str) -> str:
    """The workflow of a stored instance, from the subject of its first event (one direct get)."""
    js = connection.jetstream()
    try:
        msg = await js.get_msg(EVENTS_STREAM, seq=1, subject=instance_filter(instance_id), next=True, direct=True)
    except NotFoundError:
        raise UnknownInstanceError(instance_id) from None
    except NoRespondersError:
        # Direct gets have nobody to answer them before the events stream exists: nothing was stored yet.
        try:
            await js.stream_info(EVENTS_STREAM)
        except NotFoundError:
            raise UnknownInstanceError(instance_id) from None
        raise
    return str(msg.subject).split(".")[2]


async def request_control(
    connection: NATS, verb: Verb, request: ControlRequest, *, workflow: str | None = None, timeout: float = 30.0
) -> dict[str, Any]:
    """Ask a serving engine; returns the instance afterwards (``Instance`` JSON) or raises ``ControlError``."""
    payload = request.model_dump_json(exclude_none=True).encode()
    if len(payload) > connection.max_payload:  # (nats-py would raise its own error for it)
        raise ControlError(
            "payload_too_large",
            f"the request has {len(payload)} bytes, more than the NATS server takes in one message "
            f"(max_payload {connection.max_payload}); keep large data out of tokens",
        )
    name = workflow or await workflow_of(connection, request.instance_id)
    subject = control_subject(name, verb)
    try:
        msg = await connection.request(subject, payload, timeout=timeout)
    except NoRespondersError:
        raise ControlError(
            "no_responders", f"no engine serves workflow {name!r} (nothing answers on {subject})"
        ) from None
    except (TimeoutError, NatsTimeoutError):
        raise ControlError("timeout", f"no answer on {subject} within {timeout:g}s") from None
    reply = json.loads(msg.data)
    if "error" in reply:
        error = reply["error"]
        raise ControlError(str(error.get("code")), str(error.get("message")), details=error.get("details"))
    return dict(reply["instance"])


async def request_fire(
    connection: NATS,
    instance_id: str,
    transition: str,
    *,
    data: dict[str, Any] | None = None,
    actor: str | None = None,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """Fire a manual transition through the engine serving the instance's workflow."""
    request = control_request(instance_id=instance_id, transition=transition, data=data, actor=actor)
    return await request_control(connection, "fire", request, timeout=timeout)


@dataclass(frozen=True, slots=True)
class DeadLetterRetry:
    """How a dead letter's task went out again: ``by_engine`` (the instance recorded it; ``instance`` is the
    instance afterwards, as ``Instance`` JSON) or published straight to its queue (no engine serves the
    workflow, or the task belongs to no stored instance)."""

    task: Task
    by_engine: bool
    instance: dict[str, Any] | None = None


async def retry_dead_letter_via_engine(
    connection: NATS, entry: int, *, actor: str | None = None, timeout: float = 30.0
) -> DeadLetterRetry:
    """Hand dead letter ``entry``'s task out again as its next attempt, and remove the letter.

    The engine serving the task's workflow does it when one answers, so the instance records it (a new
    ``transition_started``; a failed instance runs again if this task was all that failed it). Only when no
    engine serves the workflow, or the instance is not stored, is the task published straight to its queue
    (``retry_dead_letter``); an engine applies its result when it runs. Raises ``ControlError`` when the engine
    refuses (the task is not dead-lettered in the instance: the letter is then stale and kept for ``dlq
    drop``), ``DeadLetterError`` for an unknown entry or one without a task.
    """
    from ..errors import DeadLetterError
    from ..workers._queue import drop_dead_letter, get_dead_letter, retry_dead_letter

    js = connection.jetstream(timeout=min(timeout, 5.0))
    letter = await get_dead_letter(js, entry)
    task = letter.task
    if task is None:
        raise DeadLetterError(
            f"dead letter {entry} holds no task (reason {letter.reason}: {letter.message}); drop it instead",
            entry=entry,
        )
    request = ControlRequest(instance_id=task.instance_id, task_id=task.task_id, attempt=task.attempt, actor=actor)
    instance: dict[str, Any] | None = None
    for ask in (request, request.model_copy(update={"attempt": None})):
        try:
            instance = await request_control(connection, "retry", ask, workflow=task.workflow, timeout=timeout)
            break
        except ControlError as err:
            refused = err.message if err.code == "invalid_request" else ""
            if "attempt" in refused and "task_id" not in refused and ask.attempt is not None:
                continue  # an engine that knows task retries but not the attempt field: ask it without
            if err.code == "instance_state":
                if err.details.get("task") == "out":  # not dead (yet): the letter may be about to count
                    hint = f"dead letter {entry} is left as it is: try again in a moment"
                else:  # handed out again and ended meanwhile, or the instance ended: the letter is stale
                    hint = f"dead letter {entry} is stale: `circuit-breaker dlq drop {entry}` removes it"
                raise ControlError(err.code, f"{err.message}; {hint}", details=err.details) from None
            if err.code in ("no_responders", "unknown_instance") or "task_id" in refused:
                # No engine serves the workflow, none knows the instance, or one from before task retries:
                # publish the task as the CLI always did (the engine applies its result when it runs).
                return DeadLetterRetry(task=await retry_dead_letter(js, entry), by_engine=False)
            raise
    assert instance is not None
    with contextlib.suppress(DeadLetterError):  # the engine removed the letters under the task's subject
        await drop_dead_letter(js, entry)  # (one written before letters had a subject per task stays: drop it)
    attempt = next((t["attempt"] for t in instance.get("tasks", []) if t.get("task_id") == task.task_id), None)
    handed = task.model_copy(update={"attempt": attempt}) if attempt is not None else task
    return DeadLetterRetry(task=handed, by_engine=True, instance=instance)
