"""The experiment directory: what is written where, atomically, and the results table rebuilt from it.

Layout::

    OUT/
      experiment.json                  id, configuration hash and resolved configuration
      costs.json                       per prunable layer: weights and MACs per weight (theoretical speedup)
      results.csv, results.json        one row per finished run (branch, replicate, level)
      aggregate.csv                    mean, std and 95% CI per branch and level over replicates
      layers.csv                       per-layer alive / total / remaining per run
      report/                          report.html and its figures
      wandb/                           offline W&B runs (when tracking is on)
      replicate_0/
        rewind_point.pt                training state at step k (written once level 0 is done)
        ticket/level_03/               the main line; controls in random_reinit/, random_mask/, oneshot/
          mask.safetensors             the mask this run trains with
          ticket.safetensors           mask + the weights it starts from (θk ⊙ m)
          final_state.pt               trained state, kept where a later run starts from it
          checkpoints/                 mid-run checkpoints (removed when the run is done)
          logs/                        the run's CSV log
          metrics.json                 written last: the run is done

Example:
    >>> import tempfile
    >>> from lightning_lottery.store import ExperimentStore, Run
    >>> store = ExperimentStore(tempfile.mkdtemp())
    >>> store.run_dir(Run(0, "ticket", 3)).relative_to(store.root).as_posix()
    'replicate_0/ticket/level_03'
    >>> store.results()
    []
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lightning_lottery.masks import atomic_write_bytes

#: The columns of ``results.csv`` in order (per-layer fractions go to ``layers.csv``).
RESULT_COLUMNS: tuple[str, ...] = (
    "branch",
    "replicate",
    "seed",
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


@dataclass(frozen=True, order=True)
class Run:
    """One training run of an experiment: a (replicate, branch, level)."""

    replicate: int
    branch: str
    level: int

    def with_branch(self, branch: str) -> Run:
        return replace(self, branch=branch)

    def next_level(self) -> Run:
        return replace(self, level=self.level + 1)

    def previous_level(self) -> Run:
        return replace(self, level=self.level - 1)

    def __str__(self) -> str:
        return f"{self.branch} level {self.level} (replicate {self.replicate})"


class ExperimentStore:
    """Paths and durable writes of one experiment directory."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    # paths
    @property
    def experiment_file(self) -> Path:
        return self.root / "experiment.json"

    @property
    def costs_file(self) -> Path:
        return self.root / "costs.json"

    def rewind_file(self, replicate: int) -> Path:
        return self.root / f"replicate_{replicate}" / "rewind_point.pt"

    def run_dir(self, run: Run) -> Path:
        return self.root / f"replicate_{run.replicate}" / run.branch / f"level_{run.level:02d}"

    def mask_file(self, run: Run) -> Path:
        return self.run_dir(run) / "mask.safetensors"

    def ticket_file(self, run: Run) -> Path:
        return self.run_dir(run) / "ticket.safetensors"

    def final_state_file(self, run: Run) -> Path:
        return self.run_dir(run) / "final_state.pt"

    def metrics_file(self, run: Run) -> Path:
        return self.run_dir(run) / "metrics.json"

    def checkpoint_dir(self, run: Run) -> Path:
        return self.run_dir(run) / "checkpoints"

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

    def write_costs(self, costs: Mapping[str, Any]) -> None:
        write_json(self.costs_file, dict(costs))

    # runs
    def is_done(self, run: Run) -> bool:
        return self.metrics_file(run).is_file()

    def finished_runs(self) -> list[Run]:
        found = []
        for path in self.root.glob("replicate_*/*/level_*/metrics.json"):
            level_dir = path.parent
            found.append(Run(int(level_dir.parent.parent.name[10:]), level_dir.parent.name, int(level_dir.name[6:])))
        return sorted(found, key=lambda r: (r.replicate, r.level, r.branch != "ticket", r.branch))

    def read_metrics(self, run: Run) -> dict[str, Any]:
        return read_json(self.metrics_file(run))

    def finish(self, run: Run, metrics: Mapping[str, Any]) -> None:
        """Mark ``run`` done by writing its metrics (last, atomically), then rebuild the results tables."""
        write_json(self.metrics_file(run), dict(metrics))
        self.write_results()

    def results(self) -> list[dict[str, Any]]:
        """The rows of all finished runs, by replicate, level and branch (the main line first)."""
        return [self.read_metrics(run) for run in self.finished_runs()]

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

    def write_aggregate(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """``aggregate.csv``: mean, std and 95% CI over replicates per branch and level."""
        from lightning_lottery.aggregate import write_aggregate

        write_aggregate(rows, self.root / "aggregate.csv")

    # the W&B summary run is logged once per set of results
    def summary_logged(self) -> bool:
        marker = self.root / "wandb_summary.json"
        return marker.is_file() and read_json(marker).get("runs") == len(self.finished_runs())

    def mark_summary_logged(self) -> None:
        write_json(self.root / "wandb_summary.json", {"runs": len(self.finished_runs())})


def _csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return buf.getvalue()


def _first_difference(old: Any, new: Any, path: str = "") -> str:
    """The first setting (dotted path) whose value differs, also when one side lacks it."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            here = f"{path}.{key}" if path else str(key)
            if key not in old:
                return (f"{here}: not in the stored configuration, now {new[key]!r} (a setting added since the "
                        "experiment started, e.g. by a newer version: the code that started it can finish it)")
            if key not in new:
                return f"{here}: was {old[key]!r}, not set now"
            if old[key] != new[key]:
                return _first_difference(old[key], new[key], here)
        return "no difference found"
    return f"{path or 'config'}: was {old!r}, now {new!r}"
