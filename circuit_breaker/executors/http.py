"""The ``http`` executor: one HTTP request per attempt, or an OpenAPI operation called by its operationId.

Failures carry what retry logic needs: ``kind="http_status"`` (retryable only for ``retry_on_status``),
``"connection"`` and ``"timeout"`` (retryable), ``"circuit_open"`` (retryable, nothing was sent),
``"unknown_operation"``, ``"missing_parameter"`` and ``"openapi_spec"`` (not retryable).

Every execution against the same origin (scheme, host, port) shares one circuit breaker from a
``BreakerRegistry``: the process-wide ``default_breakers()`` unless the executor is given its own with
``with_breakers(registry)`` (or the default is replaced with ``set_default_breakers``). Server errors (5xx),
connection errors and timeouts count as failures; any other answer shows the host is up.
"""

from __future__ import annotations

import asyncio
import base64
import difflib
import functools
import json as jsonlib
import re
import ssl
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import quote, urljoin, urlsplit

import httpx
import yaml

from ..errors import ExecutorError
from ._base import Executor, add_idempotency_header, check_header_name, request_key
from ._breaker import BreakerRegistry, CircuitOpenError, default_breakers
from ._params import param

__all__ = ["HttpExecutor", "clear_spec_cache"]

_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")
# The methods HTTP does not make idempotent: these carry the firing's idempotency key.
_NOT_IDEMPOTENT = frozenset({"POST", "PATCH"})
_AUTH_FIELDS: dict[str, tuple[str, ...]] = {
    "bearer": ("token",),
    "basic": ("username", "password"),
    "api_key": ("name", "value"),
}
_PATH_VAR = re.compile(r"\{([^{}/]+)\}")

# The contract names a parameter "json", and pydantic warns that such a field shadows BaseModel.json. That is
# harmless (the parameters model is never used through that method), so the warning is silenced for our
# model only: once for the class below, and around every construction (templated executors build partial
# models while running, and test runners reset warning filters).
_JSON_FIELD_WARNING = 'Field name "json" in "HttpExecutorParams"'
warnings.filterwarnings("ignore", message=_JSON_FIELD_WARNING, category=UserWarning)


@contextmanager
def _json_field_allowed() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_JSON_FIELD_WARNING, category=UserWarning)
        yield


