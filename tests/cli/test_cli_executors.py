"""``circuit-breaker executors``, run as users run it: the installed console script in a subprocess.

The project is ``tests/executors/fixtures/project`` (an ``executors/`` folder with two files); installed
packages are simulated with a throwaway distribution (module + ``*.dist-info/entry_points.txt``) on
``PYTHONPATH``, where ``importlib.metadata`` finds it as it finds an installed one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ._support import Result, run_cli

EXECUTOR_FIXTURES = Path(__file__).parent.parent / "executors" / "fixtures"
PROJECT = EXECUTOR_FIXTURES / "project"
PLUGIN = EXECUTOR_FIXTURES / "plugin"
BUILTIN_NAMES = [
    "agent",
    "assistant",
    "docker",
    "file",
    "http",
    "inject",
    "python",
    "serverless",
    "set",
    "shell",
    "step",
    "wait",
]
PROJECT_NAMES = ["fixture_count", "fixture_greeting", "fixture_shout"]


def cli(*args: str, cwd: Path = PROJECT, pythonpath: Path | None = None) -> Result:
    return run_cli(*args, cwd=cwd, columns=250, pythonpath=pythonpath)


def _site(root: Path, extra_entries: dict[str, str] | None = None, modules: dict[str, str] | None = None) -> Path:
    """A directory holding the fixture distribution, plus one declaring ``extra_entries`` (with ``modules``)."""
    site = root / "site"
    shutil.copytree(PLUGIN, site, ignore=shutil.ignore_patterns("__pycache__"))
    if extra_entries:
        dist = site / "cb_fixture_extra-0.1.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: cb-fixture-extra\nVersion: 0.1\n")
        lines = ["[circuit_breaker.executors]", *(f"{k} = {v}" for k, v in extra_entries.items())]
        (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for name, source in (modules or {}).items():
        (site / f"{name}.py").write_text(source)
    return site


@pytest.fixture(scope="module")
def listing() -> Result:
    """``circuit-breaker executors --json`` run in the fixture project (shared: it is only read)."""
    return cli("executors", "--json")


# -- JSON ------------------------------------------------------------------------------------------------------
def test_json_lists_builtins_and_the_projects_executors_with_their_parameters(listing: Result) -> None:
    res = listing

    assert res.code == 0, res.err
    assert res.err == ""
    entries = res.json()
    assert isinstance(entries, list)
    names = [e["name"] for e in entries]
    assert names == sorted(names)
    assert set(BUILTIN_NAMES + PROJECT_NAMES) <= set(names)
    greeting = res.by_name()["fixture_greeting"]
    assert greeting["origin"] == str(PROJECT.resolve() / "executors" / "greeting.py")
    assert greeting["class"].endswith(":GreetingExecutor")
    assert greeting["description"] == "Greets someone by name."
    assert greeting["error"] is None
    assert greeting["params"] == [
        {
            "name": "who",
            "type": "str",
            "required": True,
            "default": None,
            "description": "Who to greet",
            "secret": False,
        },
        {
            "name": "punctuation",
            "type": "str",
            "required": False,
            "default": "!",
            "description": "What ends the greeting",
            "secret": False,
        },
        {
            "name": "api_key",
            "type": "str",
            "required": False,
            "default": "***",
            "description": "Key of the greeting service",
            "secret": True,
        },
    ]
    count = {p["name"]: p for p in res.by_name()["fixture_count"]["params"]}
    assert count["n"]["type"] == "int" and count["n"]["required"] is True
    assert count["order"]["type"] == "Literal['up', 'down']" and count["order"]["default"] == "up"
    assert "fixture-secret-default" not in res.out


def test_every_builtin_loads_and_describes_its_parameters(listing: Result) -> None:
    res = listing

    assert res.code == 0, res.err
    entries = res.by_name()
    for name in BUILTIN_NAMES:
        entry = entries[name]
        assert entry["origin"] == "builtin"
        assert entry["error"] is None, f"{name}: {entry['error']}"
        assert entry["class"].startswith("circuit_breaker.executors.")
        assert entry["description"], name
        for p in entry["params"]:
            assert set(p) == {"name", "type", "required", "default", "description", "secret"}


def test_parameter_types_are_listed_readably(listing: Result) -> None:
    # People read these: no validator reprs with memory addresses, no module paths.
    for entry in listing.json():
        for p in entry["params"]:
            assert "0x" not in p["type"] and "circuit_breaker." not in p["type"], (
                f"{entry['name']}.{p['name']}: {p['type']}"
            )


def test_the_default_project_is_the_current_directory(tmp_path: Path) -> None:
    bare = cli("executors", "--json", cwd=tmp_path)  # no executors/ folder here: built-ins only
    (tmp_path / "executors").mkdir()
    shutil.copy(PROJECT / "executors" / "counting.py", tmp_path / "executors" / "tally.py")
    here = cli("executors", "--json", cwd=tmp_path)

    assert bare.code == 0, bare.err
    assert set(BUILTIN_NAMES) <= set(bare.by_name())
    assert not set(PROJECT_NAMES) & set(bare.by_name())
    assert here.code == 0, here.err
    assert here.by_name()["fixture_count"]["origin"] == str(tmp_path.resolve() / "executors" / "tally.py")


def test_project_option_points_at_another_directory(tmp_path: Path) -> None:
    res = cli("executors", "--json", "--project", str(PROJECT), cwd=tmp_path)

    assert res.code == 0, res.err
    assert set(PROJECT_NAMES) <= set(res.by_name())


def test_a_project_that_is_not_a_directory_is_a_usage_error(tmp_path: Path) -> None:
    res = cli("executors", "--project", str(tmp_path / "nowhere"))

    assert res.code == 2
    assert "nowhere" in res.error_line() and "not a directory" in res.error_line()


def test_a_project_executor_file_that_cannot_be_imported_exits_5_naming_it(tmp_path: Path) -> None:
    (tmp_path / "executors").mkdir()
    (tmp_path / "executors" / "broken.py").write_text("import no_such_module_for_cb_tests\n")

    res = cli("executors", "--json", cwd=tmp_path)

    assert res.code == 5
    line = res.error_line()
    assert "broken.py" in line and "no_such_module_for_cb_tests" in line
    assert res.json()["error"]["code"] == "load"  # (no listing on stdout: only the error, for a script)


HELLO_EXECUTOR = """
from typing import Any

