"""Retries, timeouts, incidents and bad input: each gets a specific error and leaves instances as they were."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel, ConfigDict, Field

from circuit_breaker import Engine, EventType, InstanceStatus, RetryPolicy, RuleSet, Workflow
from circuit_breaker.errors import (
    ActionError,
    CircuitBreakerError,
    TokenDataError,
    TransitionRejectedError,
    WaitTimeoutError,
)

FAST = RetryPolicy(max_attempts=3, initial_delay=0.001, max_delay=0.01, jitter=0)


def flaky_workflow(failures: int, *, retry: RetryPolicy | None = FAST) -> tuple[Workflow, list[int]]:
    calls: list[int] = []
    wf = Workflow("flaky")
    queued, done = wf.states("queued", "done")

    @wf.flow(queued >> done, "work", retry=retry)
    async def work(token):
        calls.append(len(calls) + 1)
        if len(calls) <= failures:
            raise ConnectionError(f"attempt {len(calls)} failed")
        return {"attempts": len(calls)}

    return wf, calls


async def test_a_flaky_action_is_retried_with_backoff_until_it_succeeds(engine: Engine) -> None:
    wf, calls = flaky_workflow(failures=2)
    inst = await engine.wait((await engine.start(wf, {})).id, timeout=5)
    assert inst.status is InstanceStatus.COMPLETED
    assert inst.tokens[0].data == {"attempts": 3}
    failed = [e async for e in engine.events(instance=inst.id, types=["transition_failed"])]
    assert [(e.attempt, e.will_retry, e.error.kind) for e in failed] == [
        (1, True, "ConnectionError"),
        (2, True, "ConnectionError"),
    ]


async def test_when_retries_run_out_the_instance_gets_an_incident_and_can_be_retried(engine: Engine) -> None:
    wf, calls = flaky_workflow(failures=3)
    inst = await engine.wait((await engine.start(wf, {"x": 1})).id, timeout=5)
    assert inst.status is InstanceStatus.FAILED
    assert len(calls) == 3
    (incident,) = inst.open_incidents
    assert incident.transition == "work" and incident.attempts == 3
    assert "attempt 3 failed" in incident.error.message
    # The token stayed where it was, data untouched.
    assert [(t.place, t.data) for t in inst.tokens] == [("queued", {"x": 1})]
    last = [e async for e in engine.events(instance=inst.id, types=[EventType.TRANSITION_FAILED])][-1]
    assert last.incident == incident.id and not last.will_retry
    # The fourth call succeeds: a retry by hand resolves the incident and finishes the instance.
    retried = await engine.retry(inst.id)
    assert retried.status is InstanceStatus.RUNNING
    done = await engine.wait(inst.id, timeout=5)
    assert done.status is InstanceStatus.COMPLETED
    assert done.tokens[0].data == {"x": 1, "attempts": 4}
    assert done.incidents[0].resolved and not done.open_incidents


async def test_an_action_that_runs_too_long_times_out(engine: Engine) -> None:
    wf = Workflow("slow")
    a, b = wf.states("a", "b")

    @wf.flow(a >> b, "slow", timeout=0.05, retry=RetryPolicy(max_attempts=2, initial_delay=0.001, jitter=0))
    async def slow(token):
        await asyncio.sleep(10)

    inst = await engine.wait((await engine.start(wf, {})).id, timeout=5)
    assert inst.status is InstanceStatus.FAILED
    (incident,) = inst.open_incidents
    assert incident.attempts == 2
    assert incident.error.kind == "TimeoutError"
    assert inst.tokens[0].place == "a"


async def test_an_error_place_with_a_way_out_handles_the_failure_and_the_instance_goes_on(engine: Engine) -> None:
    wf = Workflow("with_error_place", error_place="broken")
    a, b, broken = wf.states("a", "b", "broken")

    @wf.flow(a >> b, "explode")
    def explode(token):
        raise ValueError("bad row 7")

    wf.flow(broken >> a, "repair", trigger="manual")
    inst = await engine.wait((await engine.start(wf, {"row": 7})).id, timeout=5)
    assert inst.status is InstanceStatus.WAITING, "the workflow itself says what happens next"
    assert inst.open_incidents == []
    assert inst.enabled_manual == ["repair"]
    assert [t.place for t in inst.tokens] == ["broken"]
    assert inst.tokens[0].data["row"] == 7
    assert inst.tokens[0].data["_error"]["message"] == "bad row 7"
    failed = [e for e in inst.tokens[0].history if e.kind == "failed"]
    assert failed[-1].to_places == ("broken",)
    assert failed[-1].details["error"]["message"] == "bad row 7"


async def test_a_dead_end_error_place_keeps_the_token_there_and_fails_the_instance(engine: Engine) -> None:
    wf = Workflow("dead_end_error_place", error_place="broken")
    a, b, broken = wf.states("a", "b", "broken")

    @wf.flow(a >> b, "explode")
    def explode(token):
        raise ValueError("bad row 7")

    inst = await engine.wait((await engine.start(wf, {"row": 7})).id, timeout=5)
    assert inst.status is InstanceStatus.FAILED, "resting in an error place is not a completion"
    assert [t.place for t in inst.tokens] == ["broken"]
    assert inst.open_incidents[0].error_place == "broken"


async def test_a_failing_manual_action_raises_and_leaves_the_instance_as_it_was(engine: Engine) -> None:
    wf = Workflow("manual_fail")
    a, b = wf.states("a", "b")

    @wf.flow(a >> b, "send", trigger="manual")
    def send(token):
        raise RuntimeError("smtp down")

    inst = await engine.wait((await engine.start(wf, {})).id, timeout=5)
    with pytest.raises(ActionError, match="smtp down") as err:
        await engine.fire(inst.id, "send")
    assert err.value.transition == "send" and err.value.workflow == "manual_fail"
    after = await engine.get(inst.id)
    assert after.status is InstanceStatus.WAITING and after.tokens == inst.tokens


async def test_an_action_returning_a_non_dict_is_a_non_retryable_failure(engine: Engine) -> None:
    calls = []
    wf = Workflow("bad_result")
    a, b = wf.states("a", "b")

    @wf.flow(a >> b, "oops", retry=FAST)
    def oops(token):
        calls.append(1)
        return ["not", "a", "dict"]

    inst = await engine.wait((await engine.start(wf, {})).id, timeout=5)
    assert inst.status is InstanceStatus.FAILED
    assert len(calls) == 1  # not retried: the same code would return the same thing
    assert "returned list" in inst.open_incidents[0].error.message
    assert not inst.open_incidents[0].error.retryable


async def test_a_rule_that_raises_is_a_rejection_with_its_message(engine: Engine) -> None:
    rules = RuleSet()

    @rules.rule(desc="divides")
    def divides(token):
        return 1 / token.data["d"] > 0

    wf = Workflow("raising_rule", rules=rules)
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "go", trigger="manual", rules={"all": ["divides"]})
    inst = await engine.wait((await engine.start(wf, {"d": 0})).id, timeout=5)
    with pytest.raises(TransitionRejectedError, match="ZeroDivisionError"):
        await engine.fire(inst.id, "go")
    assert (await engine.get(inst.id)).tokens == inst.tokens


async def test_an_expression_rule_on_a_missing_field_rejects_naming_the_field(engine: Engine) -> None:
    rules = RuleSet()
    rules.add("confident", "confidence >= 0.9")
    wf = Workflow("missing_field", rules=rules)
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "go", trigger="manual", rules={"all": ["confident"]})
    inst = await engine.wait((await engine.start(wf, {})).id, timeout=5)
    with pytest.raises(TransitionRejectedError, match="'confidence' is missing"):
        await engine.fire(inst.id, "go")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2], "must be a JSON object, got list"),
        ("text", "must be a JSON object, got str"),
        ({"when": object()}, "data.when is a object"),
        ({1: "x"}, "non-string key"),
        ({"x": float("nan")}, "JSON cannot carry"),
    ],
)
async def test_malformed_data_is_refused_naming_the_workflow(engine: Engine, data: object, message: str) -> None:
    wf = Workflow("strict")
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "go")
    with pytest.raises(TokenDataError, match=message) as err:
        await engine.start(wf, data)
    assert "'strict'" in str(err.value)
    assert await engine.instances("strict") == []


class Order(BaseModel):
    sku: str
    quantity: int = 1


async def test_data_is_validated_by_the_workflows_token_model(engine: Engine) -> None:
    wf = Workflow("orders", token_model=Order)
    new, priced = wf.states("new", "priced")

    @wf.flow(new >> priced, "price")
    def price(token):
        return {"quantity": "many"}  # breaks the model

    with pytest.raises(TokenDataError, match="sku: Input should be a valid string") as err:
        await engine.start(wf, {"sku": 12})
    assert err.value.field == "sku"
    inst = await engine.wait((await engine.start(wf, {"sku": "A-1"})).id, timeout=5)
    # Defaults are filled in at the start; an action result that breaks the model is an incident.
    assert inst.status is InstanceStatus.FAILED
    assert inst.tokens[0].data == {"sku": "A-1", "quantity": 1}
    assert "Order" in inst.open_incidents[0].error.message


async def test_a_token_model_keeps_fields_it_does_not_declare_unless_it_says_otherwise(engine: Engine) -> None:
    """Found in a walk-through: pydantic's default dropped every undeclared field without a word (a reviewer's
    comment sent with a manual firing, an action's result). A model that says extra="ignore" still drops them,
    and one that says extra="forbid" refuses them, naming the field."""

    def reviewed(model: type[BaseModel]) -> Workflow:
        wf = Workflow(f"reviewed_{model.__name__.lower()}", token_model=model)
        new, checked, done = wf.states("new", "checked", "done")

        @wf.flow(new >> checked, "check")
        def check(token):
            return {"checked_by": "bot"}

        wf.flow(checked >> done, "approve", trigger="manual")
        return wf

    kept = reviewed(Order)
    inst = await engine.wait(
        (await engine.start(kept, {"sku": "A-1", "quantity": "2", "channel": "web"})).id, timeout=5
    )
    fired = await engine.fire(inst.id, "approve", data={"comment": "fine"})
    assert fired.tokens[0].data == {
        "sku": "A-1",
        "quantity": 2,
        "channel": "web",
        "checked_by": "bot",
        "comment": "fine",
    }

    class Dropping(Order):
        model_config = ConfigDict(extra="ignore")

    dropped = await engine.wait((await engine.start(reviewed(Dropping), {"sku": "B", "channel": "web"})).id, timeout=5)
    assert dropped.tokens[0].data == {"sku": "B", "quantity": 1}

    class Strict(Order):
        model_config = ConfigDict(extra="forbid")

    with pytest.raises(TokenDataError, match="Extra inputs are not permitted") as err:
        await engine.start(reviewed(Strict), {"sku": "C", "channel": "web"})
    assert err.value.field == "channel"


async def test_a_token_models_aliased_field_survives_every_merge(engine: Engine) -> None:
    """Found in a walk-through: the data was stored under the field's name, the model reads its alias, so the
    next validation (a manual firing's data merged in) put the default back, without a word."""

    class Labelled(BaseModel):
        label: str = Field("unlabelled", alias="Label")

    wf = Workflow("labelled", token_model=Labelled)
    new, done = wf.states("new", "done")
    wf.flow(new >> done, "approve", trigger="manual")
    inst = await engine.wait((await engine.start(wf, {"Label": "fragile"})).id, timeout=5)
    fired = await engine.fire(inst.id, "approve", data={"comment": "ok"})
    assert fired.tokens[0].data == {"Label": "fragile", "comment": "ok"}


async def test_data_json_cannot_carry_names_the_field(engine: Engine) -> None:
    wf = Workflow("measured")
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "go")
    with pytest.raises(TokenDataError, match="data.reading.value is nan") as err:
        await engine.start(wf, {"reading": {"value": float("nan")}})
    assert err.value.field == "reading.value"


async def test_wait_gives_up_after_its_timeout(engine: Engine) -> None:
    wf = Workflow("sleepy")
    a, b = wf.states("a", "b")

    @wf.flow(a >> b, "nap")
    async def nap(token):
        await asyncio.sleep(5)

    inst = await engine.start(wf, {})
    with pytest.raises(WaitTimeoutError, match="still running"):
        await engine.wait(inst.id, timeout=0.05)


async def test_every_error_shares_one_root() -> None:
    import circuit_breaker.errors as errors

    classes = [v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, Exception)]
    assert all(issubclass(c, CircuitBreakerError) for c in classes)
