"""PythonExecutor: scripts and functions, in a child interpreter and in the engine, with errors that say what broke."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from circuit_breaker import Engine, InstanceStatus, Workflow
from circuit_breaker.errors import ExecutorConfigError, ExecutorError, TemplateError
from circuit_breaker.executors.python import PythonExecutor
from circuit_breaker.retry import RetryPolicy

SAMPLES = "tests.executors.sample_functions"
MODES = ["subprocess", "inprocess"]


def fn(name: str) -> str:
    return f"{SAMPLES}:{name}"


# -- functions -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
async def test_a_functions_dict_return_is_the_output(mode: str) -> None:
    out = await PythonExecutor(function=fn("add"), args=[2, 3], kwargs={"scale": 10}, mode=mode).execute()
    assert out == {"sum": 50}


@pytest.mark.parametrize("mode", MODES)
async def test_a_non_dict_return_comes_back_as_result(mode: str) -> None:
    out = await PythonExecutor(function=fn("square"), args=[7], mode=mode).execute()
    assert out == {"result": 49}


@pytest.mark.parametrize("mode", MODES)
async def test_async_functions_are_awaited(mode: str) -> None:
    out = await PythonExecutor(function=fn("greet"), args=["Ada"], kwargs={"punctuation": "?"}, mode=mode).execute()
    assert out["greeting"] == "hello Ada?"


async def test_subprocess_mode_runs_in_a_child_and_inprocess_in_the_engine() -> None:
    child = await PythonExecutor(function=fn("where")).execute()
    here = await PythonExecutor(function=fn("where"), mode="inprocess").execute()
    assert child["pid"] != os.getpid()
    assert here["pid"] == os.getpid()


async def test_subprocess_functions_get_cwd_and_env(tmp_path: Path) -> None:
    out = await PythonExecutor(function=fn("where"), cwd=str(tmp_path), env={"CB_SAMPLE": "yes"}).execute()
    assert out["cwd"] == os.path.realpath(tmp_path)
    assert out["sample"] == "yes"


async def test_what_a_function_prints_cannot_corrupt_its_result() -> None:
    out = await PythonExecutor(function=fn("chatty")).execute()
    assert out == {"done": True}


@pytest.mark.parametrize("mode", MODES)
async def test_a_raising_function_fails_with_its_exception_type_and_message(mode: str) -> None:
    result = await PythonExecutor(function=fn("fail"), args=["no such customer 42"], mode=mode).execute_detailed()
    assert result.status == "failed"
    assert result.error is not None
    assert result.error.kind == "ValueError"
    assert result.error.message == "no such customer 42"
    with pytest.raises(ExecutorError) as info:
        await PythonExecutor(function=fn("fail"), args=["boom"], mode=mode).execute()
    assert info.value.kind == "ValueError"
    assert str(info.value) == "boom"


@pytest.mark.parametrize("mode", MODES)
async def test_a_flaky_function_is_retried_because_exceptions_are_retryable_by_default(
    mode: str, tmp_path: Path
) -> None:
    policy = RetryPolicy(max_attempts=3, initial_delay=0.01)
    ex = PythonExecutor(function=fn("flaky"), args=[str(tmp_path / "count"), 2], mode=mode).with_retry(policy)
    result = await ex.execute_detailed()
    assert result.status == "succeeded"
    assert result.attempts == 3
    assert result.output == {"tries": 3}


@pytest.mark.parametrize("mode", MODES)
async def test_an_exception_marked_not_retryable_is_not_retried(mode: str) -> None:
    ex = PythonExecutor(function=fn("fail_permanently"), mode=mode).with_retry(
        RetryPolicy(max_attempts=3, initial_delay=0.01)
    )
    result = await ex.execute_detailed()
    assert result.attempts == 1
    assert result.error is not None
    assert result.error.kind == "PermanentError"
    assert not result.error.retryable


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("target", ["tests.executors.no_such_module:f", fn("missing"), fn("NOT_CALLABLE")])
async def test_a_function_that_cannot_be_loaded_fails_without_retrying(mode: str, target: str) -> None:
    result = await PythonExecutor(function=target, mode=mode).with_retry(3).execute_detailed()
    assert result.attempts == 1
    assert result.error is not None
    assert result.error.kind == "import_error"
    assert target in result.error.message


@pytest.mark.parametrize("mode", MODES)
async def test_a_result_that_is_not_json_fails_as_bad_output(mode: str) -> None:
    result = await PythonExecutor(function=fn("unserialisable"), mode=mode).execute_detailed()
    assert result.error is not None
    assert result.error.kind == "bad_output"


async def test_a_subprocess_function_timeout_stops_it() -> None:
    t0 = time.perf_counter()
    result = await PythonExecutor(function=fn("sleep"), args=[30], timeout=0.5).execute_detailed()
    assert time.perf_counter() - t0 < 3
    assert result.error is not None
    assert result.error.kind == "timeout"
    assert result.error.retryable


async def test_an_inprocess_timeout_fails_the_run() -> None:
    result = await PythonExecutor(function=fn("sleep"), args=[0.5], mode="inprocess", timeout=0.1).execute_detailed()
    assert result.error is not None
    assert result.error.kind == "timeout"


async def test_a_function_runs_as_a_workflow_action_with_templated_arguments(engine: Engine) -> None:
    wf = Workflow("python_fn")
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "add").action(PythonExecutor(function=fn("add"), args=["{{ x }}", "{{ y }}"]))
    inst = await engine.start(wf, {"x": 1.5, "y": 2})
    done = await engine.wait(inst.id, timeout=5)
    assert done.status is InstanceStatus.COMPLETED
    assert done.tokens[0].data == {"x": 1.5, "y": 2, "sum": 3.5}


# -- scripts ---------------------------------------------------------------------------------------------------
def write(path: Path, source: str) -> str:
    path.write_text(source)
    return str(path)


async def test_a_script_returns_its_output_and_the_json_object_on_its_last_line(tmp_path: Path) -> None:
    script = write(
        tmp_path / "report.py",
        "import json, sys\nprint('working on', sys.argv[1:])\nprint(json.dumps({'rows': 3, 'args': sys.argv[1:]}))\n",
    )
    out = await PythonExecutor(script=script, args=["a b", "$(x)", 2]).execute()
    assert out["exit_code"] == 0
    assert out["stdout"].startswith("working on ['a b', '$(x)', '2']\n")
    assert out["result"] == {"rows": 3, "args": ["a b", "$(x)", "2"]}
    assert out["stderr"] == ""


async def test_a_script_without_a_json_last_line_has_no_result(tmp_path: Path) -> None:
    script = write(tmp_path / "plain.py", "print('[1, 2]')\n")
    out = await PythonExecutor(script=script).execute()
    assert "result" not in out
    assert out["stdout"] == "[1, 2]\n"


async def test_a_relative_script_runs_in_cwd(tmp_path: Path) -> None:
    write(tmp_path / "here.py", "import os\nprint(os.getcwd())\n")
    out = await PythonExecutor(script="here.py", cwd=str(tmp_path)).execute()
    assert out["stdout"].strip() == os.path.realpath(tmp_path)


async def test_a_failing_script_fails_with_its_exit_code_and_traceback(tmp_path: Path) -> None:
    script = write(tmp_path / "broken.py", "raise RuntimeError('config file missing')\n")
    result = await PythonExecutor(script=script).execute_detailed()
    assert result.error is not None
    assert result.error.kind == "exit_code"
    assert "config file missing" in result.error.message
    assert not result.error.retryable
    out = await PythonExecutor(script=script, check=False).execute()
    assert out["exit_code"] == 1


FLAKY = """
import json, sys
from pathlib import Path
counter = Path(sys.argv[1])
tries = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(tries))
if tries < 3:
    print("service unavailable", file=sys.stderr)
    sys.exit(75)
