"""ShellExecutor against real programs: outputs, exit codes, environment, timeouts that leave nothing behind."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from circuit_breaker import Engine, InstanceStatus, Workflow
from circuit_breaker.errors import ExecutorConfigError, ExecutorError, TemplateError
from circuit_breaker.executors.shell import ShellExecutor
from circuit_breaker.retry import RetryPolicy

PY = sys.executable

WRITE_PID_AND_SLEEP = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)"


def alive(pid: int) -> bool:
    """Running or sleeping; a zombie (killed, not yet reaped by its new parent) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


async def gone(pid: int, within: float = 2.0) -> bool:
    deadline = time.monotonic() + within
    while alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)  # do not leak it from a failing test
            return False
        await asyncio.sleep(0.02)
    return True


async def read_when_written(path: Path, within: float = 5.0) -> str:
    deadline = time.monotonic() + within
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, f"{path} never written"
        await asyncio.sleep(0.02)
    return path.read_text()


# -- outputs and exit codes ----------------------------------------------------------------------------------
async def test_returns_exit_code_stdout_stderr_and_duration() -> None:
    out = await ShellExecutor(argv=[PY, "-c", "import sys; print('out'); print('err', file=sys.stderr)"]).execute()
    assert out["exit_code"] == 0
    assert out["stdout"] == "out\n"
    assert out["stderr"] == "err\n"
    assert 0 < out["duration"] < 5


async def test_output_is_utf8_text_with_undecodable_bytes_replaced() -> None:
    code = "import sys; sys.stdout.buffer.write('héllo '.encode() + bytes([255]))"
    out = await ShellExecutor(argv=[PY, "-c", code]).execute()
    assert out["stdout"] == "héllo \ufffd"


async def test_non_zero_exit_fails_with_the_code_and_the_end_of_stderr_and_is_not_retried() -> None:
    ex = ShellExecutor(argv=["sh", "-c", "echo 'disk full' >&2; exit 3"]).with_retry(3)
    result = await ex.execute_detailed()
    assert result.status == "failed"
    assert result.attempts == 1
    assert result.error is not None
    assert result.error.kind == "exit_code"
    assert not result.error.retryable
    assert "exited with code 3" in result.error.message
    assert "disk full" in result.error.message
    with pytest.raises(ExecutorError) as info:
        await ShellExecutor(argv=["sh", "-c", "echo 'so far so good'; echo 'disk full' >&2; exit 3"]).execute()
    assert info.value.kind == "exit_code"
    assert info.value.details["exit_code"] == 3  # the whole output travels with the error
    assert info.value.details["stdout"] == "so far so good\n"
    assert info.value.details["stderr"] == "disk full\n"


async def test_check_false_returns_a_non_zero_exit_as_output() -> None:
    out = await ShellExecutor(argv=["sh", "-c", "echo partial; exit 4"], check=False).execute()
    assert out["exit_code"] == 4
    assert out["stdout"] == "partial\n"


async def test_retry_exit_codes_mark_a_transient_failure_that_is_retried() -> None:
    policy = RetryPolicy(max_attempts=2, initial_delay=0.01)
    result = (
        await ShellExecutor(argv=["sh", "-c", "exit 75"], retry_exit_codes=[75]).with_retry(policy).execute_detailed()
    )
    assert result.attempts == 2
    assert result.error is not None
    assert result.error.retryable


async def test_a_program_killed_by_a_signal_reports_the_signal() -> None:
    result = await ShellExecutor(argv=["sh", "-c", "kill -KILL $$"]).execute_detailed()
    assert result.error is not None
    assert "SIGKILL" in result.error.message
    out = await ShellExecutor(argv=["sh", "-c", "kill -KILL $$"], check=False).execute()
    assert out["exit_code"] == -signal.SIGKILL


async def test_a_missing_program_fails_clearly_and_is_not_retried() -> None:
    result = await ShellExecutor(argv=["no-such-program-cb-test"]).with_retry(3).execute_detailed()
    assert result.attempts == 1
    assert result.error is not None
    assert result.error.kind == "not_found"
    assert "no-such-program-cb-test" in result.error.message


# -- input, environment, working directory, output cap -----------------------------------------------------
async def test_stdin_is_fed_to_the_program_and_is_empty_by_default() -> None:
    out = await ShellExecutor(argv=["cat"], stdin="line 1\nline 2\n").execute()
    assert out["stdout"] == "line 1\nline 2\n"
    out = await ShellExecutor(argv=["cat"], timeout=5).execute()  # not the engine's stdin: no hang
    assert out["stdout"] == ""


