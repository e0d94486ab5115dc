"""build_environment: inheriting, excluding, setting with ${...} from token data, and refusing what is wrong."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from circuit_breaker.environment import build_environment
from circuit_breaker.errors import ExecutorConfigError, TemplateError

CONTEXT = {"order": {"id": "o-7", "items": [{"sku": "a-1"}]}, "retries": 3, "dry_run": False, "none": None}


@pytest.fixture
def worker_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    monkeypatch.setenv("aws_profile", "dev")
    monkeypatch.setenv("CB_TEST_HOME", "/home/worker")


def test_inherits_the_process_environment_by_default(worker_env: None) -> None:
    env = build_environment()

    assert env["CB_TEST_HOME"] == "/home/worker"
    assert env == dict(os.environ)
    assert env is not os.environ


def test_exclude_patterns_remove_inherited_and_base_variables_case_insensitively(worker_env: None) -> None:
    env = build_environment({"AWS_REGION": "eu-west-1", "KEEP": "1"}, exclude=["AWS_*"])

    assert not any(name.upper().startswith("AWS_") for name in env)
    assert env["KEEP"] == "1" and env["CB_TEST_HOME"] == "/home/worker"


def test_exclude_accepts_a_single_pattern_string(worker_env: None) -> None:
    env = build_environment(exclude="AWS_*")

    assert "AWS_SECRET_ACCESS_KEY" not in env and "CB_TEST_HOME" in env  # not A, W, S one letter at a time


def test_without_inherit_only_base_and_set_are_there(worker_env: None) -> None:
    env = build_environment({"PATH": "/usr/bin"}, inherit=False, set={"MODE": "batch"})

    assert env == {"PATH": "/usr/bin", "MODE": "batch"}


def test_set_interpolates_token_data_with_dotted_paths() -> None:
    env = build_environment(
        inherit=False,
        set={
            "ORDER_ID": "${order.id}",
            "FIRST_SKU": "sku=${order.items.0.sku}",
            "RETRIES": "${retries}",
            "DRY_RUN": "${dry_run}",
            "EMPTY": "[${none}]",
            "ITEMS": "${order.items}",
        },
        context=CONTEXT,
    )

    assert env == {
        "ORDER_ID": "o-7",
        "FIRST_SKU": "sku=a-1",
        "RETRIES": "3",
        "DRY_RUN": "false",
        "EMPTY": "[]",
        "ITEMS": '[{"sku": "a-1"}]',
    }


def test_set_can_extend_an_inherited_variable_and_wins_over_exclude(worker_env: None) -> None:
    env = build_environment(
        exclude=["AWS_*"],
        set={"CB_TEST_HOME": "${CB_TEST_HOME}/jobs/${order.id}", "AWS_REGION": "eu-west-1"},
        context=CONTEXT,
    )

    assert env["CB_TEST_HOME"] == "/home/worker/jobs/o-7"
    assert env["AWS_REGION"] == "eu-west-1"  # set by name: wanted
    assert "AWS_SECRET_ACCESS_KEY" not in env


def test_an_excluded_variable_cannot_be_read_back_through_a_reference(worker_env: None) -> None:
    with pytest.raises(TemplateError, match="AWS_SECRET_ACCESS_KEY"):
        build_environment(exclude=["AWS_*"], set={"LEAK": "${AWS_SECRET_ACCESS_KEY}"})


def test_context_wins_over_the_environment_and_base_values_are_literal() -> None:
    env = build_environment(
        {"HOME": "/base", "RAW": "${not_expanded}"}, inherit=False, set={"WHERE": "${HOME}"}, context={"HOME": "/ctx"}
    )

    assert env == {"HOME": "/base", "RAW": "${not_expanded}", "WHERE": "/ctx"}


def test_double_dollar_escapes_a_reference() -> None:
    env = build_environment(inherit=False, set={"SCRIPT": "echo $${HOME} for ${order.id}; cost $$5"}, context=CONTEXT)

    assert env["SCRIPT"] == "echo ${HOME} for o-7; cost $$5"


def test_a_missing_reference_is_an_error_naming_it_and_the_variable() -> None:
    with pytest.raises(TemplateError) as caught:
        build_environment(inherit=False, set={"TARGET": "${order.customer.email}"}, context=CONTEXT)

    assert "'TARGET'" in str(caught.value) and "${order.customer.email}" in str(caught.value)
    assert caught.value.field == "order.customer.email"


@pytest.mark.parametrize(
    ("value", "says"),
    [("${order.id", "unterminated"), ("${}", "not a name"), ("${a b}", "not a name"), ("${order..id}", "not a name")],
)
def test_malformed_references_are_errors(value: str, says: str) -> None:
    with pytest.raises(TemplateError, match=says):
        build_environment(inherit=False, set={"X": value}, context=CONTEXT)


@pytest.mark.parametrize(
    ("set_", "says"),
    [
        ({"": "x"}, "not a valid environment variable name"),
        ({"A=B": "x"}, "not a valid environment variable name"),
        ({"X": "a\0b"}, "NUL"),
        ({"X": {"nested": 1}}, "must be a string, got dict"),
    ],
)
def test_values_a_process_cannot_take_are_refused_by_name(set_: dict[str, Any], says: str) -> None:
    with pytest.raises(ExecutorConfigError, match=says):
        build_environment(inherit=False, set=set_)


def test_numbers_and_booleans_from_yaml_are_written_as_text() -> None:
    assert build_environment(inherit=False, set={"N": 5, "B": True}) == {"N": "5", "B": "true"}  # type: ignore[dict-item]


def test_a_child_process_sees_the_built_environment(worker_env: None) -> None:
    env = build_environment(exclude=["AWS_*"], set={"ORDER_ID": "${order.id}"}, context=CONTEXT)
    code = "import os, json; print(json.dumps([os.environ.get('ORDER_ID'), 'AWS_SECRET_ACCESS_KEY' in os.environ]))"

    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)

    assert out.stdout.strip() == '["o-7", false]'
