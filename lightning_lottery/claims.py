"""Per-run claims: which worker is training a run, so that no run is trained twice at once.

The driver holds the experiment directory's lock (:mod:`lightning_lottery.dirlock`, one driver per directory);
each worker that trains a run holds that run's claim, ``claim.json`` in the run's directory: host, pid, the time it
was claimed and a heartbeat the worker rewrites every ``heartbeat_s`` seconds. A claim is *stale* when its holder is
gone: a process on this host that no longer runs, or a heartbeat older than ``stale_after_s`` (a worker on another
node that died, or lost the shared filesystem). A stale claim is taken over; a live one is left alone, so a driver
restarted while the workers of its predecessor still train waits for them instead of training the same run again.

A claim appears atomically and complete: it is written to a temporary file (:mod:`lightning_lottery.atomic`) and
hard-linked to ``claim.json``, which fails if another worker's claim is there; a stale claim is first renamed away
(only one of two workers taking it over succeeds). Heartbeats are atomic rewrites.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "claim.json"
    >>> first = RunClaim(path)
    >>> first.acquire()
    True
    >>> second = RunClaim(path)
    >>> second.acquire(), second.holder["pid"] == first.record["pid"]
    (False, True)
    >>> first.release(); second.acquire()
    True
    >>> second.release()
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from lightning_lottery.atomic import atomic_write_bytes
from lightning_lottery.dirlock import pid_alive

__all__ = ["CLAIM_FILE", "RunClaim", "describe", "is_stale", "read_claim"]

#: The claim's file name in a run's directory.
CLAIM_FILE = "claim.json"


def read_claim(path: str | os.PathLike) -> dict[str, Any] | None:
    """The claim recorded at ``path`` (host, pid, since, heartbeat), or ``None`` when there is none (or it is
    unreadable: a claim is written atomically, so that is a file someone else damaged, treated as no claim)."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


def is_stale(record: dict[str, Any], stale_after_s: float, now: float | None = None) -> bool:
    """Whether the claim ``record``'s holder is gone: a dead process on this host, or no heartbeat for
    ``stale_after_s`` seconds."""
    now = time.time() if now is None else now
    if record.get("host") == socket.gethostname() and not pid_alive(int(record.get("pid", -1))):
        return True
    return now - float(record.get("heartbeat", 0.0)) > stale_after_s


def describe(record: dict[str, Any], now: float | None = None) -> str:
    """``pid 123 on node7 (claimed 2026-01-01 10:00:00 UTC, heartbeat 4s ago)``."""
    now = time.time() if now is None else now
    return (f"pid {record.get('pid', '?')} on {record.get('host', '?')} (claimed {record.get('since', '?')}, "
            f"heartbeat {max(now - float(record.get('heartbeat', 0.0)), 0.0):.0f}s ago)")


class RunClaim:
    """The claim of one run, held from :meth:`acquire` to :meth:`release`, its heartbeat kept by a thread.

    Args:
        path: the claim file (``claim.json`` in the run's directory).
        heartbeat_s: seconds between heartbeats.
        stale_after_s: a claim whose heartbeat is older than this is taken over.
    """

    def __init__(self, path: str | os.PathLike, heartbeat_s: float = 10.0, stale_after_s: float = 60.0) -> None:
        self.path = Path(path)
        self.heartbeat_s, self.stale_after_s = float(heartbeat_s), float(stale_after_s)
        self.record: dict[str, Any] = {}
        self.holder: dict[str, Any] = {}  # the live claim that kept us out (after a failed acquire)
        self.taken_over: dict[str, Any] = {}  # the stale claim this one replaced, if any
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> bool:
        """Claim the run: ``True`` when it is ours now (a stale claim taken over, see :attr:`taken_over`),
        ``False`` when a live holder has it (see :attr:`holder`)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        now = time.time()
        self.record = {"host": socket.gethostname(), "pid": os.getpid(), "heartbeat": now,
                       "since": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(now))}
        for _ in range(3):
            if self._create():
                self._start_heartbeat()
                return True
            existing = read_claim(self.path)
            if existing is not None and not is_stale(existing, self.stale_after_s):
                self.holder = existing
                return False
            aside = self.path.with_name(f".{self.path.name}.stale.tmp-{os.getpid()}")
            try:
                os.rename(self.path, aside)  # atomic: of two workers taking it over, one gets it
            except FileNotFoundError:
                continue
            self.taken_over = existing or {}
            aside.unlink(missing_ok=True)
        self.holder = read_claim(self.path) or {}
        return False

    def _create(self) -> bool:
        tmp = self.path.with_name(f".{self.path.name}.new.tmp-{os.getpid()}")
        atomic_write_bytes(tmp, (json.dumps(self.record) + "\n").encode())
        try:
            os.link(tmp, self.path)  # fails if a claim is there: never two holders
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"claim heartbeat {self.path}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            current = read_claim(self.path)
            if current is None or current.get("pid") != self.record["pid"] or current.get("host") != self.record["host"]:
                return  # taken over (we were presumed dead) or released: not ours to refresh
            self.record = {**self.record, "heartbeat": time.time()}
            atomic_write_bytes(self.path, (json.dumps(self.record) + "\n").encode())

    def release(self) -> None:
        """Give the run up (its claim file removed, if it is still ours)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        current = read_claim(self.path)
        if current is not None and current.get("pid") == self.record.get("pid") \
                and current.get("host") == self.record.get("host"):
            self.path.unlink(missing_ok=True)
