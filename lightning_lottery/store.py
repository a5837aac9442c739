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
        rewind_points/, stability/     the instability analysis's (lightning_lottery.stability_files)
        ticket/level_03/               the main line; controls in random_reinit/, random_mask/, oneshot/
          mask.safetensors             the mask this run trains with
          ticket.safetensors           mask + the weights it starts from (θk ⊙ m)
          final_state.pt               trained state, kept where a later run starts from it
          checkpoints/                 mid-run checkpoints (removed when the run is done)
          logs/                        the run's CSV log
          manifest.json                sha256 of every file the run produced (metrics.json included)
          metrics.json                 written last: the run is done
      .lock                            the running process (host, pid, since): one writer per directory

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

import hashlib
import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_lottery.atomic import atomic_write_bytes
from lightning_lottery.branches import main_line_names
from lightning_lottery.dirlock import DirectoryLock, DirectoryLockedError
from lightning_lottery.masks import Mask, load_mask, save_mask
from lightning_lottery.plan import Plan, Run
from lightning_lottery.result import LAYER_COLUMNS, RESULT_COLUMNS
from lightning_lottery.rewind import RewindState
from lightning_lottery.stability_files import StabilityFiles
from lightning_lottery.store_format import (
    LevelInfo,
    Progress,
    canonical_json,
    config_hash,
    csv_text,
    file_sha256,
    first_difference,
    json_bytes,
)
from lightning_lottery.ticket import Ticket

__all__ = ["DamagedExperimentError", "ExperimentLockedError", "ExperimentMismatchError", "ExperimentStore",
           "LevelInfo", "Progress", "canonical_json", "config_hash", "read_json", "write_json"]

_TMP = re.compile(r"^\..+\.tmp-\d+$")  # atomic.temporary_name


class ExperimentMismatchError(RuntimeError):
    """The experiment directory cannot be used for this configuration (another one, damaged, or in use)."""


class DamagedExperimentError(ExperimentMismatchError):
    """``experiment.json`` is unreadable: the directory's experiment cannot be identified."""


class ExperimentLockedError(ExperimentMismatchError, DirectoryLockedError):
    """Another live process is writing into the experiment directory."""


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_bytes(path, json_bytes(obj))


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, naming the file in the error if it is corrupt."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: corrupt JSON ({err}); delete it to recompute that part") from err


