"""The NATS subject and stream layout: the one place that spells subjects, so every part (and the docs) agree.

Any NATS client can use these names; they are part of the public protocol (see docs/nats-protocol.md):

=============================================  ==================================================================
``cb.ev.<workflow>.<instance>.<event type>``    every state change of an instance, in stream ``CB_EVENTS``
``cb.inject.<workflow>``                        request/reply: start an instance (JSON in, JSON reply out)
``cb.inbox.<workflow>``                         fire-and-forget injection, stream ``CB_INBOX``, de-duplicated
                                                by the ``Nats-Msg-Id`` header
``cb.ctl.<workflow>.<verb>``                    request/reply to a serving engine: ``fire``, ``retry``,
                                                ``pause``, ``resume``, ``cancel`` an instance
``cb.task.<executor kind>.<task id>``           a task for the workers serving that executor, stream ``CB_TASKS``
                                                (work queue; the workers of a kind filter ``cb.task.<kind>.>``)
``cb.result.<workflow>.<instance>.<task id>``   a task's outcome, stream ``CB_RESULTS``
``cb.dlq.<executor kind>.<task id>``            dead letters: tasks no worker could finish, stream ``CB_DLQ``
                                                (malformed task messages on ``cb.dlq.<executor kind>``)
=============================================  ==================================================================

Workflow and instance names are plain tokens (letters, digits, ``_`` and ``-``), checked when a workflow is
defined and when an instance id is given, so they can never add a level to a subject or act as a wildcard.
Filters: ``cb.ev.data_pipeline.>`` (one workflow), ``cb.ev.*.<instance>.*`` (one instance),
``cb.ev.*.*.transition_fired`` (one event type). Task ids are plain tokens too: the task and its results can be
read by subject (the last message on ``cb.task.<kind>.<task id>`` or ``cb.result.<wf>.<instance>.<task id>``).
"""

from __future__ import annotations

import uuid

__all__ = [
    "CONTROL_PREFIX",
    "DLQ_PREFIX",
    "DLQ_STREAM",
    "EVENTS_STREAM",
    "MARKS_BUCKET",
    "EVENT_PREFIX",
    "INBOX_PREFIX",
    "INBOX_STREAM",
    "HELLO_SUBJECT",
    "POKE_SUBJECT",
    "PROBE_SUBJECT",
    "INJECT_PREFIX",
    "RESULTS_STREAM",
    "RESULT_PREFIX",
    "TASKS_STREAM",
    "TASK_PREFIX",
    "control_subject",
    "dlq_subject",
    "event_filter",
    "event_subject",
    "inbox_subject",
    "inject_subject",
    "instance_filter",
    "instance_id_for",
    "result_filter",
    "result_subject",
    "task_filter",
    "task_subject",
    "worker_durable",
]

EVENTS_STREAM = "CB_EVENTS"
MARKS_BUCKET = "CB_MARKS"  # KV: per event stream and workflow, the position below which every instance finished
INBOX_STREAM = "CB_INBOX"
EVENT_PREFIX = "cb.ev"
INJECT_PREFIX = "cb.inject"
INBOX_PREFIX = "cb.inbox"

_DEDUPE_NAMESPACE = uuid.UUID("6f0c1a52-8f5e-4c3e-9d8e-3c2b1a0f9e71")


def event_subject(workflow: str, instance_id: str, event_type: str) -> str:
    return f"{EVENT_PREFIX}.{workflow}.{instance_id}.{event_type}"


def instance_filter(instance_id: str, workflow: str | None = None) -> str:
    """Every event of one instance (the subject the per-instance concurrency check is made on)."""
    return f"{EVENT_PREFIX}.{workflow or '*'}.{instance_id}.*"


def event_filter(workflow: str | None = None, instance_id: str | None = None, event_type: str | None = None) -> str:
    """A subject filter for events; None means any."""
    if workflow is not None and instance_id is None and event_type is None:
        return f"{EVENT_PREFIX}.{workflow}.>"
    return f"{EVENT_PREFIX}.{workflow or '*'}.{instance_id or '*'}.{event_type or '*'}"


