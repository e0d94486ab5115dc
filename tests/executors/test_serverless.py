"""The serverless executor against real functions: functions-framework servers (an HTTP function, direct
and behind an OpenFaaS-style path; a CloudEvent function, binary and structured) and local handler files."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from circuit_breaker import Engine, InstanceStatus, Workflow
from circuit_breaker.errors import ExecutorConfigError, ExecutorError
from circuit_breaker.executors import default_registry
from circuit_breaker.executors.serverless import ServerlessExecutor

FUNCTIONS = Path(__file__).parent / "functions"
HANDLERS = FUNCTIONS / "local_handler.py"
SECRET = "sls-token-5e1f-secret"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(source: Path, target: str, *extra: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """Start functions-framework on a free port, wait until it answers, stop it afterwards."""
    port = _free_port()
    program = Path(sys.executable).with_name("functions-framework")
    proc = subprocess.Popen(
        [str(program), "--target", target, "--source", str(source), "--host", "127.0.0.1", "--port", str(port), *extra],
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"functions-framework exited: {proc.stderr.read().decode() if proc.stderr else ''}")
            try:
                httpx.get(url, timeout=0.5)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.fixture(scope="module")
def http_fn() -> Iterator[str]:
    yield from _serve(FUNCTIONS / "http_fn.py", "score")


@pytest.fixture(scope="module")
def events_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("events")


@pytest.fixture(scope="module")
def event_fn(events_dir: Path) -> Iterator[str]:
    yield from _serve(
        FUNCTIONS / "event_fn.py", "on_event", "--signature-type", "cloudevent", env={"EVENTS_DIR": str(events_dir)}
    )


def _delivered(events_dir: Path, tag: str) -> dict[str, Any]:
    return json.loads((events_dir / f"{tag}.json").read_text())  # type: ignore[no-any-return]


# -- HTTP: direct and OpenFaaS-style --------------------------------------------------------------------------
async def test_direct_url_returns_the_functions_output(http_fn: str) -> None:
    ex = ServerlessExecutor(function_name="score", url=http_fn, mode="direct", payload={"n": 4})
    result = await ex.execute_detailed()
    assert result.status == "succeeded", result.error
    out = result.output
    assert out["status"] == "ok" and out["status_code"] == 200 and out["duration_s"] > 0
    assert out["output"]["score"] == 8 and out["output"]["path"] == "/"
    assert result.usage["http_requests"] == 1


async def test_openfaas_mode_posts_to_the_gateway_path(http_fn: str) -> None:
    out = await ServerlessExecutor(function_name="score", url=http_fn + "/", payload={"n": 1}).execute()
    assert out["output"]["path"] == "/function/score" and out["output"]["score"] == 2
    with pytest.raises(ExecutorError) as info:
        await ServerlessExecutor(function_name="nope", url=http_fn, payload={}).execute()
    assert info.value.kind == "FunctionNotFound" and not info.value.retryable


async def test_a_cloudevent_reply_is_unpacked(http_fn: str) -> None:
    out = await ServerlessExecutor(function_name="score", url=http_fn, payload={"n": 3, "reply_event": True}).execute()
    assert out["output"] == {"score": 6}
    assert out["event"]["type"] == "score.done" and out["event"]["source"] == "/score" and out["event"]["id"] == "r-1"


async def test_auth_token_is_sent_and_masked(http_fn: str) -> None:
    ex = ServerlessExecutor(function_name="score", url=http_fn, payload={"n": 1}, auth_token=SECRET)
    result = await ex.execute_detailed()
    assert result.output["output"]["auth"] == "Bearer ***"  # the function echoed it; the result masks it
    assert SECRET not in repr(ex) and SECRET not in json.dumps(ex.spec())


async def test_inside_a_firing_the_call_carries_its_idempotency_key(http_fn: str) -> None:
    """The same key on every run of the firing (here a task on a worker, with the engine's key)."""
    from circuit_breaker.executors._local_tasks import ExecutorCache, run_task
    from circuit_breaker.tasks import Task

    cache = ExecutorCache(default_registry())
    keys = []
    for header, n in (("Idempotency-Key", 1), ("Idempotency-Key", 1), ("Idempotency-Key", 2), (None, 1)):
        ex = ServerlessExecutor(function_name="score", url=http_fn, payload={"n": n}, idempotency_header=header)
        task = Task.new(workflow="w", instance_id="i1", transition="score", executor=ex.spec(), idempotency_key="k-2")
        output, error = await run_task(cache, task)
        assert error is None, error
        keys.append(output["output"]["idempotency_key"])
    assert keys[0].startswith("k-2:") and keys[1] == keys[0]  # the same call again: the same key
    assert keys[2].startswith("k-2:") and keys[2] != keys[0]  # another call of the same firing: its own key
    assert keys[3] is None
    alone = await ServerlessExecutor(function_name="score", url=http_fn, payload={"n": 1}).execute()
    assert alone["output"]["idempotency_key"] is None


async def test_templated_payload_from_token_data_in_a_workflow(http_fn: str, engine: Engine) -> None:
    wf = Workflow("scoring")
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "invoke").action(
        ServerlessExecutor(function_name="score", url=http_fn, payload={"n": "{{ n }}", "who": "order {{ n }}"})
    )
    instance = await engine.start(wf, {"n": 21})
    done = await engine.wait(instance.id, timeout=10)
    assert done.status is InstanceStatus.COMPLETED
    data = done.tokens[0].data
    assert data["status"] == "ok"
    assert data["output"]["score"] == 42 and data["output"]["received"] == {"n": 21, "who": "order 21"}


