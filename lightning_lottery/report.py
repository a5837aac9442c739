"""Plots and the report of an experiment, from its directory alone (no model, no training).

:func:`build_report` writes ``OUT/report/``: four PNG figures (test accuracy and early-stopping iteration vs %
weights remaining, per-layer remaining fraction per level, validation-loss curves per level), ``summary.csv``
(the report's table at full precision), ``aggregate.csv`` (mean / std / 95% CI per branch and level) and a
self-contained ``report.html`` (images embedded as base64). The output is deterministic: the same directory gives
the same bytes, wherever it was copied to. Following Blalock et al. (2020) the report names the (dataset,
architecture, metric) triple, shows the dense level as a reference, the whole trade-off curve, compression ratio
and theoretical speedup (from ``costs.json``), and mean ± 95% CI over replicates.

:func:`build_wandb_report` makes the matching W&B Report (``wandb_workspaces.reports.v2``) over the runs of the
experiment's W&B group, without saving it; :func:`publish_wandb_report` saves it when logged in.

Example:
    >>> from lightning_lottery.report import build_report, triple
    >>> triple({"data": {"class_path": "lightning_lottery.data.DigitsDataModule"},
    ...         "model": {"class_path": "lightning_lottery.models.LeNet300100"}})
    ('Digits', 'LeNet300100', 'top-1 test accuracy')
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning_lottery.aggregate import aggregate, branch_sort_key, write_aggregate
from lightning_lottery.flops import theoretical_speedup

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from wandb_workspaces.reports.v2 import Report

__all__ = ["FIGURES", "ExperimentRecord", "build_report", "build_wandb_report", "load_experiment",
           "publish_wandb_report", "summary_table", "triple"]

#: The figures of the report: file stem → caption.
FIGURES: dict[str, str] = {
    "accuracy": "Test accuracy vs % of weights remaining (log scale, decreasing); dashed: the dense network.",
    "early_stop": "Early-stopping iteration (minimum validation loss) vs % of weights remaining.",
    "layers": "Weights remaining per layer at each level.",
    "val_loss": "Validation loss during training, one colour per level; dots: minimum validation loss (early stop).",
}

#: Fixed colours of the known branches (others get the next free ones).
BRANCH_COLORS: dict[str, str] = {
    "ticket": "#1f77b4", "random_reinit": "#ff7f0e", "random_mask": "#2ca02c", "lr_rewind": "#d62728",
    "finetune": "#9467bd", "oneshot": "#8c564b",
}
_SPARE_COLORS = ("#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39")

DPI = 110
_STYLE = {
    "svg.hashsalt": "lightning-lottery",  # deterministic SVG ids, should anyone save SVGs under this context
    "font.size": 9.5,
    "axes.titlesize": 10.5,
    "axes.labelsize": 9.5,
    "legend.fontsize": 8.5,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
_PNG_METADATA = {"Software": None}  # no version string; matplotlib writes no date into PNGs


# ------------------------------------------------------------------------------------------ reading
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


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: corrupt JSON ({err})") from err


def load_experiment(experiment_dir: str | os.PathLike) -> ExperimentRecord:
    """Read ``experiment.json``, ``results.json`` (or, failing that, the finished levels' ``metrics.json``) and
    ``costs.json`` when present.

    Example:
        >>> import json, pathlib, tempfile
        >>> out = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (out / "results.json").write_text(json.dumps([{"branch": "ticket", "level": 0, "remaining": 1.0}]))
        >>> record = load_experiment(out)
        >>> record.id, len(record.rows), record.costs
        ('unknown experiment', 1, None)
    """
    root = Path(experiment_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such experiment directory")
    notes: list[str] = []
    meta = _read_json(root / "experiment.json") if (root / "experiment.json").is_file() else {}
    if not meta:
        notes.append("experiment.json is missing: no experiment id or configuration to show.")
    if (root / "results.json").is_file():
        rows = _read_json(root / "results.json")
    else:
        rows = [_read_json(p) for p in sorted(root.glob("levels/level_*/metrics.json"))]
    if not rows:
        raise FileNotFoundError(f"{root}: no results.json and no finished level (levels/level_*/metrics.json)")
    costs = _read_json(root / "costs.json") if (root / "costs.json").is_file() else None
    return ExperimentRecord(root=root, id=str(meta.get("id") or "unknown experiment"), hash=str(meta.get("hash") or ""),
                            config=dict(meta.get("config") or {}), rows=list(rows), costs=costs, notes=notes)


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


# ------------------------------------------------------------------------------------------ the table
#: Columns of the report table: key, header, metric in results units, how it is shown.
_TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("branch", "branch"),
    ("level", "level"),
    ("n", "replicates"),
    ("remaining", "% remaining"),
    ("compression", "compression (total/alive)"),
    ("speedup", "theoretical speedup"),
    ("test_acc", "test acc (%)"),
    ("early_stop_iter", "early-stop iteration"),
    ("early_stop_test_acc", "test acc at early stop (%)"),
)
_TABLE_METRICS = ("remaining", "compression", "speedup", "test_acc", "early_stop_iter", "early_stop_test_acc")


def _row_speedup(row: Mapping[str, Any], costs: Mapping[str, Mapping[str, int]]) -> float | None:
    layers = row.get("layers")
    if not isinstance(layers, Mapping) or not layers:
        return None
    return theoretical_speedup(costs, layers)


def summary_table(rows: Sequence[Mapping[str, Any]], costs: Mapping[str, Mapping[str, int]] | None = None
                  ) -> list[dict[str, Any]]:
    """One row per (branch, level): ``n`` and, for each of remaining, compression (total / alive), theoretical
    speedup (only with ``costs``), test_acc, early_stop_iter and early_stop_test_acc, the mean over replicates
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
    metrics = [m for m in _TABLE_METRICS if costs is not None or m != "speedup"]
    out = []
    for stats in aggregate(augmented, metrics=metrics):
        entry: dict[str, Any] = {"branch": stats["branch"], "level": stats["level"], "n": stats["n"]}
        for metric in metrics:
            entry[metric] = stats[f"{metric}_mean"]
            entry[f"{metric}_ci95"] = stats[f"{metric}_ci95"]
        out.append(entry)
    return out


def _fmt_number(key: str, value: float | None) -> str:
    if value is None:
        return "–"
    if key in ("remaining", "test_acc", "early_stop_test_acc"):
        return f"{100 * value:.2f}"
    if key == "early_stop_iter":
        return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"
    if key in ("compression", "speedup"):
        return "∞" if math.isinf(value) else f"{value:.2f}"
    return str(value)


def _fmt_cell(key: str, entry: Mapping[str, Any]) -> str:
    text = _fmt_number(key, entry.get(key))
    ci = entry.get(f"{key}_ci95")
    if ci is not None and entry.get(key) is not None and key not in ("remaining", "compression", "speedup"):
        text += f" ± {_fmt_number(key, ci)}"
    return text


def _table_columns(with_speedup: bool) -> list[tuple[str, str]]:
    return [(k, h) for k, h in _TABLE_COLUMNS if with_speedup or k != "speedup"]


def _table_html(table: Sequence[Mapping[str, Any]], with_speedup: bool) -> str:
    columns = _table_columns(with_speedup)
    head = "".join(f'<th data-key="{k}">{html.escape(h)}</th>' for k, h in columns)
    body = []
    for entry in table:
        cells = []
        for key, _ in columns:
            value = entry.get(key)
            if key in ("branch", "level", "n"):
                cells.append(f'<td data-value="{html.escape(str(value))}">{html.escape(str(value))}</td>')
            else:
                raw = "" if value is None else repr(float(value))
                cells.append(f'<td data-value="{raw}">{html.escape(_fmt_cell(key, entry))}</td>')
        body.append(f'<tr class="branch-{html.escape(str(entry["branch"]))}">{"".join(cells)}</tr>')
    return (f'<table id="results"><thead><tr>{head}</tr></thead>\n<tbody>\n' + "\n".join(body)
            + "\n</tbody></table>")


def _table_markdown(table: Sequence[Mapping[str, Any]], with_speedup: bool) -> str:
    columns = _table_columns(with_speedup)
    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    for entry in table:
        cells = [str(entry[k]) if k in ("branch", "level", "n") else _fmt_cell(k, entry) for k, _ in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _table_csv(table: Sequence[Mapping[str, Any]], with_speedup: bool) -> str:
    keys = [k for k, _ in _table_columns(with_speedup)]
    keys += [f"{k}_ci95" for k in keys if k in _TABLE_METRICS]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for entry in table:
        writer.writerow({k: ("" if entry.get(k) is None else entry[k]) for k in keys})
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ figures
def _branch_colors(branches: Sequence[str]) -> dict[str, str]:
    colors, spare = {}, iter(_SPARE_COLORS * 4)
    for branch in branches:
        colors[branch] = BRANCH_COLORS.get(branch) or next(spare)
    return colors


def _tick_label(pct: float) -> str:
    return f"{pct:.3g}" if pct >= 1 else f"{pct:.2g}"


def _remaining_axis(ax: Axes, percents: Sequence[float]) -> None:
    """Log-scaled x axis of % remaining, decreasing left to right, ticks at the levels' values."""
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

    values = sorted({round(p, 6) for p in percents if p and p > 0}, reverse=True)
    if not values:
        return
    ax.set_xscale("log")
    ax.set_xlim(values[0] * 1.15, values[-1] / 1.15)
    step = max(1, math.ceil(len(values) / 9))
    ticks = values[::step]
    if ticks[-1] != values[-1]:
        ticks[-1] = values[-1]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FixedFormatter([_tick_label(t) for t in ticks]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("% of weights remaining (log scale)")


def _dense_stats(stats: Sequence[Mapping[str, Any]], metric: str) -> tuple[float | None, float | None]:
    dense = [s for s in stats if s["level"] == 0 and s.get(f"{metric}_mean") is not None]
    dense.sort(key=lambda s: branch_sort_key(s["branch"]))
    if not dense:
        return None, None
    return dense[0][f"{metric}_mean"], dense[0][f"{metric}_ci95"]


def _curve_panel(ax: Axes, stats: Sequence[Mapping[str, Any]], metric: str, scale: float, colors: Mapping[str, str],
                 title: str, ylabel: str, clip: tuple[float, float] = (-math.inf, math.inf)) -> bool:
    """One metric vs % remaining, one line per branch; returns whether any point has a confidence interval."""
    lo, hi = clip
    with_ci = False
    dense, dense_ci = _dense_stats(stats, metric)
    if dense is not None:
        ax.axhline(dense * scale, color="0.35", ls="--", lw=1.1, zorder=1, label="dense (level 0)")
        if dense_ci:
            with_ci = True
            ax.axhspan(max(lo, (dense - dense_ci) * scale), min(hi, (dense + dense_ci) * scale), color="0.5",
                       alpha=0.1, lw=0, zorder=0)
    for branch in colors:
        points = [s for s in stats if s["branch"] == branch and s.get(f"{metric}_mean") is not None
                  and s.get("remaining_mean")]
        if not points:
            continue
        points.sort(key=lambda s: -s["remaining_mean"])
        x = [100 * s["remaining_mean"] for s in points]
        y = [scale * s[f"{metric}_mean"] for s in points]
        ci = [scale * (s[f"{metric}_ci95"] or 0.0) for s in points]
        reps = max(s["n"] for s in points)
        ax.plot(x, y, color=colors[branch], marker="o", ms=3.5, lw=1.6, zorder=3,
                label=branch if reps == 1 else f"{branch} (n={reps})")
        if any(ci):
            with_ci = True
            if len(points) == 1:
                ax.errorbar(x, y, yerr=ci, fmt="none", ecolor=colors[branch], elinewidth=1, capsize=3, zorder=3)
            else:
                ax.fill_between(x, [max(lo, a - b) for a, b in zip(y, ci)], [min(hi, a + b) for a, b in zip(y, ci)],
                                color=colors[branch], alpha=0.15, lw=0, zorder=2)
    _remaining_axis(ax, [100 * s["remaining_mean"] for s in stats if s.get("remaining_mean")])
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    return with_ci


def _legend_below(fig: Figure, axes: Sequence[Axes], with_ci: bool) -> None:
    """One legend for the figure, under the plots (bands and lines stay uncovered)."""
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=min(4, len(handles)),
                   frameon=False, title="mean over replicates; shaded: 95% CI" if with_ci else None,
                   title_fontsize=8.5)


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _plot_accuracy(stats: Sequence[Mapping[str, Any]], colors: Mapping[str, str], title: str) -> Figure:
    fig = _figure(11.0, 4.8)
    left, right = fig.subplots(1, 2, sharey=True)
    ci = _curve_panel(left, stats, "test_acc", 100.0, colors, "At the end of training", "Test accuracy (%)",
                      clip=(0.0, 100.0))
    ci |= _curve_panel(right, stats, "early_stop_test_acc", 100.0, colors, "At the early-stopping iteration",
                       "Test accuracy (%)", clip=(0.0, 100.0))
    right.tick_params(labelleft=True)
    _legend_below(fig, (left, right), ci)
    fig.suptitle(title)
    return fig


def _plot_early_stop(stats: Sequence[Mapping[str, Any]], colors: Mapping[str, str], title: str) -> Figure:
    fig = _figure(6.4, 4.8)
    ax = fig.subplots()
    ci = _curve_panel(ax, stats, "early_stop_iter", 1.0, colors, "Early-stopping iteration (minimum validation loss)",
                      "Iteration", clip=(0.0, math.inf))
    _legend_below(fig, (ax,), ci)
    fig.suptitle(title)
    return fig


def _main_branch(rows: Sequence[Mapping[str, Any]]) -> str:
    return sorted({str(r.get("branch", "ticket")) for r in rows}, key=branch_sort_key)[0]


def _plot_layers(rows: Sequence[Mapping[str, Any]], title: str) -> Figure | None:
    branch = _main_branch(rows)
    per_level: dict[int, dict[str, list[float]]] = {}
    overall: dict[int, list[float]] = {}
    for row in rows:
        if str(row.get("branch", "ticket")) != branch or not isinstance(row.get("layers"), Mapping):
            continue
        level = int(row["level"])
        for name, vals in row["layers"].items():
            if vals.get("remaining") is not None:
                per_level.setdefault(level, {}).setdefault(name, []).append(float(vals["remaining"]))
        if row.get("remaining") is not None:
            overall.setdefault(level, []).append(float(row["remaining"]))
    if not per_level:
        return None
    levels = sorted(per_level)
    names = list(dict.fromkeys(n for lv in levels for n in per_level[lv]))
    fig = _figure(7.6, 4.3)
    ax = fig.subplots()
    markers, styles = "osD^vP<>X*", ("-", "--", "-.", ":")
    xs = sorted(overall)
    ax.plot(xs, [100 * sum(overall[lv]) / len(overall[lv]) for lv in xs], color="black", lw=3.5, alpha=0.25,
            label="all prunable weights", zorder=1)
    for i, name in enumerate(names):  # marker and dash vary too: layers pruned at the same rate overlap
        xs = [lv for lv in levels if name in per_level[lv]]
        ys = [100 * sum(per_level[lv][name]) / len(per_level[lv][name]) for lv in xs]
        ax.plot(xs, ys, marker=markers[i % len(markers)], ms=max(2.5, 6.5 - 1.2 * (i % 4)), mfc="none", mew=1.1,
                ls=styles[i % len(styles)], lw=1.3, color=f"C{i % 10}", label=name, zorder=2)
    ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _tick_label(v)))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: _tick_label(v) if str(round(v, 6))[0] in "25" else ""))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("Pruning level")
    ax.set_ylabel("% of the layer's weights remaining (log scale)")
    ax.set_title(f"Weights remaining per layer ({branch})")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, ncol=1 if len(names) < 18 else 2,
              fontsize=8.5 if len(names) < 18 else 7)
    fig.suptitle(title)
    return fig


