"""Events: subscribe live and replay what happened, filtered by workflow, instance, type and transition.

A subscriber follows the completions of the reference data pipeline (``workflows/data_pipeline.py``) while
three instances run; one of them waits for a person, who approves it. Afterwards the stored events are
replayed with filters: the firings of one instance, every rejection (why an input needed review), and the
approvals. ``event.model_dump_json()`` is the form services in other languages read.

    python examples/events.py
"""

from __future__ import annotations

import asyncio
import sys
from contextlib import aclosing
from pathlib import Path

# Run as `python examples/events.py`: make the project root (where workflows/ and rules/ live) importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from circuit_breaker import Engine, EventType
from circuit_breaker.events import TransitionFired, TransitionRejected
from workflows.data_pipeline import workflow as pipeline

CLEAN = "id,city\n" + "".join(f"{i},city{i}\n" for i in range(12))
PATCHY = "id,city\n1,Oslo\n2,\n3,Lima\n"


async def follow_completions(engine: Engine, expected: int) -> list[str]:
    """Live subscription: stored events first, then new ones as they happen, until ``expected`` completions."""
    done: list[str] = []
    stream = engine.events(workflow="data_pipeline", types=[EventType.INSTANCE_COMPLETED], follow=True)
    async with aclosing(stream) as events:  # closing the iterator ends the subscription
        async for event in events:
            done.append(event.instance_id)
            print(f"[live] instance {event.instance_id[:8]} completed (event #{event.seq})")
            if len(done) == expected:
                break
    return done


async def main() -> None:
    async with Engine() as engine:
        engine.register(pipeline)
        subscriber = asyncio.create_task(follow_completions(engine, expected=3))

        ids = [(await engine.start("data_pipeline", {"csv": text})).id for text in (CLEAN, CLEAN, PATCHY)]
        waiting = [inst for inst in [await engine.wait(i, timeout=5) for i in ids] if inst.places == ["human_review"]]
        print(f"{len(waiting)} instance waits in human_review; approving it")
        await engine.fire(waiting[0].id, "approve", actor="dana@example.com")

        completed = await asyncio.wait_for(subscriber, timeout=5)
        if sorted(completed) != sorted(ids):
            raise SystemExit("the subscriber missed a completion")

        print("firings of the reviewed instance:")
        async for event in engine.events(instance=waiting[0].id, types=[EventType.TRANSITION_FIRED]):
            assert isinstance(event, TransitionFired)
            print(
                f"  #{event.seq} {event.transition} -> {[t.place for t in event.produced]} by {event.actor or 'engine'}"
            )

        print("rejections in the workflow:")
        async for event in engine.events(workflow="data_pipeline", types=["transition_rejected"]):
            assert isinstance(event, TransitionRejected)
            print(f"  {event.instance_id[:8]} {event.transition}: {'; '.join(event.errors)}")

        approvals = [e async for e in engine.events(transition="approve")]
        wire = approvals[0].model_dump_json()
        print(f"the approval as JSON ({len(wire)} characters): {wire[:100]}...")
        print(f"{len(completed)} completions seen live, {len(approvals)} approval replayed")


if __name__ == "__main__":
    asyncio.run(main())