async def test_environment_is_inherited_with_env_added_and_overriding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CB_PARENT", "from-parent")
    monkeypatch.setenv("CB_OVERRIDE", "parent")
    code = "import json, os; print(json.dumps({k: os.environ.get(k) for k in ('CB_PARENT', 'CB_OVERRIDE', 'CB_NEW')}))"
    ex = ShellExecutor(argv=[PY, "-c", code], env={"CB_OVERRIDE": "child", "CB_NEW": "new"})
    out = await ex.execute()
    assert json.loads(out["stdout"]) == {"CB_PARENT": "from-parent", "CB_OVERRIDE": "child", "CB_NEW": "new"}


async def test_inherit_env_false_gives_the_program_only_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CB_PARENT", "from-parent")
    out = await ShellExecutor(argv=["env"], inherit_env=False, env={"ONLY": "1"}).execute()
    assert out["stdout"].splitlines() == ["ONLY=1"]
    out = await ShellExecutor(argv=["env"], inherit_env=False).execute()
    assert out["stdout"] == ""


async def test_a_program_run_for_a_firing_gets_its_idempotency_key_in_the_environment() -> None:
    """As a Python action reads ``current_firing().idempotency_key``: the same key on every run of the firing,
    also on a worker (from the task)."""
    from circuit_breaker.engine import current_firing
    from circuit_breaker.executors import default_registry
    from circuit_breaker.executors._local_tasks import ExecutorCache, run_task
    from circuit_breaker.tasks import Task

    show = ShellExecutor(argv=[PY, "-c", "import os; print(os.environ.get('CB_IDEMPOTENCY_KEY', '-'))"])
    assert (await show.execute())["stdout"] == "-\n"  # no firing, no key
    keys: list[str] = []

    async def key_of(token: object) -> dict[str, str]:
        firing = current_firing()
        assert firing is not None
        keys.append(firing.idempotency_key)
        return {}

    wf = Workflow("keyed")
    a, b, c = wf.states("a", "b", "c")
    wf.flow(a >> b, "look").action(key_of)
    wf.flow(b >> c, "run").action(show)
    async with Engine() as engine:
        done = await engine.wait((await engine.start(wf, {})).id, timeout=10)
    run_key = done.tokens[0].data["stdout"].strip()
    assert run_key.startswith(f"{done.id}:run:") and keys and keys[0].startswith(f"{done.id}:look:")
    task = Task.new(workflow="keyed", instance_id="i1", transition="run", executor=show.spec(), idempotency_key="k-1")
    output, error = await run_task(ExecutorCache(default_registry()), task)
    assert error is None and output["stdout"] == "k-1\n"


async def test_secret_named_env_values_are_masked_in_results_and_other_values_are_not() -> None:
    ex = ShellExecutor(
        argv=["sh", "-c", 'echo "key=$SERVICE_API_KEY mode=$MODE"'], env={"SERVICE_API_KEY": "k-93f1c2", "MODE": "fast"}
    )
    out = await ex.execute()
    assert "k-93f1c2" not in out["stdout"]
    assert "mode=fast" in out["stdout"]


async def test_cwd_sets_the_working_directory(tmp_path: Path) -> None:
    out = await ShellExecutor(argv=[PY, "-c", "import os; print(os.getcwd())"], cwd=str(tmp_path)).execute()
    assert out["stdout"].strip() == os.path.realpath(tmp_path)
    result = await ShellExecutor(argv=["true"], cwd=str(tmp_path / "missing")).execute_detailed()
    assert result.error is not None
    assert result.error.kind == "not_found"


async def test_output_beyond_max_output_bytes_is_cut_with_a_marker() -> None:
    ex = ShellExecutor(
        argv=[PY, "-c", "import sys; print('x' * 1000); print('y' * 50, file=sys.stderr)"], max_output_bytes=100
    )
    out = await ex.execute()
    assert out["stdout"] == "x" * 100 + "\n...[truncated: 901 more bytes]"
    assert out["stderr"] == "y" * 50 + "\n"


# -- timeouts ---------------------------------------------------------------------------------------------------
CHILD_WITH_GRANDCHILD = """
import os, subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
open(sys.argv[1], "w").write(f"{os.getpid()} {grandchild.pid}")
time.sleep(60)
"""


