"""The executor framework as users rely on it: declared parameters, validation, hooks, the result record,
retries, timeouts, templates, secrets, and executors as transition actions in a real engine.

Everything here runs in-process and fast (sleeps are tens of milliseconds at most), except one test that
rebuilds an executor from a workflow's spec in another Python process, as a remote worker does.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import pytest
from pydantic import BeforeValidator

from circuit_breaker import Engine, RetryPolicy, Workflow
from circuit_breaker.errors import (
    ActionError,
    CircuitBreakerError,
    ExecutorConfigError,
    ExecutorError,
    ExecutorTimeoutError,
    TemplateError,
)
from circuit_breaker.executors import ExecutionResult, Executor, ExecutorRegistry, default_registry, param
from circuit_breaker.secrets import SecretMasker, default_masker, set_default_masker

PROJECT = Path(__file__).parent / "fixtures" / "project"
NO_DELAY = RetryPolicy(max_attempts=3, initial_delay=0, max_delay=0, jitter=0)


@pytest.fixture(autouse=True)
def _own_masker() -> Iterator[SecretMasker]:
    """Executors register their secret values with the process-wide masker: give each test its own."""
    masker = SecretMasker()
    previous = set_default_masker(masker)
    yield masker
    set_default_masker(previous)


# -- the documented contract, exactly as written -------------------------------------------------------------
# (Left unannotated where the documentation's snippet is: users copy it as it is.)
class CustomExecutor(Executor):
    name = "custom"
    input_data: dict = param(required=True, description="Data to process")
    options: dict = param(default={}, description="Processing options")

    def validate(self):
        if "type" not in self.input_data:
            raise ValueError("input_data must specify a type")

    async def before_execute(self): ...

    async def execute_internal(self) -> dict:
        return {"processed": self.input_data, "status": "completed"}

    async def after_execute(self, result): ...


async def test_contract_execute_returns_the_output_dict() -> None:
    result = await CustomExecutor(input_data={"type": "csv"}).execute()

    assert result == {"processed": {"type": "csv"}, "status": "completed"}


def test_contract_missing_required_parameter_is_a_config_error_naming_it() -> None:
    with pytest.raises(ExecutorConfigError) as info:
        CustomExecutor(options={})

    assert info.value.executor == "custom"
    assert info.value.parameter == "input_data"
    assert "input_data" in str(info.value) and "required" in str(info.value)
    assert isinstance(info.value, CircuitBreakerError)


def test_contract_wrong_type_is_a_config_error() -> None:
    with pytest.raises(ExecutorConfigError) as info:
        CustomExecutor(input_data="x")

    assert info.value.parameter == "input_data"
    assert "input_data" in str(info.value) and "dictionary" in str(info.value)


def test_contract_validate_value_error_becomes_a_config_error() -> None:
    with pytest.raises(ExecutorConfigError) as info:
        CustomExecutor(input_data={"no": "type"})

    assert info.value.executor == "custom"
    assert "input_data must specify a type" in str(info.value)
    assert isinstance(info.value.__cause__, ValueError)


def test_contract_run_is_a_sync_helper_for_scripts() -> None:
    assert CustomExecutor(input_data={"type": "json"}).run() == {
        "processed": {"type": "json"},
        "status": "completed",
    }


def test_contract_parameters_are_attributes_and_described() -> None:
    ex = CustomExecutor(input_data={"type": "csv"})

    assert ex.input_data == {"type": "csv"}
    assert ex.options == {}
    described = {p["name"]: p for p in CustomExecutor.describe()["params"]}
    assert described["input_data"] == {
        "name": "input_data",
        "type": "dict",
        "required": True,
        "default": None,
        "description": "Data to process",
        "secret": False,
    }
    assert described["options"]["required"] is False
    assert described["options"]["default"] == {}
    assert described["options"]["description"] == "Processing options"


# -- parameters ----------------------------------------------------------------------------------------------
class Typed(Executor):
    """An executor with one parameter of each common type."""

    name = "typed"
    text: str = param(default="a", description="a string")
    count: int = param(default=1, gt=0, description="a positive integer")
    items: list[int] = param(default=[], description="an array of integers")
    mapping: dict[str, Any] = param(default={}, description="an object")
    flag: bool = param(default=False, description="a boolean")
    mode: Literal["fast", "safe"] = param(default="safe", description="one of two words")
    maybe: str | None = param(description="optional, no default")

    async def execute_internal(self) -> dict[str, Any]:
        return {"count": self.count, "mode": self.mode}


@pytest.mark.parametrize(
    ("params", "attribute", "expected"),
    [
        ({"text": "hello"}, "text", "hello"),
        ({"count": 3}, "count", 3),
        ({"items": [1, 2, 3]}, "items", [1, 2, 3]),
        ({"mapping": {"a": {"b": 1}}}, "mapping", {"a": {"b": 1}}),
        ({"flag": True}, "flag", True),
        ({"mode": "fast"}, "mode", "fast"),
        ({"maybe": "x"}, "maybe", "x"),
        ({}, "maybe", None),
        ({}, "count", 1),
    ],
)
def test_parameter_values_of_each_type_are_accepted(params: dict[str, Any], attribute: str, expected: Any) -> None:
    assert getattr(Typed(**params), attribute) == expected


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"text": 3}, "text"),
        ({"count": "many"}, "count"),
        ({"count": 0}, "count"),  # gt=0
        ({"count": -5}, "count"),
        ({"items": 5}, "items"),
        ({"items": ["x"]}, "items"),  # list[int] checks the items
        ({"mapping": "x"}, "mapping"),
        ({"flag": "maybe"}, "flag"),
        ({"mode": "reckless"}, "mode"),  # Literal
    ],
)
def test_parameter_values_of_the_wrong_type_are_refused_naming_the_parameter(
    params: dict[str, Any], parameter: str
) -> None:
    with pytest.raises(ExecutorConfigError) as info:
        Typed(**params)

    assert info.value.executor == "typed"
    assert info.value.parameter == parameter
    assert f"'{parameter}" in str(info.value)


def test_constraint_and_literal_messages_say_what_is_allowed() -> None:
    with pytest.raises(ExecutorConfigError, match="greater than 0"):
        Typed(count=0)
    with pytest.raises(ExecutorConfigError, match="'fast' or 'safe'"):
        Typed(mode="x")


def test_every_bad_parameter_is_reported_at_once() -> None:
    with pytest.raises(ExecutorConfigError) as info:
        Typed(count=0, mode="x")

    assert "'count'" in str(info.value) and "'mode'" in str(info.value)


def test_unknown_parameters_are_refused_naming_them_and_the_accepted_ones() -> None:
    with pytest.raises(ExecutorConfigError) as info:
        CustomExecutor(input_data={"type": "csv"}, optoins={})

    message = str(info.value)
    assert info.value.parameter == "optoins"
    assert "unknown parameter 'optoins'" in message
    assert "input_data" in message and "options" in message


def test_mutable_defaults_are_not_shared_between_instances() -> None:
    first, second = Typed(), Typed()
    first.items.append(1)
    first.mapping["k"] = "v"
    a = CustomExecutor(input_data={"type": "csv"})
    a.options["changed"] = True

    assert second.items == [] and second.mapping == {}
    assert Typed().items == [] and Typed().mapping == {}
    assert CustomExecutor(input_data={"type": "csv"}).options == {}
    assert {p["name"]: p["default"] for p in Typed.describe()["params"]}["items"] == []


def test_describe_lists_types_requiredness_defaults_and_descriptions() -> None:
    described = Typed.describe()

    assert described["name"] == "typed"
    assert described["description"] == "An executor with one parameter of each common type."
    assert described["class"].endswith(":Typed")
    types = {p["name"]: p["type"] for p in described["params"]}
    assert types == {
        "text": "str",
        "count": "int",
        "items": "list[int]",
        "mapping": "dict[str, Any]",
        "flag": "bool",
        "mode": "Literal['fast', 'safe']",
        "maybe": "str | None",
    }
    assert all(p["required"] is False for p in described["params"])
    assert {p["name"]: p["description"] for p in described["params"]}["count"] == "a positive integer"
    json.dumps(described)  # what `circuit-breaker executors --json` prints


def test_describe_gives_readable_type_names() -> None:
    # Listings show these to people: no module paths, no validator reprs with memory addresses.
    class Readable(Executor):
        name = "readable"
        text: Annotated[str, BeforeValidator(str)] = param(default="")
        steps: list[Executor] = param(default=[])
        where: Path | None = param()

        async def execute_internal(self) -> dict[str, Any]:
            return {}

    types = {p["name"]: p["type"] for p in Readable.describe()["params"]}

    assert types == {"text": "str", "steps": "list[Executor]", "where": "Path | None"}


def test_a_parameter_cannot_be_both_required_and_defaulted() -> None:
    with pytest.raises(TypeError, match="required or has a default"):
        param(required=True, default=1)


def test_subclasses_inherit_parameters_and_may_override_defaults() -> None:
    class Base(Executor):
        name = "base_exec"
        url: str = param(required=True, description="where")
        retries: int = param(default=1)

        async def execute_internal(self) -> dict[str, Any]:
            return {"url": self.url, "retries": self.retries}

    class Child(Base):
        name = "child_exec"
        retries: int = param(default=5)
        verbose: bool = param(default=False)

    child = Child(url="http://x", verbose=True)

    assert (child.url, child.retries, child.verbose) == ("http://x", 5, True)
    assert [p["name"] for p in Child.describe()["params"]] == ["url", "retries", "verbose"]
    with pytest.raises(ExecutorConfigError, match="'url'"):
        Child()
    with pytest.raises(ExecutorConfigError, match="unknown parameter 'verbose'"):
        Base(url="x", verbose=True)


# -- definition-time errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("hook", ["execute_internal", "before_execute", "after_execute"])
def test_a_hook_that_is_not_async_is_refused_when_the_class_is_defined(hook: str) -> None:
    def sync_hook(self: Any, *args: Any) -> dict[str, Any]:
        return {}

    with pytest.raises(ExecutorConfigError, match=f"{hook} must be 'async def'"):
        type("SyncHookExecutor", (Executor,), {hook: sync_hook})


@pytest.mark.parametrize("bad", ["Bad Name", "1st", "has.dot", "UPPER", "star*"])
def test_a_bad_executor_name_is_refused_when_the_class_is_defined(bad: str) -> None:
    async def work(self: Any) -> dict[str, Any]:
        return {}

    with pytest.raises(ExecutorConfigError) as info:
        type("BadNameExecutor", (Executor,), {"name": bad, "execute_internal": work})

    assert repr(bad) in str(info.value)


def test_the_name_defaults_to_the_class_name_and_the_description_to_the_docstring() -> None:
    class MyThingExecutor(Executor):
        """Does one thing
        well.

        Details that listings leave out.
        """

        async def execute_internal(self) -> dict[str, Any]:
            return {}

    assert MyThingExecutor.name == "my_thing"
    assert MyThingExecutor.description == "Does one thing well."


@pytest.mark.parametrize("attribute", ["name", "execute", "usage"])
def test_a_parameter_shadowing_a_framework_attribute_is_refused_when_the_class_is_defined(attribute: str) -> None:
    # A parameter called `name` or `execute` would replace what the framework itself reads and calls.
    async def work(self: Any) -> dict[str, Any]:
        return {}

    namespace = {"__annotations__": {attribute: str}, attribute: param(default="x"), "execute_internal": work}
    with pytest.raises(ExecutorConfigError, match=repr(attribute)):
        type("ShadowExecutor", (Executor,), namespace)


def test_the_base_class_itself_cannot_run() -> None:
    with pytest.raises(ExecutorConfigError, match="subclass"):
        Executor()


# -- hooks -----------------------------------------------------------------------------------------------------
class Recording(Executor):
    """Records the hooks it goes through; fails the first ``fail_times`` attempts."""

    name = "recording"
    fail_times: int = param(default=0)
    retryable: bool = param(default=True)
    output: Any = param(default=None)
    log: ClassVar[list[tuple[str, Any]]] = []

    async def before_execute(self) -> None:
        self.log.append(("before", None))

    async def execute_internal(self) -> dict[str, Any]:
        attempt = sum(1 for step, _ in self.log if step == "internal") + 1
        self.log.append(("internal", attempt))
        if attempt <= self.fail_times:
            raise ExecutorError(f"attempt {attempt} failed", kind="flaky", retryable=self.retryable)
        return self.output if self.output is not None else {"attempt": attempt}

    async def after_execute(self, result: dict[str, Any]) -> None:
        self.log.append(("after", result))


@pytest.fixture(autouse=True)
def _clear_recording() -> None:
    Recording.log = []


async def test_hooks_run_in_order_and_after_execute_receives_the_output() -> None:
    output = await Recording().execute()

    assert output == {"attempt": 1}
    assert Recording.log == [("before", None), ("internal", 1), ("after", {"attempt": 1})]


async def test_before_execute_runs_for_every_attempt_and_after_execute_only_on_success() -> None:
    result = await Recording(fail_times=2).with_retry(NO_DELAY).execute_detailed()

    assert result.status == "succeeded"
    assert [step for step, _ in Recording.log] == [
        "before",
        "internal",
        "before",
        "internal",
        "before",
        "internal",
        "after",
    ]
    assert Recording.log[-1] == ("after", {"attempt": 3})


async def test_an_exception_in_a_hook_is_a_failed_execution_not_a_crash() -> None:
    class BrokenAfter(Executor):
        name = "broken_after"

        async def execute_internal(self) -> dict[str, Any]:
            return {"x": 1}

        async def after_execute(self, result: dict[str, Any]) -> None:
            raise RuntimeError("could not upload the result")

    result = await BrokenAfter().execute_detailed()

    assert result.status == "failed"
    assert result.error is not None and result.error.kind == "RuntimeError"
    assert "could not upload" in result.error.message


# -- the result record -------------------------------------------------------------------------------------------
class Sleepy(Executor):
    name = "sleepy"
    seconds: float = param(default=0.0, ge=0)
    cancelled: ClassVar[list[bool]] = []

    async def execute_internal(self) -> dict[str, Any]:
        try:
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            self.cancelled.append(True)
            raise
        self.record_usage(calls=1, sleep_seconds=self.seconds)
        return {"slept": self.seconds}


async def test_execute_detailed_describes_a_success() -> None:
    before = datetime.now().astimezone()
    result = await Sleepy(seconds=0.02).execute_detailed()

    assert isinstance(result, ExecutionResult)
    assert result.executor == "sleepy"
    assert result.status == "succeeded" and result.ok
    assert result.output == {"slept": 0.02}
    assert result.error is None
    assert result.attempts == 1 and result.retries == 0
    assert result.started_at.tzinfo is not None
    assert before <= result.started_at <= result.finished_at
    assert 0.015 <= result.duration < 1.0
    assert result.usage == {"calls": 1, "sleep_seconds": 0.02}
    summary = result.summary()
    assert json.loads(json.dumps(summary))["status"] == "succeeded"
    assert summary["output"] == {"slept": 0.02}


async def test_execute_detailed_describes_a_failure_without_raising() -> None:
    class Crashing(Executor):
        name = "crashing"

        async def execute_internal(self) -> dict[str, Any]:
            raise KeyError("customer_id")

    result = await Crashing().execute_detailed()

    assert result.status == "failed" and not result.ok
    assert result.output == {}
    assert result.error is not None
    assert result.error.kind == "KeyError"
    assert "customer_id" in result.error.message
    assert result.error.retryable is True  # an unexpected exception may be transient
    assert result.attempts == 1


async def test_usage_is_per_execution() -> None:
    ex = Sleepy()
    first = await ex.execute_detailed()
    second = await ex.execute_detailed()

    assert first.usage == {"calls": 1, "sleep_seconds": 0.0}
    assert second.usage == {"calls": 1, "sleep_seconds": 0.0}


async def test_concurrent_executions_of_one_executor_keep_their_usage_apart() -> None:
    # An executor object without templates is shared by every instance of a workflow that uses it as an
    # action (render() returns it unchanged), so its executions overlap.
    ex = Sleepy(seconds=0.01)
    first, second = await asyncio.gather(ex.execute_detailed(), ex.execute_detailed())

    assert first.usage == {"calls": 1, "sleep_seconds": 0.01}
    assert second.usage == {"calls": 1, "sleep_seconds": 0.01}


# -- retries -------------------------------------------------------------------------------------------------------
async def test_retryable_errors_are_retried_until_success() -> None:
    result = await Recording(fail_times=2).with_retry(NO_DELAY).execute_detailed()

    assert result.status == "succeeded"
    assert result.attempts == 3 and result.retries == 2
    assert result.output == {"attempt": 3}


async def test_retries_run_out_into_a_failure_record() -> None:
    result = await Recording(fail_times=5).with_retry(NO_DELAY).execute_detailed()

    assert result.status == "failed"
    assert result.attempts == 3
    assert result.error is not None
    assert (result.error.kind, result.error.message, result.error.retryable) == ("flaky", "attempt 3 failed", True)


async def test_non_retryable_errors_are_not_retried() -> None:
    result = await Recording(fail_times=5, retryable=False).with_retry(NO_DELAY).execute_detailed()

    assert result.status == "failed"
    assert result.attempts == 1
    assert result.error is not None and result.error.retryable is False
    assert [step for step, _ in Recording.log] == ["before", "internal"]


async def test_an_exception_carrying_retryable_false_is_not_retried() -> None:
    class PermanentError(Exception):
        retryable = False

    class Refusing(Executor):
        name = "refusing"
        calls: ClassVar[int] = 0

        async def execute_internal(self) -> dict[str, Any]:
            type(self).calls += 1
            raise PermanentError("account closed")

    result = await Refusing().with_retry(NO_DELAY).execute_detailed()

    assert Refusing.calls == 1
    assert result.error is not None
    assert (result.error.kind, result.error.retryable) == ("PermanentError", False)


async def test_without_a_retry_policy_there_is_one_attempt() -> None:
    result = await Recording(fail_times=1).execute_detailed()

    assert result.status == "failed" and result.attempts == 1


async def test_with_retry_takes_a_number_of_attempts_and_is_chainable() -> None:
    ex = Recording(fail_times=1)

    assert ex.with_retry(2) is ex
    assert ex.retry_policy is not None and ex.retry_policy.max_attempts == 2
    # The default policy waits 0.1 s between attempts: slow enough to see, fast enough for a test.
    result = await ex.execute_detailed()
    assert result.status == "succeeded" and result.attempts == 2


async def test_retry_delays_follow_the_policy_and_count_in_the_duration() -> None:
    policy = RetryPolicy(max_attempts=3, initial_delay=0.02, backoff=2, jitter=0)
    result = await Recording(fail_times=2).with_retry(policy).execute_detailed()

    assert result.status == "succeeded"
    assert result.duration >= 0.02 + 0.04


async def test_a_class_may_declare_a_default_retry_policy() -> None:
    class Flaky(Recording):
        name = "flaky_default"
        default_retry = NO_DELAY

    result = await Flaky(fail_times=1).execute_detailed()

    assert result.status == "succeeded" and result.attempts == 2


@pytest.mark.parametrize("output", [["a", "list"], "text", 42])
async def test_non_dict_output_is_a_non_retryable_failure(output: Any) -> None:
    result = await Recording(output=output).with_retry(NO_DELAY).execute_detailed()

    assert result.status == "failed"
    assert result.attempts == 1
    assert result.error is not None
    assert result.error.kind == "bad_output"
    assert result.error.retryable is False
    assert "expected a dict" in result.error.message
    assert ("after", output) not in Recording.log  # after_execute never sees a bad output


# -- timeouts --------------------------------------------------------------------------------------------------------
async def test_with_timeout_bounds_an_attempt_and_records_timed_out() -> None:
    Sleepy.cancelled = []
    started = time.monotonic()
    ex = Sleepy(seconds=5)
    assert ex.with_timeout(0.05) is ex
    result = await ex.execute_detailed()

    assert time.monotonic() - started < 1.0
    assert result.status == "timed_out" and not result.ok
    assert result.error is not None
    assert result.error.kind == "timeout" and result.error.retryable is True
    assert "0.05" in result.error.message
    assert Sleepy.cancelled == [True]  # the work was cancelled, not left running


async def test_a_timed_out_attempt_is_retried() -> None:
    result = await Sleepy(seconds=5).with_timeout(0.02).with_retry(NO_DELAY).execute_detailed()

    assert result.status == "timed_out"
    assert result.attempts == 3


async def test_execute_raises_executor_timeout_error() -> None:
    with pytest.raises(ExecutorTimeoutError) as info:
        await Sleepy(seconds=5).with_timeout(0.02).execute()

    assert isinstance(info.value, ExecutorError)
    assert info.value.executor == "sleepy"
    assert info.value.timeout == 0.02
    assert info.value.kind == "timeout"


@pytest.mark.parametrize("seconds", [0, -1])
def test_a_timeout_must_be_positive(seconds: float) -> None:
    with pytest.raises(ExecutorConfigError, match="positive"):
        Sleepy().with_timeout(seconds)


async def test_a_class_may_declare_a_default_timeout() -> None:
    class Bounded(Sleepy):
        name = "bounded"
        default_timeout = 0.02

    result = await Bounded(seconds=5).execute_detailed()

    assert result.status == "timed_out"


async def test_a_timeout_error_raised_by_the_work_itself_is_not_the_executors_timeout() -> None:
    # The executor has no timeout; the work's own deadline (a socket, an inner wait_for) expired.
    class InnerDeadline(Executor):
        name = "inner_deadline"

        async def execute_internal(self) -> dict[str, Any]:
            await asyncio.wait_for(asyncio.sleep(1), 0.01)
            return {}

    result = await InnerDeadline().execute_detailed()

    assert result.error is not None
    assert "None" not in result.error.message, result.error.message  # not "timed out after Nones"
    assert result.status == "failed"
    assert result.error.kind == "TimeoutError"


# -- execute() errors ------------------------------------------------------------------------------------------------
async def test_execute_raises_executor_error_with_kind_and_retryable() -> None:
    with pytest.raises(ExecutorError) as info:
        await Recording(fail_times=1, retryable=False).execute()

    assert info.value.executor == "recording"
    assert info.value.kind == "flaky"
    assert info.value.retryable is False
    assert "attempt 1 failed" in str(info.value)


async def test_execute_wraps_unexpected_exceptions_naming_their_type() -> None:
    class Dividing(Executor):
        name = "dividing"

        async def execute_internal(self) -> dict[str, Any]:
            return {"x": 1 / 0}

    with pytest.raises(ExecutorError) as info:
        await Dividing().execute()

    assert info.value.kind == "ZeroDivisionError"
    assert "division by zero" in str(info.value)


async def test_an_executor_error_reaches_the_caller_with_its_class_and_details() -> None:
    class HttpStatusError(ExecutorError):
        pass

    class NotFound(Executor):
        name = "not_found"

        async def execute_internal(self) -> dict[str, Any]:
            raise HttpStatusError("GET /x: 404", kind="http_status", retryable=False, details={"status": 404})

    with pytest.raises(HttpStatusError) as info:
        await NotFound().execute()

    assert (info.value.kind, info.value.retryable) == ("http_status", False)
    assert info.value.details == {"status": 404}
    assert info.value.executor == "not_found"
    result = await NotFound().execute_detailed()
    assert result.error is not None and result.error.details == {"status": 404}


async def test_cancelling_an_execution_cancels_it_rather_than_recording_a_failure() -> None:
    Sleepy.cancelled = []
    task = asyncio.ensure_future(Sleepy(seconds=5).with_retry(NO_DELAY).execute_detailed())
    await asyncio.sleep(0.01)
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task
    assert Sleepy.cancelled == [True]


# -- templates -------------------------------------------------------------------------------------------------------
class Templated(Executor):
    name = "templated"
    subject: str = param(default="")
    value: Any = param(default=None)
    count: int = param(default=1, gt=0)
    payload: dict[str, Any] = param(default={})
    tags: list[str] = param(default=[])

    async def execute_internal(self) -> dict[str, Any]:
        return {"subject": self.subject, "value": self.value, "count": self.count}


DATA: dict[str, Any] = {
    "customer": {"name": "Ada", "email": "ada@example.com", "vip": True},
    "items": [{"id": "sku-1", "qty": 2}, {"id": "sku-2", "qty": 1}],
    "n": 3,
    "total": 12.5,
}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ n }}", 3),
        ("{{n}}", 3),
        ("{{ customer.name }}", "Ada"),
        ("{{ customer }}", DATA["customer"]),  # a whole-string template keeps the value's type
        ("{{ items }}", DATA["items"]),
        ("{{ customer.vip }}", True),
        ("{{ items.0.id }}", "sku-1"),
        ("{{ $.items[0].id }}", "sku-1"),
        ("{{ $.items[*].id }}", ["sku-1", "sku-2"]),
        ("  {{ total }}  ", 12.5),
    ],
)
def test_render_fills_whole_string_templates_keeping_types(template: str, expected: Any) -> None:
    rendered = Templated(value=template).render(DATA)

    assert rendered.value == expected  # type: ignore[attr-defined]
    assert type(rendered.value) is type(expected)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("Hello {{ customer.name }}", "Hello Ada"),
        ("{{ n }} items", "3 items"),
        ("{{ customer.name }} <{{ customer.email }}>", "Ada <ada@example.com>"),
        ("first: {{ $.items[0].id }}", "first: sku-1"),
        ("ids {{ $.items[*].id }}", 'ids ["sku-1", "sku-2"]'),  # embedded lists become JSON text
        ("vip={{ customer.vip }}", "vip=true"),
        ("{{ customer.name }} {{ n }}", "Ada 3"),  # several templates spanning the whole string
        ("{{ customer.name }}{{ n }}", "Ada3"),
    ],
)
def test_render_turns_embedded_templates_into_text(template: str, expected: str) -> None:
    assert Templated(subject=template).render(DATA).subject == expected  # type: ignore[attr-defined]


def test_render_fills_templates_inside_objects_and_arrays() -> None:
    ex = Templated(payload={"to": "{{ customer.email }}", "lines": ["{{ n }}", "fixed"]}, tags=["{{ customer.name }}"])
    rendered = ex.render(DATA)

    assert rendered.payload == {"to": "ada@example.com", "lines": [3, "fixed"]}  # type: ignore[attr-defined]
    assert rendered.tags == ["Ada"]  # type: ignore[attr-defined]


def test_render_returns_a_new_executor_and_keeps_the_template_for_the_next_token() -> None:
    ex = Templated(subject="for {{ customer.name }}", count=2)
    first = ex.render(DATA)
    second = ex.render({"customer": {"name": "Grace"}})

    assert first is not ex and second is not ex
    assert (first.subject, second.subject) == ("for Ada", "for Grace")  # type: ignore[attr-defined]
    assert ex.subject == "for {{ customer.name }}"
    assert ex.templated == frozenset({"subject"})
    assert first.templated == frozenset()
    assert first.count == 2  # type: ignore[attr-defined]


def test_render_without_templates_changes_nothing() -> None:
    ex = Templated(subject="plain", count=2)
    rendered = ex.render(DATA)

    assert ex.templated == frozenset()
    assert (rendered.subject, rendered.count) == ("plain", 2)  # type: ignore[attr-defined]


async def test_token_data_that_looks_like_a_template_is_data() -> None:
    rendered = Templated(subject="{{ text }}").render({"text": "literal {{ not_a_field }}"})

    assert rendered.templated == frozenset()
    assert (await rendered.execute())["subject"] == "literal {{ not_a_field }}"


def test_render_keeps_retry_and_timeout() -> None:
    ex = Templated(subject="{{ customer.name }}").with_retry(NO_DELAY).with_timeout(2.5)
    rendered = ex.render(DATA)

    assert rendered.retry_policy == NO_DELAY
    assert rendered.execution_timeout == 2.5


def test_templated_non_string_parameters_are_validated_after_rendering() -> None:
    ex = Templated(count="{{ n }}")  # an int parameter given a template is accepted for now

    assert ex.templated == frozenset({"count"})
    rendered = ex.render({"n": 5})
    assert rendered.count == 5  # type: ignore[attr-defined]
    with pytest.raises(ExecutorConfigError) as bad_type:
        ex.render({"n": "lots"})
    assert bad_type.value.parameter == "count"
    with pytest.raises(ExecutorConfigError, match="greater than 0"):
        ex.render({"n": 0})


def test_untemplated_parameters_are_still_checked_when_the_executor_is_built() -> None:
    with pytest.raises(ExecutorConfigError) as info:
        Templated(count="{{ n }}", tags="not a list")

    assert info.value.parameter == "tags"


def test_validate_runs_once_templates_are_filled() -> None:
    ex = CustomExecutor(input_data="{{ document }}")  # validate() cannot judge a template yet

    assert ex.render({"document": {"type": "csv"}}).input_data == {"type": "csv"}  # type: ignore[attr-defined]
    with pytest.raises(ExecutorConfigError, match="input_data must specify a type"):
        ex.render({"document": {"kind": "csv"}})


def test_a_missing_field_is_a_template_error_naming_executor_parameter_and_field() -> None:
    ex = Templated(subject="Dear {{ customer.title }}")

    with pytest.raises(TemplateError) as info:
        ex.render(DATA)

    err = info.value
    assert (err.executor, err.parameter, err.field) == ("templated", "subject", "customer.title")
    assert "'templated'" in str(err) and "'subject'" in str(err) and "customer.title" in str(err)
    assert isinstance(err, ExecutorConfigError)


def test_a_template_error_names_the_parameter_whose_template_failed() -> None:
    # One parameter renders ("{{ customer_id }}"), the other refers to a field the data lacks ("{{ customer }}").
    # Both ways round, so that the answer cannot depend on the order in which parameters are visited.
    for failing, other in (("subject", "value"), ("value", "subject")):
        ex = Templated(**{failing: "{{ customer }}", other: "{{ customer_id }}"})

        with pytest.raises(TemplateError) as info:
            ex.render({"customer_id": 7})

        assert info.value.field == "customer"
        assert info.value.parameter == failing, str(info.value)


@pytest.mark.parametrize(
    "template",
    [
        "{{ $.missing[0] }}",  # JSONPath matching nothing
        "{{ items.7.id }}",  # index out of range
        "{{ customer.name.first }}",  # path through a string
        "{{ n + 1 }}",  # not an expression language
        "{{ customer.__class__ }}",  # no Python attribute access
        "{{ customer['name'] }}",
    ],
)
def test_bad_or_unresolvable_templates_are_template_errors(template: str) -> None:
    with pytest.raises(TemplateError) as info:
        Templated(value=template).render(DATA)

    assert info.value.executor == "templated"
    assert info.value.parameter == "value"


async def test_an_unrendered_templated_executor_refuses_to_run() -> None:
    ex = Templated(subject="{{ customer.name }}")

    with pytest.raises(TemplateError, match=r"render\(data\)"):
        await ex.execute_detailed()
    with pytest.raises(TemplateError):
        await ex.execute()
    assert await ex.render(DATA).execute() == {"subject": "Ada", "value": None, "count": 1}


# -- secrets -----------------------------------------------------------------------------------------------------------
class Secretive(Executor):
    name = "secretive"
    user: str = param(required=True)
    password: str = param(required=True, secret=True, description="database password")
    token: str = param(default="default-token-value", secret=True)

    async def execute_internal(self) -> dict[str, Any]:
        return {"user": self.user}


def test_secret_parameters_are_masked_in_repr_spec_and_describe() -> None:
    ex = Secretive(user="ada", password="pw-framework-test-7f3a")

    assert "pw-framework-test-7f3a" not in repr(ex) and "password=***" in repr(ex) and "user='ada'" in repr(ex)
    assert ex.spec() == {"executor": "secretive", "params": {"user": "ada", "password": "***"}}
    assert ex.spec(reveal_secrets=True)["params"]["password"] == "pw-framework-test-7f3a"  # for a trusted worker
    described = {p["name"]: p for p in Secretive.describe()["params"]}
    assert described["password"]["secret"] is True
    assert described["token"]["default"] == "***"
    assert "default-token-value" not in json.dumps(Secretive.describe())
    assert ex.password == "pw-framework-test-7f3a"  # the executor itself can use it


async def test_a_secret_the_work_echoes_is_masked_in_the_result() -> None:
    class Echoing(Executor):
        name = "echoing"
        password: str = param(required=True, secret=True)
        fail: bool = param(default=False)

        async def execute_internal(self) -> dict[str, Any]:
            if self.fail:
                raise RuntimeError(f"login refused for {self.password}")
            return {"echo": f"pw={self.password}", "nested": [self.password]}

    ok = await Echoing(password="s3cr3t-echoed").execute_detailed()
    failed = await Echoing(password="s3cr3t-echoed", fail=True).execute_detailed()

    assert "s3cr3t-echoed" not in ok.model_dump_json() + failed.model_dump_json()
    assert ok.output["echo"].startswith("pw=") and len(ok.output["nested"]) == 1
    assert failed.error is not None and failed.error.message.startswith("login refused for ")


async def test_secrets_filled_from_token_data_do_not_pile_up_in_the_process_wide_masker() -> None:
    # An engine renders an action's executor for every token. Each secret value registered with the
    # process-wide masker stays there for good and makes every later masking slower (measured: about 1 ms per
    # render+run at first, 19 ms after 450 tokens), so per-token secrets must be masked without piling up.
    class CallWithToken(Executor):
        name = "call_with_token"
        token: str = param(required=True, secret=True)

        async def execute_internal(self) -> dict[str, Any]:
            return {"sent": self.token}

    ex = CallWithToken(token="{{ user_token }}")
    before = default_masker().count
    results = [await ex.render({"user_token": f"tok-{i:04d}-per-token"}).execute_detailed() for i in range(100)]

    assert all("per-token" not in r.model_dump_json() for r in results)  # each is still masked in its result
    assert default_masker().count - before < 100


def test_a_secret_does_not_appear_in_a_workflow_spec() -> None:
    wf = Workflow("secret_spec")
    a, b = wf.states("a", "b")
    wf.flow(a >> b, action=Secretive(user="ada", password="pw-framework-test-7f3a"))

    dumped = wf.spec().model_dump_json()
    assert "pw-framework-test-7f3a" not in dumped
    assert wf.spec().transitions[0].executor == {"executor": "secretive", "params": {"user": "ada", "password": "***"}}


# -- spec round trip ---------------------------------------------------------------------------------------------------
def test_spec_keeps_parameters_as_given_with_retry_and_timeout() -> None:
    ex = Templated(subject="Hi {{ customer.name }}", count=2).with_retry(NO_DELAY).with_timeout(1.5)
    spec = ex.spec()

    assert spec["executor"] == "templated"
    assert spec["params"] == {"subject": "Hi {{ customer.name }}", "count": 2}
    assert spec["timeout"] == 1.5
    assert RetryPolicy.model_validate(spec["retry"]) == NO_DELAY
    json.dumps(spec)


async def test_a_registry_rebuilds_an_equivalent_executor_from_its_spec() -> None:
    registry = ExecutorRegistry()
    registry.register(Templated)
    original = Templated(subject="Hi {{ customer.name }}", count=2).with_retry(NO_DELAY).with_timeout(1.5)

    rebuilt = registry.from_spec(json.loads(json.dumps(original.spec())))

    assert type(rebuilt) is Templated
    assert rebuilt.spec() == original.spec()
    assert rebuilt.templated == original.templated
    assert await rebuilt.render(DATA).execute() == await original.render(DATA).execute()


# -- executors as transition actions in a real engine ------------------------------------------------------------------
class Quote(Executor):
    """Prices an order."""

    name = "quote"
    unit_price: float = param(required=True, gt=0)
    qty: int = param(required=True, gt=0)
    calls: ClassVar[int] = 0

    async def execute_internal(self) -> dict[str, Any]:
        type(self).calls += 1
        return {"total": self.unit_price * self.qty, "status": "quoted"}


class Failing(Executor):
    name = "failing"
    retryable: bool = param(default=True)
    calls: ClassVar[int] = 0

    async def execute_internal(self) -> dict[str, Any]:
        type(self).calls += 1
        raise ExecutorError("gateway refused", kind="http_status", retryable=self.retryable)


@pytest.fixture(autouse=True)
def _reset_counters() -> None:
    Quote.calls = 0
    Failing.calls = 0


def _order_workflow(action: Any, *, retry: Any = None, name: str = "order") -> Workflow:
    wf = Workflow(name)
    new, priced = wf.states("new", "priced")
    wf.flow(new >> priced, "price", action=action, retry=retry)
    return wf


async def test_executor_output_merges_into_the_token_data(engine: Engine) -> None:
    wf = _order_workflow(Quote(unit_price="{{ price }}", qty="{{ qty }}"))

    inst = await engine.wait((await engine.start(wf, {"price": 2.5, "qty": 4, "status": "new"})).id, timeout=5)

    assert inst.status.value == "completed"
    assert inst.tokens_in("priced")[0].data == {"price": 2.5, "qty": 4, "status": "quoted", "total": 10.0}


async def test_as_action_into_nests_the_output_under_a_key(engine: Engine) -> None:
    wf = _order_workflow(Quote(unit_price=2, qty=3).as_action(into="quote"))

    inst = await engine.wait((await engine.start(wf, {"status": "new"})).id, timeout=5)

    assert inst.data == {"status": "new", "quote": {"total": 6.0, "status": "quoted"}}


async def test_each_instance_renders_the_templates_from_its_own_token(engine: Engine) -> None:
    wf = _order_workflow(Quote(unit_price="{{ price }}", qty="{{ qty }}"))
    started = [await engine.start(wf, {"price": price, "qty": 2}) for price in (1, 2, 3)]

    finished = [await engine.wait(i.id, timeout=5) for i in started]

    assert [i.data["total"] for i in finished] == [2.0, 4.0, 6.0]


async def test_a_retryable_executor_failure_is_retried_then_becomes_an_incident(engine: Engine) -> None:
    wf = _order_workflow(Failing(), retry=NO_DELAY)

    inst = await engine.wait((await engine.start(wf, {"qty": 1})).id, timeout=5)

    assert Failing.calls == 3
    assert inst.status.value == "failed"
    assert inst.tokens_in("new") and not inst.tokens_in("priced")  # the token stayed where it was
    (incident,) = inst.open_incidents
    assert incident.transition == "price"
    assert incident.attempts == 3
    assert "gateway refused" in incident.error.message
    assert incident.error.retryable is True


async def test_a_non_retryable_executor_failure_is_not_retried_by_the_engine(engine: Engine) -> None:
    wf = _order_workflow(Failing(retryable=False), retry=NO_DELAY)

    inst = await engine.wait((await engine.start(wf, {"qty": 1})).id, timeout=5)

    assert Failing.calls == 1
    (incident,) = inst.open_incidents
    assert incident.attempts == 1
    assert incident.error.retryable is False
    assert incident.error.kind == "http_status"  # the executor's classification, not just "ExecutorError"


async def test_a_missing_template_field_is_an_incident_not_retried(engine: Engine) -> None:
    wf = _order_workflow(Quote(unit_price="{{ price }}", qty=1), retry=NO_DELAY)

    inst = await engine.wait((await engine.start(wf, {"qty": 1})).id, timeout=5)

    assert Quote.calls == 0
    (incident,) = inst.open_incidents
    assert incident.attempts == 1
    assert "price" in incident.error.message and "'quote'" in incident.error.message


async def test_the_executors_own_timeout_applies_inside_a_workflow(engine: Engine) -> None:
    wf = _order_workflow(Sleepy(seconds=5).with_timeout(0.02))

    inst = await engine.wait((await engine.start(wf, {})).id, timeout=5)

    (incident,) = inst.open_incidents
    assert "timed out" in incident.error.message


async def test_a_failing_executor_on_a_manual_transition_raises_action_error(engine: Engine) -> None:
    wf = Workflow("manual_exec")
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "go", action=Failing(retryable=False), trigger="manual")
    inst = await engine.wait((await engine.start(wf, {})).id, timeout=5)

    with pytest.raises(ActionError) as info:
        await engine.fire(inst.id, "go")

    assert info.value.retryable is False
    assert "gateway refused" in str(info.value)
    assert (await engine.get(inst.id)).tokens_in("a")


def test_the_workflow_spec_carries_the_executor_spec_with_templates() -> None:
    wf = Workflow("spec_carrier")
    new, priced, shipped = wf.states("new", "priced", "shipped")
    wf.flow(new >> priced, "price", action=Quote(unit_price="{{ price }}", qty=2).with_timeout(3))
    wf.flow(priced >> shipped, "ship", action=Quote(unit_price=1, qty=1).as_action(into="shipping"))

    price, ship = wf.spec().transitions

    assert price.executor == {"executor": "quote", "params": {"unit_price": "{{ price }}", "qty": 2}, "timeout": 3}
    assert ship.executor == {"executor": "quote", "params": {"unit_price": 1, "qty": 1}, "into": "shipping"}
    rebuilt = json.loads(wf.spec().model_dump_json())["transitions"][0]["executor"]
    assert rebuilt == price.executor


WORKER = """
import asyncio, json, sys
from circuit_breaker.executors import default_registry