class ExperimentStore(StabilityFiles):
    """Paths, durable writes and reads of one experiment directory."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self._lock = DirectoryLock(self.root / ".lock")
        self._produced: list[Path] = []  # files written since the last finish(): the products of the run

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
        return self.root / f"replicate_{run.replicate}" / run.branch / run.at / f"level_{run.level:02d}"

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

    def manifest_file(self, run: Run) -> Path:
        return self.run_dir(run) / "manifest.json"

    # ------------------------------------------------------------------------------ one writer per directory
    def lock(self) -> None:
        """Take the directory for this process (before anything is written) or raise
        :class:`ExperimentLockedError` naming the process that has it; a dead holder's lock is taken over."""
        try:
            self._lock.acquire()
        except DirectoryLockedError as err:
            raise ExperimentLockedError(str(err)) from None

    def unlock(self) -> None:
        self._lock.release()

    @property
    def taken_over(self) -> dict[str, Any]:
        """The holder recorded in the lock file when it was taken (a process that died holding it), if any."""
        return dict(self._lock.previous)

    # ------------------------------------------------------------------------------------- the experiment
    def bind(self, identity: Mapping[str, Any], name: str, config: Mapping[str, Any] | None = None,
             runs: Sequence[Run] | None = None) -> str:
        """Create the directory for the experiment ``identity`` (the settings that define it) or check that it was
        made for the same one; returns the experiment id ``name-<hash>``. ``config`` (the whole resolved
        configuration) is stored beside it for the report and for reruns, ``runs`` (the plan) for
        :meth:`progress`."""
        digest = config_hash(identity)
        plan = [[r.replicate, r.branch, r.level, *[r.at][:bool(r.at)]] for r in runs] if runs is not None else None
        if self.experiment_file.exists():
            existing = self.read_experiment() or {}
            if existing.get("hash") != digest:
                theirs = existing.get("identity", existing.get("config", {}))
                diff = first_difference(theirs, json.loads(canonical_json(identity)))
                raise ExperimentMismatchError(
                    f"{self.root} holds an experiment with a different configuration ({diff}). "
                    "Use another output directory, or delete this one to start over."
                )
            if plan is not None and existing.get("plan") != plan:  # written before the plan was recorded
                write_json(self.experiment_file, {**existing, "plan": plan})
            return str(existing["id"])
        experiment_id = f"{name}-{digest[:8]}"
        record = {"id": experiment_id, "hash": digest, "identity": json.loads(canonical_json(identity)),
                  "config": json.loads(canonical_json(config if config is not None else identity))}
        write_json(self.experiment_file, {**record, "plan": plan} if plan is not None else record)
        return experiment_id

    def read_experiment(self) -> dict[str, Any] | None:
        """``experiment.json`` (id, hash, identity, config, plan), or ``None`` when there is none; raises
        :class:`DamagedExperimentError` naming the file when it is unreadable."""
        if not self.experiment_file.is_file():
            return None
        try:
            record = read_json(self.experiment_file)
            if not isinstance(record, dict) or "id" not in record or "hash" not in record:
                raise ValueError("no experiment id or hash in it")
            return record
        except (ValueError, UnicodeDecodeError) as err:
            raise DamagedExperimentError(
                f"{self.experiment_file} is damaged (unreadable: {err.__cause__ or err}). It identifies the experiment, "
                "so the runs here cannot be checked against this configuration: restore it from a backup, or use "
                "another output directory.") from None

    def progress(self) -> Progress:
        """Runs done / planned and levels done / planned (a level is done when all its runs are); without a
        recorded plan, the finished runs are all there is."""
        meta = self.read_experiment() or {}
        finished = set(self.finished_runs())
        planned = [Run(int(r), str(b), int(lv), *at) for r, b, lv, *at in meta.get("plan") or []] or sorted(finished)
        levels = sorted({r.level for r in planned})
        levels_done = sum(all(r in finished for r in planned if r.level == lv) for lv in levels)
        return Progress(sum(r in finished for r in planned), len(planned), levels_done, len(levels))

    def write_costs(self, costs: Mapping[str, Any]) -> None:
        write_json(self.costs_file, dict(costs))

    def read_costs(self) -> dict[str, dict[str, int]] | None:
        """``costs.json``, or ``None`` when it is missing or unreadable (it is measured again)."""
        try:
            return read_json(self.costs_file) if self.costs_file.is_file() else None
        except (ValueError, UnicodeDecodeError):
            return None

    # ---------------------------------------------------------------------------------------- run files
    def save_mask(self, run: Run, mask: Mask) -> None:
        meta = {"level": str(run.level), "branch": run.branch}
        save_mask(mask, self.mask_file(run), meta)
        self._produced.append(self.mask_file(run))

    def load_mask(self, run: Run) -> Mask:
        return load_mask(self.mask_file(run))

    def save_rewind_point(self, replicate: int, state: RewindState) -> None:
        state.save(self.rewind_file(replicate))
        self._produced.append(self.rewind_file(replicate))

    def load_rewind_point(self, replicate: int) -> RewindState:
        return RewindState.load(self.rewind_file(replicate))

    def save_final_state(self, run: Run, state: RewindState) -> None:
        state.save(self.final_state_file(run))
        self._produced.append(self.final_state_file(run))

    def load_final_state(self, run: Run) -> RewindState:
        return RewindState.load(self.final_state_file(run))

    def save_ticket(self, run: Run, ticket: Ticket) -> Path:
        path = self.ticket_file(run)
        ticket.save(path)
        self._produced.append(path)
        return path

    def remove_checkpoints(self, run: Run) -> None:
        shutil.rmtree(self.checkpoint_dir(run), ignore_errors=True)

    # --------------------------------------------------------------------------------------------- runs
    def is_done(self, run: Run) -> bool:
        return self.metrics_file(run).is_file()

    def verify(self, run: Run) -> str | None:
        """``None`` when every file of the finished ``run`` matches its manifest, else what is wrong with which file
        (``"replicate_0/ticket/level_01/ticket.safetensors is damaged (checksum mismatch)"``)."""
        try:
            manifest = read_json(self.manifest_file(run)) if self.manifest_file(run).is_file() else None
        except (ValueError, UnicodeDecodeError):
            return f"{self._rel(self.manifest_file(run))} is damaged (unreadable)"
        if manifest is None:  # written before manifests: its metrics must at least be readable
            try:
                self.read_metrics(run)
                return None
            except (ValueError, UnicodeDecodeError):
                return f"{self._rel(self.metrics_file(run))} is damaged (unreadable)"
        for rel, digest in dict(manifest.get("files", {})).items():
            path = self.root / rel
            if not path.is_file():
                return f"{rel} is missing"
            if file_sha256(path) != digest:
                return f"{rel} is damaged (checksum mismatch)"
        return None

    def finished_runs(self) -> list[Run]:
        """The finished runs found in the directory, by replicate, level and branch (the main line first)."""
        paths = [*self.root.glob("replicate_*/*/level_*/metrics.json"),
                 *self.root.glob("replicate_*/*/*/level_*/metrics.json")]  # stability/<k>/level_LL
        found = [Run(int(p.parts[0][10:]), p.parts[1], int(p.parts[-2][6:]), *p.parts[2:-2])
                 for p in (path.relative_to(self.root) for path in paths)]
        main = set(main_line_names())
        return sorted(found, key=lambda r: (r.replicate, r.level, r.branch not in main, r.branch, len(r.at), r.at))

    def read_metrics(self, run: Run) -> dict[str, Any]:
        return read_json(self.metrics_file(run))

    def finish(self, run: Run, metrics: Mapping[str, Any]) -> None:
        """Mark ``run`` done: its manifest (the sha256 of every file it wrote since the last ``finish`` and of its
        metrics), then its metrics (last, atomically); then rebuild the results tables."""
        data = json_bytes(dict(metrics))
        files = {self._rel(p): file_sha256(p) for p in dict.fromkeys(self._produced) if p.is_file()}
        files[self._rel(self.metrics_file(run))] = hashlib.sha256(data).hexdigest()
        write_json(self.manifest_file(run), {"files": files})
        atomic_write_bytes(self.metrics_file(run), data)
        self._produced = []
        self.write_results()

    def unfinish(self, run: Run) -> None:
        """Mark ``run`` as not done (it is trained again); its other files are overwritten then."""
        self.metrics_file(run).unlink(missing_ok=True)
        self.manifest_file(run).unlink(missing_ok=True)

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    # ---------------------------------------------------------------------------------- on every start
    def prepare(self, plan: Plan, keep_checkpoints: bool = False, say: Any = print) -> list[Run]:
        """On every start (the lock held, the experiment bound): remove leftover temporary files and the checkpoints
        of finished runs, check every finished run against its manifest — a damaged one is ``say``-ed in one line
        and it and the runs depending on it are marked not done — and rebuild the results tables and
        ``aggregate.csv`` from the runs. Returns the runs marked not done."""
        for path in self.root.rglob(".*.tmp-*"):
            if _TMP.match(path.name) and path.is_file():
                path.unlink(missing_ok=True)
        redo: list[Run] = []
        for run in plan.runs():
            if run in redo or not self.is_done(run):
                continue
            problem = self.verify(run)
            if problem is None:
                if not keep_checkpoints:
                    self.remove_checkpoints(run)
                continue
            later = [r for r in plan.dependents(run) if self.is_done(r) and r not in redo]
            say(f"[lottery] {problem}: recomputing that run and the {len(later)} run(s) that depend on it")
            for r in [run, *later]:
                self.unfinish(r)
                self.remove_checkpoints(r)
                redo.append(r)
        if self.costs_file.is_file() and self.read_costs() is None:
            say(f"[lottery] {self._rel(self.costs_file)} is damaged (unreadable): measuring it again")
            self.costs_file.unlink()
        self.write_results()
        self.write_aggregate(self.results())
        return redo

    def results(self) -> list[dict[str, Any]]:
        """The rows of all finished runs; a directory holding only ``results.json`` (a copied table) gives that."""
        runs = self.finished_runs()
        if not runs and (self.root / "results.json").is_file():
            return list(read_json(self.root / "results.json"))
        return [self.read_metrics(run) for run in runs]

    def write_results(self) -> None:
        """``results.json``, ``results.csv`` and ``layers.csv`` from the finished runs (a file already holding
        exactly that is left alone)."""
        rows = self.results()
        layer_rows = [
            {"branch": r["branch"], "replicate": r["replicate"], "level": r["level"], "layer": name, **vals}
            for r in rows
            for name, vals in r.get("layers", {}).items()
        ]
        _refresh(self.root / "results.json", json_bytes(rows))
        _refresh(self.root / "results.csv", csv_text(rows, RESULT_COLUMNS).encode())
        _refresh(self.root / "layers.csv", csv_text(layer_rows, LAYER_COLUMNS).encode())

    def write_aggregate(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """``aggregate.csv``: mean, std and 95% CI over replicates per branch and level."""
        from lightning_lottery.aggregate import write_aggregate

        path = self.root / "aggregate.csv"
        fresh = write_aggregate(rows, path.with_name(".aggregate.csv.new"))
        _refresh(path, fresh.read_bytes())
        fresh.unlink()

    def has_aggregate(self) -> bool:
        return (self.root / "aggregate.csv").is_file()

    # the W&B summary run is logged once per set of results
    def summary_logged(self) -> bool:
        marker = self.root / "wandb_summary.json"
        try:
            return marker.is_file() and read_json(marker).get("runs") == len(self.finished_runs())
        except (ValueError, AttributeError, UnicodeDecodeError):
            return False

    def mark_summary_logged(self) -> None:
        write_json(self.root / "wandb_summary.json", {"runs": len(self.finished_runs())})


def _refresh(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` unless it already holds exactly that."""
    try:
        if path.read_bytes() == data:
            return
    except OSError:
        pass
    atomic_write_bytes(path, data)


