"""The experiment directory: the only module that writes or reads an experiment's files.

Every write goes through :mod:`lightning_lottery.atomic` (a reader sees the old file or the new one). The results
tables are rebuilt from the finished runs' ``metrics.json``; their columns come from
:class:`~lightning_lottery.result.RunResult`.

Layout::

    OUT/
      experiment.json                  id, identity hash, identity (non-default settings) and resolved configuration
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
    >>> from lightning_lottery.store import ExperimentStore
    >>> from lightning_lottery.plan import Run
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
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_lottery.atomic import atomic_write_bytes
from lightning_lottery.branches import main_line_names
from lightning_lottery.masks import Mask, load_mask, save_mask
from lightning_lottery.plan import Run
from lightning_lottery.result import LAYER_COLUMNS, RESULT_COLUMNS
from lightning_lottery.rewind import RewindState
from lightning_lottery.ticket import Ticket

__all__ = ["ExperimentMismatchError", "ExperimentStore", "LevelInfo", "canonical_json", "config_hash", "read_json",
           "write_json"]


class ExperimentMismatchError(RuntimeError):
    """The experiment directory belongs to a different configuration."""


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
    """Paths, durable writes and reads of one experiment directory."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    # ---------------------------------------------------------------------------------------------- paths
    @property
    def experiment_file(self) -> Path:
        return self.root / "experiment.json"

    @property
    def costs_file(self) -> Path:
        return self.root / "costs.json"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

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

    # ------------------------------------------------------------------------------------- the experiment
    def bind(self, identity: Mapping[str, Any], name: str, config: Mapping[str, Any] | None = None) -> str:
        """Create the directory for the experiment ``identity`` (the settings that define it) or check that it was
        made for the same one; returns the experiment id ``name-<hash>``. ``config`` (the whole resolved
        configuration) is stored beside it for the report and for reruns."""
        digest = config_hash(identity)
        if self.experiment_file.exists():
            existing = read_json(self.experiment_file)
            if existing.get("hash") != digest:
                theirs = existing.get("identity", existing.get("config", {}))
                diff = _first_difference(theirs, json.loads(canonical_json(identity)))
                raise ExperimentMismatchError(
                    f"{self.root} holds an experiment with a different configuration ({diff}). "
                    "Use another output directory, or delete this one to start over."
                )
            return str(existing["id"])
        experiment_id = f"{name}-{digest[:8]}"
        write_json(self.experiment_file, {
            "id": experiment_id, "hash": digest, "identity": json.loads(canonical_json(identity)),
            "config": json.loads(canonical_json(config if config is not None else identity))})
        return experiment_id

    def read_experiment(self) -> dict[str, Any] | None:
        """``experiment.json`` (id, hash, identity, config), or ``None`` when there is none."""
        return read_json(self.experiment_file) if self.experiment_file.is_file() else None

    def write_costs(self, costs: Mapping[str, Any]) -> None:
        write_json(self.costs_file, dict(costs))

    def read_costs(self) -> dict[str, dict[str, int]] | None:
        return read_json(self.costs_file) if self.costs_file.is_file() else None

    # ---------------------------------------------------------------------------------------- run files
    def save_mask(self, run: Run, mask: Mask) -> None:
        meta = {"level": str(run.level), "branch": run.branch}
        save_mask(mask, self.mask_file(run), meta)

    def load_mask(self, run: Run) -> Mask:
        return load_mask(self.mask_file(run))

    def save_rewind_point(self, replicate: int, state: RewindState) -> None:
        state.save(self.rewind_file(replicate))

    def load_rewind_point(self, replicate: int) -> RewindState:
        return RewindState.load(self.rewind_file(replicate))

    def save_final_state(self, run: Run, state: RewindState) -> None:
        state.save(self.final_state_file(run))

    def load_final_state(self, run: Run) -> RewindState:
        return RewindState.load(self.final_state_file(run))

    def save_ticket(self, run: Run, ticket: Ticket) -> Path:
        path = self.ticket_file(run)
        ticket.save(path)
        return path

    def remove_checkpoints(self, run: Run) -> None:
        shutil.rmtree(self.checkpoint_dir(run), ignore_errors=True)

    # --------------------------------------------------------------------------------------------- runs
    def is_done(self, run: Run) -> bool:
        return self.metrics_file(run).is_file()

    def finished_runs(self) -> list[Run]:
        """The finished runs found in the directory, by replicate, level and branch (the main line first)."""
        found = []
        for path in self.root.glob("replicate_*/*/level_*/metrics.json"):
            level_dir = path.parent
            found.append(Run(int(level_dir.parent.parent.name[10:]), level_dir.parent.name, int(level_dir.name[6:])))
        main = set(main_line_names())
        return sorted(found, key=lambda r: (r.replicate, r.level, r.branch not in main, r.branch))

    def read_metrics(self, run: Run) -> dict[str, Any]:
        return read_json(self.metrics_file(run))

    def finish(self, run: Run, metrics: Mapping[str, Any]) -> None:
        """Mark ``run`` done by writing its metrics (last, atomically), then rebuild the results tables."""
        write_json(self.metrics_file(run), dict(metrics))
        self.write_results()

    def results(self) -> list[dict[str, Any]]:
        """The rows of all finished runs; a directory holding only ``results.json`` (a copied table) gives that."""
        runs = self.finished_runs()
        if not runs and (self.root / "results.json").is_file():
            return list(read_json(self.root / "results.json"))
        return [self.read_metrics(run) for run in runs]

    def write_results(self) -> None:
        """``results.json``, ``results.csv`` and ``layers.csv`` from the finished runs."""
        rows = self.results()
        write_json(self.root / "results.json", rows)
        atomic_write_bytes(self.root / "results.csv", _csv(rows, RESULT_COLUMNS).encode())
        layer_rows = [
            {"branch": r["branch"], "replicate": r["replicate"], "level": r["level"], "layer": name, **vals}
            for r in rows
            for name, vals in r.get("layers", {}).items()
        ]
        atomic_write_bytes(self.root / "layers.csv", _csv(layer_rows, LAYER_COLUMNS).encode())

    def write_aggregate(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """``aggregate.csv``: mean, std and 95% CI over replicates per branch and level."""
        from lightning_lottery.aggregate import write_aggregate

        write_aggregate(rows, self.root / "aggregate.csv")

    def has_aggregate(self) -> bool:
        return (self.root / "aggregate.csv").is_file()

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
                return f"{here}: not set (default) in the stored experiment, now {new[key]!r}"
            if key not in new:
                return f"{here}: was {old[key]!r}, now at its default"
            if old[key] != new[key]:
                return _first_difference(old[key], new[key], here)
        return "no difference found"
    return f"{path or 'config'}: was {old!r}, now {new!r}"
