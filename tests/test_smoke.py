from circuit_breaker import RuleSet, Workflow
from circuit_breaker.testing import memory_engine, run_to_rest


async def test_a_linear_workflow_completes_with_the_testing_helpers() -> None:
    rules = RuleSet()
    rules.add("big", "n >= 10")
    wf = Workflow("smoke", rules=rules)
    a, b, c = wf.states("a", "b", "c")

    @wf.flow(a >> b, "grow")
    def grow(token):
        return {"n": token.data["n"] * 10}

    wf.flow(b >> c, "finish", rules={"all": ["big"]})
    async with memory_engine(wf) as engine:
        assert engine.workflows == ["smoke"]
        done = await run_to_rest(engine, "smoke", {"n": 2})
        small = await run_to_rest(engine, "smoke", {"n": 0})
    assert done.status == "completed"
    assert [(t.place, t.data) for t in done.tokens] == [("c", {"n": 20})]
    # 0 * 10 fails the rule, so the token rests in b and the instance waits.
    assert small.status == "waiting" and small.tokens[0].place == "b"
