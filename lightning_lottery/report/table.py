"""The report's table: one row per (branch, level[, rewind step]), means and 95% CIs over replicates, as HTML, Markdown or CSV."""

from __future__ import annotations

import csv
import html
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

from lightning_lottery.aggregate import aggregate
from lightning_lottery.flops import theoretical_speedup

__all__ = ["summary_table", "table_csv", "table_html", "table_markdown"]

#: Columns of the report table: key (as in :func:`summary_table`) and header.
_TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("branch", "branch"),
    ("level", "level"),
    ("at", "rewind step"),
    ("n", "replicates"),
    ("remaining", "% remaining"),
    ("compression", "compression (total/alive)"),
    ("speedup", "theoretical speedup"),
    ("measured_speedup", "measured speedup"),
    ("test_acc", "test acc (%)"),
    ("early_stop_iter", "early-stop iteration"),
    ("early_stop_test_acc", "test acc at early stop (%)"),
    ("early_bird_step", "early-bird step"),
    ("steps_saved", "steps saved"),
)
_TABLE_METRICS = ("remaining", "compression", "speedup", "measured_speedup", "test_acc", "early_stop_iter",
                  "early_stop_test_acc", "early_bird_step", "steps_saved")
#: Shown without a CI (exact per run, or one measurement per run).
_NO_CI = ("remaining", "compression", "speedup", "measured_speedup")
#: Columns shown only when some run has them (``measurements.json``; ``lottery.early_bird``; ``stability.at``).
_OPTIONAL_COLUMNS = ("at", "measured_speedup", "early_bird_step", "steps_saved")
#: Shown as they are (no number formatting).
_TEXT = ("branch", "level", "at", "n")


def _row_speedup(row: Mapping[str, Any], costs: Mapping[str, Mapping[str, int]]) -> float | None:
    """Theoretical speedup of one run from its per-layer counts; ``None`` without them."""
    layers = row.get("layers")
    if not isinstance(layers, Mapping) or not layers:
        return None
    return theoretical_speedup(costs, layers)


def summary_table(rows: Sequence[Mapping[str, Any]], costs: Mapping[str, Mapping[str, int]] | None = None
                  ) -> list[dict[str, Any]]:
    """One row per (branch, level): ``n`` and, for each of remaining, compression (total / alive), theoretical
    speedup (only with ``costs``), measured speedup (only where rows carry ``measured_speedup``, merged from
    ``measurements.json`` by :func:`lightning_lottery.measured.merge`: the exported model against dense, the largest
    batch measured, fewest threads), test_acc, early_stop_iter, early_stop_test_acc, early_bird_step and
    steps_saved (``lottery.early_bird``; ``None`` without it), the mean over replicates
    (``<metric>``) and the 95% CI half-width (``<metric>_ci95``), in the units of ``results.json``.

    Example:
        >>> rows = [{"branch": "ticket", "level": 1, "replicate": r, "remaining": 0.5, "alive": 5, "total": 10,
        ...          "test_acc": acc} for r, acc in enumerate((0.8, 0.9))]
        >>> [t] = summary_table(rows)
        >>> t["n"], t["remaining"], t["compression"], round(t["test_acc"], 6), "speedup" in t
        (2, 0.5, 2.0, 0.85, False)
    """
    augmented = []
    for row in rows:
        extra: dict[str, Any] = {}
        alive, total = row.get("alive"), row.get("total")
        extra["compression"] = total / alive if alive and total else None
        if costs is not None:
            extra["speedup"] = _row_speedup(row, costs)
        augmented.append({**row, **extra})
    measured = any(r.get("measured_speedup") is not None for r in rows)
    metrics = [m for m in _TABLE_METRICS if (costs is not None or m != "speedup")
               and (measured or m != "measured_speedup")]
    out = []
    for stats in aggregate(augmented, metrics=metrics):
        entry: dict[str, Any] = {"branch": stats["branch"], "level": stats["level"], "at": stats["at"],
                                 "n": stats["n"]}
        for metric in metrics:
            entry[metric] = stats[f"{metric}_mean"]
            entry[f"{metric}_ci95"] = stats[f"{metric}_ci95"]
        out.append(entry)
    return out


def _fmt_number(key: str, value: float | None) -> str:
    """``value`` of column ``key`` as shown: percentages with 2 decimals, ratios with 2, iterations whole."""
    if value is None:
        return "–"
    if key in ("remaining", "test_acc", "early_stop_test_acc"):
        return f"{100 * value:.2f}"
    if key in ("early_stop_iter", "early_bird_step", "steps_saved"):
        return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"
    if key in ("compression", "speedup", "measured_speedup"):
        return "∞" if math.isinf(value) else f"{value:.2f}"
    return str(value)


def _fmt_cell(key: str, entry: Mapping[str, Any]) -> str:
    """The shown cell: the mean, ``± CI`` for the measured metrics."""
    text = _fmt_number(key, entry.get(key))
    ci = entry.get(f"{key}_ci95")
    if ci is not None and entry.get(key) is not None and key not in _NO_CI:
        text += f" ± {_fmt_number(key, ci)}"
    return text


def _table_columns(with_speedup: bool, table: Sequence[Mapping[str, Any]] = ()) -> list[tuple[str, str]]:
    """The columns shown: theoretical speedup ``with_speedup``; the optional ones when some row has them."""
    present = {k for k in _OPTIONAL_COLUMNS if any(entry.get(k) is not None for entry in table)}
    return [(k, h) for k, h in _TABLE_COLUMNS
            if (with_speedup or k != "speedup") and (k not in _OPTIONAL_COLUMNS or k in present)]


def table_html(table: Sequence[Mapping[str, Any]], with_speedup: bool) -> str:
    """The ``<table id="results">``: shown text per cell, the full-precision value in ``data-value``."""
    columns = _table_columns(with_speedup, table)
    head = "".join(f'<th data-key="{k}">{html.escape(h)}</th>' for k, h in columns)
    body = []
    for entry in table:
        cells = []
        for key, _ in columns:
            value = entry.get(key)
            if key in _TEXT:
                text = "" if value is None else str(value)
                cells.append(f'<td data-value="{html.escape(text)}">{html.escape(text)}</td>')
            else:
                raw = "" if value is None else repr(float(value))
                cells.append(f'<td data-value="{raw}">{html.escape(_fmt_cell(key, entry))}</td>')
        body.append(f'<tr class="branch-{html.escape(str(entry["branch"]))}">{"".join(cells)}</tr>')
    return (f'<table id="results"><thead><tr>{head}</tr></thead>\n<tbody>\n' + "\n".join(body)
            + "\n</tbody></table>")


def table_markdown(table: Sequence[Mapping[str, Any]], with_speedup: bool) -> str:
    """The table as Markdown (shown values), for the W&B report."""
    columns = _table_columns(with_speedup, table)
    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    for entry in table:
        cells = [str(entry.get(k) or "") if k in _TEXT else _fmt_cell(k, entry) for k, _ in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_csv(table: Sequence[Mapping[str, Any]], with_speedup: bool) -> str:
    """The table as CSV at full precision (``summary.csv``): the columns, then their ``_ci95`` half-widths."""
    keys = [k for k, _ in _table_columns(with_speedup, table)]
    keys += [f"{k}_ci95" for k in keys if k in _TABLE_METRICS]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for entry in table:
        writer.writerow({k: ("" if entry.get(k) is None else entry[k]) for k in keys})
    return buf.getvalue()
