"""A worker's start-up check that NATS lets it publish where it must, without storing anything.

A worker whose user may not publish results or dead letters would otherwise start cleanly and then run every
task it gets, fail to report it, and run it again on the next delivery. So before it takes a task it publishes
one probe to each subject it will publish to:

- stored subjects (results ``cb.result.>``, dead letters ``cb.dlq.<kind>.>`` and ``cb.dlq.<kind>``) with the
  header ``Nats-Expected-Stream`` naming a stream that cannot exist (stream names hold no spaces): a stream
  that may take the message refuses it with an API error (10060, "expected stream does not match"), so a
  refusal is the proof that the publish is allowed, and nothing is stored;
- acknowledgements (``$JS.ACK.CB_TASKS.cb-workers-<kind>.>``: ack, nak, in-progress): an in-progress for
  stream sequence 0, which no consumer has pending, so the server ignores it.

A denied publish is answered by the server with a permissions violation that nats-py hands to the connection's
error callback (the worker's ``note_nats_error``), before the answer to the flush that follows; the probe of
a stored subject then gets no answer at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from nats.js.errors import APIError

from ..errors import WorkerError
from ..nats._subjects import RESULT_PREFIX, TASKS_STREAM, dlq_subject, worker_durable

__all__ = ["check_publish", "publish_probes"]

EXPECTED_STREAM = "Nats-Expected-Stream"
NO_STREAM = "no such stream: a worker's start-up check"  # a name no stream can have (it holds spaces)
WRONG_STREAM = 10060  # JetStream: "expected stream does not match": the publish reached a stream, and was refused
PROBE_ID = "cb-permission-check"  # stands for a task id (and a workflow and instance id) in the probes' subjects
PROBE_TIMEOUT = 5.0


def publish_probes(kinds: Sequence[str]) -> tuple[list[str], list[str]]:
    """The subjects a worker serving ``kinds`` publishes to: (stored ones, acknowledgement ones)."""
    stored = [f"{RESULT_PREFIX}.{PROBE_ID}.{PROBE_ID}.{PROBE_ID}"]
    for kind in kinds:
        stored += [dlq_subject(kind, PROBE_ID), dlq_subject(kind)]
    acks = [f"$JS.ACK.{TASKS_STREAM}.{worker_durable(kind)}.1.0.0.0.0" for kind in kinds]
    return stored, acks


async def check_publish(
    nc: Any, acks: Any, kinds: Sequence[str], errors_since: Callable[[int], list[str]], mark: int
) -> None:
    """Raise :class:`WorkerError` naming the first subject a worker serving ``kinds`` publishes to that NATS does
    not let this connection publish to. ``acks`` is the worker's ``AckedPublisher``; ``errors_since(mark)`` the
    NATS errors the connection's error callback noted since ``mark``."""
    stored, ack_subjects = publish_probes(kinds)
    loop = asyncio.get_running_loop()
    probes = [
        loop.create_task(acks.publish(subject, b"", {EXPECTED_STREAM: NO_STREAM}, PROBE_TIMEOUT)) for subject in stored
    ]
    try:
        for subject in ack_subjects:
            await nc.publish(subject, b"+WPI")
        await nc.flush(PROBE_TIMEOUT)  # the server answers a denied publish before this flush's PONG
        _refuse_denied(errors_since(mark))
        outcomes = await asyncio.gather(*probes, return_exceptions=True)
    finally:
        for probe in probes:
            probe.cancel()
    for subject, outcome in zip(stored, outcomes, strict=True):
        if isinstance(outcome, BaseException) and not _refused_by_stream(outcome):
            _refuse_denied(errors_since(mark))  # (a violation reported late)
            raise WorkerError(
                f"worker cannot start: NATS did not accept a test publish to {subject!r} (it publishes task results "
                f"and dead letters there): {type(outcome).__name__}: {outcome or 'no answer'}; check that this NATS "
                "user may publish to cb.result.> and cb.dlq.>",
                subject=subject,
            )


def _refused_by_stream(outcome: BaseException) -> bool:
    return isinstance(outcome, APIError) and outcome.err_code == WRONG_STREAM


def _refuse_denied(noted: list[str]) -> None:
    denied = next((e for e in noted if "permission" in e.lower()), None)
    if denied is not None:
        raise WorkerError(
            f"worker cannot start: NATS refused it: {denied} (a worker publishes task results to cb.result.>, dead "
            "letters to cb.dlq.> and acknowledgements to $JS.ACK.CB_TASKS.>)",
            subject=subject_of(denied),
        )


def subject_of(text: str) -> str | None:
    """The subject quoted in a server's permissions violation message, if any."""
    parts = text.split('"')
    return parts[1] if len(parts) >= 3 else None
