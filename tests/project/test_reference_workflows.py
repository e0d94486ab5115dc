"""The reference workflows in workflows/ behave as their docstrings promise, driven through a real Engine.

These are the workflows `circuit-breaker serve` discovers in this repository and the ones users copy, so the
paths a user walks (happy path, rejection with the rule's message, rework, human review, incidents) are
checked end to end, and the definitions are checked for structural problems.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from circuit_breaker import Engine, EventType, InstanceStatus, Workflow
from circuit_breaker.errors import TransitionNotEnabledError, TransitionRejectedError
from circuit_breaker.events import TransitionRejected
from workflows.data_pipeline import measure_csv
from workflows.data_pipeline import workflow as pipeline
from workflows.document_review import clarity_score
from workflows.document_review import workflow as review_wf

WAIT = 5.0

# Short sentences: clear prose (clarity 1.0) of 40 words.
CLEAR = "The report covers the third quarter. Sales rose in every region. Costs fell slightly. " * 2 + (
    "We recommend keeping the current plan. Details follow in the figures section."
)
# One sentence of 60 words: the clarity score drops to 0.
RAMBLING = " ".join(["word"] * 60) + "."


def document(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "title": "Quarterly report",
        "author": "ann@example.com",
        "approver": "bob@example.com",
        "priority": "normal",
        "sections": ["summary", "figures"],
        "content": CLEAR,
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


async def rejection_errors(engine: Engine, instance_id: str, transition: str) -> list[str]:
    """Errors recorded on the instance's transition_rejected events for ``transition``."""
    errors: list[str] = []
    async for event in engine.events(instance=instance_id, types=[EventType.TRANSITION_REJECTED]):
        assert isinstance(event, TransitionRejected)
        if event.transition == transition:
            errors.extend(event.errors)
    return errors


# -- both workflows ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("wf", [review_wf, pipeline], ids=lambda wf: wf.name)
def test_reference_workflow_has_no_problems(wf: Workflow) -> None:
    assert wf.problems() == []
    compiled = wf.compile()
    assert compiled.initial_place == wf.places[0].name


def test_document_review_shape() -> None:
    compiled = review_wf.compile()
    assert compiled.initial_place == "draft"
    assert compiled.final_places == {"approved"}
    assert compiled.review_places == {"pending_review", "reviewed"}
    assert all(t.is_manual for t in review_wf.transitions)


def test_data_pipeline_shape() -> None:
    compiled = pipeline.compile()
    assert compiled.initial_place == "raw"
    assert compiled.final_places == {"completed", "rejected"}
    assert compiled.review_places == {"human_review"}
    assert [t.name for t in pipeline.transitions if t.is_manual] == ["approve", "reject"]


# -- document review --------------------------------------------------------------------------------------------
async def test_document_review_happy_path(engine: Engine) -> None:
    inst = await engine.start(review_wf, document(priority="high"), actor="ann@example.com")
    inst = await engine.wait(inst.id, timeout=WAIT)
    assert inst.status is InstanceStatus.WAITING
    assert inst.places == ["draft"]
    assert inst.enabled_manual == ["submit"]

    inst = await engine.fire(inst.id, "submit", actor="ann@example.com")
    assert inst.places == ["pending_review"]
    assert inst.enabled_manual == ["review"]

    inst = await engine.fire(inst.id, "review", actor="carol@example.com")
    assert inst.places == ["reviewed"]
    assert inst.data["clarity_score"] == 1.0
    assert inst.data["word_count"] == 40
    assert sorted(inst.enabled_manual) == ["approve", "reject"]

    inst = await engine.fire(inst.id, "approve", actor="bob@example.com")
    inst = await engine.wait(inst.id, timeout=WAIT)
    assert inst.status is InstanceStatus.COMPLETED
    assert inst.places == ["approved"]
    assert inst.data["title"] == "Quarterly report"

    token = inst.tokens[0]
    fired = [(e.transition, e.actor) for e in token.history if e.kind == "fired"]
    assert fired == [
        ("submit", "ann@example.com"),
        ("review", "carol@example.com"),
        ("approve", "bob@example.com"),
    ]


async def test_submit_rejects_short_content_with_the_word_count_message(engine: Engine) -> None:
    inst = await engine.start(review_wf, document(content="Too short to review."))
    with pytest.raises(TransitionRejectedError) as caught:
        await engine.fire(inst.id, "submit", actor="ann@example.com")
    assert "content has 4 words; at least 20 are needed" in caught.value.errors

    inst = await engine.get(inst.id)
    assert inst.places == ["draft"], "a rejected firing moves nothing"
    assert "content has 4 words; at least 20 are needed" in await rejection_errors(engine, inst.id, "submit")
    rejected = [e for e in inst.history if e.kind == "rejected"]
    assert rejected and rejected[-1].actor == "ann@example.com"