async def test_function_error_comes_back_with_its_type(http_fn: str) -> None:
    payload = {"raise": "InventoryError", "message": "no stock for A-17"}
    result = await ServerlessExecutor(function_name="score", url=http_fn, payload=payload).execute_detailed()
    assert result.status == "failed" and result.error is not None
    assert result.error.kind == "InventoryError" and result.error.retryable
    assert "no stock for A-17" in result.error.message and result.error.details["status_code"] == 500


async def test_text_server_error_is_a_retryable_function_error(http_fn: str) -> None:
    ex = ServerlessExecutor(function_name="score", url=http_fn, payload={"text_error": "overloaded"})
    with pytest.raises(ExecutorError, match="503.*overloaded") as info:
        await ex.execute()
    assert info.value.kind == "function_error" and info.value.retryable


async def test_bad_request_is_not_retryable(http_fn: str) -> None:
    with pytest.raises(ExecutorError, match="JSON object") as info:
        await ServerlessExecutor(function_name="score", url=http_fn, payload=[1, 2]).execute()
    assert info.value.kind == "BadRequest" and not info.value.retryable


async def test_slow_function_times_out_retryably(http_fn: str) -> None:
    started = time.perf_counter()
    ex = ServerlessExecutor(function_name="score", url=http_fn, payload={"sleep": 2}, timeout=0.3)
    result = await ex.execute_detailed()
    assert result.status == "timed_out" and result.error is not None
    assert result.error.kind == "timeout" and result.error.retryable
    assert time.perf_counter() - started < 1.5


async def test_server_down_is_a_retryable_connection_error() -> None:
    ex = ServerlessExecutor(function_name="score", url=f"http://127.0.0.1:{_free_port()}", payload={})
    result = await ex.execute_detailed()
    assert result.error is not None and result.error.kind == "connection" and result.error.retryable
    assert result.usage["http_requests"] == 1


# -- CloudEvents ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ce_mode", "content_type"), [("binary", "application/json"), ("structured", "application/cloudevents+json")]
)
async def test_cloudevents_are_delivered(event_fn: str, events_dir: Path, ce_mode: str, content_type: str) -> None:
    ex = ServerlessExecutor(
        backend="cloudevents",
        url=event_fn,
        ce_mode=ce_mode,
        function_name="on_event",
        event_type="com.example.order.created",
        source="/orders",
        payload={"tag": ce_mode, "order": "{{ order }}"},
    ).render({"order": "A-17"})
    out = await ex.execute()
    assert out["status"] == "ok" and out["status_code"] == 200 and out["output"] == "OK"
    record = _delivered(events_dir, ce_mode)
    assert record["data"] == {"tag": ce_mode, "order": "A-17"}
    assert record["content_type"].startswith(content_type)
    attributes = record["attributes"]
    assert attributes["type"] == "com.example.order.created" and attributes["source"] == "/orders"
    assert attributes["subject"] == "on_event" and attributes["specversion"] == "1.0"


