"""The ``serverless`` executor: invoke a function-as-a-service function and return what it answered.

Backends:

* ``http`` (the default when ``url`` is given): ``mode="openfaas"`` posts the JSON payload to an OpenFaaS-style
  gateway at ``{url}/function/{function_name}``; ``mode="direct"`` posts it to ``url`` itself (a function URL,
  a Cloud Run / functions-framework HTTP function).
* ``cloudevents``: sends the payload as the data of a CloudEvent to ``url`` (Knative, functions-framework
  ``--signature-type cloudevent``), in ``ce_mode="binary"`` (``ce-*`` headers, JSON body) or ``"structured"``
  (one ``application/cloudevents+json`` document). A CloudEvent in the answer is unpacked into ``output``
  (its data) and ``event`` (its attributes).
* ``local`` (the default when ``handler`` is given): for development, the handler runs in a child Python
  with the payload as JSON on stdin; ``environment`` is added to its environment variables.

The output is ``{"status": "ok", "output": ..., "duration_s": ...}`` plus ``status_code`` for HTTP backends.
A function's failure raises ``ExecutorError`` with the function's error type as ``kind``: from a JSON error
body ``{"error": {"type", "message"}}`` (or ``kind="function_error"`` with the text of any other body) over
HTTP, from the exception in the child locally. Server errors (5xx), 408, 429, connection errors and timeouts
(``kind="timeout"``) are retryable; other 4xx are not, since sending the same request again cannot help.

Not in scope yet: AWS Lambda (boto3's ``invoke``, testable with moto's server, which needs a container
runtime per invocation) — a ``backend="lambda"`` would slot in next to ``http`` and ``cloudevents``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import httpx

from ..errors import ExecutorError
from ._base import Executor, add_idempotency_header, check_header_name, request_key
from ._params import param
from .shell import check_env, child_env, decode, run_process, tail

__all__ = ["ServerlessExecutor"]

_MODULE_HANDLER = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
_IDENTIFIER = re.compile(r"^[A-Za-z_]\w*$")
_RUNTIMES = ("python",)
_RETRYABLE_4XX = frozenset({408, 429})

# Runs in the child: argv is [kind ("module" | "file"), target, function, marker]; stdin is the payload. The
# handler's own prints go to stderr, so only the marked result line travels on stdout. A handler taking two
# arguments gets a Lambda-style context as the second.
_RUNNER = r"""
import importlib, importlib.util, inspect, json, os, sys, time, traceback
kind, target, function, marker, timeout = sys.argv[1:6]
result_out = os.fdopen(os.dup(1), "w", encoding="utf-8")
os.dup2(2, 1)

def report(body):
    result_out.write(marker + json.dumps(body) + "\n")
    result_out.flush()

def failure(kind, message, err=None, retryable=True):
    trace = "".join(traceback.format_exception(err)) if err is not None else ""
    return {"error": {"type": kind, "message": message, "retryable": retryable, "traceback": trace}}

try:
    payload = json.loads(sys.stdin.buffer.read() or b"null")
    if kind == "file":
        sys.path.insert(0, os.path.dirname(os.path.abspath(target)))
        spec = importlib.util.spec_from_file_location("_serverless_handler", target)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        sys.path.insert(0, os.getcwd())
        module = importlib.import_module(target)
    handler = getattr(module, function)
    if not callable(handler):
        raise TypeError("%s is not callable" % function)
except BaseException as err:
    report(failure("handler_not_found", "cannot load %s:%s: %s: %s" % (target, function, type(err).__name__, err),
                   err, False))
    sys.exit(0)

class Context:
    def __init__(self):
        self.function_name = function
        self._deadline = time.monotonic() + float(timeout)
    def get_remaining_time_in_millis(self):
        return max(0, int((self._deadline - time.monotonic()) * 1000))

