"""Seed style: drive a workflow synchronously, without an engine, as the original Ruby seed did.

``wf.add_token(Token(data=...))`` places a token in the initial place and ``wf.fire(token, "submit")`` fires
exactly that transition and returns the token it produced. Everything stays in memory, in this process:
handy in scripts, notebooks and unit tests of a workflow's rules. Uses the reference document review
workflow from ``workflows/document_review.py``.

    python examples/seed_style.py
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python examples/seed_style.py`: make the project root (where workflows/ and rules/ live) importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from circuit_breaker import Token
from circuit_breaker.errors import TransitionNotEnabledError, TransitionRejectedError
from workflows.document_review import workflow as wf

CONTENT = (
    "Revenue grew by eight percent this quarter. Costs stayed flat. "
    "The new region broke even in its second month. We propose to keep the plan unchanged."
)


def main() -> None:
    doc = wf.add_token(
        Token(
            data={
                "title": "Quarterly report",
                "author": "ann@example.com",
                "approver": "bob@example.com",
                "priority": "normal",
                "sections": ["summary", "figures"],
                "content": CONTENT,
            }
        )
    )
    print(f"added: {doc.place}")
    doc = wf.fire(doc, "submit", actor="ann@example.com")
    print(f"submit -> {doc.place}")
    doc = wf.fire(doc, "review", actor="carol@example.com")
    print(f"review -> {doc.place} (clarity {doc.data['clarity_score']}, {doc.data['word_count']} words)")
    doc = wf.fire(doc, "approve", actor="bob@example.com")
    print(f"approve -> {doc.place}")
    for entry in doc.history:
        print(f"  {entry.kind:8} {entry.transition or '':8} -> {','.join(entry.to_places):15} {entry.actor or ''}")

    # A draft that breaks the rules: the firing raises and the token stays where it was.
    note = wf.add_token(Token(data={"title": "Note", "author": "ann@example.com", "content": "Too short."}))
    try:
        wf.fire(note, "submit")
    except TransitionRejectedError as err:
        print("submit rejected:")
        for message in err.errors:
            print(f"  - {message}")
    try:
        wf.fire(note, "approve")
    except TransitionNotEnabledError as err:
        print(f"approve not enabled: {'; '.join(err.reasons)}")

    places = sorted(t.place or "" for t in wf.tokens)
    print(f"tokens now in: {places}")
    if places != ["approved", "draft"]:
        raise SystemExit(f"unexpected places {places}")


if __name__ == "__main__":
    main()
