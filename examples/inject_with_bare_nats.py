"""Inject tokens and follow their events with nothing but a NATS client: no circuit_breaker import.

This is what a service in any language does (docs/nats-protocol.md): a JSON request on
``cb.inject.<workflow>`` answered with the instance id, a fire-and-forget message in the inbox stream with a
``Nats-Msg-Id`` header, and a JetStream consumer filtered to one instance's events. It needs an engine serving
the workflow, e.g. ``circuit-breaker serve`` in this project (the reference ``data_pipeline`` workflow).

    python examples/inject_with_bare_nats.py [NATS_URL] [WORKFLOW] [DATA_JSON]

The URL defaults to ``$CB_NATS_URL``, then ``nats://127.0.0.1:4222``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid

import nats
from nats.js.api import ConsumerConfig, DeliverPolicy

# The protocol's instance ids for dedupe ids: uuid5(NAMESPACE, "<workflow>\0<dedupe id>").hex.
NAMESPACE = uuid.UUID("6f0c1a52-8f5e-4c3e-9d8e-3c2b1a0f9e71")
DEFAULT_DATA = {"csv": "id,city\n1,Oslo\n2,Lima\n"}
DONE = {"instance_completed", "instance_status_changed"}  # completed, or waiting / failed / cancelled


def instance_id_for(workflow: str, dedupe_id: str) -> str:
    return uuid.uuid5(NAMESPACE, f"{workflow}\x00{dedupe_id}").hex


async def follow(js: nats.js.JetStreamContext, instance_id: str, timeout: float = 30.0) -> int:
    """Print the instance's events, from its first, until it completes or stops to wait; returns how many."""
    config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    sub = await js.subscribe(f"cb.ev.*.{instance_id}.*", ordered_consumer=True, config=config)
    seen = 0
    try:
        while True:
            msg = await sub.next_msg(timeout=timeout)
            event = json.loads(msg.data)
            seen += 1
            detail = event.get("transition") or event.get("status") or ""
            print(f"  event #{event['seq']} {event['type']} {detail}".rstrip())
            if event["type"] in DONE and event.get("status") != "running":
                return seen
    finally:
        await sub.unsubscribe()


async def main() -> None:
    url = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("CB_NATS_URL", "nats://127.0.0.1:4222")
    workflow = sys.argv[2] if len(sys.argv) > 2 else "data_pipeline"
    data = json.loads(sys.argv[3]) if len(sys.argv) > 3 else DEFAULT_DATA
    run = uuid.uuid4().hex[:8]  # fresh dedupe ids for each run of the example

    async def quiet(err: Exception) -> None:  # (nats-py prints each failed attempt's traceback otherwise)
        return None

    try:  # one attempt, so that a wrong URL is an error at once, not a loop of retries
        nc = await nats.connect(servers=[url], connect_timeout=2, max_reconnect_attempts=1, error_cb=quiet)
    except Exception as err:
        sys.exit(f"cannot reach NATS at {url} ({type(err).__name__}): pass the URL serve printed, or set CB_NATS_URL")
    js = nc.jetstream()
    try:
        # 1. Request/reply: the engine answers once the instance is stored.
        request = {"data": data, "dedupe_id": f"example-{run}", "actor": "bare-nats-example"}
        msg = await nc.request(f"cb.inject.{workflow}", json.dumps(request).encode(), timeout=5)
        reply = json.loads(msg.data)
        if "error" in reply:
            raise SystemExit(f"refused: {reply['error']['code']}: {reply['error']['message']}")
        first = reply["instance_id"]
        assert first == instance_id_for(workflow, request["dedupe_id"])
        print(f"request/reply: instance {first} (duplicate={str(reply['duplicate']).lower()})")
        again = json.loads((await nc.request(f"cb.inject.{workflow}", json.dumps(request).encode(), timeout=5)).data)
        print(f"same dedupe_id again: instance {again['instance_id']} (duplicate={str(again['duplicate']).lower()})")
        events = await follow(js, first)

        # 2. The inbox: the stream holds the message until an engine has started the instance.
        dedupe_id = f"example-inbox-{run}"
        body = json.dumps({"data": data}).encode()
        acks = [await js.publish(f"cb.inbox.{workflow}", body, headers={"Nats-Msg-Id": dedupe_id}) for _ in range(2)]
        print(f"inbox: stored as seq {acks[0].seq}; the repeat was a duplicate: {str(acks[1].duplicate).lower()}")
        second = instance_id_for(workflow, dedupe_id)
        print(f"inbox: instance {second}")
        events += await follow(js, second)
        print(f"done: 2 instances injected without circuit_breaker, {events} events followed")
    finally:
        await nc.close()


if __name__ == "__main__":
    asyncio.run(main())