job = json.loads(sys.stdin.read())
registry = default_registry(job["project"])
executor = registry.from_spec(job["spec"]).render(job["data"])
result = asyncio.run(executor.execute_detailed())
print(json.dumps({"class": type(executor).__qualname__, "origin": registry.origin(job["spec"]["executor"]),
                  "result": result.summary()}))
"""


async def test_a_worker_in_another_process_rebuilds_a_project_executor_from_the_workflow_spec(
    engine: Engine, tmp_path: Path
) -> None:
    # The engine's process defines the workflow with an executor from the project's executors/ folder ...
    greeting = default_registry(PROJECT).get("fixture_greeting")
    wf = Workflow("greet_remote")
    new, greeted = wf.states("new", "greeted")
    wf.flow(new >> greeted, "greet", action=greeting(who="{{ customer.name }}", punctuation="?").with_timeout(10))
    spec = json.loads(wf.spec().model_dump_json())["transitions"][0]["executor"]
    data = {"customer": {"name": "Ada"}}

    # ... a worker elsewhere gets only JSON: the executor spec and the token data.
    job = json.dumps({"project": str(PROJECT), "spec": spec, "data": data})
    proc = subprocess.run(
        [sys.executable, "-c", WORKER], input=job, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    remote = json.loads(proc.stdout)

    assert remote["class"] == "GreetingExecutor"
    assert remote["origin"].endswith("greeting.py")
    assert remote["result"]["status"] == "succeeded"
    assert remote["result"]["output"] == {"greeting": "Hello, Ada?"}
    assert remote["result"]["usage"] == {"greetings": 1}
    # The same executor run as the action in this process gives the same output.
    inst = await engine.wait((await engine.start(wf, data)).id, timeout=5)
    assert inst.data == {**data, **remote["result"]["output"]}


def test_malformed_templates_are_refused_when_the_executor_is_built() -> None:
    from circuit_breaker.errors import TemplateError
    from circuit_breaker.executors.shell import ShellExecutor

    with pytest.raises(TemplateError, match=r"parameter 'argv'.*a \+ b"):
        ShellExecutor(argv=["echo", "{{ a + b }}"])
    with pytest.raises(TemplateError, match="JSONPath"):
        ShellExecutor(argv=["echo", "{{ $.items[?? }}"])


def test_an_executor_class_given_as_an_action_gets_a_clear_error() -> None:
    from circuit_breaker.errors import DefinitionError
    from circuit_breaker.executors.data import InjectExecutor

    wf = Workflow("class_action")
    a, b = wf.states("a", "b")
    with pytest.raises(DefinitionError, match=r"InjectExecutor is a class; pass an instance"):
        wf.flow(a >> b, "go").action(InjectExecutor)  # type: ignore[arg-type]


def test_an_action_spec_with_revealed_secrets_rebuilds_the_action_elsewhere() -> None:
    from circuit_breaker.errors import ExecutorConfigError

    action = Secretive(user="ada", password="pw-spec-test-1").as_action(into="out")
    registry = default_registry()
    registry.register(Secretive)
    with pytest.raises(ExecutorConfigError, match="reveal_secrets"):
        registry.action_from_spec(action.spec())
    rebuilt = registry.action_from_spec(action.spec(reveal_secrets=True))
    assert rebuilt.into == "out" and rebuilt.executor.password == "pw-spec-test-1"


class _EchoesItsKey(Executor):
    """A server that answers 401 quoting the key it was given (some do)."""

    name = "echoes_its_key"
    api_key: str = param(required=True, secret=True)

    async def execute_internal(self) -> dict[str, Any]:
        raise ExecutorError(f"401 - invalid key {self.api_key}", kind="http_status", retryable=False)


async def test_a_secret_filled_from_the_token_stays_masked_in_the_incident_and_the_event() -> None:
    """Found in a walk-through: the result masked it, but the action raised the original error, so the incident
    and transition_failed showed the key from the token data in clear."""
    wf = Workflow("keyed_call")
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "call").action(_EchoesItsKey(api_key="{{ creds }}"))
    async with Engine() as engine:
        inst = await engine.wait((await engine.start(wf, {"creds": "sk-token-data-key-31337"})).id, timeout=5)
        events = [e async for e in engine.events(instance=inst.id)]
    (incident,) = inst.open_incidents
    assert "invalid key ***" in incident.error.message and "31337" not in incident.error.message
    assert not any("sk-token-data-key-31337" in e.model_dump_json() for e in events if e.type.value != "token_injected")


def test_a_template_in_a_key_is_refused_when_the_executor_is_built() -> None:
    """Found in a walk-through: keys are never filled, so {"{{ k }}": "v"} went out as it is, and a container
    volume named "{{ hostdir }}" failed late with the engine's own error."""
    from circuit_breaker.executors import ShellExecutor

    with pytest.raises(TemplateError, match=r"template in a key \('\{\{ k \}\}'\)"):
        ShellExecutor(argv=["true"], env={"{{ k }}": "v"})
    ShellExecutor(argv=["true"], env={"K": "{{ k }}"})  # a value is filled, as always
