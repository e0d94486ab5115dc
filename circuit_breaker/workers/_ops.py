"""Operability for a worker: Prometheus metrics, ``/healthz`` + ``/readyz`` + ``/metrics`` on a tiny HTTP server,
and structured logs.

The HTTP server is stdlib ``http.server`` in a daemon thread: it reads state the worker's event loop writes
(``Health``), so a busy or stuck loop cannot hide behind a healthy-looking endpoint and no async web framework
is needed. Metrics need the optional ``prometheus-client`` (``pip install circuit-breaker-wf[metrics]``);
without it ``/metrics`` answers 501 and everything else works.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

__all__ = ["Health", "JsonFormatter", "Metrics", "OpsServer", "setup_logging"]

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
LOG_FIELDS = ("task_id", "attempt", "workflow", "instance", "transition", "executor", "worker", "traceparent")


class Metrics:
    """The worker's Prometheus metrics, in a registry of its own (no process-wide state); no-ops without
    prometheus-client."""

    def __init__(self) -> None:
        try:
            import prometheus_client as prom
        except ImportError:
            self.registry: Any = None
            return
        self._children: dict[tuple[str, ...], Any] = {}  # labels() looks its child up anew each call
        self.registry = prom.CollectorRegistry()
        self._tasks = prom.Counter(
            "cb_worker_tasks",
            "Tasks finished, by executor kind and status",
            ["executor", "status"],
            registry=self.registry,
        )
        self._duration = prom.Histogram(
            "cb_worker_task_duration_seconds",
            "Seconds a task's run took, by executor kind",
            ["executor"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self._retries = prom.Counter(
            "cb_worker_retries",
            "Tasks handed back for a later retry (nak with delay)",
            ["executor"],
            registry=self.registry,
        )
        self._dlq = prom.Counter(
            "cb_worker_dead_letters", "Tasks sent to the dead-letter queue, by reason", ["executor", "reason"],
            registry=self.registry,
        )  # fmt: skip
        self._inflight = prom.Gauge("cb_worker_in_flight", "Tasks running now", ["executor"], registry=self.registry)

    @property
    def available(self) -> bool:
        return self.registry is not None

    def _child(self, metric: str, *labels: str) -> Any:
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = getattr(self, metric).labels(*labels)
        return child

    def finished(self, kind: str, status: str, seconds: float) -> None:
        if self.registry is not None:
            self._child("_tasks", kind, status).inc()
            self._child("_duration", kind).observe(seconds)

    def retried(self, kind: str) -> None:
        if self.registry is not None:
            self._retries.labels(kind).inc()

    def dead_lettered(self, kind: str, reason: str) -> None:
        if self.registry is not None:
            self._dlq.labels(kind, reason).inc()

    def running(self, kind: str, delta: int) -> None:
        if self.registry is not None:
            self._child("_inflight", kind).inc(delta)

    def render(self) -> bytes:
        import prometheus_client as prom

        return bytes(prom.generate_latest(self.registry))


class MetricsSource(Protocol):
    """What /metrics serves: a worker's :class:`Metrics` or an engine's ``EngineMetrics``."""

    @property
    def available(self) -> bool:
        """False when prometheus-client is not installed (``/metrics`` then answers 501)."""
        ...

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        ...


class Health:
    """What the probes answer, written by the worker's loop: ``ready`` once subscribed with NATS connected."""

    def __init__(self) -> None:
        self.connected = False
        self.streams = False
        self.stopping = False

    @property
    def ready(self) -> bool:
        return self.connected and self.streams and not self.stopping

    def describe(self) -> dict[str, Any]:
        return {"connected": self.connected, "streams": self.streams, "stopping": self.stopping, "ready": self.ready}


class OpsServer:
    """``/healthz`` (the process answers), ``/readyz`` (NATS connected, streams present; 503 otherwise) and
    ``/metrics`` (Prometheus text) on ``host:port`` (port 0: a free one; read ``.port`` after ``start()``)."""

    def __init__(self, health: Health, metrics: MetricsSource, host: str = "127.0.0.1", port: int = 0) -> None:
        self.health = health
        self.metrics = metrics
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="cb-worker-ops", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        ops = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    self._send(200, b'{"status":"ok"}\n', "application/json")
                elif path == "/readyz":
                    body = json.dumps(ops.health.describe()).encode() + b"\n"
                    self._send(200 if ops.health.ready else 503, body, "application/json")
                elif path == "/metrics":
                    if ops.metrics.available:
                        self._send(200, ops.metrics.render(), "text/plain; version=0.0.4; charset=utf-8")
                    else:
                        self._send(501, b"metrics need prometheus-client: pip install circuit-breaker-wf[metrics]\n")
                else:
                    self._send(404, b"not found: /healthz, /readyz, /metrics\n")

            def _send(self, code: int, body: bytes, kind: str = "text/plain; charset=utf-8") -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Probes every few seconds would drown the task logs."""

        return Handler


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the task fields passed in ``extra``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in LOG_FIELDS:
            value = record.__dict__.get(key)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = " ".join(f"{k}={record.__dict__[k]}" for k in LOG_FIELDS if record.__dict__.get(k) is not None)
        return f"{text} [{fields}]" if fields else text


def setup_logging(level: int = logging.INFO, *, json_logs: bool | None = None) -> None:
    """Logs to stderr: JSON lines when stderr is not a terminal (collected by a log shipper), text otherwise."""
    use_json = not sys.stderr.isatty() if json_logs is None else json_logs
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if use_json else _TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("circuit_breaker").setLevel(level)
