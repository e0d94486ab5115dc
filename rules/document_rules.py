"""Rules for reviewing documents, shared by ``workflows/document_review.py``.

The file doubles as a tour of the rule vocabulary: rule-engine expression strings, plain callables (with the
``@document_rules.rule`` decorator) that return a ``RuleResult`` with a message the author can act on, and the
ready-made helpers (presence, matches, one_of, length, numericality, json_schema, all_of, any_of, none_of,
custom, depends_on). Workflows refer to these rules by name in their policies, so a typo in a name fails when
the workflow is compiled, not when a document arrives.
"""

from __future__ import annotations

import re

from circuit_breaker import RuleResult, RuleSet, Token
from circuit_breaker.rules import (
    all_of,
    any_of,
    custom,
    depends_on,
    json_schema,
    length,
    matches,
    none_of,
    numericality,
    one_of,
    presence,
)

__all__ = ["EMAIL", "MIN_CLARITY", "MIN_WORDS", "PRIORITIES", "document_rules", "word_count_of"]

MIN_WORDS = 20
"""A document shorter than this is a note, not something worth a reviewer's time."""

MIN_CLARITY = 0.7
"""Below this clarity score a normal-priority document needs another pass before it is approved."""

PRIORITIES = ["low", "normal", "high", "urgent"]
EMAIL = r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$"

SECTIONS_SCHEMA = {
    "type": "array",
    "items": {"type": "string", "minLength": 1},
    "minItems": 1,
    "uniqueItems": True,
}
"""A document lists its sections, by name and without repeats."""

_WORD = re.compile(r"\b\w+\b")

document_rules = RuleSet()


def word_count_of(text: object) -> int:
    """Words in ``text`` (0 for anything that is not a string)."""
    return len(_WORD.findall(text)) if isinstance(text, str) else 0


# -- callables with the decorator: the name is the function's name -------------------------------------------
@document_rules.rule(desc=f"content has at least {MIN_WORDS} words")
def word_count(token: Token) -> RuleResult:
    """A failing result says how far off the content is, so the author knows what to fix."""
    n = word_count_of(token.data.get("content"))
    if n < MIN_WORDS:
        return RuleResult.fail(f"content has {n} words; at least {MIN_WORDS} are needed")
    return RuleResult.ok()


def _has_summary(token: Token) -> bool:
    """The busy approver reads the summary first, so every document needs one."""
    sections = token.data.get("sections")
    return isinstance(sections, list) and "summary" in sections


# -- helpers ------------------------------------------------------------------------------------------------
document_rules.add(
    "completeness",
    all_of(
        length("title", min=5, max=120),
        json_schema("sections", SECTIONS_SCHEMA),
        # A JSON Schema "contains" failure would not name what is missing; a custom rule can.
        custom(_has_summary, "sections must include a summary", name="has_summary"),
        # A deadline is only met if someone is named to sign off before it.
        depends_on("due_date", "approver"),
    ),
    desc="title of sensible length, listed sections with a summary, an approver when there is a due date",
)
document_rules.add(
    "no_placeholders",
    # Named, so that a failure says which placeholder was found rather than "matches(content)".
    none_of(
        matches("content", r"\bTODO\b").named("todo_marker"),
        matches("content", r"(?i)lorem ipsum").named("filler_text"),
    ),
    desc="content carries no TODO markers or filler text",
)
document_rules.add(
    "known_priority",
    one_of("priority", PRIORITIES),
    desc=f"priority is one of {PRIORITIES}",
)
document_rules.add(
    "clarity_in_range",
    numericality("clarity_score", greater_than_or_equal_to=0, less_than_or_equal_to=1),
    desc="the review produced a clarity score between 0 and 1",
)
document_rules.add(
    "approver_valid",
    all_of(
        presence("approver"),
        matches("approver", EMAIL, message="approver must be an email address"),
    ),
    desc="the document names who approves it, by email address",
)
document_rules.add(
    "four_eyes",
    custom(
        lambda token: token.data.get("approver") != token.data.get("author"),
        "the author cannot approve their own document",
        name="four_eyes",
    ),
    desc="author and approver are different people",
)

# -- rule-engine expressions: parsed once, never eval-ed --------------------------------------------------------
document_rules.add(
    "high_priority",
    "priority in ['high', 'urgent']",
    desc="high or urgent documents are approved even when the prose is rough",
)
document_rules.add(
    "clear_enough",
    f"clarity_score >= {MIN_CLARITY}",
    desc=f"clarity score of at least {MIN_CLARITY}",
)

# -- combining named rules ----------------------------------------------------------------------------------------
document_rules.add(
    "approvable",
    any_of(document_rules["high_priority"], document_rules["clear_enough"]),
    desc="high or urgent priority, or clear enough to approve as it is",
)
