"""Data pipeline: read a CSV input, measure it, and let a person look only when the numbers are doubtful.

    raw --process--> processed --analyze--> analyzed --complete--------> completed
                                                |                          ^
                                                +--request_review--> human_review --approve--+
                                                                           |
                                                                           +--reject--> rejected

- ``process`` reads the input: ``input_file`` (a path to a .csv file, relative to the working directory) or
  ``csv`` (the CSV text itself, handy for tests and services). A missing file fails at once with a clear
  error and no retries (retrying cannot make it appear); other I/O errors are retried. A header-only input is
  rejected by the rule ``has_rows``, which leaves the token in ``raw`` with the rule's message.
- ``analyze`` computes ``quality_score`` (share of filled-in cells) and ``confidence_score`` (quality, scaled
  down for inputs under ``FULL_CONFIDENCE_ROWS`` rows).
- From ``analyzed`` two automatic transitions compete, tried in declaration order: ``complete`` when the rule
  ``high_confidence`` holds, else ``request_review``.
- ``human_review`` is a review place. The issue sketches ``human_review | completed`` as the two ends; here a
  reviewer decides instead of the token resting there for ever: ``approve`` moves it on to ``completed`` and
  ``reject`` to ``rejected``. ``completed`` and ``rejected`` are the final places, so an instance waiting for
  review shows up as ``waiting`` with ``approve`` and ``reject`` enabled.

Run it with ``circuit-breaker run workflows/data_pipeline.py --data '{"input_file": "data.csv"}'`` or with
``--data '{"csv": "id,name\\n1,ann\\n"}'``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from circuit_breaker import RetryPolicy, Token, Workflow
from circuit_breaker.errors import ActionError
from rules.pipeline_rules import pipeline_rules

__all__ = ["FULL_CONFIDENCE_ROWS", "measure_csv", "workflow"]

FULL_CONFIDENCE_ROWS = 10
"""A handful of rows says little, however clean: confidence reaches the quality score only from here on."""

workflow = Workflow(
    "data_pipeline",
    rules=pipeline_rules,
    desc="process and analyze a CSV input; doubtful results go to a person",
)

raw, processed, analyzed, human_review, completed, rejected = workflow.states(
    "raw", "processed", "analyzed", "human_review", "completed", "rejected", review=["human_review"]
)


def measure_csv(text: str) -> dict[str, Any]:
    """Columns, data rows and empty cells of CSV text (blank lines are skipped, short rows count as empty)."""
    rows = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
    columns = [c.strip() for c in rows[0]] if rows else []
    body = rows[1:]
    empty = sum(1 for row in body for i in range(len(columns)) if i >= len(row) or not row[i].strip())
    return {"columns": columns, "row_count": len(body), "empty_cells": empty}


def _read_input(data: dict[str, Any]) -> tuple[str, str]:
    """The CSV text and where it came from."""
    path = data.get("input_file")
    if path is not None:
        file = Path(str(path))
        if not file.is_file():
            hint = "" if file.is_absolute() else f" (relative paths start at {Path.cwd()})"
            raise ActionError(
                f"input_file {str(path)!r} does not exist{hint}",
                workflow=workflow.name,
                transition="process",
                retryable=False,
            )
        return file.read_text(encoding="utf-8"), str(file)
    text = data.get("csv")
    if not isinstance(text, str):
        raise ActionError("csv must be the CSV text as a string", workflow=workflow.name, retryable=False)
    return text, "inline"


@workflow.flow(
    raw >> processed,
    "process",
    validations={"any": ["input_file", "csv"]},
    guards=["csv_input"],
    rules={"all": ["has_columns", "has_rows"]},
    retry=RetryPolicy(max_attempts=3, initial_delay=0.2),
    desc="read the input and count its rows, columns and empty cells",
)
def process(token: Token) -> dict[str, Any]:
    text, source = _read_input(token.data)
    return {"source": source, **measure_csv(text)}


@workflow.flow(
    processed >> analyzed,
    "analyze",
    rules={"all": ["scores_in_range"]},
    desc="score the input's quality and how far the score can be trusted",
)
async def analyze(token: Token) -> dict[str, Any]:
    rows = int(token.data["row_count"])
    cells = rows * len(token.data["columns"])
    quality = 1.0 - int(token.data["empty_cells"]) / cells if cells else 0.0
    confidence = quality * min(1.0, rows / FULL_CONFIDENCE_ROWS)
    return {"quality_score": round(quality, 3), "confidence_score": round(confidence, 3)}


# Declaration order decides the choice out of ``analyzed``: ``complete`` is tried first.
workflow.flow(
    analyzed >> completed,
    "complete",
    rules={"all": ["high_confidence"]},
    desc="trusted results need nobody",
)
workflow.flow(
    analyzed >> human_review,
    "request_review",
    desc="everything else waits for a person",
)
workflow.flow(
    human_review >> completed,
    "approve",
    trigger="manual",
    desc="a reviewer accepts the analysis",
)
workflow.flow(
    human_review >> rejected,
    "reject",
    trigger="manual",
    desc="a reviewer discards the input",
)
