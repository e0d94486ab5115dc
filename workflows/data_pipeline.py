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

The real path: with ``DATA_PIPELINE_IMAGE`` set, ``process`` measures the input in a container of that image
(``DockerExecutor``; the endpoint comes from ``DOCKER_HOST``; the image needs ``sh`` and ``awk``, busybox is
enough); with ``DATA_PIPELINE_MODEL`` set, ``analyze`` asks that model for the scores (``AssistantExecutor``;
the server comes from ``CB_LLM_BASE_URL``/``OPENAI_BASE_URL`` and ``CB_LLM_API_KEY``/``OPENAI_API_KEY``, so
OpenAI, vLLM, Ollama and llama.cpp all work). On that path a failure of either back end (after the
transition's retries) sends the token to ``human_review`` with the error in ``_error``, so a person decides
instead of the instance stopping. ``build_workflow(Backends(...))`` builds the same workflow in code.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circuit_breaker import RetryPolicy, Token, Workflow
from circuit_breaker.errors import ActionError
from rules.pipeline_rules import pipeline_rules

__all__ = ["FULL_CONFIDENCE_ROWS", "MEASURE_SCRIPT", "Backends", "build_workflow", "measure_csv", "workflow"]

FULL_CONFIDENCE_ROWS = 10
"""A handful of rows says little, however clean: confidence reaches the quality score only from here on."""

NAME = "data_pipeline"

# What ``measure_csv`` computes, for any image with a POSIX shell and awk (busybox is enough). Plain CSV:
# quoted fields with commas inside are split like any other comma.
MEASURE_SCRIPT = r"""awk -F, '
function trim(s) { gsub(/^[ \t\r]+|[ \t\r]+$/, "", s); return s }
function esc(s) { gsub(/\\/, "\\\\", s); gsub(/"/, "\\\"", s); return s }
{ sub(/\r$/, "") }
/^[ \t,]*$/ { next }
!ncols { ncols = NF; for (i = 1; i <= NF; i++) col[i] = trim($i); next }
{ rows++; for (i = 1; i <= ncols; i++) if (i > NF || trim($i) == "") empty++ }
END {
  printf "{\"columns\": ["
  for (i = 1; i <= ncols; i++) printf "%s\"%s\"", (i > 1 ? ", " : ""), esc(col[i])
  printf "], \"row_count\": %d, \"empty_cells\": %d}\n", rows, empty
}' /input/input.csv"""

ANALYST_PROMPT = (
    "You judge tabular data before it is used. Given a file's columns, row count and empty cells, answer with "
    "quality_score (0..1: how complete and usable the data is), confidence_score (0..1: how far that judgement "
    "can be trusted; few rows mean little confidence) and a one-sentence summary."
)
SCORES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "quality_score": {"type": "number", "minimum": 0, "maximum": 1},
        "confidence_score": {"type": "number", "minimum": 0, "maximum": 1},
        "summary": {"type": "string"},
    },
    "required": ["quality_score", "confidence_score"],
}


@dataclass(frozen=True)
class Backends:
    """Which real back ends the pipeline uses; None keeps the in-process step.

    The Docker endpoint and the model server's address and key are the executors' own settings
    (``DOCKER_HOST``; ``CB_LLM_BASE_URL``/``CB_LLM_API_KEY``) unless given here.
    """

    image: str | None = None
    docker_host: str | None = None
    container_timeout: float = 120
    model: str | None = None
    base_url: str | None = None
    api_key: str | None = None
    model_timeout: float = 60

    @classmethod
    def from_env(cls) -> Backends:
        """``DATA_PIPELINE_IMAGE`` and ``DATA_PIPELINE_MODEL`` switch the real path on, each on its own."""
        return cls(
            image=os.environ.get("DATA_PIPELINE_IMAGE") or None,
            model=os.environ.get("DATA_PIPELINE_MODEL") or None,
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
                workflow=NAME,
                transition="process",
                retryable=False,
            )
        return file.read_text(encoding="utf-8"), str(file)
    text = data.get("csv")
    if not isinstance(text, str):
        raise ActionError("csv must be the CSV text as a string", workflow=NAME, retryable=False)
    return text, "inline"


def process_locally(token: Token) -> dict[str, Any]:
    text, source = _read_input(token.data)
    return {"source": source, **measure_csv(text)}


def analyze_locally(token: Token) -> dict[str, Any]:
    rows = int(token.data["row_count"])
    cells = rows * len(token.data["columns"])
    quality = 1.0 - int(token.data["empty_cells"]) / cells if cells else 0.0
    confidence = quality * min(1.0, rows / FULL_CONFIDENCE_ROWS)
    return {"quality_score": round(quality, 3), "confidence_score": round(confidence, 3)}


