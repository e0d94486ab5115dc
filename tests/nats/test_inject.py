"""Injecting over NATS: request/reply and the durable inbox, with an engine on JetStream and a real nats-server.

Every test starts from empty streams (``fresh_nats``). Requests are sent both through :class:`Client` and as
raw bytes with nats-py, since services in other languages send raw bytes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import timedelta
from typing import Any

import jsonschema
import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig

from circuit_breaker import Engine, Instance, InstanceStatus, Workflow
from circuit_breaker.config import StreamSettings
from circuit_breaker.errors import InjectError, StreamConfigError
from circuit_breaker.nats import (
    INBOX_STREAM,
    Client,
    InjectService,
    JetStreamStore,
    ensure_inbox_stream,
    inject_reply_schema,
    inject_request_schema,
)
from circuit_breaker.nats._subjects import instance_id_for

from .inject_support import eventually, orders_workflow, review_workflow, serving

GOOD = {"item": "lamp", "qty": 2}


async def request(url: str, subject: str, payload: bytes) -> dict[str, Any]:
    """A raw request, as a service in another language sends it; the decoded reply."""
    nc = await nats.connect(url)
    try:
        msg = await nc.request(subject, payload, timeout=5)
    finally:
        await nc.close()
    reply: dict[str, Any] = json.loads(msg.data)
    jsonschema.validate(reply, inject_reply_schema())
    return reply


async def started(client: Client, engine: Engine, instance_id: str, timeout: float = 10.0) -> Instance:
    """Wait until the instance's start is stored (the inbox is asynchronous), then until it settles.

    Polling ``engine.get`` instead can catch the engine in the middle of ``start`` (see the report)."""
    async with client.events(instance=instance_id, types=["token_injected"]) as events:
        await asyncio.wait_for(anext(events), timeout)
    return await engine.wait(instance_id, timeout)


async def starts(client: Client, workflow: str) -> int:
    return len([e async for e in client.events(workflow, types=["token_injected"], follow=False)])


async def inbox_messages(url: str) -> int:
    nc = await nats.connect(url)
    try:
        return int((await nc.jetstream().stream_info(INBOX_STREAM)).state.messages)
    finally:
        await nc.close()


# -- request/reply -------------------------------------------------------------------------------------------
async def test_inject_starts_an_instance_that_runs(fresh_nats: str) -> None:
    async with serving(fresh_nats, orders_workflow()) as (engine, _), Client(servers=[fresh_nats]) as client:
        instance_id = await client.inject("orders", GOOD, actor="shop")
        done = await engine.wait(instance_id, timeout=5)
    assert done.status is InstanceStatus.COMPLETED
    assert done.places == ["packed"] and done.data == {
        "item": "lamp",
        "qty": 2,
        "packed": True,
    }  # (the action's result is kept)
    assert done.history[0].actor == "shop"


async def test_a_raw_request_gets_the_documented_reply(fresh_nats: str) -> None:
    async with serving(fresh_nats, orders_workflow()) as (engine, _):
        body = {"data": GOOD, "dedupe_id": "order-7"}
        jsonschema.validate(body, inject_request_schema())
        reply = await request(fresh_nats, "cb.inject.orders", json.dumps(body).encode())
        assert reply == {"instance_id": instance_id_for("orders", "order-7"), "duplicate": False}
        assert (await engine.wait(reply["instance_id"], timeout=5)).status is InstanceStatus.COMPLETED


async def test_the_same_dedupe_id_answers_with_the_first_instance(fresh_nats: str) -> None:
    async with serving(fresh_nats, orders_workflow()) as (engine, _), Client(servers=[fresh_nats]) as client:
        first = await client.inject_reply("orders", GOOD, dedupe_id="req-1")
        again = await client.inject_reply("orders", {"item": "other", "qty": 9}, dedupe_id="req-1")
        other = await client.inject("orders", GOOD, dedupe_id="req-2")
        assert (first.duplicate, again.duplicate) == (False, True)
        assert again.instance_id == first.instance_id != other
        instances = await engine.instances("orders")
        assert sorted(i.id for i in instances) == sorted([first.instance_id, other])
        assert (await engine.get(first.instance_id)).data["item"] == "lamp"  # the first injection's data won


async def test_two_engines_start_one_instance_per_dedupe_id(fresh_nats: str) -> None:
    async with (
        serving(fresh_nats, orders_workflow()) as (one, _),
        serving(fresh_nats, orders_workflow()) as (two, _),
        Client(servers=[fresh_nats]) as client,
    ):
        keys = [f"req-{i}" for i in range(20)]
        replies = await asyncio.gather(*(client.inject_reply("orders", GOOD, dedupe_id=k) for k in keys * 3))
        ids = {k: {r.instance_id for r in replies[i :: len(keys)]} for i, k in enumerate(keys)}
        assert all(len(v) == 1 for v in ids.values()), ids
        assert sum(not r.duplicate for r in replies) == len(keys)
        # The stream is the truth: exactly one start event per dedupe id, whichever engine answered.
        started = [e.instance_id async for e in client.events("orders", types=["token_injected"], follow=False)]
        assert sorted(started) == sorted(instance_id_for("orders", k) for k in keys)
        for iid in started:
            await one.wait(iid, timeout=5)
            await two.wait(iid, timeout=5)


BAD_REQUESTS = [
    ("cb.inject.orders", b"{not json", "malformed_json", None),
    ("cb.inject.orders", b"\xff\xfe", "malformed_json", None),
    ("cb.inject.orders", b"[1, 2]", "not_an_object", None),
    ("cb.inject.orders", b'"text"', "not_an_object", None),
    ("cb.inject.orders", b'{"data": [1]}', "not_an_object", "data"),
    ("cb.inject.orders", b'{"item": "lamp", "qty": 2}', "invalid_request", "item"),  # a bare object is refused
    ("cb.inject.orders", b'{"data": {}, "dedupe_id": ""}', "invalid_request", "dedupe_id"),
    ("cb.inject.orders", b'{"data": {}, "actor": 5}', "invalid_request", "actor"),
    ("cb.inject.nope", b'{"data": {}}', "unknown_workflow", None),
    ("cb.inject.orders", b'{"data": {"item": "lamp", "qty": 0}}', "invalid_data", "qty"),
    ("cb.inject.orders", b'{"data": {"qty": 1}}', "invalid_data", "item"),
    ("cb.inject.orders", b'{"data": {"item": "\\ud800", "qty": 1}}', "invalid_data", "item"),  # no UTF-8 for it
    ("cb.inject.orders", b'{"data": {}, "actor": "a\\udc00"}', "invalid_request", "actor"),
    ("cb.inject.orders", b'{"data": {}, "actor": "a\\u001b[2Jb"}', "invalid_request", "actor"),  # a terminal escape
    ("cb.inject.orders", json.dumps({"data": {"item": "x" * 5000, "qty": 1}}).encode(), "payload_too_large", None),
]


async def test_every_bad_request_gets_its_code_and_the_service_keeps_serving(fresh_nats: str) -> None:
    async with serving(fresh_nats, orders_workflow(), max_payload=4096) as (engine, _):
        for subject, payload, code, field in BAD_REQUESTS:
            reply = await request(fresh_nats, subject, payload)
            error = reply.get("error")
            assert error is not None and error["code"] == code, (payload[:40], reply)
            assert error.get("field") == field, (payload[:40], reply)
            if field is not None:
                assert field in error["message"], error  # the message names the field
            assert error["retryable"] is False
        assert await engine.instances() == []
        reply = await request(fresh_nats, "cb.inject.orders", json.dumps({"data": GOOD}).encode())
        assert (await engine.wait(reply["instance_id"], timeout=5)).status is InstanceStatus.COMPLETED


async def test_a_number_too_long_for_python_is_invalid_data_saying_so(fresh_nats: str) -> None:
    """Valid JSON that Python will not read (over 4300 digits): found in a walk-through, it was answered
    malformed_json quoting Python's advice to call sys.set_int_max_str_digits()."""
    async with serving(fresh_nats, orders_workflow()):
        payload = b'{"data": {"item": "x", "qty": ' + b"9" * 5000 + b"}}"
        error = (await request(fresh_nats, "cb.inject.orders", payload))["error"]
        assert error["code"] == "invalid_data" and "send it as a string" in error["message"], error
        assert "sys." not in error["message"]


