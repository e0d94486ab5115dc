"""The in-memory store: for embedded use, scripts and unit tests. Nothing survives the process."""

from __future__ import annotations

from collections.abc import AsyncIterator

from ..errors import ConcurrencyError
from ..events import Event


class MemoryStore:
    """Events per instance plus one global log in append order."""

    # append() never suspends, so no other coroutine can slip in between reading an instance's sequence
    # number and appending: the engine can skip its per-instance commit lock.
    appends_atomically = True

    def __init__(self) -> None:
        self._by_instance: dict[str, list[Event]] = {}
        self._workflow_of: dict[str, str] = {}
        self._log: list[Event] = []

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def append(self, event: Event, expected_seq: int) -> None:
        events = self._by_instance.get(event.instance_id)
        last = len(events) if events is not None else 0
        if last != expected_seq or event.seq != expected_seq + 1:
            raise ConcurrencyError(event.instance_id, expected_seq, last)
        if events is None:
            events = self._by_instance[event.instance_id] = []
            self._workflow_of[event.instance_id] = event.workflow
        events.append(event)
        self._log.append(event)

    async def read(self, instance_id: str, after_seq: int = 0) -> list[Event]:
        return list(self._by_instance.get(instance_id, ())[after_seq:])

    async def replay(self, *, workflow: str | None = None, instance_id: str | None = None) -> AsyncIterator[Event]:
        source = self._by_instance.get(instance_id, []) if instance_id is not None else self._log
        for event in list(source):
            if workflow is None or event.workflow == workflow:
                yield event

    def snapshot_log(self) -> list[Event]:
        """The global log as it is now (used to replay and then follow live without a gap)."""
        return list(self._log)

    async def instance_ids(self, workflow: str | None = None) -> list[str]:
        return [i for i, w in self._workflow_of.items() if workflow is None or w == workflow]
