"""Parameter templates: ``{{ field }}``, ``{{ customer.email }}`` or ``{{ $.items[0].id }}`` (JSONPath).

Deliberately small and safe: a template only *looks up* data — no expressions, calls or attribute access on
Python objects, nothing is evaluated. A string that is exactly one template yields the value itself (a list
stays a list); a template inside a longer string is replaced by the value's text (JSON for lists/objects).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from ..errors import TemplateError

_TEMPLATE = re.compile(r"\{\{\s*(.*?)\s*\}\}")
_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*(\.[A-Za-z0-9_\-]+)*$")
_MISSING = object()


def has_template(value: Any) -> bool:
    """True when ``value`` (or anything inside it) holds a ``{{ ... }}`` template."""
    if isinstance(value, str):
        return "{{" in value and _TEMPLATE.search(value) is not None
    if isinstance(value, Mapping):  # (a template in a key counts: check_templates refuses it)
        return any(has_template(k) or has_template(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(has_template(v) for v in value)
    return False


def check_templates(value: Any) -> None:
    """Raise TemplateError for a template that could never be filled (``{{ a + b }}``, a broken JSONPath),
    so the mistake shows when the executor is built, not when the first token arrives."""
    if isinstance(value, str):
        for expression in _TEMPLATE.findall(value):
            if expression.startswith("$"):
                import jsonpath

                try:
                    jsonpath.compile(expression)
                except jsonpath.JSONPathError as err:
                    raise TemplateError(f"invalid JSONPath {expression!r}: {err}", field=expression) from err
            elif not _PATH.match(expression):
                raise TemplateError(
                    f"template {{{{ {expression} }}}} is not a field name, dotted path or JSONPath", field=expression
                )
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str) and "{{" in key and _TEMPLATE.search(key) is not None:
                # Keys are not filled (found in a walk-through: {"{{ k }}": "v"} went out as it is): say so now.
                raise TemplateError(
                    f"template in a key ({key!r}): only values are filled from the token data", field=key
                )
            check_templates(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            check_templates(item)


def lookup(data: Mapping[str, Any], expression: str) -> Any:
    """The value at ``expression``: a dotted path (``a.b.0``) or a JSONPath (``$.items[*].id``)."""
    if expression.startswith("$"):
        import jsonpath  # lazy: only templates with JSONPath pay for the import

        try:
            matches = jsonpath.findall(expression, dict(data))
        except jsonpath.JSONPathError as err:
            raise TemplateError(f"invalid JSONPath {expression!r}: {err}", field=expression) from err
        if not matches:
            raise TemplateError(f"JSONPath {expression!r} matches nothing in the token data", field=expression)
        # A path that can only match one thing yields that thing; a query yields the list.
        singular = not any(ch in expression for ch in "*?,:") and ".." not in expression
        return matches[0] if singular and len(matches) == 1 else list(matches)
    if not _PATH.match(expression):
        raise TemplateError(
            f"template {{{{ {expression} }}}} is not a field name, dotted path or JSONPath", field=expression
        )
    node: Any = data
    for part in expression.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise TemplateError(
                f"template refers to {expression!r}, which the token data does not have", field=expression
            )
    return node


def render(value: Any, data: Mapping[str, Any]) -> Any:
    """``value`` with every template replaced from ``data``; containers are rebuilt, other values kept."""
    if isinstance(value, str):
        if "{{" not in value:
            return value
        whole = _TEMPLATE.fullmatch(value.strip())
        if whole is not None and "{{" not in whole.group(1) and "}}" not in whole.group(1):
            return lookup(data, whole.group(1))
        return _TEMPLATE.sub(lambda m: _text(lookup(data, m.group(1))), value)
    if isinstance(value, Mapping):
        return {k: render(v, data) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, data) for v in value]
    if isinstance(value, tuple):
        return tuple(render(v, data) for v in value)
    return value


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)