async def test_data_that_fits_a_request_but_not_an_event_is_payload_too_large(fresh_nats: str) -> None:
    """Found in a walk-through: with the default limits (the server's max_payload) a request just under the limit
    was answered invalid_data about an internal event, with no field; it is the size, and nothing is stored."""
    async with serving(fresh_nats, orders_workflow()) as (engine, _):
        nc = await nats.connect(fresh_nats)
        limit = nc.max_payload
        await nc.close()
        payload = json.dumps({"data": {"item": "x" * (limit - 200), "qty": 1}}).encode()
        assert len(payload) < limit
        error = (await request(fresh_nats, "cb.inject.orders", payload))["error"]
        assert error["code"] == "payload_too_large" and f"max_payload {limit}" in error["message"], error
        assert await engine.instances() == []


async def test_engines_of_different_projects_share_one_nats_with_the_defaults(fresh_nats: str) -> None:
    """Found in a walk-through: with answer_unknown (the default) one project's engine answered 'unknown
    workflow' to about half the requests for the other's, and terminated half of its inbox messages, which
    JetStream had acknowledged. Each workflow's requests reach an engine that runs it; only a workflow that no
    engine runs is answered unknown_workflow, naming the ones that run."""
    async with (
        serving(fresh_nats, orders_workflow()) as (orders_engine, _),
        serving(fresh_nats, review_workflow()) as (reviews_engine, _),
        Client(servers=[fresh_nats]) as client,
    ):
        for _ in range(8):
            assert not (await client.inject_reply("orders", GOOD)).duplicate
            assert not (await client.inject_reply("reviews", {})).duplicate
        for workflow, data, engine in [("orders", GOOD, orders_engine), ("reviews", {}, reviews_engine)] * 6:
            accepted = await client.publish(workflow, data)
            await started(client, engine, accepted.instance_id)
        assert len(await orders_engine.instances("orders")) == 14
        assert len(await reviews_engine.instances("reviews")) == 14
        with pytest.raises(InjectError) as unknown:
            await client.inject("invoices", {})
        assert unknown.value.code == "unknown_workflow"
        assert "orders" in unknown.value.message and "reviews" in unknown.value.message


