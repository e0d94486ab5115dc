"""Secret masking for everything that leaves the process: logs, events, history, results, CLI output.

::

    masker = SecretMasker()
    masker.add_environment()                   # values of GITHUB_TOKEN, DB_PASSWORD, ... (by name)
    masker.add("s3cr3t-value")                 # anything else, explicitly
    masker.mask({"log": "token=s3cr3t-value", "api_key": "abc"})
    # -> {"log": "token=***", "api_key": "***"}
    handler.addFilter(SecretFilter(masker))    # log records, args and exceptions

Two rules: a registered *value* is replaced by ``***`` wherever it appears, also inside longer strings; and
whatever sits under a *key whose name* matches a secret pattern (``*_TOKEN``, ``*_PASSWORD``, ``*API_KEY*``...,
case-insensitive) is replaced whole. Values shorter than ``min_length`` (4) are masked only where they are a
whole value: masking every ``1`` or ``yes`` in every text would destroy the logs, and give the secret away.

``mask()`` sits on hot paths, so it costs one walk without allocation when there is nothing to mask, and then
returns its argument itself; only when something is masked does it build a copy (fully: containers are new).
Registering is thread-safe (log handlers run on other threads): the masker swaps an immutable snapshot.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, cast

if TYPE_CHECKING:
    from .executors import Executor

__all__ = [
    "DEFAULT_PATTERNS",
    "PLACEHOLDER",
    "SecretFilter",
    "SecretMasker",
    "default_masker",
    "mask_logs",
    "set_default_masker",
]

T = TypeVar("T")

PLACEHOLDER = "***"

# Names (of env vars, data keys, log extras) whose values are secret. Matched case-insensitively. Bare
# "token" is not one: in a workflow engine it is a Petri-net token.
DEFAULT_PATTERNS: tuple[str, ...] = (
    "*_SECRET",
    "SECRET_*",
    "*_SECRET_*",
    "SECRET",
    "*_TOKEN",
    "*_PASSWORD",
    "PASSWORD",
    "*_PASSWD",
    "*API_KEY*",
    "*APIKEY*",
    "*_PRIVATE_KEY",
    "*_CREDENTIALS",
    "AUTHORIZATION",
    "PROXY-AUTHORIZATION",
    "*API-KEY*",
    "COOKIE",
    "SET-COOKIE",
)

_NAME_CACHE_LIMIT = 4096


class _Snapshot(NamedTuple):
    """What masking reads, swapped whole on registration so readers need no lock."""

    values: frozenset[str]  # every registered value: masked where it is a whole value
    pattern: re.Pattern[str] | None  # the long-enough ones, masked inside text
    ints: frozenset[int]  # registered values that are integers: an int field equal to one is masked
    dirty: Callable[[Any], bool]  # whether an object holds anything to mask


class SecretMasker:
    """Secret values and secret key names, and the masking of objects, text and log records with them."""

    def __init__(
        self,
        secrets: Iterable[str] = (),
        *,
        patterns: Iterable[str] = DEFAULT_PATTERNS,
        min_length: int = 4,
        placeholder: str = PLACEHOLDER,
    ) -> None:
        self.patterns: tuple[str, ...] = tuple([patterns] if isinstance(patterns, str) else patterns)
        self.min_length = min_length
        self.placeholder = placeholder
        self._names = re.compile("|".join(fnmatch.translate(p) for p in self.patterns), re.IGNORECASE).match
        self._name_cache: dict[str, bool] = {}
        self._lock = threading.Lock()
        self._state = self._snapshot(frozenset())
        self.add(*secrets)

    def _snapshot(self, values: frozenset[str]) -> _Snapshot:
        # Longest first, so a secret that contains another is masked whole.
        long = sorted((v for v in values if len(v) >= self.min_length), key=len, reverse=True)
        pattern = re.compile("|".join(map(re.escape, long))) if long else None
        ints = frozenset(int(v) for v in values if v.lstrip("-").isdigit() and str(int(v)) == v)
        dirty = _checker(values, pattern, ints, self._name_cache if self.patterns else None, self.is_secret_name)
        return _Snapshot(values, pattern, ints, dirty)

    # -- registering ---------------------------------------------------------------------------------------
    def add(self, *values: str) -> None:
        """Register secret values (empty ones are ignored). Their JSON-escaped forms and, for multi-line
        values such as private keys, each line are registered too: that is how they show up in logs."""
        new: set[str] = set()
        for value in values:
            if not isinstance(value, str):
                value = str(value)
            if value.strip():
                new.add(value)
            for variant in (value.strip(), json.dumps(value)[1:-1].strip(), *value.splitlines()):
                if variant.strip():
                    new.add(variant.strip())
        if not new:
            return
        with self._lock:
            if not new <= self._state.values:
                self._state = self._snapshot(self._state.values | new)

    def add_mapping(self, data: Mapping[str, Any]) -> list[str]:
        """Register the values under secret-named keys of ``data`` (nested too); returns those keys' names."""
        found: list[str] = []
        values: list[str] = []
        if self.patterns and not self._state.dirty(data):
            return found  # the fast walk found no secret-named key (and nothing already known): done
        self._collect(data, found, values)
        self.add(*values)
        return found

    def add_environment(self, env: Mapping[str, str] | None = None) -> list[str]:
        """Register the values of secret-named environment variables (``os.environ`` by default)."""
        return self.add_mapping(os.environ if env is None else env)

    def add_executor(self, executor: Executor) -> list[str]:
        """Register the values of an executor's ``secret=True`` parameters (nested executors' too)."""
        from .executors import Executor

        found: list[str] = []
        for name, spec in type(executor)._params.items():
            value = getattr(executor, name, None)
            if spec.secret and value is not None:
                found.append(name)
                self.add(*_strings(value))
            for nested in value if isinstance(value, list) else [value]:
                if isinstance(nested, Executor):
                    found.extend(self.add_executor(nested))
        return found

    def _collect(self, node: Any, found: list[str], values: list[str]) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                if isinstance(key, str) and self.is_secret_name(key):
                    found.append(key)
                    values.extend(_strings(value))
                else:
                    self._collect(value, found, values)
        elif isinstance(node, (list, tuple)):
            for item in node:
                self._collect(item, found, values)

    def is_secret_name(self, name: str) -> bool:
        """Whether values under this key or variable name are secret."""
        cache = self._name_cache
        hit = cache.get(name)
        if hit is None:
            if len(cache) >= _NAME_CACHE_LIMIT:
                cache.clear()
            hit = cache[name] = bool(self.patterns) and self._names(name) is not None
        return hit

    @property
    def active(self) -> bool:
        """Whether any secret value is registered (name patterns alone still mask structured data)."""
        return bool(self._state.values)

    @property
    def count(self) -> int:
        """How many values are registered (forms and lines of one secret count apart). Not ``__len__``: an
        empty masker must not be falsy, or ``masker or default_masker()`` would silently swap it."""
        return len(self._state.values)

    # -- masking -------------------------------------------------------------------------------------------
    def mask_text(self, text: str) -> str:
        """``text`` with every registered value replaced; ``text`` itself when there is none in it."""
        state = self._state
        if text in state.values:
            return self.placeholder
        if state.pattern is None:
            return text
        masked, count = state.pattern.subn(self.placeholder, text)
        return masked if count else text

    def mask(self, obj: T) -> T:
        """``obj`` with secrets masked in every string and under every secret-named key, at any depth.

        Dicts, lists and tuples are walked (other values are returned as they are). When nothing needs
        masking, ``obj`` itself is returned; otherwise a new structure, sharing nothing mutable with ``obj``.
        """
        if type(obj) is str:
            return cast(T, self.mask_text(cast(str, obj)))
        state = self._state
        if not state.values and not self.patterns:
            return obj
        if not state.dirty(obj):
            return obj
        result: T = self._copy(obj, state)
        return result

    def _copy(self, node: Any, state: _Snapshot) -> Any:
        if isinstance(node, str):
            return self.mask_text(node)
        if isinstance(node, Mapping):
            return {
                key: (
                    self.placeholder
                    # None and booleans carry no secret ({"secret": false} is a flag, not a credential).
                    if value is not None and type(value) is not bool and type(key) is str and self.is_secret_name(key)
                    else self._copy(value, state)
                )
                for key, value in node.items()
            }
        if isinstance(node, list):
            return [self._copy(item, state) for item in node]
        if isinstance(node, tuple):
            return tuple(self._copy(item, state) for item in node)
        if type(node) is int and node in state.ints:
            return self.placeholder
        return node

    def log_filter(self) -> SecretFilter:
        """A ``logging.Filter`` masking with this masker (add it to handlers)."""
        return SecretFilter(self)


