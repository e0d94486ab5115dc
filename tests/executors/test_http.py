"""The http executor against a real HTTP server on loopback, alone and as a workflow action."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from circuit_breaker import Engine, InstanceStatus, RetryPolicy, Workflow
from circuit_breaker.errors import ExecutorConfigError, ExecutorError
from circuit_breaker.executors import default_registry
from circuit_breaker.executors._breaker import BreakerRegistry, BreakerState, set_default_breakers
from circuit_breaker.executors.http import HttpExecutor, clear_spec_cache

TOKEN = "tok-7f3a9c-very-secret"
USER, PASSWORD = "alice", "wonderland-pw"
API_KEY = "key-31415-secret"
NO_WAIT = RetryPolicy(max_attempts=3, initial_delay=0, max_delay=0)

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "orders", "version": "1"},
    "servers": [{"url": "/api"}],
    "paths": {
        "/orders": {
            "get": {
                "operationId": "listOrders",
                "parameters": [{"$ref": "#/components/parameters/Limit"}, {"name": "status", "in": "query"}],
            },
            "post": {
                "operationId": "createOrder",
                "requestBody": {"required": True, "content": {"application/json": {}}},
            },
        },
        "/orders/{order_id}": {
            "parameters": [{"name": "order_id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "get": {
                "operationId": "getOrder",
                "parameters": [
                    {"name": "verbose", "in": "query", "schema": {"type": "boolean"}},
                    {"name": "X-Tenant", "in": "header", "required": True, "schema": {"type": "string"}},
                ],
            },
        },
    },
    "components": {"parameters": {"Limit": {"name": "limit", "in": "query", "schema": {"type": "integer"}}}},
}


# -- the server --------------------------------------------------------------------------------------------
class Handler(BaseHTTPRequestHandler):
    server: Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.handle_any()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def handle_any(self) -> None:
        url = urlsplit(self.path)
        path, query = url.path, {k: v[0] if len(v) == 1 else v for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        hits = self.server.hit(path)
        auth = self.headers.get("Authorization", "")
        echo = {
            "method": self.command,
            "path": path,
            "query": {k: v for k, v in query.items() if k != "api_key"},  # a well-behaved server keeps keys to itself
            "headers": {
                k.lower(): v
                for k, v in self.headers.items()
                if (k.lower().startswith("x-") and k != "X-API-Key") or k.lower() == "idempotency-key"
            },
            "body": json.loads(raw) if raw else None,
        }
        basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        allowed = {
            "/auth/bearer": auth == f"Bearer {TOKEN}",
            "/auth/basic": auth == basic,
            "/auth/key-header": self.headers.get("X-API-Key") == API_KEY,
            "/auth/key-query": query.get("api_key") == API_KEY,
        }
        if path in allowed or path.startswith("/secure/"):
            if not allowed.get(path, auth == f"Bearer {TOKEN}"):
                return self.reply(401, {"error": "unauthorized"}, {"WWW-Authenticate": "Bearer"})
            return self.reply(200, echo)
        if path == "/text":
            return self.reply(200, "plain old text", {"Content-Type": "text/plain; charset=utf-8"})
        if path == "/bytes":
            return self.reply(200, b"\x89PNG\r\n\x1a\n\x00\xff", {"Content-Type": "image/png"})
        if path.startswith("/flaky/"):
            failing = hits <= int(query.get("fail", 0))
            return self.reply(503, "try later") if failing else self.reply(200, {"attempt": hits})
        if path.startswith("/fail/"):
            return self.reply(500, "boom")
        if path == "/leaky":  # a careless server that echoes credentials in its error page
            return self.reply(500, f"bad request with {auth} and {self.headers.get('X-API-Key')}")
        if path.startswith("/status/"):
            return self.reply(int(path.rsplit("/", 1)[1]), {"status": path})
        if path == "/slow":
            time.sleep(float(query.get("delay", 1)))
            return self.reply(200, {"slow": True})
        if path == "/openapi.json":
            return self.reply(200, OPENAPI)
        if path == "/openapi.yaml":
            return self.reply(200, yaml.safe_dump(OPENAPI), {"Content-Type": "application/yaml"})
        return self.reply(200, echo)  # /json, /echo, /api/...

    def reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        if isinstance(body, bytes):
            data, content_type = body, "application/octet-stream"
        elif isinstance(body, str):
            data, content_type = body.encode(), "text/plain; charset=utf-8"
        else:
            data, content_type = json.dumps(body).encode(), "application/json"
        self.send_response(status)
        for key, value in {"Content-Type": content_type, **(headers or {})}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.base = f"http://127.0.0.1:{self.server_address[1]}"

    def hit(self, path: str) -> int:
        with self.lock:
            self.hits[path] += 1
            return self.hits[path]

    def url(self, path: str) -> str:
        return self.base + path

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up on /slow closes the socket under the handler; that is expected


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def isolated() -> Iterator[BreakerRegistry]:
    """Each test starts with closed circuits and no cached OpenAPI documents."""
    registry = BreakerRegistry()
    previous = set_default_breakers(registry)
    clear_spec_cache()
    yield registry
    set_default_breakers(previous)


def secret_free(*things: Any) -> None:
    for thing in things:
        text = thing if isinstance(thing, str) else json.dumps(thing, default=str)
        for secret in (TOKEN, PASSWORD, API_KEY, base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()):
            assert secret not in text


# -- requests and outputs ------------------------------------------------------------------------------------
async def test_get_returns_status_parsed_json_body_and_headers(server: Server) -> None:
    out = await HttpExecutor(url=server.url("/json?lang=en"), params={"q": "shoes", "page": 2}).execute()
    assert out["status_code"] == 200
    assert out["body"]["method"] == "GET"
    assert out["body"]["query"] == {"lang": "en", "q": "shoes", "page": "2"}
    assert out["headers"]["content-type"] == "application/json"
    assert set(out) == {"status_code", "body", "headers"}


async def test_text_body_stays_text(server: Server) -> None:
    out = await HttpExecutor(url=server.url("/text")).execute()
    assert out["body"] == "plain old text"


async def test_post_sends_json_body_and_headers(server: Server) -> None:
    ex = HttpExecutor(method="post", url=server.url("/echo"), json={"id": 7, "tags": ["a"]}, headers={"X-Trace": 42})
    out = await ex.execute()
    assert out["body"]["method"] == "POST"
    assert out["body"]["body"] == {"id": 7, "tags": ["a"]}
    assert out["body"]["headers"]["x-trace"] == "42"


async def test_full_output_describes_the_exchange(server: Server) -> None:
    out = await HttpExecutor(url=server.url("/json"), params={"a": 1}, output="full").execute()
    assert out["url"] == server.url("/json?a=1")
    assert out["method"] == "GET"
    assert out["http_version"] == "HTTP/1.0"
    assert 0 <= out["elapsed"] < 5
    assert out["body"]["path"] == "/json"


async def test_raw_output_is_base64_with_content_type(server: Server) -> None:
    out = await HttpExecutor(url=server.url("/bytes"), output="raw").execute()
    assert base64.b64decode(out["body"]) == b"\x89PNG\r\n\x1a\n\x00\xff"
    assert out["content_type"] == "image/png"
    json.dumps(out)  # fits in token data


# -- auth and secrets ------------------------------------------------------------------------------------------
AUTHS = {
    "bearer": ("/auth/bearer", {"type": "bearer", "token": TOKEN}),
    "basic": ("/auth/basic", {"type": "basic", "username": USER, "password": PASSWORD}),
    "api_key-header": ("/auth/key-header", {"type": "api_key", "name": "X-API-Key", "value": API_KEY}),
    "api_key-query": ("/auth/key-query", {"type": "api_key", "name": "api_key", "value": API_KEY, "in": "query"}),
}


@pytest.mark.parametrize("case", AUTHS, ids=str)
async def test_auth_is_sent_where_the_server_expects_it(server: Server, case: str) -> None:
    path, auth = AUTHS[case]
    out = await HttpExecutor(url=server.url(path), auth=auth).execute()
    assert out["status_code"] == 200
    with pytest.raises(ExecutorError) as caught:
        await HttpExecutor(url=server.url(path)).execute()
    assert caught.value.kind == "http_status" and not caught.value.retryable
    assert "answered 401 Unauthorized" in str(caught.value)


async def test_status_error_details_name_status_and_body(server: Server) -> None:
    with pytest.raises(ExecutorError) as caught:
        await HttpExecutor(url=server.url("/auth/bearer")).execute_internal()
    assert caught.value.details["status_code"] == 401
    assert caught.value.details["body"] == '{"error": "unauthorized"}'
    assert caught.value.details["url"] == server.url("/auth/bearer")


@pytest.mark.parametrize("case", AUTHS, ids=str)
async def test_credentials_never_show_in_spec_repr_or_results(server: Server, case: str) -> None:
    path, auth = AUTHS[case]
    ok = HttpExecutor(url=server.url(path), auth=auth, output="full")
    leaky = HttpExecutor(url=server.url("/leaky"), auth=auth, output="full")
    good, bad = await ok.execute_detailed(), await leaky.execute_detailed()
    assert good.ok and bad.status == "failed"
    assert "answered 500" in bad.error.message  # type: ignore[union-attr]
    secret_free(ok.spec(), repr(ok), str(ok.describe()), good.model_dump_json(), bad.model_dump_json())
    with pytest.raises(ExecutorError) as caught:
        await leaky.execute_internal()
    secret_free(str(caught.value), caught.value.details)
    assert ok.spec()["params"]["auth"] == "***"
    assert ok.spec(reveal_secrets=True)["params"]["auth"] == auth  # for handing to a trusted worker


async def test_registry_rebuilds_it_from_its_spec(server: Server) -> None:
    original = HttpExecutor(url=server.url("/auth/bearer"), auth=AUTHS["bearer"][1]).with_retry(2)
    rebuilt = default_registry().from_spec(original.spec(reveal_secrets=True))
    assert isinstance(rebuilt, HttpExecutor) and rebuilt.retry_policy == original.retry_policy
    assert (await rebuilt.execute())["status_code"] == 200


# -- retries and failures -------------------------------------------------------------------------------------
async def test_503_is_retried_until_it_succeeds(server: Server) -> None:
    ex = HttpExecutor(url=server.url("/flaky/a"), params={"fail": 2}).with_retry(NO_WAIT)
    result = await ex.execute_detailed()
    assert result.ok and result.output["body"] == {"attempt": 3}
    assert result.attempts == 3
    assert result.usage["http_requests"] == 3
    assert server.hits["/flaky/a"] == 3


@pytest.mark.parametrize(
    ("path", "retry_on_status", "attempts"),
    [("/status/404", None, 1), ("/fail/not-listed", None, 1), ("/flaky/b", [], 1), ("/status/418", [418], 3)],
)
async def test_only_statuses_in_retry_on_status_are_retried(
    server: Server, path: str, retry_on_status: list[int] | None, attempts: int
) -> None:
    params: dict[str, Any] = {"url": server.url(path), "params": {"fail": 9}, "circuit_breaker": False}
    if retry_on_status is not None:
        params["retry_on_status"] = retry_on_status
    result = await HttpExecutor(**params).with_retry(NO_WAIT).execute_detailed()
    assert result.status == "failed" and result.error is not None
    assert result.error.kind == "http_status"
    assert result.attempts == attempts == server.hits[path]


async def test_expected_status_decides_what_succeeds(server: Server) -> None:
    out = await HttpExecutor(url=server.url("/status/404"), expected_status=[404]).execute()
    assert out["status_code"] == 404 and out["body"] == {"status": "/status/404"}
    with pytest.raises(ExecutorError, match="answered 200"):
        await HttpExecutor(url=server.url("/json"), expected_status=[201]).execute()


async def test_slow_server_times_out_retryably(server: Server) -> None:
    started = time.perf_counter()
    result = await HttpExecutor(url=server.url("/slow"), params={"delay": 1}, timeout=0.1).execute_detailed()
    assert result.status == "timed_out" and result.error is not None
    assert result.error.kind == "timeout" and result.error.retryable
    assert "took longer than 0.1s" in result.error.message
    assert time.perf_counter() - started < 0.8


async def test_refused_connection_is_retryable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed when the block ends: nothing listens there
    result = await HttpExecutor(url=f"http://127.0.0.1:{port}/x").execute_detailed()
    assert result.error is not None
    assert result.error.kind == "connection" and result.error.retryable


# -- circuit breaker -------------------------------------------------------------------------------------------
async def test_circuit_opens_per_host_fails_fast_and_recovers(server: Server) -> None:
    now = [0.0]
    registry = BreakerRegistry(failure_threshold=3, reset_timeout=30, clock=lambda: now[0])
    failing = HttpExecutor(url=server.url("/fail/cb")).with_breakers(registry)
    healthy = HttpExecutor(url=server.url("/echo/cb")).with_breakers(registry)
    for _ in range(3):
        assert (await failing.execute_detailed()).error.kind == "http_status"  # type: ignore[union-attr]
    assert registry.states() == {f"http:{server.base}": BreakerState.OPEN}

    # Open: nothing reaches the host, whatever the path, and the error says to come back later.
    for ex in (failing, healthy):
        result = await ex.execute_detailed()
        assert result.error is not None and result.error.kind == "circuit_open" and result.error.retryable
        assert result.usage == {}
    assert server.hits["/fail/cb"] == 3 and server.hits["/echo/cb"] == 0

    # After reset_timeout one trial goes through: failing re-opens, succeeding closes.
    now[0] += 30
    assert (await failing.execute_detailed()).error.kind == "http_status"  # type: ignore[union-attr]
    assert (await healthy.execute_detailed()).error.kind == "circuit_open"  # type: ignore[union-attr]
    now[0] += 30
    assert (await healthy.execute_detailed()).ok
    assert registry.states() == {f"http:{server.base}": BreakerState.CLOSED}
    assert server.hits["/fail/cb"] == 4 and server.hits["/echo/cb"] == 1


async def test_executions_share_the_default_breaker_unless_disabled(server: Server, isolated: BreakerRegistry) -> None:
    for _ in range(5):  # the default threshold, each time from a new executor
        await HttpExecutor(url=server.url("/fail/shared")).execute_detailed()
    refused = await HttpExecutor(url=server.url("/fail/shared")).execute_detailed()
    assert refused.error is not None and refused.error.kind == "circuit_open"
    assert isolated.get(f"http:{server.base}").state is BreakerState.OPEN
    unguarded = await HttpExecutor(url=server.url("/fail/shared"), circuit_breaker=False).execute_detailed()
    assert unguarded.error is not None and unguarded.error.kind == "http_status"
    assert server.hits["/fail/shared"] == 6


async def test_client_errors_do_not_open_the_circuit(server: Server) -> None:
    registry = BreakerRegistry(failure_threshold=2)
    for _ in range(4):
        await HttpExecutor(url=server.url("/status/404")).with_breakers(registry).execute_detailed()
    assert registry.states() == {f"http:{server.base}": BreakerState.CLOSED}


# -- OpenAPI ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("doc", ["/openapi.json", "/openapi.yaml"])
async def test_openapi_operation_puts_parameters_where_the_spec_says(server: Server, doc: str) -> None:
    out = await HttpExecutor(
        openapi=server.url(doc),
        operation_id="getOrder",
        path_params={"order_id": "A/17"},
        params={"verbose": True, "X-Tenant": "acme"},
    ).execute()
    echo = out["body"]
    assert (echo["method"], echo["path"]) == ("GET", "/api/orders/A%2F17")
    assert echo["query"] == {"verbose": "true"}
    assert echo["headers"]["x-tenant"] == "acme"


async def test_openapi_ref_parameters_and_request_bodies(server: Server) -> None:
    spec = server.url("/openapi.json")
    listed = await HttpExecutor(openapi=spec, operation_id="listOrders", params={"limit": 5}).execute()
    assert listed["body"]["path"] == "/api/orders" and listed["body"]["query"] == {"limit": "5"}
    created = await HttpExecutor(openapi=spec, operation_id="createOrder", json={"sku": "X1"}).execute()
    assert (created["body"]["method"], created["body"]["body"]) == ("POST", {"sku": "X1"})


async def test_unknown_operation_names_it_and_what_exists(server: Server) -> None:
    result = await HttpExecutor(openapi=server.url("/openapi.yaml"), operation_id="getOrdr").execute_detailed()
    assert result.error is not None
    assert result.error.kind == "unknown_operation" and not result.error.retryable
    message = result.error.message
    assert "'getOrdr'" in message and "did you mean 'getOrder'?" in message
    assert "createOrder, getOrder, listOrders" in message


@pytest.mark.parametrize(
    ("operation", "params", "missing"),
    [
        ("getOrder", {"X-Tenant": "acme"}, "path parameter 'order_id'"),
        ("getOrder", {"order_id": "1"}, "header parameter 'X-Tenant'"),
        ("createOrder", {}, "a request body (json)"),
    ],
)
async def test_missing_required_inputs_are_named(
    server: Server, operation: str, params: dict[str, Any], missing: str
) -> None:
    ex = HttpExecutor(openapi=server.url("/openapi.json"), operation_id=operation, params=params)
    before = sum(n for path, n in server.hits.items() if path.startswith("/api/"))
    result = await ex.with_retry(NO_WAIT).execute_detailed()
    assert result.error is not None
    assert result.error.kind == "missing_parameter" and result.attempts == 1
    assert missing in result.error.message
    assert sum(n for path, n in server.hits.items() if path.startswith("/api/")) == before  # nothing was sent


@pytest.mark.parametrize(("ttl", "fetches"), [(300, 1), (0, 3)])
async def test_spec_documents_are_cached_for_spec_ttl(server: Server, ttl: float, fetches: int) -> None:
    before = server.hits["/openapi.json"]
    for _ in range(3):
        await HttpExecutor(openapi=server.url("/openapi.json"), operation_id="listOrders", spec_ttl=ttl).execute()
    assert server.hits["/openapi.json"] - before == fetches


async def test_spec_file_with_url_as_base_override(server: Server, tmp_path: Path) -> None:
    path = tmp_path / "orders.yaml"
    path.write_text(yaml.safe_dump({**OPENAPI, "servers": [{"url": "https://orders.invalid/v1"}]}))
    ex = HttpExecutor(openapi=str(path), operation_id="listOrders", url=server.url("/api"), params={"status": "open"})
    out = await ex.execute()
    assert out["body"]["path"] == "/api/orders" and out["body"]["query"] == {"status": "open"}


# -- in a workflow ------------------------------------------------------------------------------------------------
async def test_action_in_a_workflow_fills_templates_from_token_data(server: Server, engine: Engine) -> None:
    wf = Workflow("orders_http")
    new, sent = wf.states("new", "sent")
    action = HttpExecutor(
        method="PUT",
        url=server.url("/secure/orders/{{ order_id }}"),
        json={"order": "{{ order_id }}", "qty": "{{ qty }}", "note": "order {{ order_id }}"},
        auth={"type": "bearer", "token": TOKEN},
    ).as_action(into="response")
    wf.flow(new >> sent, "send", action=action)

    instance = await engine.start(wf, {"order_id": "A-17", "qty": 3})
    done = await engine.wait(instance.id, timeout=5)
    assert done.status is InstanceStatus.COMPLETED
    response = done.tokens[0].data["response"]
    assert response["status_code"] == 200
    assert response["body"]["path"] == "/secure/orders/A-17"
    assert response["body"]["body"] == {"order": "A-17", "qty": 3, "note": "order A-17"}
    events = [e.model_dump_json() async for e in engine.events(instance=instance.id)]
    secret_free(wf.spec().model_dump_json(), done.model_dump_json(), *events)


async def test_inside_a_firing_a_post_or_patch_carries_its_idempotency_key(server: Server) -> None:
    """An action may run again for the same firing (at least once): the server sees the same key every time (here
    a task on a worker, which carries the engine's key) and can do the work once. Each distinct request of a
    firing has its own key (the firing's key and a digest of the request)."""
    from circuit_breaker.executors._local_tasks import ExecutorCache, run_task
    from circuit_breaker.tasks import Task

    cache = ExecutorCache(default_registry())

    async def sent_headers(path: str = "/echo", **params: Any) -> dict[str, str]:
        spec = HttpExecutor(url=server.url(path), **params).spec()
        task = Task.new(workflow="shop", instance_id="i1", transition="charge", executor=spec, idempotency_key="k-1")
        output, error = await run_task(cache, task)
        assert error is None, error
        return output["body"]["headers"]  # type: ignore[no-any-return]

    posted = (await sent_headers(method="POST", json={"amount": 5}))["idempotency-key"]
    assert posted.startswith("k-1:")
    assert (await sent_headers(method="POST", json={"amount": 5}))["idempotency-key"] == posted  # run again
    others = {
        (await sent_headers(method="POST", json={"amount": 6}))["idempotency-key"],
        (await sent_headers("/echo/other", method="POST", json={"amount": 5}))["idempotency-key"],
        (await sent_headers(method="PATCH", json={"amount": 5}))["idempotency-key"],
    }
    assert len(others) == 3 and posted not in others and all(k.startswith("k-1:") for k in others)
    assert "idempotency-key" not in await sent_headers(method="GET")  # idempotent methods go without
    assert "idempotency-key" not in await sent_headers(method="PUT", json={})
    assert (await sent_headers(method="POST", headers={"idempotency-key": "mine"}))["idempotency-key"] == "mine"
    assert (await sent_headers(method="POST", idempotency_header="X-Request-Id"))["x-request-id"].startswith("k-1:")
    assert "idempotency-key" not in await sent_headers(method="POST", idempotency_header=None)
    alone = await HttpExecutor(method="POST", url=server.url("/echo"), json={}).execute()  # no firing, no key
    assert "idempotency-key" not in alone["body"]["headers"]


async def test_a_post_action_in_a_workflow_sends_the_firings_key(server: Server, engine: Engine) -> None:
    wf = Workflow("charges_http")
    new, charged = wf.states("new", "charged")
    body = {1: "a", "b": 2}  # keys of mixed types (a YAML document's): the key's digest must not choke on them
    wf.flow(new >> charged, "charge", action=HttpExecutor(method="POST", url=server.url("/echo"), json=body))
    done = await engine.wait((await engine.start(wf, {})).id, timeout=5)
    assert done.status is InstanceStatus.COMPLETED, done.history.to_records()[-1]
    assert done.tokens[0].data["body"]["headers"]["idempotency-key"].startswith(f"{done.id}:charge:")


# -- bad input ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({}, "parameter 'url' is required"),
        ({"url": "ftp://example.com/x"}, "not an absolute http(s) URL"),
        ({"url": "http://x", "method": "FETCH"}, "'FETCH' is not an HTTP method"),
        ({"url": "http://x", "operation_id": "getOrder"}, "'operation_id' needs 'openapi'"),
        ({"openapi": "spec.yaml"}, "'openapi' needs 'operation_id'"),
        ({"url": "http://x", "auth": {"type": "oauth", "token": TOKEN}}, "auth 'type' must be one of"),
        ({"url": "http://x", "auth": {"type": "bearer", "value": TOKEN}}, "needs 'token'"),
        ({"url": "http://x", "auth": {"type": "basic", "username": USER}}, "needs 'password'"),
        ({"url": "http://x", "auth": {"type": "bearer", "token": 123}}, "auth 'token' must be a non-empty string"),
        ({"url": "http://x", "auth": {"type": "api_key", "name": "k", "value": API_KEY, "in": "cookie"}}, "'in' must"),
        ({"url": "http://x", "auth": {"type": "bearer", "token": TOKEN, "extra": TOKEN}}, "not ['extra']"),
        ({"url": "http://x", "auth": f"Bearer {TOKEN}"}, "parameter 'auth'"),
        ({"url": "http://x", "timeout": 0}, "parameter 'timeout'"),
        ({"url": "http://x", "output": "xml"}, "parameter 'output'"),
        ({"url": "http://x", "expected_status": [999]}, "999 is not an HTTP status code"),
        ({"url": "http://x", "idempotency_header": "Idempotency Key"}, "is not an HTTP header name"),
    ],
)
def test_bad_parameters_are_refused_when_built(params: dict[str, Any], problem: str) -> None:
    with pytest.raises(ExecutorConfigError) as caught:
        HttpExecutor(**params)
    assert problem in str(caught.value)
    assert "'http'" in str(caught.value)
    secret_free(str(caught.value))


def test_templated_method_is_checked_once_rendered() -> None:
    ex = HttpExecutor(url="http://x/{{ id }}", method="{{ verb }}")
    assert ex.render({"id": 1, "verb": "delete"}).method == "DELETE"  # type: ignore[attr-defined]
    with pytest.raises(ExecutorConfigError, match="'YEET' is not an HTTP method"):
        ex.render({"id": 1, "verb": "YEET"})
