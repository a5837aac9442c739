"""Replicates → summary statistics: mean, sample standard deviation and a Student-t 95% confidence interval.

Rows of ``results.json`` are grouped by ``(branch, level, at)`` (``at``: a stability run's rewind step when
``lottery.stability.at`` lists several, else empty); every metric is summarised over the rows of the
group where it is not null (``None`` or NaN), so a replicate with a missing value only drops out of that
metric. Pure Python + numpy; the t quantile comes from scipy (a dependency of scikit-learn).

Example:
    >>> rows = [{"branch": "ticket", "level": 1, "test_acc": a} for a in (0.90, 0.92, 0.94)]
    >>> [stats] = aggregate(rows, metrics=("test_acc",))
    >>> stats["n"], round(stats["test_acc_mean"], 4), round(stats["test_acc_std"], 4)
    (3, 0.92, 0.02)
    >>> round(stats["test_acc_ci95"], 4)  # t(0.975, 2) * 0.02 / sqrt(3)
    0.0497
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lightning_lottery.atomic import atomic_write_bytes
from lightning_lottery.branches import main_line_names

__all__ = ["DEFAULT_METRICS", "aggregate", "aggregate_columns", "branch_sort_key", "t_quantile", "write_aggregate"]

#: Metrics summarised by default.
DEFAULT_METRICS: tuple[str, ...] = ("test_acc", "early_stop_iter", "early_stop_test_acc", "remaining")

#: Summary fields written per metric (``<metric>_<field>``).
STAT_FIELDS: tuple[str, ...] = ("mean", "std", "ci95", "n")


def branch_sort_key(branch: str) -> tuple[bool, str]:
    """Order of branches in tables and legends: main lines (``ticket``, ``weights_rewind``, ...) first, then the
    controls, each alphabetical.

    Example:
        >>> sorted(["random_reinit", "weights_rewind", "random_mask"], key=branch_sort_key)
        ['weights_rewind', 'random_mask', 'random_reinit']
    """
    return (branch not in main_line_names(), branch)


def t_quantile(prob: float, dof: int) -> float:
    """Quantile ``prob`` of Student's t distribution with ``dof`` degrees of freedom.

    Example:
        >>> round(t_quantile(0.975, 4), 4)
        2.7764
    """
    from scipy.stats import t  # imported lazily: only needed once replicates exist

    return float(t.ppf(prob, dof))


def _number(value: Any) -> float | None:
    """``value`` as a float, or ``None`` when it is null, NaN or not a number."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _summary(values: Sequence[float]) -> dict[str, Any]:
    n = len(values)
    if n == 0:
        return {"mean": None, "std": None, "ci95": None, "n": 0}
    arr = np.asarray(values, dtype=np.float64)
    mean = float(arr.mean())
    if n == 1:
        return {"mean": mean, "std": None, "ci95": None, "n": 1}
    std = float(arr.std(ddof=1))
    return {"mean": mean, "std": std, "ci95": t_quantile(0.975, n - 1) * std / math.sqrt(n), "n": n}


def aggregate(
    rows: Iterable[Mapping[str, Any]],
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> list[dict[str, Any]]:
    """Summarise ``rows`` per ``(branch, level, at)``.

    Each output row has ``branch``, ``level``, ``at`` (``None`` unless the rows name a rewind step), ``n`` (rows in the group, i.e. replicates) and, per metric,
    ``<metric>_mean``, ``<metric>_std`` (ddof=1), ``<metric>_ci95`` (half-width of the 95% confidence interval
    of the mean, ``t(0.975, n-1) * std / sqrt(n)``) and ``<metric>_n`` (non-null values). ``std`` and ``ci95``
    are ``None`` below two values; ``mean`` is ``None`` without any. Output is sorted by branch (``ticket``
    first) then level.

    Example:
        >>> rows = [{"branch": "ticket", "level": 0, "replicate": r, "test_acc": 0.9 + r / 100} for r in (0, 1)]
        >>> out = aggregate(rows, metrics=("test_acc",))
        >>> out[0]["n"], out[0]["test_acc_mean"], round(out[0]["test_acc_std"], 6)
        (2, 0.905, 0.007071)
    """
    groups: dict[tuple[str, int, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        key = (str(row.get("branch", "ticket")), int(row["level"]), str(row.get("at") or ""))
        groups.setdefault(key, []).append(row)
    out = []
    for branch, level, at in sorted(groups, key=lambda k: (branch_sort_key(k[0]), k[1], len(k[2]), k[2])):
        members = groups[(branch, level, at)]
        stats: dict[str, Any] = {"branch": branch, "level": level, "at": at or None, "n": len(members)}
        for metric in metrics:
            values = [v for v in (_number(r.get(metric)) for r in members) if v is not None]
            stats.update({f"{metric}_{key}": val for key, val in _summary(values).items()})
        out.append(stats)
    return out


def aggregate_columns(metrics: Sequence[str] = DEFAULT_METRICS) -> list[str]:
    """Column order of :func:`aggregate`'s rows.

    Example:
        >>> aggregate_columns(("test_acc",))
        ['branch', 'level', 'at', 'n', 'test_acc_mean', 'test_acc_std', 'test_acc_ci95', 'test_acc_n']
    """
    return ["branch", "level", "at", "n", *(f"{m}_{field}" for m in metrics for field in STAT_FIELDS)]


def write_aggregate(
    rows: Iterable[Mapping[str, Any]],
    path: str | os.PathLike,
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> Path:
    """Write :func:`aggregate` of ``rows`` as CSV (nulls as empty cells, floats at full precision).

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "aggregate.csv"
        >>> _ = write_aggregate([{"branch": "ticket", "level": 0, "test_acc": 0.5}], path, metrics=("test_acc",))
        >>> path.read_text().splitlines()
        ['branch,level,at,n,test_acc_mean,test_acc_std,test_acc_ci95,test_acc_n', 'ticket,0,,1,0.5,,,1']
    """
    columns = aggregate_columns(metrics)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for stats in aggregate(rows, metrics):
        writer.writerow({k: ("" if stats.get(k) is None else stats[k]) for k in columns})
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue().encode())
    return path