async def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    ex = ShellExecutor(argv=[PY, "-c", CHILD_WITH_GRANDCHILD, str(pids)], timeout=1.0)
    t0 = time.perf_counter()
    result = await ex.execute_detailed()
    assert time.perf_counter() - t0 < 4
    assert result.status == "timed_out"  # its own timeout parameter expired
    assert result.error is not None
    assert result.error.kind == "timeout"
    assert result.error.retryable
    child, grandchild = (int(p) for p in pids.read_text().split())
    assert await gone(child)
    assert await gone(grandchild)
    assert result.usage["wall_time"] >= 1.0


async def test_timeout_sends_sigterm_first_so_the_program_can_clean_up(tmp_path: Path) -> None:
    marker = tmp_path / "cleaned"
    code = (
        "import signal, sys, time\n"
        "def bye(*_):\n"
        "    open(sys.argv[1], 'w').write('bye'); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "time.sleep(60)\n"
    )
    ex = ShellExecutor(argv=[PY, "-c", code, str(marker)], timeout=0.8)
    result = await ex.execute_detailed()
    assert result.error is not None
    assert result.error.kind == "timeout"
    assert marker.read_text() == "bye"


async def test_a_program_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    code = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); " + WRITE_PID_AND_SLEEP
    ex = ShellExecutor(argv=[PY, "-c", code, str(pid_file)], timeout=0.8)
    ex.kill_grace = 0.3
    t0 = time.perf_counter()
    result = await ex.execute_detailed()
    elapsed = time.perf_counter() - t0
    assert result.error is not None
    assert result.error.kind == "timeout"
    assert 1.05 <= elapsed < 3  # the timeout, then the whole grace period
    assert await gone(int(pid_file.read_text()))


async def test_the_executor_timeout_and_cancellation_kill_the_program(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    result = (
        await ShellExecutor(argv=[PY, "-c", WRITE_PID_AND_SLEEP, str(pid_file)]).with_timeout(1.0).execute_detailed()
    )
    assert result.status == "timed_out"
    assert await gone(int(pid_file.read_text()))

    pid_file.unlink()
    task = asyncio.create_task(ShellExecutor(argv=[PY, "-c", WRITE_PID_AND_SLEEP, str(pid_file)]).execute())
    pid = int(await read_when_written(pid_file))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await gone(pid)


# These rely on Linux (PR_SET_PDEATHSIG, pidfds). CI runs Linux, where they always run: in CI a non-Linux
# machine makes them fail rather than skip.

# Linux behaviour (PR_SET_PDEATHSIG, pidfds): the engine and CI run on Linux, so these always run.
ENGINE = """
import asyncio, sys
from circuit_breaker.executors.shell import ShellExecutor
code = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)"
asyncio.run(ShellExecutor(argv=[sys.executable, "-c", code, sys.argv[1]]).execute())
"""


async def test_programs_do_not_outlive_an_engine_that_dies(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    engine = await asyncio.create_subprocess_exec(PY, "-c", ENGINE, str(pid_file))
    try:
        pid = int(await read_when_written(pid_file))
    finally:
        engine.kill()  # no clean-up code runs in the engine
        await engine.wait()
    assert await gone(pid)


async def test_a_program_dies_with_its_launcher(tmp_path: Path) -> None:
    # asyncio kills only the process it started (the launcher) when a loop is torn down mid-run.
    ids = tmp_path / "ids"
    code = "import os, sys, time; open(sys.argv[1], 'w').write(f'{os.getpid()} {os.getppid()}'); time.sleep(60)"
    task = asyncio.create_task(ShellExecutor(argv=[PY, "-c", code, str(ids)]).execute_detailed())
    pid, launcher = (int(p) for p in (await read_when_written(ids)).split())
    os.kill(launcher, signal.SIGKILL)
    result = await asyncio.wait_for(task, 5)  # a surviving program would hold the output pipes open
    assert await gone(pid)
    assert result.error is not None
    assert result.error.kind == "exit_code"


# -- usage ---------------------------------------------------------------------------------------------------------
async def test_usage_is_the_programs_own_cpu_time_and_peak_memory() -> None:
    busy = ShellExecutor(argv=[PY, "-c", "x = b'x' * (100 << 20); sum(range(2_000_000))"])
    result = await busy.execute_detailed()
    usage = result.usage
    assert 0.02 < usage["cpu_time"] <= usage["wall_time"] + 0.05
    assert usage["peak_memory_kb"] > 100 * 1024
    small = (await ShellExecutor(argv=["true"]).execute_detailed()).usage
    assert 0 < small["peak_memory_kb"] < 50 * 1024
    assert small["cpu_time"] < 0.02  # the launcher's interpreter start-up is not counted


async def test_usage_of_concurrent_programs_is_not_mixed_up() -> None:
    busy = ShellExecutor(argv=[PY, "-c", "sum(range(4_000_000))"])
    idle = ShellExecutor(argv=["sleep", "0.3"])
    b, i = await asyncio.gather(busy.execute_detailed(), idle.execute_detailed())
    assert b.usage["cpu_time"] > 0.05
    assert i.usage["cpu_time"] < 0.02
    assert i.usage["wall_time"] >= 0.3


async def test_failed_runs_still_record_usage() -> None:
    result = await ShellExecutor(argv=[PY, "-c", "sum(range(500_000)); raise SystemExit(2)"]).execute_detailed()
    assert result.status == "failed"
    assert result.usage["cpu_time"] > 0
    assert result.usage["peak_memory_kb"] > 0


# -- parameters and templates -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({}, "argv"),
        ({"argv": "echo hi"}, "argv"),
        ({"argv": []}, "argv"),
        ({"argv": ["echo"], "timeout": "soon"}, "timeout"),
        ({"argv": ["echo"], "timeout": 0}, "timeout"),
        ({"argv": ["echo"], "env": {"A": ["list"]}}, "env"),
        ({"argv": ["echo"], "shell": True}, "shell"),
    ],
)
def test_missing_or_mistyped_parameters_name_the_executor_and_parameter(params: dict, parameter: str) -> None:
    with pytest.raises(ExecutorConfigError) as info:
        ShellExecutor(**params)
    assert info.value.executor == "shell"
    assert info.value.parameter == parameter
    assert "'shell'" in str(info.value)
    assert parameter in str(info.value)


