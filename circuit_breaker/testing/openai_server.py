"""A scripted OpenAI-compatible server on loopback, for testing LLM workflows without a model.

The real ``openai`` client (and so the ``assistant`` and ``agent`` executors) talks to it over HTTP, so tests
exercise exactly what production does: request building, streaming, tool calls, error handling::

    with ScriptedOpenAIServer([tool_call("lookup", {"city": "Oslo"}), "It is sunny."]) as server:
        ex = AssistantExecutor(model="test", input="Weather?", tools=[lookup], base_url=server.url, api_key="sk-x")
        out = await ex.execute()
        assert server.requests[1]["messages"][-1]["role"] == "tool"

A script is a list of responses (used in order) or a callable ``(request_json) -> response``. A response is a
string (the assistant's text), a message dict (``{"content": ..., "tool_calls": [...]}``; each tool call
``{"name", "arguments"}``), a full completion dict (one with ``"choices"``, sent as is), ``ServerError`` (an
HTTP error status) or ``RawResponse`` (any body, e.g. malformed JSON).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["RawResponse", "ScriptedOpenAIServer", "ServerError", "reply", "tool_call"]


@dataclass(frozen=True)
class ServerError:
    """Answer with an HTTP error status and an OpenAI-style error body."""

    status: int = 500
    message: str = "internal error"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RawResponse:
    """Answer with exactly this body (malformed JSON, HTML from a proxy...)."""

    body: str
    status: int = 200
    content_type: str = "application/json"


Response = str | dict[str, Any] | ServerError | RawResponse
Script = Sequence[Response] | Callable[[dict[str, Any]], Response]


def reply(content: str, **extra: Any) -> dict[str, Any]:
    """A plain assistant answer (``usage=...`` or ``finish_reason=...`` may be given)."""
    return {"content": content, **extra}


def tool_call(name: str, arguments: dict[str, Any] | str | None = None, *more: tuple[str, Any]) -> dict[str, Any]:
    """An assistant message asking for one tool call (plus ``(name, arguments)`` pairs for parallel calls)."""
    calls = [{"name": name, "arguments": arguments or {}}, *({"name": n, "arguments": a} for n, a in more)]
    return {"content": None, "tool_calls": calls}


class ScriptedOpenAIServer:
    """Serves ``POST /v1/chat/completions`` (JSON or server-sent events) and ``GET /v1/models`` from a script.

    Every request body is kept in ``requests`` (headers in ``request_headers``) so tests can assert what the
    client sent (header names lower-cased). Start it with ``with`` (or ``start()``/``stop()``); ``url`` is the
    base URL for clients.
    """

    def __init__(self, script: Script = (), *, usage: dict[str, int] | None = None) -> None:
        self._script: Callable[[dict[str, Any]], Response] | None = script if callable(script) else None
        self._queue: list[Response] = [] if callable(script) else list(script)
        self._usage = usage
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.requests: list[dict[str, Any]] = []
        self.request_headers: list[dict[str, str]] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> ScriptedOpenAIServer:
        handler = _handler(self)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._serve, name="scripted-openai", daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        assert self._httpd is not None
        self._httpd.serve_forever(poll_interval=0.02)  # a short poll keeps stop() (and test teardown) quick

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ScriptedOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the server is not running: start() it first")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """The base URL to give a client: ``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    # -- scripting ---------------------------------------------------------------------------------------
    def push(self, *responses: Response) -> None:
        """Append responses to a list script."""
        with self._lock:
            self._queue.extend(responses)

    @property
    def pending(self) -> int:
        """Scripted responses not yet used."""
        return len(self._queue)

    def _next(self, request: dict[str, Any]) -> Response:
        if self._script is not None:
            return self._script(request)
        with self._lock:
            if not self._queue:
                return ServerError(500, f"script exhausted after {len(self.requests)} request(s)")
            return self._queue.pop(0)

    def _record(self, body: dict[str, Any], headers: dict[str, str]) -> None:
        with self._lock:
            self.requests.append(body)
            self.request_headers.append(headers)

    # -- building answers --------------------------------------------------------------------------------
    def completion(self, request: dict[str, Any], message: dict[str, Any]) -> dict[str, Any]:
        """A full chat completion for a simplified message dict."""
        msg, finish = _message(message, next(self._ids))
        return {
            "id": f"chatcmpl-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": str(request.get("model", "scripted")),
            "choices": [{"index": 0, "message": msg, "finish_reason": finish, "logprobs": None}],
            "usage": message.get("usage") or self._usage or _count_usage(request, msg),
        }

    def chunks(self, completion: dict[str, Any], include_usage: bool) -> Iterator[dict[str, Any]]:
        """The server-sent event payloads a streaming client receives for ``completion``."""
        choice = completion["choices"][0]
        msg = choice["message"]
        base = {k: completion[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return base | {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        yield chunk({"role": "assistant", "content": ""})
        content = msg.get("content") or ""
        for i in range(0, len(content), 8):  # several pieces, so clients must join them
            yield chunk({"content": content[i : i + 8]})
        for index, call in enumerate(msg.get("tool_calls") or []):
            fn = call["function"]
            head = {"index": index, "id": call["id"], "type": "function", "function": {"name": fn["name"]}}
            yield chunk({"tool_calls": [head | {"function": {"name": fn["name"], "arguments": ""}}]})
            args = fn["arguments"]
            for i in range(0, len(args), 10):
                yield chunk({"tool_calls": [{"index": index, "function": {"arguments": args[i : i + 10]}}]})
        yield chunk({}, choice["finish_reason"])
        if include_usage:
            yield base | {"choices": [], "usage": completion["usage"]}


def _message(message: dict[str, Any], n: int) -> tuple[dict[str, Any], str]:
    calls = []
    for i, call in enumerate(message.get("tool_calls") or []):
        if "function" in call:  # already in wire form
            calls.append(call)
            continue
        args = call.get("arguments", {})
        calls.append(
            {
                "id": call.get("id") or f"call_{n}_{i}",
                "type": "function",
                "function": {"name": call["name"], "arguments": args if isinstance(args, str) else json.dumps(args)},
            }
        )
    msg: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
    if calls:
        msg["tool_calls"] = calls
    finish = message.get("finish_reason") or ("tool_calls" if calls else "stop")
    return msg, finish


def _words(value: Any) -> int:
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, dict):
        return sum(_words(v) for v in value.values())
    if isinstance(value, list):
        return sum(_words(v) for v in value)
    return 0


def _count_usage(request: dict[str, Any], msg: dict[str, Any]) -> dict[str, int]:
    """Word counts stand in for tokens: deterministic, and larger prompts cost more."""
    prompt = _words(request.get("messages", [])) + 1
    completion = _words(msg.get("content") or "") + 5 * len(msg.get("tool_calls") or [])
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _handler(server: ScriptedOpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            pass

        def _send(self, status: int, body: str, content_type: str = "application/json", **headers: str) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.rstrip("/").endswith("/models"):
                self._send(200, json.dumps({"object": "list", "data": [{"id": "scripted", "object": "model"}]}))
            else:
                self._send(404, json.dumps({"error": {"message": f"no route {self.path}", "type": "not_found"}}))

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                self._send(400, json.dumps({"error": {"message": "request body is not JSON"}}))
                return
            server._record(body, {k.lower(): v for k, v in self.headers.items()})
            if not self.path.rstrip("/").endswith("/chat/completions"):
                self._send(404, json.dumps({"error": {"message": f"no route {self.path}", "type": "not_found"}}))
                return
            answer = server._next(body)
            if isinstance(answer, ServerError):
                error = {"error": {"message": answer.message, "type": "server_error", "code": answer.status}}
                self._send(answer.status, json.dumps(error), **answer.headers)
                return
            if isinstance(answer, RawResponse):
                self._send(answer.status, answer.body, answer.content_type)
                return
            message = {"content": answer} if isinstance(answer, str) else answer
            completion = message if "choices" in message else server.completion(body, message)
            if not body.get("stream"):
                self._send(200, json.dumps(completion))
                return
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self._stream(server.chunks(completion, include_usage))

        def _stream(self, chunks: Iterable[dict[str, Any]]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            for chunk in chunks:
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
            self.close_connection = True

    return Handler
