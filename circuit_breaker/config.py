"""Settings: where NATS is, how to authenticate, where local data lives, and how streams are made.

Sources, highest first: arguments (CLI flags) > environment (``CB_*``; nested fields with ``__``, e.g.
``CB_STREAM__REPLICAS=3``) > a TOML file > defaults. The TOML file is ``circuit_breaker.toml`` in the current
directory (the project), or the path in ``CB_CONFIG``; its keys are the field names, nested ones as tables::

    nats_url = ["nats://n1:4222", "nats://n2:4222"]
    nats_creds = "/etc/cb/engine.creds"

    [stream]
    replicas = 3
    sync_always = true

``CB_NATS_URL`` takes a comma-separated list or a JSON list. No URL means the embedded server: a local
nats-server with its JetStream store in ``data_dir / "nats"``. The settings file and a relative ``data_dir``
are the project's (a command's ``--project``, by default the current directory); other relative paths (a
credentials file, TLS files) are relative to the current directory. Secrets are ``SecretStr`` (never in repr
or errors); credentials inside a URL are masked in repr.
"""

from __future__ import annotations

import json
import os
import ssl
import tomllib
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from .errors import ConfigError

__all__ = [
    "CONFIG_ENV",
    "CONFIG_FILE",
    "Settings",
    "StreamSettings",
    "WorkerSettings",
    "config_path",
    "connect_options",
    "load_settings",
    "redact_url",
]

CONFIG_FILE = "circuit_breaker.toml"
CONFIG_ENV = "CB_CONFIG"

# Set by load_settings(config_file=...) for the one construction it does; a context variable so concurrent
# loads in other tasks or threads do not see it.
_config_override: ContextVar[Path | None] = ContextVar("_config_override", default=None)
_base_dir: ContextVar[Path | None] = ContextVar("_base_dir", default=None)  # the project: see load_settings


class StreamSettings(BaseModel):
    """How the JetStream streams that hold events, inbox and tasks are created."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    replicas: int = Field(1, ge=1, le=5, description="Copies of each stream; 3 survives the loss of one server.")
    storage: Literal["file", "memory"] = "file"
    max_age: timedelta | None = Field(
        None, description="Drop messages older than this; None keeps them for ever (events are the state)."
    )
    sync_always: bool = Field(
        False, description="Embedded server fsyncs every write before acknowledging it (survives power loss)."
    )
    duplicate_window: timedelta = Field(
        timedelta(minutes=2), description="How long a Nats-Msg-Id is remembered for de-duplication."
    )

    @field_validator("max_age", "duplicate_window")
    @classmethod
    def _positive(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value <= timedelta(0):
            raise ValueError("must be a positive duration (leave max_age unset to keep messages for ever)")
        return value


class WorkerSettings(BaseModel):
    """How a worker (``circuit-breaker worker``) pulls and runs tasks; ``CB_WORKER__CONCURRENCY=8``, or a
    ``[worker]`` table in the TOML file. The consumer settings (ack_wait) are shared by every worker of a kind:
    a worker raises ack_wait to its own, never lowers it, and heartbeats for the shorter of the two."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    executors: list[str] | None = Field(None, description="Executor kinds to serve; None serves every registered one.")
    concurrency: int = Field(4, ge=1, le=10_000, description="Tasks run at once by one worker process.")
    ack_wait: float = Field(
        30.0, gt=0, description="Seconds without a heartbeat before a task is handed to another worker."
    )
    max_deliver: int = Field(5, ge=1, description="Deliveries of a task before it goes to the dead-letter queue.")
    backoff_initial: float = Field(1.0, ge=0, description="Delay before the first retry; doubles each time.")
    backoff_max: float = Field(60.0, ge=0, description="Longest delay between retries.")
    grace: float = Field(30.0, ge=0, description="On SIGTERM, seconds in-flight tasks get to finish.")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Serve /healthz, /readyz and /metrics on 127.0.0.1:port (0: any free port)."
    )
    metrics_host: str = Field("127.0.0.1", description="Address the health and metrics server listens on.")
    poll: float = Field(1.0, gt=0, description="Seconds one fetch waits for tasks (also how fast a stop is noticed).")