def test_an_env_variable_name_with_equals_is_refused() -> None:
    with pytest.raises(ExecutorConfigError, match="A=B"):
        ShellExecutor(argv=["env"], env={"A=B": "1"})


def test_a_template_naming_a_missing_field_raises_template_error() -> None:
    ex = ShellExecutor(argv=["echo", "{{ customer.email }}"])
    with pytest.raises(TemplateError) as info:
        ex.render({"customer": {"name": "Ada"}})
    assert info.value.field == "customer.email"
    assert info.value.parameter == "argv"
    assert "customer.email" in str(info.value)


async def test_shell_metacharacters_in_token_data_reach_the_program_as_one_plain_argument(
    engine: Engine, tmp_path: Path
) -> None:
    nasty = f"x; rm -rf / $(whoami) `id` | tee {tmp_path}/piped && touch {tmp_path}/pwned $HOME"
    wf = Workflow("shell_args")
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "run").action(
        ShellExecutor(argv=[PY, "-c", "import json, sys; print(json.dumps(sys.argv[1:]))", "{{ name }}", "{{ n }}"])
    )
    inst = await engine.start(wf, {"name": nasty, "n": 3})
    done = await engine.wait(inst.id, timeout=5)
    assert done.status is InstanceStatus.COMPLETED
    data = done.tokens[0].data
    assert json.loads(data["stdout"]) == [nasty, "3"]  # verbatim, one item each; numbers as text
    assert data["exit_code"] == 0
    assert list(tmp_path.iterdir()) == []


async def test_a_failing_program_in_a_workflow_becomes_an_incident_naming_the_exit(engine: Engine) -> None:
    wf = Workflow("shell_fails")
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "run").action(ShellExecutor(argv=["sh", "-c", "echo 'bad input' >&2; exit 2"]))
    inst = await engine.start(wf, {})
    done = await engine.wait(inst.id, timeout=5)
    assert done.status is InstanceStatus.FAILED
    assert [t.place for t in done.tokens] == ["a"]
    message = done.open_incidents[0].error.message
    assert "exited with code 2" in message
    assert "bad input" in message


async def test_environment_excludes_inherited_names_and_fills_dollar_vars_from_token_data(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from circuit_breaker import Engine, Workflow

    monkeypatch.setenv("CB_TEST_CLOUD_KEY", "do-not-leak")
    monkeypatch.setenv("CB_TEST_KEEP", "kept")
    script = "import os; print(os.environ.get('CB_TEST_CLOUD_KEY'), os.environ['CB_TEST_KEEP'], os.environ['TARGET'])"
    wf = Workflow("env_builder")
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "run").action(
        ShellExecutor(
            argv=[sys.executable, "-c", script],
            env={"TARGET": "${customer.region}-${CB_TEST_KEEP}"},
            env_exclude=["cb_test_cloud_*"],
        )
    )
    async with Engine() as engine:
        inst = await engine.wait((await engine.start(wf, {"customer": {"region": "eu"}})).id, timeout=10)
    assert inst.tokens[0].data["stdout"].split() == ["None", "kept", "eu-kept"]
