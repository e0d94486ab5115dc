"""Handlers for the local runtime: the payload arrives as the event; prints must not disturb the result."""

from __future__ import annotations

import os
import time
from typing import Any


class QuotaExceeded(Exception):
    """A function's own error type: it must come back as the failure's kind."""


def handle(event: dict[str, Any]) -> dict[str, Any]:
    print("a handler may print freely")
    return {"doubled": event["n"] * 2, "greeting": os.environ.get("GREETING")}


def lambda_style(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return {"function": context.function_name, "has_time": context.get_remaining_time_in_millis() > 0}


def fail(event: dict[str, Any]) -> None:
    raise QuotaExceeded(f"quota of {event.get('quota', 0)} used up")


def slow(event: dict[str, Any]) -> dict[str, Any]:
    time.sleep(float(event.get("sleep", 5)))
    return {}


not_callable = 42
