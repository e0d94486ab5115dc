"""The store interface: an append-only event log per instance with optimistic concurrency."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection
from typing import Protocol, runtime_checkable

from ..events import Event


@runtime_checkable
class Store(Protocol):
    """Where instance events live. The engine folds them into state; a store never interprets them.

    ``append`` must be atomic per instance: it succeeds only when the instance's last sequence number equals
    ``expected_seq`` (0 for a new instance) and raises ``ConcurrencyError`` otherwise, so two engines cannot
    both fire from the same marking.
    """

    # True when append() completes without suspending (no I/O); the engine then needs no commit lock.
    appends_atomically: bool

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def append(self, event: Event, expected_seq: int) -> None: ...

    async def read(self, instance_id: str, after_seq: int = 0) -> list[Event]:
        """The instance's events with a version above ``after_seq``, oldest first."""
        ...

    def replay(self, *, workflow: str | None = None, instance_id: str | None = None) -> AsyncIterator[Event]:
        """Every stored event (optionally of one workflow or instance) in the order it was appended."""
        ...

    async def instance_ids(self, workflow: str | None = None) -> list[str]: ...


@runtime_checkable
class SharedStore(Store, Protocol):
    """A store several engine processes use at once: an engine also follows the others' events."""

    watched_up_to: int  # the position of the last event watch() delivered (or skipped as its own)

    async def last_sequence(self) -> int:
        """The position of the newest stored event (0 when empty)."""
        ...

    def drives_elsewhere(self, instance_id: str) -> bool:
        """Whether another engine, alive as far as this one knows, wrote the newest event of ``instance_id`` that
        this engine read (followed live, or loaded): that engine drives it now, and this one leaves it alone."""
        ...

    def takes_over(self, instance_id: str, workflow: str | None = None) -> bool:
        """Whether this engine should drive ``instance_id`` (of ``workflow``): the engine that last wrote it is
        gone, and this one is the live engine chosen for it among those that take over that workflow."""
        ...

    def takes_up(self, instance_id: str, workflow: str, unowned: bool) -> bool:
        """Whether this engine should drive ``instance_id`` (of ``workflow``), which it does not drive now, after
        an engine that does not drive changed it: it knows no other driving engine, or the asker found no driver
        (``unowned``) and this one is the live engine chosen for it."""
        ...

    async def announce(
        self,
        since: int,
        on_peer: Callable[[int], None],
        *,
        writer: bool = True,
        on_gone: Callable[[str], None] | None = None,
        workflows: Callable[[], Collection[str]] | None = None,
        on_poke: Callable[[str, str, bool], bool] | None = None,
    ) -> None:
        """Tell the other engines this one is here (if it may write; a writer returns once the writers already
        running have introduced themselves) and call ``on_peer(position)`` when another writer is seen: its events
        must be followed from ``position + 1`` on. ``on_gone(origin)`` is called when
        a writer leaves or stops answering: the instances it drove need another driver (see ``takes_over``).
        ``workflows()`` names the workflows whose instances this engine takes over (none without ``on_gone``).
        A writer's ``on_poke(instance_id, workflow, unowned)`` is called when an engine that does not drive changed
        that instance (see ``hand_over``; ``unowned``: it found no engine driving it); it says whether this engine
        takes it over (and goes on with it)."""
        ...

    async def hand_over(self, workflow: str, instance_id: str, seq: int) -> bool:
        """This engine (one that does not drive) changed ``instance_id`` up to version ``seq``: tell the engine
        that drives it, which goes on with it (with none, the one chosen for it takes it up); True when an engine
        took it over."""
        ...

    def watch(self, start_seq: int) -> AsyncIterator[Event]:
        """Events appended by *other* writers, live, from position ``start_seq`` on."""
        ...


@runtime_checkable
class MarkingStore(Protocol):
    """A store that keeps, per workflow, a *mark*: a position in the log at or below which every instance that
    began there has finished. An engine then opens by replaying the log after the mark only, so restart time
    follows the instances that can still go on, not the whole history."""

    async def read_mark(self, workflow: str) -> int:
        """The stored mark of ``workflow`` (0 when none: replay everything)."""
        ...

    async def write_mark(self, workflow: str, position: int) -> None:
        """Store ``position`` as the mark of ``workflow``: every instance begun at or below it has finished."""
        ...

    async def starts(self, workflow: str, after: int) -> tuple[list[tuple[str, int]], int]:
        """The instances of ``workflow`` begun after ``after`` with the position they began at, and the position
        up to which that list is complete."""
        ...

    def replay_after(self, workflow: str, after: int) -> AsyncIterator[tuple[Event, int]]:
        """Every stored event of ``workflow`` after position ``after``, with its position, in log order."""
        ...