async def test_submit_reports_every_failing_rule(engine: Engine) -> None:
    data = document(title="Hi", sections=["figures"], priority="someday", content=CLEAR + " TODO add chart.")
    inst = await engine.start(review_wf, data)
    with pytest.raises(TransitionRejectedError) as caught:
        await engine.fire(inst.id, "submit")
    errors = " | ".join(caught.value.errors)
    assert "title is too short (2, minimum 5)" in errors
    assert "sections must include a summary" in errors
    assert "rule 'todo_marker' must not pass" in errors
    assert "priority must be one of ['low', 'normal', 'high', 'urgent'], got 'someday'" in errors


async def test_submit_with_due_date_needs_an_approver(engine: Engine) -> None:
    inst = await engine.start(review_wf, document(approver=None, due_date="2030-01-31"))
    with pytest.raises(TransitionRejectedError) as caught:
        await engine.fire(inst.id, "submit")
    assert caught.value.errors == ["due_date requires approver"]


async def test_submit_is_not_enabled_without_required_fields(engine: Engine) -> None:
    inst = await engine.start(review_wf, document(title=None, author=None))
    with pytest.raises(TransitionNotEnabledError) as caught:
        await engine.fire(inst.id, "submit")
    assert "title is required" in caught.value.reasons
    assert "author is required" in caught.value.reasons
    assert (await engine.get(inst.id)).places == ["draft"]


async def test_approve_rejects_unclear_normal_priority_document(engine: Engine) -> None:
    inst = await engine.start(review_wf, document(content=RAMBLING))
    await engine.fire(inst.id, "submit")
    inst = await engine.fire(inst.id, "review", actor="carol@example.com")
    assert inst.data["clarity_score"] == 0.0

    with pytest.raises(TransitionRejectedError) as caught:
        await engine.fire(inst.id, "approve", actor="bob@example.com")
    errors = " | ".join(caught.value.errors)
    assert "rule 'high_priority' failed: priority in ['high', 'urgent']" in errors
    assert "rule 'clear_enough' failed: clarity_score >= 0.7" in errors
    assert (await engine.get(inst.id)).places == ["reviewed"]


async def test_urgent_document_is_approved_despite_rough_prose(engine: Engine) -> None:
    inst = await engine.start(review_wf, document(content=RAMBLING, priority="urgent"))
    for name in ("submit", "review", "approve"):
        inst = await engine.fire(inst.id, name)
    inst = await engine.wait(inst.id, timeout=WAIT)
    assert inst.status is InstanceStatus.COMPLETED
    assert inst.places == ["approved"]


async def test_approver_must_be_someone_else_with_an_email(engine: Engine) -> None:
    inst = await engine.start(review_wf, document(approver="ann@example.com"))
    await engine.fire(inst.id, "submit")
    await engine.fire(inst.id, "review")
    with pytest.raises(TransitionRejectedError) as caught:
        await engine.fire(inst.id, "approve")
    assert caught.value.errors == ["the author cannot approve their own document"]

    other = await engine.start(review_wf, document(approver="bob"))
    await engine.fire(other.id, "submit")
    await engine.fire(other.id, "review")
    with pytest.raises(TransitionRejectedError) as caught:
        await engine.fire(other.id, "approve")
    assert caught.value.errors == ["approver must be an email address"]


async def test_reject_and_rework_loop(engine: Engine) -> None:
    inst = await engine.start(review_wf, document(content=RAMBLING))
    await engine.fire(inst.id, "submit", actor="ann@example.com")
    await engine.fire(inst.id, "review", actor="carol@example.com")

    inst = await engine.fire(inst.id, "reject", actor="bob@example.com")
    inst = await engine.wait(inst.id, timeout=WAIT)
    assert inst.status is InstanceStatus.WAITING, "rejected is not final: the document waits for rework"
    assert inst.places == ["rejected"]
    assert inst.data["rejections"] == 1
    assert inst.enabled_manual == ["revise"]

    inst = await engine.fire(inst.id, "revise", actor="ann@example.com")
    assert inst.places == ["draft"]
    assert inst.data["revision"] == 1

    inst = await engine.fire(inst.id, "submit", actor="ann@example.com")
    inst = await engine.fire(inst.id, "review", actor="carol@example.com")
    inst = await engine.fire(inst.id, "reject", actor="bob@example.com")
    assert inst.data["rejections"] == 2
    assert inst.data["revision"] == 1

    fired = [e.transition for e in inst.tokens[0].history if e.kind == "fired"]
    assert fired == ["submit", "review", "reject", "revise", "submit", "review", "reject"]


async def test_manual_transitions_are_not_enabled_out_of_order(engine: Engine) -> None:
    inst = await engine.start(review_wf, document())
    with pytest.raises(TransitionNotEnabledError):
        await engine.fire(inst.id, "approve")
    assert (await engine.get(inst.id)).places == ["draft"]


def test_clarity_score_prefers_short_sentences() -> None:
    assert clarity_score("Short. Clear. Plain words.") == 1.0
    assert clarity_score(RAMBLING) == 0.0
    assert clarity_score("") == 0.0
    assert 0.0 < clarity_score(" ".join(["word"] * 35) + ".") < 1.0


