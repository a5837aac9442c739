"""The report's figures (matplotlib, no pyplot): accuracy and early stopping vs % remaining, per-layer remaining
fraction per level (the main branch) and validation-loss curves per level; :func:`render_figures` makes their PNGs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from lightning_lottery.aggregate import aggregate, branch_sort_key
from lightning_lottery.report.record import ExperimentRecord, main_branch
from lightning_lottery.report.style import RC_STYLE, branch_colors, new_figure, png_bytes, tick_label

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["FIGURES", "render_figures"]

#: The figures of the report: file stem → caption.
FIGURES: dict[str, str] = {
    "accuracy": "Test accuracy vs % of weights remaining (log scale, decreasing); dashed: the dense network.",
    "early_stop": "Early-stopping iteration (minimum validation loss) vs % of weights remaining.",
    "layers": "Weights remaining per layer at each level.",
    "val_loss": "Validation loss during training, one colour per level; dots: minimum validation loss (early stop).",
}


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
    ax.xaxis.set_major_formatter(FixedFormatter([tick_label(t) for t in ticks]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("% of weights remaining (log scale)")


def _dense_stats(stats: Sequence[Mapping[str, Any]], metric: str) -> tuple[float | None, float | None]:
    """Mean and CI of ``metric`` at level 0 (of the first branch in table order that has it)."""
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


def _plot_accuracy(stats: Sequence[Mapping[str, Any]], colors: Mapping[str, str], title: str) -> Figure:
    """Test accuracy at the end of training and at the early stop vs % remaining, side by side."""
    fig = new_figure(11.0, 4.8)
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
    """Early-stopping iteration vs % remaining."""
    fig = new_figure(6.4, 4.8)
    ax = fig.subplots()
    ci = _curve_panel(ax, stats, "early_stop_iter", 1.0, colors, "Early-stopping iteration (minimum validation loss)",
                      "Iteration", clip=(0.0, math.inf))
    _legend_below(fig, (ax,), ci)
    fig.suptitle(title)
    return fig


def _plot_layers(rows: Sequence[Mapping[str, Any]], branch: str, title: str) -> Figure | None:
    """Remaining fraction per layer vs level for the rows of ``branch``; ``None`` without per-layer counts."""
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
    fig = new_figure(7.6, 4.3)
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

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: tick_label(v)))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: tick_label(v) if str(round(v, 6))[0] in "25" else ""))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("Pruning level")
    ax.set_ylabel("% of the layer's weights remaining (log scale)")
    ax.set_title(f"Weights remaining per layer ({branch})")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, ncol=1 if len(names) < 18 else 2,
              fontsize=8.5 if len(names) < 18 else 7)
    fig.suptitle(title)
    return fig


def _mean_curve(histories: Sequence[Sequence[Mapping[str, Any]]]) -> tuple[list[float], list[float]]:
    """Steps and the mean validation loss at each over ``histories`` (NaNs left out)."""
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
    """Validation-loss curves, one panel per branch, one colour per level; ``None`` without histories."""
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
    fig = new_figure(4.2 * ncols + 1.3, 3.6 * nrows + 0.5)
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
    bar.set_ticklabels([f"{lv} ({tick_label(100 * sum(remaining[lv]) / len(remaining[lv]))}%)"
                        if remaining.get(lv) else str(lv) for lv in shown])
    bar.set_label("Level (% of weights remaining)")
    bar.minorticks_off()
    fig.suptitle(title)
    return fig


def render_figures(record: ExperimentRecord, title: str) -> dict[str, bytes | None]:
    """The PNG bytes of each of :data:`FIGURES` (``None`` where the results lack its data)."""
    import matplotlib
    from matplotlib import style

    stats = aggregate(record.rows, metrics=("test_acc", "early_stop_iter", "early_stop_test_acc", "remaining"))
    branches = sorted({s["branch"] for s in stats}, key=branch_sort_key)
    colors = branch_colors(branches)
    with style.context("default"), matplotlib.rc_context(RC_STYLE):
        figures = {
            "accuracy": _plot_accuracy(stats, colors, title),
            "early_stop": _plot_early_stop(stats, colors, title),
            "layers": _plot_layers(record.rows, main_branch(record), title),
            "val_loss": _plot_val_loss(record.rows, title),
        }
        return {name: (png_bytes(fig) if fig is not None else None) for name, fig in figures.items()}
