"""Tools for the ``assistant`` and ``agent`` executors: plain functions or executors, described to a model.

A function's JSON schema comes from its signature (type hints through pydantic) and its docstring (the first
paragraph describes the tool, an ``Args:`` / ``Parameters`` section describes each parameter), so the code
that runs and what the model is told cannot drift apart. Arguments from the model are validated against the
same types before the function runs; a mismatch is an error the model can read and correct.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import re
import typing
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from ._base import Executor, token_data
from ._params import params_model

__all__ = ["Tool", "as_tool", "as_tools", "parse_docstring", "tool_reference"]

_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_SECTION = re.compile(r"^(args|arguments|parameters|params|returns?|raises|yields|examples?|notes?)\s*:?\s*$", re.I)


class Tool:
    """A callable the model may ask for: ``name``, ``description``, ``parameters`` (JSON schema) and ``call``."""

    def __init__(
        self,
        name: str,
        description: str,
        parameters: dict[str, Any],
        func: Callable[[dict[str, Any]], Any],
    ) -> None:
        if not _TOOL_NAME.match(name):
            raise ValueError(f"tool name {name!r} must be 1-64 letters, digits, '_' or '-' (what model APIs accept)")
        self.name = name
        self.description = description
        self.parameters = parameters
        self._func = func

    async def call(self, arguments: dict[str, Any]) -> Any:
        """Run the tool with the model's arguments; sync work runs in a thread so the event loop keeps going."""
        result = self._func(arguments)
        if inspect.isawaitable(result):
            result = await result
        return result

    def schema(self) -> dict[str, Any]:
        """The entry for the ``tools`` list of a chat completion request."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    def __repr__(self) -> str:
        return f"Tool({self.name!r})"


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """The first paragraph and per-parameter descriptions (Google ``Args:`` or NumPy ``Parameters``)."""
    text = inspect.cleandoc(doc or "")
    if not text:
        return "", {}
    lines = text.splitlines()
    summary: list[str] = []
    for line in lines:
        if not line.strip() or _SECTION.match(line.strip()):
            break
        summary.append(line.strip())
    params: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    indent = 0
    for i, line in enumerate(lines):
        stripped = line.strip()
        nxt = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if _SECTION.match(stripped) and (stripped.endswith(":") or set(nxt) == {"-"}):
            section = stripped.rstrip(":").lower()
            current = None
            continue
        if section not in ("args", "arguments", "parameters", "params") or not stripped or set(stripped) == {"-"}:
            continue
        lead = len(line) - len(line.lstrip())
        # NumPy puts the type after " : " and the description below; Google writes "name (type): text".
        numpy = re.match(r"^(\w+)(?:\s+:\s*.*)?$", stripped)
        google = re.match(r"^\*{0,2}(\w+)(?:\s*\(([^)]*)\))?:\s*(.*)$", stripped)
        if current is None or lead <= indent:
            if google:
                current, indent = google.group(1), lead
                params[current] = google.group(3).strip()
                continue
            if numpy:
                current, indent = numpy.group(1), lead
                params[current] = ""
                continue
        if current is not None:
            params[current] = f"{params[current]} {stripped}".strip()
    return " ".join(summary), params


def _clean(schema: dict[str, Any]) -> dict[str, Any]:
    """Drop pydantic's generated titles: noise to a model, and they cost tokens on every request."""
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        if isinstance(prop, dict):
            prop.pop("title", None)
    return schema


def _function_tool(func: Callable[..., Any], name: str | None, description: str | None) -> Tool:
    summary, docs = parse_docstring(func.__doc__)
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except Exception:  # unresolvable forward references: fall back to "any value"
        hints = {}
    fields: dict[str, Any] = {}
    for pname, p in inspect.signature(func).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or pname in ("self", "cls"):
            continue
        default = ... if p.default is p.empty else p.default
        fields[pname] = (hints.get(pname, Any), Field(default=default, description=docs.get(pname) or None))
    model = create_model(
        f"{getattr(func, '__name__', 'tool')}_arguments",
        __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True),
        **fields,
    )
    schema = _clean(model.model_json_schema())
    positional = {n for n, p in inspect.signature(func).parameters.items() if p.kind == p.POSITIONAL_ONLY}
    is_async = inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(type(func).__call__)

    def invoke(arguments: dict[str, Any]) -> Any:
        try:
            values = model.model_validate(arguments)
        except ValidationError as err:
            raise ValueError(_argument_problems(err)) from None
        args = [getattr(values, n) for n in fields if n in positional]
        kwargs = {n: getattr(values, n) for n in fields if n not in positional}
        if is_async:
            return func(*args, **kwargs)
        return asyncio.to_thread(func, *args, **kwargs)

    tool_name = name or str(getattr(func, "__name__", "tool"))
    return Tool(tool_name, description if description is not None else summary, schema, invoke)


