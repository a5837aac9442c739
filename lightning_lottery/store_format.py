"""Pure formats of the experiment store (no file is read or written here): canonical JSON and its hash, CSV text,
the first difference between two configurations, :class:`Progress` and :class:`LevelInfo`."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["LevelInfo", "Progress", "canonical_json", "config_hash", "csv_text", "first_difference", "json_bytes"]


@dataclass(frozen=True)
class Progress:
    """How much of the planned experiment is done: runs, and levels whose every run is done.

    Example:
        >>> Progress(4, 7, 1, 3).describe(), Progress(7, 7, 3, 3).complete
        ('incomplete: 4 of 7 runs done (1 of 3 levels)', True)
    """

    done: int
    planned: int
    levels_done: int
    levels_planned: int

    @property
    def complete(self) -> bool:
        return self.done >= self.planned

    def describe(self) -> str:
        state = "complete" if self.complete else "incomplete"
        return f"{state}: {self.done} of {self.planned} runs done ({self.levels_done} of {self.levels_planned} levels)"


@dataclass(frozen=True)
class LevelInfo:
    """What a logger factory is told about the run it makes a logger for."""

    level: int
    levels: int
    remaining: float
    directory: Path
    experiment_id: str
    branch: str = "ticket"
    replicate: int = 0
    seed: int = 0
    at: str = ""  # a stability run's rewind step when there are several (lottery.stability.at)


def json_bytes(obj: Any) -> bytes:
    """Indented, sorted JSON as written to the experiment's files."""
    return (json.dumps(obj, indent=2, sort_keys=True, default=repr) + "\n").encode()


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no spaces); objects that JSON cannot encode become their ``repr``."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=repr)


def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``config``."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()


def csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return buf.getvalue()


def first_difference(old: Any, new: Any, path: str = "") -> str:
    """The first setting (dotted path) whose value differs, also when one side lacks it."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            here = f"{path}.{key}" if path else str(key)
            if key not in old:
                return f"{here}: not set (default) in the stored experiment, now {new[key]!r}"
            if key not in new:
                return f"{here}: was {old[key]!r}, now at its default"
            if old[key] != new[key]:
                return first_difference(old[key], new[key], here)
        return "no difference found"
    return f"{path or 'config'}: was {old!r}, now {new!r}"


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
