"""Files that are whole or absent: written under a temporary name beside the target, then renamed.

A reader, a crash or a kill -9 at any moment never leaves half a file under the real name: the rename
is atomic on POSIX file systems. The data is flushed to disk before the rename, so that after a power
loss the name does not point at a file whose blocks never reached the disk.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def temporary_name(path: Path) -> Path:
    """Where `path` is written before its rename: a hidden name in the same folder (so the same file system)."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def write_atomic(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Call write(temporary path) beside `path`, then rename the result (a file or a folder) into place.

    A folder replaces only an absent or empty one. On any error the temporary file or folder is removed.
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        write(tmp)
        _sync(tmp)
        if tmp.is_dir() and path.is_dir():
            path.rmdir()  # os.replace moves a folder only onto an empty one, and rmdir refuses any other
        os.replace(tmp, path)
        _sync_folder(path.parent)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text))


def _sync(path: Path) -> None:
    """fsync a file, or every file in a folder and the folder itself."""
    if path.is_dir():
        for child in path.rglob("*"):
            if child.is_file():
                _sync_file(child)
        _sync_folder(path)
    else:
        _sync_file(path)


def _sync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _sync_folder(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
