"""The workflow builder: states, ``>>`` flows and transitions, compiled and checked into a runnable net."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import (
    DefinitionError,
    DuplicateNameError,
    ForeignPlaceError,
    UnknownPlaceError,
    UnknownRuleError,
)
from ..net import Arc, Net, NetTransition, analyse
from ..retry import RetryPolicy
from ..rules import Policy, RuleSet
from ..rules._policy import PolicyValue
from ._compiled import CompiledTransition, CompiledWorkflow, is_async_callable
from ._place import Flow, Place
from ._transition import ActionLike, Transition, Trigger

if TYPE_CHECKING:
    from pydantic import BaseModel

    from ..token import Token
    from ._problems import Problem

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def check_name(kind: str, name: Any, workflow: str | None = None) -> str:
    """Names travel in NATS subjects later, so they must be plain tokens: no dots, wildcards or spaces."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise DefinitionError(
            f"{kind} name {name!r} is invalid: use letters, digits, '_' and '-' only", workflow=workflow
        )
    return name


class Workflow:
    """A workflow definition. The first declared state is the initial place; places without outgoing
    transitions are final.
    """

    def __init__(
        self,
        name: str,
        *,
        rules: RuleSet | None = None,
        token_model: type[BaseModel] | None = None,
        error_place: str | None = None,
        desc: str = "",
    ) -> None:
        self.name = check_name("workflow", name)
        self.rules = rules if rules is not None else RuleSet()
        self.token_model = token_model
        self.desc = desc
        self._places: dict[str, Place] = {}
        self._transitions: list[Transition] = []
        self._error_place = error_place
        self._compiled: CompiledWorkflow | None = None
        self._place_limits: dict[str, int] = {}  # place -> max actions at once of its consumers (scatter)
        self._local: Any = None  # the in-memory marking for seed-style direct use (see _direct.py)

    # -- definition ------------------------------------------------------------------------------------
    def state(self, name: str, *, review: bool = False, desc: str = "") -> Place:
        """Declare one place. ``review=True`` makes its tokens a human-review queue."""
        check_name("place", name, self.name)
        if name in self._places:
            raise DuplicateNameError(
                f"workflow {self.name!r}: place {name!r} is declared twice", workflow=self.name, name=name
            )
        place = Place(name, self, review=review, desc=desc)
        self._places[name] = place
        self._changed()
        return place

    def states(self, *names: str, review: Sequence[str] = ()) -> list[Place]:
        """Declare places in order; the first place of a workflow is its initial place."""
        if not names:
            raise DefinitionError(f"workflow {self.name!r}: states() needs at least one name", workflow=self.name)
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise DuplicateNameError(
                f"workflow {self.name!r}: place(s) {sorted(dupes)} declared twice",
                workflow=self.name,
                name=sorted(dupes)[0],
            )
        unknown_review = set(review) - set(names)
        if unknown_review:
            raise UnknownPlaceError(
                f"workflow {self.name!r}: review place(s) {sorted(unknown_review)} are not among the states",
                workflow=self.name,
                place=sorted(unknown_review)[0],
            )
        # All or nothing: check every name before declaring any, so a typo leaves the workflow unchanged.
        for n in names:
            check_name("place", n, self.name)
            if n in self._places:
                raise DuplicateNameError(
                    f"workflow {self.name!r}: place {n!r} is declared twice", workflow=self.name, name=n
                )
        return [self.state(n, review=n in review) for n in names]

    def flow(
        self,
        flow: Flow,
        name: str | None = None,
        *,
        validations: PolicyValue | Policy = None,
        rules: PolicyValue | Policy = None,
        guards: PolicyValue | Policy = None,
        action: ActionLike | None = None,
        trigger: Trigger = "auto",
        retry: RetryPolicy | int | None = None,
        timeout: float | None = None,
        error_place: Place | None = None,
        desc: str = "",
    ) -> Transition:
        """Add a transition for ``flow`` (``a >> b``, ``a >> (b, c)``, ``(a, b) >> c``)."""
        if not isinstance(flow, Flow):
            raise DefinitionError(
                f"workflow {self.name!r}: flow() takes places joined with >> (like draft >> review), got {flow!r}",
                workflow=self.name,
            )
        for place, _ in flow.sources + flow.targets:
            self._own(place)
        if error_place is not None:
            self._own(error_place)
        tname = flow.default_name() if name is None else check_name("transition", name, self.name)
        transition = Transition(
            self,
            tname,
            flow.sources,
            flow.targets,
            validations=validations,
            guards=guards,
            rules=rules,
            action=action,
            trigger=trigger,
            retry=retry,
            timeout=timeout,
            error_place=error_place,
            desc=desc,
        )
        self._transitions.append(transition)
        self._changed()
        return transition

    def _own(self, place: Place) -> None:
        if place.workflow is not self:
            raise ForeignPlaceError(
                f"workflow {self.name!r}: place {place.name!r} belongs to workflow {place.workflow.name!r}",
                workflow=self.name,
                place=place.name,
            )

    def _rename(self, transition: Transition, name: str) -> None:
        transition.name = check_name("transition", name, self.name)
        self._changed()

    def _changed(self) -> None:
        self._compiled = None

    # -- stage patterns ----------------------------------------------------------------------------------
    def scatter(self, flow: Flow, name: str | None = None, **options: Any) -> Transition:
        """One token per item of a list in the data (see ``circuit_breaker.dsl._patterns.scatter``)."""
        from ._patterns import scatter

        return scatter(self, flow, name, **options)

    def gather(self, flow: Flow, name: str | None = None, **options: Any) -> Transition:
        """Barrier until every scattered item arrived; results under ``results`` (see ``_patterns.gather``)."""
        from ._patterns import gather

        return gather(self, flow, name, **options)

    def broadcast(self, flow: Flow, name: str | None = None, **options: Any) -> list[Transition]:
        """The same input to several executors in parallel (see ``_patterns.broadcast``)."""
        from ._patterns import broadcast

        return broadcast(self, flow, name, **options)

    def fork_join(self, flow: Flow, name: str | None = None, **options: Any) -> list[Transition]:
        """Named parallel branches merged under their names (see ``_patterns.fork_join``)."""
        from ._patterns import fork_join

        return fork_join(self, flow, name, **options)

    def apply(self, pattern: Any, *args: Any, **options: Any) -> Any:
        """Build a user-defined pattern: ``pattern(self, *args, **options)`` (it uses the public DSL)."""
        if not callable(pattern):
            raise DefinitionError(f"workflow {self.name!r}: a pattern must be callable, got {pattern!r}")
        return pattern(self, *args, **options)

    # -- introspection ---------------------------------------------------------------------------------
    @property
    def places(self) -> list[Place]:
        return list(self._places.values())

    @property
    def transitions(self) -> list[Transition]:
        return list(self._transitions)

    def place(self, name: str) -> Place:
        try:
            return self._places[name]
        except KeyError:
            raise UnknownPlaceError(
                f"workflow {self.name!r} has no place {name!r}", workflow=self.name, place=name
            ) from None

    def transition(self, name: str) -> Transition:
        for t in self._transitions:
            if t.name == name:
                return t
        from ..errors import UnknownTransitionError

        raise UnknownTransitionError(self.name, name, [t.name for t in self._transitions])

    @property
    def initial_place(self) -> Place | None:
        return next(iter(self._places.values()), None)

    # -- compilation -----------------------------------------------------------------------------------
    def compile(self) -> CompiledWorkflow:
        """Check the definition and build the runnable form; raises DefinitionError naming every problem."""
        if self._compiled is not None:
            return self._compiled
        errors: list[str] = []
        first: DefinitionError | None = None
        if not self._places:
            errors.append(f"workflow {self.name!r} declares no states")
        seen: dict[str, Transition] = {}
        for t in self._transitions:
            if t.name in seen:
                errors.append(f"workflow {self.name!r}: transition {t.name!r} is defined twice")
                first = first or DuplicateNameError(errors[-1], workflow=self.name, name=t.name)
            seen[t.name] = t
        error_place = None
        if self._error_place is not None:
            if self._error_place not in self._places:
                errors.append(f"workflow {self.name!r}: error place {self._error_place!r} is not a state")
                first = first or UnknownPlaceError(errors[-1], workflow=self.name, place=self._error_place)
            error_place = self._error_place

        compiled: list[CompiledTransition] = []
        for t in self._transitions:
            where = f"workflow {self.name!r}, transition {t.name!r}"
            before = len(errors)
            validations = t.validations.resolve(self.rules, fields=True, problems=errors, where=where)
            guards = t.guards.resolve(self.rules, fields=False, problems=errors, where=where)
            rules = t.rules.resolve(self.rules, fields=False, problems=errors, where=where)
            if len(errors) > before and first is None:
                unknown = re.search(r"unknown rule '([^']+)'", errors[before])
                first = UnknownRuleError(
                    errors[before], workflow=self.name, transition=t.name, rule=unknown.group(1) if unknown else None
                )
            net_t = NetTransition(
                t.name,
                tuple(Arc(p.name, w, p.name in t.variable_inputs) for p, w in t.inputs),
                tuple(Arc(p.name, w, p.name in t.variable_outputs) for p, w in t.outputs),
            )
            handler = t.handler
            compiled.append(
                CompiledTransition(
                    name=t.name,
                    net=net_t,
                    trigger=t.trigger,
                    handler=handler,
                    is_async=handler is not None and is_async_callable(handler),
                    validations=validations,
                    guards=guards,
                    rules=rules,
                    retry=t.retry_policy,
                    timeout=t.timeout,
                    error_place=t.error_place.name if t.error_place is not None else error_place,
                    input_places=tuple(p.name for p, _ in t.inputs),
                    output_places=tuple(p.name for p, _ in t.outputs),
                    desc=t.desc,
                    expand=t.expand,
                    collect=t.collect,
                    max_parallel=t.max_parallel or _place_limit(self._place_limits, t),
                    rate_limit=t.rate_limit,
                    remote=t.remote,
                )
            )
        if errors:
            message = (
                errors[0]
                if len(errors) == 1
                else f"workflow {self.name!r} has {len(errors)} problems: " + "; ".join(errors)
            )
            if first is None:
                raise DefinitionError(message, workflow=self.name, problems=errors)
            # Raise the most specific class of the first problem, worded to list them all.
            first.args = (message,)
            first.problems = list(errors)
            raise first

        net = Net.build(self._places, (c.net for c in compiled))
        auto: dict[str, list[CompiledTransition]] = {}
        manual: dict[str, list[CompiledTransition]] = {}
        for c in compiled:
            target = manual if c.is_manual else auto
            for place in dict.fromkeys(c.input_places):
                target.setdefault(place, []).append(c)
        finals = frozenset(net.final_places())
        for c in compiled:
            c.outputs_final = all(p in finals for p in c.output_places)
            c.single_input = len(c.net.inputs) == 1 and c.net.inputs[0].weight == 1 and c.collect is None
            c.feeds_auto = any(p in auto for p in c.output_places) or (
                c.error_place is not None and c.error_place in auto
            )
        self._compiled = CompiledWorkflow(
            name=self.name,
            net=net,
            transitions={c.name: c for c in compiled},
            ordered=tuple(compiled),
            auto_by_place={p: tuple(ts) for p, ts in auto.items()},
            manual_by_place={p: tuple(ts) for p, ts in manual.items()},
            initial_place=net.places[0],
            final_places=frozenset(net.final_places()),
            review_places=frozenset(p.name for p in self._places.values() if p.review),
            token_model=self.token_model,
            source=self,
        )
        return self._compiled

    def problems(self) -> list[Problem]:
        """Every definition problem: errors that stop registration, and structural warnings.

        Structural checks: places unreachable from the initial place, places from which no final place can be
        reached, and transitions that can never be enabled.
        """
        from ._problems import find_problems

        return find_problems(self)

    # -- diagrams --------------------------------------------------------------------------------------
    def to_mermaid(self, counts: Any = None) -> str:
        """Mermaid source; ``counts`` (place -> tokens, or an Instance) labels places with their token count."""
        from ._diagram import to_mermaid

        return to_mermaid(self, counts)

    def to_dot(self, counts: Any = None) -> str:
        """Graphviz DOT source; ``counts`` as for ``to_mermaid``."""
        from ._diagram import to_dot

        return to_dot(self, counts)

    # -- serialisable spec -----------------------------------------------------------------------------
    def spec(self) -> Any:
        from ._spec import WorkflowSpec

        return WorkflowSpec.of(self)

    # -- seed-style direct use (sync, in memory) -------------------------------------------------------
    def add_token(self, token: Token) -> Token:
        """Put a token in its place (the initial place when it names none); returns the token as placed."""
        from ._direct import add_token

        return add_token(self, token)

    def fire(self, token: Token, transition: str, *, actor: str | None = None) -> Token:
        """Fire exactly ``transition`` with ``token``; returns the produced token (the first, for a fork)."""
        from ._direct import fire

        return fire(self, token, transition, actor=actor)

    @property
    def tokens(self) -> list[Token]:
        """Tokens added with ``add_token`` and produced by ``fire``, in every place."""
        from ._direct import tokens

        return tokens(self)

    def analysis(self) -> Any:
        return analyse(self.compile().net)

    def __repr__(self) -> str:
        return (
            f"Workflow({self.name!r}, places={list(self._places)}, transitions={[t.name for t in self._transitions]})"
        )


def _place_limit(limits: dict[str, int], t: Transition) -> int | None:
    found = [limits[p.name] for p, _ in t.inputs if p.name in limits]
    return min(found) if found else None
