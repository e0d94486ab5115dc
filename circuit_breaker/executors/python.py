"""Run Python: a script in a child interpreter, or a ``module:function`` in a child or in the engine itself."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import re
import sys
import traceback
import uuid
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from ..errors import ExecutorError
from ._base import Executor
from ._params import param
from .shell import (
    DEFAULT_MAX_OUTPUT,
    Text,
    check_env,
    child_env,
    decode,
    exit_error,
    run_process,
    scalar_text,
    tail,
)

_FUNCTION = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")

# Runs in the child: reads {function, args, kwargs, marker, sys_path} from stdin, calls the function and
# writes one marked JSON line ({"ok": value} or {"error": {...}}) to the original stdout. The function's
# own prints go to stderr, so they can neither corrupt nor crowd out the result.
_RUNNER = r"""
import importlib, inspect, json, os, sys, traceback
payload = json.loads(sys.stdin.buffer.read())
result_out = os.fdopen(os.dup(1), "w", encoding="utf-8")
os.dup2(2, 1)
sys.path.extend(p for p in payload["sys_path"] if p not in sys.path)

def report(body):
    result_out.write(payload["marker"] + json.dumps(body) + "\n")
    result_out.flush()

def failure(kind, err, retryable):
    trace = "".join(traceback.format_exception(err))
    return {"error": {"kind": kind, "message": str(err) or type(err).__name__, "retryable": retryable,
                      "traceback": trace}}

try:
    module_name, _, qualname = payload["function"].partition(":")
    target = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(payload["function"] + " is not callable")
except BaseException as err:
    body = failure("import_error", err, False)
    body["error"]["message"] = "cannot load %s: %s: %s" % (payload["function"], type(err).__name__, err)
    report(body)
    sys.exit(0)

async def _await(awaitable):
    return await awaitable

try:
    value = target(*payload["args"], **payload["kwargs"])
    if inspect.isawaitable(value):
        import asyncio
        value = asyncio.run(_await(value))
except BaseException as err:
    retryable = getattr(err, "retryable", True)
    report(failure(type(err).__name__, err, retryable if isinstance(retryable, bool) else True))
    sys.exit(0)
try:
    line = json.dumps({"ok": value})
except (TypeError, ValueError) as err:
    body = failure("bad_output", err, False)
    body["error"]["message"] = "the function returned something that is not JSON: %s" % err
    report(body)
else:
    result_out.write(payload["marker"] + line + "\n")
    result_out.flush()