async def test_inbox_messages_for_a_workflow_nobody_runs_hold_up_nothing(fresh_nats: str) -> None:
    """Found in a review: every engine handed such messages back, and 256 of them in hand filled the one shared
    consumer, so the inbox stopped for every workflow. Each workflow has its own consumer now: they wait in the
    stream, untouched, until an engine runs their workflow."""
    async with serving(fresh_nats, orders_workflow()) as (engine, _), Client(servers=[fresh_nats]) as client:
        for n in range(300):
            await client.jetstream.publish("cb.inbox.otherproj", json.dumps({"data": {"n": n}}).encode())
        accepted = await client.publish("orders", GOOD)
        await started(client, engine, accepted.instance_id, timeout=5)
        assert await inbox_messages(fresh_nats) == 300  # still there, for an engine that runs 'otherproj'
    otherproj = Workflow("otherproj")
    a, b = otherproj.states("a", "b")
    otherproj.flow(a >> b, "go")
    async with serving(fresh_nats, otherproj) as (other, _):
        await eventually(lambda: _zero(inbox_messages(fresh_nats)), timeout=30)
        assert len(await other.instances("otherproj")) == 300


async def test_a_workflow_registered_while_serving_is_served_by_one_engine(fresh_nats: str) -> None:
    """Found in a review: a workflow registered after the service started was answered from the queue group of
    unknown workflows as well as by an engine that had it from the start, so one request started two instances."""
    async with (
        serving(fresh_nats, orders_workflow()) as (first, _),
        serving(fresh_nats, review_workflow()) as (second, _),
        Client(servers=[fresh_nats]) as client,
    ):
        second.register(orders_workflow())
        await asyncio.sleep(1.5)  # (the service follows registrations every second)
        replies = [await client.inject_reply("orders", GOOD) for _ in range(20)]
        assert len({r.instance_id for r in replies}) == 20
        started_ids = [e.instance_id async for e in client.events("orders", types=["token_injected"], follow=False)]
        assert sorted(started_ids) == sorted(r.instance_id for r in replies)  # one instance per request
        accepted = await client.publish("orders", GOOD)  # its inbox too: one of the two engines takes it
        await eventually(lambda: _zero(inbox_messages(fresh_nats)))
        assert accepted.instance_id in {e.instance_id async for e in client.events("orders", follow=False)}


