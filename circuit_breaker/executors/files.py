"""Copy, move, delete, create and read files, never outside the directories the workflow author allowed."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import ExecutorError
from ._base import Executor
from ._params import param

_OS_ERRORS: list[tuple[type[OSError], str, bool]] = [
    (FileNotFoundError, "not_found", False),
    (FileExistsError, "exists", False),
    (PermissionError, "permission_denied", False),
    (IsADirectoryError, "is_a_directory", False),
    (NotADirectoryError, "not_a_directory", False),
]


@dataclass(frozen=True, slots=True)
class _Target:
    given: str
    real: str  # every symlink and '..' resolved: what reads and writes go through
    entry: str  # the directory entry itself (a symlink stays a symlink): what delete and move act on


def _size(path: str) -> int:
    if not os.path.isdir(path) or os.path.islink(path):
        return os.lstat(path).st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        total += sum(os.lstat(os.path.join(root, f)).st_size for f in files)
    return total


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _within(path: str, base: str) -> bool:
    return path != base and os.path.commonpath([path, base]) == base


class FileExecutor(Executor):
    """File operations confined to ``base_dirs``: token data can name files, but only inside them.

    Every path (relative ones start at the first base dir) must resolve, after symlinks and ``..``, strictly
    inside one of ``base_dirs``; otherwise the run fails with kind ``path_outside_base`` before anything on
    disk changes. ``delete`` and ``move`` act on a symlink itself, the others on what it points to; a
    ``destination`` that is an existing directory receives the source under its own name (as ``cp``/``mv``
    do). ``overwrite=False`` refuses to replace anything (kind ``exists``). Directories can be copied, moved
    and deleted (recursively). ``read`` returns UTF-8 text (bad bytes replaced) as ``content``.

    The check guards against paths from data, not against someone racing to swap directories inside a base
    dir between the check and the operation.
    """

    name = "file"

    operation: Literal["copy", "move", "delete", "create", "read"] = param(required=True, description="what to do")
    path: str = param(required=True, min_length=1, description="the file or directory to act on")
    destination: str | None = param(default=None, min_length=1, description="copy/move: where it goes")
    content: str | None = param(default=None, description="create: the file's text (default: empty)")
    base_dirs: list[str] = param(required=True, min_length=1, description="every path must lie inside one of these")
    overwrite: bool = param(default=False, description="replace an existing file or directory")
    make_parents: bool = param(default=True, description="create missing parent directories of what is written")

    def validate(self) -> None:
        if any(not b for b in self.base_dirs):
            raise ValueError("base_dirs holds an empty path")
        moving = self.operation in ("copy", "move")
        if moving and self.destination is None:
            raise ValueError(f"operation {self.operation!r} needs a 'destination'")
        if not moving and self.destination is not None:
            raise ValueError(f"operation {self.operation!r} takes no 'destination'")
        if self.content is not None and self.operation != "create":
            raise ValueError(f"operation {self.operation!r} takes no 'content'")

    async def execute_internal(self) -> dict[str, Any]:
        try:
            return await asyncio.to_thread(self._run)
        except ExecutorError:
            raise
        except OSError as err:
            raise self._os_error(err) from err

    # -- checks (nothing on disk changes before they all pass) ------------------------------------------------
    def _fail(self, message: str, kind: str) -> ExecutorError:
        return ExecutorError(f"executor {self.name!r}: {message}", executor=self.name, kind=kind, retryable=False)

    def _os_error(self, err: OSError) -> ExecutorError:
        where = f" ({err.filename})" if err.filename else ""
        message = f"executor {self.name!r}: {self.operation} failed: {err.strerror or err}{where}"
        for cls, kind, retryable in _OS_ERRORS:
            if isinstance(err, cls):
                return ExecutorError(message, executor=self.name, kind=kind, retryable=retryable)
        return ExecutorError(message, executor=self.name, kind="os_error", retryable=True)

    def _bases(self) -> list[str]:
        bases = [os.path.realpath(b) for b in self.base_dirs]
        missing = [b for b in bases if not os.path.isdir(b)]
        if missing:
            raise self._fail(f"base dir {missing[0]!r} does not exist or is not a directory", "not_found")
        return bases

    def _target(self, given: str, bases: list[str], what: str) -> _Target:
        candidate = given if os.path.isabs(given) else os.path.join(bases[0], given)
        real = os.path.realpath(candidate)
        name = os.path.basename(candidate.rstrip(os.sep))
        entry = real if name in ("", ".", "..") else os.path.join(os.path.realpath(os.path.dirname(candidate)), name)
        for resolved in dict.fromkeys((real, entry)):
            if not any(_within(resolved, b) for b in bases):
                raise self._fail(
                    f"{what} {given!r} resolves to {resolved!r}, which is not inside the base dirs {', '.join(bases)}",
                    "path_outside_base",
                )
        return _Target(given, real, entry)

    def _destination(self, source: _Target, bases: list[str]) -> _Target:
        assert self.destination is not None
        dest = self._target(self.destination, bases, "destination")
        if os.path.isdir(dest.real):  # into an existing directory, under the source's own name
            dest = self._target(os.path.join(dest.real, os.path.basename(source.entry)), bases, "destination")
        src = source.entry if self.operation == "move" else source.real
        dst = dest.entry if self.operation == "move" else dest.real
        if dst == src or _within(dst, src):
            raise self._fail(f"cannot {self.operation} {self.path!r} onto or into itself", "invalid_path")
        return dest

    def _vacate(self, path: str, *, directory_ok: bool = True) -> None:
        """Make room at ``path``: refused unless ``overwrite``; an existing directory goes only if allowed."""
        if not os.path.lexists(path):
            return
        if not self.overwrite:
            raise self._fail(f"{path!r} exists (set overwrite=True to replace it)", "exists")
        if not directory_ok and os.path.isdir(path) and not os.path.islink(path):
            raise self._fail(f"{path!r} is a directory; a file cannot replace it", "is_a_directory")

    def _parent(self, path: str) -> None:
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):
            if not self.make_parents:
                raise self._fail(f"directory {parent!r} does not exist (make_parents is off)", "not_found")
            os.makedirs(parent, exist_ok=True)

    # -- the operations ------------------------------------------------------------------------------------------
    def _run(self) -> dict[str, Any]:
        bases = self._bases()
        target = self._target(self.path, bases, "path")
        op = self.operation
        if op == "read":
            with open(target.real, "rb") as fh:
                data = fh.read()
            return {"operation": op, "path": target.real, "bytes": len(data), "content": data.decode(errors="replace")}
        if op == "create":
            return self._create(target.real)
        if op == "delete":
            if not os.path.lexists(target.entry):
                raise self._fail(f"{self.path!r} does not exist", "not_found")
            _remove(target.entry)
            return {"operation": op, "path": target.entry}
        source = target.entry if op == "move" else target.real
        if not os.path.lexists(source):
            raise self._fail(f"{self.path!r} does not exist", "not_found")
        dest = self._destination(target, bases)
        dst = dest.entry if op == "move" else dest.real
        self._vacate(dst, directory_ok=os.path.isdir(source))
        self._parent(dst)
        if os.path.lexists(dst):
            _remove(dst)
        if op == "move":
            shutil.move(source, dst)
        elif os.path.isdir(source):
            shutil.copytree(source, dst, symlinks=True)  # links stay links: copying never pulls in outside data
        else:
            shutil.copy2(source, dst)
        return {"operation": op, "path": source, "destination": dst, "bytes": _size(dst)}

    def _create(self, path: str) -> dict[str, Any]:
        data = (self.content or "").encode()
        self._vacate(path, directory_ok=False)
        self._parent(path)
        if not os.path.lexists(path):
            with open(path, "xb") as fh:  # exclusive: a file that appeared meanwhile is not clobbered
                fh.write(data)
        else:
            # Replace through a rename: readers see the old file or the new one, never half of it.
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".cb-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                shutil.copymode(path, tmp)
                os.replace(tmp, path)
            except BaseException:
                os.unlink(tmp)
                raise
        return {"operation": "create", "path": path, "bytes": len(data)}
