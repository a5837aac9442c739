"""Durable, atomic file writes: a reader sees the old file or the new one, never half of one.

The one write helper of the project: the experiment store, masks, tickets, rewind points, the results tables and
the report all write through :func:`atomic_write_bytes` (bytes already in memory) or :func:`atomic_write` (a
writer function, e.g. ``torch.save``). Both write a temporary file next to the target, ``fsync`` it, rename it over
the target and ``fsync`` the directory, so a finished file survives a crash or a power cut.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "sub" / "file.txt"
    >>> atomic_write_bytes(path, b"hello")
    >>> path.read_bytes(), sorted(p.name for p in path.parent.iterdir())
    (b'hello', ['file.txt'])
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_commit", "atomic_write", "atomic_write_bytes", "temporary_name"]


def temporary_name(path: Path) -> Path:
    """The temporary file a write of ``path`` goes through (hidden, per process)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write`` on a temporary file, then move it over ``path`` durably (parent directories are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_directory(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably."""
    atomic_write(path, lambda f: f.write(data))


def atomic_commit(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Move ``tmp`` (a finished file written by someone else, e.g. ``Trainer.save_checkpoint``) over ``path``
    durably: ``fsync`` it, rename it, ``fsync`` the directory."""
    tmp, path = Path(tmp), Path(path)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
