"""Distributed execution: workers pull tasks per executor kind from JetStream work queues and publish results.

    from circuit_breaker.workers import Task, Worker, submit_task

The engine side publishes a :class:`Task` with :func:`submit_task` and reads :class:`TaskResult` messages from
``CB_RESULTS``; on recovery it looks one task up with :func:`task_queued` and :func:`stored_result`.
``circuit-breaker worker`` runs a :class:`Worker`. The protocol models live in :mod:`circuit_breaker.tasks`
(no NATS import) and are re-exported here; the protocol is in docs/nats-protocol.md.
"""

from ..tasks import DeadLetter, DeadLetterReason, Task, TaskResult, parse_task, result_msg_id, task_msg_id
from ._ops import Health, Metrics, OpsServer, setup_logging
from ._queue import (
    drop_dead_letter,
    ensure_task_streams,
    get_dead_letter,
    list_dead_letters,
    pending_tasks,
    queued_task,
    results,
    retry_dead_letter,
    stored_result,
    submit_task,
    task_queued,
)
from ._worker import Worker, backoff_delay

__all__ = [
    "DeadLetter",
    "DeadLetterReason",
    "Health",
    "Metrics",
    "OpsServer",
    "Task",
    "TaskResult",
    "Worker",
    "backoff_delay",
    "drop_dead_letter",
    "ensure_task_streams",
    "get_dead_letter",
    "list_dead_letters",
    "parse_task",
    "pending_tasks",
    "queued_task",
    "result_msg_id",
    "results",
    "retry_dead_letter",
    "setup_logging",
    "stored_result",
    "submit_task",
    "task_msg_id",
    "task_queued",
]
