"""Run a local program with an argument list: no shell, a process group per run, measured resource usage.

The child is started through a tiny wrapper (``sys.executable -I -S -c``) that starts the program (fork and
exec on Linux, ``posix_spawn`` elsewhere) and reaps it with ``os.wait4``, then reports the program's exit
status, CPU time and peak RSS on a pipe of its own. asyncio reaps the wrapper, and ``RUSAGE_CHILDREN`` deltas
are wrong whenever children run concurrently (and ``ru_maxrss`` of children is a maximum over all of them,
never a delta), so the only correct per-child figures come from a parent that waits for that one child
itself. The wrapper costs one interpreter start-up (~20 ms); its own CPU time is not counted. Linux carries
the pre-``exec`` peak RSS into ``ru_maxrss``, so ``peak_memory_kb`` never reads below the wrapper's (~7 MB);
above that it is the program's own.

The wrapper ignores SIGTERM and lives as long as the program, so a timeout's grace period ends when the
program exits, not when the wrapper does. On Linux nothing outlives the engine: the wrapper watches a pipe the
engine holds open and kills the process group when it closes (the engine died), and the program gets
``PR_SET_PDEATHSIG`` so that it dies with the wrapper (which asyncio kills on its own when a loop is torn
down mid-run). POSIX only.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from pydantic import BeforeValidator

from ..errors import ExecutorError
from ..secrets import default_masker
from ._base import Executor
from ._params import param

_WRAPPER = r"""
import os, signal, sys
report, lifeline = int(sys.argv[1]), int(sys.argv[2])
os.set_inheritable(report, False)
os.set_inheritable(lifeline, False)
env = dict(os.environ)
env.pop("LC_CTYPE", None)  # undo the interpreter's C-locale coercion: the program gets the env it was given
if sys.argv[3]:
    env["LC_CTYPE"] = sys.argv[3][1:]
path, argv = sys.argv[4], sys.argv[5:]
# SIGTERM is for the program: the wrapper outlives it, so the program's exit ends the grace period.
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGINT, signal.SIG_IGN)
defaults = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM, signal.SIGINT)

def fail(message):
    os.write(report, ("error %s" % message).encode())
    os._exit(127)

if sys.platform.startswith("linux"):
    import ctypes
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    wrapper = os.getpid()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG: should the wrapper be killed, the program dies too
            if os.getppid() != wrapper:
                os._exit(127)
            for signum in defaults:
                signal.signal(signum, signal.SIG_DFL)
            os.execve(path, argv, env)
        except BaseException as err:
            os.write(err_w, str(err).encode())
        os._exit(127)
    os.close(err_w)
    failure = os.read(err_r, 4096).decode(errors="replace")  # empty: the exec closed the pipe
    if failure:
        os.waitpid(pid, 0)
        fail(failure)
    # Wait for the program, or for the engine to go away (its end of the lifeline closes): then nothing of
    # the group may outlive it.
    import select
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        pidfd = None
    while pidfd is not None and pidfd not in select.select([pidfd, lifeline], [], [])[0]:
        if not os.read(lifeline, 1):
            os.killpg(0, signal.SIGKILL)
else:
    try:
        pid = os.posix_spawn(path, argv, env, setsigdef=defaults)
    except OSError as err:
        fail(err)