async def test_a_request_right_after_a_workflow_is_registered_is_answered(fresh_nats: str) -> None:
    """From a review: the first requests for a workflow registered a moment ago got no answer at all (the
    caller waited out its timeout) until the service's next look at the registrations."""
    async with serving(fresh_nats, orders_workflow()) as (engine, _), Client(servers=[fresh_nats]) as client:
        engine.register(review_workflow())
        reply = await client.inject_reply("reviews", {}, timeout=5)
        assert not reply.duplicate and (await engine.get(reply.instance_id)).workflow == "reviews"


async def test_a_workflow_only_an_engine_without_an_inject_service_runs_is_answered_unknown(fresh_nats: str) -> None:
    """Found in a review: such a request got no answer at all (a timeout), because the engine runs the workflow.
    What counts is which engines take injections for it, and they say so."""
    async with (
        Engine(store=JetStreamStore(servers=[fresh_nats]), workflows=[review_workflow()]),  # (no inject service)
        serving(fresh_nats, orders_workflow()),
        Client(servers=[fresh_nats]) as client,
    ):
        with pytest.raises(InjectError) as unknown:
            await client.inject("reviews", {}, timeout=5)
        assert unknown.value.code == "unknown_workflow" and "orders" in unknown.value.message


async def test_the_inbox_consumer_all_workflows_shared_is_replaced_without_losing_a_message(fresh_nats: str) -> None:
    """Before each workflow had its own inbox consumer, the engines shared one over all of cb.inbox.>; a work-queue
    stream takes no overlapping consumers, so it goes, and what it held is taken by the workflow's own."""
    async with Client(servers=[fresh_nats]) as client:
        js = client.jetstream
        await ensure_inbox_stream(js, StreamSettings())
        await js.add_consumer(
            INBOX_STREAM,
            ConsumerConfig(durable_name="cb-engines", filter_subject="cb.inbox.>", ack_policy=AckPolicy.EXPLICIT),
        )
        waiting = await client.publish("orders", GOOD)
        async with serving(fresh_nats, orders_workflow()) as (engine, _):
            await started(client, engine, waiting.instance_id)
        names = [c.name for c in await js.consumers_info(INBOX_STREAM)]
        assert "cb-engines" not in names and "cb-engines-orders" in names


async def test_the_client_raises_inject_error_with_the_code_and_field(fresh_nats: str) -> None:
    async with serving(fresh_nats, orders_workflow()), Client(servers=[fresh_nats]) as client:
        with pytest.raises(InjectError) as caught:
            await client.inject("orders", {"item": "lamp", "qty": -1})
        assert (caught.value.code, caught.value.field) == ("invalid_data", "qty")
        assert "qty" in caught.value.message
        with pytest.raises(InjectError) as unknown:
            await client.inject("nope", {})
        assert unknown.value.code == "unknown_workflow"
        assert "orders" in unknown.value.message  # says which workflows the engine has
        with pytest.raises(ValueError, match="invalid"):
            await client.inject("bad.name", {})
        # Just under the server's limit as a payload, over it with the headers: refused before it goes out (the
        # server would close the connection), and the client goes on working.
        limit = client.connection.max_payload
        with pytest.raises(InjectError) as too_large:
            await client.publish("orders", {"item": "x" * (limit - 60), "qty": 1}, dedupe_id="big")
        assert too_large.value.code == "payload_too_large" and "headers" in too_large.value.message
        assert (await client.publish("orders", {"item": "lamp", "qty": 1})).seq > 0
        for bad in ({"item": "\ud800", "qty": 1}, {"\udc00": 1}):  # what no UTF-8 text can carry, as a value or key
            for call in (client.publish, client.inject):
                with pytest.raises(InjectError) as surrogate:
                    await call("orders", bad)
                assert surrogate.value.code == "invalid_data" and "surrogate" in surrogate.value.message


