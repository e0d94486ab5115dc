"""Executors by name: registering, looking up, describing, rebuilding from specs, and discovering them among
the built-ins, installed packages (entry points) and a project's ``executors/`` folder.

Entry points are real: a throwaway distribution (a module and its ``*.dist-info`` with an
``entry_points.txt``) is copied to a temporary directory put on ``sys.path``, where ``importlib.metadata``
finds it as it finds an installed one.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from circuit_breaker.errors import ExecutorConfigError, UnknownExecutorError
from circuit_breaker.executors import ENTRY_POINT_GROUP, Executor, ExecutorRegistry, default_registry, param
from circuit_breaker.executors._registry import BUILTINS

FIXTURES = Path(__file__).parent / "fixtures"
PROJECT = FIXTURES / "project"
PLUGIN = FIXTURES / "plugin"
PLUGIN_MODULE = "cb_fixture_plugin"
BUILTIN_NAMES = [
    "agent",
    "assistant",
    "docker",
    "file",
    "http",
    "inject",
    "nats",
    "python",
    "serverless",
    "set",
    "shell",
    "step",
    "wait",
]


class Echo(Executor):
    """Echoes its text."""

    name = "echo"
    text: str = param(required=True, description="What to say")

    async def execute_internal(self) -> dict[str, Any]:
        return {"said": self.text}


class OtherEcho(Executor):
    name = "echo"

    async def execute_internal(self) -> dict[str, Any]:
        return {}


class Sequence(Executor):
    """Runs executors one after the other (a parameter holding executors)."""

    name = "sequence"
    steps: list[Executor] = param(required=True)

    async def execute_internal(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for step in self.steps:
            out.update(await step.execute())
        return out


# -- registering and looking up ------------------------------------------------------------------------------------
def test_register_get_names_and_contains() -> None:
    registry = ExecutorRegistry()

    assert registry.register(Echo) is Echo
    assert registry.get("echo") is Echo
    assert registry.names() == ["echo"]
    assert "echo" in registry and "nope" not in registry
    assert list(registry) == [Echo]
    assert registry.origin("echo") == "code"


def test_register_works_as_a_class_decorator_and_under_another_name() -> None:
    registry = ExecutorRegistry()

    @registry.register
    class Shout(Executor):
        name = "shout"

        async def execute_internal(self) -> dict[str, Any]:
            return {}

    registry.register(Echo, name="say")

    assert registry.names() == ["say", "shout"]
    assert registry.get("shout") is Shout
    assert registry.get("say") is Echo


def test_registering_the_same_class_twice_is_harmless() -> None:
    registry = ExecutorRegistry()
    registry.register(Echo)
    registry.register(Echo)

    assert registry.names() == ["echo"]


def test_a_name_clash_is_refused_naming_the_class_that_holds_the_name() -> None:
    registry = ExecutorRegistry()
    registry.register(Echo, origin="project file a.py")

    with pytest.raises(ExecutorConfigError) as info:
        registry.register(OtherEcho)

    assert "'echo'" in str(info.value)
    assert f"{Echo.__module__}:Echo" in str(info.value)
    assert "a.py" in str(info.value)
    assert registry.get("echo") is Echo


def test_registering_over_a_builtin_name_is_refused() -> None:
    # The built-in is registered lazily (not imported yet); a project class named "shell" must not
    # silently take its place.
    class MyShell(Executor):
        name = "shell"

        async def execute_internal(self) -> dict[str, Any]:
            return {}

    registry = default_registry()

    with pytest.raises(ExecutorConfigError, match="'shell'"):
        registry.register(MyShell)
    assert registry.origin("shell") == "builtin"


def test_only_executor_classes_can_be_registered() -> None:
    registry = ExecutorRegistry()

    with pytest.raises(ExecutorConfigError, match="not an Executor subclass"):
        registry.register(dict)  # type: ignore[arg-type]
    with pytest.raises(ExecutorConfigError):
        registry.register(Echo(text="an instance"))  # type: ignore[arg-type]


def test_an_unknown_name_is_an_error_listing_the_registered_ones() -> None:
    registry = ExecutorRegistry()
    registry.register(Echo)
    registry.register(Sequence)

    with pytest.raises(UnknownExecutorError) as info:
        registry.get("ehco")

    assert isinstance(info.value, ExecutorConfigError)
    assert info.value.executor == "ehco"
    assert "unknown executor 'ehco'" in str(info.value)
    assert "echo, sequence" in str(info.value)


def test_create_builds_and_validates_an_executor_by_name() -> None:
    registry = ExecutorRegistry()
    registry.register(Echo)

    assert registry.create("echo", text="hi").run() == {"said": "hi"}
    with pytest.raises(ExecutorConfigError, match="'text'"):
        registry.create("echo")


def test_describe_lists_every_executor_with_its_parameters_and_origin() -> None:
    registry = ExecutorRegistry()
    registry.register(Echo, origin="tests")

    (described,) = registry.describe()

    assert described["name"] == "echo"
    assert described["description"] == "Echoes its text."
    assert described["origin"] == "tests"
    assert described["params"] == [
        {
            "name": "text",
            "type": "str",
            "required": True,
            "default": None,
            "description": "What to say",
            "secret": False,
        }
    ]


# -- specs ---------------------------------------------------------------------------------------------------------
def test_from_spec_rebuilds_nested_executors() -> None:
    registry = ExecutorRegistry()
    registry.register(Echo)
    registry.register(Sequence)
    original = Sequence(steps=[Echo(text="a"), Echo(text="{{ b }}")])

    spec = json.loads(json.dumps(original.spec()))
    rebuilt = registry.from_spec(spec)

    assert spec == {
        "executor": "sequence",
        "params": {
            "steps": [
                {"executor": "echo", "params": {"text": "a"}},
                {"executor": "echo", "params": {"text": "{{ b }}"}},
            ]
        },
    }
    assert isinstance(rebuilt, Sequence)
    assert [type(s) for s in rebuilt.steps] == [Echo, Echo]
    assert rebuilt.spec() == original.spec()


def test_from_spec_needs_an_executor_name_and_a_known_one() -> None:
    registry = ExecutorRegistry()

    with pytest.raises(ExecutorConfigError, match="'executor'"):
        registry.from_spec({"params": {}})
    with pytest.raises(UnknownExecutorError):
        registry.from_spec({"executor": "echo", "params": {}})


def test_from_spec_validates_parameters() -> None:
    registry = ExecutorRegistry()
    registry.register(Echo)

    with pytest.raises(ExecutorConfigError, match="unknown parameter 'txt'"):
        registry.from_spec({"executor": "echo", "params": {"txt": "hi"}})


# -- built-ins: listed without importing them --------------------------------------------------------------------
def test_builtins_are_listed_by_name() -> None:
    assert sorted(BUILTINS) == BUILTIN_NAMES
    registry = default_registry()
    assert set(BUILTIN_NAMES) <= set(registry.names())
    assert all(name in registry and registry.origin(name) == "builtin" for name in BUILTIN_NAMES)


LISTING = """
import json, sys
from circuit_breaker.executors import default_registry
registry = default_registry()
print(json.dumps({
    "names": registry.names(),
    "shell_in": "shell" in registry,
    "http_in": "http" in registry,
    "imported": sorted(m for m in sys.modules if m.startswith("circuit_breaker.executors.") or m == "httpx"),
}))
"""


def test_listing_builtins_imports_none_of_them() -> None:
    # In a fresh process: other tests of this session may have imported the built-ins already.
    proc = subprocess.run([sys.executable, "-c", LISTING], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)

    assert set(BUILTIN_NAMES) <= set(seen["names"])
    assert seen["shell_in"] and seen["http_in"]
    builtin_modules = {target.partition(":")[0] for target in BUILTINS.values()}
    assert not builtin_modules & set(seen["imported"]), seen["imported"]
    assert "httpx" not in seen["imported"]


def test_a_lazy_registration_is_imported_on_first_use() -> None:
    registry = ExecutorRegistry()
    registry.register_lazy("ghost", "no_such_module_for_cb_tests:Ghost")
    registry.register_lazy("not_an_executor", "json:dumps")

    assert "ghost" in registry and registry.names() == ["ghost", "not_an_executor"]
    with pytest.raises(ExecutorConfigError) as info:
        registry.get("ghost")
    assert "no_such_module_for_cb_tests:Ghost" in str(info.value)
    with pytest.raises(ExecutorConfigError, match="not an Executor subclass"):
        registry.get("not_an_executor")


def test_a_lazy_registration_resolves_to_its_class() -> None:
    registry = ExecutorRegistry()
    registry.register_lazy("echo", f"{__name__}:Echo", origin="tests")

    assert registry.get("echo") is Echo
    assert registry.origin("echo") == "tests"
    assert registry.create("echo", text="x").run() == {"said": "x"}


# -- a project's executors/ folder ---------------------------------------------------------------------------------
def test_discover_folder_registers_the_executors_each_file_defines() -> None:
    registry = ExecutorRegistry()

    found = registry.discover_folder(PROJECT / "executors")

    assert sorted(found) == ["fixture_count", "fixture_greeting", "fixture_shout"]
    # Classes a file merely imports (Executor itself) are not registered; _helpers.py is not imported at all.
    assert registry.names() == ["fixture_count", "fixture_greeting", "fixture_shout"]
    assert registry.origin("fixture_greeting") == str(PROJECT / "executors" / "greeting.py")
    assert registry.create("fixture_greeting", who="Ada").run() == {"greeting": "Hello, Ada!"}
    assert registry.create("fixture_count", n=3, order="down").run() == {"numbers": [3, 2, 1]}
    with pytest.raises(ExecutorConfigError, match="'n'"):
        registry.create("fixture_count", n=0)


def test_discovering_a_folder_twice_finds_the_same_classes() -> None:
    registry = ExecutorRegistry()
    registry.discover_folder(PROJECT / "executors")
    first = registry.get("fixture_greeting")

    registry.discover_folder(PROJECT / "executors")
    other = ExecutorRegistry()
    other.discover_folder(PROJECT / "executors")

    assert registry.get("fixture_greeting") is first
    assert other.get("fixture_greeting") is first


def test_a_missing_folder_has_no_executors(tmp_path: Path) -> None:
    registry = ExecutorRegistry()

    assert registry.discover_folder(tmp_path / "executors") == []
    assert registry.names() == []


def test_a_broken_executor_file_is_an_error_naming_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "executors"
    folder.mkdir()
    (folder / "broken.py").write_text("import no_such_module_for_cb_tests\n")

    with pytest.raises(ExecutorConfigError) as info:
        ExecutorRegistry().discover_folder(folder)

    assert "broken.py" in str(info.value)
    assert "no_such_module_for_cb_tests" in str(info.value)


def test_two_project_files_defining_the_same_name_clash(tmp_path: Path) -> None:
    folder = tmp_path / "executors"
    folder.mkdir()
    body = (
        "from circuit_breaker.executors import Executor\n"
        "class {cls}(Executor):\n"
        "    name = 'dup'\n"
        "    async def execute_internal(self):\n"
        "        return {{}}\n"
    )
    (folder / "a.py").write_text(body.format(cls="First"))
    (folder / "b.py").write_text(body.format(cls="Second"))

    with pytest.raises(ExecutorConfigError, match="'dup' is taken"):
        ExecutorRegistry().discover_folder(folder)


def test_default_registry_adds_the_projects_executors_to_the_builtins() -> None:
    registry = default_registry(PROJECT)

    assert {"fixture_greeting", "fixture_count", "shell", "http"} <= set(registry.names())
    assert registry.origin("fixture_count").endswith("counting.py")
    assert "fixture_greeting" not in default_registry()


# -- installed packages: the entry-point group ---------------------------------------------------------------------
def _install_plugin(site: Path, *, extra_entries: dict[str, str] | None = None) -> Path:
    """Copy the fixture distribution to ``site`` (to put on sys.path); ``extra_entries`` adds a second
    distribution declaring more entry points."""
    shutil.copytree(PLUGIN, site, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    if extra_entries:
        dist = site / "cb_fixture_extra-0.1.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: cb-fixture-extra\nVersion: 0.1\n")
        lines = [f"[{ENTRY_POINT_GROUP}]", *(f"{k} = {v}" for k, v in extra_entries.items())]
        (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return site


@pytest.fixture(autouse=True)
def _forget_plugin_module() -> Iterator[None]:
    # The plugin module is imported from a temporary directory; the next test must import it afresh.
    yield
    sys.modules.pop(PLUGIN_MODULE, None)


@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    site = _install_plugin(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    return site


def test_entry_points_are_discovered_and_imported_only_when_used(plugin_site: Path) -> None:
    registry = ExecutorRegistry()

    found = registry.discover_entry_points()

    assert "fixture_plugin_echo" in found
    assert "fixture_plugin_echo" in registry
    assert registry.origin("fixture_plugin_echo") == f"entry point {PLUGIN_MODULE}:EchoExecutor"
    assert PLUGIN_MODULE not in sys.modules
    cls = registry.get("fixture_plugin_echo")
    assert PLUGIN_MODULE in sys.modules
    assert cls.__name__ == "EchoExecutor"
    assert registry.create("fixture_plugin_echo", message="hi", repeat=2).run() == {"echo": ["hi", "hi"]}


def test_default_registry_includes_entry_points(plugin_site: Path) -> None:
    registry = default_registry(PROJECT)

    assert {"fixture_plugin_echo", "fixture_greeting", "shell"} <= set(registry.names())
    spec = registry.create("fixture_plugin_echo", message="{{ text }}").spec()
    rebuilt = default_registry().from_spec(spec).render({"text": "from a spec"})
    assert rebuilt.run() == {"echo": ["from a spec"]}


def test_an_entry_point_cannot_silently_replace_a_builtin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    site = _install_plugin(tmp_path / "site", extra_entries={"shell": f"{PLUGIN_MODULE}:EchoExecutor"})
    monkeypatch.syspath_prepend(str(site))
    registry = ExecutorRegistry()
    for name, target in BUILTINS.items():
        registry.register_lazy(name, target)

    refused = False
    with caplog.at_level(logging.WARNING):
        try:
            registry.discover_entry_points()
        except ExecutorConfigError:  # refusing the clash outright is fine too
            refused = True

    assert registry.origin("shell") == "builtin"
    assert refused or any("shell" in r.getMessage() and PLUGIN_MODULE in r.getMessage() for r in caplog.records)


def test_register_lazy_refuses_a_taken_name_but_not_the_same_target() -> None:
    registry = ExecutorRegistry()
    registry.register_lazy("echo", f"{__name__}:Echo", origin="tests")
    registry.register_lazy("echo", f"{__name__}:Echo", origin="tests")  # the same thing again: harmless

    with pytest.raises(ExecutorConfigError, match="'echo'"):
        registry.register_lazy("echo", f"{__name__}:OtherEcho", origin="elsewhere")
    assert registry.get("echo") is Echo


def test_a_broken_entry_point_fails_only_when_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = _install_plugin(tmp_path / "site", extra_entries={"fixture_broken": "no_such_module_for_cb_tests:X"})
    monkeypatch.syspath_prepend(str(site))
    registry = default_registry()

    assert "fixture_broken" in registry
    assert registry.create("fixture_plugin_echo", message="ok").run() == {"echo": ["ok"]}
    with pytest.raises(ExecutorConfigError, match="no_such_module_for_cb_tests"):
        registry.get("fixture_broken")