class HttpExecutor(Executor):
    """Make an HTTP request, or call an OpenAPI operation by its operationId.

    ``url``, ``headers``, ``params`` and ``json`` may hold templates filled from token data
    (``url="https://api.example.com/orders/{{ order_id }}"``). Put credentials in ``auth``, which is masked
    wherever the executor is shown; values in ``headers`` are not. Redirects are not followed, so credentials
    never travel to another host: list 3xx codes in ``expected_status`` to accept them.

    With ``openapi`` and ``operation_id`` the spec decides the method and path: ``path_params`` fill the path,
    ``params`` go where the operation declares them (query or header; undeclared ones go to the query), and
    the base URL is the spec's first server (relative to the spec's own URL) unless ``url`` overrides it.
    """

    name: ClassVar[str] = "http"

    method: str = param(default="GET", description="HTTP method; with openapi the operation's method is used")
    url: str | None = param(description="the URL; with openapi, a base URL replacing the spec's servers")
    headers: dict[str, Any] = param(default={}, description="request headers (not masked: use auth for secrets)")
    params: dict[str, Any] = param(default={}, description="query parameters; with openapi, declared header ones too")
    json: Any = param(description="request body, sent as JSON")
    auth: dict[str, Any] | None = param(
        secret=True,
        description='{"type": "bearer", "token"}, {"type": "basic", "username", "password"} or '
        '{"type": "api_key", "name", "value", "in": "header" | "query"}',
    )
    timeout: float = param(default=30.0, gt=0, description="seconds the whole request may take")
    output: Literal["content", "full", "raw"] = param(
        default="content",
        description="content: status_code, body (parsed JSON or text), headers; full: also url, method, elapsed, "
        "http_version; raw: body as base64 plus content_type",
    )
    expected_status: list[int] | None = param(description="statuses that count as success; none given: any 2xx")
    retry_on_status: list[int] = param(
        default=[429, 502, 503, 504], description="failed statuses worth retrying; any other status is final"
    )
    circuit_breaker: bool = param(default=True, description="fail fast while the host keeps failing")
    openapi: str | None = param(description="an OpenAPI 3 document: URL or file path, JSON or YAML")
    operation_id: str | None = param(description="the operationId to call (with openapi)")
    path_params: dict[str, Any] = param(default={}, description="values for the operation's {path} parameters")
    spec_ttl: float = param(default=300.0, ge=0, description="seconds a loaded OpenAPI document is reused")
    idempotency_header: str | None = param(
        default="Idempotency-Key",
        description="inside a firing, a POST or PATCH carries an idempotency key in this header: the firing's key "
        "and a digest of the request (the same on every retry and every run of the firing); none: not sent",
    )

    def __init__(self, **params: Any) -> None:
        self._breakers: BreakerRegistry | None = None
        with _json_field_allowed():
            super().__init__(**params)

    # -- configuration ---------------------------------------------------------------------------------
    def with_breakers(self, registry: BreakerRegistry | None) -> HttpExecutor:
        """Take circuit breakers from ``registry`` instead of the process default (``None``: the default)."""
        self._breakers = registry
        return self

    @property
    def breakers(self) -> BreakerRegistry:
        return self._breakers if self._breakers is not None else default_breakers()

    def render(self, data: Mapping[str, Any]) -> Executor:
        clone = super().render(data)
        if clone is not self and isinstance(clone, HttpExecutor):
            clone._breakers = self._breakers  # the base copies retry and timeout only
        return clone

    def validate(self) -> None:
        method = self.method.upper()
        if method not in _METHODS:
            raise ValueError(f"method {self.method!r} is not an HTTP method (use one of {', '.join(_METHODS)})")
        self.method = method
        if self.openapi is None:
            if self.url is None:
                raise ValueError("parameter 'url' is required (or 'openapi' with 'operation_id')")
            if self.operation_id is not None:
                raise ValueError("'operation_id' needs 'openapi', the document to look it up in")
        elif not self.operation_id:
            raise ValueError("'openapi' needs 'operation_id', the operation to call")
        if self.url is not None:
            parts = urlsplit(self.url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"url {self.url!r} is not an absolute http(s) URL")
        if self.auth is not None:
            _check_auth(self.auth)
        for key, value in self.headers.items():
            if not isinstance(value, str | int | float):
                raise ValueError(f"header {key!r} must be a string or number, got {type(value).__name__}")
        for code in [*(self.expected_status or []), *self.retry_on_status]:
            if not 100 <= code <= 599:
                raise ValueError(f"{code} is not an HTTP status code")
        check_header_name("idempotency_header", self.idempotency_header)

    # -- running -----------------------------------------------------------------------------------------
    async def execute_internal(self) -> dict[str, Any]:
        request = await self._request()
        if not self.circuit_breaker:
            response = await self._send(request)
        else:
            breaker = self.breakers.get(f"http:{request.origin}")
            try:
                async with breaker:
                    response = await self._send(request)  # transport errors raise and count as failures
                    if response.status_code >= 500:
                        breaker.record_failure()
            except CircuitOpenError as err:
                err.executor = self.name
                raise
        return self._output(request, response)

    async def _request(self) -> _Request:
        req = _Request(
            method=self.method,
            url=self.url or "",
            headers={k: str(v) for k, v in self.headers.items()},
            query=dict(self.params),
            body=self.json,
        )
        if self.openapi is not None:
            doc = await _load_spec(self.openapi, ttl=self.spec_ttl, timeout=self.timeout, executor=self.name)
            operation = self.operation_id or ""  # validate() made sure it is there
            _apply_operation(req, doc, self.openapi, operation, self.url, self.path_params, self.name)
        # What errors and outputs show: everything but an api key sent in the query.
        req.shown = str(httpx.URL(req.url).copy_merge_params(req.query)) if req.query else req.url
        auth = self.auth or {}
        kind = auth.get("type")
        if kind == "bearer":
            req.headers["Authorization"] = f"Bearer {auth['token']}"
        elif kind == "basic":
            req.basic = httpx.BasicAuth(auth["username"], auth["password"])
        elif kind == "api_key":
            target = req.query if auth.get("in", "header") == "query" else req.headers
            target[auth["name"]] = auth["value"]
        if req.method.upper() in _NOT_IDEMPOTENT:
            key = request_key(req.method.upper(), req.url, req.query, req.body)
            if key is not None:
                add_idempotency_header(req.headers, self.idempotency_header, key)
        parsed = httpx.URL(req.url)
        req.origin = f"{parsed.scheme}://{parsed.host}:{parsed.port or (443 if parsed.scheme == 'https' else 80)}"
        return req

    async def _send(self, req: _Request) -> httpx.Response:
        self.record_usage(http_requests=1)
        try:
            # Merged by hand: httpx's params= would replace a query string already in the URL.
            url = httpx.URL(req.url).copy_merge_params(req.query) if req.query else httpx.URL(req.url)
            # httpx bounds each phase (connect, read...); the outer bound makes ``timeout`` the whole request's.
            async with asyncio.timeout(self.timeout), _client(self.timeout) as client:
                return await client.request(req.method, url, headers=req.headers, json=req.body, auth=req.basic)
        except (httpx.TimeoutException, TimeoutError) as err:
            raise ExecutorError(
                f"executor {self.name!r}: {req.method} {req.shown} took longer than {self.timeout:g}s",
                executor=self.name,
                kind="timeout",
                retryable=True,
                details={"url": req.shown, "method": req.method, "error": type(err).__name__},
            ) from err
        except httpx.TransportError as err:
            why = self._scrub(str(err)) or type(err).__name__
            raise ExecutorError(
                f"executor {self.name!r}: {req.method} {req.shown} failed: {why}",
                executor=self.name,
                kind="connection",
                retryable=True,
                details={"url": req.shown, "method": req.method, "error": type(err).__name__},
            ) from err

    def _output(self, req: _Request, response: httpx.Response) -> dict[str, Any]:
        status = response.status_code
        expected = status in self.expected_status if self.expected_status is not None else 200 <= status < 300
        if not expected:
            excerpt = self._scrub(response.text[:500])
            raise ExecutorError(
                f"executor {self.name!r}: {req.method} {req.shown} answered {status} {response.reason_phrase}"
                + (f": {excerpt[:200]}" if excerpt else ""),
                executor=self.name,
                kind="http_status",
                retryable=status in self.retry_on_status,
                details={"status_code": status, "body": excerpt, "url": req.shown, "method": req.method},
            )
        headers = dict(response.headers)
        if self.output == "raw":
            return {
                "status_code": status,
                "headers": headers,
                "body": base64.b64encode(response.content).decode("ascii"),
                "content_type": response.headers.get("content-type"),
            }
        out: dict[str, Any] = {"status_code": status, "body": _body(response), "headers": headers}
        if self.output == "full":
            out.update(
                url=req.shown,
                method=req.method,
                elapsed=response.elapsed.total_seconds(),
                http_version=response.http_version,
            )
        return out

    def _scrub(self, text: str) -> str:
        """``text`` without the credentials of ``auth`` (a server may echo them back in an error)."""
        auth = self.auth or {}
        secrets = [auth.get(k) for k in ("token", "password", "value")]
        if auth.get("type") == "basic":
            secrets.append(base64.b64encode(f"{auth['username']}:{auth['password']}".encode()).decode())
        for secret in secrets:
            if isinstance(secret, str) and len(secret) >= 3:
                text = text.replace(secret, "***")
        return text