_, status, ru = os.wait4(pid, 0)
code = os.waitstatus_to_exitcode(status)
os.write(report, ("usage %d %r %r %d" % (code, ru.ru_utime, ru.ru_stime, ru.ru_maxrss)).encode())
os._exit(code if code >= 0 else 128 - code)
"""

DEFAULT_MAX_OUTPUT = 1024 * 1024
DETAILS_CHARS = 8192


def scalar_text(value: Any) -> Any:
    """Numbers and booleans rendered from token data (``"{{ count }}"``) become their JSON text."""
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)
    return value


# A string parameter that also takes a number or boolean filled in from token data.
Text = Annotated[str, BeforeValidator(scalar_text)]


@dataclass(frozen=True, slots=True)
class ProcessOutcome:
    """How a finished child went; ``*_dropped`` counts bytes cut by the output cap."""

    exit_code: int
    stdout: bytes
    stderr: bytes
    stdout_dropped: int
    stderr_dropped: int
    duration: float


class _Capture:
    """Collects a stream up to a cap, counting the rest, so a timed-out run still has its partial output."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.kept = bytearray()
        self.dropped = 0

    async def drain(self, stream: asyncio.StreamReader | None) -> None:
        if stream is None:
            return
        while chunk := await stream.read(65536):
            if self.limit is None or len(self.kept) + len(chunk) <= self.limit:
                self.kept += chunk
            else:
                room = self.limit - len(self.kept)
                self.kept += chunk[:room]
                self.dropped += len(chunk) - room


def child_env(env: Mapping[str, str] | None, inherit: bool, exclude: Sequence[str] = ()) -> dict[str, str]:
    """The child's environment: the parent's (unless ``inherit`` is off) minus ``exclude`` patterns, with
    ``env`` on top; ``${VAR}`` in ``env`` values is filled from the running token's data or the environment.
    Inside a firing (an engine's action, or a task on a worker) ``CB_IDEMPOTENCY_KEY`` holds its key."""
    from ..environment import build_environment
    from ._base import token_data, with_idempotency_key

    built = with_idempotency_key(
        build_environment(inherit=inherit, exclude=exclude, set=env or {}, context=token_data())
    )
    if env and any("${" in v for v in env.values() if isinstance(v, str)):
        # ${VAR} filled a secret-named variable (DB_PASSWORD=${db_password}): mask the value it got.
        default_masker().add_environment({k: built[k] for k in env if k in built})
    return built


def check_env(env: Mapping[str, str] | None) -> None:
    """Refuse unusable variable names; register the values of secret-named ones (``API_KEY``, ``*_TOKEN``...)
    so that results, events and logs mask them. Only those: masking every value of ``env`` everywhere would
    hide each ``1`` and ``true`` in every log."""
    for key in env or {}:
        if not key or "=" in key:
            raise ValueError(f"env variable name {key!r} is empty or holds '='")
    if env:
        default_masker().add_environment(env)


def tail(text: str, limit: int = DETAILS_CHARS) -> str:
    """The end of ``text``, where a failing program says why: error details stay small enough for events."""
    return text if len(text) <= limit else f"...[{len(text) - limit} characters cut]\n" + text[-limit:]


def decode(data: bytes, dropped: int) -> str:
    """UTF-8 text (bad bytes replaced), with a marker saying how much the cap cut off."""
    text = data.decode("utf-8", errors="replace")
    if dropped:
        text += f"\n...[truncated: {dropped} more bytes]"
    return text


def _find_program(program: str, env: Mapping[str, str], cwd: str | None) -> str | None:
    if os.sep in program:
        full = program if os.path.isabs(program) else os.path.join(cwd or os.getcwd(), program)
        return full if os.path.isfile(full) and os.access(full, os.X_OK) else None
    return shutil.which(program, path=env.get("PATH", os.defpath))


async def _feed(pipe: asyncio.StreamWriter | None, data: bytes) -> None:
    if pipe is None:
        return
    try:
        pipe.write(data)
        await pipe.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the program stopped reading; its exit code tells the story
    finally:
        pipe.close()


