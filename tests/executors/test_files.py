"""FileExecutor on real files: the operations, and paths that try to leave the base dirs change nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from circuit_breaker import Engine, InstanceStatus, Workflow
from circuit_breaker.errors import ExecutorConfigError, ExecutorError, TemplateError
from circuit_breaker.executors.files import FileExecutor


@pytest.fixture
def base(tmp_path: Path) -> Path:
    root = tmp_path / "base"
    (root / "in").mkdir(parents=True)
    (root / "in" / "a.txt").write_text("alpha")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("top secret")
    (root / "escape").symlink_to(outside / "secret.txt")
    (root / "escape_dir").symlink_to(outside)
    return root


def snapshot(root: Path) -> dict[str, str]:
    """Everything under ``root``: file contents and symlink targets, by relative path."""
    seen: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                seen[rel] = f"-> {os.readlink(path)}"
            elif path.is_file():
                seen[rel] = path.read_text()
            else:
                seen[rel] = "<dir>"
    return seen


def files(base: Path, **params: object) -> FileExecutor:
    return FileExecutor(base_dirs=[str(base)], **params)


# -- operations -----------------------------------------------------------------------------------------------
async def test_create_then_read_relative_to_the_first_base_dir(base: Path) -> None:
    out = await files(base, operation="create", path="out/report.txt", content="héllo").execute()
    assert out == {"operation": "create", "path": str(base.resolve() / "out" / "report.txt"), "bytes": 6}
    assert (base / "out" / "report.txt").read_text() == "héllo"
    out = await files(base, operation="read", path=str(base / "out" / "report.txt")).execute()
    assert out["content"] == "héllo"
    assert out["bytes"] == 6


async def test_create_refuses_to_overwrite_unless_asked(base: Path) -> None:
    result = await files(base, operation="create", path="in/a.txt", content="new").execute_detailed()
    assert result.error is not None
    assert result.error.kind == "exists"
    assert not result.error.retryable
    assert (base / "in" / "a.txt").read_text() == "alpha"
    await files(base, operation="create", path="in/a.txt", content="new", overwrite=True).execute()
    assert (base / "in" / "a.txt").read_text() == "new"


async def test_overwriting_keeps_the_files_permissions(base: Path) -> None:
    target = base / "in" / "a.txt"
    target.chmod(0o640)
    await files(base, operation="create", path="in/a.txt", content="new", overwrite=True).execute()
    assert target.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in (base / "in").iterdir()] == ["a.txt"]  # no temporary file left behind


async def test_make_parents_off_refuses_a_missing_directory(base: Path) -> None:
    result = await files(base, operation="create", path="deep/er/x.txt", make_parents=False).execute_detailed()
    assert result.error is not None
    assert result.error.kind == "not_found"
    assert not (base / "deep").exists()


async def test_copy_a_file_and_into_an_existing_directory(base: Path) -> None:
    out = await files(base, operation="copy", path="in/a.txt", destination="copy.txt").execute()
    assert (base / "copy.txt").read_text() == "alpha"
    assert out["destination"] == str(base.resolve() / "copy.txt")
    assert out["bytes"] == 5
    (base / "box").mkdir()
    out = await files(base, operation="copy", path="in/a.txt", destination="box").execute()
    assert (base / "box" / "a.txt").read_text() == "alpha"
    assert (base / "in" / "a.txt").exists()


async def test_copy_refuses_an_existing_destination_unless_overwrite(base: Path) -> None:
    (base / "b.txt").write_text("beta")
    result = await files(base, operation="copy", path="in/a.txt", destination="b.txt").execute_detailed()
    assert result.error is not None
    assert result.error.kind == "exists"
    assert (base / "b.txt").read_text() == "beta"
    await files(base, operation="copy", path="in/a.txt", destination="b.txt", overwrite=True).execute()
    assert (base / "b.txt").read_text() == "alpha"


async def test_copy_a_directory_tree(base: Path) -> None:
    (base / "in" / "sub").mkdir()
    (base / "in" / "sub" / "b.txt").write_text("beta")
    out = await files(base, operation="copy", path="in", destination="in_copy").execute()
    assert snapshot(base / "in_copy") == {"a.txt": "alpha", "sub": "<dir>", "sub/b.txt": "beta"}
    assert out["bytes"] == 9


async def test_move_a_file(base: Path) -> None:
    out = await files(base, operation="move", path="in/a.txt", destination="done/a.txt").execute()
    assert not (base / "in" / "a.txt").exists()
    assert (base / "done" / "a.txt").read_text() == "alpha"
    assert out["operation"] == "move"


async def test_move_onto_itself_or_into_itself_is_refused(base: Path) -> None:
    for destination in ("in/a.txt", "in/sub"):
        src = "in/a.txt" if destination == "in/a.txt" else "in"
        result = await files(base, operation="move", path=src, destination=destination).execute_detailed()
        assert result.error is not None
        assert result.error.kind == "invalid_path"
    assert (base / "in" / "a.txt").read_text() == "alpha"


async def test_delete_a_file_a_tree_and_a_symlink_itself(base: Path) -> None:
    (base / "tree" / "x").mkdir(parents=True)
    (base / "tree" / "x" / "f").write_text("f")
    (base / "link").symlink_to(base / "in" / "a.txt")
    await files(base, operation="delete", path="tree").execute()
    await files(base, operation="delete", path="link").execute()
    assert not (base / "tree").exists()
    assert not (base / "link").is_symlink()
    assert (base / "in" / "a.txt").read_text() == "alpha"  # the link went, not what it pointed to
    await files(base, operation="delete", path="in/a.txt").execute()
    assert not (base / "in" / "a.txt").exists()


async def test_deleting_what_is_not_there_fails_as_not_found(base: Path) -> None:
    result = await files(base, operation="delete", path="nope.txt").execute_detailed()
    assert result.error is not None
    assert result.error.kind == "not_found"
    assert "nope.txt" in result.error.message


async def test_a_missing_base_dir_is_an_error(tmp_path: Path) -> None:
    ex = FileExecutor(operation="create", path="x.txt", base_dirs=[str(tmp_path / "missing")])
    result = await ex.execute_detailed()
    assert result.error is not None
    assert result.error.kind == "not_found"
    assert not (tmp_path / "missing").exists()


async def test_any_of_several_base_dirs_may_hold_the_path(base: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    ex = FileExecutor(
        operation="copy", path="in/a.txt", destination=str(other / "a.txt"), base_dirs=[str(base), str(other)]
    )
    await ex.execute()
    assert (other / "a.txt").read_text() == "alpha"


# -- confinement ------------------------------------------------------------------------------------------------
ESCAPES = [
    pytest.param({"operation": "delete", "path": "../outside/secret.txt"}, "../outside/secret.txt", id="dotdot"),
    pytest.param({"operation": "delete", "path": "in/../../outside/secret.txt"}, "in/../../outside", id="dotdot-deep"),
    pytest.param({"operation": "read", "path": "OUTSIDE/secret.txt"}, "OUTSIDE/secret.txt", id="absolute"),
    pytest.param({"operation": "read", "path": "escape"}, "escape", id="symlink-file"),
    pytest.param({"operation": "delete", "path": "escape"}, "escape", id="delete-symlink-out"),
    pytest.param(
        {"operation": "create", "path": "escape", "content": "x", "overwrite": True}, "escape", id="write-link"
    ),
    pytest.param({"operation": "create", "path": "escape_dir/new.txt", "content": "x"}, "escape_dir", id="symlink-dir"),
    pytest.param(
        {"operation": "copy", "path": "in/a.txt", "destination": "../outside/a.txt"}, "../outside", id="copy-out"
    ),
    pytest.param({"operation": "copy", "path": "escape", "destination": "leak.txt"}, "escape", id="copy-in"),
    pytest.param({"operation": "move", "path": "in/a.txt", "destination": "OUTSIDE"}, "OUTSIDE", id="move-out"),
    pytest.param(
        {"operation": "move", "path": "in/a.txt", "destination": "escape_dir"}, "escape_dir", id="move-via-link"
    ),
    pytest.param({"operation": "delete", "path": "."}, ".", id="the-base-itself"),
]


@pytest.mark.parametrize(("params", "named"), ESCAPES)
async def test_paths_leaving_the_base_dirs_are_refused_and_nothing_changes(
    base: Path, tmp_path: Path, params: dict, named: str
) -> None:
    outside = str(tmp_path / "outside")
    params = {k: v.replace("OUTSIDE", outside) if isinstance(v, str) else v for k, v in params.items()}
    named = named.replace("OUTSIDE", outside)
    before = snapshot(tmp_path)
    result = await files(base, **params).execute_detailed()
    assert result.error is not None
    assert result.error.kind == "path_outside_base"
    assert not result.error.retryable
    assert named in result.error.message
    assert snapshot(tmp_path) == before


async def test_a_path_from_token_data_cannot_leave_the_base_dir(engine: Engine, base: Path, tmp_path: Path) -> None:
    wf = Workflow("cleanup")
    a, b = wf.states("a", "b")
    wf.flow(a >> b, "delete").action(files(base, operation="delete", path="{{ file }}"))
    before = snapshot(tmp_path)
    inst = await engine.start(wf, {"file": "../outside/secret.txt"})
    done = await engine.wait(inst.id, timeout=5)
    assert done.status is InstanceStatus.FAILED
    assert "not inside the base dirs" in done.open_incidents[0].error.message
    assert snapshot(tmp_path) == before
    inst = await engine.start(wf, {"file": "in/a.txt"})
    done = await engine.wait(inst.id, timeout=5)
    assert done.status is InstanceStatus.COMPLETED
    assert not (base / "in" / "a.txt").exists()


# -- parameters ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"operation": "read", "path": "a"}, "base_dirs"),
        ({"operation": "read", "path": "a", "base_dirs": []}, "base_dirs"),
        ({"operation": "read", "base_dirs": ["/tmp"]}, "path"),
        ({"operation": "shred", "path": "a", "base_dirs": ["/tmp"]}, "operation"),
        ({"operation": "read", "path": "a", "base_dirs": "/tmp"}, "base_dirs"),
        ({"operation": "read", "path": "a", "base_dirs": ["/tmp"], "overwrite": "sometimes"}, "overwrite"),
    ],
)
def test_missing_or_mistyped_parameters_name_the_executor_and_parameter(params: dict, parameter: str) -> None:
    with pytest.raises(ExecutorConfigError) as info:
        FileExecutor(**params)
    assert info.value.executor == "file"
    assert info.value.parameter == parameter


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"operation": "copy", "path": "a"}, "needs a 'destination'"),
        ({"operation": "delete", "path": "a", "destination": "b"}, "takes no 'destination'"),
        ({"operation": "read", "path": "a", "content": "x"}, "takes no 'content'"),
    ],
)
def test_parameters_that_do_not_fit_the_operation_are_refused(params: dict, message: str) -> None:
    with pytest.raises(ExecutorConfigError, match=message):
        FileExecutor(base_dirs=["/tmp"], **params)


def test_a_template_naming_a_missing_field_raises_template_error() -> None:
    ex = FileExecutor(operation="delete", path="{{ file }}", base_dirs=["/tmp"])
    with pytest.raises(TemplateError) as info:
        ex.render({"name": "x"})
    assert info.value.field == "file"
    assert info.value.parameter == "path"


async def test_execute_raises_executor_error_for_a_refused_path(base: Path) -> None:
    with pytest.raises(ExecutorError) as info:
        await files(base, operation="read", path="/etc/hostname").execute()
    assert info.value.kind == "path_outside_base"