@dataclass(slots=True)
class _Request:
    method: str
    url: str
    headers: dict[str, str]
    query: dict[str, Any]
    body: Any
    basic: httpx.BasicAuth | None = None
    shown: str = ""
    origin: str = ""


# -- helpers -------------------------------------------------------------------------------------------------
def _check_auth(auth: Mapping[str, Any]) -> None:
    """The shape of ``auth``; messages never quote the credential values."""
    kind = auth.get("type")
    if kind not in _AUTH_FIELDS:
        raise ValueError(f"auth 'type' must be one of {', '.join(map(repr, _AUTH_FIELDS))}, got {kind!r}")
    needed = _AUTH_FIELDS[kind]
    missing = [k for k in needed if k not in auth]
    if missing:
        raise ValueError(f"auth of type {kind!r} needs {', '.join(map(repr, missing))}")
    allowed = {"type", *needed, *(("in",) if kind == "api_key" else ())}
    extra = sorted(set(auth) - allowed)
    if extra:
        raise ValueError(f"auth of type {kind!r} takes {', '.join(map(repr, sorted(allowed)))}, not {extra}")
    for key in needed:
        if not isinstance(auth[key], str) or not auth[key]:
            raise ValueError(f"auth {key!r} must be a non-empty string")
    if auth.get("in", "header") not in ("header", "query"):
        raise ValueError(f"auth 'in' must be 'header' or 'query', got {auth['in']!r}")