async def _kill_group(proc: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM the whole process group, give the program ``grace`` seconds to exit (the wrapper leading the
    group exits with it), then SIGKILL whatever is left."""
    try:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), grace)
    finally:
        # Grandchildren may ignore SIGTERM or outlive the leader; nothing of the group survives.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()


def _read_report(fd: int) -> str:
    with suppress(BlockingIOError, OSError):
        return os.read(fd, 4096).decode("ascii", errors="replace")
    return ""


def _record(executor: Executor, duration: float, report: str) -> None:
    executor.record_usage(wall_time=duration)
    parts = report.split()
    if len(parts) == 5 and parts[0] == "usage":
        executor.record_usage(cpu_time=float(parts[2]) + float(parts[3]))
        peak = float(parts[4]) / (1024 if sys.platform == "darwin" else 1)  # bytes on macOS, KiB elsewhere
        executor.record_usage(peak_memory_kb=peak)  # peak_* figures keep their maximum over attempts


async def run_process(
    executor: Executor,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | None = None,
    stdin: bytes | None = None,
    timeout: float | None = None,
    stdout_limit: int | None = DEFAULT_MAX_OUTPUT,
    stderr_limit: int | None = DEFAULT_MAX_OUTPUT,
    kill_grace: float = 2.0,
) -> ProcessOutcome:
    """Run ``argv`` in a new session and wait for it, recording usage on ``executor``.

    Raises ``ExecutorError`` kind ``not_found`` / ``spawn_error`` (not retryable) when the program cannot
    start and kind ``timeout`` (retryable) after ``timeout`` seconds, once the process group is gone. On
    cancellation (the executor's own ``with_timeout``, an engine shutting down) the group is killed too.
    """
    name = executor.name
    program = argv[0]
    if cwd is not None and not os.path.isdir(cwd):
        raise ExecutorError(
            f"executor {name!r}: cwd {cwd!r} is not a directory", executor=name, kind="not_found", retryable=False
        )
    path = _find_program(program, env, cwd)
    if path is None:
        where = "is not an executable file" if os.sep in program else "was not found on the PATH"
        raise ExecutorError(
            f"executor {name!r}: program {program!r} {where}", executor=name, kind="not_found", retryable=False
        )
    out, err = _Capture(stdout_limit), _Capture(stderr_limit)
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    life_r, life_w = os.pipe()  # the engine holds life_w until the run is over; the wrapper watches life_r
    t0 = time.perf_counter()
    try:
        spawn = asyncio.ensure_future(
            asyncio.create_subprocess_exec(
                sys.executable,
                "-I",
                "-S",
                "-c",
                _WRAPPER,
                str(write_fd),
                str(life_r),
                "=" + env["LC_CTYPE"] if "LC_CTYPE" in env else "",
                path,
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=cwd,
                env=dict(env),
                pass_fds=(write_fd, life_r),
                start_new_session=True,
            )
        )
        try:
            # Shielded: asyncio answers a cancellation mid-spawn by killing the wrapper alone, which would
            # orphan the program; instead let the spawn finish and take the whole group down.
            proc = await asyncio.shield(spawn)
        except asyncio.CancelledError:
            with suppress(Exception):
                await _kill_group(await spawn, kill_grace)
            raise
        except ValueError as exc:  # a NUL byte in an argument or variable, '=' in a variable name
            raise ExecutorError(
                f"executor {name!r}: cannot start {program!r}: {exc}",
                executor=name,
                kind="spawn_error",
                retryable=False,
            ) from None
        finally:
            os.close(write_fd)
            os.close(life_r)
        finished = False
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(
                    out.drain(proc.stdout), err.drain(proc.stderr), _feed(proc.stdin, stdin or b""), proc.wait()
                )
            finished = True
        except TimeoutError:
            pass
        finally:
            if not finished:
                await _kill_group(proc, kill_grace)
        duration = time.perf_counter() - t0
        report = _read_report(read_fd) if finished else ""
    finally:
        os.close(read_fd)
        os.close(life_w)
    _record(executor, duration, report)
    if not finished:
        raise ExecutorError(
            f"executor {name!r}: {program!r} timed out after {timeout:g}s; its process group was killed",
            executor=name,
            kind="timeout",
            retryable=True,
            details={
                "stdout": tail(decode(bytes(out.kept), out.dropped)),
                "stderr": tail(decode(bytes(err.kept), err.dropped)),
            },
        )
    if report.startswith("error "):
        raise ExecutorError(
            f"executor {name!r}: cannot start {program!r}: {report[6:]}",
            executor=name,
            kind="spawn_error",
            retryable=False,
        )
    parts = report.split()
    code = int(parts[1]) if len(parts) == 5 else proc.returncode
    assert code is not None
    return ProcessOutcome(code, bytes(out.kept), bytes(err.kept), out.dropped, err.dropped, duration)


def exit_error(
    executor: Executor, program: str, output: Mapping[str, Any], retry_codes: Sequence[int]
) -> ExecutorError:
    """The failure for a non-zero exit: the code (or signal) and the end of stderr; the output (its last
    ``DETAILS_CHARS`` characters of text) in ``details``."""
    code = int(output["exit_code"])
    if code < 0:
        try:
            how = f"was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited with code {code}"
    said = str(output.get("stderr", "")).strip()[-500:]
    return ExecutorError(
        f"executor {executor.name!r}: {program!r} {how}" + (f": {said}" if said else ""),
        executor=executor.name,
        kind="exit_code",
        retryable=code in retry_codes,
        details={k: tail(v) if isinstance(v, str) else v for k, v in output.items()},
    )


class ShellExecutor(Executor):
    """Run a program with an argument list; no shell, so token data cannot inject commands.

    Each ``argv`` item reaches the program as exactly one argument, whatever it holds (``; | $() `...``),
    also when a template fills it from token data. Returns ``exit_code``, ``stdout``, ``stderr`` (UTF-8 text)
    and ``duration``; records ``wall_time``, ``cpu_time`` and ``peak_memory_kb`` of the program. A non-zero
    exit fails (kind ``exit_code``) unless ``check`` is off. On ``timeout`` the program's whole process group
    gets SIGTERM, then SIGKILL ``kill_grace`` seconds later. Wants ``sh -c``? Say so in ``argv`` yourself.
    """

    name = "shell"
    kill_grace: ClassVar[float] = 2.0

    argv: list[Text] = param(required=True, min_length=1, description="program and arguments; no shell involved")
    env: dict[str, Text] | None = param(default=None, description="environment variables to add or override")
    inherit_env: bool = param(default=True, description="start from the engine's environment (else only env)")
    env_exclude: list[str] = param(default=[], description="patterns of inherited variables to drop (AWS_*)")
    cwd: str | None = param(default=None, description="working directory (default: the engine's)")
    timeout: float | None = param(default=None, gt=0, description="seconds before the process group is killed")
    stdin: str | None = param(default=None, description="text fed to the program's stdin (default: empty)")
    check: bool = param(default=True, description="fail on a non-zero exit code (else return it as output)")
    retry_exit_codes: list[int] = param(
        default=[], description="non-zero exit codes meaning a transient failure worth retrying (e.g. 75)"
    )
    max_output_bytes: int = param(
        default=DEFAULT_MAX_OUTPUT, ge=0, description="cap on stdout and on stderr each; the rest is cut with a marker"
    )

    def validate(self) -> None:
        if not self.argv[0]:
            raise ValueError("argv[0] (the program) is empty")
        check_env(self.env)

    async def execute_internal(self) -> dict[str, Any]:
        outcome = await run_process(
            self,
            self.argv,
            env=child_env(self.env, self.inherit_env, self.env_exclude),
            cwd=self.cwd,
            stdin=self.stdin.encode() if self.stdin is not None else None,
            timeout=self.timeout,
            stdout_limit=self.max_output_bytes,
            stderr_limit=self.max_output_bytes,
            kill_grace=self.kill_grace,
        )
        output: dict[str, Any] = {
            "exit_code": outcome.exit_code,
            "stdout": decode(outcome.stdout, outcome.stdout_dropped),
            "stderr": decode(outcome.stderr, outcome.stderr_dropped),
            "duration": outcome.duration,
        }
        if outcome.exit_code != 0 and self.check:
            raise exit_error(self, self.argv[0], output, self.retry_exit_codes)
        return output
