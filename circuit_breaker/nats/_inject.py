"""InjectService: lets services in any language start instances on an engine, over NATS.

Two ways in, one behaviour (see docs/nats-protocol.md):

- request/reply on ``cb.inject.<workflow>``: the reply carries the instance id or an error code, so the caller
  knows at once; engines subscribe in one queue group, so exactly one of them answers each request;
- the durable inbox ``cb.inbox.<workflow>`` (stream ``CB_INBOX``): fire-and-forget, kept until an engine
  has started the instance, so it works while every engine is down.

Either way a ``dedupe_id`` makes the injection idempotent for ever: the instance id is derived from it, so a
repeat (a retry, a redelivery, two engines racing) finds the instance the first one started.

By default the service answers for every workflow on ``cb.inject.*`` and refuses the ones its engine does
not run (``unknown_workflow``). That assumes the engines of a queue group all run the same workflows (the usual
way to scale out). When they do not, pass ``answer_unknown=False``: the service then subscribes only to its own
workflows (requests for others get "no responders") and leaves inbox messages of other workflows to the
engines that run them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from ..config import StreamSettings
from ..errors import (
    CircuitBreakerError,
    EventTooLargeError,
    InjectError,
    InstanceExistsError,
    TokenDataError,
    UnknownWorkflowError,
)
from ._inbox import InboxConsumer, ensure_inbox_stream, inbox_durable, retire_shared_consumer
from ._protocol import DEFAULT_MAX_PAYLOAD, ErrorCode, InjectAccepted, InjectRequest, error_reply, parse_request
from ._subjects import INJECT_PREFIX, inject_subject, instance_id_for

if TYPE_CHECKING:
    from ..engine import Engine

__all__ = ["InjectService", "start_instance"]

log = logging.getLogger("circuit_breaker.nats.inject")


async def start_instance(
    engine: Engine, workflow: str, request: InjectRequest, dedupe_key: str | None = None
) -> InjectAccepted:
    """Start the instance ``request`` asks for; raises :class:`InjectError` with the protocol's code.

    ``dedupe_key`` (default: the request's dedupe_id) fixes the instance id, so a repeat answers with the
    instance the first one started and ``duplicate=True``.
    """
    if workflow not in engine.workflows:
        raise InjectError(ErrorCode.UNKNOWN_WORKFLOW, str(UnknownWorkflowError(workflow, engine.workflows)))
    key = dedupe_key if dedupe_key is not None else request.dedupe_id
    instance_id = instance_id_for(workflow, key) if key is not None else None
    try:
        instance = await engine.start(workflow, request.data, instance_id=instance_id, actor=request.actor)
    except InstanceExistsError:
        if instance_id is None:
            raise
        return InjectAccepted(instance_id=instance_id, duplicate=True)
    except UnknownWorkflowError as err:  # unregistered meanwhile
        raise InjectError(ErrorCode.UNKNOWN_WORKFLOW, str(err)) from None
    except EventTooLargeError as err:  # (the data fits the request, but not with the event's envelope)
        raise InjectError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"the data makes the instance's first event {err.size} bytes, more than the NATS server takes in one "
            f"message (max_payload {err.limit}); keep large data out of tokens (store it elsewhere and keep a "
            "reference in the token)",
        ) from None
    except TokenDataError as err:
        raise InjectError(ErrorCode.INVALID_DATA, str(err), field=err.field) from None
    except (TimeoutError, nats.errors.Error) as err:
        raise InjectError(ErrorCode.UNAVAILABLE, f"NATS: {type(err).__name__}: {err}", retryable=True) from None
    except CircuitBreakerError as err:
        if not err.retryable:
            raise
        raise InjectError(ErrorCode.UNAVAILABLE, str(err), retryable=True) from None
    return InjectAccepted(instance_id=instance.id, duplicate=False)


UNKNOWN_ANSWER_DELAY = 0.25  # seconds before answering unknown_workflow (an engine that serves it answers first)
FOLLOW_EVERY = 1.0  # seconds between two looks for workflows registered after the service started


class InjectService:
    """Serves inject requests and drains the inbox for ``engine``, on ``connection``.

    ``async with InjectService(engine, nc):`` or ``start()`` / ``stop()``. ``queue`` is the queue group, and the
    prefix of the inbox's durable consumers, that engines share; ``max_payload`` bounds a request's size in bytes;
    ``concurrency`` bounds the injections handled at once per way in (request/reply; the inbox, whose share is
    split among its workflows' consumers, at least 4 each).

    It answers on ``cb.inject.<workflow>`` and drains ``cb.inbox.<workflow>`` (a consumer per workflow) for the
    engine's workflows, also those registered later (within FOLLOW_EVERY seconds). With ``answer_unknown`` (the
    default) it also answers a request for a workflow that no engine takes injections for, ``unknown_workflow``
    naming the ones they do (in its own queue group, after UNKNOWN_ANSWER_DELAY, and only when no live engine
    it hears of serves the workflow: engines of other projects on the same NATS answer for theirs). An inbox
    message for a workflow no engine runs waits in the stream for one that does.
    """

    def __init__(
        self,
        engine: Engine,
        connection: NATS,
        *,
        settings: StreamSettings | None = None,
        queue: str = "cb-engines",
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        answer_unknown: bool = True,
        inbox: bool = True,
        concurrency: int = 64,
    ) -> None:
        self.engine = engine
        self.connection = connection
        self.settings = settings if settings is not None else StreamSettings()
        self.queue = queue
        self.max_payload = max_payload
        self.answer_unknown = answer_unknown
        self.inbox = inbox
        self.concurrency = concurrency
        self._subs: list[Any] = []
        self._served: set[str] = set()  # the workflows it answers and drains the inbox for
        self._inboxes: list[InboxConsumer] = []
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._follower: asyncio.Task[None] | None = None
        self._adding = asyncio.Lock()
        self._stopping = False
        self._unknown_asked = 0  # unknown-workflow requests waiting for their answer

    @property
    def subjects(self) -> list[str]:
        """The subjects the service answers on (``cb.inject.*`` only for workflows that no engine serves)."""
        own = [inject_subject(w) for w in self.engine.workflows]
        return [*own, inject_subject("*")] if self.answer_unknown else own

    async def start(self) -> None:
        if self._subs:
            return
        self._stopping = False
        if self.inbox:
            await ensure_inbox_stream(self.connection.jetstream(), self.settings)
            await retire_shared_consumer(self.connection.jetstream(), self.queue)
        await self._serve_new()
        if self.answer_unknown:
            # Its own queue group: a request for a workflow some engine serves reaches that engine in the main
            # group whatever happens here; here one engine only looks whether anybody serves it at all.
            unknown = f"{self.queue}-unknown"
            sub = await self.connection.subscribe(inject_subject("*"), queue=unknown, cb=self._on_any_request)
            self._subs.append(sub)
        serve_injections = getattr(self.engine.store, "serve_injections", None)
        if serve_injections is not None:
            serve_injections(lambda: sorted(self._served))  # (the peers' unknown answers leave these to this one)
        self._follower = asyncio.get_running_loop().create_task(self._follow_registrations())
        log.info("serving inject requests on %s and the inbox for %s", ", ".join(self.subjects), self.engine.workflows)

    async def _serve_new(self) -> None:
        """Answer requests and drain the inbox for the engine's workflows not served yet (registered later). The
        inbox consumer comes first: a workflow whose consumer cannot be made is not subscribed either, and is
        tried again at the next round."""
        async with self._adding:
            for workflow in sorted(set(self.engine.workflows) - self._served):
                if self._stopping:
                    return
                if self.inbox:
                    consumer = InboxConsumer(
                        self.connection,
                        self._from_inbox,
                        settings=self.settings,
                        durable=inbox_durable(self.queue, workflow),
                        workflow=workflow,
                        concurrency=max(4, self.concurrency // max(1, len(self.engine.workflows))),
                        max_payload=self.max_payload,
                    )
                    await consumer.start()
                    self._inboxes.append(consumer)
                sub = await self.connection.subscribe(inject_subject(workflow), queue=self.queue, cb=self._on_request)
                self._subs.append(sub)
                self._served.add(workflow)
                advertise = getattr(self.engine.store, "advertise", None)
                if advertise is not None:
                    advertise()

    async def _follow_registrations(self) -> None:
        while True:
            await asyncio.sleep(FOLLOW_EVERY)
            if set(self.engine.workflows) - self._served:
                try:
                    await self._serve_new()
                except Exception:  # (NATS trouble: the next round tries again)
                    log.warning("could not serve injections for a newly registered workflow", exc_info=True)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking requests; those in hand get ``grace`` seconds to be answered."""
        self._stopping = True
        if self._follower is not None:
            self._follower.cancel()
            await asyncio.gather(self._follower, return_exceptions=True)
            self._follower = None
        async with self._adding:  # (a workflow being added meanwhile is added whole, then stopped here)
            inboxes, self._inboxes = self._inboxes, []
            subs, self._subs = self._subs, []
            self._served.clear()
        for sub in subs:
            try:
                await sub.unsubscribe()
            except Exception as err:  # a closed connection has no subscriptions left anyway
                log.debug("unsubscribing %s: %s", sub.subject, err)
        serve_injections = getattr(self.engine.store, "serve_injections", None)
        if serve_injections is not None:
            serve_injections(None)
        await asyncio.gather(*(inbox.stop(grace) for inbox in inboxes))
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def __aenter__(self) -> InjectService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _from_inbox(self, workflow: str, request: InjectRequest, dedupe_key: str | None) -> InjectAccepted:
        return await start_instance(self.engine, workflow, request, dedupe_key)

    async def _on_request(self, msg: Msg) -> None:
        # Handled in tasks so one slow store write does not hold up the requests behind it; the semaphore
        # makes the subscription's own queue absorb a burst beyond ``concurrency``.
        await self._slots.acquire()
        task = asyncio.get_running_loop().create_task(self._answer(msg))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _on_any_request(self, msg: Msg) -> None:
        workflow = msg.subject[len(INJECT_PREFIX) + 1 :]
        if workflow in self._served or self._stopping:
            return  # answered through its own subscription
        if workflow in self.engine.workflows:  # registered a moment ago: serve it from now on, and answer this
            task = asyncio.get_running_loop().create_task(self._serve_late(msg, workflow))
        elif self._unknown_asked < self.concurrency:  # (a flood of them gets no answer)
            task = asyncio.get_running_loop().create_task(self._answer_unknown(msg, workflow))
        else:
            return
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:  # (NATS trouble: the next look tries again)
            log.warning("serving an inject request failed: %s", task.exception())

    async def _serve_late(self, msg: Msg, workflow: str) -> None:
        """A request for a workflow registered after the last look: serve the workflow from now on, and answer
        this request too, unless an engine that serves it already got it (its own queue group)."""
        await self._serve_new()
        if workflow in self._served and workflow not in self._served_elsewhere():
            await self._on_request(msg)

    async def _answer_unknown(self, msg: Msg, workflow: str) -> None:
        """``unknown_workflow``, unless an engine this one hears of serves the workflow (it answers); a moment
        late, so that an engine that started a moment ago, and has not been heard of yet, answers first."""
        if not msg.reply:
            return
        self._unknown_asked += 1
        try:
            await asyncio.sleep(UNKNOWN_ANSWER_DELAY)
        finally:
            self._unknown_asked -= 1
        serving = self._served_elsewhere() | self._served
        if workflow in serving or workflow in self.engine.workflows:
            return
        known = sorted(serving)
        err = InjectError(ErrorCode.UNKNOWN_WORKFLOW, str(UnknownWorkflowError(workflow, known)))
        log.info("inject request on %s refused: %s: %s", msg.subject, err.code, err.message)
        with contextlib.suppress(Exception):  # the requester is gone or the connection dropped
            await msg.respond(error_reply(err).model_dump_json(exclude_none=True).encode())

    def _served_elsewhere(self) -> set[str]:
        """The workflows the other live engines on this NATS take injections for."""
        peer_injects = getattr(self.engine.store, "peer_injects", None)
        return set() if peer_injects is None else peer_injects()

    async def _answer(self, msg: Msg) -> None:
        workflow = msg.subject[len(INJECT_PREFIX) + 1 :]
        if not msg.reply:
            log.warning("ignoring a message on %s without a reply subject (publish to cb.inbox.* instead)", msg.subject)
            return
        try:
            request = parse_request(msg.data, max_payload=self.max_payload)
            body = (await start_instance(self.engine, workflow, request)).model_dump_json()
        except InjectError as err:
            log.info("inject request on %s refused: %s: %s", msg.subject, err.code, err.message)
            body = error_reply(err).model_dump_json(exclude_none=True)
        except Exception as err:
            log.exception("inject request on %s failed", msg.subject)
            failure = InjectError(ErrorCode.INTERNAL, f"the engine failed to start the instance: {type(err).__name__}")
            body = error_reply(failure).model_dump_json(exclude_none=True)
        try:
            await msg.respond(body.encode())
        except Exception as err:  # the requester is gone or the connection dropped: nothing left to tell
            log.info("could not answer the inject request on %s: %s", msg.subject, err)