def _mean_curve(histories: Sequence[Sequence[Mapping[str, Any]]]) -> tuple[list[float], list[float]]:
    by_step: dict[float, list[float]] = {}
    for history in histories:
        for point in history or ():
            if point.get("step") is not None and point.get("val_loss") is not None:
                value = float(point["val_loss"])
                if not math.isnan(value):
                    by_step.setdefault(float(point["step"]), []).append(value)
    steps = sorted(by_step)
    return steps, [sum(by_step[s]) / len(by_step[s]) for s in steps]


def _plot_val_loss(rows: Sequence[Mapping[str, Any]], title: str) -> Figure | None:
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import BoundaryNorm

    groups: dict[tuple[str, int], list[Any]] = {}
    remaining: dict[int, list[float]] = {}
    for row in rows:
        if row.get("val_history"):
            groups.setdefault((str(row.get("branch", "ticket")), int(row["level"])), []).append(row["val_history"])
            if row.get("remaining") is not None:
                remaining.setdefault(int(row["level"]), []).append(float(row["remaining"]))
    if not groups:
        return None
    branches = sorted({b for b, _ in groups}, key=branch_sort_key)
    levels = sorted({lv for _, lv in groups})
    ncols = min(3, len(branches))
    nrows = math.ceil(len(branches) / ncols)
    fig = _figure(4.2 * ncols + 1.3, 3.6 * nrows + 0.5)
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False).ravel()
    cmap = colormaps["viridis"]
    bounds = [lv - 0.5 for lv in levels] + [levels[-1] + 0.5]
    norm = BoundaryNorm(bounds, cmap.N)
    lows, highs = [], []
    for ax, branch in zip(axes, branches):
        reps = 1
        for level in levels:
            histories = groups.get((branch, level))
            if not histories:
                continue
            reps = max(reps, len(histories))
            steps, losses = _mean_curve(histories)
            if not steps:
                continue
            color = cmap(norm(level))
            ax.plot(steps, losses, color=color, lw=1.3)
            best = min(range(len(losses)), key=losses.__getitem__)
            ax.plot([steps[best]], [losses[best]], "o", color=color, ms=4, mec="white", mew=0.6)
            lows.append(min(losses))
            highs.append(sorted(losses)[len(losses) // 2])
        ax.set_title(branch if reps == 1 else f"{branch} (mean of {reps} replicates)")
        ax.set_xlabel("Training iteration")
    for ax in axes[len(branches):]:
        ax.set_visible(False)
    for ax in axes[::ncols]:
        ax.set_ylabel("Validation loss")
    if lows:  # keep the informative range: early, very high losses are clipped
        low, high = min(lows), max(highs)
        pad = 0.08 * (high - low or abs(high) or 1.0)
        axes[0].set_ylim(low - pad, high + 3 * pad)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(axes[: len(branches)]), pad=0.02,
                       fraction=0.04 if ncols > 1 else 0.06)
    step = max(1, math.ceil(len(levels) / 12))
    shown = levels[::step]
    bar.set_ticks(shown)
    bar.set_ticklabels([f"{lv} ({_tick_label(100 * sum(remaining[lv]) / len(remaining[lv]))}%)"
                        if remaining.get(lv) else str(lv) for lv in shown])
    bar.set_label("Level (% of weights remaining)")
    bar.minorticks_off()
    fig.suptitle(title)
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata=_PNG_METADATA, facecolor="white")
    return buf.getvalue()


