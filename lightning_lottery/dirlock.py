"""One writer per directory: an exclusive lock file that names its holder (host, pid, since when).

``fcntl.flock`` on an open descriptor: the kernel releases it when the holder exits, however it exits (SIGKILL
included), so a lock left by a dead process is simply taken over. Where the filesystem has no ``flock``, the lock
falls back to the recorded pid: a live process on this host holds it, a dead one's is taken over.

Example:
    >>> import tempfile, pathlib
    >>> lock = DirectoryLock(pathlib.Path(tempfile.mkdtemp()) / ".lock")
    >>> lock.acquire()
    >>> DirectoryLock(lock.path).acquire()
    Traceback (most recent call last):
    ...
    lightning_lottery.dirlock.DirectoryLockedError: ...is in use by another process: pid ... on ... since ...
    >>> lock.release()
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

__all__ = ["DirectoryLock", "DirectoryLockedError", "pid_alive"]


class DirectoryLockedError(RuntimeError):
    """Another live process holds the directory's lock."""


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host (one we may not signal counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DirectoryLock:
    """An exclusive, non-blocking lock of ``path``'s directory, held from :meth:`acquire` to :meth:`release`."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self.previous: dict[str, Any] = {}  # what the file said when it was taken (a stale holder), if anything

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _holder(self, fd: int) -> dict[str, Any]:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            return dict(json.loads(os.read(fd, 4096).decode() or "{}"))
        except (ValueError, OSError):
            return {}

    def acquire(self) -> None:
        """Take the lock or raise :class:`DirectoryLockedError` naming the process that holds it."""
        if self._fd is not None:
            return
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        holder = self._holder(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise DirectoryLockedError(self._message(holder)) from None
            # no flock here (some network filesystems): trust the recorded pid on this host
            if holder.get("host") == socket.gethostname() and pid_alive(int(holder.get("pid", -1))) \
                    and int(holder.get("pid", -1)) != os.getpid():
                os.close(fd)
                raise DirectoryLockedError(self._message(holder)) from None
        me = {"host": socket.gethostname(), "pid": os.getpid(),
              "since": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime())}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(me) + "\n").encode())
        os.fsync(fd)
        self.previous, self._fd = holder, fd

    def _message(self, holder: dict[str, Any]) -> str:
        who = (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('since', '?')}"
               if holder else "a process that has not written its name yet")
        return (f"{self.path.parent} is in use by another process: {who}. Two runs in one directory would "
                "overwrite each other's files; wait for it to finish, stop it, or use another directory.")

    def release(self) -> None:
        """Give the lock up (the file stays: removing it would let two processes lock different files)."""
        if self._fd is None:
            return
        import fcntl

        try:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        except OSError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None
