"""Writing files whole, inside their folder, readable as the user's umask says.

Every file imloss writes (checkpoints, reports, NIR files, frame caches, a run's ``code.diff`` and
``recipe.toml``) goes through :func:`write_atomically` or :func:`temporary_beside`: the bytes go to
a fresh temporary file from :mod:`tempfile` in the target's folder, are synced, and replace the
target by a rename. So a crash leaves the old file or the new one, never half of one, and a symlink
planted at the target's name is replaced, never followed. ``mkstemp`` creates its file private
(0600); it is opened up here to what the umask allows, as ``open()`` would: a lab that shares a
folder reads what a colleague wrote, and a private folder stays private.

Paths built from a registry row's values go through :func:`child_path`, which refuses a name that
would leave its folder.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from imloss_cli.errors import ImlossError


class UnsafePathError(ImlossError):
    """A name that would put a file outside the folder it belongs in."""


@functools.cache
def umask() -> int:
    """This process's umask (read once: changing it at run time is not something imloss does)."""
    try:  # Linux: readable without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    current = os.umask(0o022)  # elsewhere: the only portable way is to set it and put it back
    os.umask(current)
    return current


def file_mode() -> int:
    """What ``open()`` would give a new file: rw for everyone, less the umask."""
    return 0o666 & ~umask()


def temporary_beside(path: Path) -> tuple[int, Path]:
    """A new temporary file in ``path``'s folder (created if missing), opened for writing, mode per umask.

    Returns the open descriptor and the file's path; the caller writes, then ``os.replace``s it onto
    ``path`` (or unlinks it on failure).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, file_mode())
    return fd, Path(tmp)


def sync_folder(folder: Path) -> None:
    """fsync a folder, so that a rename in it survives a crash."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[BinaryIO]:
    """A file to write that replaces ``path`` in one rename when the body ends (its folder created).

    The bytes are synced before the rename and the folder after it, so the new file survives a
    crash; if the body raises, ``path`` is left as it was and the temporary file goes. A symlink
    planted at ``path`` is replaced, not followed.
    """
    fd, tmp = temporary_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    sync_folder(path.parent)


def write_atomically(path: Path, data: bytes | str) -> None:
    """Replace ``path`` with ``data`` (see :func:`replacing`)."""
    with replacing(path) as f:
        f.write(data.encode() if isinstance(data, str) else data)


def open_to_append(path: Path) -> BinaryIO:
    """``path`` opened to append (created with the umask's mode); a symbolic link planted there is refused (OSError)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o666)  # the umask applies
    return os.fdopen(fd, "ab")


def child_path(folder: Path, name: str, what: str) -> Path:
    """``folder / name`` for a ``name`` that is one plain path component (no separator, not ``.`` or ``..``).

    Raises:
        UnsafePathError: ``name`` would address something outside ``folder``.
    """
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise UnsafePathError(f"{what} {name!r} is not a plain file name; it would leave {folder}")
    return folder / name
