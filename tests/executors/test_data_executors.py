"""set, wait and inject: what they return, how they read token data, and how bad input is refused."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from circuit_breaker import Engine, Workflow
from circuit_breaker.errors import ExecutorConfigError, ExecutorError, TemplateError
from circuit_breaker.executors import default_registry
from circuit_breaker.executors.data import InjectExecutor, SetExecutor, WaitExecutor, parse_duration

ORDER = {"order": {"id": "o-7", "items": [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 1}]}, "tier": "gold"}


# -- set -----------------------------------------------------------------------------------------------------
async def test_set_returns_values_as_given_and_paths_read_from_data() -> None:
    ex = SetExecutor(
        values={"stage": "picked", "flags": {"fragile": True}},
        paths={"skus": "$.order.items[*].sku", "first_qty": "$.order.items[0].qty", "id": "order.id"},
        data=ORDER,
    )

    out = await ex.execute()

    assert out == {"stage": "picked", "flags": {"fragile": True}, "skus": ["a", "b"], "first_qty": 2, "id": "o-7"}


async def test_set_output_is_a_copy_so_a_consumer_cannot_change_the_next_run() -> None:
    ex = SetExecutor(values={"tags": ["x"]})
    (await ex.execute())["tags"].append("mutated")

    assert await ex.execute() == {"tags": ["x"]}


async def test_set_paths_read_the_token_data_when_rendered_without_a_data_param() -> None:
    ex = SetExecutor(values={"note": "tier {{ tier }}"}, paths={"count": "$.order.items[*].qty"})

    out = await ex.render(ORDER).execute()

    assert out == {"note": "tier gold", "count": [2, 1]}
    assert "data" not in ex.spec()["params"]  # the token data is not baked into the spec


async def test_set_with_paths_but_no_data_says_what_to_pass() -> None:
    with pytest.raises(ExecutorError, match="paths need data") as caught:
        await SetExecutor(paths={"x": "$.a"}).execute()
    assert caught.value.retryable is False


async def test_a_path_that_matches_nothing_fails_naming_the_field() -> None:
    result = await SetExecutor(paths={"total": "$.order.total"}, data=ORDER).execute_detailed()

    assert result.status == "failed"
    assert result.error is not None
    assert result.error.kind == "path" and result.error.retryable is False
    assert "'total'" in result.error.message and "$.order.total" in result.error.message


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"paths": {"ids": "$.items[?"}}, "field 'ids': invalid JSONPath '$.items[?'"),
        ({"paths": {"ids": "items[*] id"}}, "is not a JSONPath"),
        ({}, "give values, paths or both"),
        ({"values": {"a": 1}, "paths": {"a": "$.a"}}, "['a'] are in both"),
        ({"values": "not a dict"}, "parameter 'values'"),
    ],
)
def test_set_refuses_bad_configuration_when_built(params: dict[str, Any], says: str) -> None:
    with pytest.raises(ExecutorConfigError) as caught:
        SetExecutor(**params)
    assert says in str(caught.value)


# -- wait ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("duration", "seconds"),
    [("PT2S", 2.0), ("PT0.5S", 0.5), ("P1D", 86400.0), ("P1DT1H", 90000.0), ("P1W", 604800.0), ("PT1M", 60.0)]
    + [(1.5, 1.5), (3, 3.0), ("0.25", 0.25), (0, 0.0)],
)
def test_durations_in_iso_8601_or_seconds(duration: float | str, seconds: float) -> None:
    assert parse_duration(duration) == seconds
    WaitExecutor(duration=duration)  # accepted when built


@pytest.mark.parametrize(
    ("duration", "says"),
    [
        ("P1M", "months or years"),
        ("P1Y2D", "months or years"),
        ("soon", "not a number of seconds or an ISO 8601 duration"),
        ("PT", "not a number of seconds or an ISO 8601 duration"),
        ("P1X", "not a valid ISO 8601 duration"),
        ("-PT1S", ">= 0"),
        (-1, ">= 0"),
        ("nan", "not a number"),
    ],
)
def test_bad_durations_are_refused_when_built(duration: float | str, says: str) -> None:
    with pytest.raises(ExecutorConfigError, match="'wait'") as caught:
        WaitExecutor(duration=duration)
    assert says in str(caught.value)


async def test_waits_do_not_block_the_event_loop() -> None:
    t0 = time.perf_counter()

    outs = list(await asyncio.gather(WaitExecutor(duration="PT0.2S").execute(), WaitExecutor(duration=0.2).execute()))

    elapsed = time.perf_counter() - t0
    assert outs == [{"waited": 0.2}, {"waited": 0.2}]
    assert 0.19 <= elapsed < 0.35  # together, not one after the other (0.4 s)


async def test_a_templated_duration_comes_from_the_token_and_is_checked_then() -> None:
    ex = WaitExecutor(duration="{{ delay }}")

    assert await ex.render({"delay": "PT0.01S"}).execute() == {"waited": 0.01}
    with pytest.raises(ExecutorConfigError, match="months or years"):
        ex.render({"delay": "P1M"})


async def test_a_wait_longer_than_its_timeout_times_out() -> None:
    result = await WaitExecutor(duration="PT5S").with_timeout(0.02).execute_detailed()

    assert result.status == "timed_out"


# -- inject --------------------------------------------------------------------------------------------------
async def test_inject_returns_data_with_defaults_merged_under_it() -> None:
    ex = InjectExecutor(
        data={"priority": "high", "config": {"retries": 5}},
        defaults={"priority": "normal", "config": {"retries": 1, "region": "eu"}, "source": "api"},
    )

    assert await ex.execute() == {"priority": "high", "config": {"retries": 5, "region": "eu"}, "source": "api"}


async def test_inject_computes_data_from_the_token_with_templates_and_jsonpath() -> None:
    ex = InjectExecutor(
        data={"order_id": "{{ order.id }}", "skus": "{{ $.order.items[*].sku }}", "label": "#{{ tier }}"}
    )

    assert await ex.render(ORDER).execute() == {"order_id": "o-7", "skus": ["a", "b"], "label": "#gold"}


async def test_defaults_stand_in_for_template_fields_the_token_does_not_have() -> None:
    ex = InjectExecutor(data={"priority": "{{ priority }}", "id": "{{ order.id }}"}, defaults={"priority": "normal"})
    ex.with_timeout(3)

    rendered = ex.render(ORDER)
    assert await rendered.execute() == {"priority": "normal", "id": "o-7"}
    assert rendered.execution_timeout == 3  # settings survive the fallback
    assert await ex.render({**ORDER, "priority": "urgent"}).execute() == {"priority": "urgent", "id": "o-7"}
    with pytest.raises(TemplateError, match="order.id"):  # no default for it: still an error
        ex.render({"priority": "low"})


def test_inject_refuses_a_malformed_template_when_built_not_at_the_first_token() -> None:
    with pytest.raises(TemplateError, match=r"parameter 'data'.*invalid JSONPath"):
        InjectExecutor(data={"ids": "{{ $.items[ }}"}, defaults={"ids": []})
    with pytest.raises(ExecutorConfigError, match="give data, defaults or both"):
        InjectExecutor()


async def test_data_executors_rebuild_from_their_specs() -> None:
    registry = default_registry()
    for ex in (
        SetExecutor(values={"a": 1}, paths={"b": "$.x"}, data={"x": 2}),
        WaitExecutor(duration="PT0S"),
        InjectExecutor(data={"a": 1}, defaults={"b": 2}),
    ):
        rebuilt = registry.from_spec(ex.spec())
        assert type(rebuilt) is type(ex)
        assert await rebuilt.execute() == await ex.execute()


# -- in a workflow -------------------------------------------------------------------------------------------
async def test_as_actions_they_read_and_extend_the_token_data(engine: Engine) -> None:
    wf = Workflow("fulfil")
    new, tagged, ready = wf.states("new", "tagged", "ready")
    wf.flow(
        new >> tagged,
        "tag",
        action=InjectExecutor(
            data={"carrier": "{{ carrier }}"}, defaults={"carrier": "post", "checked": True}
        ).as_action(),
    )
    wf.flow(
        tagged >> ready,
        "summarise",
        action=SetExecutor(paths={"skus": "$.order.items[*].sku"}, values={"n": 2}).as_action(),
    )

    inst = await engine.wait((await engine.start(wf, ORDER)).id, timeout=5)

    assert inst.status.value == "completed"
    assert inst.data == {**ORDER, "carrier": "post", "checked": True, "skus": ["a", "b"], "n": 2}