class Settings(BaseSettings):
    """Every setting, from arguments, ``CB_*`` environment variables, the TOML file and defaults."""

    model_config = SettingsConfigDict(
        env_prefix="CB_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        validate_default=True,
        hide_input_in_errors=True,  # a rejected value may be a password
    )

    nats_url: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="NATS servers; empty runs the embedded server."
    )
    nats_name: str = Field("circuit-breaker", description="Connection name shown in NATS monitoring.")
    nats_creds: Path | None = Field(None, description="A .creds file (JWT + nkey seed).")
    nats_nkey_seed: Path | None = Field(None, description="A file holding an nkey seed.")
    nats_user: str | None = None
    nats_password: SecretStr | None = None
    nats_token: SecretStr | None = None
    nats_tls_ca: Path | None = Field(None, description="CA bundle that signed the servers' certificates.")
    nats_tls_cert: Path | None = Field(None, description="Client certificate (PEM), for mutual TLS.")
    nats_tls_key: Path | None = Field(None, description="Client key (PEM); may be omitted if in the cert file.")
    data_dir: Path = Field(Path(".circuit_breaker"), description="Local state; embedded JetStream in data_dir/nats.")
    stream: StreamSettings = Field(default_factory=StreamSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    remote_executors: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Executor kinds whose actions a serving engine hands to workers (comma-separated).",
    )
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="A serving engine's /healthz, /readyz and /metrics port (0: any free one)."
    )
    metrics_host: str = Field("127.0.0.1", description="Address the engine's health and metrics server listens on.")
    keep_finished: int = Field(
        10_000,
        ge=0,
        description="Finished instances an engine keeps in memory; older ones are read back from the stream on demand.",
    )
    remember_finished: int = Field(
        100_000,
        ge=0,
        description="Finished instances out of memory whose workflow and status an engine remembers (for listings "
        "and metrics); past them, listing a workflow's finished instances replays its events.",
    )
    mark_every: float = Field(
        30.0,
        ge=0,
        description="Seconds between a serving engine's marks (where replay starts at the next open); 0: never.",
    )
    answer_unknown: bool = Field(
        True,
        description="serve: also answer injection requests for a workflow that no live engine runs "
        "('unknown_workflow', naming the ones that run); false: callers get 'no responders' for it instead.",
    )
    stop_grace: float = Field(
        10.0,
        ge=0,
        description="serve: on Ctrl-C or SIGTERM, seconds the running local actions get to finish (what they finish "
        "is stored; the rest run again when an engine loads their instances).",
    )
    gc_tuning: bool = Field(
        True,
        description="serve and worker: after start-up, freeze the heap and collect garbage less often (less CPU).",
    )
    connect_timeout: float = Field(2.0, gt=0, description="Seconds to wait for one connection attempt.")
    reconnect_time_wait: float = Field(2.0, ge=0, description="Seconds between reconnect attempts to one server.")
    max_reconnect_attempts: int = Field(-1, ge=-1, description="After a connection is lost; -1 retries for ever.")
    connect_attempts: int = Field(
        10, ge=1, description="Attempts, with exponential back-off, to reach NATS when starting up."
    )

    @field_validator("remote_executors", mode="before")
    @classmethod
    def _split_kinds(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("nats_url", mode="before")
    @classmethod
    def _split_urls(cls, value: Any) -> Any:
        """A comma-separated string or a JSON list (from env) or a list (TOML, arguments)."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except ValueError as err:
                    raise ValueError(f"is not a valid JSON list: {err}") from None
            else:
                value = text.split(",")
        if isinstance(value, (list, tuple)):
            return [u.strip() if isinstance(u, str) else u for u in value if not (isinstance(u, str) and not u.strip())]
        return value

    @field_validator("nats_url")
    @classmethod
    def _check_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if any(c.isspace() for c in url):
                raise ValueError(f"a server URL contains whitespace: {redact_url(url)!r}")
        return urls

    @model_validator(mode="after")
    def _consistent_auth(self) -> Settings:
        if self.nats_creds is not None and self.nats_nkey_seed is not None:
            raise ValueError("give nats_creds or nats_nkey_seed, not both (a .creds file holds its own seed)")
        if self.nats_token is not None and (self.nats_user is not None or self.nats_password is not None):
            raise ValueError("give nats_token or nats_user/nats_password, not both")
        if self.nats_password is not None and self.nats_user is None:
            raise ValueError("nats_password needs nats_user")
        if self.nats_tls_key is not None and self.nats_tls_cert is None:
            raise ValueError("nats_tls_key needs nats_tls_cert")
        return self

    @property
    def embedded(self) -> bool:
        """No NATS URL is configured: the embedded server runs."""
        return not self.nats_url

    @property
    def nats_data_dir(self) -> Path:
        """Where the embedded server keeps its JetStream store."""
        return self.data_dir / "nats"

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, ([redact_url(u) for u in value] if name == "nats_url" else value)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments > environment > TOML file > defaults (no .env file: the environment is explicit)."""
        path = config_path()
        if path is not None and _config_override.get() is None and os.environ.get(CONFIG_ENV):
            _require_file(path, f"{CONFIG_ENV}={path}")
        toml = TomlConfigSettingsSource(settings_cls, toml_file=path)
        return init_settings, env_settings, toml


def config_path() -> Path | None:
    """The TOML file: ``load_settings(config_file=...)``, else ``$CB_CONFIG``, else ``circuit_breaker.toml`` in
    the project (``load_settings(base_dir=...)``, by default the current directory)."""
    override = _config_override.get()
    if override is not None:
        return override
    named = os.environ.get(CONFIG_ENV)
    return Path(named) if named else (_base_dir.get() or Path.cwd()) / CONFIG_FILE


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    *,
    base_dir: str | os.PathLike[str] | None = None,
    **overrides: Any,
) -> Settings:
    """Settings from every source, with ``overrides`` (CLI flags) on top; errors become :class:`ConfigError`.

    ``config_file`` replaces the TOML file's usual location and must exist. Overrides that are None are
    dropped, so a flag the user did not give does not hide the environment or the file. ``base_dir`` is the
    project (a command's ``--project``): its ``circuit_breaker.toml`` is read, and a relative ``data_dir`` (the
    embedded server's JetStream store) lies within it, wherever the command runs.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    path = Path(config_file) if config_file is not None else None
    if path is not None:
        _require_file(path, f"config file {path}")
    base = Path(base_dir) if base_dir is not None else None
    token = _config_override.set(path)
    based = _base_dir.set(base)
    try:
        settings = Settings(**given)
        if base is not None and not settings.data_dir.is_absolute():
            settings = settings.model_copy(update={"data_dir": base / settings.data_dir})
        return settings
    except ValidationError as err:
        raise ConfigError(_describe(err), setting=_first_setting(err), source=str(config_path())) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{config_path()} is not valid TOML: {err}", source=str(config_path())) from None
    except SettingsError as err:  # a nested field's env value is not JSON; names the field, not the value
        raise ConfigError(f"cannot read settings: {err}") from None
    finally:
        _config_override.reset(token)
        _base_dir.reset(based)


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise ConfigError(f"{what} does not exist or is not a file", source=str(path))


def _describe(err: ValidationError) -> str:
    """One line per problem, naming the setting as it is spelled (``stream.replicas``), never the value given:
    the value may be a password."""
    problems = []
    for e in err.errors(include_input=False, include_url=False):
        message = e["msg"].removeprefix("Value error, ")
        problems.append(f"{'.'.join(str(p) for p in e['loc'])}: {message}" if e["loc"] else message)
    return "invalid settings: " + "; ".join(problems)


def _first_setting(err: ValidationError) -> str | None:
    errors = err.errors(include_input=False, include_url=False)
    return ".".join(str(p) for p in errors[0]["loc"]) if errors and errors[0]["loc"] else None


def redact_url(url: str) -> str:
    """The URL without a password or token in its user part: ``nats://user:***@host:4222``."""
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    user = "***" if parts.password is None else f"{parts.username}:***"
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc}"))


