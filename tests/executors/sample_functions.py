"""Functions the PythonExecutor tests call by ``tests.executors.sample_functions:<name>``, in a child or in-process."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any


def add(a: float, b: float, scale: float = 1) -> dict[str, Any]:
    return {"sum": (a + b) * scale}


def square(x: float) -> float:
    return x * x


async def greet(name: str, punctuation: str = "!") -> dict[str, Any]:
    await asyncio.sleep(0.01)
    return {"greeting": f"hello {name}{punctuation}", "pid": os.getpid()}


def where() -> dict[str, Any]:
    return {"pid": os.getpid(), "cwd": os.getcwd(), "sample": os.environ.get("CB_SAMPLE")}


def chatty() -> dict[str, Any]:
    print("progress: 50%")
    print("progress: 100%", file=sys.stderr)
    os.write(1, b"raw bytes on fd 1\n")
    return {"done": True}


def fail(message: str) -> dict[str, Any]:
    raise ValueError(message)


class PermanentError(Exception):
    retryable = False


def fail_permanently() -> dict[str, Any]:
    raise PermanentError("the record is gone for good")


def flaky(counter: str, failures: int) -> dict[str, Any]:
    """Fails ``failures`` times (counted in a file, so separate processes share the count), then succeeds."""
    path = Path(counter)
    tries = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(tries))
    if tries <= failures:
        raise ConnectionError(f"attempt {tries}: connection refused")
    return {"tries": tries}


def sleep(seconds: float) -> dict[str, Any]:
    time.sleep(seconds)
    return {"slept": seconds}


def unserialisable() -> dict[str, Any]:
    return {"handle": object()}


NOT_CALLABLE = 42