def _argument_problems(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        where = ".".join(str(p) for p in e.get("loc", ())) or "(arguments)"
        parts.append(f"{where}: {'required' if e['type'] == 'missing' else e['msg']}")
    return "invalid arguments: " + "; ".join(parts)


def _executor_tool(executor: Executor, name: str | None, description: str | None) -> Tool:
    """Parameters the executor was built with stay fixed (the model cannot change a URL or see a secret);
    the rest are the tool's arguments."""
    cls = type(executor)
    fixed = set(executor._raw)
    open_params = {k: s for k, s in cls._params.items() if k not in fixed and not s.secret}
    schema = _clean(params_model(cls, open_params).model_json_schema())
    schema["additionalProperties"] = False

    async def invoke(arguments: dict[str, Any]) -> Any:
        unknown = sorted(set(arguments) - set(open_params))
        if unknown:
            raise ValueError(f"unknown argument(s) {unknown}; this tool takes: {', '.join(open_params) or 'none'}")
        # The author's parameters get their templates filled from the token whose action runs (found in a
        # walk-through: left unfilled); the model's arguments are taken as they are, never as templates, so a
        # model cannot read token data it was not given by writing "{{ api_key }}".
        fixed = executor.render(token_data()) if executor.templated else executor
        run = cls.__new__(cls)
        run._setup({**fixed._raw, **arguments}, frozenset(), from_token=executor.templated)
        run.retry_policy = executor.retry_policy
        run.execution_timeout = executor.execution_timeout
        return await run.execute()

    return Tool(name or executor.name.replace("-", "_"), description or cls.description, schema, invoke)


def as_tool(obj: Any, *, name: str | None = None, description: str | None = None) -> Tool:
    """A ``Tool`` from a function (sync or async), an ``Executor`` instance, or a ``Tool`` (returned as is)."""
    if isinstance(obj, Tool):
        return obj
    if isinstance(obj, str):  # "package.module:function", as specs carry functions to other processes
        obj = _import(obj)
    if isinstance(obj, Executor):
        return _executor_tool(obj, name, description)
    if isinstance(obj, type) and issubclass(obj, BaseModel | Executor):
        raise TypeError(f"{obj.__name__} is a class: pass a function or an executor instance as a tool")
    if callable(obj):
        return _function_tool(obj, name, description)
    raise TypeError(f"{obj!r} is not a tool: pass a function, an Executor instance or a Tool")


def _import(target: str) -> Any:
    module, _, attr = target.partition(":")
    if not module or not attr:
        raise TypeError(f"tool {target!r} must be 'module:function'")
    try:
        value: Any = importlib.import_module(module)
        for part in attr.split("."):
            value = getattr(value, part)
    except (ImportError, AttributeError) as err:
        raise TypeError(f"cannot import tool {target!r}: {err}") from None
    return value


def tool_reference(obj: Any) -> Any:
    """How a tool appears in a spec: a function as ``"module:qualname"`` (importable by a worker), an executor
    as its spec, anything else as its repr (it cannot travel)."""
    if isinstance(obj, Executor | str):
        return obj.spec() if isinstance(obj, Executor) else obj
    qualname = getattr(obj, "__qualname__", None)
    if callable(obj) and qualname and "<" not in qualname:
        return f"{obj.__module__}:{qualname}"
    return repr(obj)


def as_tools(objs: Iterable[Any]) -> dict[str, Tool]:
    """Tools by name; two tools with one name would make the model's choice ambiguous, so that is an error."""
    tools: dict[str, Tool] = {}
    for obj in objs:
        tool = as_tool(obj)
        if tool.name in tools:
            raise ValueError(f"two tools are named {tool.name!r}; give one another name with as_tool(..., name=)")
        tools[tool.name] = tool
    return tools
