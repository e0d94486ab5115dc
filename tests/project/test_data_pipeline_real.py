"""The data pipeline's real path: a container measures the input, a model scores it, a person reviews doubts.

Real parts only: podman's Docker API runs the busybox container, and the real ``openai`` client talks to a
scripted OpenAI-compatible server on loopback. The "model" here scores from the numbers it was sent, so the
tests see that the container's measurements reached it.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from circuit_breaker import Engine, InstanceStatus
from circuit_breaker.testing import run_to_rest
from circuit_breaker.testing.openai_server import RawResponse, ScriptedOpenAIServer
from circuit_breaker.testing.podman import IMAGE, PodmanEngine
from workflows.data_pipeline import Backends, build_workflow, measure_csv

ROOT = Path(__file__).resolve().parents[2]
MEASUREMENTS = ROOT / "examples" / "data" / "measurements.csv"
WAIT = 60


def scores_from_prompt(request: dict[str, Any]) -> dict[str, Any]:
    """A stand-in model: trusts files with enough rows and few empty cells."""
    prompt = request["messages"][-1]["content"]
    rows = int(re.search(r"rows: (\d+)", prompt).group(1))  # type: ignore[union-attr]
    empty = int(re.search(r"empty cells: (\d+)", prompt).group(1))  # type: ignore[union-attr]
    confident = rows >= 10 and empty == 0
    score = 0.95 if confident else 0.4
    summary = f"{rows} rows, {empty} empty cells"
    return {"content": json.dumps({"quality_score": score, "confidence_score": score, "summary": summary})}


@pytest.fixture(scope="module")
def docker_host() -> Iterator[str]:
    with PodmanEngine() as podman:
        yield podman.docker_host


@pytest.fixture(scope="module")
def model() -> Iterator[ScriptedOpenAIServer]:
    with ScriptedOpenAIServer(scores_from_prompt) as server:
        yield server


@pytest.fixture
async def engine(docker_host: str, model: ScriptedOpenAIServer) -> AsyncIterator[Engine]:
    backends = Backends(image=IMAGE, docker_host=docker_host, model="analyst-1", base_url=model.url, api_key="sk-t")
    async with Engine(workflows=[build_workflow(backends)]) as eng:
        yield eng


async def test_a_trusted_input_is_measured_in_the_container_scored_by_the_model_and_completes(
    engine: Engine, model: ScriptedOpenAIServer
) -> None:
    before = len(model.requests)
    inst = await run_to_rest(engine, "data_pipeline", {"input_file": str(MEASUREMENTS)}, timeout=WAIT)

    assert inst.status is InstanceStatus.COMPLETED, inst.incidents
    assert inst.places == ["completed"]
    expected = measure_csv(MEASUREMENTS.read_text())
    assert {k: inst.data[k] for k in expected} == expected
    assert inst.data["processed_by"] == IMAGE
    assert inst.data["analyzed_by"] == "analyst-1"
    assert inst.data["quality_score"] == 0.95
    assert inst.data["analysis"] == f"{expected['row_count']} rows, 0 empty cells"
    assert inst.data["model_usage"]["prompt_tokens"] > 0
    sent = model.requests[before:]
    assert len(sent) == 1
    assert sent[0]["model"] == "analyst-1"
    assert sent[0]["response_format"]["type"] == "json_schema"
    assert f"rows: {expected['row_count']}" in sent[0]["messages"][-1]["content"]


async def test_the_container_counts_like_the_in_process_step(engine: Engine) -> None:
    text = 'id, name ,score\r\n1,ann,\r\n,,\r\n2,,3\r\n3,"bo",4\r\n\r\n4\r\n'
    inst = await run_to_rest(engine, "data_pipeline", {"csv": text}, timeout=WAIT)
    expected = measure_csv(text)
    assert (
        {k: inst.data[k] for k in expected}
        == expected
        == {
            "columns": ["id", "name", "score"],
            "row_count": 4,
            "empty_cells": 4,
        }
    )


async def test_a_doubtful_input_waits_for_a_person_who_approves_it(engine: Engine) -> None:
    inst = await run_to_rest(engine, "data_pipeline", {"csv": "id,name\n1,ann\n2,\n"}, timeout=WAIT)
    assert inst.status is InstanceStatus.WAITING
    assert inst.places == ["human_review"]
    assert sorted(inst.enabled_manual) == ["approve", "reject"]
    assert inst.data["confidence_score"] == 0.4

    inst = await engine.fire(inst.id, "approve", actor="rev@example.com", data={"review_note": "small but fine"})
    inst = await engine.wait(inst.id, timeout=WAIT)
    assert inst.status is InstanceStatus.COMPLETED
    assert inst.data["review_note"] == "small but fine"


async def test_a_model_that_keeps_answering_garbage_hands_the_token_to_a_person(docker_host: str) -> None:
    with ScriptedOpenAIServer(lambda _request: RawResponse('{"choices": [')) as broken:
        backends = Backends(image=IMAGE, docker_host=docker_host, model="m", base_url=broken.url, api_key="sk-t")
        async with Engine(workflows=[build_workflow(backends)]) as engine:
            inst = await run_to_rest(engine, "data_pipeline", {"input_file": str(MEASUREMENTS)}, timeout=WAIT)
        assert len(broken.requests) == 3, "the transition's retry policy tried three times"
    assert inst.status is InstanceStatus.WAITING
    assert inst.places == ["human_review"]
    assert inst.data["_error"]["kind"] == "malformed_response"
    assert inst.data["row_count"] == 24, "what the container measured is kept for the reviewer"


async def test_an_unreachable_model_server_hands_the_token_to_a_person(docker_host: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    backends = Backends(image=IMAGE, docker_host=docker_host, model="m", base_url=closed, api_key="sk-t")
    async with Engine(workflows=[build_workflow(backends)]) as engine:
        inst = await run_to_rest(engine, "data_pipeline", {"csv": "a,b\n1,2\n"}, timeout=WAIT)
    assert inst.status is InstanceStatus.WAITING
    assert inst.places == ["human_review"]
    assert inst.data["_error"]["kind"] == "connection"
    assert inst.data["_error"]["retryable"] is True


async def test_a_missing_image_hands_the_token_to_a_person_naming_the_image(
    docker_host: str, model: ScriptedOpenAIServer
) -> None:
    image = "localhost/cb-no-such-image:1"
    backends = Backends(image=image, docker_host=docker_host, model="m", base_url=model.url, api_key="sk-t")
    async with Engine(workflows=[build_workflow(backends)]) as engine:
        inst = await run_to_rest(engine, "data_pipeline", {"csv": "a,b\n1,2\n"}, timeout=WAIT)
    assert inst.status is InstanceStatus.WAITING
    assert inst.places == ["human_review"]
    assert image in inst.data["_error"]["message"]
    assert "row_count" not in inst.data, "nothing was measured"


async def test_a_missing_input_file_is_reported_to_the_reviewer(engine: Engine) -> None:
    inst = await run_to_rest(engine, "data_pipeline", {"input_file": "nowhere/none.csv"}, timeout=WAIT)
    assert inst.places == ["human_review"]
    assert "input_file 'nowhere/none.csv' does not exist" in inst.data["_error"]["message"]
    assert inst.data["_error"]["retryable"] is False

    inst = await engine.fire(inst.id, "reject", actor="rev@example.com")
    inst = await engine.wait(inst.id, timeout=WAIT)
    assert inst.status is InstanceStatus.COMPLETED
    assert inst.places == ["rejected"]


def test_the_cli_takes_the_real_path_from_the_environment(docker_host: str, model: ScriptedOpenAIServer) -> None:
    env = {
        **os.environ,
        "DOCKER_HOST": docker_host,
        "DATA_PIPELINE_IMAGE": IMAGE,
        "DATA_PIPELINE_MODEL": "analyst-cli",
        "CB_LLM_BASE_URL": model.url,
        "CB_LLM_API_KEY": "sk-cli-secret",
    }
    cli = Path(sys.executable).parent / "circuit-breaker"
    done = subprocess.run(
        [
            str(cli),
            "run",
            "workflows/data_pipeline.py",
            "--json",
            "--data",
            json.dumps({"input_file": str(MEASUREMENTS)}),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "completed"
    (token,) = result["tokens"]
    assert token["place"] == "completed"
    assert token["data"]["processed_by"] == IMAGE
    assert token["data"]["analyzed_by"] == "analyst-cli"
    assert "sk-cli-secret" not in done.stdout + done.stderr