def _body(response: httpx.Response) -> Any:
    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if response.content and (content_type == "application/json" or content_type.endswith("+json")):
        try:
            return response.json()
        except ValueError:
            pass  # claims JSON but is not: the text is more useful than an error
    return response.text


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Building a context loads the CA bundle (tens of ms); one per process is enough.
    return httpx.create_ssl_context()


def _client(timeout: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=timeout, verify=_ssl_context(), follow_redirects=False)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# -- OpenAPI -------------------------------------------------------------------------------------------------
_SPEC_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_SPEC_CACHE: dict[str, tuple[float, dict[str, Any]]] = {}


def clear_spec_cache() -> None:
    """Forget loaded OpenAPI documents (the next call loads them again)."""
    _SPEC_CACHE.clear()


def _spec_error(message: str, executor: str, *, retryable: bool = False) -> ExecutorError:
    return ExecutorError(
        f"executor {executor!r}: {message}", executor=executor, kind="openapi_spec", retryable=retryable
    )


async def _load_spec(location: str, *, ttl: float, timeout: float, executor: str) -> dict[str, Any]:
    """The parsed document at ``location`` (URL or path), reused for ``ttl`` seconds."""
    remote = urlsplit(location).scheme in ("http", "https")
    key = location if remote else str(Path(location.removeprefix("file://")).resolve())
    now = time.monotonic()
    cached = _SPEC_CACHE.get(key)
    if cached is not None and now - cached[0] < ttl:
        return cached[1]
    if remote:
        try:
            async with _client(timeout) as client:
                response = await client.get(location)
        except httpx.TransportError as err:
            raise _spec_error(f"cannot load OpenAPI document {location}: {err}", executor, retryable=True) from err
        if response.status_code != 200:
            transient = response.status_code >= 500 or response.status_code == 429
            raise _spec_error(
                f"cannot load OpenAPI document {location}: it answered {response.status_code}",
                executor,
                retryable=transient,
            )
        text = response.text
    else:
        try:
            text = Path(key).read_text(encoding="utf-8")
        except OSError as err:
            raise _spec_error(f"cannot read OpenAPI document {location}: {err.strerror or err}", executor) from err
    try:
        doc = jsonlib.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as err:
        raise _spec_error(f"cannot parse OpenAPI document {location}: {err}", executor) from err
    if not isinstance(doc, dict) or not isinstance(doc.get("paths"), dict):
        raise _spec_error(f"{location} is not an OpenAPI document (it has no 'paths')", executor)
    _SPEC_CACHE[key] = (now, doc)
    return doc


