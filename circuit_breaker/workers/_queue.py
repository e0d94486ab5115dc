"""The task streams and what engines, operators and tests do with them: submit, read results, count what waits,
look one task up (still queued? its newest result?), and handle dead letters (list, show, retry, drop).

``CB_TASKS`` is a work queue (a task is deleted once a worker acknowledged it; discard-new, so a full stream
refuses a task instead of dropping one); ``CB_RESULTS`` and ``CB_DLQ`` keep messages (``stream.max_age``
applies) so an engine can read results durably and an operator can inspect dead letters.

Tasks and results carry the task id as their last subject token, so :func:`task_queued` and
:func:`stored_result` are one request each: the stream's last message on that subject (``allow_direct`` is on
for every stream, see :func:`~circuit_breaker.nats._store.ensure_stream`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from typing import Any

import nats.errors
from nats.js.api import DeliverPolicy, DiscardPolicy, RetentionPolicy
from nats.js.errors import APIError, NotFoundError

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
    dlq_subject,
    result_filter,
    result_subject,
    task_subject,
)
from ..tasks import DeadLetter, Task, TaskResult, parse_task, task_msg_id

__all__ = [
    "dead_lettered",
    "drop_dead_letter",
    "ensure_task_streams",
    "get_dead_letter",
    "list_dead_letters",
    "pending_tasks",
    "results",
    "retry_dead_letter",
    "stored_result",
    "submit_task",
    "task_queued",
]

MSG_ID = "Nats-Msg-Id"
PUBLISH_TIMEOUT = 5.0
STREAM_NOT_FOUND = 10059  # JetStream error code: the stream itself is missing (not just the message)

# JetStream: no message found; stream store EOF (past the end); sequence not found (deleted, or purged by subject)
NO_SUCH_MESSAGE = (10037, 10057, 10043)


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
        task_subject(task.kind, task.task_id),
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
    subject = result_filter(workflow, instance_id)
    return [TaskResult.model_validate_json(data) for _, data in await _read_all(js, RESULTS_STREAM, subject, timeout)]


async def pending_tasks(js: Any) -> dict[str, int]:
    """Tasks waiting (or in a worker's hands) per executor kind: a kind no worker serves shows up here.

    An operator's call: it reads the stream's count per subject, one subject per task, so it costs O(pending)."""
    counts: Counter[str] = Counter()
    offset = 0
    while True:
        try:
            page = await js._api_request(
                f"{js._prefix}.STREAM.INFO.{TASKS_STREAM}",
                json.dumps({"subjects_filter": f"{TASK_PREFIX}.>", "offset": offset}).encode(),
                timeout=PUBLISH_TIMEOUT,
            )
        except NotFoundError:
            return {}
        subjects: dict[str, int] = page.get("state", {}).get("subjects") or {}
        for subject, count in subjects.items():
            counts[subject[len(TASK_PREFIX) + 1 :].split(".", 1)[0]] += int(count)
        offset += len(subjects)
        if not subjects or offset >= int(page.get("total") or 0):
            break  # the server sends at most 100,000 subjects per answer; "total" says how many there are
    return dict(sorted(counts.items()))


async def task_queued(js: Any, kind: str, task_id: str, *, direct: bool = True) -> bool:
    """Whether a message of this task is still in ``CB_TASKS``: waiting, or in a worker's hands (a worker
    acknowledges it only after its result, or its dead letter, is stored). One request.

    ``direct`` reads through the stream's direct-get API, which any replica may answer; with replicated streams
    pass ``direct=False`` to ask the stream leader (read-after-write, one JetStream API request). A missing
    stream, or any other NATS error, is raised."""
    return await _last_msg(js, TASKS_STREAM, task_subject(kind, task_id), direct) is not None


async def queued_task(js: Any, kind: str, task_id: str, *, direct: bool = True) -> Task | None:
    """The task's message still in ``CB_TASKS`` (its newest attempt), or None; as :func:`task_queued`."""
    msg = await _last_msg(js, TASKS_STREAM, task_subject(kind, task_id), direct)
    return None if msg is None else parse_task(msg.data or b"{}")


async def stored_result(
    js: Any, workflow: str, instance_id: str, task_id: str, *, direct: bool = True
) -> TaskResult | None:
    """The newest result stored in ``CB_RESULTS`` for this task (any attempt), or None. One request; ``direct``
    as for :func:`task_queued`."""
    msg = await _last_msg(js, RESULTS_STREAM, result_subject(workflow, instance_id, task_id), direct)
    return None if msg is None else TaskResult.model_validate_json(msg.data or b"{}")


async def _last_msg(js: Any, stream: str, subject: str, direct: bool) -> Any:
    """The stream's last message on ``subject``, None when it has none; other errors (the stream missing) raise."""
    try:
        return await js.get_last_msg(stream, subject, direct=direct)
    except NotFoundError as err:
        if err.err_code == STREAM_NOT_FOUND:
            raise
        return None  # a direct get answers 404 with no code; the API answers 10037 "no message found"


async def list_dead_letters(js: Any, *, timeout: float = 2.0) -> list[tuple[int, DeadLetter]]:
    """Every dead letter with its id (its sequence in ``CB_DLQ``), oldest first."""
    try:
        stored = await _read_all(js, DLQ_STREAM, f"{DLQ_PREFIX}.>", timeout)
    except NotFoundError:
        return []
    return [(seq, DeadLetter.model_validate_json(data)) for seq, data in stored]


async def get_dead_letter(js: Any, entry: int) -> DeadLetter:
    if entry < 1:  # (the server answers a bad request, not "not found")
        raise DeadLetterError(f"no dead letter {entry} in {DLQ_STREAM}: ids start at 1", entry=entry)
    try:
        msg = await js.get_msg(DLQ_STREAM, entry)
    except APIError as err:
        if isinstance(err, NotFoundError) or err.err_code in NO_SUCH_MESSAGE:
            raise DeadLetterError(f"no dead letter {entry} in {DLQ_STREAM}", entry=entry) from None
        raise
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
    if entry < 1:
        raise DeadLetterError(f"no dead letter {entry} in {DLQ_STREAM}: ids start at 1", entry=entry)
    try:
        await js.delete_msg(DLQ_STREAM, entry)
    except APIError as err:
        # Not found, or past the end of the stream ("stream store EOF"): either way there is no such letter.
        if isinstance(err, NotFoundError) or err.err_code in NO_SUCH_MESSAGE:
            raise DeadLetterError(f"no dead letter {entry} in {DLQ_STREAM}", entry=entry) from None
        raise


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


async def dead_lettered(js: Any, kind: str, task_id: str, attempt: int, *, direct: bool = True) -> bool:
    """Whether ``CB_DLQ`` holds the dead letter of this attempt of the task (its newest letter is of it): a worker
    asks before dead-lettering an attempt on a later delivery, so the attempt is dead-lettered once. One request."""
    msg = await _last_msg(js, DLQ_STREAM, dlq_subject(kind, task_id), direct)
    if msg is None:
        return False
    letter = DeadLetter.model_validate_json(msg.data or b"{}")
    return letter.task is not None and letter.task.attempt == attempt