"""


def _load(function: str) -> Callable[..., Any]:
    module_name, _, qualname = function.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{function} is not callable")
    return target  # type: ignore[no-any-return]


def _as_output(name: str, value: Any) -> dict[str, Any]:
    """A dict return is the output, anything else is ``{"result": value}``; both as JSON would carry them."""
    try:
        value = json.loads(json.dumps(value))
    except (TypeError, ValueError) as err:
        raise ExecutorError(
            f"executor {name!r}: the function returned something that is not JSON: {err}",
            executor=name,
            kind="bad_output",
            retryable=False,
        ) from None
    return value if isinstance(value, dict) else {"result": value}


def _last_json_object(stdout: str) -> dict[str, Any] | None:
    lines = stdout.rstrip().splitlines()
    if not lines:
        return None
    try:
        value = json.loads(lines[-1])
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class PythonExecutor(Executor):
    """Run a Python script, or call a ``package.module:function``, in a child interpreter or in-process.

    A script runs as ``sys.executable script *args`` and returns what the shell executor returns, plus
    ``result`` when its last stdout line is a JSON object. A function gets JSON ``args``/``kwargs``; a dict
    return is the output, anything else comes back as ``{"result": value}`` (what it prints is not output).
    An exception in the function fails with its type as ``kind`` and its message. ``mode="subprocess"``
    (default) isolates the engine from the code (crashes, memory, timeouts that really stop it);
    ``"inprocess"`` saves the interpreter start-up: sync functions run in a thread (a timeout then abandons,
    but cannot stop, the thread), async ones are awaited. A child can import whatever the engine can (the
    engine's ``sys.path`` is passed on).
    """

    name = "python"
    kill_grace: ClassVar[float] = 2.0

    script: str | None = param(default=None, description="path of a .py file to run")
    function: str | None = param(default=None, description="'package.module:function' to call")
    args: list[Any] = param(default=[], description="script: command-line arguments (text); function: JSON values")
    kwargs: dict[str, Any] = param(default={}, description="function only: JSON keyword arguments")
    mode: Literal["subprocess", "inprocess"] = param(default="subprocess", description="where the code runs")
    timeout: float | None = param(default=None, gt=0, description="seconds before the run is stopped")
    cwd: str | None = param(default=None, description="subprocess: working directory (default: the engine's)")
    env: dict[str, Text] | None = param(
        default=None, description="subprocess: environment variables to add or override"
    )
    inherit_env: bool = param(default=True, description="subprocess: start from the engine's environment")
    env_exclude: list[str] = param(default=[], description="subprocess: inherited variables to drop (AWS_*)")
    stdin: str | None = param(default=None, description="script only: text fed to stdin")
    check: bool = param(default=True, description="script only: fail on a non-zero exit code")
    retry_exit_codes: list[int] = param(
        default=[], description="script only: non-zero exit codes meaning a transient failure worth retrying"
    )
    max_output_bytes: int = param(
        default=DEFAULT_MAX_OUTPUT, ge=0, description="cap on captured stdout/stderr each; the rest is cut"
    )

    def validate(self) -> None:
        check_env(self.env)
        if (self.script is None) == (self.function is None):
            raise ValueError("give exactly one of 'script' or 'function'")
        if self.function is not None:
            if not _FUNCTION.match(self.function):
                raise ValueError(f"function {self.function!r} must look like 'package.module:function'")
            if self.stdin is not None:
                raise ValueError("'stdin' is for scripts (a function gets its arguments as JSON)")
            try:
                json.dumps([self.args, self.kwargs])
            except (TypeError, ValueError) as err:
                raise ValueError(f"function args/kwargs must be JSON values: {err}") from None
        else:
            if self.mode == "inprocess":
                raise ValueError("mode 'inprocess' calls a function; a script always runs in a subprocess")
            if self.kwargs:
                raise ValueError("'kwargs' is for functions; a script takes string 'args'")
            bad = [a for a in self.args if not isinstance(a, (str, int, float, bool))]
            if bad:
                raise ValueError(f"script args must be strings (or numbers, passed as text), got {bad!r}")
        if self.mode == "inprocess":
            given = [k for k in ("cwd", "env", "stdin") if getattr(self, k) is not None]
            if not self.inherit_env:
                given.append("inherit_env")
            if given:
                raise ValueError(f"{', '.join(given)} cannot apply in mode 'inprocess' (the engine's process)")

    async def execute_internal(self) -> dict[str, Any]:
        if self.function is None:
            return await self._run_script()
        if self.mode == "inprocess":
            return await self._call_inprocess(self.function)
        return await self._call_subprocess(self.function)

    async def _run_script(self) -> dict[str, Any]:
        assert self.script is not None
        outcome = await run_process(
            self,
            [sys.executable, self.script, *(scalar_text(a) for a in self.args)],
            env=child_env(self.env, self.inherit_env, self.env_exclude),
            cwd=self.cwd,
            stdin=self.stdin.encode() if self.stdin is not None else None,
            timeout=self.timeout,
            stdout_limit=self.max_output_bytes,
            stderr_limit=self.max_output_bytes,
            kill_grace=self.kill_grace,
        )
        stdout = decode(outcome.stdout, outcome.stdout_dropped)
        output: dict[str, Any] = {
            "exit_code": outcome.exit_code,
            "stdout": stdout,
            "stderr": decode(outcome.stderr, outcome.stderr_dropped),
            "duration": outcome.duration,
        }
        if outcome.exit_code != 0 and self.check:
            raise exit_error(self, self.script, output, self.retry_exit_codes)
        result = None if outcome.stdout_dropped else _last_json_object(stdout)
        if result is not None:
            output["result"] = result
        return output

    async def _call_subprocess(self, function: str) -> dict[str, Any]:
        marker = f"__circuit_breaker_result_{uuid.uuid4().hex}__"
        payload = {
            "function": function,
            "args": self.args,
            "kwargs": self.kwargs,
            "marker": marker,
            "sys_path": [p for p in sys.path if p],
        }
        outcome = await run_process(
            self,
            [sys.executable, "-c", _RUNNER],
            env=child_env(self.env, self.inherit_env, self.env_exclude),
            cwd=self.cwd,
            stdin=json.dumps(payload).encode(),
            timeout=self.timeout,
            stdout_limit=None,  # only the result travels on stdout
            stderr_limit=self.max_output_bytes,
            kill_grace=self.kill_grace,
        )
        stdout = outcome.stdout.decode("utf-8", errors="replace")
        line = next((ln for ln in reversed(stdout.splitlines()) if ln.startswith(marker)), None)
        if line is None:
            output = {"exit_code": outcome.exit_code, "stderr": tail(decode(outcome.stderr, outcome.stderr_dropped))}
            if outcome.exit_code != 0:
                raise exit_error(self, function, output, self.retry_exit_codes)
            raise ExecutorError(
                f"executor {self.name!r}: {function} exited before returning a result",
                executor=self.name,
                kind="no_result",
                retryable=False,
                details=output,
            )
        body = json.loads(line[len(marker) :])
        if "error" in body:
            err = body["error"]
            # Failures of the call itself name the executor; the function's own exceptions keep their message.
            prefix = f"executor {self.name!r}: " if err["kind"] in ("import_error", "bad_output") else ""
            raise ExecutorError(
                prefix + err["message"],
                executor=self.name,
                kind=err["kind"],
                retryable=bool(err["retryable"]),
                details={"function": function, "traceback": tail(err["traceback"])},
            )
        return _as_output(self.name, body["ok"])

    async def _call_inprocess(self, function: str) -> dict[str, Any]:
        try:
            fn = await asyncio.to_thread(_load, function)
        except Exception as err:
            raise ExecutorError(
                f"executor {self.name!r}: cannot load {function}: {type(err).__name__}: {err}",
                executor=self.name,
                kind="import_error",
                retryable=False,
            ) from err
        # Fresh copies, shaped as JSON would shape them: the same call as in a subprocess.
        args, kwargs = json.loads(json.dumps([self.args, self.kwargs]))
        try:
            async with asyncio.timeout(self.timeout) as deadline:
                if inspect.iscoroutinefunction(fn):
                    value = await fn(*args, **kwargs)
                else:
                    value = await asyncio.to_thread(fn, *args, **kwargs)
                    if inspect.isawaitable(value):
                        value = await value
        except ExecutorError:
            raise
        except Exception as err:
            if isinstance(err, TimeoutError) and deadline.expired():
                raise ExecutorError(
                    f"executor {self.name!r}: {function} timed out after {self.timeout:g}s",
                    executor=self.name,
                    kind="timeout",
                    retryable=True,
                ) from None
            retryable = getattr(err, "retryable", True)
            raise ExecutorError(
                str(err) or type(err).__name__,
                executor=self.name,
                kind=type(err).__name__,
                retryable=retryable if isinstance(retryable, bool) else True,
                details={"function": function, "traceback": tail("".join(traceback.format_exception(err)))},
            ) from err
        return _as_output(self.name, value)