try:
    params = [p for p in inspect.signature(handler).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
except (TypeError, ValueError):
    params = [None]
try:
    value = handler(payload, Context()) if len(params) >= 2 else handler(payload)
    if inspect.isawaitable(value):
        import asyncio
        async def _await(v):
            return await v
        value = asyncio.run(_await(value))
except BaseException as err:
    retryable = getattr(err, "retryable", True)
    report(failure(type(err).__name__, str(err) or type(err).__name__, err,
                   retryable if isinstance(retryable, bool) else True))
    sys.exit(0)
try:
    line = json.dumps({"ok": value})
except (TypeError, ValueError) as err:
    report(failure("bad_output", "the handler returned something that is not JSON: %s" % err, err, False))
else:
    result_out.write(marker + line + "\n")
    result_out.flush()
"""


class ServerlessExecutor(Executor):
    """Invoke a serverless function over HTTP (OpenFaaS gateway or a direct URL), as a CloudEvent, or locally.

    ``payload`` may hold templates filled from token data (``payload={"order": "{{ order_id }}"}``). The
    output is ``{"status": "ok", "output": <what the function returned>, "duration_s", "status_code"}``.
    """

    name: ClassVar[str] = "serverless"
    kill_grace: ClassVar[float] = 2.0

    function_name: str | None = param(description="the function's name: the gateway path (openfaas), the handler")
    runtime: str | None = param(description="local: the language runtime (only 'python'); remote: informational")
    payload: Any = param(default={}, description="the JSON payload (CloudEvents: the event's data)")
    environment: dict[str, str] = param(
        default={}, description="local: environment variables for the handler (remote functions have their own)"
    )
    url: str | None = param(description="openfaas: the gateway; direct and cloudevents: the function's URL")
    timeout: float = param(default=30.0, gt=0, description="seconds an invocation may take")
    backend: Literal["http", "cloudevents", "local"] | None = param(
        description="how to invoke; default 'http' with url, 'local' with handler"
    )
    mode: Literal["openfaas", "direct"] = param(
        default="openfaas", description="http: POST {url}/function/{function_name}, or POST url itself"
    )
    ce_mode: Literal["binary", "structured"] = param(
        default="binary", description="cloudevents: ce-* headers with a JSON body, or one cloudevents+json document"
    )
    event_type: str = param(default="dev.circuit_breaker.invoke", description="cloudevents: the event's type")
    source: str = param(default="circuit_breaker", description="cloudevents: the event's source")
    handler: str | None = param(
        description="local: 'module:function', 'path/to/file.py:function', or a file path with function_name"
    )
    headers: dict[str, str] = param(default={}, description="remote: extra request headers (not masked)")
    auth_token: str | None = param(secret=True, description="remote: sent as 'Authorization: Bearer <token>'")
    idempotency_header: str | None = param(
        default="Idempotency-Key",
        description="remote, inside a firing: an idempotency key (the firing's key and a digest of the call) goes "
        "in this header and is a cloudevent's id, the same on every run of the firing; none: no header",
    )

    # -- validation --------------------------------------------------------------------------------------
    def validate(self) -> None:
        if self.backend is None:
            if self.url is not None and self.handler is not None:
                raise ValueError("give 'url' (a remote function) or 'handler' (a local one), not both")
            if self.url is not None:
                self.backend = "http"
            elif self.handler is not None:
                self.backend = "local"
            else:
                raise ValueError("give 'url' (a remote function) or 'handler' (a local one)")
        if self.backend == "local":
            self._validate_local()
            return
        if self.url is None:
            raise ValueError(f"backend {self.backend!r} needs 'url'")
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"url {self.url!r} is not an absolute http(s) URL")
        if self.backend == "http" and self.mode == "openfaas" and not self.function_name:
            raise ValueError("mode 'openfaas' needs 'function_name' (the gateway path is /function/<name>)")
        if self.environment:
            raise ValueError("'environment' applies to local functions only; a remote function has its own")
        if self.handler is not None:
            raise ValueError(f"'handler' applies to local functions only, not backend {self.backend!r}")
        check_header_name("idempotency_header", self.idempotency_header)
        try:
            json.dumps(self.payload)
        except (TypeError, ValueError) as err:
            raise ValueError(f"payload must be JSON: {err}") from None

    def _validate_local(self) -> None:
        runtime = self.runtime or "python"
        if runtime not in _RUNTIMES:
            raise ValueError(f"runtime {runtime!r} cannot run locally (supported: {', '.join(_RUNTIMES)})")
        if self.handler is None:
            raise ValueError("backend 'local' needs 'handler' ('module:function' or a .py file)")
        if self.auth_token is not None or self.headers or self.url is not None:
            raise ValueError("'url', 'auth_token' and 'headers' apply to remote functions only")
        check_env(self.environment)
        self._local_target()  # raises ValueError for a malformed handler
        try:
            json.dumps(self.payload)
        except (TypeError, ValueError) as err:
            raise ValueError(f"payload must be JSON: {err}") from None

    def _local_target(self) -> tuple[str, str, str]:
        """``(kind, target, function)``: ``("file", path, fn)`` or ``("module", "pkg.mod", fn)``."""
        handler = self.handler or ""
        path, _, fn = handler.rpartition(":")
        if not path.endswith(".py"):  # no ':function' after the file, or not a file at all
            path, fn = handler, self.function_name or ""
        if path.endswith(".py"):
            if not fn:
                raise ValueError(f"handler {handler!r}: name the function ('{path}:main' or function_name='main')")
            if not _IDENTIFIER.match(fn):
                raise ValueError(f"handler {handler!r}: {fn!r} is not a function name")
            if not Path(path).is_file():
                raise ValueError(f"handler file {path!r} does not exist")
            return "file", path, fn
        if _MODULE_HANDLER.match(handler):
            module, _, fn = handler.partition(":")
            return "module", module, fn
        raise ValueError(f"handler {handler!r} must look like 'package.module:function' or 'path/to/file.py:function'")

    # -- running -----------------------------------------------------------------------------------------
    async def execute_internal(self) -> dict[str, Any]:
        if self.backend == "local":
            return await self._invoke_local()
        return await self._invoke_http()

    def _target_url(self) -> str:
        assert self.url is not None
        if self.backend == "http" and self.mode == "openfaas":
            return f"{self.url.rstrip('/')}/function/{self.function_name}"
        return self.url

    def _request(self) -> tuple[dict[str, str], bytes]:
        headers = {k: str(v) for k, v in self.headers.items()}
        if self.auth_token:
            headers["Authorization"] = f"Bearer {self.auth_token}"
        key = request_key(self.backend, self._target_url(), self.function_name, self.event_type, self.payload)
        if key is not None:
            add_idempotency_header(headers, self.idempotency_header, key)
        if self.backend != "cloudevents":
            headers["Content-Type"] = "application/json"
            return headers, json.dumps(self.payload).encode()
        from cloudevents.conversion import to_binary, to_structured
        from cloudevents.http import CloudEvent

        attributes = {"type": self.event_type, "source": self.source, "datacontenttype": "application/json"}
        if key is not None:  # the same event, however often it is sent: a consumer de-duplicates on source + id
            attributes["id"] = key
        if self.function_name:
            attributes["subject"] = self.function_name
        event = CloudEvent(attributes, self.payload)
        ce_headers, body = to_structured(event) if self.ce_mode == "structured" else to_binary(event)
        headers.update({k: str(v) for k, v in ce_headers.items()})
        if self.ce_mode == "binary":
            headers["content-type"] = "application/json"
        return headers, body if isinstance(body, bytes) else str(body).encode()

    async def _invoke_http(self) -> dict[str, Any]:
        url = self._target_url()
        headers, body = self._request()
        what = f"function {self.function_name or url!r}"
        self.record_usage(http_requests=1)
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout), httpx.AsyncClient(timeout=self.timeout) as client:
                response = await client.post(url, content=body, headers=headers)
        except (httpx.TimeoutException, TimeoutError) as err:
            raise ExecutorError(
                f"executor {self.name!r}: {what} took longer than {self.timeout:g}s",
                executor=self.name,
                kind="timeout",
                retryable=True,
                details={"url": url, "error": type(err).__name__},
            ) from err
        except httpx.TransportError as err:
            raise ExecutorError(
                f"executor {self.name!r}: cannot reach {what} at {url}: {err or type(err).__name__}",
                executor=self.name,
                kind="connection",
                retryable=True,
                details={"url": url, "error": type(err).__name__},
            ) from err
        duration = time.perf_counter() - t0
        status = response.status_code
        if not 200 <= status < 300:
            raise self._http_failure(what, url, response)
        out: dict[str, Any] = {"status": "ok", "status_code": status, "duration_s": duration}
        event = _response_event(response)
        if event is not None:
            out["output"], out["event"] = event
        else:
            out["output"] = _body(response)
        return out

    def _http_failure(self, what: str, url: str, response: httpx.Response) -> ExecutorError:
        status = response.status_code
        retryable = status >= 500 or status in _RETRYABLE_4XX
        body = _body(response)
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict) and isinstance(error.get("type"), str) and error["type"]:
            kind, message = error["type"], str(error.get("message") or error["type"])
        elif isinstance(error, str) and error:
            kind, message = "function_error", error
        else:
            kind = "function_error" if status >= 500 else "http_status"
            text = response.text.strip()
            message = f"{what} answered {status} {response.reason_phrase}" + (f": {text[:300]}" if text else "")
        return ExecutorError(
            message,
            executor=self.name,
            kind=kind,
            retryable=retryable,
            details={"status_code": status, "url": url, "body": tail(response.text)},
        )

    async def _invoke_local(self) -> dict[str, Any]:
        kind, target, function = self._local_target()
        marker = f"__circuit_breaker_result_{uuid.uuid4().hex}__"
        env = child_env(self.environment, True)
        # The child imports what the engine can (the project's packages), wherever it runs.
        env["PYTHONPATH"] = os.pathsep.join(p for p in [*sys.path, env.get("PYTHONPATH", "")] if p)
        outcome = await run_process(
            self,
            [sys.executable, "-c", _RUNNER, kind, target, function, marker, str(self.timeout)],
            env=env,
            stdin=json.dumps(self.payload).encode(),
            timeout=self.timeout,
            stdout_limit=None,  # only the result travels on stdout
            kill_grace=self.kill_grace,
        )
        stdout = outcome.stdout.decode("utf-8", errors="replace")
        line = next((ln for ln in reversed(stdout.splitlines()) if ln.startswith(marker)), None)
        stderr = tail(decode(outcome.stderr, outcome.stderr_dropped))
        if line is None:
            raise ExecutorError(
                f"executor {self.name!r}: {self.handler} exited with code {outcome.exit_code} before returning"
                + (f": {stderr[-300:]}" if stderr.strip() else ""),
                executor=self.name,
                kind="no_result",
                retryable=False,
                details={"exit_code": outcome.exit_code, "stderr": stderr},
            )
        body = json.loads(line[len(marker) :])
        if "error" in body:
            err = body["error"]
            own = err["type"] in ("handler_not_found", "bad_output")
            raise ExecutorError(
                (f"executor {self.name!r}: " if own else "") + err["message"],
                executor=self.name,
                kind=err["type"],
                retryable=bool(err["retryable"]),
                details={"handler": self.handler, "traceback": tail(err["traceback"]), "stderr": stderr},
            )
        return {"status": "ok", "output": body["ok"], "duration_s": outcome.duration}


def _body(response: httpx.Response) -> Any:
    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if response.content and (content_type == "application/json" or content_type.endswith("+json")):
        try:
            return response.json()
        except ValueError:
            pass  # claims JSON but is not: the text is more useful than an error
    return response.text


def _response_event(response: httpx.Response) -> tuple[Any, dict[str, Any]] | None:
    """``(data, attributes)`` when a function answered with a CloudEvent (Knative replies), else ``None``."""
    content_type = response.headers.get("content-type", "").lower()
    if "ce-id" not in response.headers and not content_type.startswith("application/cloudevents+json"):
        return None
    from cloudevents.exceptions import GenericException
    from cloudevents.http import from_http

    try:
        event = from_http(dict(response.headers), response.content)
    except GenericException:
        return None
    attributes = {k: v for k, v in event.get_attributes().items() if k != "data"}
    return event.get_data(), json.loads(json.dumps(attributes, default=str))
