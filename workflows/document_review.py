"""Document review: an author submits a draft, a reviewer scores it, an approver approves or rejects it.

    draft --submit--> pending_review --review--> reviewed --approve--> approved
      ^                                              |
      +------------revise------- rejected <--reject--+

Every transition is manual: people decide when a draft is ready, when it has been read and whether it
passes. The policies decide whether their decision is allowed:

- ``submit`` needs ``title``, ``content`` and ``author`` (validations: the transition is not even enabled
  without them) and then the rules ``word_count``, ``completeness``, ``no_placeholders`` and
  ``known_priority``; a failure rejects the submission with the failing rule's message.
- ``review`` is the reviewer's act; its action scores the prose (``clarity_score``, ``word_count``) and the
  rule ``clarity_in_range`` checks what the action produced.
- ``approve`` requires a valid approver who is not the author (``approver_valid``, ``four_eyes``) and either
  a high/urgent priority or a clear enough text (``approvable``).
- ``reject`` sends the document to ``rejected``; ``revise`` takes it back to ``draft`` for another round,
  counting rounds in ``revision``.

``pending_review`` and ``reviewed`` are review places: their tokens are the queues people work through.
``approved`` is the only final place, so a rejected document waits until someone revises it.

Start it with data such as::

    {"title": "Quarterly report", "author": "ann@example.com", "approver": "bob@example.com",
     "priority": "high", "sections": ["summary", "figures"], "content": "..."}
"""

from __future__ import annotations

import re
from typing import Any

from circuit_breaker import Token, Workflow
from rules.document_rules import document_rules, word_count_of

__all__ = ["clarity_score", "workflow"]

workflow = Workflow(
    "document_review",
    rules=document_rules,
    desc="submit, review and approve or reject documents, with a rework loop",
)

draft, pending_review, reviewed, approved, rejected = workflow.states(
    "draft", "pending_review", "reviewed", "approved", "rejected", review=["pending_review", "reviewed"]
)

_SENTENCE_END = re.compile(r"[.!?]+(?:\s+|$)")


def clarity_score(text: str) -> float:
    """A crude readability score in [0, 1]: 1.0 up to 20 words per sentence, falling to 0 at 50.

    Crude on purpose: the point is that the review step produces a number the approval rules can judge.
    """
    sentences = [s for s in _SENTENCE_END.split(text) if s.strip()]
    if not sentences:
        return 0.0
    per_sentence = word_count_of(text) / len(sentences)
    return round(max(0.0, min(1.0, 1.0 - (per_sentence - 20) / 30)), 2)


workflow.flow(
    draft >> pending_review,
    "submit",
    trigger="manual",
    validations={"all": ["title", "content", "author"]},
    rules={"all": ["word_count", "completeness", "no_placeholders", "known_priority"]},
    desc="the author hands the draft over for review",
)


@workflow.flow(
    pending_review >> reviewed,
    "review",
    trigger="manual",
    rules={"all": ["clarity_in_range"]},
    desc="a reviewer reads the document; its clarity is scored",
)
def review(token: Token) -> dict[str, Any]:
    """Score the text so that ``approve`` can judge it by rules rather than by the reviewer's mood."""
    content = str(token.data.get("content", ""))
    return {"clarity_score": clarity_score(content), "word_count": word_count_of(content)}


workflow.flow(
    reviewed >> approved,
    "approve",
    trigger="manual",
    rules={"all": ["approver_valid", "four_eyes", "approvable"]},
    desc="the approver signs the document off",
)


@workflow.flow(reviewed >> rejected, "reject", trigger="manual", desc="the approver sends the document back")
def reject(token: Token) -> dict[str, Any]:
    """Count rejections, so a document going round in circles is easy to spot."""
    return {"rejections": int(token.data.get("rejections", 0)) + 1}


@workflow.flow(rejected >> draft, "revise", trigger="manual", desc="the author takes the document back to rework it")
def revise(token: Token) -> dict[str, Any]:
    """Start the next revision; ``review`` scores it afresh before anyone can approve it."""
    return {"revision": int(token.data.get("revision", 0)) + 1}