async def test_publish_says_unavailable_when_the_connection_is_gone(fresh_nats: str) -> None:
    """NATS failures reach the caller as InjectError (retryable or not), never as nats-py's own exceptions."""
    client = Client(servers=[fresh_nats])
    await client.open()
    await client.connection.close()
    for call in (lambda: client.publish("orders", GOOD), lambda: client.inject("orders", GOOD)):
        with pytest.raises(InjectError) as caught:
            await call()
        assert caught.value.code == "unavailable" and not caught.value.retryable, caught.value


async def test_without_an_engine_the_client_says_no_engine_serves_the_workflow(fresh_nats: str) -> None:
    async with Client(servers=[fresh_nats]) as client:
        with pytest.raises(InjectError) as caught:
            await client.inject("orders", GOOD)
    assert caught.value.code == "no_responders"
    assert "no engine serves workflow 'orders'" in caught.value.message


async def test_engines_running_other_workflows_can_leave_unknown_ones_unanswered(fresh_nats: str) -> None:
    async with (
        serving(fresh_nats, orders_workflow(), answer_unknown=False) as (_, service),
        Client(servers=[fresh_nats]) as client,
    ):
        assert service.subjects == ["cb.inject.orders"]
        await client.inject("orders", GOOD)
        with pytest.raises(InjectError) as caught:
            await client.inject("reviews", {})
        assert caught.value.code == "no_responders"


async def test_a_request_without_reply_subject_is_ignored(fresh_nats: str, caplog: pytest.LogCaptureFixture) -> None:
    async with serving(fresh_nats, orders_workflow()) as (engine, _), Client(servers=[fresh_nats]) as client:
        with caplog.at_level(logging.WARNING, logger="circuit_breaker.nats.inject"):
            await client.connection.publish("cb.inject.orders", json.dumps({"data": GOOD}).encode())
            await client.connection.flush()
            await eventually(lambda: _true(any("without a reply subject" in r.message for r in caplog.records)))
        assert await engine.instances() == []
        assert await client.inject("orders", GOOD)


async def _true(value: bool) -> bool:
    return value


# -- the inbox -------------------------------------------------------------------------------------------------
async def test_an_inbox_message_published_twice_starts_one_instance(fresh_nats: str) -> None:
    async with serving(fresh_nats, orders_workflow()) as (engine, _), Client(servers=[fresh_nats]) as client:
        first = await client.publish("orders", GOOD, dedupe_id="batch-1")
        again = await client.publish("orders", GOOD, dedupe_id="batch-1")
        assert (first.duplicate, again.duplicate) == (False, True)  # the server's duplicate window
        assert first.instance_id == again.instance_id == instance_id_for("orders", "batch-1")
        assert (await started(client, engine, first.instance_id)).status is InstanceStatus.COMPLETED
        await eventually(lambda: _zero(inbox_messages(fresh_nats)))
        assert [i.id for i in await engine.instances()] == [first.instance_id]


async def _zero(count: Any) -> bool:
    return await count == 0


async def _one(count: Any) -> bool:
    return await count == 1


