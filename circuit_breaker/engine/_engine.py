"""The engine: starts instances, fires enabled automatic transitions, runs actions, records events.

Concurrency model: everything runs on one event loop. Per instance, firings are decided by a scheduler pass
(``_advance``); a transition with an action reserves its input tokens and runs the action in its own task, so
parallel branches run in parallel while no token can be consumed twice. A firing is committed as one event
(consume and produce together), appended to the store with the instance's expected sequence number.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar, cast

from pydantic import BaseModel

from .._construct import build
from ..dsl import CompiledTransition, CompiledWorkflow, Workflow
from ..dsl._data import ensure_json_object
from ..dsl._firing import (
    action_failure,
    fired_entry,
    input_token,
    merge_result,
    post_check,
    pre_check,
    produce,
    run_action,
    to_error_place,
)
from ..dsl._remote import RemoteAction, remote_action
from ..dsl._workflow import _NAME as _PLAIN_NAME
from ..dsl._workflow import check_name
from ..errors import (
    ActionError,
    ActionTimeoutError,
    CircuitBreakerError,
    ConcurrencyError,
    DuplicateNameError,
    EngineClosedError,
    InstanceExistsError,
    InstanceStateError,
    StoreError,
    TaskStateError,
    TokenDataError,
    TransitionNotEnabledError,
    TransitionRejectedError,
    UnknownInstanceError,
    UnknownTransitionError,
    UnknownWorkflowError,
    WaitTimeoutError,
)
from ..events import (
    ErrorInfo,
    Event,
    EventType,
    InstanceCompleted,
    InstanceStatusChanged,
    TokenInjected,
    TransitionFailed,
    TransitionFired,
    TransitionRejected,
    type_of,
)
from ..net import is_enabled, missing_tokens, select
from ..retry import NO_RETRY
from ..secrets import default_masker
from ..store import MarkingStore, MemoryStore, SharedStore, Store
from ..token import History, HistoryEntry, Token, new_id, utcnow
from ._context import Firing
from ._context import _current as _current_firing
from ._finished import FinishedIndex
from ._instance import Instance
from ._lifecycle import TERMINAL, InstanceStatus, next_status
from ._run import NO_LOCK, Run
from ._tasks import TaskQueue

if TYPE_CHECKING:
    from ._remote import RemoteActions

log = logging.getLogger("circuit_breaker.engine")

RUNNING = InstanceStatus.RUNNING
WAITING = InstanceStatus.WAITING
FAILED = InstanceStatus.FAILED
YIELD_EVERY = 64  # automatic firings in a row before the scheduler lets the event loop run others
# Heartbeats (5 min by default) after which an instance left to another engine, which could go on and has not
# moved, is driven here again: a safety net that costs a second run of an action that takes longer than that.
STEP_ASIDE_CHECKS = 60
READ_BACK_ONE_BY_ONE = 50  # more finished instances than this are read back in one pass over the stored events
MARK_EVERY = 30.0  # seconds between two marks of a driving engine (see Engine.mark_every)
KEEP_FINISHED = 10_000  # finished instances an engine keeps in memory by default (the rest are read back when asked)
REMEMBER_FINISHED = 100_000  # finished instances out of memory whose workflow and status an engine remembers
CONFLICT_ATTEMPTS = 5  # a manual operation that keeps losing to other engines gives up after this many tries
LEAVE_WAIT = 2.0  # seconds an observer that closes gives the hand-over of the instances it still drives
FOLLOW_UP_WAIT = 2.0  # seconds an observer's fire() waits to read what the driver made of the firing


class _ManualStage:
    """How far a manual firing's action task got: whether it began storing the firing (its commit)."""

    __slots__ = ("storing",)

    def __init__(self) -> None:
        self.storing = False


