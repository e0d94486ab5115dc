"""An HTTP-signature function for functions-framework: direct at ``/``, or behind ``/function/<name>`` as an
OpenFaaS gateway would route it. The payload says what to do, so one server covers every case."""

from __future__ import annotations

import time
from typing import Any

import flask


def score(request: flask.Request) -> Any:
    path = request.path.rstrip("/")
    if path.startswith("/function/") and path != "/function/score":
        return {"error": {"type": "FunctionNotFound", "message": f"no function at {path}"}}, 404
    payload = request.get_json(silent=True)
    if not isinstance(payload, dict):
        return {"error": {"type": "BadRequest", "message": "the payload must be a JSON object"}}, 400
    if "sleep" in payload:
        time.sleep(float(payload["sleep"]))
    if "raise" in payload:  # what a function runtime does with an exception: a 500 naming it
        return {"error": {"type": payload["raise"], "message": payload.get("message", "")}}, 500
    if "text_error" in payload:
        return payload["text_error"], 503, {"Content-Type": "text/plain"}
    n = int(payload.get("n", 0))
    if payload.get("reply_event"):  # a Knative-style reply: a binary-mode CloudEvent
        ce = {"ce-id": "r-1", "ce-source": "/score", "ce-type": "score.done", "ce-specversion": "1.0"}
        return {"score": n * 2}, 200, {**ce, "Content-Type": "application/json"}
    return {
        "score": n * 2,
        "received": payload,
        "path": path or "/",
        "auth": request.headers.get("Authorization"),
        "idempotency_key": request.headers.get("Idempotency-Key"),
    }