async def test_the_inbox_dedupes_for_ever_not_just_within_the_window(fresh_nats: str) -> None:
    settings = StreamSettings(duplicate_window=timedelta(seconds=1))
    async with (
        serving(fresh_nats, orders_workflow(), settings=settings) as (engine, _),
        Client(servers=[fresh_nats]) as client,
    ):
        first = await client.publish("orders", GOOD, dedupe_id="batch-2")
        await started(client, engine, first.instance_id)
        await asyncio.sleep(1.2)
        late = await client.publish("orders", {"item": "late", "qty": 1}, dedupe_id="batch-2")
        assert not late.duplicate  # the server forgot it: the deterministic instance id catches it
        await eventually(lambda: _zero(inbox_messages(fresh_nats)))
        assert [i.id for i in await engine.instances()] == [first.instance_id]
        assert (await engine.get(first.instance_id)).data["item"] == "lamp"


async def test_bad_inbox_messages_are_terminated_and_the_next_good_one_is_processed(
    fresh_nats: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving(fresh_nats, orders_workflow()) as (engine, _), Client(servers=[fresh_nats]) as client:
        js = client.jetstream
        with caplog.at_level(logging.WARNING, logger="circuit_breaker.nats.inbox"):
            await js.publish("cb.inbox.orders", b"{oops")
            await js.publish("cb.inbox.orders", b'{"data": {"item": "lamp", "qty": 0}}')
            await js.publish("cb.inbox.nope", b'{"data": {}}')  # no engine runs it: it waits for one that will
            await js.publish("cb.inbox.orders", b'{"data": {"item": "\\ud800", "qty": 1}}')  # at once, no retries
            # A header taken as the dedupe id has dedupe_id's form (found in a walk-through: 300 characters were
            # taken here, while request/reply refused the same id, so a retry over it could not find the instance).
            await js.publish("cb.inbox.orders", json.dumps({"data": GOOD}).encode(), headers={"Nats-Msg-Id": "y" * 300})
            good = await client.publish("orders", GOOD)
            await started(client, engine, good.instance_id)
            await eventually(lambda: _one(inbox_messages(fresh_nats)))  # only 'nope' waits for a redelivery
        reasons = [r.getMessage() for r in caplog.records if "terminated" in r.getMessage()]
        assert len(reasons) == 4, reasons

        assert any("invalid_request" in r and "Nats-Msg-Id" in r for r in reasons)
        assert any("invalid_data" in r and "lone surrogate" in r for r in reasons)
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "no traceback for the caller's data"
        assert any("malformed_json" in r for r in reasons)
        assert any("invalid_data" in r and "qty" in r for r in reasons)
        assert [i.id for i in await engine.instances()] == [good.instance_id]


async def test_a_raw_inbox_message_with_only_the_msg_id_header_is_deduplicated(fresh_nats: str) -> None:
    async with serving(fresh_nats, orders_workflow()) as (engine, _), Client(servers=[fresh_nats]) as client:
        payload = json.dumps({"data": GOOD}).encode()
        for _ in range(2):
            await client.jetstream.publish("cb.inbox.orders", payload, headers={"Nats-Msg-Id": "raw-1"})
        iid = instance_id_for("orders", "raw-1")
        await started(client, engine, iid)
        # Without any dedupe id the instance id is random, but still one instance per message.
        await client.jetstream.publish("cb.inbox.orders", payload)
        await eventually(lambda: _zero(inbox_messages(fresh_nats)))
        await asyncio.sleep(0.2)
        assert await starts(client, "orders") == 2


async def test_the_inbox_keeps_tokens_until_an_engine_starts(fresh_nats: str) -> None:
    async with Client(servers=[fresh_nats]) as client:
        published = await client.publish("orders", GOOD, dedupe_id="early")  # creates the inbox stream
        assert await inbox_messages(fresh_nats) == 1
        async with serving(fresh_nats, orders_workflow()) as (engine, _):
            assert (await started(client, engine, published.instance_id)).status is InstanceStatus.COMPLETED


async def test_an_incompatible_inbox_stream_is_refused_and_left_alone(fresh_nats: str) -> None:
    nc = await nats.connect(fresh_nats)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=INBOX_STREAM, subjects=["cb.inbox.>"], retention=RetentionPolicy.LIMITS))
        await js.publish("cb.inbox.orders", b'{"data": {}}')
        async with Engine(workflows=[orders_workflow()]) as engine:
            service = InjectService(engine, nc)
            with pytest.raises(StreamConfigError, match="retention"):
                await service.start()
            await service.stop()
        info = await js.stream_info(INBOX_STREAM)
        assert info.config.retention == RetentionPolicy.LIMITS and info.state.messages == 1
    finally:
        await nc.close()


