"""The executor base class: declared parameters, validation, hooks, retries, timeout and a result record."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import re
import time
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError

from .._construct import build
from ..errors import ExecutorConfigError, ExecutorError, ExecutorTimeoutError, TemplateError
from ..events import ErrorInfo
from ..retry import RetryPolicy
from ..secrets import default_masker
from ..token import utcnow
from ._params import ParamSpec, collect_params, params_model
from ._result import ExecutionResult
from ._template import check_templates, has_template, render

_NAME = re.compile(r"^[a-z][a-z0-9_\-]*$")
_USAGE: ContextVar[dict[str, float] | None] = ContextVar("circuit_breaker_executor_usage", default=None)
_DATA: ContextVar[Mapping[str, Any] | None] = ContextVar("circuit_breaker_executor_data", default=None)


def token_data() -> Mapping[str, Any]:
    """The data of the token whose action is running (empty outside an action): what ``${VAR}`` in an
    executor's environment is filled from, besides the environment itself."""
    return _DATA.get() or {}


def idempotency_key() -> str | None:
    """The idempotency key of the firing whose action is running (an engine's action, or a task on a worker),
    None outside one: the same on every run of that firing, for executors to hand to the outside world."""
    from ..engine._context import current_firing  # (the engine imports executors)

    firing = current_firing()
    return firing.idempotency_key if firing is not None else None


def with_idempotency_key(env: Mapping[str, str]) -> dict[str, str]:
    """A program's environment: inside a firing ``CB_IDEMPOTENCY_KEY`` holds its key (a value in ``env`` wins),
    as Python actions read ``current_firing().idempotency_key``."""
    key = idempotency_key()
    return dict(env) if key is None else {"CB_IDEMPOTENCY_KEY": key, **env}


def request_key(*parts: Any) -> str | None:
    """The idempotency key of one request an action makes (None outside a firing): the firing's key and a digest
    of what the request is (``parts``: method, URL, body...). Each distinct request of a firing has a key of its
    own (a step sequence's two POSTs must not share one), the same on every run of the firing and every retry."""
    key = idempotency_key()
    if key is None:
        return None
    digest = hashlib.blake2b(digest_size=8)
    for part in parts:
        # Through JSON once first: keys of mixed types (YAML's {1: a, b: 2}) become strings that sort.
        plain = json.loads(json.dumps(part, default=str))
        digest.update(json.dumps(plain, sort_keys=True).encode())
        digest.update(b"\0")
    return f"{key}:{digest.hexdigest()}"


# An HTTP header name (RFC 9110 token).
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def check_header_name(param_name: str, value: str | None) -> None:
    if value is not None and not _HEADER_NAME.fullmatch(value):
        raise ValueError(f"{param_name} {value!r} is not an HTTP header name")


def add_idempotency_header(headers: dict[str, str], name: str | None, key: str) -> None:
    """Send ``key`` in header ``name`` (None: not at all) unless the request already sets that header."""
    if name is not None and not any(given.lower() == name.lower() for given in headers):
        headers[name] = key


# Attributes each executor object has of its own; render() does not copy them to the clone.
_DESCRIPTIVE_KEYS = frozenset({"type", "in", "name", "username", "user", "scheme", "header", "location"})
_PER_INSTANCE = frozenset({"_raw", "_templated", "_from_token", "_own_secrets", "usage", "last_error"})


