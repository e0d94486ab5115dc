"""Quickstart: the DSL end to end with an engine.

Defines a small workflow (rules, states, ``>>`` flows, an action, an automatic choice and a manual review),
runs two instances, approves the one that needs a person, prints its history and exports it as JSON, YAML
and CSV.

    python examples/quickstart.py
"""

from __future__ import annotations

import asyncio
from typing import Any

from circuit_breaker import Engine, History, RuleSet, Token, Workflow
from circuit_breaker.rules import length, presence

# -- rules: expressions, helpers and callables, referred to by name -----------------------------------------
rules = RuleSet()
rules.add("has_text", presence("text"), desc="there is something to score")
rules.add("not_huge", length("text", max=10_000), desc="long texts go elsewhere")
rules.add("high_quality", "quality_score >= 0.8 and status != 'error'", desc="good enough to publish unread")

# -- the workflow: the first state is the initial place; human_review is a review queue ---------------------
wf = Workflow("quickstart", rules=rules)
inbox, scored, human_review, published = wf.states(
    "inbox", "scored", "human_review", "published", review=["human_review"]
)


@wf.flow(inbox >> scored, "score", validations={"all": ["text"]}, rules={"all": ["has_text", "not_huge"]})
async def score(token: Token) -> dict[str, Any]:
    """The action's result is merged into the token data, where the next rules can judge it."""
    words = token.data["text"].split()
    distinct = len({w.lower() for w in words}) / len(words) if words else 0.0
    return {"quality_score": round(distinct, 2), "status": "scored"}


# Two automatic flows out of `scored` form a choice, tried in declaration order.
wf.flow(scored >> published, "publish", rules={"all": ["high_quality"]})
wf.flow(scored >> human_review).transition("escalate")
wf.flow(human_review >> published, "approve", trigger="manual")


async def main() -> None:
    async with Engine() as engine:
        engine.register(wf)
        good = await engine.start("quickstart", {"text": "Every word here is different from the others"})
        poor = await engine.start("quickstart", {"text": "spam spam spam spam eggs spam"})

        good_done = await engine.wait(good.id, timeout=5)
        poor_waiting = await engine.wait(poor.id, timeout=5)
        print(f"good: {good_done.status} in {good_done.places} (quality {good_done.data['quality_score']})")
        print(f"poor: {poor_waiting.status} in {poor_waiting.places}, can fire {poor_waiting.enabled_manual}")

        approved = await engine.fire(poor.id, "approve", actor="reviewer@example.com")
        approved = await engine.wait(approved.id, timeout=5)
        print(f"poor after approval: {approved.status} in {approved.places}")

        # The instance's history is the audit trail: it also shows why `publish` was not taken.
        print("history of the approved instance:")
        for entry in approved.history:
            route = f"{','.join(entry.from_places) or '-'} -> {','.join(entry.to_places) or '-'}"
            note = "; ".join(entry.details.get("errors", [])) or entry.details.get("status") or entry.actor or ""
            print(f"  {entry.kind:9} {entry.transition or '':9} {route:26} {note}")

        # Each token carries its own history; export it and read it back.
        token = approved.tokens[0]
        exports = {fmt: token.export_history(fmt) for fmt in ("json", "yaml", "csv")}
        readers = {"json": History.from_json, "yaml": History.from_yaml, "csv": History.from_csv}
        for fmt, text in exports.items():
            if readers[fmt](text) != token.history:
                raise SystemExit(f"history did not round-trip through {fmt}")
        print("token history as CSV:")
        print(exports["csv"], end="")
        print(f"exported {len(token.history)} history entries as JSON, YAML and CSV; all round-trip")


if __name__ == "__main__":
    asyncio.run(main())