def _apply_operation(
    req: _Request,
    doc: dict[str, Any],
    location: str,
    operation_id: str,
    base_override: str | None,
    path_params: Mapping[str, Any],
    executor: str,
) -> None:
    """Turn ``req`` into a call of ``operation_id``: method, URL, and every parameter where the spec says."""
    found = _find_operation(doc, operation_id)
    if found is None:
        raise _unknown_operation(doc, location, operation_id, executor)
    method, path, operation, item = found
    where: dict[str, str] = {}
    declared: list[dict[str, Any]] = []
    for raw in [*(item.get("parameters") or []), *(operation.get("parameters") or [])]:
        p = _deref(doc, raw, executor)
        if (
            isinstance(p, dict)
            and isinstance(p.get("name"), str)
            and p.get("in") in ("path", "query", "header", "cookie")
        ):
            declared.append(p)
            where[p["name"]] = p["in"]

    # Path parameters come from path_params, or from params when the spec declares them in the path.
    values = {k: v for k, v in req.query.items() if where.get(k) == "path"} | dict(path_params)
    missing = [name for name in _PATH_VAR.findall(path) if name not in values]
    if missing:
        raise ExecutorError(
            f"executor {executor!r}: operation {operation_id!r} ({method} {path}) needs path parameter"
            f"{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} (give them in path_params)",
            executor=executor,
            kind="missing_parameter",
            retryable=False,
        )
    filled = _PATH_VAR.sub(lambda m: quote(_text(values[m.group(1)]), safe=""), path)

    query: dict[str, Any] = {}
    cookies: list[str] = []
    for key, value in req.query.items():
        place = where.get(key, "query")
        if place == "header":
            req.headers[key] = _text(value)
        elif place == "cookie":
            cookies.append(f"{key}={quote(_text(value), safe='')}")
        elif place == "query":
            query[key] = value
    if cookies:
        req.headers["Cookie"] = "; ".join(cookies)
    given_headers = {k.lower() for k in req.headers}
    absent = [
        f"{p['in']} parameter {p['name']!r}"
        for p in declared
        if p.get("required")
        and p["in"] != "path"
        and (p["name"].lower() not in given_headers if p["in"] == "header" else p["name"] not in req.query)
    ]
    body = _deref(doc, operation.get("requestBody") or {}, executor)
    if isinstance(body, dict) and body.get("required") and req.body is None:
        absent.append("a request body (json)")
    if absent:
        raise ExecutorError(
            f"executor {executor!r}: operation {operation_id!r} ({method} {path}) needs {', '.join(absent)}",
            executor=executor,
            kind="missing_parameter",
            retryable=False,
        )
    req.method = method
    req.url = _base_url(doc, location, base_override, executor).rstrip("/") + filled
    req.query = query


def _find_operation(doc: dict[str, Any], operation_id: str) -> tuple[str, str, dict[str, Any], dict[str, Any]] | None:
    for path, item in doc["paths"].items():
        if not isinstance(item, dict):
            continue
        for method in _SPEC_METHODS:
            operation = item.get(method)
            if isinstance(operation, dict) and operation.get("operationId") == operation_id:
                return method.upper(), str(path), operation, item
    return None


def _unknown_operation(doc: dict[str, Any], location: str, operation_id: str, executor: str) -> ExecutorError:
    known = sorted(
        op["operationId"]
        for item in doc["paths"].values()
        if isinstance(item, dict)
        for method in _SPEC_METHODS
        if isinstance(op := item.get(method), dict) and isinstance(op.get("operationId"), str)
    )
    close = difflib.get_close_matches(operation_id, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    listed = ", ".join(known[:10]) + (f" (+{len(known) - 10} more)" if len(known) > 10 else "")
    return ExecutorError(
        f"executor {executor!r}: no operation {operation_id!r} in {location}{hint} (it has: {listed or 'none'})",
        executor=executor,
        kind="unknown_operation",
        retryable=False,
        details={"operation_id": operation_id, "known": known},
    )


def _deref(doc: dict[str, Any], node: Any, executor: str) -> Any:
    """Follow local ``$ref`` pointers (``#/components/parameters/Limit``)."""
    for _ in range(32):
        if not (isinstance(node, dict) and isinstance(node.get("$ref"), str)):
            return node
        ref = node["$ref"]
        if not ref.startswith("#/"):
            raise _spec_error(f"only local $ref pointers are supported, got {ref!r}", executor)
        node = doc
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or part not in node:
                raise _spec_error(f"$ref {ref!r} points nowhere", executor)
            node = node[part]
    raise _spec_error("$ref pointers loop", executor)


def _base_url(doc: dict[str, Any], location: str, override: str | None, executor: str) -> str:
    if override:
        return override
    servers = doc.get("servers") or [{}]
    server: dict[str, Any] = servers[0] if isinstance(servers[0], dict) else {}
    url = str(server.get("url") or "/")
    variables: dict[str, Any] = server.get("variables") or {}
    for name, variable in variables.items():
        default = variable.get("default", "") if isinstance(variable, dict) else ""
        url = url.replace(f"{{{name}}}", str(default))
    if urlsplit(url).scheme:
        return url
    if urlsplit(location).scheme in ("http", "https"):
        return urljoin(location, url)
    raise _spec_error(
        f"the server URL {url!r} of {location} is relative to a file; give 'url' as the base URL", executor
    )