async def test_the_service_goes_on_after_the_server_restarts(tmp_path: Any) -> None:
    from circuit_breaker.testing.nats import nats_server

    async with nats_server(tmp_path) as server:
        async with serving(server.url, orders_workflow()) as (engine, _), Client(servers=[server.url]) as client:
            await client.inject("orders", GOOD)
            await server.stop()
            await server.start()
            # Request/reply: the subscription is restored with the connection.
            iid = await _retrying(lambda: client.inject("orders", GOOD, dedupe_id="after-restart"))
            assert (await engine.wait(iid, timeout=10)).status is InstanceStatus.COMPLETED
            # The inbox: the pull subscription is made again.
            published = await _retrying(lambda: client.publish("orders", GOOD, dedupe_id="inbox-after"))
            await started(client, engine, published.instance_id, timeout=20)


async def _retrying(call: Any, timeout: float = 20.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await call()
        except InjectError as err:
            if not err.retryable or asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)


# -- schemas ---------------------------------------------------------------------------------------------------
def test_schemas_describe_request_and_replies() -> None:
    req = inject_request_schema()
    assert req["additionalProperties"] is False and set(req["properties"]) == {"data", "dedupe_id", "actor"}
    jsonschema.validate({"data": {"a": 1}, "dedupe_id": "x"}, req)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"a": 1}, req)
    reply = inject_reply_schema()
    jsonschema.validate({"instance_id": "abc", "duplicate": True}, reply)
    jsonschema.validate({"error": {"code": "invalid_data", "message": "m", "field": "qty", "retryable": False}}, reply)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"error": {"code": "nonsense", "message": "m"}}, reply)


async def test_stopping_the_inbox_returns_even_when_its_fetch_does_not_end(fresh_nats: str) -> None:
    """A fetch cancelled while NATS is gone may never end (nats-py's next_msg); stop() must still return, or
    serve would hang on Ctrl-C."""
    from circuit_breaker.nats._inbox import InboxConsumer

    async def handler(workflow: str, request: Any, key: str | None) -> Any:
        raise AssertionError("no message expected")

    nc = await nats.connect(fresh_nats)
    try:
        inbox = InboxConsumer(nc, handler, settings=StreamSettings(), durable="cb-test-unending")
        await inbox.start()
        assert inbox._task is not None
        inbox._task.cancel()
        release = asyncio.Event()

        async def unending() -> None:
            while not release.is_set():
                try:
                    await release.wait()
                except asyncio.CancelledError:
                    continue  # as the hung fetch did: the cancellation never ends it

        loop = asyncio.get_running_loop()
        inbox._task = loop.create_task(unending())
        stopping = loop.create_task(inbox.stop())
        returned, _ = await asyncio.wait({stopping}, timeout=10)
        release.set()  # (so that nothing is left hanging either way)
        await asyncio.wait({stopping}, timeout=5)
        assert returned, "stop() waited for a fetch loop that does not end"
    finally:
        await nc.close()


async def test_an_injection_into_a_closed_engine_is_refused_as_retryable() -> None:
    """Found in review: the engine's refusal after it closed became a non-retryable internal error; the inbox
    then gave the message up after a few attempts instead of leaving it to the next engine."""
    from circuit_breaker.nats._inject import start_instance
    from circuit_breaker.nats._protocol import InjectRequest

    async with Engine(workflows=[orders_workflow()]) as engine:
        pass
    with pytest.raises(InjectError) as refused:
        await start_instance(engine, "orders", InjectRequest(data={"item": "book", "qty": 1}))
    assert refused.value.code == "unavailable" and refused.value.retryable
    assert "the engine is closed" in str(refused.value)
