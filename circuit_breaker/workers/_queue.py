"""The task streams and what engines, operators and tests do with them: submit, read results, count what waits,
and handle dead letters (list, show, retry, drop).

``CB_TASKS`` is a work queue (a task is deleted once a worker acknowledged it; discard-new, so a full stream
refuses a task instead of dropping one); ``CB_RESULTS`` and ``CB_DLQ`` keep messages (``stream.max_age``
applies) so an engine can read results durably and an operator can inspect dead letters.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import nats.errors
from nats.js.api import DeliverPolicy, DiscardPolicy, RetentionPolicy
from nats.js.errors import NotFoundError

from ..config import StreamSettings
from ..errors import DeadLetterError
from ..nats._store import ensure_stream
from ..nats._subjects import (
    DLQ_PREFIX,
    DLQ_STREAM,
    RESULT_PREFIX,
    RESULTS_STREAM,
    TASK_PREFIX,
    TASKS_STREAM,
    result_subject,
    task_subject,
)
from ._protocol import DeadLetter, Task, TaskResult, task_msg_id

__all__ = [
    "drop_dead_letter",
    "ensure_task_streams",
    "get_dead_letter",
    "list_dead_letters",
    "pending_tasks",
    "results",
    "retry_dead_letter",
    "submit_task",
]

MSG_ID = "Nats-Msg-Id"
PUBLISH_TIMEOUT = 5.0


async def ensure_task_streams(js: Any, settings: StreamSettings) -> None:
    """Create (or check, never change) ``CB_TASKS``, ``CB_RESULTS`` and ``CB_DLQ``."""
    await ensure_stream(
        js,
        TASKS_STREAM,
        [f"{TASK_PREFIX}.>"],
        settings,
        retention=RetentionPolicy.WORK_QUEUE,
        discard=DiscardPolicy.NEW,
        holds="tasks",
    )
    await ensure_stream(js, RESULTS_STREAM, [f"{RESULT_PREFIX}.>"], settings, holds="task results")
    await ensure_stream(js, DLQ_STREAM, [f"{DLQ_PREFIX}.>"], settings, holds="dead letters")


async def submit_task(js: Any, task: Task, *, timeout: float = PUBLISH_TIMEOUT) -> bool:
    """Publish ``task`` for the workers of its kind; False when the stream already had this attempt (a retried
    publish within the duplicate window), True when it is new."""
    ack = await js.publish(
        task_subject(task.kind),
        task.model_dump_json().encode(),
        timeout=timeout,
        headers={MSG_ID: task_msg_id(task.task_id, task.attempt)},
    )
    return not ack.duplicate


async def results(
    js: Any, *, workflow: str | None = None, instance_id: str | None = None, timeout: float = 2.0
) -> list[TaskResult]:
    """Every stored result (of one workflow or instance), in the order stored; for tests and scripts (an engine
    reads them with a durable consumer instead)."""
    subject = result_subject(workflow or "*", instance_id or "*")
    return [TaskResult.model_validate_json(data) for _, data in await _read_all(js, RESULTS_STREAM, subject, timeout)]


async def pending_tasks(js: Any) -> dict[str, int]:
    """Tasks waiting (or in a worker's hands) per executor kind: a kind no worker serves shows up here."""
    try:
        info = await js.stream_info(TASKS_STREAM, subjects_filter=f"{TASK_PREFIX}.>")
    except NotFoundError:
        return {}
    subjects = info.state.subjects or {}
    return {subject[len(TASK_PREFIX) + 1 :]: int(count) for subject, count in sorted(subjects.items())}


async def list_dead_letters(js: Any, *, timeout: float = 2.0) -> list[tuple[int, DeadLetter]]:
    """Every dead letter with its id (its sequence in ``CB_DLQ``), oldest first."""
    try:
        stored = await _read_all(js, DLQ_STREAM, f"{DLQ_PREFIX}.>", timeout)
    except NotFoundError:
        return []
    return [(seq, DeadLetter.model_validate_json(data)) for seq, data in stored]


async def get_dead_letter(js: Any, entry: int) -> DeadLetter:
    try:
        msg = await js.get_msg(DLQ_STREAM, entry)
    except NotFoundError:
        raise DeadLetterError(f"no dead letter {entry} in {DLQ_STREAM}", entry=entry) from None
    return DeadLetter.model_validate_json(msg.data or b"{}")


async def retry_dead_letter(js: Any, entry: int) -> Task:
    """Put the dead letter's task back on its queue as the next attempt, then remove the entry; returns the task.

    Publish first, delete second: a crash in between leaves the entry, and retrying it again publishes the
    same attempt id, which the stream drops within its duplicate window.
    """
    letter = await get_dead_letter(js, entry)
    if letter.task is None:
        raise DeadLetterError(
            f"dead letter {entry} holds no task (reason {letter.reason}: {letter.message}); drop it instead",
            entry=entry,
        )
    task = letter.task.model_copy(update={"attempt": letter.task.attempt + 1})
    await submit_task(js, task)
    await drop_dead_letter(js, entry)
    return task


async def drop_dead_letter(js: Any, entry: int) -> None:
    try:
        await js.delete_msg(DLQ_STREAM, entry)
    except NotFoundError:
        raise DeadLetterError(f"no dead letter {entry} in {DLQ_STREAM}", entry=entry) from None


async def _read_all(js: Any, stream: str, subject: str, timeout: float) -> list[tuple[int, bytes]]:
    """Every message on ``subject`` stored now, through an ephemeral pull consumer that acknowledges nothing."""
    info = await js.stream_info(stream)
    last = info.state.last_seq
    out: list[tuple[int, bytes]] = []
    if info.state.messages == 0:
        return out
    sub = await js.pull_subscribe(subject, stream=stream, config=_scan_config())
    try:
        while True:
            try:
                batch = await sub.fetch(512, timeout=timeout)
            except nats.errors.TimeoutError:
                break  # nothing more on this subject (fetch raises instead of returning [])
            for msg in batch:
                seq = msg.metadata.sequence.stream
                out.append((seq, msg.data))
            if batch and batch[-1].metadata.sequence.stream >= last:
                break
            if batch and batch[-1].metadata.num_pending == 0:
                break
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(sub.unsubscribe(), timeout)
    return out


def _scan_config() -> Any:
    from nats.js.api import AckPolicy, ConsumerConfig

    return ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=30.0)