class Engine:
    """Runs workflows. ``Engine()`` keeps everything in memory; pass a store for durability.

    Use ``async with Engine() as engine:`` so that running actions are cancelled and subscriptions end
    cleanly on exit.
    """

    def __init__(
        self,
        store: Store | None = None,
        *,
        workflows: Iterable[Workflow] = (),
        drive: bool = True,
        follow: bool = True,
        tasks: TaskQueue | None = None,
        remote_executors: Iterable[str] = (),
        keep_finished: int = KEEP_FINISHED,
        remember_finished: int = REMEMBER_FINISHED,
        mark_every: float = MARK_EVERY,
    ) -> None:
        self.store: Store = store if store is not None else MemoryStore()
        # What the store can do, looked up once (a Protocol isinstance or getattr per event would cost).
        self._atomic = getattr(self.store, "appends_atomically", False)
        self._store_forget: Callable[[str], None] | None = getattr(self.store, "forget", None)
        # Memory stays bounded however long the engine runs: past the ``keep_finished`` most recently finished
        # instances (completed, cancelled, rolled back), an instance leaves memory, and only its workflow and
        # status stay, for the ``remember_finished`` most recent of those; get(), wait() and instances() read
        # it back from the store.
        if keep_finished < 0:
            raise ValueError(f"keep_finished must be 0 or more, not {keep_finished}")
        self.keep_finished = keep_finished
        self._finished: OrderedDict[str, None] = OrderedDict()  # finished instances in memory, oldest first
        self._archived = FinishedIndex(remember_finished)  # left memory: id -> (workflow, status)
        # Marks (a store that keeps them, e.g. JetStream): where each workflow's unfinished instances began, so
        # that an engine opens by replaying only from the lowest of them. Every ``mark_every`` seconds a driving
        # engine that follows the others learns of the instances begun since (also those begun by writers it does
        # not follow) and stores the new mark.
        self.mark_every = mark_every
        self._marking = isinstance(self.store, MarkingStore)
        self._begun: dict[str, dict[str, int]] = {}  # workflow -> unfinished instance -> where it began
        self._known_to: dict[str, int] = {}  # workflow -> position up to which every instance begun is known
        self._marks: dict[str, int] = {}  # workflow -> the mark this engine stored last
        self._marker: asyncio.Task[None] | None = None
        # drive=False: an observer (a CLI query, a dashboard) that folds stored instances but never resumes
        # them; its own calls (start, fire) still run as usual.
        self.drive = drive
        # follow=False: on a shared store, never follow other engines' events live (by default an engine
        # follows them once another engine announces itself). Correctness does not depend on it (a conflict
        # re-reads the instance), but live events and wait() for instances other engines drive do.
        self.follow = follow
        # Checked once: isinstance against a runtime-checkable Protocol costs tens of microseconds.
        self._shared = isinstance(self.store, SharedStore)
        self.conflicts = 0  # appends refused because another engine wrote the instance first
        self._workflows: dict[str, CompiledWorkflow] = {}
        self._runs: dict[str, Run] = {}
        # (filter, sink): live events go to followers' queues and to listeners (metrics); None means "closed".
        self._subscribers: list[tuple[Callable[[Event], bool], Callable[[Event | None], None]]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._starts: dict[tuple[str, str], deque[float]] = {}  # recent action starts, for rate limits
        self._closed = False
        self._draining = False  # closing with a grace period: running actions finish, nothing new starts
        self._closing: asyncio.Future[None] | None = None  # set once close() began
        self._asking: set[asyncio.Future[None]] = set()  # an observer's hand-overs under way (close lets them end)
        self._actions: set[asyncio.Task[Any]] = set()  # local actions running (a subset of _tasks)
        self._opened = False
        self._loaded: set[str] = set()  # workflows whose stored instances are loaded
        self._starting: set[str] = set()  # instance ids whose first event is being stored
        self._loading: list[asyncio.Task[None]] = []
        self._watcher: asyncio.Task[None] | None = None
        self._open_start = 0
        # Remote actions: ``tasks`` carries them to workers (default: the store's task queue on JetStream, else
        # in-process). ``remote_executors`` makes every action of those executor kinds remote.
        self._remote_kinds = frozenset(remote_executors)
        self._by_kind: dict[tuple[str, str], RemoteAction] = {}
        self._tasks_queue = tasks
        self._remote_actions: RemoteActions | None = None  # made on first use (most engines never need it)
        for wf in workflows:
            self.register(wf)

    # -- lifecycle of the engine -----------------------------------------------------------------------
    async def __aenter__(self) -> Engine:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Open the store and load the instances it holds for the registered workflows; those still running
        go on from where they stopped (after a crash, an action in flight runs again: at-least-once).

        On a store several engines share, the engine then follows the other engines' events live.
        """
        await self.store.open()
        if self._opened:
            return
        self._opened = True
        start = await self.store.last_sequence() + 1 if isinstance(self.store, SharedStore) else 0  # before loading
        self._open_start = start
        if isinstance(self.store, SharedStore):
            # Before loading: the engines already running introduce themselves, so the load leaves the instances
            # they drive to them. Follow only once another engine shows up (a lone engine need not read back what
            # it writes); the newcomer says from where (its position before it wrote anything): nothing is missed.
            await self.store.announce(
                start - 1,
                self._peer if self.follow else _ignore,
                writer=self.drive,
                on_gone=self._orphaned if self.drive and self.follow else None,
                workflows=lambda: [] if self._draining else list(self._workflows),  # (stopping: choose another)
                on_poke=self._poked if self.drive else None,
            )
        for cw in list(self._workflows.values()):
            self._schedule_load(cw)
        await self._ready()
        if self._marking and self.drive and self.follow and self.mark_every > 0:
            self._marker = asyncio.get_running_loop().create_task(self._mark_forever())

    def _peer(self, since: int) -> None:
        """Another engine writes to the shared store: follow its events from stream position ``since + 1``."""
        if self._watcher is None and not self._closed:
            start = max(self._open_start, since + 1)
            self._watcher = asyncio.get_running_loop().create_task(self._watch(start))

    def _poked(self, instance_id: str, workflow: str, unowned: bool = False) -> bool:
        """An engine that does not drive (an observer's manual firing) changed ``instance_id``: if this engine
        drives it, read what was written and go on with it (a lone engine does not follow the stream). An
        instance of its workflows that no engine drives (one the observer started) is taken up by one driving
        engine: a lone one, or, once the observer found no driver (``unowned``), the one of several that the store
        chooses for it. Says whether it takes the instance over."""
        if self._closed or self._draining:
            return False
        run = self._runs.get(instance_id)
        if run is not None and run.status in TERMINAL:
            return False
        if run is None or not run.local:
            cw = self._workflows.get(workflow)
            if cw is None or workflow not in self._loaded or instance_id in self._archived:
                return False
            if not cast(SharedStore, self.store).takes_up(instance_id, workflow, unowned):
                return False
            if run is None:
                task = asyncio.get_running_loop().create_task(self._take_up(instance_id, cw))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                return True
            run.local = True
        self._spawn(run, self._read_poked(run))
        return True

    async def _take_up(self, instance_id: str, cw: CompiledWorkflow) -> None:
        """Drive an instance this engine did not know (an observer started it), from what the store holds."""
        run = await self._adopt(instance_id, cw)
        if run is not None and run.status not in TERMINAL and not self._closed:
            run.local = True
            self._kick(run)

    async def _read_poked(self, run: Run) -> None:
        async with run.lock:
            await self._catch_up(run)  # (the change may have come in already, when this engine follows the stream)
        self._after_foreign(run)  # (cancelled by the observer: as for any other engine's final event)
        if run.status not in TERMINAL and run.local and not self._closed:
            self._kick(run)  # go on with it: resume a waiting instance whose automatic transitions are enabled now

    async def _handed_over(self, run: Run) -> bool:
        """After this observer's own change to ``run`` (a manual firing, a status change): the engine driving the
        instance goes on with it, and this one stops driving it; False when none took it (this one goes on)."""
        if self.drive or not self._shared or not run.local:
            return False
        assert isinstance(self.store, SharedStore)
        run.local = False  # (while it asks, this engine's scheduler leaves the instance alone)
        taken = False
        asking = asyncio.get_running_loop().create_future()
        self._asking.add(asking)
        try:
            taken = await self.store.hand_over(run.cw.name, run.id, run.seq)
        finally:
            run.local = not taken  # (also when the caller gives up meanwhile: its follow-up then asks again)
            self._asking.discard(asking)
            asking.set_result(None)
        if taken and self.follow:
            self._peer(0)  # read what the driver does with it from now (else only once a heartbeat is heard)
            if self._could_go_on(run) or (run.status is WAITING and run.all_final()):
                run.awaiting_seq = run.seq  # the driver goes on with it (or completes it): wait() waits for that
                run.update_settled()
        return taken

    async def _driver_went_on(self, run: Run) -> None:
        """Until the driver's first event after an observer handed ``run`` over (at most FOLLOW_UP_WAIT), so that the
        observer's ``fire()`` returns what the driver made of the firing (running on, completed) as a driving
        engine's does, not the state it handed over (waiting, and so seemingly stalled)."""
        seq = run.seq
        moved = asyncio.get_running_loop().create_future()

        def seen(event: Event | None) -> None:
            if (event is None or (event.instance_id == run.id and event.seq > seq)) and not moved.done():
                moved.set_result(None)

        remove = self.add_listener(seen)
        try:
            with contextlib.suppress(TimeoutError):  # (the driver is slow: wait() and get() show it later)
                async with asyncio.timeout(FOLLOW_UP_WAIT):
                    await moved
        finally:
            remove()

    def _orphaned(self, origin: str) -> None:
        """Another engine left or stopped answering: drive the unfinished instances it was driving (those whose
        latest event it wrote, or that an observer left to it). Several engines may take the same one over; the
        store's check lets one fire."""
        if self._closed:
            return
        taken = 0
        for run in list(self._runs.values()):
            if self._take_over(run):
                taken += 1
            elif run.local and run.pending and run.status not in TERMINAL and self._remote().unclocked(run):
                # Driven here, but its remote tasks were dispatched there: their deadlines were on its clock.
                self._spawn(run, self._remote().recover(run))
        if taken:
            log.warning("took over %d instance(s) from engine %s", taken, origin)

    def _step_aside(self, run: Run) -> None:
        """Leave ``run`` to the engine that wrote it last; drive it again should it not move on for a while (a
        safety net: stepping aside must never leave an instance that can go on with nobody driving it)."""
        run.local = False
        self._check_moving(run, run.seq)

    def _check_moving(self, run: Run, seq: int, unowned: bool = False) -> None:
        delay = STEP_ASIDE_CHECKS * getattr(self.store, "heartbeat", 5.0)
        asyncio.get_running_loop().call_later(delay, self._unless_moved, run, seq, unowned)

    def _unless_moved(self, run: Run, seq: int, unowned: bool = False) -> None:
        """Some time after this engine left ``run`` to another (or, ``unowned``, found it begun by an engine that
        does not drive): drive it if it could go on and has not; an unowned one only on the engine chosen for it,
        so that of several engines one does."""
        if self._closed or run.local:
            return
        if not self._could_go_on(run):
            return  # ended, or waits for a manual firing (whoever fires it drives it)
        if (
            run.seq != seq
            or (run.pending and run.tasks_running())
            or (unowned and not cast(SharedStore, self.store).takes_up(run.id, run.cw.name, True))
        ):
            # It moves, a remote task is out (its result or its deadline moves it on), or another engine is the one
            # for it: look again later.
            self._check_moving(run, run.seq, unowned)
            return
        log.warning(
            "instance %s of workflow %s did not move on for a while with another engine (or none) driving it; "
            "driving it here",
            run.id,
            run.cw.name,
        )
        run.local = True
        self._kick(run)

    def _drives_elsewhere(self, instance_id: str) -> bool:
        # (cast, not isinstance: a runtime-checkable Protocol check costs tens of microseconds per event)
        return self._shared and cast(SharedStore, self.store).drives_elsewhere(instance_id)

    def _take_over(self, run: Run) -> bool:
        """Drive ``run`` if its last writer is gone and this engine is the one chosen for it."""
        assert isinstance(self.store, SharedStore)
        if run.local or run.status not in (RUNNING, WAITING) or not self.store.takes_over(run.id, run.cw.name):
            return False
        run.local = True
        if run.pending:
            self._spawn(run, self._remote().recover(run))  # its deadlines were the other engine's timers
        self._kick(run)
        return True

    async def close(self, grace: float = 0.0) -> None:
        """Cancel running actions (their tokens stay where they were), end subscriptions, close the store.

        With ``grace`` seconds, nothing new starts, and the local actions running now get that long to finish
        first; what they finish is stored as usual. The rest are cancelled: they run again when an engine loads
        their instances (at least once)."""
        if self._closing is not None:  # closing already (a second caller waits for the first)
            await asyncio.shield(self._closing)
            return
        self._closing = asyncio.get_running_loop().create_future()
        try:
            if grace > 0 or self._draining:
                try:
                    await self._drain(grace)
                except asyncio.CancelledError:
                    await self._close()  # (asked to hurry: stop now rather than leave an engine that starts nothing)
                    raise
            if not self.drive and self._shared:
                await self._leave_to_drivers()
            await self._close()
        finally:
            self._closing.set_result(None)

    async def _leave_to_drivers(self) -> None:
        """An observer closing: the instances it still drives itself (nobody took them when it asked, or it
        started them) go to a driving engine instead of waiting for one's safety net. Asks under way end first."""
        if self._asking:
            await asyncio.wait(set(self._asking), timeout=LEAVE_WAIT)
        store = cast(SharedStore, self.store)
        left = [run for run in self._runs.values() if run.local and self._could_go_on(run)]
        if left:
            self._begin_draining()  # (nothing new starts here; what runs for them stops before a driver takes over)
            await _cancel([task for run in left for task in run.tasks])
            with contextlib.suppress(Exception):  # (NATS gone: the drivers' safety net still finds them)
                await asyncio.wait_for(
                    asyncio.gather(*(store.hand_over(run.cw.name, run.id, run.seq) for run in left)), LEAVE_WAIT
                )

    async def _close(self) -> None:
        self._closed = True
        await _cancel([t for t in (self._watcher, self._marker, *self._loading) if t is not None])
        await _cancel(list(self._tasks))
        if self._remote_actions is not None:
            await self._remote_actions.close()
        for _, sink in self._subscribers:
            sink(None)
        self._subscribers.clear()
        await self.store.close()

    def _refuse_when_closed(self, operation: str, instance_id: str | None = None, *, starts: bool = True) -> None:
        """A change asked of a closed engine, or one that would start something of an engine that is stopping
        (``starts``), is refused, saying so: a caller then asks again elsewhere, or later."""
        if self._closed or (starts and self._draining):
            raise EngineClosedError(operation, instance_id, stopping=not self._closed)

    def stop_starting(self) -> None:
        """Start nothing new from now on (no firing, no action, no scheduler pass); what runs goes on. The first
        step of a graceful stop: ``close(grace=...)`` then gives the running actions their time."""
        self._begin_draining()

    def _begin_draining(self) -> None:
        if not self._draining:
            self._draining = True
            self._advertise()  # (the peers stop choosing this engine for instances to take up now)

    def _advertise(self) -> None:
        advertise = getattr(self.store, "advertise", None)
        if advertise is not None and self._opened and not self._closed:
            advertise()

    async def _drain(self, grace: float) -> None:
        self._begin_draining()  # scheduler passes end at once from now: no firing, no action starts
        running = {t for t in self._actions if not t.done()}
        if not running:
            return
        log.info("waiting up to %.1fs for %d running action(s) to finish", grace, len(running))
        _, left = await asyncio.wait(running, timeout=grace)
        if left:
            log.warning(
                "%d action(s) still running after %.1fs are cancelled; they run again on load", len(left), grace
            )
        # What finished was stored; let the passes those commits kicked off see the flag and end.
        await asyncio.sleep(0)

    # -- workflows -------------------------------------------------------------------------------------
    def register(self, workflow: Workflow) -> CompiledWorkflow:
        """Check and add a workflow; raises DefinitionError naming every problem."""
        cw = self._remote_by_kind(workflow.compile())
        known = self._workflows.get(workflow.name)
        if known is not None and known.source is not workflow:
            raise DuplicateNameError(
                f"another workflow named {workflow.name!r} is already registered",
                workflow=workflow.name,
                name=workflow.name,
            )
        self._workflows[workflow.name] = cw
        if self._opened and workflow.name not in self._loaded:
            self._schedule_load(cw)
            self._advertise()  # (the peers learn at once that this engine runs it)
        return cw

    def _remote_by_kind(self, cw: CompiledWorkflow) -> CompiledWorkflow:
        """Note the executor actions of the kinds this engine runs remotely (``remote_executors``). The compiled
        workflow is shared (a workflow caches it), so the choice is kept here, not written into it."""
        if self._remote_kinds:
            for ct in cw.transitions.values():
                executor = getattr(ct.handler, "executor", None)
                if ct.remote is None and getattr(executor, "name", None) in self._remote_kinds:
                    spec = remote_action(ct.handler, deadline=None, transition=ct.name, workflow=cw.name)
                    self._by_kind[(cw.name, ct.name)] = spec
        return cw

    def _remote(self) -> RemoteActions:
        """The engine's half of remote actions, made when first needed."""
        if self._remote_actions is None:
            from ._remote import RemoteActions

            self._remote_actions = RemoteActions(self, self._tasks_queue)
        return self._remote_actions

    def remote_of(self, workflow: str, ct: CompiledTransition) -> RemoteAction | None:
        """How ``ct`` runs remotely, or None when its action runs in this process."""
        if ct.remote is not None or not self._by_kind:
            return ct.remote
        return self._by_kind.get((workflow, ct.name))

    @property
    def workflows(self) -> list[str]:
        return list(self._workflows)

    def _workflow(self, workflow: str | Workflow) -> CompiledWorkflow:
        if isinstance(workflow, Workflow):
            known = self._workflows.get(workflow.name)
            if known is not None and known.source is workflow:
                # Re-compile in case the definition changed since registration.
                compiled = self._remote_by_kind(workflow.compile())
                self._workflows[workflow.name] = compiled
                return compiled
            return self.register(workflow)
        cw = self._workflows.get(workflow)
        if cw is None:
            raise UnknownWorkflowError(str(workflow), list(self._workflows))
        return cw

    def _run(self, instance_id: str) -> Run:
        run = self._runs.get(instance_id)
        if run is None:
            raise UnknownInstanceError(instance_id)
        return run

    async def _find(self, instance_id: str) -> Run:
        """The run of ``instance_id``; on a shared store, one another engine started is read in first."""
        if self._loading:
            await self._ready()
        run = self._runs.get(instance_id)
        archived = self._archived.workflow_of(instance_id) if run is None else None
        if archived is not None:
            cw = self._workflows.get(archived)
            if cw is not None:
                run = await self._adopt(instance_id, cw)  # finished a while ago: read back from the store
        elif (
            run is None
            and (self._shared or self._archived.dropped)  # (another engine's, or one this engine forgot)
            and isinstance(instance_id, str)
            and _PLAIN_NAME.fullmatch(instance_id)
        ):
            stored = await self.store.read(instance_id)
            cw = self._workflows.get(stored[0].workflow) if stored else None
            if cw is not None:
                run = await self._adopt(instance_id, cw)
        if run is None:
            raise UnknownInstanceError(instance_id)
        return run

    def _ended(self, run: Run) -> None:
        """``run`` finished: it stays in memory among the ``keep_finished`` most recently finished instances."""
        begun = self._begun.get(run.cw.name)
        if begun is not None:
            begun.pop(run.id, None)
        finished = self._finished
        finished[run.id] = None
        finished.move_to_end(run.id)
        if len(finished) > self.keep_finished:
            self._evict()

    def _evict(self) -> None:
        """Let the oldest finished instances beyond ``keep_finished`` leave memory (their events stay stored)."""
        finished = self._finished
        for _ in range(len(finished) - self.keep_finished):
            iid, _ = finished.popitem(last=False)
            run = self._runs.get(iid)
            if run is None or run.status not in TERMINAL:
                continue
            if run.tasks or run.inflight:
                finished[iid] = None  # still winding down (its actions being cancelled): later
                continue
            del self._runs[iid]
            self._archived.add(iid, run.cw.name, run.status)
            self._forget(iid)

    def _forget(self, *instance_ids: str) -> None:
        """Let the store drop what it remembers of these instances' positions: finished, they are never appended
        to again."""
        if self._store_forget is not None:
            for iid in instance_ids:
                self._store_forget(iid)

    def _new_run(self, instance_id: str, cw: CompiledWorkflow) -> Run:
        return Run(instance_id, cw, atomic_store=self._atomic)

    async def _fold_stored(self, instance_id: str, cw: CompiledWorkflow) -> Run | None:
        """A run rebuilt from the store's events of ``instance_id`` (None when it has none)."""
        run = self._new_run(instance_id, cw)
        for event in await self.store.read(instance_id):
            if event.seq == run.seq + 1:
                run.apply(event)
        return run if run.seq else None

    # -- stored instances and other engines ------------------------------------------------------------
    def _schedule_load(self, cw: CompiledWorkflow) -> None:
        self._loaded.add(cw.name)
        self._loading.append(asyncio.get_running_loop().create_task(self._load(cw)))

    async def _ready(self) -> None:
        """Wait for workflows registered on an open engine to have their stored instances loaded."""
        while self._loading:
            task = self._loading[0]
            try:
                await asyncio.shield(task)  # a caller giving up must not cancel the load for everyone
            finally:
                if task.done() and self._loading and self._loading[0] is task:
                    self._loading.pop(0)

    async def _load(self, cw: CompiledWorkflow) -> None:
        """Fold the stored events of ``cw``'s instances; instances still running go on, and their remote tasks
        in flight are checked (queued, or their result applied)."""
        if self.drive and any(self.remote_of(cw.name, ct) is not None for ct in cw.ordered):
            await self._remote().listen(cw.name)  # an observer (drive=False) never takes results off the queue
        runs, ended = await self._replay(cw)
        for iid, run in runs.items():
            known = self._runs.get(iid)
            if known is not None and known.seq >= run.seq:
                continue  # followed live meanwhile
            self._runs[iid] = run
            run.update_settled()
            if self.drive and self.follow and self._drives_elsewhere(iid):
                # A live engine drives this one already (it wrote it last): its action in flight must not run here
                # too. (An engine that does not follow the others would never see it move on: it drives all.)
                self._step_aside(run)
                continue
            run.local = self.drive
            if run.pending and self.drive and run.status not in TERMINAL:
                self._spawn(run, self._remote().recover(run))
            if self.drive and (
                run.status is RUNNING or (run.status is WAITING and (run.all_final() or self._auto_possible(run)))
            ):
                self._kick(run)  # go on where it stopped (a waiting one whose follow-up was never stored too)
        for iid in ended:
            finished = self._runs.get(iid)
            if finished is not None and finished.status in TERMINAL:
                self._ended(finished)

    async def _replay(self, cw: CompiledWorkflow) -> tuple[dict[str, Run], OrderedDict[str, None]]:
        """Fold every stored instance of ``cw``: the runs, and which of them finished (oldest first). Finished
        instances beyond ``keep_finished`` leave memory as soon as the replay finishes them, so a long history
        never has to fit in memory at once."""
        runs: dict[str, Run] = {}
        ended: OrderedDict[str, None] = OrderedDict()
        archived = FinishedIndex(self._archived.limit)
        reread: set[str] = set()
        begun = self._begun.setdefault(cw.name, {})
        async for event, position in self._stored(cw.name):
            iid = event.instance_id
            run = runs.get(iid)
            if run is None:
                if iid in archived:
                    reread.add(iid)  # an event after its end (unusual): read it back whole below
                elif event.seq != 1:
                    continue  # it began before the mark (it has finished), or the log was trimmed
                else:
                    run = runs[iid] = self._new_run(iid, cw)
                    if self._marking:
                        begun[iid] = position
            if run is not None and event.seq == run.seq + 1:
                run.apply(event)
                if run.status in TERMINAL:
                    begun.pop(iid, None)
                    ended[iid] = None
                    if len(ended) > self.keep_finished:
                        oldest, _ = ended.popitem(last=False)
                        archived.add(oldest, cw.name, runs.pop(oldest).status)
                        self._forget(oldest)  # (also when the index forgets it: the store must not remember it)
        for iid, name, status in archived.items():
            if iid not in self._runs:  # (unless followed live meanwhile)
                self._archived.add(iid, name, status)
        self._archived.dropped |= archived.dropped
        for iid in reread:
            self._archived.pop(iid)
            await self._adopt(iid, cw)
        return runs, ended

    async def _stored(self, workflow: str) -> AsyncIterator[tuple[Event, int]]:
        """The stored events of ``workflow`` to load, with their positions: on a store that keeps marks, from a
        driving engine's mark on (every instance begun below it has finished), else all of them."""
        if not self._marking:
            async for event in self.store.replay(workflow=workflow):
                yield event, 0
            return
        store = cast(MarkingStore, self.store)
        after = await store.read_mark(workflow) if self.drive else 0  # an observer lists the whole history
        async for event, position in store.replay_after(workflow, after):
            yield event, position
        # Every instance begun up to here has been read; only now may the marker work on this workflow (a load
        # still going, or one that failed, would let it mark above instances it has not seen).
        self._known_to[workflow] = max(self._open_start - 1, after)

    async def _mark_forever(self) -> None:
        """Every ``mark_every`` seconds: store each loaded workflow's new mark (never stopping for one failure)."""
        while not self._closed:
            await asyncio.sleep(self.mark_every)
            for name in list(self._known_to):
                try:
                    await self._mark(name)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("could not store the mark of workflow %s", name)

    async def _mark(self, workflow: str) -> None:
        """Learn of the instances of ``workflow`` begun since the last mark (one begun by a writer this engine does
        not follow is read in and left to whoever drives it, with the safety net behind), then store the lowest
        position an unfinished one began at, less one (or where this engine's knowledge ends)."""
        store = cast(MarkingStore, self.store)
        cw = self._workflows[workflow]
        found, known_to = await store.starts(workflow, self._known_to[workflow])
        begun = self._begun.setdefault(workflow, {})
        for iid, position in found:
            if iid in self._starting:  # this engine's own start, its first event not acknowledged yet
                begun.setdefault(iid, position)
                continue
            run = self._runs.get(iid)
            if run is None and iid not in self._archived:
                run = await self._adopt(iid, cw)
                if run is None:
                    # Begun, yet not readable (a replica behind its leader?): not past it, this pass.
                    log.info("instance %s of workflow %s cannot be read yet; marking later", iid, workflow)
                    return
                if run.status not in TERMINAL and not run.local:
                    self._step_aside(run)
            if run is not None and run.status not in TERMINAL:
                begun.setdefault(iid, position)
        self._known_to[workflow] = known_to
        mark = min(begun.values(), default=known_to + 1) - 1
        if mark > self._marks.get(workflow, 0):
            await store.write_mark(workflow, mark)
            self._marks[workflow] = mark

    async def _adopt(self, instance_id: str, cw: CompiledWorkflow) -> Run | None:
        """Build a run for an instance another engine started, or one that left memory, from the store."""
        run = await self._fold_stored(instance_id, cw)
        if run is None:
            return None
        known = self._runs.get(instance_id)
        if known is not None:
            return known
        self._runs[instance_id] = run
        self._archived.pop(instance_id)
        run.update_settled()
        if run.status in TERMINAL:
            self._ended(run)
        return run

    async def _catch_up(self, run: Run) -> None:
        """Apply the events other engines stored after ``run``'s version (caller holds ``run.lock``)."""
        changed = False
        for event in await self.store.read(run.id, run.seq):
            if event.seq == run.seq + 1:
                run.apply(event)
                self._notify(event)
                changed = True
        run.update_settled()
        if changed and run.local and self.drive and not self._closed:
            self._kick(run)  # the new state may enable automatic transitions, or complete the instance

    async def _watch(self, start: int) -> None:
        """Follow the events other engines append to a shared store, keeping known instances current."""
        assert isinstance(self.store, SharedStore)
        delay = 0.1
        while not self._closed:
            try:
                async for event in self.store.watch(start):
                    delay = 0.1
                    try:
                        await self._apply_foreign(event)
                    except Exception:
                        log.exception("could not apply event %s of instance %s", event.seq, event.instance_id)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("following the shared store failed; retrying in %.1fs", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                start = max(start, self.store.watched_up_to + 1)  # resume after the last event delivered

    async def _apply_foreign(self, event: Event) -> None:
        if event.instance_id in self._archived:
            return  # finished and out of memory: a finished instance never changes (this is a late delivery)
        run = self._runs.get(event.instance_id)
        if run is None:
            cw = self._workflows.get(event.workflow)
            if cw is None or event.workflow not in self._loaded:
                return  # a workflow this engine does not run, or one still loading (the load will have it)
            if event.seq != 1:
                adopted = await self._adopt(event.instance_id, cw)
                if adopted is not None and self.drive and self.follow and not self._closed:
                    self._take_over(adopted)  # read after its driver left (the watcher lagged): it is an orphan
                return
            run = self._runs[event.instance_id] = self._new_run(event.instance_id, cw)
            if self.drive and self.follow and event.seq == 1 and not self._drives_elsewhere(event.instance_id):
                # Begun by an engine that does not drive (an observer): should nobody take it up, the safety net.
                self._check_moving(run, 1, unowned=True)
        async with run.lock:
            if event.seq == run.seq + 1:
                run.apply(event)
                self._notify(event)
            elif event.seq > run.seq + 1:
                await self._catch_up(run)
            elif event.seq < run.seq:
                return  # older than what this engine knows (its own newer events, or read back already)
            # (event.seq == run.seq: read back already, after a conflict; its writer still wrote the newest event)
        self._after_foreign(run)
        if run.local and event.seq == run.seq and self._drives_elsewhere(run.id):
            # The last writer drives: two engines stepping the same instance would only conflict. This one
            # drives it again when it writes to it (a manual firing, a task result) or takes it over.
            self._step_aside(run)
        if run.local and run.status is RUNNING and not self._closed:
            self._kick(run)
        elif not run.local and self.drive and self.follow and not self._closed and getattr(self.store, "gone", None):
            self._take_over(run)  # an event of an engine that is gone, read after it left (the watcher lagged)

    def _after_foreign(self, run: Run) -> None:
        """After applying what another engine (or an observer) wrote: an instance that ended there ends here."""
        if run.status in TERMINAL:
            me = asyncio.current_task()
            for task in list(run.tasks):  # cancelled or completed elsewhere: our actions are moot
                if task is not me:
                    task.cancel()
        run.update_settled()
        if run.status in TERMINAL:
            self._ended(run)

    # -- public operations -----------------------------------------------------------------------------
    async def start(
        self,
        workflow: str | Workflow,
        data: Any = None,
        *,
        instance_id: str | None = None,
        actor: str | None = None,
    ) -> Instance:
        """Start an instance with ``data`` in the initial place; returns once the instance exists."""
        self._refuse_when_closed(f"start an instance of workflow {getattr(workflow, 'name', workflow)!r}")
        cw = self._workflow(workflow)
        if self._loading:
            await self._ready()
        clean = cw.validate_data(data)
        # Values under secret-named keys (db_password, api_key...) are masked wherever else they show up.
        default_masker().add_mapping(clean)
        iid = check_name("instance", instance_id, cw.name) if instance_id is not None else new_id()
        if iid in self._runs or iid in self._starting or iid in self._archived:
            raise InstanceExistsError(iid)
        now = utcnow()
        entry = build(
            HistoryEntry,
            time=now,
            kind="created",
            transition=None,
            from_places=(),
            to_places=(cw.initial_place,),
            actor=actor,
            details={},
        )
        token = build(
            Token,
            id=new_id(),
            instance_id=iid,
            place=cw.initial_place,
            data=clean,
            created_at=now,
            updated_at=now,
            history=History().append(entry),
        )
        run = self._new_run(iid, cw)
        run.local = True
        event = build(
            TokenInjected,
            workflow=cw.name,
            instance_id=iid,
            seq=1,
            time=now,
            actor=actor,
            type=EventType.TOKEN_INJECTED,
            token=token,
            transition=None,
        )
        # Visible to get() and instances() only once stored; reserved meanwhile against a second start().
        self._starting.add(iid)
        try:
            await self._append(run, event)
        except ConcurrencyError:
            # Another engine started an instance with this id first: it exists, this one never did.
            await self._adopt(iid, cw)
            raise InstanceExistsError(iid) from None
        finally:
            self._starting.discard(iid)
        self._runs[iid] = run
        self._kick(run)
        return run.snapshot()

    async def get(self, instance_id: str) -> Instance:
        return (await self._find(instance_id)).snapshot()

    async def instances(
        self, workflow: str | None = None, status: InstanceStatus | str | None = None
    ) -> list[Instance]:
        """The instances this engine knows, optionally of one workflow and in one status; finished ones that
        left memory are read back from the store. A driving engine on a store that keeps marks knows those
        begun from its workflows' marks on (older ones all finished; get() still reads them by id); an observer
        (``drive=False``) replays the whole history, so it lists every instance. Past ``remember_finished``
        finished instances out of memory, a workflow's finished ones are listed from a replay of its events."""
        wanted = InstanceStatus(status) if status is not None else None
        if self._loading:
            await self._ready()
        found = [
            r.snapshot()
            for r in self._runs.values()
            if (workflow is None or r.cw.name == workflow) and (wanted is None or r.status is wanted)
        ]
        if wanted is not None and wanted not in TERMINAL:
            return found  # (every instance out of memory has finished)
        names = {name for name in self._workflows if workflow is None or name == workflow}
        forgotten = names & self._archived.dropped  # the store lists all of their finished instances
        archived = {  # finished long ago: read back, not kept
            iid: name
            for iid, name, ended in self._archived.items()
            if name in names and name not in forgotten and (wanted is None or ended is wanted)
        }
        rebuilt = await self._read_back(archived, forgotten, frozenset(self._runs))
        found.extend(run.snapshot() for run in rebuilt if wanted is None or run.status is wanted)
        return found

    async def _read_back(
        self, wanted: dict[str, str], every: Collection[str] = (), listed: Collection[str] = ()
    ) -> list[Run]:
        """Runs rebuilt from the store for the instance ids in ``wanted`` (id -> workflow), and for the workflows
        in ``every`` each finished instance but those ``listed`` from memory, without keeping them: one by one
        for a few, else in one pass over each workflow's events."""
        rebuilt: dict[str, Run] = {}
        if len(wanted) <= READ_BACK_ONE_BY_ONE and not every:
            for iid, name in wanted.items():
                run = await self._fold_stored(iid, self._workflows[name])
                if run is not None:
                    rebuilt[iid] = run
        else:
            passed: set[str] = set()  # read past, not rebuilt: the store must not remember them either
            for name in sorted({*wanted.values(), *every}):
                cw = self._workflows[name]
                all_out = name in every
                async for event in self.store.replay(workflow=name):
                    iid = event.instance_id
                    if iid not in wanted and (not all_out or iid in listed):
                        passed.add(iid)
                        continue
                    run = rebuilt.get(iid)
                    if run is None:
                        run = rebuilt[iid] = self._new_run(iid, cw)
                    if event.seq == run.seq + 1:
                        run.apply(event)
            self._forget(*(iid for iid in passed if iid not in self._runs))
        self._forget(*rebuilt)  # read for the caller, not kept
        return [run for run in rebuilt.values() if run.seq and (run.id in wanted or run.status in TERMINAL)]

    async def wait(self, instance_id: str, timeout: float | None = None) -> Instance:
        """Return once the instance is completed, waiting only on manual transitions, failed, paused or cancelled."""
        run = await self._find(instance_id)
        if not run.settled.is_set():
            try:
                async with asyncio.timeout(timeout):  # (wait_for would cost a task per call)
                    await run.settled.wait()
            except TimeoutError:
                raise WaitTimeoutError(instance_id, timeout or 0.0, run.status.value) from None
        return run.snapshot()

    async def fire(
        self, instance_id: str, transition: str, actor: str | None = None, *, data: dict[str, Any] | None = None
    ) -> Instance:
        """Fire a manual transition. ``data`` (a reviewer's verdict, a comment, corrected fields) is merged into
        the token data before validations run. Raises TransitionNotEnabledError (saying why),
        TransitionRejectedError (listing the failing rules) or ActionError; in each case nothing moved.

        On a shared store another engine may change the instance meanwhile: the firing is then judged again
        on the new state (its action may run again), and ConcurrencyError is raised only if that keeps happening.
        A closed engine raises EngineClosedError, also when it closes while the firing's action runs.

        On an engine that does not drive (``drive=False``) the engine driving the instance goes on after the
        firing; the result is the state once this one read the driver's first step (running on, completed), or,
        should that take more than FOLLOW_UP_WAIT seconds, the state it stored.
        """
        self._refuse_when_closed(f"fire {transition!r} on", instance_id)
        run = self._runs.get(instance_id)
        if run is None or self._loading:
            run = await self._find(instance_id)
        if not self._shared:  # nobody else writes: judged once, on what this engine knows
            return await self._fire_once(run, transition, actor, data)
        synced = False
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            try:
                return await self._fire_once(run, transition, actor, data)
            except ConcurrencyError:
                if attempt == CONFLICT_ATTEMPTS:
                    raise
            except (TransitionNotEnabledError, InstanceStateError):
                if synced:
                    raise
                # Judged on what this engine knew; another engine may have moved the instance since.
                synced = True
                async with run.lock:
                    await self._catch_up(run)
        raise AssertionError("unreachable")

    async def _fire_once(self, run: Run, transition: str, actor: str | None, data: dict[str, Any] | None) -> Instance:
        instance_id = run.id
        if not self.drive:
            run.local = True  # an observer's own firing goes on as usual (a driving engine drives once it writes)
        ct = run.cw.transitions.get(transition)
        if ct is None:
            raise UnknownTransitionError(run.cw.name, transition, list(run.cw.transitions))
        if run.status is not RUNNING and run.status is not WAITING:
            raise InstanceStateError(instance_id, run.status.value, f"fire {transition!r} on")
        if not ct.is_manual:
            raise TransitionNotEnabledError(
                run.cw.name, transition, instance_id, ["it is automatic: the engine fires it when it is enabled"]
            )
        if not is_enabled(ct.net, run.marking, run.reserved):
            missing = missing_tokens(ct.net, run.marking, run.reserved)
            raise TransitionNotEnabledError(run.cw.name, transition, instance_id, missing)
        consumed = select(ct.net, run.marking, run.reserved)
        view = input_token(ct, consumed)
        if data is not None:
            extra = ensure_json_object(data, workflow=run.cw.name, what=f"data for transition {transition!r}")
            default_masker().add_mapping(extra)
            merged = {**view.data, **extra}
            if run.cw.token_model is not None:
                merged = run.cw.validate_data(merged)
            view = view.with_data(merged)
        pre = pre_check(ct, view)
        if not pre.valid:
            raise TransitionNotEnabledError(run.cw.name, transition, instance_id, list(pre.errors))
        if ct.handler is None:
            post = post_check(ct, view)
            if not post.valid:
                await self._reject(run, ct, consumed, list(post.errors), "rules", actor)
                raise TransitionRejectedError(run.cw.name, transition, instance_id, list(post.errors))
            await self._commit_fire(run, ct, consumed, view, view.data, actor)
        else:
            await self._fire_action(run, ct, consumed, view, actor)
        try:
            await self._follow_up(run, ct)
        except asyncio.CancelledError:
            self._follow_up_later(run, ct)  # the caller gave up after the firing was stored
            raise
        return run.snapshot()

    async def _follow_up(self, run: Run, ct: CompiledTransition) -> None:
        """After a manual firing was stored: the driving engine goes on (an observer's firing), or this one."""
        if await self._handed_over(run):
            if run.seq <= run.awaiting_seq and run.status not in TERMINAL:
                await self._driver_went_on(run)
            return
        if not self.drive and self._closing is not None:
            return  # (an observer closing: it leaves the instance to a driving engine)
        if ct.feeds_auto or run.status is RUNNING or (ct.outputs_final and run.all_final()):
            try:
                await self._after_fire(run, ct)
            except ConcurrencyError:
                # The firing is stored; only its follow-up lost to another engine. Never fire again for it:
                # the instance was brought up to date, and the scheduler judges from there.
                self._kick(run)

    def _follow_up_later(self, run: Run, ct: CompiledTransition) -> None:
        """The caller of a stored manual firing gave up before its follow-up: the engine still does it."""

        async def follow_up() -> None:
            try:
                await self._follow_up(run, ct)
            except Exception:  # (nobody awaits this task: say what failed; the scheduler looks again)
                log.exception("following up transition %s of instance %s failed", ct.name, run.id)
                self._kick(run)

        if not self._closed:
            self._spawn(run, follow_up())

    async def _fire_action(
        self, run: Run, ct: CompiledTransition, consumed: dict[str, tuple[Token, ...]], view: Token, actor: str | None
    ) -> None:
        """A manual firing's action: run here, or on a worker (returning once its result is applied)."""
        if self.remote_of(run.cw.name, ct) is not None:
            waiter = await self._remote().dispatch(run, ct, consumed, view, actor, wait=True)
            assert waiter is not None
            await asyncio.shield(waiter)  # a caller giving up does not stop the task; its result still counts
            return
        # In a task of its own among the running actions (action and commit), so that close(grace=...) gives it
        # its time too; the caller giving up cancels it, as before.
        stage = _ManualStage()
        action = self._spawn(run, self._manual_action(run, ct, consumed, view, actor, stage))
        self._actions.add(action)
        action.add_done_callback(self._actions.discard)
        try:
            await action
        except asyncio.CancelledError:
            if action.done() and not action.cancelled():
                # The caller gave up just as the firing ended: what it did stands; the engine goes on from there.
                if action.exception() is None:
                    self._follow_up_later(run, ct)
                raise
            me = asyncio.current_task()
            if me is not None and me.cancelling():
                raise  # the caller gave up (the action was cancelled with it)
            # Stopped by the engine: it closed, or the instance was cancelled (here, or by another engine).
            if self._closed:
                raise EngineClosedError(f"fire {ct.name!r} on", run.id, maybe_stored=stage.storing) from None
            raise InstanceStateError(run.id, run.status.value, f"fire {ct.name!r} on") from None

    async def _manual_action(
        self,
        run: Run,
        ct: CompiledTransition,
        consumed: dict[str, tuple[Token, ...]],
        view: Token,
        actor: str | None,
        stage: _ManualStage,
    ) -> None:
        run.reserve(consumed)
        try:
            data = await self._run_action(run, ct, view, actor, raise_on_failure=True, consumed=consumed)
            if data is None:  # another engine moved the instance on while the action ran
                raise ConcurrencyError(run.id, run.seq)
            after = view.with_data(data)
            post = post_check(ct, after)
            expanded, errors = _expand(ct, after, consumed) if post.valid else (None, list(post.errors))
            if errors is not None:
                await self._reject(run, ct, consumed, errors, "rules", actor)
                raise TransitionRejectedError(run.cw.name, ct.name, run.id, errors)
            stage.storing = True
            await self._commit_fire(run, ct, consumed, after, data, actor, expanded)
        finally:
            run.release(consumed)

    async def retry(
        self, instance_id: str, actor: str | None = None, *, task_id: str | None = None, attempt: int | None = None
    ) -> Instance:
        """Try again: a failed instance gets its incidents resolved; a waiting one has the automatic
        transitions its policies refused reconsidered (after the world they depend on changed).

        With ``task_id`` (what ``circuit-breaker dlq retry`` asks for): only that dead-lettered remote task is
        handed out again, as its next attempt; a failed instance runs again if that task was all that failed it.
        ``attempt`` is the attempt the caller saw dead-lettered: a later one already out makes the request stale.
        """
        self._refuse_when_closed("retry", instance_id)
        if task_id is not None:
            return await self._retry_task(instance_id, task_id, actor, attempt)
        run = await self._find(instance_id)
        if run.status in (FAILED, RUNNING) and any(p.dead for p in run.pending.values()):
            # Dead-lettered tasks are handed out before the status changes, so that a failure in between leaves
            # the instance failed (or, if a retry stopped half-way before, running) with the rest still dead.
            await self._remote().redispatch_dead(run, actor)
            if run.status is RUNNING:
                self._kick(run)
                return run.snapshot()
        run = await self._change_status(
            instance_id, lambda r: "proceed" if r.status is WAITING else "retry", actor, "retried by hand", retry=True
        )
        if any(p.dead for p in run.pending.values()):
            await self._remote().redispatch_dead(run, actor)
        self._kick(run)
        return run.snapshot()

    async def _retry_task(self, instance_id: str, task_id: str, actor: str | None, attempt: int | None) -> Instance:
        run = await self._find(instance_id)
        if self._shared:  # judged on the newest state: another engine may have recorded the dead letter
            async with run.lock:
                await self._catch_up(run)
        pending = run.pending.get(task_id)
        if run.status in TERMINAL:
            raise InstanceStateError(instance_id, run.status.value, f"retry task {task_id} of")
        if pending is None:
            raise TaskStateError(instance_id, task_id, "the instance does not wait for it", reason="gone")
        if not pending.dead:
            if attempt is not None and pending.attempt > attempt:
                raise TaskStateError(
                    instance_id, task_id, f"attempt {pending.attempt} of it is out, after {attempt}", reason="gone"
                )
            if _cleared(run):  # handed out by a retry that stopped before the instance could run again
                run.local = True
                await self._run_again_if_cleared(run, actor, f"task {task_id} retried")
                return run.snapshot()
            raise TaskStateError(
                instance_id,
                task_id,
                f"attempt {pending.attempt} of it is out and not dead-lettered (yet: the engine records a dead letter "
                "a moment after a worker writes it)",
                reason="out",
            )
        run.local = True
        # Handed out first (which settles its incident), then the instance runs again if nothing else failed it: a
        # failure in between leaves it failed with the task out (asking again finishes the job), never running
        # with a dead task and nothing saying so.
        await self._remote().redispatch_dead(run, actor, only=task_id)
        await self._run_again_if_cleared(run, actor, f"task {task_id} retried")
        return run.snapshot()

    async def _run_again_if_cleared(self, run: Run, actor: str | None, reason: str) -> None:
        """A failed instance whose incidents (what failed it) are all resolved runs again (judged under the
        instance's lock, and again after another engine's write came first)."""
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            if not _cleared(run):
                return
            try:
                await self._set_status(run, "retry", actor, reason=reason, details={"retry": True}, when=_cleared)
                break
            except ConcurrencyError:
                if attempt == CONFLICT_ATTEMPTS:
                    raise
        self._kick(run)

    async def pause(self, instance_id: str, actor: str | None = None) -> Instance:
        self._refuse_when_closed("pause", instance_id, starts=False)
        run = await self._change_status(instance_id, lambda _: "pause", actor)
        return run.snapshot()

    async def resume(self, instance_id: str, actor: str | None = None) -> Instance:
        self._refuse_when_closed("resume", instance_id)
        run = await self._change_status(instance_id, lambda _: "resume", actor)
        open_incidents = [i for i in run.incidents if not i.resolved]
        if open_incidents:  # an action failed for good while it was paused: it fails now, as it would have
            last = open_incidents[-1]
            reason = f"{last.transition}: {last.error.message}"
            await self._change_status(instance_id, lambda _: "fail", None, reason, when=_incident_open)
            return run.snapshot()
        self._kick(run)
        return run.snapshot()

    async def cancel(self, instance_id: str, actor: str | None = None, reason: str | None = None) -> Instance:
        """Cancel: running actions are stopped and no token moves any more."""
        self._refuse_when_closed("cancel", instance_id, starts=False)
        run = await self._change_status(instance_id, lambda _: "cancel", actor, reason)
        for task in list(run.tasks):
            task.cancel()
        return run.snapshot()

    async def _change_status(
        self,
        instance_id: str,
        trigger: Callable[[Run], str],
        actor: str | None,
        reason: str | None = None,
        *,
        retry: bool = False,
        when: Callable[[Run], bool] | None = None,
    ) -> Run:
        """A status change asked for by a caller; judged again if another engine changed the instance first
        (``when``: only if it holds for the state under the instance's lock)."""
        run = await self._find(instance_id)
        run.local = True
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            try:
                details = {"retry": True} if retry else None
                await self._set_status(run, trigger(run), actor, reason=reason, details=details, when=when)
                await self._handed_over(run)
                return run
            except ConcurrencyError:
                if attempt == CONFLICT_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def add_listener(self, listener: Callable[[Event | None], None]) -> Callable[[], None]:
        """Call ``listener`` with every event this engine stores or follows from now on (None when the engine
        closes); returns the function that removes it. It runs on the hot path: keep it to counting."""
        self._subscribers.append((_always, listener))

        def remove() -> None:
            self._subscribers[:] = [s for s in self._subscribers if s[1] is not listener]

        return remove

    def events(
        self,
        *,
        workflow: str | None = None,
        instance: str | None = None,
        types: Iterable[EventType | str] | None = None,
        transition: str | None = None,
        follow: bool = False,
    ) -> AsyncIterator[Event]:
        """Stored events matching every filter given, oldest first; with ``follow=True``, then live ones
        until the engine closes."""
        wanted = frozenset(EventType(t) for t in types) if types is not None else None

        def match(event: Event) -> bool:
            return (
                (workflow is None or event.workflow == workflow)
                and (instance is None or event.instance_id == instance)
                and (wanted is None or event.type in wanted)
                and (transition is None or getattr(event, "transition", None) == transition)
            )

        return self._events(match, workflow, instance, follow)

    async def _events(
        self, match: Callable[[Event], bool], workflow: str | None, instance: str | None, follow: bool
    ) -> AsyncIterator[Event]:
        if self._loading:
            await self._ready()
        queue: asyncio.Queue[Event | None] | None = None
        if follow and not self._closed:
            queue = asyncio.Queue()
            sink = queue.put_nowait
            self._subscribers.append((match, sink))
        seen: dict[str, int] = {}
        try:
            async for event in self.store.replay(workflow=workflow, instance_id=instance):
                seen[event.instance_id] = event.seq
                if match(event):
                    yield event
            if queue is None:
                return
            while True:
                item = await queue.get()
                if item is None:
                    return
                if item.seq <= seen.get(item.instance_id, 0):
                    continue  # already replayed
                yield item
        finally:
            if queue is not None:
                self._subscribers[:] = [s for s in self._subscribers if s[1] is not sink]

    # -- committing events -----------------------------------------------------------------------------
    async def _append(
        self,
        run: Run,
        event: Event,
        consumed: dict[str, tuple[Token, ...]] | None = None,
        produced: dict[str, tuple[Token, ...]] | None = None,
        entry: HistoryEntry | None = None,
    ) -> None:
        """Persist, then apply: a state change is visible only once the store has it.

        When another engine wrote first (ConcurrencyError), the instance is brought up to date from the store
        before the error goes to the caller, who judges again on the new state.
        """
        try:
            await self.store.append(event, event.seq - 1)
        except ConcurrencyError:
            self.conflicts += 1
            if event.seq > 1:
                await self._catch_up(run)
            raise
        run.apply(event, consumed, produced, entry)
        if self.drive and not run.local:
            # The last writer drives (see _apply_foreign), also one that had stepped aside and then wrote (an
            # action it still ran, a deadline it still counted, a manual firing that failed): otherwise the
            # others would step aside from it. It looks at the instance again from here.
            run.local = True
            if not self._closed:
                self._kick(run)
        if self._subscribers:
            self._notify(event)

    def _notify(self, event: Event) -> None:
        for match, sink in self._subscribers:
            if match(event):
                sink(event)

    async def _commit_fire(
        self,
        run: Run,
        ct: CompiledTransition,
        consumed: dict[str, tuple[Token, ...]],
        view: Token,
        data: dict[str, Any],
        actor: str | None,
        expanded: dict[str, list[dict[str, Any]]] | None = None,
    ) -> None:
        if run.lock is NO_LOCK:  # the in-memory store: nothing can interleave, skip the lock's coroutines
            await self._append(run, *self._fired(run, ct, consumed, view, data, actor, expanded))
            return
        async with run.lock:
            if not _current(run, consumed):
                # Another engine's firing (or a cancel), applied while the action ran, took these tokens.
                raise ConcurrencyError(run.id, run.seq)
            await self._append(run, *self._fired(run, ct, consumed, view, data, actor, expanded))

    @staticmethod
    def _fired(
        run: Run,
        ct: CompiledTransition,
        consumed: dict[str, tuple[Token, ...]],
        view: Token,
        data: dict[str, Any],
        actor: str | None,
        expanded: dict[str, list[dict[str, Any]]] | None = None,
    ) -> tuple[Event, dict[str, tuple[Token, ...]], dict[str, tuple[Token, ...]], HistoryEntry]:
        """The event of a firing, with the hints ``Run.apply`` takes (consumed, produced, history entry)."""
        now = utcnow()
        entry = fired_entry(ct, now, actor)
        produced = produce(ct, view, data, entry, expanded=expanded)
        if len(consumed) == 1 and len(produced) == 1:
            (taken,) = consumed.values()
            (given,) = produced.values()
            consumed_ids = [t.id for t in taken]
            produced_list = list(given)
        else:
            consumed_ids = [t.id for ts in consumed.values() for t in ts]
            produced_list = [t for ts in produced.values() for t in ts]
        event = build(
            TransitionFired,
            workflow=run.cw.name,
            instance_id=run.id,
            seq=run.seq + 1,
            time=now,
            actor=actor,
            type=EventType.TRANSITION_FIRED,
            transition=ct.name,
            consumed=consumed_ids,
            produced=produced_list,
            task_id=None,
        )
        return event, consumed, produced, entry

    async def _reject(
        self,
        run: Run,
        ct: CompiledTransition,
        consumed: dict[str, tuple[Token, ...]],
        errors: list[str],
        stage: str,
        actor: str | None,
    ) -> None:
        async with run.lock:
            event = _next_event(
                TransitionRejected,
                run,
                actor,
                transition=ct.name,
                tokens=[t.id for ts in consumed.values() for t in ts],
                errors=[default_masker().mask_text(e) for e in errors],
                stage=stage,
                task_id=None,
            )
            await self._append(run, event)

    async def _set_status(
        self,
        run: Run,
        trigger: str,
        actor: str | None,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
        when: Callable[[Run], bool] | None = None,
    ) -> None:
        """Store the status change ``trigger``; with ``when``, only if it holds for the state under the lock."""
        async with run.lock:
            if (trigger, run.status) in _ALREADY:
                return  # done meanwhile by another path (a manual firing and the scheduler both settling it)
            if when is not None and not when(run):
                return
            status = next_status(run.id, run.status, trigger)
            if trigger == "complete":
                event: Event = _next_event(
                    InstanceCompleted, run, actor, final_places=sorted(run.marking), transition=None
                )
            else:
                event = _next_event(
                    InstanceStatusChanged,
                    run,
                    actor,
                    status=status.value,
                    previous=run.status.value,
                    reason=reason,
                    details=details or {},
                    transition=None,
                )
            await self._append(run, event)
        run.update_settled()
        if run.status in TERMINAL:
            self._ended(run)

    # -- scheduling --------------------------------------------------------------------------------------
    def _kick(self, run: Run) -> None:
        """Make sure a scheduler pass runs for ``run`` soon (at most one at a time per instance)."""
        if run.advancing:
            run.dirty = True
            return
        run.advancing = True
        run.settled.clear()
        self._spawn(run, self._advance(run))

    def _spawn(self, run: Run, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        run.tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            run.tasks.discard(t)

        task.add_done_callback(done)
        return task

    async def _after_fire(self, run: Run, ct: CompiledTransition) -> None:
        """After a manual firing: complete the instance if every token rests in a final place now, else go on
        automatically if it can enable something, else settle."""
        if ct.outputs_final and run.all_final():
            await self._settle(run)  # (also when running, after a resume the scheduler had not settled yet)
            if run.status in TERMINAL:
                return
        if ct.feeds_auto or run.status is RUNNING:
            if run.status is WAITING:
                await self._set_status(run, "proceed", None, reason=f"{ct.name} fired")
            self._kick(run)
        elif run.all_final():
            await self._settle(run)
        # Otherwise the instance keeps waiting, and nothing about that changed.

    async def _advance(self, run: Run) -> None:
        firings = 0
        conflicts = 0
        try:
            if self._draining and run.local and not self._closed and run.status is RUNNING and run.all_final():
                # Stopping: nothing new starts, but an instance whose last action finished meanwhile is complete.
                with contextlib.suppress(ConcurrencyError):  # (another engine wrote it first: it goes on there)
                    await self._settle(run)
            while not self._closed and not self._draining and run.local:  # (another engine may drive it meanwhile)
                run.dirty = False
                try:
                    progressed = await self._step(run) if run.status is RUNNING else False
                except ConcurrencyError:
                    # Another engine moved the instance; it was brought up to date: look again.
                    conflicts += 1
                    await asyncio.sleep(0 if conflicts < 3 else min(0.01 * conflicts, 0.5))
                    continue
                if progressed:
                    firings += 1
                    conflicts = 0
                    if firings % YIELD_EVERY == 0:
                        # An automatic cycle must not starve other instances, timers and callers.
                        await asyncio.sleep(0)
                    continue
                if run.dirty:
                    continue
                try:
                    await self._settle(run)
                except ConcurrencyError:
                    continue
                if not run.dirty:
                    break
        except asyncio.CancelledError:
            raise
        except StoreError as err:
            # NATS unreachable for longer than the store retries: nothing is lost, try again later.
            log.warning("instance %s of workflow %s: the store failed (%s); retrying in 5s", run.id, run.cw.name, err)
            self._wake(run, 5.0)
        except TokenDataError as err:
            # Data the store cannot take (an event larger than NATS allows): the instance fails, saying why.
            log.warning("instance %s of workflow %s: %s", run.id, run.cw.name, err)
            await self._fail_internal(run, err, reason=str(err))
        except Exception as err:
            # A bug must not leave waiters hanging or stop other instances.
            log.exception("scheduler pass failed for instance %s of workflow %s", run.id, run.cw.name)
            await self._fail_internal(run, err)
        finally:
            run.advancing = False
            run.update_settled()

    async def _fail_internal(self, run: Run, err: BaseException, reason: str | None = None) -> None:
        try:
            if run.status in (RUNNING, WAITING):
                why = reason or f"internal error: {type(err).__name__}: {err}"
                await self._set_status(run, "fail", None, reason=why)
        except Exception:
            log.exception("could not record the failure of instance %s", run.id)

    async def _settle(self, run: Run) -> None:
        """No automatic firing is possible now: completed when every token rests in a final place, else waiting."""
        if run.inflight or run.wake_at is not None or (run.pending and run.tasks_running()):
            # Something will still happen by itself: an action or a remote task finishing, a timer (timeout,
            # rate limit).
            return
        if run.status is RUNNING or run.status is WAITING:
            if run.all_final():
                await self._set_status(run, "complete", None)
            elif run.status is RUNNING:
                # Judged on the state before the lock: a manual firing stored meanwhile (here, or by another engine
                # read in) may have enabled an automatic transition, so wait only if nothing changed since.
                seq = run.seq
                await self._set_status(run, "wait", None, when=lambda r: r.seq == seq)
                if run.status is RUNNING:
                    run.dirty = True  # (it changed: the scheduler looks again)
            elif self._shared and run.local and self._auto_possible(run):
                # Waiting, yet an automatic transition could fire: the event that should have resumed it
                # was lost to a crash or to another engine (a manual firing stored, its "proceed" not).
                await self._set_status(run, "proceed", None, reason="an automatic transition is enabled")
                run.dirty = True
        run.update_settled()

    def _could_go_on(self, run: Run) -> bool:
        """Whether ``run`` would move on by itself if an engine drove it (running, or waiting while an automatic
        transition could fire): what an engine that does not drive it must not leave undriven."""
        return run.status is RUNNING or (run.status is WAITING and self._auto_possible(run))

    def _auto_possible(self, run: Run) -> bool:
        """Whether some automatic transition has tokens it could fire with (policies not yet refused)."""
        for place in run.marking:
            for ct in run.cw.auto_by_place.get(place, ()):
                if all(run.free(arc.place) >= arc.weight for arc in ct.net.inputs) and any(
                    True for _ in self._selections(run, ct)
                ):
                    return True
        return False

    async def _step(self, run: Run) -> bool:
        """One scheduler pass over the automatic transitions that the marking could enable, in declaration order.

        Returns True when a firing was committed (the marking changed, so look again).
        """
        cw = run.cw
        marking = run.marking
        candidates: list[CompiledTransition] = []
        for place in marking:
            for ct in cw.auto_by_place.get(place, ()):
                if ct not in candidates:
                    candidates.append(ct)
        if len(candidates) > 1:
            order = cw.ordered
            candidates.sort(key=order.index)
        for ct in candidates:
            if run.status is not RUNNING:
                return False
            if not all(run.free(arc.place) >= arc.weight for arc in ct.net.inputs):
                continue
            for consumed in self._selections(run, ct):
                if self._draining:  # (stopping began while this pass awaited a store append)
                    return False
                if ct.handler is not None and not self._may_start(run, ct):
                    break
                view = input_token(ct, consumed)
                pre = pre_check(ct, view)
                if not pre.valid:
                    await self._reject(run, ct, consumed, list(pre.errors), "validations", None)
                    continue
                if ct.handler is None:
                    if await self._fire_plain(run, ct, consumed, view):
                        return True
                    continue
                if await self._start_action(run, ct, consumed, view):
                    return True
        return False

    async def _fire_plain(
        self, run: Run, ct: CompiledTransition, consumed: dict[str, tuple[Token, ...]], view: Token
    ) -> bool:
        """Fire a transition without an action at once; False when its rules (or its expansion) refused."""
        post = post_check(ct, view)
        if not post.valid:
            await self._reject(run, ct, consumed, list(post.errors), "rules", None)
            return False
        expanded = None
        if ct.expand is not None:
            try:
                expanded = ct.expand(view, consumed)
            except CircuitBreakerError as err:
                await self._reject(run, ct, consumed, [str(err)], "rules", None)
                return False
        await self._commit_fire(run, ct, consumed, view, view.data, None, expanded)
        return True

    async def _start_action(
        self, run: Run, ct: CompiledTransition, consumed: dict[str, tuple[Token, ...]], view: Token
    ) -> bool:
        """Start ``ct``'s action with ``consumed``. A remote one is dispatched (the marking changed: returns True);
        a local one runs in its own task, its tokens reserved meanwhile."""
        if ct.remote is not None or (self._by_kind and self.remote_of(run.cw.name, ct) is not None):
            await self._remote().dispatch(run, ct, consumed, view, None)
            return True
        run.reserve(consumed)
        run.inflight += 1
        run.running[ct.name] = run.running.get(ct.name, 0) + 1
        action = self._spawn(run, self._fire_with_action(run, ct, consumed, view))
        self._actions.add(action)
        action.add_done_callback(self._actions.discard)
        return False

    def _selections(self, run: Run, ct: CompiledTransition) -> Iterator[dict[str, tuple[Token, ...]]]:
        """The token sets ``ct`` could fire with now, oldest first, skipping reserved and refused ones.

        A one-arc transition looks at every token of its place, so one refused token does not block the
        others (each scattered item is judged on its own); joins and weighted arcs take the oldest tokens.
        """
        if ct.collect is not None:
            chosen = ct.collect(run.marking, run.reserved, time.monotonic())
            if chosen is None:
                # A collector that can time out (a gather) says when to look again.
                wake = getattr(getattr(ct.collect, "__self__", None), "next_check", None)
                delay = wake(run.marking, time.monotonic()) if wake is not None else None
                if delay is not None:
                    self._wake(run, delay)
                return
            if not run.rejected or (ct.name, _ids(chosen)) not in run.rejected:
                yield chosen
            return
        if ct.single_input:
            place = ct.input_places[0]
            free = run.free(place)
            for tok in run.marking.get_tokens(place):
                if free <= 0:
                    return  # every other token is reserved: no need to walk them
                if tok in run.reserved:
                    continue
                free -= 1
                if run.rejected and (ct.name, (tok.id,)) in run.rejected:
                    continue
                yield {place: (tok,)}
                free = run.free(place)  # the consumer may have reserved or fired meanwhile
            return
        if is_enabled(ct.net, run.marking, run.reserved):
            consumed = select(ct.net, run.marking, run.reserved)
            if not run.rejected or (ct.name, _ids(consumed)) not in run.rejected:
                yield consumed

    def _may_start(self, run: Run, ct: CompiledTransition) -> bool:
        """Whether another action of ``ct`` may start now (its max_parallel and rate limit)."""
        if ct.max_parallel is not None:
            running = run.running.get(ct.name, 0)
            if run.pending:
                running += sum(1 for p in run.pending.values() if p.transition == ct.name)
            if running >= ct.max_parallel:
                return False
        if ct.rate_limit is not None:
            count, window = ct.rate_limit
            starts = self._starts.setdefault((run.cw.name, ct.name), deque())
            now = time.monotonic()
            while starts and now - starts[0] >= window:
                starts.popleft()
            if len(starts) >= count:
                self._wake(run, window - (now - starts[0]))
                return False
            starts.append(now)
        return True

    def _wake(self, run: Run, delay: float) -> None:
        """Run a scheduler pass for ``run`` after ``delay`` seconds (timeouts, rate limits)."""
        loop = asyncio.get_running_loop()
        when = loop.time() + max(delay, 0.0)
        if run.wake_at is not None and run.wake_at <= when:
            return
        run.wake_at = when

        def wake() -> None:
            if run.wake_at == when:
                run.wake_at = None
            if not self._closed:
                self._kick(run)

        loop.call_at(when, wake)

    async def _fire_with_action(
        self, run: Run, ct: CompiledTransition, consumed: dict[str, tuple[Token, ...]], view: Token
    ) -> None:
        try:
            data = await self._run_action(run, ct, view, None, raise_on_failure=False, consumed=consumed)
            if data is None:
                return  # an incident was recorded
            after = view.with_data(data)
            post = post_check(ct, after)
            expanded, errors = _expand(ct, after, consumed) if post.valid else (None, list(post.errors))
            if errors is None:
                await self._commit_fire(run, ct, consumed, after, data, None, expanded)
            else:
                await self._reject(run, ct, consumed, errors, "rules", None)
        except asyncio.CancelledError:
            raise
        except ConcurrencyError:
            pass  # another engine moved the instance first; the scheduler pass below looks again
        except Exception as err:
            log.exception("firing %s failed for instance %s", ct.name, run.id)
            await self._fail_internal(run, err)
        finally:
            run.release(consumed)
            run.inflight -= 1
            run.running[ct.name] -= 1
            if not self._closed:
                self._kick(run)

    async def _run_action(
        self,
        run: Run,
        ct: CompiledTransition,
        view: Token,
        actor: str | None,
        *,
        raise_on_failure: bool,
        consumed: dict[str, tuple[Token, ...]] | None = None,
    ) -> dict[str, Any] | None:
        """Run the action with retries and timeout. Returns the merged data, or None after an incident
        (auto firing), or raises ActionError (manual firing)."""
        cw = run.cw
        policy = ct.retry or NO_RETRY
        attempt = 0
        token_ids = [view.id] if consumed is None else [t.id for ts in consumed.values() for t in ts]
        while True:
            attempt += 1
            try:
                # The action gets its own copy of the data, so mutating it in place cannot corrupt a token.
                arg = view.with_data(dict(view.data))
                firing = _current_firing.set(Firing(cw.name, run.id, ct.name, tuple(token_ids), attempt))
                try:
                    if ct.timeout is not None:
                        result = await asyncio.wait_for(run_action(ct, arg), ct.timeout)
                    else:
                        result = await run_action(ct, arg)
                finally:
                    _current_firing.reset(firing)
                return merge_result(cw, ct, view.data, result)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                if isinstance(err, TimeoutError):
                    failure: ActionError = ActionTimeoutError(
                        f"action of transition {ct.name!r} in workflow {cw.name!r} timed out after {ct.timeout:g}s",
                        workflow=cw.name,
                        transition=ct.name,
                        attempts=attempt,
                    )
                else:
                    failure = action_failure(cw, ct, err, attempt)
                failure.instance_id = run.id
                failure.attempts = attempt
                masker = default_masker()  # failures are stored in events and shown: no secrets in them
                info = ErrorInfo(
                    kind=getattr(err, "kind", None) or type(err).__name__,
                    message=masker.mask_text(str(err) or str(failure)),
                    retryable=failure.retryable,
                    details=masker.mask(dict(getattr(err, "details", None) or {})),
                )
                will_retry = failure.retryable and attempt < policy.max_attempts and run.status in (RUNNING, WAITING)
                if will_retry:
                    await self._record_failure(
                        run, ct, token_ids, attempt, info, actor, will_retry=True, consumed=consumed
                    )
                    if self._shared and not _current(run, consumed):
                        return None  # another engine moved on: no point retrying
                    await asyncio.sleep(policy.delay(attempt))
                    continue
                if raise_on_failure:
                    await self._record_failure(run, ct, token_ids, attempt, info, actor, will_retry=False)
                    raise failure from err
                await self._incident(run, ct, consumed or {}, view, token_ids, attempt, info)
                return None

    async def _record_failure(
        self,
        run: Run,
        ct: CompiledTransition,
        token_ids: list[str],
        attempt: int,
        info: ErrorInfo,
        actor: str | None,
        *,
        will_retry: bool,
        consumed: dict[str, tuple[Token, ...]] | None = None,
    ) -> None:
        async with run.lock:
            if self._shared and not _current(run, consumed):
                return  # another engine moved on meanwhile: this attempt no longer matters
            event = _next_event(
                TransitionFailed,
                run,
                actor,
                transition=ct.name,
                tokens=token_ids,
                attempt=attempt,
                error=info,
                will_retry=will_retry,
                incident=None,
                consumed=[],
                produced=[],
                task_id=None,
            )
            await self._append(run, event)

    async def _incident(
        self,
        run: Run,
        ct: CompiledTransition,
        consumed: dict[str, tuple[Token, ...]],
        view: Token,
        token_ids: list[str],
        attempt: int,
        info: ErrorInfo,
    ) -> None:
        """Retries ran out: move the tokens to the error place, if there is one, and record an incident.

        An error place with transitions out of it is the author's way of handling the failure (a review, a
        repair step): the instance goes on from there. Without one, or when it is a dead end, the instance
        fails until someone retries it.
        """
        handled = ct.error_place is not None and ct.error_place not in run.cw.final_places
        async with run.lock:
            if self._shared and not _current(run, consumed or None):
                return  # another engine fired with these tokens, or ended the instance: nothing failed here
            now = utcnow()
            produced: list[Token] = []
            if ct.error_place is not None:
                produced = to_error_place(ct, view, view.data, info.model_dump(), now)
            event = _next_event(
                TransitionFailed,
                run,
                None,
                now,
                transition=ct.name,
                tokens=token_ids,
                attempt=attempt,
                error=info,
                will_retry=False,
                incident=None if handled else new_id(),
                consumed=token_ids if produced else [],
                produced=produced,
                task_id=None,
            )
            await self._append(run, event)
        if not handled and run.status in (RUNNING, WAITING):
            await self._set_status(run, "fail", None, reason=f"{ct.name}: {info.message}")


E = TypeVar("E", bound=BaseModel)


def _ignore(_: int) -> None:
    return None


def _expand(
    ct: CompiledTransition, after: Token, consumed: dict[str, tuple[Token, ...]]
) -> tuple[dict[str, list[dict[str, Any]]] | None, list[str] | None]:
    """A stage's expansion of an action's result (scatter: one token per item); errors refuse the firing."""
    if ct.expand is None:
        return None, None
    try:
        return ct.expand(after, consumed), None
    except CircuitBreakerError as err:
        return None, [str(err)]


def _always(_: Event) -> bool:
    return True


# Status changes that are no-ops when another path made them first.
_ALREADY = frozenset({("complete", InstanceStatus.COMPLETED), ("wait", WAITING), ("proceed", RUNNING)})


async def _cancel(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait for them. Cancelling again until they end: a client library that swallows
    one cancellation (nats-py does while it writes to its socket) must not hang the engine's close."""
    pending = [t for t in tasks if not t.done()]
    while pending:
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=0.1)
        pending = [t for t in pending if not t.done()]
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved, so an error of a cancelled task is not reported as never retrieved


def _next_event(cls: type[E], run: Run, actor: str | None, time: datetime | None = None, **fields: Any) -> E:
    """The instance's next event of type ``cls``: the common header filled in, ``fields`` for the rest."""
    return build(
        cls,
        workflow=run.cw.name,
        instance_id=run.id,
        seq=run.seq + 1,
        time=time or utcnow(),
        actor=actor,
        type=type_of(cls),
        **fields,
    )


def _current(run: Run, consumed: dict[str, tuple[Token, ...]] | None) -> bool:
    """Whether a firing judged earlier still applies: the instance may move, and its tokens are still there."""
    if run.status is not RUNNING and run.status is not WAITING and run.status is not InstanceStatus.PAUSED:
        return False
    return consumed is None or run.holds(consumed)


def _ids(consumed: dict[str, tuple[Token, ...]]) -> tuple[str, ...]:
    return tuple(t.id for ts in consumed.values() for t in ts)


def _cleared(run: Run) -> bool:
    """Failed because of incidents, and every one of them is resolved now (an internal failure is no incident)."""
    return run.status is FAILED and run.failed_on_incident and all(i.resolved for i in run.incidents)


def _incident_open(run: Run) -> bool:
    return any(not i.resolved for i in run.incidents)
