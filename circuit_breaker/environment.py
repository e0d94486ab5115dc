"""Process environments for executors that start processes (shell, docker...).

::

    env = build_environment(
        exclude=["AWS_*"],                                   # keep the worker's cloud credentials out
        set={"ORDER_ID": "${order.id}", "PATH": "/opt/tool/bin:${PATH}"},
        context=token.data,
    )

Layers, later ones winning: the current process's environment (``inherit=True``), then ``base``, with every
name matching an ``exclude`` pattern removed from both; then ``set``, whose values may hold ``${name}``
references. A reference is looked up in ``context`` (token data and task outputs; dotted paths such as
``${order.items.0.sku}``), then among the variables inherited or given in ``base`` that were not excluded, so
``${PATH}`` extends the path. ``$${`` writes a literal ``${``. A reference to nothing is a ``TemplateError``
naming the reference and the variable being set: a process silently started with an empty value is worse.
Only ``set`` is interpolated: inherited and ``base`` values are taken literally (a ``${`` in the worker's own
environment is not ours to expand). ``exclude`` does not apply to ``set``: what is set by name is wanted.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

from .errors import ExecutorConfigError, TemplateError

__all__ = ["build_environment"]

# "$${..." (an escape), or "${name}" / an unterminated "${name".
_REFERENCE = re.compile(r"\$(\$?)\{([^}]*)(\}?)")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_\-]+)*$")
_MISSING = object()
_EMPTY: Mapping[str, Any] = MappingProxyType({})


def build_environment(
    base: Mapping[str, str] | None = None,
    *,
    inherit: bool = True,
    exclude: Iterable[str] = (),
    set: Mapping[str, str] = _EMPTY,
    context: Mapping[str, Any] = _EMPTY,
) -> dict[str, str]:
    """The environment for a child process: inherited, ``base``, minus ``exclude``, plus interpolated ``set``.

    ``exclude`` holds shell-style patterns (``AWS_*``, ``*_TOKEN``) matched case-insensitively, so a pattern
    written in capitals also removes ``aws_profile``. Numbers and booleans in ``set`` are accepted (YAML writes
    them unquoted) and written as ``42``, ``true``; anything else must be a string.
    """
    drop = _matcher(exclude)
    env: dict[str, str] = {}
    for layer in (os.environ if inherit else None, base):
        if layer:
            for name, value in layer.items():
                if drop is None or not drop(name.upper()):
                    env[name] = value
    known = dict(env)  # what ${NAME} may read besides the context: never a value from ``set`` itself
    for name, value in set.items():
        _check_name(name)
        text = _scalar(name, value)
        if "${" in text:
            text = _interpolate(name, text, context, known)
        if "\0" in text:
            raise ExecutorConfigError(f"environment variable {name!r}: the value holds a NUL character")
        env[name] = text
    return env


def _interpolate(name: str, text: str, context: Mapping[str, Any], known: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        escaped, reference, closed = match.groups()
        if escaped:
            return "${" + reference + closed
        if not closed:
            raise TemplateError(f"environment variable {name!r}: unterminated '${{{reference}' (close it with '}}')")
        if not _NAME.match(reference):
            raise TemplateError(
                f"environment variable {name!r}: '${{{reference}}}' is not a name or dotted path", field=reference
            )
        value = _resolve(reference, context)
        if value is _MISSING:
            value = known.get(reference, _MISSING)
        if value is _MISSING:
            raise TemplateError(
                f"environment variable {name!r} refers to '${{{reference}}}', which is not in the token data, "
                "the task outputs or the environment (write '$${' for a literal '${')",
                field=reference,
            )
        return _text(value)

    return _REFERENCE.sub(replace, text)


def _resolve(path: str, context: Mapping[str, Any]) -> Any:
    node: Any = context
    for part in path.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value)  # true/false, numbers, and JSON for objects and lists


def _scalar(name: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return _text(value)
    raise ExecutorConfigError(f"environment variable {name!r}: the value must be a string, got {type(value).__name__}")


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not name or "=" in name or "\0" in name:
        raise ExecutorConfigError(f"{name!r} is not a valid environment variable name (non-empty, no '=' or NUL)")


def _matcher(patterns: Iterable[str]) -> Callable[[str], object] | None:
    if isinstance(patterns, str):  # exclude="AWS_*" would otherwise exclude A, W, S...
        patterns = [patterns]
    compiled = [fnmatch.translate(p.upper()) for p in patterns]
    if not compiled:
        return None
    return re.compile("|".join(compiled)).match
