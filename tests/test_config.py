"""Settings: sources and their precedence, URL lists, secrets kept out of repr and errors, nats.connect options."""

from __future__ import annotations

import os
import ssl
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from circuit_breaker.config import Settings, StreamSettings, config_path, connect_options, load_settings, redact_url
from circuit_breaker.errors import ConfigError

TLS = Path(__file__).parent / "nats" / "fixtures" / "tls"


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No CB_* variable of the caller's shell, and a project dir of our own (where circuit_breaker.toml is looked for)."""
    for name in list(os.environ):
        if name.startswith("CB_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    s = load_settings()
    assert s.nats_url == [] and s.embedded
    assert s.data_dir == Path(".circuit_breaker") and s.nats_data_dir == Path(".circuit_breaker/nats")
    assert s.stream == StreamSettings()
    assert s.stream.replicas == 1 and s.stream.storage == "file" and s.stream.sync_always is False
    assert s.stream.max_age is None  # kept for ever unless asked: tokens must never expire silently
    assert s.stream.duplicate_window == timedelta(minutes=2)
    assert s.max_reconnect_attempts == -1
    assert s.nats_password is None and s.nats_token is None and s.nats_creds is None


def test_precedence_arguments_over_env_over_toml_over_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_toml(
        tmp_path / "circuit_breaker.toml",
        """
        nats_url = ["nats://from-toml:4222"]
        nats_name = "toml-name"
        data_dir = "toml-data"

        [stream]
        replicas = 3
        storage = "memory"
        max_age = "P7D"
        """,
    )
    s = load_settings()
    assert s.nats_url == ["nats://from-toml:4222"] and s.nats_name == "toml-name"
    assert s.stream.replicas == 3 and s.stream.storage == "memory" and s.stream.max_age == timedelta(days=7)

    monkeypatch.setenv("CB_NATS_URL", "nats://from-env:4222")
    monkeypatch.setenv("CB_DATA_DIR", "env-data")
    monkeypatch.setenv("CB_STREAM__REPLICAS", "5")
    s = load_settings()
    assert s.nats_url == ["nats://from-env:4222"] and s.data_dir == Path("env-data")
    assert s.nats_name == "toml-name"  # not in the environment: the file still counts
    assert s.stream.replicas == 5 and s.stream.storage == "memory"  # nested values merge across sources

    s = load_settings(data_dir=Path("flag-data"), stream={"sync_always": True}, nats_name=None)
    assert s.data_dir == Path("flag-data")
    assert s.nats_name == "toml-name"  # a flag left at None does not hide the sources below it
    assert s.stream == StreamSettings(replicas=5, storage="memory", max_age=timedelta(days=7), sync_always=True)


def test_a_projects_settings_file_and_data_dir_are_its_own_wherever_the_command_runs(tmp_path: Path) -> None:
    """Found in a walk-through: `serve --project DIR` kept its JetStream store in the current directory, so
    the project's instances were neither resumed nor listed (`--project` is the project root)."""
    project = tmp_path / "shop"
    project.mkdir()
    write_toml(project / "circuit_breaker.toml", 'nats_name = "shop-engine"\n')
    s = load_settings(base_dir=project)
    assert s.nats_name == "shop-engine" and s.nats_data_dir == project / ".circuit_breaker" / "nats"
    assert load_settings(base_dir=project, data_dir=Path("/srv/cb")).data_dir == Path("/srv/cb")  # absolute: as is
    assert load_settings().nats_name == "circuit-breaker" and load_settings().data_dir == Path(".circuit_breaker")  # cwd


def test_cb_config_names_another_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_toml(tmp_path / "circuit_breaker.toml", 'nats_name = "project"\n')
    other = write_toml(tmp_path / "elsewhere.toml", 'nats_name = "elsewhere"\n')
    monkeypatch.setenv("CB_CONFIG", str(other))
    assert config_path() == other
    assert load_settings().nats_name == "elsewhere"
    assert Settings().nats_name == "elsewhere"
    assert load_settings(config_file=tmp_path / "circuit_breaker.toml").nats_name == "project"

    monkeypatch.setenv("CB_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="missing.toml does not exist"):
        load_settings()
    with pytest.raises(ConfigError, match="nope.toml does not exist"):
        load_settings(config_file=tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("nats://a:4222", ["nats://a:4222"]),
        ("nats://a:4222, nats://b:4222 ,nats://c:4222", ["nats://a:4222", "nats://b:4222", "nats://c:4222"]),
        ('["nats://a:4222", "tls://b:4443"]', ["nats://a:4222", "tls://b:4443"]),
        ("", []),
        (" , ", []),
    ],
)
def test_nats_url_from_env_as_comma_list_or_json(
    raw: str, expected: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CB_NATS_URL", raw)
    assert load_settings().nats_url == expected


def test_nats_url_as_a_toml_string_or_argument_string(tmp_path: Path) -> None:
    write_toml(tmp_path / "circuit_breaker.toml", 'nats_url = "nats://a:1,nats://b:2"\n')
    assert load_settings().nats_url == ["nats://a:1", "nats://b:2"]
    assert load_settings(nats_url="nats://c:3").nats_url == ["nats://c:3"]


def test_bad_values_name_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CB_NATS_URL", '["nats://a:1", ')
    with pytest.raises(ConfigError, match="nats_url: .*JSON list"):
        load_settings()
    monkeypatch.delenv("CB_NATS_URL")

    monkeypatch.setenv("CB_STREAM__REPLICAS", "0")
    with pytest.raises(ConfigError, match=r"stream\.replicas: Input should be greater than or equal to 1") as caught:
        load_settings()
    assert caught.value.setting == "stream.replicas"
    monkeypatch.delenv("CB_STREAM__REPLICAS")

    with pytest.raises(ConfigError, match="stream.max_age: must be a positive duration"):
        load_settings(stream={"max_age": "-PT1S"})
    with pytest.raises(ConfigError, match="no_such_setting"):
        load_settings(no_such_setting=1)

    write_toml(tmp_path / "circuit_breaker.toml", "nats_url = [\n")
    with pytest.raises(ConfigError, match="circuit_breaker.toml is not valid TOML"):
        load_settings()


def test_inconsistent_auth_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nats_token or nats_user/nats_password, not both"):
        load_settings(nats_token="t", nats_user="u")
    with pytest.raises(ConfigError, match="nats_password needs nats_user"):
        load_settings(nats_password="p")
    with pytest.raises(ConfigError, match="nats_creds or nats_nkey_seed, not both"):
        load_settings(nats_creds=tmp_path / "a.creds", nats_nkey_seed=tmp_path / "a.nk")
    with pytest.raises(ConfigError, match="nats_tls_key needs nats_tls_cert"):
        load_settings(nats_tls_key=tmp_path / "k.pem")


def test_secrets_stay_out_of_repr_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CB_NATS_PASSWORD", "hunter2-password")
    monkeypatch.setenv("CB_NATS_URL", "nats://svc:url-secret@n1:4222,nats://n2:4222")
    s = load_settings(nats_user="svc")
    shown = repr(s) + str(s)
    assert "hunter2-password" not in shown and "url-secret" not in shown
    assert "nats://svc:***@n1:4222" in shown and "nats://n2:4222" in shown
    assert s.nats_password is not None and s.nats_password.get_secret_value() == "hunter2-password"

    # A rejected setting's error never quotes the values given, which may be secrets.
    with pytest.raises(ConfigError) as caught:
        load_settings(nats_user="svc", stream={"replicas": "hunter2-password"})
    assert "hunter2-password" not in str(caught.value)
    with pytest.raises(ValidationError) as direct:  # Settings() itself raises pydantic's error
        Settings(nats_user="svc", connect_timeout="hunter2-password")  # type: ignore[arg-type]
    assert "hunter2-password" not in str(direct.value)


def test_redact_url() -> None:
    assert redact_url("nats://u:p@h:4222") == "nats://u:***@h:4222"
    assert redact_url("nats://token@h:4222") == "nats://***@h:4222"
    assert redact_url("nats://h:4222") == "nats://h:4222"
    assert redact_url("tls://u:p@[::1]:4443") == "tls://u:***@[::1]:4443"


def test_connect_options_for_nats_py(tmp_path: Path) -> None:
    s = load_settings(
        nats_url="nats://a:4222,nats://b:4222",
        nats_user="svc",
        nats_password="pw",
        connect_timeout=1.5,
        max_reconnect_attempts=7,
        nats_name="engine-1",
    )
    opts = connect_options(s)
    assert opts == {
        "servers": ["nats://a:4222", "nats://b:4222"],
        "name": "engine-1",
        "connect_timeout": 1.5,
        "reconnect_time_wait": 2.0,
        "max_reconnect_attempts": 7,
        "allow_reconnect": True,
        "user": "svc",
        "password": "pw",
    }
    assert connect_options(s, ["nats://embedded:1"])["servers"] == ["nats://embedded:1"]

    creds, seed = tmp_path / "svc.creds", tmp_path / "svc.nk"
    assert connect_options(load_settings(nats_url="nats://a:1", nats_creds=creds))["user_credentials"] == str(creds)
    assert connect_options(load_settings(nats_url="nats://a:1", nats_nkey_seed=seed))["nkeys_seed"] == str(seed)
    assert connect_options(load_settings(nats_url="nats://a:1", nats_token="tok"))["token"] == "tok"

    with pytest.raises(ConfigError, match="no NATS server URL"):
        connect_options(load_settings())


def test_connect_options_build_a_tls_context_from_the_files() -> None:
    s = load_settings(
        nats_url="tls://a:4443",
        nats_tls_ca=TLS / "ca.pem",
        nats_tls_cert=TLS / "client-cert.pem",
        nats_tls_key=TLS / "client-key.pem",
    )
    context = connect_options(s)["tls"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert any("circuit_breaker test CA" in str(ca.get("subject")) for ca in context.get_ca_certs())

    assert "tls" not in connect_options(load_settings(nats_url="tls://a:4443"))  # nats-py's default context then
    with pytest.raises(ConfigError, match="cannot load the NATS TLS files"):
        connect_options(load_settings(nats_url="tls://a:1", nats_tls_ca=TLS / "missing.pem"))