# -- data pipeline ----------------------------------------------------------------------------------------------
def clean_csv(rows: int) -> str:
    return "id,name,score\n" + "".join(f"{i},name{i},{i * 10}\n" for i in range(rows))


async def test_pipeline_completes_confident_input_from_a_file(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_text(clean_csv(12), encoding="utf-8")
    inst = await engine.start(pipeline, {"input_file": str(path)})
    inst = await engine.wait(inst.id, timeout=WAIT)

    assert inst.status is InstanceStatus.COMPLETED
    assert inst.places == ["completed"]
    assert inst.data["row_count"] == 12
    assert inst.data["columns"] == ["id", "name", "score"]
    assert inst.data["source"] == str(path)
    assert inst.data["quality_score"] == 1.0
    assert inst.data["confidence_score"] == 1.0
    fired = [e.transition for e in inst.tokens[0].history if e.kind == "fired"]
    assert fired == ["process", "analyze", "complete"]
    assert await rejection_errors(engine, inst.id, "complete") == []


async def test_pipeline_sends_doubtful_input_to_human_review(engine: Engine) -> None:
    inst = await engine.start(pipeline, {"csv": "id,name\n1,ann\n2,\n"})
    inst = await engine.wait(inst.id, timeout=WAIT)

    assert inst.status is InstanceStatus.WAITING
    assert inst.places == ["human_review"]
    assert inst.data["quality_score"] == 0.75
    assert inst.data["confidence_score"] == 0.15
    assert sorted(inst.enabled_manual) == ["approve", "reject"]
    # The choice tried `complete` first; its rejection says why the input needs a person.
    errors = await rejection_errors(engine, inst.id, "complete")
    assert len(errors) == 1
    assert errors[0].startswith("rule 'high_confidence' failed: confidence_score >= 0.8 and quality_score >= 0.8")

    inst = await engine.fire(inst.id, "approve", actor="dana@example.com")
    inst = await engine.wait(inst.id, timeout=WAIT)
    assert inst.status is InstanceStatus.COMPLETED
    assert inst.places == ["completed"]
    assert inst.tokens[0].history[-1].actor == "dana@example.com"


async def test_pipeline_reviewer_can_reject(engine: Engine) -> None:
    inst = await engine.start(pipeline, {"csv": "id,name\n1,\n"})
    await engine.wait(inst.id, timeout=WAIT)
    inst = await engine.fire(inst.id, "reject", actor="dana@example.com")
    inst = await engine.wait(inst.id, timeout=WAIT)
    assert inst.status is InstanceStatus.COMPLETED
    assert inst.places == ["rejected"]


async def test_pipeline_missing_file_is_an_incident_without_retries(engine: Engine, tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    inst = await engine.start(pipeline, {"input_file": str(missing)})
    inst = await engine.wait(inst.id, timeout=WAIT)

    assert inst.status is InstanceStatus.FAILED
    assert inst.places == ["raw"], "the token stays where it was"
    (incident,) = inst.open_incidents
    assert incident.transition == "process"
    assert incident.attempts == 1, "a missing file is not retried"
    assert f"input_file {str(missing)!r} does not exist" in incident.error.message
    assert incident.error.retryable is False


async def test_pipeline_rejects_header_only_input_in_raw(engine: Engine) -> None:
    inst = await engine.start(pipeline, {"csv": "id,name\n"})
    inst = await engine.wait(inst.id, timeout=WAIT)
    assert inst.status is InstanceStatus.WAITING
    assert inst.places == ["raw"]
    assert "row_count" not in inst.data, "a rejected action result is not kept"
    assert await rejection_errors(engine, inst.id, "process") == ["row_count must be greater than 0, got 0"]


async def test_pipeline_needs_an_input(engine: Engine) -> None:
    inst = await engine.start(pipeline, {})
    inst = await engine.wait(inst.id, timeout=WAIT)
    assert inst.places == ["raw"]
    (error,) = await rejection_errors(engine, inst.id, "process")
    assert "input_file is required" in error and "csv is required" in error


async def test_pipeline_guard_refuses_non_csv_file_before_reading(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text("{}", encoding="utf-8")
    inst = await engine.start(pipeline, {"input_file": str(path)})
    inst = await engine.wait(inst.id, timeout=WAIT)
    assert inst.places == ["raw"]
    assert inst.open_incidents == []
    assert await rejection_errors(engine, inst.id, "process") == [
        f"input_file must name a .csv file, got {str(path)!r}"
    ]


def test_measure_csv_counts_short_rows_and_blank_cells_as_empty() -> None:
    assert measure_csv("a,b,c\n1,,3\n4\n\n7,8,9\n") == {"columns": ["a", "b", "c"], "row_count": 3, "empty_cells": 3}
    assert measure_csv("") == {"columns": [], "row_count": 0, "empty_cells": 0}
