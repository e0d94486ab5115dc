"""Manual operations over NATS (``cb.ctl.<workflow>.<verb>``), asked with a bare nats-py request as any
language would, answered by a serving engine's ControlService."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest

from circuit_breaker import Engine, Workflow
from circuit_breaker.nats import JetStreamStore
from circuit_breaker.nats._control import ControlService
from tests.conftest import drop_streams


def signed() -> Workflow:
    wf = Workflow("signed")
    draft, pending, done = wf.states("draft", "pending", "done")
    wf.flow(draft >> pending, "submit")

    @wf.flow(pending >> done, "sign", trigger="manual", rules={"all": ["has_signer"]})
    async def sign(token: Any) -> dict[str, Any]:
        await asyncio.sleep(0.5)  # a slow signing service
        return {"signed": True}

    wf.rules.add("has_signer", "signer != null", desc="someone signs")
    return wf


@pytest.fixture
async def served(nats_url: str) -> AsyncIterator[tuple[Engine, Any]]:
    await drop_streams(nats_url)
    async with Engine(store=JetStreamStore(servers=[nats_url]), workflows=[signed()]) as engine:
        nc = await nats.connect(nats_url)
        control = ControlService(engine, nc)
        await control.start()
        yield engine, nc
        await control.stop()
        await nc.close()
    await drop_streams(nats_url)


async def ask(nc: Any, verb: str, request: dict[str, Any] | bytes) -> dict[str, Any]:
    payload = request if isinstance(request, bytes) else json.dumps(request).encode()
    msg = await nc.request(f"cb.ctl.signed.{verb}", payload, timeout=10)
    return json.loads(msg.data)  # type: ignore[no-any-return]


async def test_fire_answers_with_the_instance_afterwards(served: tuple[Engine, Any]) -> None:
    engine, nc = served
    inst = await engine.wait((await engine.start("signed", {})).id, timeout=5)
    reply = await ask(nc, "fire", {"instance_id": inst.id, "transition": "sign", "data": {"signer": "ann"}})
    assert reply["instance"]["status"] == "completed"
    assert reply["instance"]["tokens"][0]["data"] == {"signer": "ann", "signed": True}


async def test_each_refusal_has_its_code(served: tuple[Engine, Any]) -> None:
    engine, nc = served
    inst = await engine.wait((await engine.start("signed", {})).id, timeout=5)
    rejected = await ask(nc, "fire", {"instance_id": inst.id, "transition": "sign"})
    assert rejected["error"]["code"] == "rejected"
    assert rejected["error"]["details"]["errors"], "every failing rule is listed"
    cases = {
        "unknown_transition": {"instance_id": inst.id, "transition": "stamp"},
        "unknown_instance": {"instance_id": "f" * 32, "transition": "sign"},
        "invalid_request": {"instance_id": "*", "transition": "sign"},
    }
    for code, request in cases.items():
        assert (await ask(nc, "fire", request))["error"]["code"] == code, code
    no_task = (await ask(nc, "retry", {"instance_id": inst.id, "task_id": "t1"}))["error"]
    assert no_task["code"] == "instance_state" and "task t1" in no_task["message"], no_task
    assert (await ask(nc, "retry", {"instance_id": inst.id, "task_id": "a.b"}))["error"]["code"] == "invalid_request"
    assert (await ask(nc, "fire", b"{not json"))["error"]["code"] == "invalid_request"
    assert (await ask(nc, "fire", {"instance_id": inst.id}))["error"]["code"] == "invalid_request"
    cancelled = await ask(nc, "cancel", {"instance_id": inst.id, "reason": "withdrawn"})
    assert cancelled["instance"]["status"] == "cancelled"
    late = await ask(nc, "fire", {"instance_id": inst.id, "transition": "sign", "data": {"signer": "bo"}})
    assert late["error"]["code"] == "instance_state"


async def test_a_closed_engine_answers_unavailable_so_that_the_caller_asks_again(
    served: tuple[Engine, Any],
) -> None:
    """Found in review: the engine's refusal after it closed was answered as 'internal', with a traceback logged."""
    engine, nc = served
    inst = await engine.wait((await engine.start("signed", {})).id, timeout=5)
    await engine.close()
    refused = (await ask(nc, "fire", {"instance_id": inst.id, "transition": "sign"}))["error"]
    assert refused["code"] == "unavailable" and "the engine is closed" in refused["message"], refused


async def test_a_slow_action_does_not_hold_up_other_requests(served: tuple[Engine, Any]) -> None:
    engine, nc = served
    ids = [(await engine.wait((await engine.start("signed", {})).id, timeout=5)).id for _ in range(4)]
    started = time.monotonic()
    replies = await asyncio.gather(
        *(ask(nc, "fire", {"instance_id": i, "transition": "sign", "data": {"signer": "x"}}) for i in ids)
    )
    assert all(r["instance"]["status"] == "completed" for r in replies)
    assert time.monotonic() - started < 1.5, "four 0.5 s signatures ran side by side"