from circuit_breaker.executors import Executor
from lib import GREETING


class HelloExecutor(Executor):
    \"\"\"Says the greeting of the project.\"\"\"

    async def execute_internal(self) -> dict[str, Any]:
        return {"greeting": GREETING}
"""


def test_a_project_executor_can_import_the_projects_own_modules(tmp_path: Path) -> None:
    # Executors are "discovered like workflows" (design §2), and a workflow file may import from the project
    # root (``from rules.shared import ...``) when the command runs there; an executor file must be able to too.
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "__init__.py").write_text('GREETING = "hello"\n')
    (tmp_path / "executors").mkdir()
    (tmp_path / "executors" / "hello.py").write_text(HELLO_EXECUTOR)

    here = cli("executors", "--json", cwd=tmp_path)
    elsewhere = cli("executors", "--json", "--project", str(tmp_path), cwd=PROJECT)

    assert here.code == 0, here.err
    assert here.by_name()["hello"]["description"] == "Says the greeting of the project."
    assert elsewhere.code == 0, elsewhere.err
    assert "hello" in elsewhere.by_name()


# -- installed packages ----------------------------------------------------------------------------------------
def test_executors_of_installed_packages_are_listed(tmp_path: Path) -> None:
    res = cli("executors", "--json", pythonpath=_site(tmp_path))

    assert res.code == 0, res.err
    echo = res.by_name()["fixture_plugin_echo"]
    assert echo["origin"] == "entry point cb_fixture_plugin:EchoExecutor"
    assert echo["error"] is None
    assert [(p["name"], p["type"], p["required"], p["default"]) for p in echo["params"]] == [
        ("message", "str", True, None),
        ("repeat", "int", False, 1),
    ]


def test_an_executor_that_cannot_be_loaded_is_listed_with_the_reason(tmp_path: Path) -> None:
    site = _site(
        tmp_path,
        extra_entries={"fixture_missing": "no_such_module_for_cb_tests:X", "fixture_raising": "cb_fixture_raising:X"},
        modules={"cb_fixture_raising": "raise RuntimeError('half-written module')\n"},
    )

    as_json = cli("executors", "--json", pythonpath=site)
    table = cli("executors", pythonpath=site)

    assert as_json.code == 0, as_json.err
    entries = as_json.by_name()
    assert "no_such_module_for_cb_tests" in entries["fixture_missing"]["error"]
    assert entries["fixture_missing"]["params"] == []
    assert "RuntimeError: half-written module" in entries["fixture_raising"]["error"]
    assert entries["fixture_plugin_echo"]["error"] is None  # the others are still listed in full
    assert set(BUILTIN_NAMES + PROJECT_NAMES) <= set(entries)
    assert table.code == 0, table.err
    assert "Traceback" not in table.out + table.err
    assert "cannot be loaded" in table.out and "half-written module" in table.out
    assert "2 cannot be loaded" in table.out


def test_a_package_claiming_a_builtin_name_does_not_replace_it(tmp_path: Path) -> None:
    site = _site(tmp_path, extra_entries={"shell": "cb_fixture_plugin:EchoExecutor"})

    res = cli("executors", "--json", pythonpath=site)

    assert res.code == 0, res.err
    shell = res.by_name()["shell"]
    assert shell["origin"] == "builtin"
    assert shell["class"] == "circuit_breaker.executors.shell:ShellExecutor"
    assert "shell" in res.err and "cb_fixture_plugin:EchoExecutor" in res.err  # the user is told why


# -- the table -------------------------------------------------------------------------------------------------
def test_the_table_shows_each_executor_with_its_parameters() -> None:
    res = cli("executors")

    assert res.code == 0, res.err
    assert res.err == ""
    out = res.out
    for name in BUILTIN_NAMES + PROJECT_NAMES:
        assert f" {name} " in out, name
    for column in ("executor", "origin", "parameter", "type", "required", "default", "description"):
        assert column in out.splitlines()[2]
    rows = [line for line in out.splitlines() if "│" in line]
    who = next(r for r in rows if " who " in r)
    assert [c.strip() for c in who.split("│")[3:8]] == ["who", "str", "yes", "", "Who to greet"]
    punctuation = next(r for r in rows if " punctuation " in r)
    assert [c.strip() for c in punctuation.split("│")[3:8]] == [
        "punctuation",
        "str",
        "no",
        '"!"',
        "What ends the greeting",
    ]
    assert "executors/greeting.py" in out
    assert "Literal['up', 'down']" in out  # brackets are shown, not taken for markup
    assert "api_key (secret)" in out and "***" in out and "fixture-secret-default" not in out
    assert "Greets someone by name." in out
    assert "executors" in out.splitlines()[-1]


def test_help_describes_the_options() -> None:
    res = cli("executors", "--help")

    assert res.code == 0
    assert "--json" in res.out and "--project" in res.out
    assert "executors/" in res.out


def test_a_narrow_terminal_gets_a_list_without_docstring_markup() -> None:
    """Found in review: at 80 columns the seven-column table took about a thousand lines of one-word cells."""
    narrow = run_cli("executors", cwd=PROJECT, columns=80)
    assert narrow.code == 0, narrow.err
    lines = narrow.out.splitlines()
    assert len(lines) < 400 and "``" not in narrow.out
    assert any(line.startswith("shell") for line in lines) and "  - argv:" in narrow.out
    for name in PROJECT_NAMES:
        assert any(line.startswith(name) for line in lines)