async def test_a_cloudevent_sent_for_a_firing_has_its_idempotency_key_as_id(event_fn: str, events_dir: Path) -> None:
    """Sent again for the same firing, it is the same event (source and id): a consumer drops the repeat."""
    from circuit_breaker.executors._local_tasks import ExecutorCache, run_task
    from circuit_breaker.tasks import Task

    ex = ServerlessExecutor(backend="cloudevents", url=event_fn, source="/orders", payload={"tag": "keyed"})
    task = Task.new(workflow="w", instance_id="i1", transition="notify", executor=ex.spec(), idempotency_key="k-3")
    output, error = await run_task(ExecutorCache(default_registry()), task)
    assert error is None, error
    assert _delivered(events_dir, "keyed")["attributes"]["id"].startswith("k-3:")


async def test_cloudevent_function_raising_is_a_retryable_failure(event_fn: str) -> None:
    ex = ServerlessExecutor(backend="cloudevents", url=event_fn, payload={"tag": "x", "raise": True})
    with pytest.raises(ExecutorError, match="500") as info:
        await ex.execute()
    assert info.value.kind == "function_error" and info.value.retryable


# -- local runtime ----------------------------------------------------------------------------------------------------
async def test_local_handler_file_gets_payload_and_environment() -> None:
    ex = ServerlessExecutor(
        handler=f"{HANDLERS}:handle", runtime="python", payload={"n": 5}, environment={"GREETING": "hello"}
    )
    out = await ex.execute()
    assert out == {"status": "ok", "output": {"doubled": 10, "greeting": "hello"}, "duration_s": out["duration_s"]}


async def test_local_handler_file_with_function_name_and_lambda_context() -> None:
    out = await ServerlessExecutor(handler=str(HANDLERS), function_name="lambda_style", payload={}).execute()
    assert out["output"] == {"function": "lambda_style", "has_time": True}


async def test_local_module_handler() -> None:
    out = await ServerlessExecutor(handler="json:dumps", payload={"a": 1}).execute()
    assert out["output"] == '{"a": 1}'


async def test_local_function_raising_keeps_its_type() -> None:
    ex = ServerlessExecutor(handler=f"{HANDLERS}:fail", payload={"quota": 3})
    with pytest.raises(ExecutorError, match="quota of 3 used up") as info:
        await ex.execute()
    assert info.value.kind == "QuotaExceeded" and info.value.retryable
    assert "QuotaExceeded" in info.value.details["traceback"]


async def test_local_function_timing_out_is_stopped() -> None:
    started = time.perf_counter()
    result = await ServerlessExecutor(handler=f"{HANDLERS}:slow", payload={"sleep": 10}, timeout=0.5).execute_detailed()
    assert result.error is not None and result.error.kind == "timeout" and result.error.retryable
    assert time.perf_counter() - started < 4


@pytest.mark.parametrize("handler", ["missing", "not_callable"])
async def test_local_handler_that_cannot_be_loaded(handler: str) -> None:
    with pytest.raises(ExecutorError, match="cannot load") as info:
        await ServerlessExecutor(handler=f"{HANDLERS}:{handler}", payload={}).execute()
    assert info.value.kind == "handler_not_found" and not info.value.retryable


# -- bad input and registry ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"function_name": "score"}, "give 'url'"),
        ({"backend": "http", "function_name": "score"}, "backend 'http' needs 'url'"),
        ({"backend": "cloudevents"}, "backend 'cloudevents' needs 'url'"),
        ({"url": "http://127.0.0.1:1"}, "mode 'openfaas' needs 'function_name'"),
        ({"url": "ftp://x/y", "mode": "direct"}, "not an absolute http"),
        ({"url": "http://x", "mode": "direct", "environment": {"A": "1"}}, "local functions only"),
        ({"handler": f"{HANDLERS}:handle", "runtime": "node"}, "runtime 'node' cannot run locally"),
        ({"handler": "not a handler"}, "must look like"),
        ({"handler": str(HANDLERS)}, "name the function"),
        ({"handler": "no/such/file.py:main"}, "does not exist"),
        ({"backend": "local"}, "needs 'handler'"),
        ({"handler": f"{HANDLERS}:handle", "url": "http://x"}, "not both"),
        ({"backend": "local", "handler": f"{HANDLERS}:handle", "url": "http://x"}, "'url'.* remote functions only"),
        ({"url": "http://x", "mode": "sideways"}, "mode"),
    ],
)
def test_bad_input_is_refused_when_built(params: dict[str, Any], problem: str) -> None:
    with pytest.raises(ExecutorConfigError, match=problem):
        ServerlessExecutor(**params)


def test_registry_builds_it_by_name(http_fn: str) -> None:
    ex = default_registry().create("serverless", function_name="score", url=http_fn)
    assert isinstance(ex, ServerlessExecutor) and ex.backend == "http"
