"""The finished instances an engine remembers after they left memory: their workflow and status, within a limit.

An engine keeps its ``keep_finished`` most recently finished instances in memory; older ones leave it, and
only their id, workflow and status stay here, so that ``instances()`` can list them and the metrics count them
without reading the store. That too would grow for as long as the engine runs, so the index holds at most
``limit`` ids: past it the oldest are forgotten a tenth at a time (a dict rebuilt, so no per-id bookkeeping),
and their workflow is marked ``dropped``: its listing then replays the store, the only place that still has
them all.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice

from ._lifecycle import InstanceStatus

__all__ = ["FinishedIndex"]


class FinishedIndex:
    """``id -> (workflow, status)`` of finished instances out of memory, oldest first, at most ``limit`` ids."""

    __slots__ = ("_counts", "_ids", "dropped", "limit")

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"remember_finished must be 0 or more, not {limit}")
        self.limit = limit
        self._ids: dict[str, tuple[str, InstanceStatus]] = {}
        self._counts: dict[tuple[str, InstanceStatus], int] = {}  # kept as ids come and go: metrics read it
        self.dropped: set[str] = set()  # workflows some of whose finished instances this index forgot

    def add(self, instance_id: str, workflow: str, status: InstanceStatus) -> None:
        ids = self._ids
        old = ids.get(instance_id)
        if old is not None:
            self._count(old, -1)
        ids[instance_id] = (workflow, status)
        self._count((workflow, status), 1)
        if len(ids) > self.limit:
            self._forget_oldest()

    def pop(self, instance_id: str) -> None:
        """``instance_id`` is back in memory (read back, or followed again): not here any more."""
        old = self._ids.pop(instance_id, None)
        if old is not None:
            self._count(old, -1)

    def workflow_of(self, instance_id: str) -> str | None:
        found = self._ids.get(instance_id)
        return found[0] if found is not None else None

    def __contains__(self, instance_id: object) -> bool:
        return instance_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def items(self) -> Iterator[tuple[str, str, InstanceStatus]]:
        for iid, (workflow, status) in self._ids.items():
            yield iid, workflow, status

    def counts(self) -> dict[tuple[str, InstanceStatus], int]:
        """How many ids the index holds, by workflow and status."""
        return dict(self._counts)

    def _count(self, key: tuple[str, InstanceStatus], step: int) -> None:
        n = self._counts.get(key, 0) + step
        if n:
            self._counts[key] = n
        else:
            self._counts.pop(key, None)

    def _forget_oldest(self) -> None:
        ids = self._ids
        drop = len(ids) - self.limit + self.limit // 10
        for workflow, status in islice(ids.values(), drop):
            self._count((workflow, status), -1)
            self.dropped.add(workflow)
        self._ids = dict(islice(ids.items(), drop, None))
