"""``dlq retry`` against engines of earlier versions (a rolling upgrade), each played by a responder on the control
subject that answers as that version did: one that refuses the ``attempt`` field is asked again without it; one
that refuses ``task_id`` gets the direct publish that ``dlq retry`` always made."""

from __future__ import annotations

import json
from typing import Any

import nats

from circuit_breaker.config import StreamSettings
from circuit_breaker.nats._control import retry_dead_letter_via_engine
from circuit_breaker.tasks import DeadLetter
from circuit_breaker.workers import list_dead_letters, queued_task
from circuit_breaker.workers._queue import ensure_task_streams

from .conftest import make_task

SET = {"executor": "set", "params": {"values": {"ok": True}}}


async def letter_for(js: Any) -> tuple[int, DeadLetter]:
    await ensure_task_streams(js, StreamSettings())
    task = make_task(SET)
    letter = DeadLetter(
        reason="max_deliver", message="failed 3 times", subject="x", task=task, deliveries=3, worker="w"
    )
    await js.publish(f"cb.dlq.set.{task.task_id}", letter.model_dump_json().encode())
    ((entry, stored),) = await list_dead_letters(js)
    return entry, stored


async def older_engine(nc: Any, refuses: str, asked: list[dict[str, Any]]) -> Any:
    async def answer(msg: Any) -> None:
        request = json.loads(msg.data)
        asked.append(request)
        if refuses in request:
            reply = {"error": {"code": "invalid_request", "message": f"{refuses}: Extra inputs are not permitted"}}
        else:
            task = {"task_id": request["task_id"], "attempt": 2, "transition": "run", "executor": "set"}
            reply = {"instance": {"id": request["instance_id"], "status": "running", "tasks": [task]}}
        await msg.respond(json.dumps(reply).encode())

    return await nc.subscribe("cb.ctl.wf.retry", cb=answer)


async def test_an_engine_that_refuses_the_attempt_field_is_asked_again_without_it(fresh_nats: str) -> None:
    nc = await nats.connect(fresh_nats)
    try:
        js = nc.jetstream()
        entry, letter = await letter_for(js)
        asked: list[dict[str, Any]] = []
        await older_engine(nc, "attempt", asked)
        done = await retry_dead_letter_via_engine(nc, entry, actor="ops", timeout=5)
        assert done.by_engine and done.task.attempt == 2
        assert [("attempt" in a, a["task_id"]) for a in asked] == [
            (True, letter.task.task_id),
            (False, letter.task.task_id),
        ]  # type: ignore[union-attr]
        assert await list_dead_letters(js) == []  # removed once the engine took it
        assert await queued_task(js, "set", letter.task.task_id) is None  # type: ignore[union-attr]  # not published by the CLI
    finally:
        await nc.close()


async def test_an_engine_from_before_task_retries_gets_the_direct_publish(fresh_nats: str) -> None:
    nc = await nats.connect(fresh_nats)
    try:
        js = nc.jetstream()
        entry, letter = await letter_for(js)
        asked: list[dict[str, Any]] = []
        await older_engine(nc, "task_id", asked)
        done = await retry_dead_letter_via_engine(nc, entry, actor="ops", timeout=5)
        assert not done.by_engine and done.task.attempt == 2 and len(asked) == 1
        queued = await queued_task(js, "set", letter.task.task_id)  # type: ignore[union-attr]
        assert queued is not None and queued.attempt == 2
        assert await list_dead_letters(js) == []
    finally:
        await nc.close()