class Executor:
    """Does the work of a transition (or of a script, on its own).

    Subclasses set ``name``, declare parameters with ``param()`` and implement ``async execute_internal()``
    returning a dict. Parameters are validated when the executor is built (``ExecutorConfigError`` names the
    executor and the parameter); ``validate()`` adds checks of its own. ``await ex.execute()`` returns the
    output dict and raises ``ExecutorError`` on failure; ``await ex.execute_detailed()`` returns the full
    ``ExecutionResult`` and never raises for a failed execution.

    Parameter values may hold templates (``"{{ input_file }}"``) that are filled from token data when the
    executor runs as a transition's action (``render(data)``).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    default_retry: ClassVar[RetryPolicy | None] = None
    default_timeout: ClassVar[float | None] = None

    _params: ClassVar[dict[str, ParamSpec]] = {}
    _secret_params: ClassVar[tuple[str, ...]] = ()
    _model: ClassVar[type[BaseModel] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        clashes = sorted(k for k, v in vars(cls).items() if isinstance(v, ParamSpec) and k in _RESERVED)
        if clashes:
            raise ExecutorConfigError(
                f"executor class {cls.__qualname__}: parameter(s) {clashes} would hide the executor's own "
                "attributes; rename them",
                executor=cls.__qualname__,
                parameter=clashes[0],
            )
        if "name" not in cls.__dict__ or not cls.name:
            cls.name = re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__.removesuffix("Executor")).lower() or "executor"
        if not _NAME.match(cls.name):
            raise ExecutorConfigError(
                f"executor class {cls.__qualname__}: name {cls.name!r} must be lower-case letters, digits, '_', '-'",
                executor=cls.name,
            )
        # Mistakes surface when the class is defined, not when it first runs.
        for hook in ("execute_internal", "before_execute", "after_execute"):
            if not inspect.iscoroutinefunction(getattr(cls, hook)):
                raise ExecutorConfigError(f"executor {cls.name!r}: {hook} must be 'async def'", executor=cls.name)
        if "description" not in cls.__dict__:
            doc = inspect.cleandoc(cls.__dict__.get("__doc__") or "")
            cls.description = doc.split("\n\n")[0].replace("\n", " ")
        cls._params = collect_params(cls)
        cls._secret_params = tuple(k for k, spec in cls._params.items() if spec.secret)
        cls._model = params_model(cls, cls._params)

    def __init__(self, **params: Any) -> None:
        self._setup(params, frozenset(k for k, v in params.items() if has_template(v)))

    def _setup(
        self, params: dict[str, Any], templated: frozenset[str], *, from_token: frozenset[str] = frozenset()
    ) -> None:
        for key in templated:
            try:
                check_templates(params[key])
            except TemplateError as err:
                raise TemplateError(
                    f"executor {self.name!r}, parameter {key!r}: {err}", executor=self.name, parameter=key
                ) from None
        self._raw = params
        self._templated = templated
        self._from_token = from_token  # (render()'s clone: these parameters were filled from a token)
        self._own_secrets: tuple[str, ...] = ()
        self.retry_policy: RetryPolicy | None = type(self).default_retry
        self.execution_timeout: float | None = type(self).default_timeout
        self.usage: dict[str, float] = {}
        self.last_error: Exception | None = None
        values = self._validated(params)
        for key, value in values.items():
            setattr(self, key, value)
        if self._secret_params:
            self._register_secrets(values, from_token)
        if not self._templated:
            self._run_validate()

    def mask_named(self, param: str, variables: Mapping[str, Any]) -> None:
        """Mask the values of the secret-named variables (``API_TOKEN``...) of parameter ``param``: everywhere
        from now on, or, when they were filled from a token, in this executor's results only (per-token values
        must not pile up in the process-wide masker)."""
        masker = default_masker()
        if param not in self._from_token:
            masker.add_environment(dict(variables))
            return
        named = [str(v) for k, v in variables.items() if masker.is_secret_name(k) and v]
        self._own_secrets = (*self._own_secrets, *named)

    def _register_secrets(self, values: dict[str, Any], from_token: frozenset[str]) -> None:
        """Secret values from configuration are masked everywhere from now on (logs, events, results, CLI
        output). Values filled from token data differ per token: they are masked in this executor's own results
        only, so they do not pile up in the process-wide masker."""
        if from_token:  # a clone made by render(): its static secrets were registered by the original
            self._own_secrets = tuple(
                text for k in self._secret_params if k in from_token for text in _secret_texts(values.get(k))
            )
            return
        static = [
            text for k in self._secret_params if k not in self._templated for text in _secret_texts(values.get(k))
        ]
        if static:
            default_masker().add(*static)

    # -- construction ----------------------------------------------------------------------------------
    def _validated(self, params: Mapping[str, Any]) -> dict[str, Any]:
        model = type(self)._model
        if model is None:
            raise ExecutorConfigError("Executor itself cannot run; subclass it", executor=self.name)
        try:
            return dict(model.model_validate(params).__dict__)
        except ValidationError as err:
            # Templated values are checked once rendered; report everything else now.
            problems = [e for e in err.errors() if not (e.get("loc") and e["loc"][0] in self._templated)]
            if problems:
                raise self._config_error(problems) from None
            # Validate the rest with a model that leaves the templated parameters out.
            partial = _partial_model(type(self), self._templated)
            out = dict(partial.model_validate({k: v for k, v in params.items() if k not in self._templated}).__dict__)
            out.update({k: params[k] for k in self._templated})
            return out

    def _config_error(self, problems: list[Any]) -> ExecutorConfigError:
        first = problems[0]
        param_name = str(first["loc"][0]) if first.get("loc") else None
        parts = []
        for e in problems:
            where = ".".join(str(p) for p in e.get("loc", ())) or "(parameters)"
            if e.get("type") == "missing":
                parts.append(f"parameter {where!r} is required")
            elif e.get("type") == "extra_forbidden":
                parts.append(f"unknown parameter {where!r} (it takes: {', '.join(self._params) or 'none'})")
            else:
                parts.append(f"parameter {where!r}: {e.get('msg')}")
        return ExecutorConfigError(
            f"executor {self.name!r}: " + "; ".join(parts), executor=self.name, parameter=param_name
        )

    def _run_validate(self) -> None:
        try:
            self.validate()
        except ValueError as err:
            raise ExecutorConfigError(f"executor {self.name!r}: {err}", executor=self.name) from err

    # -- hooks for subclasses ----------------------------------------------------------------------------
    def validate(self) -> None:
        """Extra checks after the declared types; raise ValueError with a message naming the problem."""

    async def before_execute(self) -> None:
        """Runs before each attempt."""

    async def execute_internal(self) -> dict[str, Any]:
        """The work. Return a dict (it becomes the output, and merges into token data in a workflow)."""
        raise ExecutorError(f"executor {self.name!r} does not implement execute_internal", executor=self.name)

    async def after_execute(self, result: dict[str, Any]) -> None:
        """Runs after a successful attempt with its output."""

    # -- configuration ---------------------------------------------------------------------------------
    def with_retry(self, policy: RetryPolicy | int | None) -> Executor:
        """Retry failed attempts (``retryable`` errors only): a policy or a number of attempts."""
        self.retry_policy = RetryPolicy(max_attempts=policy) if isinstance(policy, int) else policy
        return self

    def with_timeout(self, seconds: float | None) -> Executor:
        """Bound each attempt; a timed-out attempt is cancelled and counts as a retryable failure."""
        if seconds is not None and seconds <= 0:
            raise ExecutorConfigError(f"executor {self.name!r}: timeout must be positive", executor=self.name)
        self.execution_timeout = seconds
        return self

    def record_usage(self, **amounts: float) -> None:
        """Add to this execution's resource usage (``http_requests=1``, ``cpu_time=0.2``...)."""
        usage = _USAGE.get(None)
        if usage is None:  # outside execute_detailed (a direct execute_internal call): keep it on the object
            usage = self.usage
        for key, amount in amounts.items():
            # Peaks (peak_memory_kb...) keep the highest figure across attempts; everything else adds up.
            usage[key] = max(usage.get(key, 0), amount) if key.startswith("peak_") else usage.get(key, 0) + amount

    # -- templates ---------------------------------------------------------------------------------------
    @property
    def templated(self) -> frozenset[str]:
        """Parameters whose values hold templates to fill from token data."""
        return self._templated

    def render(self, data: Mapping[str, Any]) -> Executor:
        """A copy with every template filled from ``data`` and validated; ``self`` when there is none."""
        if not self._templated:
            return self
        params: dict[str, Any] = {}
        for key, value in self._raw.items():
            if key not in self._templated:
                params[key] = value
                continue
            try:
                params[key] = render(value, data)
            except TemplateError as err:
                raise TemplateError(
                    f"executor {self.name!r}, parameter {key!r}: {err}",
                    executor=self.name,
                    parameter=key,
                    field=err.field,
                ) from None
        # The clone is fully rendered even if token data itself contains "{{ ... }}": that is data, not a template.
        clone = type(self).__new__(type(self))
        clone._setup(params, frozenset(), from_token=self._templated)
        # Carry over configuration set after construction (retry, timeout, a subclass's own settings).
        for key, value in vars(self).items():
            if key not in self._params and key not in _PER_INSTANCE:
                setattr(clone, key, value)
        return clone

    def masked_error(self, result: ExecutionResult) -> ExecutorError:
        """``last_error`` as the result tells it: masked with the secrets filled from the token too (found in a
        walk-through: a key the server echoed in its 401 reached the incident and the event in clear)."""
        err = self.last_error
        assert isinstance(err, ExecutorError)
        if result.error is not None:
            err.args = (result.error.message,)
            err.details = dict(result.error.details or {})
        return err

    # -- running -----------------------------------------------------------------------------------------
    async def execute(self) -> dict[str, Any]:
        """Run (with the executor's retries and timeout) and return the output; raises ExecutorError."""
        result = await self.execute_detailed()
        if result.status == "succeeded":
            return result.output
        if isinstance(self.last_error, ExecutorError):
            raise self.masked_error(result)  # the original class (CircuitOpenError...) with its details
        error = result.error
        assert error is not None
        if result.status == "timed_out":
            raise ExecutorTimeoutError(self.name, self.execution_timeout or 0.0)
        raise ExecutorError(
            error.message, executor=self.name, kind=error.kind, retryable=error.retryable, details=error.details
        )

    async def execute_detailed(self) -> ExecutionResult:
        """Run and describe what happened; failures are in the record, not raised (cancellation is)."""
        if self._templated:
            raise TemplateError(
                f"executor {self.name!r} has templated parameters {sorted(self._templated)}: "
                "render(data) it with token data first",
                executor=self.name,
            )
        started = utcnow()
        t0 = time.perf_counter()
        # Usage is per execution, kept in a context variable: one executor object may run concurrently (as an
        # action without templates), and each run must count only its own requests.
        usage: dict[str, float] = {}
        token = _USAGE.set(usage)
        self.last_error = None
        try:
            return await self._attempts(started, t0, usage)
        finally:
            _USAGE.reset(token)
            self.usage = usage

    async def _attempts(self, started: Any, t0: float, usage: dict[str, float]) -> ExecutionResult:
        policy = self.retry_policy
        max_attempts = policy.max_attempts if policy is not None else 1
        attempt = 0
        while True:
            attempt += 1
            deadline = None
            try:
                await self.before_execute()
                if self.execution_timeout is not None:
                    async with asyncio.timeout(self.execution_timeout) as deadline:
                        output = await self.execute_internal()
                else:
                    output = await self.execute_internal()
                if not isinstance(output, dict):
                    raise ExecutorError(
                        f"executor {self.name!r} returned {type(output).__name__}, expected a dict",
                        executor=self.name,
                        kind="bad_output",
                        retryable=False,
                    )
                await self.after_execute(output)
                return self._result("succeeded", output, None, started, t0, attempt, usage)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                expired = deadline is not None and deadline.expired()
                status, info = _classify(self.name, err, self.execution_timeout if expired else None)
                if isinstance(err, ExecutorError) and err.executor is None:
                    err.executor = self.name
                self.last_error = err
                if info.retryable and attempt < max_attempts and policy is not None:
                    await asyncio.sleep(policy.delay(attempt))
                    continue
                return self._result(status, {}, info, started, t0, attempt, usage)

    def _result(
        self,
        status: str,
        output: dict[str, Any],
        error: ErrorInfo | None,
        started: Any,
        t0: float,
        attempts: int,
        usage: dict[str, float],
    ) -> ExecutionResult:
        wall = time.perf_counter() - t0
        # Results are shown and stored: a secret the work echoed (a token in a response) must not be.
        maskers = [default_masker()]
        if self._own_secrets:  # secrets filled from this token: masked here, not registered process-wide
            from ..secrets import SecretMasker

            maskers.append(SecretMasker(self._own_secrets, patterns=()))
        for masker in maskers:
            if output:
                output = masker.mask(output)
            if error is not None:
                message = masker.mask_text(error.message)
                details = masker.mask(error.details) if error.details else error.details
                if message is not error.message or details is not error.details:
                    error = error.model_copy(update={"message": message, "details": details})
        return build(
            ExecutionResult,
            executor=self.name,
            status=status,
            output=output,
            error=error,
            started_at=started,
            finished_at=utcnow(),
            duration=wall,
            attempts=attempts,
            usage=usage,
        )

    def run(self) -> dict[str, Any]:
        """``execute()`` for scripts: runs its own event loop."""
        return asyncio.run(self.execute())

    # -- description and serialisation ---------------------------------------------------------------------
    @classmethod
    def describe(cls) -> dict[str, Any]:
        """Name, description and parameters, as ``circuit-breaker executors --json`` prints them."""
        return {
            "name": cls.name,
            "description": cls.description,
            "class": f"{cls.__module__}:{cls.__qualname__}",
            "params": [spec.describe(name) for name, spec in cls._params.items()],
        }

    def spec(self, *, reveal_secrets: bool = False) -> dict[str, Any]:
        """The serialisable form: registered name and parameters as given (templates kept).

        A worker in another process rebuilds the executor from it through a registry. Secret parameters are
        masked unless ``reveal_secrets`` (for handing a task to a trusted worker).
        """
        params: dict[str, Any] = {}
        for key, value in self._raw.items():
            spec = self._params.get(key)
            if spec is not None and spec.secret and not reveal_secrets:
                params[key] = "***"
            elif isinstance(value, Executor):
                params[key] = value.spec(reveal_secrets=reveal_secrets)
            elif isinstance(value, list) and any(isinstance(v, Executor) for v in value):
                params[key] = [v.spec(reveal_secrets=reveal_secrets) if isinstance(v, Executor) else v for v in value]
            else:
                params[key] = value
        out: dict[str, Any] = {"executor": self.name, "params": params}
        if self.retry_policy is not None:
            out["retry"] = self.retry_policy.model_dump()
        if self.execution_timeout is not None:
            out["timeout"] = self.execution_timeout
        return out

    def as_action(self, *, into: str | None = None) -> Any:
        """This executor as a transition action; ``into`` nests the output under one key of the token data."""
        from ._action import ExecutorAction

        return ExecutorAction(self, into=into)

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{k}={'***' if (s := self._params.get(k)) is not None and s.secret else repr(v)}"
            for k, v in self._raw.items()
        )
        return f"{type(self).__name__}({shown})"


