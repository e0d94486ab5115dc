"""Load the workflows a file defines, for the CLI: a Python module, or a YAML/JSON workflow document.

A ``.yaml``, ``.yml`` or ``.json`` file is one declarative workflow (see ``circuit_breaker.dsl.load_workflow``);
its executors are looked up in the default registry plus the ``executors/`` folder of the current directory
(the project root), like the Python files' imports.

A Python workflow file is an ordinary module: it is imported by path under a unique module name (so two files
named ``order.py`` do not clash), with its own directory and the current directory on ``sys.path`` while it
imports, so that ``from rules.shared import ...`` works when the command is run from the project root. Every
module-level ``Workflow`` is collected, in definition order.
"""

from __future__ import annotations

import importlib.util
import itertools
import re
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from ..dsl import Workflow
from ..errors import DefinitionError, ExecutorConfigError, RuleDefinitionError, WorkflowLoadError

__all__ = ["WorkflowChoiceError", "load_workflows", "pick_workflow", "split_target"]

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
DOCUMENT_SUFFIXES = (".yaml", ".yml", ".json")
_counter = itertools.count(1)


class WorkflowChoiceError(WorkflowLoadError):
    """The file loaded, but which workflow to use is unclear (several and no name, or an unknown name).

    A usage error rather than a broken file, so the CLI gives it the usage exit code.
    """


def split_target(target: str) -> tuple[str, str | None]:
    """Split ``path/to/file.py:name`` into the path and the workflow name (None when no name is given).

    A target that exists as a file is taken whole, so odd file names (and Windows drive letters) still work.
    """
    if ":" in target and not Path(target).exists():
        path, _, name = target.rpartition(":")
        if path and _NAME.match(name):
            return path, name
    return target, None


def load_workflows(path: str | Path) -> list[Workflow]:
    """Import ``path`` (or read it, for a YAML/JSON document) and return its workflows in definition order.

    Raises WorkflowLoadError when the file is missing, is not Python (or YAML/JSON that parses), raises while
    importing or defines no workflow. A DefinitionError or RuleDefinitionError raised while the file builds
    its workflows passes through (with the file and line prepended), because it is a mistake in the
    definition, not in loading.
    """
    file = Path(path)
    if not file.exists():
        raise WorkflowLoadError(f"workflow file {str(path)!r} does not exist", path=str(path))
    if not file.is_file():
        raise WorkflowLoadError(f"workflow file {str(path)!r} is not a file", path=str(path))
    if file.suffix.lower() in DOCUMENT_SUFFIXES:
        return [_load_document(file)]
    module = _import(file.resolve(), str(path))
    found: list[Workflow] = []
    for value in vars(module).values():
        if isinstance(value, Workflow) and all(value is not w for w in found):
            found.append(value)
    if not found:
        raise WorkflowLoadError(f"{path} defines no Workflow at module level", path=str(path))
    return found


def _load_document(file: Path) -> Workflow:
    """One workflow from a YAML/JSON document; its executors may come from the project's ``executors/``."""
    from ..dsl._declarative import load_workflow

    registry = None
    project = file.resolve().parent.parent if file.resolve().parent.name == "workflows" else Path.cwd()
    if (project / "executors").is_dir():
        from ..executors import default_registry

        try:
            registry = default_registry(project)
        except ExecutorConfigError as err:
            raise WorkflowLoadError(f"cannot load {file}: {err}", path=str(file)) from err
    # Errors already name the file (and the line) as given, so they pass through unchanged.
    return load_workflow(file, registry=registry)


def pick_workflow(workflows: list[Workflow], name: str | None, path: str) -> Workflow:
    """The workflow called ``name``, or the only one; raises WorkflowChoiceError listing the names otherwise."""
    names = ", ".join(w.name for w in workflows)
    if name is None:
        if len(workflows) == 1:
            return workflows[0]
        raise WorkflowChoiceError(
            f"{path} defines {len(workflows)} workflows ({names}); pick one with --workflow NAME or {path}:NAME",
            path=path,
        )
    for wf in workflows:
        if wf.name == name:
            return wf
    raise WorkflowChoiceError(f"{path} has no workflow named {name!r} (it defines: {names})", path=path)


def _import(file: Path, shown: str) -> ModuleType:
    stem = re.sub(r"\W", "_", file.stem)
    module_name = f"_circuit_breaker_workflow_{next(_counter)}_{stem}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise WorkflowLoadError(f"{shown} is not a Python file (expected a .py, .yaml, .yml or .json file)", path=shown)
    module = importlib.util.module_from_spec(spec)
    # Registered before executing, like a normal import: pydantic models and dataclasses look themselves up here.
    sys.modules[module_name] = module
    try:
        with _search_path(*_roots_of(file)):
            spec.loader.exec_module(module)
    except (DefinitionError, RuleDefinitionError) as err:
        del sys.modules[module_name]
        err.args = (f"{shown}{_line_in(err, file)}: {err}",)
        raise
    except (Exception, SystemExit) as err:
        del sys.modules[module_name]
        raise WorkflowLoadError(
            f"cannot load {shown}{_line_in(err, file)}: {type(err).__name__}: {err}", path=shown
        ) from err
    return module


def _line_in(err: BaseException, file: Path) -> str:
    """``, line N`` for the deepest frame of the traceback inside the workflow file, so the user knows where."""
    if isinstance(err, SyntaxError):
        return ""  # its message already names the file and line
    line = None
    for frame in traceback.extract_tb(err.__traceback__):
        if Path(frame.filename) == file:
            line = frame.lineno
    return f", line {line}" if line is not None else ""


def _roots_of(file: Path) -> list[Path]:
    """Where a workflow file's own imports resolve: its folder, the project it belongs to (the folder holding
    ``workflows/``, so ``from rules import ...`` works from anywhere, also with ``--project``), the current one."""
    roots = [file.parent]
    if file.parent.name == "workflows":
        roots.append(file.parent.parent)
    roots.append(Path.cwd())
    return list(dict.fromkeys(roots))


@contextmanager
def _search_path(*dirs: Path) -> Iterator[None]:
    """Put ``dirs`` first on sys.path while the file imports, then take them out again (only them: changes
    the file itself makes to sys.path stay)."""
    added = [str(d) for d in dirs]
    sys.path[:0] = added
    try:
        yield
    finally:
        for entry in added:
            if entry in sys.path:
                sys.path.remove(entry)
