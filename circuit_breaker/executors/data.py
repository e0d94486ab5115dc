"""Data executors: set fields, wait, inject data. Small, pure-asyncio building blocks for workflows and steps.

Templates in their parameters (``"{{ customer.email }}"``, ``"{{ $.items[*].id }}"``) are filled from the token
data by the framework when they run as a transition's action (or from the step context inside a
``StepExecutor``); these executors add what templates cannot do on their own:

- ``set``: ``paths`` are JSONPath queries evaluated when the executor runs, against the ``data`` parameter or,
  when that is not given, against the data the executor was rendered with (the token data in a workflow, the
  step context ``{"steps", "previous", ...}`` in a ``StepExecutor``). No ``data="{{ $ }}"`` boilerplate.
- ``wait``: a non-blocking pause given in ISO 8601 (``PT2S``, ``P1D``) or seconds.
- ``inject``: static or computed data, with ``defaults`` merged under it, which also stand in for a template
  whose field the token data does not have.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import math
import re
from collections.abc import Mapping
from typing import Any

from ..errors import ExecutorConfigError, ExecutorError, TemplateError
from ._base import _PER_INSTANCE, Executor
from ._params import param
from ._template import _PATH, _TEMPLATE, has_template, lookup
from ._template import render as render_template

__all__ = ["InjectExecutor", "SetExecutor", "WaitExecutor", "parse_duration"]


class SetExecutor(Executor):
    """Set fields: fixed or templated ``values`` plus values picked from data by JSONPath (``paths``)."""

    name = "set"

    values: dict[str, Any] = param(default={}, description="output fields, as given (templates filled from data)")
    paths: dict[str, str] = param(
        default={}, description="output field -> JSONPath ($.a.b, $.items[*].id) or dotted path, read from data"
    )
    data: dict[str, Any] | None = param(
        default=None, description="what paths read; by default the data the executor is rendered with (token data)"
    )

    _source: Mapping[str, Any] | None = None  # the render data, used when ``data`` is not given

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        # Checked here, not in validate(): a bad path is wrong whatever the templates in values become.
        if "paths" not in self.templated:
            for key, expression in self.paths.items():
                problem = _path_problem(expression)
                if problem:
                    raise ExecutorConfigError(
                        f"executor {self.name!r}, parameter 'paths', field {key!r}: {problem}",
                        executor=self.name,
                        parameter="paths",
                    )

    def validate(self) -> None:
        if not self.values and not self.paths:
            raise ValueError("give values, paths or both")
        both = sorted(self.values.keys() & self.paths.keys())
        if both:
            raise ValueError(f"fields {both} are in both values and paths; give each field once")

    def render(self, data: Mapping[str, Any]) -> Executor:
        rendered = super().render(data)
        if not self.paths or "data" in self._raw:
            return rendered
        clone = copy.copy(rendered) if rendered is self else rendered
        assert isinstance(clone, SetExecutor)
        clone._source = data
        return clone

    async def execute_internal(self) -> dict[str, Any]:
        out = copy.deepcopy(self.values)
        if not self.paths:
            return out
        source = self.data if self.data is not None else self._source
        if source is None:
            raise ExecutorError(
                f"executor {self.name!r}: paths need data: pass data=..., or run it as a transition's action "
                "(paths then read the token data)",
                executor=self.name,
                kind="no_data",
                retryable=False,
            )
        for key, expression in self.paths.items():
            try:
                out[key] = lookup(source, expression)
            except TemplateError as err:
                raise ExecutorError(
                    f"executor {self.name!r}, field {key!r}: {err}", executor=self.name, kind="path", retryable=False
                ) from err
        return out


class WaitExecutor(Executor):
    """Pause without blocking the event loop: ISO 8601 (``PT2S``, ``PT0.5S``, ``P1D``) or seconds.

    The wait lives in the running process: a restart forgets it. Months and years are refused (their length
    depends on the calendar); give days instead.
    """

    name = "wait"

    duration: float | str = param(required=True, description="ISO 8601 duration (PT2S, P1D) or seconds")

    def validate(self) -> None:
        parse_duration(self.duration)

    async def execute_internal(self) -> dict[str, Any]:
        seconds = parse_duration(self.duration)
        await asyncio.sleep(seconds)
        return {"waited": seconds}


class InjectExecutor(Executor):
    """Inject static or computed data (templates, JSONPath) into the token, with ``defaults`` under it.

    ``defaults`` merge under ``data`` (nested objects merge key by key; ``data`` wins). A top-level field of
    ``data`` whose template names something the token data does not have takes its value from ``defaults``
    when they have that field, instead of failing: ``data={"priority": "{{ priority }}"},
    defaults={"priority": "normal"}``. A malformed template is an error when the executor is built.
    """

    name = "inject"

    data: dict[str, Any] = param(default={}, description="the fields to inject (templates filled from token data)")
    defaults: dict[str, Any] = param(
        default={}, description="fields merged under data; they also stand in for data fields that cannot be filled"
    )

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if "data" in self.templated:
            problem = _template_problem(params.get("data"))
            if problem:
                raise TemplateError(
                    f"executor {self.name!r}, parameter 'data': {problem}", executor=self.name, parameter="data"
                )

    def validate(self) -> None:
        if not self.data and not self.defaults:
            raise ValueError("give data, defaults or both")

    def render(self, data: Mapping[str, Any]) -> Executor:
        raw = self._raw.get("data")
        defaults = self._raw.get("defaults")
        if "data" in self.templated and isinstance(raw, Mapping) and isinstance(defaults, Mapping) and defaults:
            kept = {k: v for k, v in raw.items() if k not in defaults or _fills(v, data)}
            if len(kept) < len(raw):
                pruned = type(self)(**{**self._raw, "data": kept})
                for key, value in vars(self).items():  # settings made after construction (retry, timeout...)
                    if key not in self._params and key not in _PER_INSTANCE:
                        setattr(pruned, key, value)
                return pruned.render(data)
        return super().render(data)

    async def execute_internal(self) -> dict[str, Any]:
        return _merge(copy.deepcopy(self.defaults), copy.deepcopy(self.data))


# -- helpers ---------------------------------------------------------------------------------------------------
_NUMBER = re.compile(r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$")


def parse_duration(value: float | str) -> float:
    """Seconds in ``value``: a number of seconds or an ISO 8601 duration; ValueError says what is wrong."""
    given = value
    if isinstance(value, bool):
        raise ValueError(f"duration {value!r} is not a number of seconds or an ISO 8601 duration")
    if isinstance(value, str) and _NUMBER.match(value):
        value = float(value)
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        import isodate  # no stubs, no py.typed

        text = value.strip()
        if not text.upper().lstrip("+-").startswith("P") or not any(ch.isdigit() for ch in text):
            raise ValueError(f"duration {value!r} is not a number of seconds or an ISO 8601 duration (PT2S, P1D)")
        try:
            parsed = isodate.parse_duration(text)
        except (isodate.ISO8601Error, ValueError) as err:
            raise ValueError(f"duration {value!r} is not a valid ISO 8601 duration: {err}") from None
        if isinstance(parsed, isodate.Duration):
            if parsed.years or parsed.months:
                raise ValueError(
                    f"duration {value!r} has months or years, whose length depends on the calendar; "
                    "give days instead (P30D)"
                )
            parsed = parsed.tdelta
        assert isinstance(parsed, dt.timedelta)
        seconds = parsed.total_seconds()
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"duration {given!r} must be a finite number of seconds >= 0")
    return seconds


def _path_problem(expression: str) -> str | None:
    """Why ``expression`` is not a JSONPath or dotted path, or None."""
    if expression.startswith("$"):
        import jsonpath

        try:
            jsonpath.compile(expression)
        except jsonpath.JSONPathError as err:
            return f"invalid JSONPath {expression!r}: {str(err).splitlines()[0]}"
        return None
    if not _PATH.match(expression):
        return f"{expression!r} is not a JSONPath ($.a.b) or a dotted path (a.b.0)"
    return None


def _template_problem(value: Any) -> str | None:
    """The first malformed ``{{ ... }}`` template inside ``value``, described, or None."""
    if isinstance(value, str):
        for match in _TEMPLATE.finditer(value):
            problem = _path_problem(match.group(1))
            if problem:
                return f"template {match.group(0)!r}: {problem}"
        return None
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        for item in value:
            problem = _template_problem(item)
            if problem:
                return problem
    return None


def _fills(value: Any, data: Mapping[str, Any]) -> bool:
    """Whether every template in ``value`` finds its field in ``data``."""
    if not has_template(value):
        return True
    try:
        render_template(value, data)
    except TemplateError:
        return False
    return True


def _merge(under: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged onto ``under`` (in place): nested objects key by key, anything else replaced."""
    for key, value in over.items():
        below = under.get(key)
        if isinstance(below, dict) and isinstance(value, Mapping):
            _merge(below, value)
        else:
            under[key] = value
    return under