async def test_an_instance_too_large_for_one_message_is_answered_without_its_bulk(nats_url: str) -> None:
    await drop_streams(nats_url)
    wf = Workflow("bulky")
    s, x, y, x2, z, done = wf.states("s", "x", "y", "x2", "z", "done")
    wf.flow(s >> (x, y), "fork")  # each event carries two copies of the data: 800 KB, under 1 MB
    wf.flow(x >> (x2, z), "more")
    wf.flow(x2 >> done, "touch", trigger="manual")
    async with Engine(store=JetStreamStore(servers=[nats_url]), workflows=[wf]) as engine:
        nc = await nats.connect(nats_url)
        control = ControlService(engine, nc)
        await control.start()
        try:
            blob = "x" * 400_000  # three tokens carry it at the end: 1.2 MB, above the server's 1 MB max_payload
            inst = await engine.wait((await engine.start("bulky", {"blob": blob})).id, timeout=10)
            assert inst.status.value == "waiting", inst.status
            msg = await nc.request(
                "cb.ctl.bulky.fire", json.dumps({"instance_id": inst.id, "transition": "touch"}).encode(), timeout=10
            )
            reply = json.loads(msg.data)
            assert reply["truncated"] == ["history", "token data"]
            assert reply["instance"]["id"] == inst.id and reply["instance"]["status"] == "completed"
            assert sorted(t["place"] for t in reply["instance"]["tokens"]) == ["done", "y", "z"]
            after = await engine.get(inst.id)
            assert all(t.data["blob"] == blob for t in after.tokens), "nothing was cut from the state"

            too_big = await engine.start("bulky", {"blob": "y" * 600_000})  # its fork would be a 1.2 MB event
            failed = await engine.wait(too_big.id, timeout=10)
            assert failed.status.value == "failed"
            reason = failed.history.to_records()[-1]["details"]["reason"]
            assert "max_payload" in reason and "transition_fired" in reason
        finally:
            await control.stop()
            await nc.close()
    await drop_streams(nats_url)


async def test_firing_before_anything_was_stored_names_the_unknown_instance(fresh_nats: str) -> None:
    """Found in review: with no events stream yet, the lookup of the instance's workflow had nobody to answer
    it, and the CLI showed a NoRespondersError traceback."""
    from circuit_breaker.errors import UnknownInstanceError
    from circuit_breaker.nats._control import request_fire

    nc = await nats.connect(fresh_nats)
    try:
        with pytest.raises(UnknownInstanceError, match="abc"):
            await request_fire(nc, "abc", "run", timeout=5)
    finally:
        await nc.close()


async def test_stopping_with_a_grace_period_cancels_a_manual_firing_that_outlasts_it(nats_url: str) -> None:
    """What a stopping ``serve`` does: a manual action being answered gets the grace period, not for ever; the
    firing is not stored, its token stays where it was, and the asker is told at once."""
    await drop_streams(nats_url)
    wf = Workflow("slow_manual")
    a, b = wf.states("a", "b")
    began = asyncio.Event()

    @wf.flow(a >> b, "approve", trigger="manual")
    async def approve(token: Any) -> dict[str, Any]:
        began.set()
        await asyncio.sleep(60)
        return {}

    async with Engine(store=JetStreamStore(servers=[nats_url]), workflows=[wf]) as engine:
        nc = await nats.connect(nats_url)
        control = ControlService(engine, nc)
        await control.start()
        try:
            inst = await engine.wait((await engine.start("slow_manual", {})).id, timeout=5)
            body = json.dumps({"instance_id": inst.id, "transition": "approve"}).encode()
            asking = asyncio.create_task(nc.request("cb.ctl.slow_manual.fire", body, timeout=30))
            await asyncio.wait_for(began.wait(), 5)
            t0 = time.monotonic()
            await control.stop(grace=0.5)
            assert time.monotonic() - t0 < 3
            after = await engine.get(inst.id)
            assert after.status.value == "waiting" and [t.place for t in after.tokens] == ["a"]
            answer = json.loads((await asyncio.wait_for(asking, 5)).data)  # (found in a walk-through: no answer)
            assert answer["error"]["code"] == "unavailable" and "stopped before" in answer["error"]["message"]
        finally:
            await control.stop()
            await nc.close()
    await drop_streams(nats_url)


async def test_a_request_on_one_workflows_subject_cannot_touch_another_workflows_instance(nats_url: str) -> None:
    """Found in a walk-through: the subject's workflow was never checked, so a caller allowed only
    cb.ctl.signed.> (NATS permissions are per subject) could cancel or fire any instance the engine served."""
    await drop_streams(nats_url)
    other = Workflow("ledger")
    open_, closed = other.states("open", "closed")
    other.flow(open_ >> closed, "close", trigger="manual")
    async with Engine(store=JetStreamStore(servers=[nats_url]), workflows=[signed(), other]) as engine:
        nc = await nats.connect(nats_url)
        control = ControlService(engine, nc)
        await control.start()
        try:
            entry = await engine.wait((await engine.start("ledger", {})).id, timeout=5)
            for verb, request in [
                ("cancel", {"instance_id": entry.id}),
                ("fire", {"instance_id": entry.id, "transition": "close"}),
                ("pause", {"instance_id": entry.id}),
            ]:
                refused = (await ask(nc, verb, request))["error"]  # (asked on cb.ctl.signed.<verb>)
                assert refused["code"] == "unknown_instance" and "'signed'" in refused["message"], (verb, refused)
            assert (await engine.get(entry.id)).status.value == "waiting"  # untouched
            own = await nc.request(
                "cb.ctl.ledger.fire", json.dumps({"instance_id": entry.id, "transition": "close"}).encode(), timeout=10
            )
            assert json.loads(own.data)["instance"]["status"] == "completed"
        finally:
            await control.stop()
            await nc.close()
    await drop_streams(nats_url)