def inject_subject(workflow: str) -> str:
    return f"{INJECT_PREFIX}.{workflow}"


def inbox_subject(workflow: str) -> str:
    return f"{INBOX_PREFIX}.{workflow}"


def instance_id_for(workflow: str, dedupe_id: str) -> str:
    """The instance id an injection with ``dedupe_id`` gets: the same id every time, so a repeated injection
    finds the instance the first one started instead of starting another (for ever, not just for the
    stream's duplicate window)."""
    return uuid.uuid5(_DEDUPE_NAMESPACE, f"{workflow}\x00{dedupe_id}").hex


CONTROL_PREFIX = "cb.ctl"


def control_subject(workflow: str, verb: str) -> str:
    """Requests to a serving engine about one workflow's instances (``fire``, ``retry``, ``cancel``...)."""
    return f"{CONTROL_PREFIX}.{workflow}.{verb}"


TASKS_STREAM = "CB_TASKS"
RESULTS_STREAM = "CB_RESULTS"
DLQ_STREAM = "CB_DLQ"
TASK_PREFIX = "cb.task"
RESULT_PREFIX = "cb.result"
DLQ_PREFIX = "cb.dlq"


def task_subject(kind: str, task_id: str) -> str:
    """Where one task waits for a worker of its executor kind (its last token is the task id, so the task can be
    looked up in ``CB_TASKS`` by subject)."""
    return f"{TASK_PREFIX}.{kind}.{task_id}"


def task_filter(kind: str) -> str:
    """Every task of one executor kind: the filter of the kind's shared durable consumer."""
    return f"{TASK_PREFIX}.{kind}.>"


def result_subject(workflow: str, instance_id: str, task_id: str) -> str:
    """Where a task's outcome goes: per instance and task, so an engine can read one instance's results in order
    and look up the newest result of one task by subject."""
    return f"{RESULT_PREFIX}.{workflow}.{instance_id}.{task_id}"


def result_filter(workflow: str | None = None, instance_id: str | None = None) -> str:
    """A subject filter for results; None means any (``cb.result.>``, ``cb.result.<wf>.>``,
    ``cb.result.<wf or *>.<instance>.*``)."""
    if instance_id is not None:
        return f"{RESULT_PREFIX}.{workflow or '*'}.{instance_id}.*"
    if workflow is not None:
        return f"{RESULT_PREFIX}.{workflow}.>"
    return f"{RESULT_PREFIX}.>"


def dlq_subject(kind: str, task_id: str | None = None) -> str:
    """Where a dead letter goes: per task (``cb.dlq.<kind>.<task_id>``), so that the engine can remove a task's
    letters by subject once it hands the task out again; a malformed message, with no task id, on
    ``cb.dlq.<kind>``."""
    return f"{DLQ_PREFIX}.{kind}" if task_id is None else f"{DLQ_PREFIX}.{kind}.{task_id}"


def worker_durable(kind: str) -> str:
    """The durable consumer every worker serving ``kind`` shares, like a consumer group."""
    return f"cb-workers-{kind}"


HELLO_SUBJECT = "cb.engines.hello"
"""Engines announce themselves here (core NATS), so that engines sharing a stream follow each other's events."""

POKE_SUBJECT = "cb.engines.poke"
"""An engine that does not drive (``drive=False``: an observer's manual firing) says here that it wrote to an
instance (a request, ``{"origin", "workflow", "instance_id", "seq"}``, core NATS): the engine driving the instance
reads what it wrote and goes on with it, also when it is alone and so does not follow the stream. Asked again
with ``"unowned": true`` when none answered: the one engine chosen for the instance takes it up."""

PROBE_SUBJECT = "cb.engines.probe"
"""A starting engine asks here (a request) which driving engines already run: each answers with its presence
straight away, and with none running the server's no-responders status answers at once."""