def _render_figures(record: ExperimentRecord, title: str) -> dict[str, bytes | None]:
    import matplotlib
    from matplotlib import style

    stats = aggregate(record.rows, metrics=("test_acc", "early_stop_iter", "early_stop_test_acc", "remaining"))
    branches = sorted({s["branch"] for s in stats}, key=branch_sort_key)
    colors = _branch_colors(branches)
    with style.context("default"), matplotlib.rc_context(_STYLE):
        figures = {
            "accuracy": _plot_accuracy(stats, colors, title),
            "early_stop": _plot_early_stop(stats, colors, title),
            "layers": _plot_layers(record.rows, title),
            "val_loss": _plot_val_loss(record.rows, title),
        }
        return {name: (_png(fig) if fig is not None else None) for name, fig in figures.items()}


# ------------------------------------------------------------------------------------------ HTML
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1150px;color:#222;
line-height:1.4;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
.triple{font-size:1.05em;color:#444}.triple b{color:#111}
table{border-collapse:collapse;font-size:.88em;font-variant-numeric:tabular-nums}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.88em;color:#555}pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.82em}
.note{color:#8a5a00}ul.checks{list-style:none;padding-left:.5em}
"""


def _config_text(config: Mapping[str, Any]) -> tuple[str, str]:
    try:
        import yaml

        return "YAML", yaml.safe_dump(json.loads(json.dumps(config, default=repr)), sort_keys=True,
                                      default_flow_style=False, allow_unicode=True)
    except ImportError:  # pragma: no cover - PyYAML ships with the dependencies
        return "JSON", json.dumps(config, indent=2, sort_keys=True, default=repr)


def _checks(record: ExperimentRecord, table: Sequence[Mapping[str, Any]]) -> list[tuple[bool, str]]:
    main = _main_branch(record.rows)
    points = len({e["level"] for e in table if e["branch"] == main})
    reps = max((e["n"] for e in table), default=0)
    branches = {e["branch"] for e in table}
    scope = (record.config.get("lottery") or {}).get("scope")
    return [
        (True, "(dataset, architecture, metric) reported"),
        (any(e["level"] == 0 for e in table), "dense network (level 0) trained with the same code"),
        (points >= 5, f"trade-off curve with {points} operating points (≥ 5 recommended)"),
        (record.costs is not None, "compression ratio and theoretical speedup (FLOPs)"),
        (reps >= 2, f"{reps} replicate(s) per operating point (several seeds recommended)"),
        ("random_mask" in branches, "random-pruning baseline (random_mask branch)"),
        ("random_reinit" in branches, "random re-initialisation control (random_reinit branch)"),
        (scope == "global" or "global" in branches, "global-magnitude baseline"
         + (f" (this experiment prunes {scope})" if scope and scope != "global" else "")),
    ]


def _html(record: ExperimentRecord, table: Sequence[Mapping[str, Any]], images: Mapping[str, bytes | None],
          notes: Sequence[str]) -> str:
    dataset, arch, metric = triple(record.config)
    fmt, config_text = _config_text(record.config)
    esc = html.escape
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Lottery tickets: {esc(record.id)}</title>", f"<style>{_CSS}</style></head><body>",
        f'<h1>Lottery tickets: <span id="experiment-id">{esc(record.id)}</span></h1>',
        f'<p class="triple">Dataset <b id="dataset">{esc(dataset)}</b> · architecture <b id="architecture">'
        f'{esc(arch)}</b> · metric <b id="metric">{esc(metric)}</b></p>',
        f"<p>Configuration hash <code>{esc(record.hash[:16] or 'unknown')}</code> · {len(record.rows)} trained "
        f"network(s) · branches: {esc(', '.join(sorted({e['branch'] for e in table}, key=branch_sort_key)))}</p>",
        f'<details id="config"><summary>Configuration ({fmt})</summary><pre>{esc(config_text)}</pre></details>',
    ]
    if notes:
        parts.append('<ul class="notes">' + "".join(f'<li class="note">{esc(n)}</li>' for n in notes) + "</ul>")
    parts.append("<h2>Results</h2>")
    parts.append("<p>Means over replicates; ± is the half-width of the 95% confidence interval (Student's t). "
                 "Compression ratio = prunable weights / alive ones; theoretical speedup = multiply-accumulates of "
                 "the dense prunable layers / those of the alive weights (one sample).</p>")
    parts.append(_table_html(table, with_speedup=record.costs is not None))
    parts.append("<h2>Figures</h2>")
    for name, caption in FIGURES.items():
        data = images.get(name)
        if data is None:
            continue
        b64 = base64.b64encode(data).decode("ascii")
        parts.append(f'<figure id="fig-{name}"><img alt="{esc(caption)}" src="data:image/png;base64,{b64}">'
                     f"<figcaption>{esc(caption)}</figcaption></figure>")
    parts.append("<h2>Reporting checklist (Blalock et al., 2020)</h2><ul class=\"checks\">")
    parts.extend(f"<li>{'✔' if ok else '✘'} {esc(text)}</li>" for ok, text in _checks(record, table))
    parts.append("</ul></body></html>\n")
    return "\n".join(parts)


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def build_report(experiment_dir: str | os.PathLike, output_dir: str | os.PathLike | None = None) -> Path:
    """Write the report of ``experiment_dir`` into ``output_dir`` (default ``experiment_dir/report``) and return
    the path of its ``report.html``; the directory also gets the PNGs, ``summary.csv`` and ``aggregate.csv``.

    Reads only the experiment directory (``experiment.json``, ``results.json``, ``costs.json``). Without
    ``costs.json`` the speedup column is omitted and the report says why.

    Example:
        >>> import json, pathlib, tempfile
        >>> out = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (out / "results.json").write_text(json.dumps(
        ...     [{"branch": "ticket", "replicate": 0, "level": 0, "remaining": 1.0, "test_acc": 0.9}]))
        >>> html_path = build_report(out, out / "elsewhere")
        >>> sorted(p.name for p in html_path.parent.iterdir())
        ['accuracy.png', 'aggregate.csv', 'early_stop.png', 'report.html', 'summary.csv']
    """
    record = load_experiment(experiment_dir)
    out = Path(output_dir) if output_dir is not None else record.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    dataset, arch, _ = triple(record.config)
    title = f"{arch} on {dataset} — {record.id}"
    notes = list(record.notes)
    if record.costs is None:
        notes.append("Theoretical speedup omitted: this experiment directory has no costs.json (it was written "
                     "before the scheduler recorded per-layer multiply-accumulates).")
    table = summary_table(record.rows, record.costs)
    images = _render_figures(record, title)
    if images.get("layers") is None:
        notes.append("Per-layer figure omitted: the results have no per-layer counts ('layers').")
    if images.get("val_loss") is None:
        notes.append("Validation-loss figure omitted: the results have no validation history ('val_history').")
    for name, data in images.items():
        if data is not None:
            _write(out / f"{name}.png", data)
    _write(out / "summary.csv", _table_csv(table, with_speedup=record.costs is not None).encode())
    write_aggregate(record.rows, out / "aggregate.csv")
    html_path = out / "report.html"
    _write(html_path, _html(record, table, images, notes).encode())
    return html_path


# ------------------------------------------------------------------------------------------ W&B
def build_wandb_report(experiment_dir: str | os.PathLike, project: str, entity: str | None = None) -> Report:
    """A W&B Report (``wandb_workspaces.reports.v2``, not saved) over the runs of the experiment's W&B group.

    The runs are the levels (config ``level``, ``branch``, ``replicate``, ``remaining``; summary ``test_acc``,
    ``early_stop_iter``, ``early_stop_test_acc``); the experiment's ``summary`` run is left out. Each run is one
    point, so the accuracy and early-stopping charts are scatter plots of summary values against the config's
    ``remaining`` (log x; W&B line plots only take logged history on x). Also a validation-loss line plot per
    run and the runs table (its columns pinned to the level's keys). Works offline: nothing is sent; ``entity``
    defaults to ``$WANDB_ENTITY`` (or empty, resolved by :func:`publish_wandb_report`).

    Example:
        >>> import json, pathlib, tempfile
        >>> out = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (out / "experiment.json").write_text(json.dumps({"id": "exp-1", "hash": "h", "config": {}}))
        >>> _ = (out / "results.json").write_text(json.dumps([{"branch": "ticket", "level": 0, "remaining": 1.0}]))
        >>> report = build_wandb_report(out, project="p", entity="me")
        >>> report.title, report.project, len(report.blocks)
        ('Lottery tickets: exp-1', 'p', 6)
    """
    import wandb_workspaces.reports.v2 as wr

    record = load_experiment(experiment_dir)
    entity = entity if entity is not None else os.environ.get("WANDB_ENTITY", "")
    dataset, arch, metric = triple(record.config)
    group = record.id.replace("'", "\\'")
    runset = wr.Runset(
        entity=entity, project=project, name=record.id,
        filters=f"Metric('Group') = '{group}' and Metric('JobType') != 'summary'",
        order=[wr.OrderBy("CreatedTimestamp", ascending=True)],
        pinned_columns=["run:displayName", "config:branch.value", "config:level.value", "config:replicate.value",
                        "config:remaining.value"],
        visible_columns=["summary:test_acc", "summary:early_stop_iter", "summary:early_stop_test_acc",
                         "summary:best_val_acc", "summary:min_val_loss", "summary:steps"],
    )

    def scatter(y: str, title: str, x: int, yy: int) -> Any:
        return wr.ScatterPlot(title=title, x=wr.Config("remaining"), y=wr.SummaryMetric(y), log_x=True,
                              layout=wr.Layout(x=x, y=yy, w=12, h=8))

    table = summary_table(record.rows, record.costs)
    main = _main_branch(record.rows)
    best = [e for e in table if e["branch"] == main and e.get("test_acc") is not None]
    summary_md = (
        f"**Dataset** {dataset} · **architecture** {arch} · **metric** {metric}  \n"
        f"W&B group `{record.id}` · {len(record.rows)} trained network(s) · "
        f"{len({e['level'] for e in table})} level(s) · branches: "
        f"{', '.join(sorted({e['branch'] for e in table}, key=branch_sort_key))}"
    )
    if best:
        sparsest = min(best, key=lambda e: e["remaining"] or 1.0)
        summary_md += (f"  \nSparsest {main}: {100 * sparsest['remaining']:.3g}% of weights remaining, "
                       f"test accuracy {100 * sparsest['test_acc']:.2f}%.")
    return wr.Report(
        project=project,
        entity=entity,
        title=f"Lottery tickets: {record.id}"[:128],
        description=f"{arch} on {dataset}: iterative magnitude pruning, one run per level and branch.",
        blocks=[
            wr.MarkdownBlock(text=summary_md),
            wr.H2(text="Accuracy and early stopping vs weights remaining"),
            wr.PanelGrid(
                runsets=[runset],
                panels=[
                    scatter("test_acc", "Test accuracy vs fraction of weights remaining", 0, 0),
                    scatter("early_stop_test_acc", "Test accuracy at early stop vs fraction remaining", 12, 0),
                    scatter("early_stop_iter", "Early-stopping iteration vs fraction remaining", 0, 8),
                    wr.LinePlot(title="Validation loss per level", x="trainer/global_step", y=["val_loss"],
                                layout=wr.Layout(x=12, y=8, w=12, h=8)),
                ],
            ),
            wr.H2(text="Runs"),
            wr.P(text="One run per level, branch and replicate: the run set's table above lists their configuration "
                      "and results. Means over replicates (± 95% CI), from the experiment directory:"),
            wr.MarkdownBlock(text=_table_markdown(table, with_speedup=record.costs is not None)),
        ],
    )


def _publish_blocker() -> str | None:
    """Why a report cannot be published from here, checked without network; ``None`` if it can be tried."""
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode in ("offline", "dryrun", "disabled"):
        return f"W&B is in {mode} mode (WANDB_MODE={mode})"
    if os.environ.get("WANDB_DISABLED", "").strip().lower() in ("1", "true", "yes"):
        return "W&B is disabled (WANDB_DISABLED)"
    import wandb

    if not wandb.login(prompt=False, verify=False):  # reads env / settings / netrc only
        return "not logged in to W&B (no API key)"
    return None


def publish_wandb_report(experiment_dir: str | os.PathLike, project: str, entity: str | None = None,
                         draft: bool = False) -> str:
    """Build the W&B report (:func:`build_wandb_report`) and save it to W&B; returns its URL.

    Raises ``RuntimeError`` (one line) before any network access when W&B is offline, disabled or not logged in.

    Example:
        >>> import os
        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ, {"WANDB_MODE": "offline"}):
        ...     publish_wandb_report(".", project="p")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        RuntimeError: cannot publish the W&B report: W&B is in offline mode (WANDB_MODE=offline); ...
    """
    blocker = _publish_blocker()
    if blocker:
        raise RuntimeError(f"cannot publish the W&B report: {blocker}; run `wandb login` online "
                           "(and unset WANDB_MODE) to publish it")
    if not entity and not os.environ.get("WANDB_ENTITY"):
        import wandb

        entity = wandb.Api().default_entity
    report = build_wandb_report(experiment_dir, project=project, entity=entity)
    report.save(draft=draft)
    return str(report.url)
