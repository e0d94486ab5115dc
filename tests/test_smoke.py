from circuit_breaker import Engine, RuleSet, Workflow


async def test_a_linear_workflow_completes(engine: Engine) -> None:
    rules = RuleSet()
    rules.add("big", "n >= 10")
    wf = Workflow("smoke", rules=rules)
    a, b, c = wf.states("a", "b", "c")

    @wf.flow(a >> b, "grow")
    def grow(token):
        return {"n": token.data["n"] * 10}

    wf.flow(b >> c, "finish", rules={"all": ["big"]})
    inst = await engine.start(wf, {"n": 2})
    done = await engine.wait(inst.id, timeout=5)
    assert done.status == "completed"
    assert [(t.place, t.data) for t in done.tokens] == [("c", {"n": 20})]