def container_step(backends: Backends) -> Callable[[Token], Awaitable[dict[str, Any]]]:
    """``process`` in a container: the input is mounted read-only at /input/input.csv, no network."""
    from circuit_breaker.executors import DockerExecutor

    assert backends.image is not None

    async def process_in_container(token: Token) -> dict[str, Any]:
        text, source = _read_input(token.data)
        with tempfile.TemporaryDirectory(prefix="cb-pipeline-") as folder:
            await asyncio.to_thread(_write_input, Path(folder), text)
            executor = DockerExecutor(
                image=backends.image,
                command=["sh", "-c", MEASURE_SCRIPT],
                volumes={folder: "/input:ro"},
                timeout=backends.container_timeout,
                docker_host=backends.docker_host,
                labels={"circuit_breaker.workflow": NAME, "circuit_breaker.instance": token.instance_id},
            )
            out = await executor.execute()
        try:
            measured = json.loads(out["stdout"])
        except ValueError:
            raise ActionError(
                f"the container of {backends.image!r} printed no JSON measurement: {out['stdout'][:200]!r}",
                workflow=NAME,
                transition="process",
                retryable=False,
            ) from None
        return {"source": source, **measured, "processed_by": backends.image}

    return process_in_container


def _write_input(folder: Path, text: str) -> None:
    (folder / "input.csv").write_text(text, encoding="utf-8")
    folder.chmod(0o755)  # readable by the container's user, whoever that is


def model_step(backends: Backends) -> Callable[[Token], Awaitable[dict[str, Any]]]:
    """``analyze`` by a model: it sees the measurements and answers with schema-checked scores."""
    from circuit_breaker.executors import AssistantExecutor

    assert backends.model is not None
    analyst = AssistantExecutor(
        model=backends.model,
        system_prompt=ANALYST_PROMPT,
        input="columns: {{ columns }}\nrows: {{ row_count }}\nempty cells: {{ empty_cells }}",
        response_format=SCORES_SCHEMA,
        temperature=0,
        base_url=backends.base_url,
        api_key=backends.api_key,
        timeout=backends.model_timeout,
    )

    async def analyze_with_model(token: Token) -> dict[str, Any]:
        out = await analyst.render(token.data).execute()
        scores = out["content"]
        return {
            "quality_score": scores["quality_score"],
            "confidence_score": scores["confidence_score"],
            "analysis": scores.get("summary", ""),
            "analyzed_by": out["model"],
            "model_usage": out["usage"],
        }

    return analyze_with_model


def build_workflow(backends: Backends | None = None) -> Workflow:
    """The pipeline, processing and analyzing in-process or on the real back ends ``backends`` names."""
    backends = backends or Backends()
    wf = Workflow(NAME, rules=pipeline_rules, desc="process and analyze a CSV input; doubtful results go to a person")
    raw, processed, analyzed, human_review, completed, rejected = wf.states(
        "raw", "processed", "analyzed", "human_review", "completed", "rejected", review=["human_review"]
    )
    # On the real path a back end that keeps failing hands the token to a person, with the error in _error.
    wf.flow(
        raw >> processed,
        "process",
        validations={"any": ["input_file", "csv"]},
        guards=["csv_input"],
        rules={"all": ["has_columns", "has_rows"]},
        retry=RetryPolicy(max_attempts=3, initial_delay=0.2),
        error_place=human_review if backends.image else None,
        desc="read the input and count its rows, columns and empty cells",
    ).action(container_step(backends) if backends.image else process_locally)
    wf.flow(
        processed >> analyzed,
        "analyze",
        rules={"all": ["scores_in_range"]},
        retry=RetryPolicy(max_attempts=3, initial_delay=0.2) if backends.model else None,
        error_place=human_review if backends.model else None,
        desc="score the input's quality and how far the score can be trusted",
    ).action(model_step(backends) if backends.model else analyze_locally)
    # Declaration order decides the choice out of ``analyzed``: ``complete`` is tried first.
    wf.flow(analyzed >> completed, "complete", rules={"all": ["high_confidence"]}, desc="trusted results need nobody")
    wf.flow(analyzed >> human_review, "request_review", desc="everything else waits for a person")
    wf.flow(human_review >> completed, "approve", trigger="manual", desc="a reviewer accepts the analysis")
    wf.flow(human_review >> rejected, "reject", trigger="manual", desc="a reviewer discards the input")
    return wf


workflow = build_workflow(Backends.from_env())
