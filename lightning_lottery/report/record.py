"""What the report knows of an experiment, read through :class:`~lightning_lottery.store.ExperimentStore`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_lottery import measured
from lightning_lottery.branches import main_branch_of
from lightning_lottery.store import ExperimentStore, Progress

__all__ = ["ExperimentRecord", "load_experiment", "main_branch", "triple"]


@dataclass
class ExperimentRecord:
    """What the report reads from an experiment directory."""

    root: Path
    id: str
    hash: str
    config: dict[str, Any]
    rows: list[dict[str, Any]]
    costs: dict[str, dict[str, int]] | None = None
    notes: list[str] = field(default_factory=list)
    progress: Progress | None = None  # runs and levels done / planned (None: a copied results table)


def load_experiment(experiment_dir: str | os.PathLike) -> ExperimentRecord:
    """Read ``experiment.json``, the finished runs' rows (or ``results.json`` when the directory has no runs) and
    ``costs.json`` when present, through the experiment store.

    Example:
        >>> import json, pathlib, tempfile
        >>> out = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (out / "results.json").write_text(json.dumps([{"branch": "ticket", "level": 0, "remaining": 1.0}]))
        >>> record = load_experiment(out)
        >>> record.id, len(record.rows), record.costs, record.notes
        ('unknown experiment', 1, None, ['experiment.json is missing: no experiment id or configuration to show.'])
    """
    root = Path(experiment_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such experiment directory")
    store = ExperimentStore(root)
    notes: list[str] = []
    meta = store.read_experiment() or {}
    if not meta:
        notes.append("experiment.json is missing: no experiment id or configuration to show.")
    rows = measured.merge(store.results(), measured.read(root))  # measured speedups (lightning-lottery benchmark)
    progress = store.progress() if store.finished_runs() else None
    if progress is not None and not progress.complete:
        notes.insert(0, f"This experiment is {progress.describe()}: the figures and tables show the finished runs "
                        "only; rerun the same command to finish it.")
    if not rows:
        raise FileNotFoundError(f"{root}: no results to report: no finished run "
                                "(replicate_*/<branch>/level_*/metrics.json) and no results.json")
    return ExperimentRecord(root=root, id=str(meta.get("id") or "unknown experiment"), hash=str(meta.get("hash") or ""),
                            config=dict(meta.get("config") or {}), rows=list(rows), costs=store.read_costs(),
                            notes=notes, progress=progress)


def main_branch(record: ExperimentRecord) -> str:
    """The experiment's main line, from the branch registry: that of its ``lottery.rewind`` when configured, else
    the main-line branch among the rows.

    Example:
        >>> rows = [{"branch": "random_mask"}, {"branch": "weights_rewind"}]
        >>> main_branch(ExperimentRecord(Path("."), "e", "", {"lottery": {"rewind": "weights"}}, rows))
        'weights_rewind'
    """
    names = {str(r.get("branch", "ticket")) for r in record.rows}
    return main_branch_of(names, rewind=(record.config.get("lottery") or {}).get("rewind"))


def _class_name(section: Any) -> str | None:
    if isinstance(section, Mapping) and isinstance(section.get("class_path"), str):
        return section["class_path"].rsplit(".", 1)[-1]
    return None


def triple(config: Mapping[str, Any]) -> tuple[str, str, str]:
    """(dataset, architecture, metric) from the configuration's data and model class paths.

    Example:
        >>> triple({"data": {"class_path": "lightning_lottery.data.FashionMNISTDataModule"},
        ...         "model": {"class_path": "lightning_lottery.models.LeNet300100"}})
        ('FashionMNIST', 'LeNet300100', 'top-1 test accuracy')
    """
    dataset = _class_name(config.get("data")) or "unknown dataset"
    for suffix in ("DataModule", "Module", "Data"):
        if dataset.endswith(suffix) and len(dataset) > len(suffix):
            dataset = dataset[: -len(suffix)]
            break
    return dataset, _class_name(config.get("model")) or "unknown architecture", "top-1 test accuracy"