_STANDARD_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


class SecretFilter(logging.Filter):
    """Masks log records: message, arguments, exception and stack text, and ``extra`` fields.

    Add it to *handlers* (``handler.addFilter(SecretFilter())``): a filter on a logger does not see the
    records of its child loggers. Without a masker it uses ``default_masker()`` at each record, so secrets
    registered later are masked too. It never drops a record.
    """

    def __init__(self, masker: SecretMasker | None = None, name: str = "") -> None:
        super().__init__(name)
        self.masker = masker

    def filter(self, record: logging.LogRecord) -> bool:
        masker = default_masker() if self.masker is None else self.masker
        if record.args:
            record.args = masker.mask(record.args)  # secret-named keys of dict arguments
        if masker.active:
            # Format now, so that secrets in str(arg) of any object are masked too.
            try:
                message = record.getMessage()
            except Exception:  # a bad format string: logging reports it later, with our text, not a leak
                message = f"{record.msg!s} (arguments: {record.args!r})"
            masked = masker.mask_text(message)
            if masked is not message or record.args:
                record.msg, record.args = masked, ()
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = masker.mask_text(record.exc_text)
            if record.stack_info:
                record.stack_info = masker.mask_text(record.stack_info)
        for key, value in record.__dict__.items():
            if key not in _STANDARD_RECORD_ATTRS:
                masked_value = masker.placeholder if masker.is_secret_name(key) else masker.mask(value)
                if masked_value is not value:
                    record.__dict__[key] = masked_value
        return True


