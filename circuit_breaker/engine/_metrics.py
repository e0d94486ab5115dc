"""Prometheus metrics of an engine (``circuit-breaker serve --metrics-port``), in a registry of their own.

Counted from the engine's events (a listener, so the hot path pays one call per event), read from its
instances at scrape time (counts by status, remote tasks in flight). Without prometheus-client the object is
inert and ``available`` is False.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..events import (
    Event,
    InstanceCompleted,
    InstanceStatusChanged,
    TransitionFailed,
    TransitionFired,
    TransitionRejected,
    TransitionStarted,
)

if TYPE_CHECKING:
    from ._engine import Engine

__all__ = ["EngineMetrics"]

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800)


class EngineMetrics:
    """``metrics = EngineMetrics(engine)``; ``metrics.render()`` is the Prometheus text; ``close()`` detaches."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._remove: Any = None
        try:
            import prometheus_client as prom
        except ImportError:
            self.registry: Any = None
            return
        self.registry = prom.CollectorRegistry()
        self._events = prom.Counter(
            "cb_engine_events", "Events stored or followed, by workflow and type", ["workflow", "type"],
            registry=self.registry,
        )  # fmt: skip
        self._firing = prom.Histogram(
            "cb_engine_firing_latency_seconds",
            "Seconds from an instance's previous event to a transition firing (waiting, action and commit)",
            ["workflow"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._tasks = prom.Counter(
            "cb_engine_task_results",
            "Remote task outcomes applied, by executor kind and status "
            "(succeeded, failed, dead_lettered, rejected, overdue)",
            ["executor", "status"],
            registry=self.registry,
        )
        self._round_trip = prom.Histogram(
            "cb_engine_task_round_trip_seconds",
            "Seconds from a remote task's dispatch to its result applied, by executor kind",
            ["executor"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_Snapshot(engine))
        self._last: dict[str, Any] = {}  # instance -> time of its newest event (for the firing latency)
        self._started: dict[str, tuple[str, Any]] = {}  # task id -> (executor kind, dispatch time)
        self._remove = engine.add_listener(self._on_event)

    @property
    def available(self) -> bool:
        return self.registry is not None

    def render(self) -> bytes:
        import prometheus_client as prom

        return bytes(prom.generate_latest(self.registry))

    def close(self) -> None:
        if self._remove is not None:
            self._remove()
            self._remove = None

    def _on_event(self, event: Event | None) -> None:
        if event is None:
            return
        self._events.labels(event.workflow, event.type.value).inc()
        iid = event.instance_id
        previous = self._last.get(iid)
        if isinstance(event, InstanceCompleted) or (
            isinstance(event, InstanceStatusChanged) and event.status in ("cancelled", "failed")
        ):
            self._last.pop(iid, None)
        else:
            self._last[iid] = event.time
        if isinstance(event, TransitionStarted):
            self._started[event.task_id] = (event.executor, event.time)
        elif isinstance(event, TransitionFired):
            if previous is not None:
                self._firing.labels(event.workflow).observe((event.time - previous).total_seconds())
            if event.task_id is not None:
                self._task_ended(event.task_id, "succeeded", event)
        elif isinstance(event, TransitionRejected) and event.task_id is not None:
            self._task_ended(event.task_id, "rejected", event)
        elif isinstance(event, TransitionFailed) and event.task_id is not None:
            if event.will_retry:
                kind = self._started.get(event.task_id, ("unknown", None))[0]
                self._tasks.labels(kind, "overdue").inc()
            elif event.consumed:
                self._task_ended(event.task_id, "failed", event)
            else:
                kind = self._started.get(event.task_id, ("unknown", None))[0]
                self._tasks.labels(kind, "dead_lettered").inc()

    def _task_ended(self, task_id: str, status: str, event: Event) -> None:
        kind, since = self._started.pop(task_id, ("unknown", None))
        self._tasks.labels(kind, status).inc()
        if since is not None:
            self._round_trip.labels(kind).observe((event.time - since).total_seconds())


class _Snapshot:
    """Read from the engine when scraped: instances by workflow and status, tasks in flight, conflicts."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        instances = GaugeMetricFamily(
            "cb_engine_instances", "Instances this engine knows, by workflow and status", labels=["workflow", "status"]
        )
        in_flight = GaugeMetricFamily(
            "cb_engine_tasks_in_flight",
            "Remote tasks dispatched and not yet answered, by executor kind (dead-lettered ones apart)",
            labels=["executor", "dead_lettered"],
        )
        counts: dict[tuple[str, str], int] = {}
        tasks: dict[tuple[str, str], int] = {}
        for run in list(self.engine._runs.values()):
            key = (run.cw.name, run.status.value)
            counts[key] = counts.get(key, 0) + 1
            for pending in run.pending.values():
                tkey = (pending.executor, "true" if pending.dead else "false")
                tasks[tkey] = tasks.get(tkey, 0) + 1
        for (workflow, ended), n in self.engine._archived.counts().items():  # finished, out of memory
            key = (workflow, ended.value)
            counts[key] = counts.get(key, 0) + n
        for (workflow, status), n in sorted(counts.items()):
            instances.add_metric([workflow, status], n)
        for (kind, dead), n in sorted(tasks.items()):
            in_flight.add_metric([kind, dead], n)
        yield instances
        yield in_flight
        yield CounterMetricFamily(
            "cb_engine_conflicts",
            "Appends the store refused because another engine had written the instance first",
            value=self.engine.conflicts,
        )
