"""Declarative workflows: a YAML or JSON document that round-trips with the Python DSL.

    name: invoice_approval
    rules:
      - {name: big, expression: "amount >= 1000", desc: needs a manager}
    places: [received, checked, {name: pending, review: true}, approved]
    transitions:
      - {name: check, from: received, to: checked, validations: {all: [amount, customer]}}
      - {name: approve, from: checked, to: approved, trigger: manual, rules: {all: [big]}}
      - name: notify
        from: [a, {place: b, weight: 2}]
        to: c
        executor: {executor: http, params: {url: "http://...", json: {id: "{{ id }}"}}, into: reply}
        retry: {max_attempts: 3}
        timeout: 10

A workflow can be written this way when its rules are rule-engine expressions and its actions are executors
(rebuilt by name through an executor registry) or absent: code stays in Python, the document names it. The
document is validated with the pydantic models below; every problem is reported with its path in the
document (``transitions[2].from: unknown place 'x'``) and, for YAML, its line.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import (
    DefinitionError,
    ExecutorConfigError,
    RuleDefinitionError,
    WorkflowLoadError,
)
from ..retry import RetryPolicy
from ..rules import Policy, Rule, RuleSet
from ._data import json_problem
from ._place import Flow, Place
from ._transition import Transition
from ._workflow import Workflow, check_name

if TYPE_CHECKING:
    from ..executors import ExecutorRegistry

__all__ = ["WorkflowDocument", "dump_workflow", "load_workflow", "workflow_document"]

SUFFIXES = {".yaml": "yaml", ".yml": "yaml", ".json": "json"}
Path_ = tuple[str | int, ...]


# -- the document --------------------------------------------------------------------------------------------
class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ArcDoc(_Doc):
    """``a`` or ``{place: a, weight: 2}``: how many tokens move through the arc per firing."""

    place: str
    weight: int = Field(default=1, ge=1, strict=True)


class PlaceDoc(_Doc):
    name: str
    review: bool = False
    desc: str = ""


class RuleDoc(_Doc):
    name: str = Field(min_length=1)
    expression: str
    desc: str = ""


class PolicyDoc(_Doc):
    """``{all: [...], any: [...]}``; a plain list means ``all``. Field names in validations, rule names else."""

    all: list[str] = Field(default_factory=list)
    any: list[str] = Field(default_factory=list)

    def policy(self) -> dict[str, list[str]]:
        return {k: v for k, v in (("all", self.all), ("any", self.any)) if v}


class ExecutorDoc(_Doc):
    """``Executor.spec()`` plus ``into`` (nest the output under one key of the token data)."""

    executor: str
    params: dict[str, Any] = Field(default_factory=dict)
    retry: RetryPolicy | None = None
    timeout: float | None = Field(default=None, gt=0)
    into: str | None = None
    remote: bool = Field(False, description="run on a worker (circuit-breaker worker) instead of in the engine")
    deadline: float | None = Field(
        default=None, gt=0, description="seconds the engine waits for one remote attempt before handing it out again"
    )

    @field_validator("retry", mode="before")
    @classmethod
    def _retry(cls, value: Any) -> Any:
        return _retry_value(value)


class TransitionDoc(_Doc):
    name: str | None = None
    desc: str = ""
    sources: list[ArcDoc] = Field(alias="from", min_length=1)
    targets: list[ArcDoc] = Field(alias="to", min_length=1)
    trigger: Literal["auto", "manual"] = "auto"
    validations: PolicyDoc | None = None
    guards: PolicyDoc | None = None
    rules: PolicyDoc | None = None
    executor: ExecutorDoc | None = None
    retry: RetryPolicy | None = None
    timeout: float | None = Field(default=None, gt=0)
    error_place: str | None = None

    @field_validator("sources", "targets", mode="before")
    @classmethod
    def _arcs(cls, value: Any) -> Any:
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(i, (str, Mapping)) for i in items):
            raise ValueError("expected a place name, {place: NAME, weight: N}, or a list of them")
        return [{"place": i} if isinstance(i, str) else i for i in items]

    @field_validator("validations", "guards", "rules", mode="before")
    @classmethod
    def _policy(cls, value: Any) -> Any:
        return {"all": [value] if isinstance(value, str) else value} if isinstance(value, (str, list)) else value

    @field_validator("retry", mode="before")
    @classmethod
    def _retry(cls, value: Any) -> Any:
        return _retry_value(value)


class WorkflowDocument(_Doc):
    """The whole document. ``places`` come in order: the first is the initial place."""

    name: str
    desc: str = ""
    error_place: str | None = None
    rules: list[RuleDoc] = Field(default_factory=list)
    places: list[PlaceDoc] = Field(min_length=1)
    transitions: list[TransitionDoc] = Field(default_factory=list)

    @field_validator("places", mode="before")
    @classmethod
    def _places(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": p} if isinstance(p, str) else p for p in value]
        return value


def _retry_value(value: Any) -> Any:
    """``retry: 3`` is short for ``retry: {max_attempts: 3}``."""
    return {"max_attempts": value} if isinstance(value, int) and not isinstance(value, bool) else value


# -- loading -------------------------------------------------------------------------------------------------
def load_workflow(source: str | Path, *, registry: ExecutorRegistry | None = None) -> Workflow:
    """Build a Workflow from a YAML or JSON document: a path (``.yaml``, ``.yml``, ``.json``) or the text.

    Executors are rebuilt through ``registry`` (``default_registry()`` when none is given and the document
    uses any). Raises WorkflowLoadError when the file cannot be read or parsed, DefinitionError listing every
    problem of the document otherwise.
    """
    text, fmt, shown = _read(source)
    data, lines = _parse(text, fmt, shown)
    if not isinstance(data, Mapping):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise DefinitionError(f"{shown}: a workflow document must be a mapping (name, places, transitions), got {kind}")
    try:
        doc = WorkflowDocument.model_validate(data)
    except ValidationError as err:
        problems = [_pydantic_problem(e) for e in err.errors()]
        raise _definition_error(shown, problems, lines, data.get("name")) from None
    builder = _Builder(doc, registry)
    try:
        wf = builder.build()
    except DefinitionError as err:  # a check the document models do not make yet: still name the file
        err.args = (f"{shown}: {err}",)
        raise
    if builder.problems:
        raise _definition_error(shown, builder.problems, lines, doc.name)
    assert wf is not None
    return wf


def _read(source: str | Path) -> tuple[str, str, str]:
    """(text, format, how to name it in errors). A str is a path when it is one line ending in a known
    suffix or naming an existing file; otherwise it is the document itself."""
    if isinstance(source, Path):
        path = source
    elif "\n" not in source and (Path(source).suffix.lower() in SUFFIXES or _is_file(source)):
        path = Path(source)
    else:
        return source, "json" if source.lstrip().startswith("{") else "yaml", "workflow document"
    shown = str(source)
    if not path.is_file():
        what = "does not exist" if not path.exists() else "is not a file"
        raise WorkflowLoadError(f"workflow file {shown!r} {what}", path=shown)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise WorkflowLoadError(f"cannot read {shown}: {err}", path=shown) from err
    return text, SUFFIXES.get(path.suffix.lower(), "yaml"), shown


def _is_file(source: str) -> bool:
    try:
        return Path(source).is_file()
    except (OSError, ValueError):
        return False


_YamlLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _parse(text: str, fmt: str, shown: str) -> tuple[Any, dict[Path_, int]]:
    """The data and, for YAML, the line of every key and item (to point errors at them)."""
    if fmt == "json":
        twice: list[str] = []
        try:
            data = json.loads(text, object_pairs_hook=lambda pairs: _unique(pairs, twice))
        except json.JSONDecodeError as err:
            raise WorkflowLoadError(f"{shown}: invalid JSON: {err}", path=shown) from None
        if twice:
            keys = ", ".join(repr(k) for k in dict.fromkeys(twice))
            raise DefinitionError(f"{shown}: key(s) {keys} appear twice in one object (JSON would keep the last)")
        return data, {}
    loader = _YamlLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        why = getattr(err, "problem", None) or str(err)
        context = getattr(err, "context", None)
        why = f"{why} ({context})" if context else why
        raise WorkflowLoadError(f"{shown}{where}: invalid YAML: {why}", path=shown) from None
    finally:
        loader.dispose()
    lines: dict[Path_, int] = {}
    duplicates: list[tuple[Path_, int]] = []
    if node is not None:
        _walk(node, (), lines, duplicates)
    if duplicates:
        # YAML keeps the last of two equal keys without a word; a lost ``rules:`` block is worth an error.
        problems = [(p, "appears twice (YAML would keep only the last)") for p, _ in duplicates]
        raise _definition_error(shown, problems, {**lines, **dict(duplicates)}, None)
    return data, lines


def _unique(pairs: list[tuple[str, Any]], twice: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            twice.append(key)
        out[key] = value
    return out


def _walk(
    node: yaml.Node,
    path: Path_,
    lines: dict[Path_, int],
    duplicates: list[tuple[Path_, int]],
    seen_nodes: set[int] | None = None,
) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    # An alias points at a node already walked: once is enough (and keeps alias bombs from exploding).
    seen_nodes = set() if seen_nodes is None else seen_nodes
    if id(node) in seen_nodes:
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = str(key.value)
            if name in seen:
                duplicates.append(((*path, name), key.start_mark.line + 1))
            seen.add(name)
            _walk(value, (*path, name), lines, duplicates, seen_nodes)
            lines[(*path, name)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*path, i), lines, duplicates, seen_nodes)


def _pydantic_problem(error: Any) -> tuple[Path_, str]:
    loc: Path_ = tuple(error.get("loc", ()))
    kind = error.get("type")
    if kind == "missing":
        return loc, "is required"
    if kind == "extra_forbidden":
        allowed = _keys_at(loc[:-1])
        hint = f" (expected one of: {', '.join(allowed)})" if allowed else ""
        return loc, f"unknown key{hint}"
    message = str(error.get("msg", "is invalid")).removeprefix("Value error, ")
    return loc, message


def _keys_at(loc: Path_) -> list[str]:
    """The keys the document model takes at ``loc``, to suggest the right one for a typo."""
    model: Any = WorkflowDocument
    for part in loc:
        if isinstance(part, int):
            continue
        field = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            return []
        model = _model_in(field.annotation)
        if model is None:
            return []
    return [f.alias or n for n, f in model.model_fields.items()]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _where(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(document)"


def _line(path: Path_, lines: Mapping[Path_, int]) -> int | None:
    for n in range(len(path), -1, -1):
        line = lines.get(path[:n])
        if line is not None:
            return line
    return None


def _definition_error(
    shown: str, problems: list[tuple[Path_, str]], lines: Mapping[Path_, int], workflow: Any
) -> DefinitionError:
    texts = []
    for path, message in problems:
        line = _line(path, lines) if path else None
        texts.append((f"line {line}: " if line else "") + f"{_where(path)}: {message}")
    if len(texts) == 1:
        message = f"{shown}, {texts[0]}" if texts[0].startswith("line") else f"{shown}: {texts[0]}"
    else:
        message = f"{shown} has {len(texts)} problems: " + "; ".join(texts)
    return DefinitionError(message, workflow=workflow if isinstance(workflow, str) else None, problems=texts)


class _Builder:
    """Checks what the models cannot (names, references, executors) and builds the Workflow."""

    def __init__(self, doc: WorkflowDocument, registry: ExecutorRegistry | None) -> None:
        self.doc = doc
        self._registry = registry
        self.problems: list[tuple[Path_, str]] = []

    def _name(self, kind: str, value: str, path: Path_) -> bool:
        try:
            check_name(kind, value)
        except DefinitionError as err:
            self.problems.append((path, str(err)))
            return False
        return True

    def registry(self) -> ExecutorRegistry:
        if self._registry is None:
            from ..executors import default_registry

            self._registry = default_registry()
        return self._registry

    def build(self) -> Workflow | None:
        doc = self.doc
        ok_name = self._name("workflow", doc.name, ("name",))
        places: set[str] = set()
        for i, p in enumerate(doc.places):
            if self._name("place", p.name, ("places", i)) and p.name in places:
                self.problems.append((("places", i), f"place {p.name!r} is declared twice"))
            places.add(p.name)
        rules = RuleSet()
        for i, r in enumerate(doc.rules):
            if r.name in rules:
                self.problems.append((("rules", i, "name"), f"rule {r.name!r} is defined twice"))
                continue
            try:
                rules.add(r.name, Rule.from_expression(r.name, r.expression, r.desc))
            except RuleDefinitionError as err:
                self.problems.append((("rules", i, "expression"), str(err)))
        if doc.error_place is not None and doc.error_place not in places:
            self.problems.append((("error_place",), f"unknown place {doc.error_place!r}"))
        rule_names = {r.name for r in doc.rules}
        names: dict[str, int] = {}
        actions = [self._check_transition(i, t, places, rule_names, names) for i, t in enumerate(doc.transitions)]
        if self.problems or not ok_name:
            return None

        wf = Workflow(doc.name, rules=rules, error_place=doc.error_place, desc=doc.desc)
        declared = {p.name: wf.state(p.name, review=p.review, desc=p.desc) for p in doc.places}
        for t, action in zip(doc.transitions, actions):
            flow = Flow(_arcs(declared, t.sources), _arcs(declared, t.targets))
            made = wf.flow(
                flow,
                t.name,
                validations=t.validations.policy() if t.validations else None,
                guards=t.guards.policy() if t.guards else None,
                rules=t.rules.policy() if t.rules else None,
                action=action,
                trigger=t.trigger,
                retry=t.retry,
                timeout=t.timeout,
                error_place=declared[t.error_place] if t.error_place is not None else None,
                desc=t.desc,
            )
            if t.executor is not None and t.executor.remote and action is not None:
                made.action(action, remote=True, deadline=t.executor.deadline)
        return wf

    def _check_transition(
        self, i: int, t: TransitionDoc, places: set[str], rule_names: set[str], names: dict[str, int]
    ) -> Any:
        """Problems of transition ``i`` go to ``self.problems``; returns its action (an executor's) or None."""
        at: Path_ = ("transitions", i)
        name = t.name
        if name is None:  # the DSL's default name
            name = "_".join(a.place for a in t.sources) + "_to_" + "_".join(a.place for a in t.targets)
        else:
            self._name("transition", name, (*at, "name"))
        if name in names:
            self.problems.append(
                ((*at, "name"), f"transition {name!r} is defined twice (also transitions[{names[name]}])")
            )
        names.setdefault(name, i)
        for key, arcs in (("from", t.sources), ("to", t.targets)):
            for a in arcs:
                if a.place not in places:
                    known = ", ".join(p.name for p in self.doc.places)
                    self.problems.append(((*at, key), f"unknown place {a.place!r} (places: {known})"))
        if t.error_place is not None and t.error_place not in places:
            self.problems.append(((*at, "error_place"), f"unknown place {t.error_place!r}"))
        for key, policy in (("guards", t.guards), ("rules", t.rules)):
            for rule in (policy.all + policy.any) if policy else []:
                if rule not in rule_names:
                    known = ", ".join(r.name for r in self.doc.rules) or "none defined"
                    self.problems.append(((*at, key), f"unknown rule {rule!r} (rules: {known})"))
        if t.executor is None:
            return None
        e = t.executor
        try:
            executor = self.registry().from_spec({"executor": e.executor, "params": e.params})
            if e.retry is not None:
                executor.with_retry(e.retry)
            if e.timeout is not None:
                executor.with_timeout(e.timeout)
        except ExecutorConfigError as err:
            self.problems.append(((*at, "executor"), str(err)))
            return None
        return executor.as_action(into=e.into)


def _arcs(declared: Mapping[str, Place], arcs: list[ArcDoc]) -> tuple[tuple[Place, int], ...]:
    return tuple((declared[a.place], a.weight) for a in arcs)


# -- dumping -------------------------------------------------------------------------------------------------
class _Inline(dict[str, Any]):
    """A mapping written on one line in YAML (``{place: a, weight: 2}``)."""


def workflow_document(wf: Workflow, *, reveal_secrets: bool = False) -> dict[str, Any]:
    """The document for ``wf`` as plain data (what ``dump_workflow`` writes).

    Raises DefinitionError naming every part that is Python code (a callable action or rule, a token model,
    a stage pattern) or a secret executor parameter (unless ``reveal_secrets``), since the document could not
    carry it.
    """
    problems: list[str] = []
    doc: dict[str, Any] = {"name": wf.name}
    if wf.desc:
        doc["desc"] = wf.desc
    if wf._error_place is not None:
        doc["error_place"] = wf._error_place
    if wf.token_model is not None:
        problems.append(f"its token model {wf.token_model.__name__} is a Python class")
    rules = []
    for r in wf.rules:
        if r.expression is None:
            problems.append(f"rule {r.name!r} is a Python callable, not an expression")
            continue
        rules.append(_Inline(name=r.name, expression=r.expression, **({"desc": r.desc} if r.desc else {})))
    if rules:
        doc["rules"] = rules
    doc["places"] = [
        p.name if not (p.review or p.desc) else _Inline(name=p.name, **_truthy(review=p.review, desc=p.desc))
        for p in wf.places
    ]
    doc["transitions"] = [_transition(t, problems, reveal_secrets) for t in wf.transitions]
    if not doc["transitions"]:
        del doc["transitions"]
    if problems:
        raise DefinitionError(
            f"workflow {wf.name!r} cannot be written declaratively: " + "; ".join(problems),
            workflow=wf.name,
            problems=problems,
        )
    return doc


def _truthy(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v}


def _transition(t: Transition, problems: list[str], reveal_secrets: bool) -> dict[str, Any]:
    where = f"transition {t.name!r}"
    out: dict[str, Any] = {"name": t.name}
    if t.desc:
        out["desc"] = t.desc
    out["from"] = _arc_doc(t.inputs)
    out["to"] = _arc_doc(t.outputs)
    if t.trigger != "auto":
        out["trigger"] = t.trigger
    for key in ("validations", "guards", "rules"):
        policy: Policy = getattr(t, key)  # validations, guards, rules
        code = [i for i in (*policy.all, *policy.any) if not isinstance(i, str)]
        if code:
            names = ", ".join(repr(getattr(i, "name", None) or getattr(i, "__name__", repr(i))) for i in code)
            problems.append(f"{where}: its {key} hold Python rule(s) {names}; name rules of the rule set instead")
        elif policy:
            out[key] = _Inline(policy.names())
    if t.expand is not None or t.collect is not None or t.variable_inputs or t.variable_outputs:
        problems.append(f"{where} is a stage pattern (scatter, gather...), which only Python can define")
    if t.max_parallel is not None or t.rate_limit is not None:
        problems.append(f"{where} has limits (max_parallel, per_second), which the document cannot carry yet")
    if t.handler is not None:
        executor = _executor_doc(t.handler, where, problems, reveal_secrets)
        if executor is not None:
            if t.remote is not None:
                executor["remote"] = True
                if t.remote.deadline is not None:
                    executor["deadline"] = _number(t.remote.deadline)
            out["executor"] = executor
    if t.retry_policy is not None:
        out["retry"] = _retry_doc(t.retry_policy)
    if t.timeout is not None:
        out["timeout"] = _number(t.timeout)
    if t.error_place is not None:
        out["error_place"] = t.error_place.name
    return out


def _arc_doc(arcs: tuple[tuple[Place, int], ...]) -> Any:
    items = [p.name if w == 1 else _Inline(place=p.name, weight=w) for p, w in arcs]
    return items[0] if len(items) == 1 else items


def _executor_doc(handler: Any, where: str, problems: list[str], reveal_secrets: bool) -> dict[str, Any] | None:
    from ..executors import ExecutorAction

    if not isinstance(handler, ExecutorAction):
        name = getattr(handler, "__qualname__", None) or type(handler).__qualname__
        problems.append(f"{where}: its action {name!r} is Python code; only executors can be written declaratively")
        return None
    masked = handler.executor.spec()
    revealed = handler.executor.spec(reveal_secrets=True)
    if not reveal_secrets:
        for path in _secrets(masked, revealed, ()):
            problems.append(
                f"{where}: executor {revealed['executor']!r} parameter {_where(path)!r} is a secret; write it as a "
                "template ('{{ field }}') or pass reveal_secrets=True to write its value"
            )
    params = revealed["params"]
    problem = json_problem(params, "params")
    if problem:
        problems.append(f"{where}: executor {revealed['executor']!r}: {problem}")
        return None
    out: dict[str, Any] = {"executor": revealed["executor"]}
    if params:
        out["params"] = json.loads(json.dumps(params))  # tuples become lists, as they load back
    if handler.executor.retry_policy is not None:
        out["retry"] = _retry_doc(handler.executor.retry_policy)
    if handler.executor.execution_timeout is not None:
        out["timeout"] = _number(handler.executor.execution_timeout)
    if handler.into:
        out["into"] = handler.into
    return out


def _secrets(masked: Any, revealed: Any, path: Path_) -> list[Path_]:
    """Where ``spec()`` masked a value that is not a template (a template names data, it is no secret)."""
    from ..executors import has_template

    if isinstance(masked, Mapping) and isinstance(revealed, Mapping):
        return [p for k in revealed for p in _secrets(masked.get(k), revealed[k], (*path, k))]
    if isinstance(masked, list) and isinstance(revealed, list):
        return [p for i, (m, r) in enumerate(zip(masked, revealed)) for p in _secrets(m, r, (*path, i))]
    return [path] if masked != revealed and not has_template(revealed) else []


def _retry_doc(policy: RetryPolicy) -> _Inline:
    """The attempts always (``{}`` would hide them), other settings when they differ from the defaults."""
    return _Inline(
        max_attempts=policy.max_attempts, **policy.model_dump(exclude_defaults=True, exclude={"max_attempts"})
    )


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


class _Dumper(yaml.SafeDumper):
    """Block style with indented lists; short lists and ``_Inline`` mappings on one line."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = all(isinstance(x, (str, int, float, bool)) or x is None for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


def _represent_inline(dumper: yaml.SafeDumper, data: _Inline) -> yaml.Node:
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=True)


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    # Expressions quote strings ('approved'); double quotes keep them readable where YAML must quote.
    style = '"' if "'" in data and "\n" not in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(list, _represent_list)
_Dumper.add_representer(_Inline, _represent_inline)


def dump_workflow(wf: Workflow, fmt: Literal["yaml", "json"] = "yaml", *, reveal_secrets: bool = False) -> str:
    """The workflow as a YAML or JSON document that ``load_workflow`` reads back into an equal workflow.

    Raises DefinitionError naming every part that only Python can express (see ``workflow_document``).
    """
    if fmt not in ("yaml", "json"):
        raise ValueError(f"fmt must be 'yaml' or 'json', got {fmt!r}")
    doc = workflow_document(wf, reveal_secrets=reveal_secrets)
    if fmt == "json":
        return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)
