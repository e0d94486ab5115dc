"""Secret masking: registered values and secret-named keys never show in masked data, text or log output."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from circuit_breaker.executors import Executor, param
from circuit_breaker.secrets import SecretFilter, SecretMasker, default_masker, set_default_masker

SECRET = "hunter2-s3cr3t"


def _leaks(obj: Any, *secrets: str) -> list[str]:
    text = json.dumps(obj, default=str)
    return [s for s in secrets if s in text]


# -- values and names ----------------------------------------------------------------------------------------
def test_a_registered_value_is_masked_everywhere_in_nested_structures() -> None:
    masker = SecretMasker([SECRET])
    event: dict[str, Any] = {
        "type": "transition_fired",
        "data": {"cmd": f"curl -H 'Authorization: Bearer {SECRET}'", "args": ["--pw", SECRET, ("t", SECRET)]},
        "history": [{"note": f"used {SECRET} twice: {SECRET}"}],
        "count": 3,
    }

    masked = masker.mask(event)

    assert _leaks(masked, SECRET) == []
    assert masked["data"]["cmd"] == "curl -H 'Authorization: Bearer ***'"
    assert masked["data"]["args"] == ["--pw", "***", ("t", "***")]
    assert masked["history"][0]["note"] == "used *** twice: ***"
    assert masked["count"] == 3 and masked["type"] == "transition_fired"
    assert _leaks(event, SECRET) == [SECRET]  # the original is untouched


def test_values_under_secret_named_keys_are_masked_whatever_they_are() -> None:
    masker = SecretMasker()
    data = {
        "DB_PASSWORD": "pw-1",
        "github_token": "ghp_x",
        "stripe_api_key": 42,
        "Secret": {"nested": "deep"},
        "AWS_SECRET_ACCESS_KEY": "aws",
        "token": {"id": "t-1"},  # a Petri-net token, not a credential
        "next_page": None,
        "user": "ana",
    }

    masked = masker.mask({"config": data})

    assert masked["config"] == {
        "DB_PASSWORD": "***",
        "github_token": "***",
        "stripe_api_key": "***",
        "Secret": "***",
        "AWS_SECRET_ACCESS_KEY": "***",
        "token": {"id": "t-1"},
        "next_page": None,
        "user": "ana",
    }


def test_patterns_are_configurable() -> None:
    masker = SecretMasker(patterns=["*_PIN", "ssn"])

    assert masker.mask({"card_pin": "1234", "SSN": "x", "db_password": "kept"}) == {
        "card_pin": "***",
        "SSN": "***",
        "db_password": "kept",
    }
    assert SecretMasker(patterns=[]).mask({"db_password": "p"}) == {"db_password": "p"}


def test_secret_named_environment_variables_and_mappings_register_their_values() -> None:
    masker = SecretMasker()

    names = masker.add_environment({"DEPLOY_TOKEN": "dtok-123456", "HOME": "/home/ana", "SECRET_SALT": "salty-salt"})
    masker.add_mapping({"services": [{"name": "db", "db_password": "pg-pass-9"}]})

    assert sorted(names) == ["DEPLOY_TOKEN", "SECRET_SALT"]
    log_line = "deploy with dtok-123456 salt salty-salt pg-pass-9 home /home/ana"
    assert masker.mask_text(log_line) == "deploy with *** salt *** *** home /home/ana"


def test_an_executors_secret_parameters_are_registered() -> None:
    class Api(Executor):
        name = "api_test"
        url: str = param(required=True)
        key: str = param(required=True, secret=True)

        async def execute_internal(self) -> dict[str, Any]:
            return {}

    masker = SecretMasker()
    assert masker.add_executor(Api(url="https://x", key="k-abcdef")) == ["key"]
    assert masker.mask_text("GET https://x?key=k-abcdef") == "GET https://x?key=***"


def test_the_longest_secret_wins_when_one_contains_another() -> None:
    masker = SecretMasker(["abcd", "abcdefgh"])

    assert masker.mask_text("x abcdefgh y abcd") == "x *** y ***"


def test_json_escaped_and_multi_line_secrets_are_masked_as_they_appear_in_logs() -> None:
    key = "-----BEGIN KEY-----\nMIIEvQIBADANBgkq\n-----END KEY-----"
    quoted = 'pa"ss\\word'
    masker = SecretMasker([key, quoted])

    assert SECRET not in masker.mask_text(json.dumps({"k": key, "q": quoted}))
    assert "MIIEvQIBADANBgkq" not in masker.mask_text(json.dumps({"k": key}))
    assert masker.mask_text(json.dumps({"q": quoted})) == '{"q": "***"}'
    assert masker.mask_text("line 2 was MIIEvQIBADANBgkq") == "line 2 was ***"


def test_short_secrets_are_masked_only_as_whole_values() -> None:
    masker = SecretMasker(["42", "yes"])

    assert masker.mask({"pin": "42", "n": 42, "answer": "yes", "text": "42 yes, 1942"}) == {
        "pin": "***",
        "n": "***",
        "answer": "***",
        "text": "42 yes, 1942",  # masking every "42" would ruin the logs and point at the secret
    }


def test_empty_values_are_ignored() -> None:
    masker = SecretMasker(["", "   "])

    assert masker.count == 0 and not masker.active and masker.mask_text("a b") == "a b"


# -- cheap when there is nothing to mask ----------------------------------------------------------------------
def _payload() -> dict[str, Any]:
    return {
        "workflow": "order",
        "instance_id": "i-1",
        "seq": 7,
        "token": {"id": "t", "data": {"items": [{"sku": f"s{i}", "qty": i} for i in range(10)], "note": "ok"}},
        "consumed": ["a", "b"],
    }


def test_nothing_to_mask_returns_the_very_same_object() -> None:
    payload = _payload()

    assert SecretMasker().mask(payload) is payload
    assert SecretMasker([SECRET]).mask(payload) is payload
    assert SecretMasker(patterns=[]).mask(payload) is payload
    text = "nothing here"
    assert SecretMasker([SECRET]).mask_text(text) is text


def test_masking_a_typical_event_with_nothing_to_mask_takes_microseconds() -> None:
    masker = SecretMasker([SECRET, "another-secret-value"])
    payload = _payload()
    masker.mask(payload)  # warm the key-name cache

    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        masker.mask(payload)
    per_call = (time.perf_counter() - t0) / n

    assert per_call < 100e-6  # ~10 µs measured; generous for slow CI


# -- logging -------------------------------------------------------------------------------------------------
@pytest.fixture
def masked_caplog(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    masker = SecretMasker([SECRET])
    log_filter = SecretFilter(masker)
    caplog.handler.addFilter(log_filter)
    caplog.set_level(logging.DEBUG)
    yield caplog
    caplog.handler.removeFilter(log_filter)


def test_log_messages_and_arguments_are_masked(masked_caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("circuit_breaker.test.secrets")

    log.info("connecting with %s", SECRET)
    log.info(f"inline {SECRET}")
    log.warning("config %s", {"db_password": "pw-not-registered", "host": "db"})
    log.info("%(user)s logged in with %(pw)s", {"user": "ana", "pw": SECRET})

    assert _leaks(masked_caplog.text, SECRET, "pw-not-registered") == []
    assert [r.getMessage() for r in masked_caplog.records] == [
        "connecting with ***",
        "inline ***",
        "config {'db_password': '***', 'host': 'db'}",
        "ana logged in with ***",
    ]


def test_exceptions_and_structured_extras_in_log_records_are_masked(masked_caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("circuit_breaker.test.secrets")
    try:
        raise RuntimeError(f"login failed for key {SECRET}")
    except RuntimeError:
        log.exception("step failed", extra={"task": {"cmd": f"run --key {SECRET}"}, "api_key": "plain"})

    (record,) = masked_caplog.records
    assert SECRET not in masked_caplog.text and "login failed for key ***" in masked_caplog.text
    assert record.task == {"cmd": "run --key ***"}  # type: ignore[attr-defined]
    assert record.api_key == "***"  # type: ignore[attr-defined]


def test_a_bad_format_string_does_not_break_logging_or_leak(masked_caplog: pytest.LogCaptureFixture) -> None:
    logging.getLogger("circuit_breaker.test.secrets").info("%d items", SECRET)

    assert SECRET not in masked_caplog.text
    (record,) = masked_caplog.records
    assert SECRET not in record.getMessage()


def test_a_filter_uses_its_own_masker_even_with_no_values_registered(caplog: pytest.LogCaptureFixture) -> None:
    log_filter = SecretFilter(SecretMasker(patterns=["*_PIN"]))
    caplog.handler.addFilter(log_filter)
    try:
        logging.getLogger("circuit_breaker.test.secrets").warning("card %s", {"card_pin": "8675", "last4": "4242"})
    finally:
        caplog.handler.removeFilter(log_filter)

    assert "8675" not in caplog.text and "4242" in caplog.text


def test_the_filter_without_a_masker_follows_the_default_one(caplog: pytest.LogCaptureFixture) -> None:
    previous = set_default_masker(SecretMasker())
    log_filter = SecretFilter()
    caplog.handler.addFilter(log_filter)
    try:
        default_masker().add("registered-later-value")
        logging.getLogger("circuit_breaker.test.secrets").warning("value registered-later-value")
        assert "registered-later-value" not in caplog.text
    finally:
        caplog.handler.removeFilter(log_filter)
        set_default_masker(previous)


# -- the process-wide masker ---------------------------------------------------------------------------------
def test_the_default_masker_is_built_once_with_the_secret_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CB_TEST_DEPLOY_TOKEN", "env-token-value")
    previous = set_default_masker(None)
    try:
        masker = default_masker()
        assert default_masker() is masker
        assert masker.mask_text("using env-token-value") == "using ***"
    finally:
        set_default_masker(previous)