print(json.dumps({"tries": tries}))
"""


async def test_a_flaky_script_is_retried_until_it_succeeds(tmp_path: Path) -> None:
    script = write(tmp_path / "flaky.py", FLAKY)
    policy = RetryPolicy(max_attempts=3, initial_delay=0.01)
    ex = PythonExecutor(script=script, args=[str(tmp_path / "count")], retry_exit_codes=[75]).with_retry(policy)
    result = await ex.execute_detailed()
    assert result.status == "succeeded"
    assert result.attempts == 3
    assert result.output["result"] == {"tries": 3}
    assert result.usage["cpu_time"] > 0
    # Without the exit code declared transient, the first failure is final.
    plain = PythonExecutor(script=script, args=[str(tmp_path / "count2")]).with_retry(policy)
    result = await plain.execute_detailed()
    assert result.attempts == 1
    assert result.error is not None
    assert "service unavailable" in result.error.message


async def test_a_missing_script_fails_with_the_interpreters_message(tmp_path: Path) -> None:
    result = await PythonExecutor(script=str(tmp_path / "nope.py")).execute_detailed()
    assert result.error is not None
    assert result.error.kind == "exit_code"
    assert "nope.py" in result.error.message


# -- parameters ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "exactly one of 'script' or 'function'"),
        ({"script": "a.py", "function": fn("add")}, "exactly one of 'script' or 'function'"),
        ({"function": "tests.executors.sample_functions.add"}, "package.module:function"),
        ({"function": "pkg:"}, "package.module:function"),
        ({"script": "a.py", "mode": "inprocess"}, "inprocess"),
        ({"script": "a.py", "args": [{"a": 1}]}, "strings"),
        ({"script": "a.py", "kwargs": {"a": 1}}, "kwargs"),
        ({"function": fn("add"), "args": [object()]}, "JSON"),
        ({"function": fn("add"), "mode": "inprocess", "env": {"A": "1"}}, "env"),
        ({"function": fn("add"), "stdin": "x"}, "stdin"),
    ],
)
def test_validate_refuses_inconsistent_parameters(params: dict, message: str) -> None:
    with pytest.raises(ExecutorConfigError, match=message) as info:
        PythonExecutor(**params)
    assert info.value.executor == "python"


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"function": fn("add"), "mode": "thread"}, "mode"),
        ({"function": fn("add"), "args": "1, 2"}, "args"),
        ({"function": fn("add"), "timeout": -1}, "timeout"),
        ({"function": fn("add"), "module": "x"}, "module"),
    ],
)
def test_mistyped_parameters_name_the_executor_and_parameter(params: dict, parameter: str) -> None:
    with pytest.raises(ExecutorConfigError) as info:
        PythonExecutor(**params)
    assert info.value.executor == "python"
    assert info.value.parameter == parameter


def test_a_template_naming_a_missing_field_raises_template_error() -> None:
    ex = PythonExecutor(function=fn("add"), args=["{{ x }}", "{{ y }}"])
    with pytest.raises(TemplateError) as info:
        ex.render({"x": 1})
    assert info.value.field == "y"
    assert "'y'" in str(info.value)


def test_run_works_from_plain_synchronous_code() -> None:
    assert PythonExecutor(function=fn("square"), args=[3]).run() == {"result": 9}
