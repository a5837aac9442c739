"""The experiment directory: what is written where, atomically, and the results table rebuilt from it.

Layout::

    OUT/
      experiment.json                  id, configuration hash and resolved configuration
      rewind_point.pt                  training state at step k (written once level 0 is done)
      results.csv, results.json        one row per finished level (rebuilt from the level files)
      layers.csv                       per-layer alive / total / remaining per level
      levels/level_03/
        mask.safetensors               the mask this level trains with (written by the level before)
        ticket.safetensors             mask + θk ⊙ m
        checkpoints/                   mid-level checkpoints (removed when the level is done)
        logs/                          the level's logger output
        metrics.json                   written last: the level is done

Example:
    >>> import tempfile
    >>> from lightning_lottery.store import ExperimentStore
    >>> store = ExperimentStore(tempfile.mkdtemp())
    >>> store.level_dir(3).name
    'level_03'
    >>> store.finished_levels()
    []
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_lottery.masks import atomic_write_bytes

#: The columns of ``results.csv`` in order (per-layer fractions go to ``layers.csv``).
RESULT_COLUMNS: tuple[str, ...] = (
    "branch",
    "replicate",
    "level",
    "remaining",
    "alive",
    "total",
    "test_acc",
    "test_loss",
    "early_stop_iter",
    "early_stop_test_acc",
    "min_val_loss",
    "best_val_acc",
    "steps",
    "wall_s",
)


class ExperimentMismatchError(RuntimeError):
    """The experiment directory belongs to a different configuration."""


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no spaces); objects that JSON cannot encode become their ``repr``."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=repr)


def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``config``."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=repr) + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, naming the file in the error if it is corrupt."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: corrupt JSON ({err}); delete it to recompute that part") from err


class ExperimentStore:
    """Paths and durable writes of one experiment directory."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    # paths
    @property
    def experiment_file(self) -> Path:
        return self.root / "experiment.json"

    @property
    def rewind_file(self) -> Path:
        return self.root / "rewind_point.pt"

    def level_dir(self, level: int) -> Path:
        return self.root / "levels" / f"level_{level:02d}"

    def mask_file(self, level: int) -> Path:
        return self.level_dir(level) / "mask.safetensors"

    def ticket_file(self, level: int) -> Path:
        return self.level_dir(level) / "ticket.safetensors"

    def metrics_file(self, level: int) -> Path:
        return self.level_dir(level) / "metrics.json"

    def checkpoint_dir(self, level: int) -> Path:
        return self.level_dir(level) / "checkpoints"

    # binding to a configuration
    def bind(self, config: Mapping[str, Any], name: str) -> str:
        """Create the directory for ``config`` or check it was made for the same one; returns the experiment id."""
        digest = config_hash(config)
        if self.experiment_file.exists():
            existing = read_json(self.experiment_file)
            if existing.get("hash") != digest:
                theirs = existing.get("config", {})
                diff = _first_difference(theirs, json.loads(canonical_json(config)))
                raise ExperimentMismatchError(
                    f"{self.root} holds an experiment with a different configuration ({diff}). "
                    "Use another output directory, or delete this one to start over."
                )
            return str(existing["id"])
        experiment_id = f"{name}-{digest[:8]}"
        write_json(self.experiment_file, {"id": experiment_id, "hash": digest, "config": json.loads(canonical_json(config))})
        return experiment_id

    # levels
    def finished_levels(self) -> list[int]:
        levels = self.root / "levels"
        if not levels.is_dir():
            return []
        return sorted(int(p.name[6:]) for p in levels.glob("level_*") if (p / "metrics.json").is_file())

    def read_metrics(self, level: int) -> dict[str, Any]:
        return read_json(self.metrics_file(level))

    def finish_level(self, level: int, metrics: Mapping[str, Any]) -> None:
        """Mark ``level`` done by writing its metrics (last, atomically), then rebuild the results tables."""
        write_json(self.metrics_file(level), dict(metrics))
        self.write_results()

    def results(self) -> list[dict[str, Any]]:
        """The rows of all finished levels, in level order."""
        return [self.read_metrics(level) for level in self.finished_levels()]

    def write_results(self) -> None:
        rows = self.results()
        write_json(self.root / "results.json", rows)
        atomic_write_bytes(self.root / "results.csv", _csv(rows, RESULT_COLUMNS).encode())
        layer_rows = [
            {"branch": r["branch"], "replicate": r["replicate"], "level": r["level"], "layer": name, **vals}
            for r in rows
            for name, vals in r.get("layers", {}).items()
        ]
        atomic_write_bytes(
            self.root / "layers.csv",
            _csv(layer_rows, ("branch", "replicate", "level", "layer", "alive", "total", "remaining")).encode(),
        )


def _csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return buf.getvalue()


def _first_difference(old: Any, new: Any, path: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                return _first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
        return "no difference found"
    return f"{path or 'config'}: was {old!r}, now {new!r}"