_PARTIAL_MODELS: dict[tuple[type[Executor], frozenset[str]], type[BaseModel]] = {}


def _partial_model(cls: type[Executor], leave_out: frozenset[str]) -> type[BaseModel]:
    """A parameters model without ``leave_out`` (cached: templated executors are built over and over)."""
    key = (cls, leave_out)
    model = _PARTIAL_MODELS.get(key)
    if model is None:
        model = _PARTIAL_MODELS[key] = params_model(cls, {k: v for k, v in cls._params.items() if k not in leave_out})
    return model


def _classify(name: str, err: Exception, timeout: float | None) -> tuple[str, ErrorInfo]:
    """Status and error record; ``timeout`` is given only when the executor's own deadline expired."""
    if timeout is not None:
        return "timed_out", ErrorInfo(
            kind="timeout", message=f"executor {name!r} timed out after {timeout}s", retryable=True
        )
    if isinstance(err, ExecutorError):
        status = "timed_out" if err.kind == "timeout" else "failed"
        return status, ErrorInfo(kind=err.kind, message=str(err), retryable=err.retryable, details=err.details)
    retryable = bool(getattr(err, "retryable", True))
    return "failed", ErrorInfo(kind=type(err).__name__, message=str(err) or type(err).__name__, retryable=retryable)


# Names a parameter may not take: they would shadow what every executor has.
_RESERVED = frozenset(n for n in dir(Executor) if not n.startswith("__")) | {
    "retry_policy",
    "execution_timeout",
    "usage",
    "last_error",
}


def _secret_texts(value: Any) -> list[str]:
    """The strings a secret parameter holds (all of them, for a dict or list of credentials)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, Mapping):
        # A credential dict names its kind and where it goes ({"type": "bearer", "in": "query", "name":
        # "X-Key"}); only the rest is secret, or every later "bearer" or "query" would turn into ***.
        return [t for k, v in value.items() if k not in _DESCRIPTIVE_KEYS for t in _secret_texts(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _secret_texts(v)]
    return [str(value)]