def connect_options(settings: Settings, servers: list[str] | None = None) -> dict[str, Any]:
    """Keyword arguments for ``nats.connect(**opts)`` (nats-py), from the settings.

    ``servers`` defaults to ``settings.nats_url`` (the embedded server's URL must be passed when there is
    none). The result holds plain secrets, as nats-py needs them: do not log it.
    """
    urls = list(settings.nats_url if servers is None else servers)
    if not urls:
        raise ConfigError("no NATS server URL: configure nats_url or start the embedded server", setting="nats_url")
    opts: dict[str, Any] = {
        "servers": urls,  # a list: nats-py takes a comma-joined string as one (broken) URL
        "name": settings.nats_name,
        "connect_timeout": settings.connect_timeout,
        "reconnect_time_wait": settings.reconnect_time_wait,
        "max_reconnect_attempts": settings.max_reconnect_attempts,
        "allow_reconnect": True,
    }
    if settings.nats_creds is not None:
        opts["user_credentials"] = str(settings.nats_creds)
    if settings.nats_nkey_seed is not None:
        opts["nkeys_seed"] = str(settings.nats_nkey_seed)
    if settings.nats_user is not None:
        opts["user"] = settings.nats_user
    if settings.nats_password is not None:
        opts["password"] = settings.nats_password.get_secret_value()
    if settings.nats_token is not None:
        opts["token"] = settings.nats_token.get_secret_value()
    context = tls_context(settings)
    if context is not None:
        opts["tls"] = context
    return opts


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """A client TLS context when a CA or a client certificate is configured (else nats-py's default for tls://)."""
    if settings.nats_tls_ca is None and settings.nats_tls_cert is None:
        return None
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(settings.nats_tls_ca) if settings.nats_tls_ca else None
        )
        if settings.nats_tls_cert is not None:
            key = str(settings.nats_tls_key) if settings.nats_tls_key is not None else None
            context.load_cert_chain(str(settings.nats_tls_cert), keyfile=key)
    except (OSError, ssl.SSLError) as err:
        files = ", ".join(
            str(p) for p in (settings.nats_tls_ca, settings.nats_tls_cert, settings.nats_tls_key) if p is not None
        )
        raise ConfigError(f"cannot load the NATS TLS files ({files}): {err}", setting="nats_tls") from None
    return context