def _checker(  # noqa: C901 - one walk of closures is the hot path; splitting it adds a call per item
    values: frozenset[str],
    pattern: re.Pattern[str] | None,
    ints: frozenset[int],
    names: dict[str, bool] | None,
    is_secret_name: Callable[[str], bool],
) -> Callable[[Any], bool]:
    """A function telling whether an object holds anything to mask.

    It is the hot path (every event, log record, result): one walk, exact type checks first, nothing
    allocated, names looked up in the masker's cache. ABC checks only for types other than the JSON ones.
    """
    search = pattern.search if pattern is not None else None
    texts = bool(values)

    def text(value: str) -> bool:
        return value in values or (search is not None and search(value) is not None)

    def mapping(node: Mapping[Any, Any]) -> bool:
        if names is not None:
            for key, value in node.items():
                if value is not None and type(value) is not bool:
                    secret = names.get(key)
                    if secret is None:
                        secret = type(key) is str and is_secret_name(key)
                    if secret:
                        return True
        return sequence(node.values())

    def sequence(items: Iterable[Any]) -> bool:
        for value in items:
            kind = type(value)
            if kind is str:
                if texts and text(value):
                    return True
            elif kind is dict:
                if mapping(value):
                    return True
            elif kind is list or kind is tuple:
                if sequence(value):
                    return True
            elif kind is int:
                if value in ints:
                    return True
            elif kind is not float and kind is not bool and value is not None and dirty(value):
                return True
        return False

    def dirty(node: Any) -> bool:
        kind = type(node)
        if kind is dict:
            return mapping(node)
        if kind is list or kind is tuple:
            return sequence(node)
        if kind is str:
            return texts and text(node)
        if kind is int:
            return node in ints
        if isinstance(node, str):
            return texts and text(node)
        if isinstance(node, Mapping):
            return mapping(node)
        if isinstance(node, (list, tuple)):
            return sequence(node)
        return False

    return dirty


def _strings(value: Any) -> list[str]:
    """Every scalar inside ``value``, as text (a secret-named key may hold a dict of secrets)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    if value is None or isinstance(value, bool):
        return []
    return [str(value)]


# -- the process-wide masker -------------------------------------------------------------------------------
_default: SecretMasker | None = None
_default_lock = threading.Lock()


def default_masker() -> SecretMasker:
    """The process-wide masker, built on first use with the default patterns and the secret-named
    variables of ``os.environ`` registered. Code that can be handed a masker should take one instead."""
    global _default
    masker = _default
    if masker is None:
        with _default_lock:
            if _default is None:
                fresh = SecretMasker()
                fresh.add_environment()
                _default = fresh
            masker = _default
    return masker


def mask_logs(handlers: Iterable[logging.Handler] | None = None) -> None:
    """Mask secrets in what ``handlers`` (default: the root logger's) write. The library never configures
    logging itself; call this after your own logging set-up (the CLI does it for you)."""
    masker = default_masker()
    for handler in logging.getLogger().handlers if handlers is None else handlers:
        if not any(isinstance(f, SecretFilter) for f in handler.filters):
            handler.addFilter(masker.log_filter())


def set_default_masker(masker: SecretMasker | None) -> SecretMasker | None:
    """Replace the process-wide masker (``None``: build a fresh one on next use); returns the previous one."""
    global _default
    with _default_lock:
        previous, _default = _default, masker
    return previous
