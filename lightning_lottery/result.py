"""``RunResult``: what one run measured — the one definition of the results' fields.

The columns of ``results.csv``, the per-layer columns of ``layers.csv``, the keys of each run's ``metrics.json``
and the W&B summary keys are all derived from :class:`RunResult`'s fields (their ``metadata``), never listed by
hand elsewhere. Pure Python.

Example:
    >>> from lightning_lottery.result import RESULT_COLUMNS, SUMMARY_KEYS
    >>> RESULT_COLUMNS[:4], "wall_s" in SUMMARY_KEYS, "layers" in RESULT_COLUMNS
    (('branch', 'replicate', 'seed', 'level'), True, False)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = ["LAYER_COLUMNS", "RESULT_COLUMNS", "SUMMARY_KEYS", "RunResult", "budget"]

_COLUMN = {"column": True}
_BOTH = {"column": True, "summary": True}
#: A stability run's fields: in its ``metrics.json`` and summary only, left out of every other run's.
_STABILITY = {"summary": True, "optional": True}
#: An early-bird run's fields (``lottery.early_bird``): columns and summary keys, left out of other runs' metrics.
_EARLY_BIRD = {"column": True, "summary": True, "optional": True}


@dataclass(frozen=True)
class RunResult:
    """The results of one run (a row of ``results.csv`` plus its per-layer counts and validation history).

    Fields marked ``column`` are the columns of ``results.csv`` (in this order); fields marked ``summary`` go to
    every logger (as ``lottery/<key>``) and to the W&B run summary. Fields marked ``optional`` (a ``stability``
    run's barriers and curve) are left out of ``to_dict`` when unset, so other runs' ``metrics.json`` keep their
    keys. A stability run's ``test_acc`` / ``test_loss`` are the mean of its two copies' (α = 0 and 1).
    """

    branch: str = field(metadata=_COLUMN)
    replicate: int = field(metadata=_COLUMN)
    seed: int = field(metadata=_COLUMN)
    level: int = field(metadata=_COLUMN)
    remaining: float = field(metadata=_BOTH)
    alive: int = field(metadata=_COLUMN)
    total: int = field(metadata=_COLUMN)
    test_acc: Optional[float] = field(default=None, metadata=_BOTH)
    test_loss: Optional[float] = field(default=None, metadata=_BOTH)
    early_stop_iter: Optional[int] = field(default=None, metadata=_BOTH)
    early_stop_test_acc: Optional[float] = field(default=None, metadata=_BOTH)
    min_val_loss: Optional[float] = field(default=None, metadata=_BOTH)
    best_val_acc: Optional[float] = field(default=None, metadata=_BOTH)
    steps: int = field(default=0, metadata=_BOTH)
    wall_s: float = field(default=0.0, metadata=_BOTH)
    rewind_step: int = 0
    layers: dict[str, dict[str, float]] = field(default_factory=dict)
    val_history: list[dict[str, float]] = field(default_factory=list)
    barrier_test_err: Optional[float] = field(default=None, metadata=_STABILITY)
    barrier_train_loss: Optional[float] = field(default=None, metadata=_STABILITY)
    #: A stability run's rewind step k when ``lottery.stability.at`` lists several (``"500it"``).
    at: Optional[str] = field(default=None, metadata={"optional": True})
    #: ``{alpha, test_err, test_loss, train_err, train_loss}`` per α of the interpolation.
    stability_curve: list[dict[str, float]] = field(default_factory=list, metadata={"optional": True})
    #: The step at which the early-bird ticket was declared (``None``: not declared, or no ``lottery.early_bird``).
    early_bird_step: Optional[int] = field(default=None, metadata=_EARLY_BIRD)
    #: The training steps not trained because the early-bird ticket stopped the fit (against full IMP's budget).
    steps_saved: Optional[int] = field(default=None, metadata=_EARLY_BIRD)

    def to_dict(self) -> dict[str, Any]:
        """The row as ``metrics.json`` holds it (optional fields only when set)."""
        row = dataclasses.asdict(self)
        for f in dataclasses.fields(self):
            if f.metadata.get("optional") and row[f.name] in (None, []):
                del row[f.name]
        return row

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> RunResult:
        """A result from a ``metrics.json`` row (keys this version does not know are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in names})

    def summary(self) -> dict[str, float]:
        """The summary values that are set, as floats (what every logger receives)."""
        return {k: float(getattr(self, k)) for k in SUMMARY_KEYS if getattr(self, k) is not None}


def budget(row: Mapping[str, Any]) -> int:
    """The steps a run was given: those it trained plus those an early-bird stop saved (full IMP's budget).

    Example:
        >>> budget({"steps": 300, "steps_saved": 700}), budget({"steps": 1000})
        (1000, 1000)
    """
    return int(row["steps"]) + int(row.get("steps_saved") or 0)


#: The columns of ``results.csv``, in order.
RESULT_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(RunResult) if f.metadata.get("column"))
#: The metrics of a run that go to every logger and to the W&B run summary.
SUMMARY_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(RunResult) if f.metadata.get("summary"))
#: The columns of ``layers.csv`` (one row per run and prunable parameter).
LAYER_COLUMNS: tuple[str, ...] = ("branch", "replicate", "level", "layer", "alive", "total", "remaining")
