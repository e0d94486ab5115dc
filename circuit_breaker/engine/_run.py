"""The engine's live state of one instance, and the fold that applies an event to it.

The same ``apply`` serves live firing and replay from a store, so a rebuilt instance equals the live one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from .._construct import build
from ..dsl import CompiledTransition, CompiledWorkflow
from ..events import (
    Event,
    InstanceCompleted,
    InstanceStatusChanged,
    TokenInjected,
    TransitionFailed,
    TransitionFired,
    TransitionRejected,
    TransitionStarted,
)
from ..net import Marking, fire, is_enabled
from ..token import History, HistoryEntry, Token, make_token
from ._instance import Incident, Instance
from ._lifecycle import SETTLED, TERMINAL, InstanceStatus
from ._tasks import PendingTask


class _NoLock:
    """Stands in for asyncio.Lock where commits cannot interleave."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


NO_LOCK = _NoLock()


class Run:
    """Mutable runtime state of an instance. Only the engine touches it, on the event loop."""

    __slots__ = (
        "advancing",
        "awaiting_seq",
        "created_at",
        "cw",
        "dirty",
        "failed_on_incident",
        "history",
        "id",
        "incidents",
        "inflight",
        "local",
        "lock",
        "marking",
        "pending",
        "rejected",
        "reserved",
        "reserved_in",
        "running",
        "seq",
        "settled",
        "status",
        "tasks",
        "updated_at",
        "wake_at",
    )

    def __init__(self, instance_id: str, cw: CompiledWorkflow, *, atomic_store: bool = False) -> None:
        self.id = instance_id
        self.cw = cw
        self.marking: Marking[Token] = Marking()
        self.status = InstanceStatus.RUNNING
        self.seq = 0
        self.reserved: set[Token] = set()  # tokens an action in flight will consume
        self.reserved_in: dict[str, int] = {}  # how many of them per place (cheap enabling checks)
        self.rejected: set[tuple[str, tuple[str, ...]]] = set()  # (transition, token ids) a policy refused
        self.incidents: list[Incident] = []
        # Whether the instance failed because of open incidents (not an internal error): then settling them all
        # lets it go on.
        self.failed_on_incident = False
        self.history = History()
        self.created_at: datetime | None = None
        self.updated_at: datetime | None = None
        self.inflight = 0
        self.tasks: set[asyncio.Task[Any]] = set()
        self.settled = asyncio.Event()
        # Serialises commits while a store append is suspended; unneeded when appends cannot suspend.
        self.lock: asyncio.Lock | _NoLock = NO_LOCK if atomic_store else asyncio.Lock()
        self.advancing = False
        self.dirty = False
        # An observer handed the instance to its driver at this version: not settled until it reads a newer one.
        self.awaiting_seq = 0
        self.running: dict[str, int] = {}  # actions in flight per transition (for max_parallel)
        self.wake_at: float | None = None  # loop time of the next timed scheduler pass, if any
        self.local = False  # this engine drives it (started, loaded or fired it here), not just follows it
        self.pending: dict[str, PendingTask] = {}  # remote tasks in flight, by task id (their tokens wait there)

    # -- reservations ------------------------------------------------------------------------------------
    def reserve(self, consumed: Mapping[str, tuple[Token, ...]]) -> None:
        counts = self.reserved_in
        for place, tokens in consumed.items():
            self.reserved.update(tokens)
            counts[place] = counts.get(place, 0) + len(tokens)

    def release(self, consumed: Mapping[str, tuple[Token, ...]]) -> None:
        counts = self.reserved_in
        for place, tokens in consumed.items():
            self.reserved.difference_update(tokens)
            left = counts.get(place, 0) - len(tokens)
            if left > 0:
                counts[place] = left
            else:
                counts.pop(place, None)

    def holds(self, consumed: Mapping[str, tuple[Token, ...]]) -> bool:
        """Whether every token of ``consumed`` still lies in its place (another engine may have taken it)."""
        for place, tokens in consumed.items():
            present = {t.id for t in self.marking.get_tokens(place)}
            if any(t.id not in present for t in tokens):
                return False
        return True

    def free(self, place: str) -> int:
        """Tokens in ``place`` that no running action has reserved."""
        return len(self.marking.get_tokens(place)) - self.reserved_in.get(place, 0)

    # -- the fold ----------------------------------------------------------------------------------------
    def apply(
        self,
        event: Event,
        consumed: Mapping[str, tuple[Token, ...]] | None = None,
        produced: Mapping[str, tuple[Token, ...]] | None = None,
        entry: HistoryEntry | None = None,
    ) -> None:
        """Apply one event. ``consumed`` and ``produced`` (tokens by place) are hints from the live path that
        save regrouping the event's tokens; replay goes without them."""
        if isinstance(event, TransitionFired):
            if event.task_id is not None:
                self._apply_task_done(event, entry)
            else:
                self._apply_fired(event, consumed, produced, entry)
        elif isinstance(event, TransitionStarted):
            self._apply_started(event)
        elif isinstance(event, TokenInjected):
            tok = event.token
            self.marking = self.marking.add(tok.place or self.cw.initial_place, tok)
            self.created_at = event.time
            self._record(event, "created", None, (), (tok.place or "",), {"token": tok.id})
        elif isinstance(event, TransitionRejected):
            if event.task_id is not None:
                self._restore(event.task_id)
            self.rejected.add((event.transition, tuple(event.tokens)))
            self._record(event, "rejected", event.transition, (), (), {"errors": event.errors, "stage": event.stage})
        elif isinstance(event, TransitionFailed):
            self._apply_failed(event)
        elif isinstance(event, InstanceCompleted):
            self.status = InstanceStatus.COMPLETED
            self._record(event, "completed", None, (), (), {"final_places": event.final_places})
        elif isinstance(event, InstanceStatusChanged):
            status = InstanceStatus(event.status)
            if status is InstanceStatus.RUNNING and self.status is InstanceStatus.FAILED:
                self.incidents = [i.model_copy(update={"resolved": True}) for i in self.incidents]
            if event.details.get("retry"):
                self.rejected.clear()
            if status is InstanceStatus.FAILED:
                self.failed_on_incident = any(not i.resolved for i in self.incidents)
            self.status = status
            self._record(event, "status", None, (), (), {"status": event.status, "reason": event.reason})
        self.seq = event.seq
        self.updated_at = event.time

    def _apply_fired(
        self,
        event: TransitionFired,
        consumed: Mapping[str, tuple[Token, ...]] | None,
        produced: Mapping[str, tuple[Token, ...]] | None,
        entry: HistoryEntry | None,
    ) -> None:
        ct = self.cw.transitions.get(event.transition)
        if produced is None:
            tokens = event.produced
            if tokens and not tokens[0].history:
                # Replayed from JSON, where produced tokens travel without history: rebuild it as firing did.
                entry = _replayed_entry(event, ct, tokens)
                tokens = self._with_history(tokens, event.consumed, entry)
            produced = _by_place(tokens)
        if consumed is not None and ct is not None:
            self.marking = fire(ct.net, self.marking, consumed, produced)
        else:
            self.marking = self._move(event.consumed, produced)
        last = entry
        if last is None and event.produced and event.produced[0].history:
            last = event.produced[0].history[-1]
        if last is not None and last.kind == "fired" and last.transition == event.transition:
            # The produced tokens' newest entry already says exactly this; share it.
            self.history = self.history.append(last)
        else:
            from_places = ct.input_places if ct is not None else ()
            self._record(event, "fired", event.transition, from_places, tuple(produced))

    def _apply_started(self, event: TransitionStarted) -> None:
        known = self.pending.get(event.task_id)
        if known is not None:  # handed out again: a new attempt of the same task
            if known.dead:  # (its dead letter's incident is settled: the task runs again)
                self._resolve_incidents_of(known)
            known.attempt = event.attempt
            known.since = event.time
            known.dead = False
            if known.timer is not None:  # it counted the attempt before; whoever sends this one counts it
                known.timer.cancel()
                known.timer = None
            self._record(
                event, "dispatched", event.transition, (), (), {"task": event.task_id, "attempt": event.attempt}
            )
            return
        ids = set(event.consumed)
        found: dict[str, tuple[str, Token]] = {}
        places: dict[str, tuple[Token, ...]] = {}
        for place, toks in self.marking.items():
            kept = tuple(t for t in toks if t.id not in ids)
            if len(kept) != len(toks):
                found.update((t.id, (place, t)) for t in toks if t.id in ids)
            if kept:
                places[place] = kept
        self.marking = Marking(places)
        # Held in the order the event names them (the transition's input order), as the live firing saw them:
        # the produced tokens' history comes from the first.
        taken: dict[str, tuple[Token, ...]] = {}
        for tid in event.consumed:
            if tid in found:
                place, tok = found[tid]
                taken[place] = taken.get(place, ()) + (tok,)
        self.pending[event.task_id] = PendingTask(
            task_id=event.task_id,
            transition=event.transition,
            tokens=taken,
            attempt=event.attempt,
            executor=event.executor,
            data=event.data,
            since=event.time,
            spec=event.spec,
            into=event.into,
        )
        self._record(
            event, "started", event.transition, tuple(taken), (), {"task": event.task_id, "attempt": event.attempt}
        )

    def _apply_task_done(self, event: TransitionFired, entry: HistoryEntry | None) -> None:
        """A remote action's result produced the outputs; its tokens were consumed when it started."""
        assert event.task_id is not None
        task = self.pending.pop(event.task_id, None)
        if task is not None:
            if task.timer is not None:
                task.timer.cancel()
            self._resolve_incidents_of(task)  # (a dead-lettered task that ran again from the queue)
        ct = self.cw.transitions.get(event.transition)
        tokens = event.produced
        if tokens and not tokens[0].history:
            entry = _replayed_entry(event, ct, tokens)
            tokens = self._with_history(tokens, event.consumed, entry, task)
        produced = _by_place(tokens)
        self.marking = self._move([], produced)
        from_places = ct.input_places if ct is not None else ()
        self._record(event, "fired", event.transition, from_places, tuple(produced), {"task": event.task_id})

    def _restore(self, task_id: str) -> PendingTask | None:
        """A remote action ended without producing: its tokens go back where they were."""
        task = self.pending.pop(task_id, None)
        if task is None:
            return None
        if task.timer is not None:
            task.timer.cancel()
        self._resolve_incidents_of(task)
        self.marking = self._move([], task.tokens)
        return task

    def _resolve_incidents_of(self, task: PendingTask) -> None:
        """The open incidents of ``task`` (its dead letter's) are settled: it was handed out again, or it ended."""
        if not self.incidents:  # (nearly always: a task's end is on the hot path)
            return
        ids = task.token_ids()

        def its(incident: Incident) -> bool:
            return not incident.resolved and incident.transition == task.transition and incident.tokens == ids

        if any(its(i) for i in self.incidents):
            self.incidents = [i.model_copy(update={"resolved": True}) if its(i) else i for i in self.incidents]

    def _apply_failed(self, event: TransitionFailed) -> None:
        task: PendingTask | None = None
        restored = False
        if event.task_id is not None and event.task_id in self.pending:
            task = self.pending[event.task_id]
            if event.consumed and not event.produced:  # it ended: its tokens go back where they were
                self._restore(event.task_id)
                restored = True
            elif event.consumed:  # it ended: its tokens go to the error place
                self.pending.pop(event.task_id)
                if task.timer is not None:
                    task.timer.cancel()
                self._resolve_incidents_of(task)
            elif event.incident is not None:  # dead-lettered: it stays in flight until someone retries it
                task.dead = True
        details: dict[str, Any] = {"attempt": event.attempt, "error": event.error.model_dump()}
        if event.task_id is not None:
            details["task"] = event.task_id
        if event.incident is None and not event.consumed:
            details["will_retry"] = event.will_retry
            self._record(event, "failed", event.transition, (), (), details)
            return
        to_places: tuple[str, ...] = ()
        if restored:
            assert task is not None
            to_places = tuple(task.tokens)
        elif event.consumed:
            tokens = event.produced
            if tokens and not tokens[0].history:
                ct = self.cw.transitions.get(event.transition)
                entry = HistoryEntry(
                    time=event.time,
                    kind="failed",
                    transition=event.transition,
                    from_places=ct.input_places if ct is not None else (),
                    to_places=tuple(dict.fromkeys(t.place or "" for t in tokens)),
                    actor=event.actor,
                    details={"error": event.error.model_dump()},
                )
                tokens = self._with_history(tokens, event.consumed, entry, task)
            moved = _by_place(tokens)
            self.marking = self._move(event.consumed, moved)
            to_places = tuple(moved)
        if event.incident is None:  # routed to an error place the workflow goes on from: handled, no incident
            self._record(event, "failed", event.transition, (), to_places, details)
            return
        self.incidents.append(
            Incident(
                id=event.incident,
                transition=event.transition,
                tokens=event.tokens,
                error=event.error,
                attempts=event.attempt,
                time=event.time,
                error_place=to_places[0] if to_places and not restored else None,
            )
        )
        details["incident"] = event.incident
        self._record(event, "failed", event.transition, (), to_places, details)

    def _with_history(
        self, tokens: list[Token], consumed_ids: list[str], entry: HistoryEntry, task: PendingTask | None = None
    ) -> list[Token]:
        """Produced tokens with the history firing gave them: the first consumed token's history plus ``entry``."""
        base = History()
        if consumed_ids:
            wanted = consumed_ids[0]
            waiting = [t for ts in task.tokens.values() for t in ts] if task is not None else []
            for tok in (*self.marking.tokens(), *waiting):
                if tok.id == wanted:
                    base = tok.history
                    break
        # (make_token adopts the dict: a copy of the token's fields with the history replaced, ~5x cheaper than
        # model_copy, which also copies the fields set and runs copy.copy.)
        return [make_token({**t.__dict__, "history": base.append(entry)}) for t in tokens]

    def _move(self, consumed_ids: list[str], produced: Mapping[str, tuple[Token, ...]]) -> Marking[Token]:
        ids = set(consumed_ids)
        places: dict[str, tuple[Token, ...]] = {}
        for place, toks in self.marking.items():
            kept = tuple(t for t in toks if t.id not in ids)
            if kept:
                places[place] = kept
        for place, toks in produced.items():
            places[place] = places.get(place, ()) + toks
        return Marking(places)

    def _record(
        self,
        event: Event,
        kind: str,
        transition: str | None,
        from_places: tuple[str, ...],
        to_places: tuple[str, ...],
        details: dict[str, Any] | None = None,
    ) -> None:
        self.history = self.history.append(
            build(
                HistoryEntry,
                time=event.time,
                kind=kind,
                transition=transition,
                from_places=from_places,
                to_places=to_places,
                actor=event.actor,
                details=details or {},
            )
        )

    # -- views ---------------------------------------------------------------------------------------------
    def all_final(self) -> bool:
        finals = self.cw.final_places
        return not self.pending and all(place in finals for place in self.marking)

    def enabled_manual(self) -> list[str]:
        """Manual transitions with enough unreserved tokens (their validations are checked when fired); none while
        the instance is paused or ended, since fire() refuses them then."""
        if self.status is not InstanceStatus.RUNNING and self.status is not InstanceStatus.WAITING:
            return []
        out: list[str] = []
        by_place = self.cw.manual_by_place
        reserved = self.reserved
        for place in self.marking:
            for ct in by_place.get(place, ()):
                # A marked place always holds a token, so a one-arc transition needs no further check.
                enabled = (ct.single_input and not reserved) or is_enabled(ct.net, self.marking, reserved)
                if enabled and ct.name not in out:
                    out.append(ct.name)
        return out

    def tasks_running(self) -> bool:
        """Whether a remote task is in flight and not parked in the dead-letter queue."""
        return any(not p.dead for p in self.pending.values())

    def update_settled(self) -> None:
        # Not while a scheduler pass is pending (it may still move the instance on), nor while a remote task runs
        # (unless the instance ended: its tasks' results no longer count).
        if (
            self.status in SETTLED
            and not self.inflight
            and not self.advancing
            and not (self.pending and self.status not in TERMINAL and self.tasks_running())
            and not (self.seq <= self.awaiting_seq and self.status not in TERMINAL)
        ):
            self.settled.set()
        else:
            self.settled.clear()

    def snapshot(self) -> Instance:
        assert self.created_at is not None and self.updated_at is not None
        return build(
            Instance,
            id=self.id,
            workflow=self.cw.name,
            status=self.status,
            tokens=[t for ts in self.marking._places.values() for t in ts],
            version=self.seq,
            created_at=self.created_at,
            updated_at=self.updated_at,
            incidents=list(self.incidents),
            history=self.history,
            enabled_manual=self.enabled_manual(),
            tasks=[t.view() for t in self.pending.values()],
        )


def _replayed_entry(event: TransitionFired, ct: CompiledTransition | None, tokens: list[Token]) -> HistoryEntry:
    """The history entry a firing gave the tokens it produced, rebuilt for an event read back from JSON."""
    return HistoryEntry(
        time=event.time,
        kind="fired",
        transition=event.transition,
        from_places=ct.input_places if ct is not None else (),
        to_places=ct.output_places if ct is not None else tuple(dict.fromkeys(t.place or "" for t in tokens)),
        actor=event.actor,
    )


def _by_place(tokens: list[Token]) -> dict[str, tuple[Token, ...]]:
    grouped: dict[str, tuple[Token, ...]] = {}
    for tok in tokens:
        grouped[tok.place or ""] = grouped.get(tok.place or "", ()) + (tok,)
    return grouped
