"""The report's figures (matplotlib, no pyplot): accuracy and early stopping vs % remaining, per-layer remaining
fraction per level (the main branch) and validation-loss curves per level; :func:`render_all` makes their PNGs and
SVGs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from lightning_lottery.aggregate import aggregate, branch_sort_key
from lightning_lottery.report.record import ExperimentRecord, main_branch
from lightning_lottery.report.style import RC_STYLE, branch_colors, figure_bytes, new_figure, tick_label
from lightning_lottery.report.verdict import training_budget

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["FIGURES", "MAX_CURVES", "captions", "render_all", "render_figures", "shown_levels"]

#: The figures of the report: file stem → caption.
FIGURES: dict[str, str] = {
    "accuracy": "Test accuracy vs % of weights remaining (log scale, decreasing); dashed: the dense network.",
    "early_stop": "Early-stopping iteration (minimum validation loss) vs % of weights remaining, from iteration 0.",
    "layers": "Weights remaining per layer at each level.",
    "val_loss": "Validation loss during training, one colour per level; dots: minimum validation loss (early stop).",
}


def _label_ticks(values: Sequence[float], max_labels: int = 12) -> list[float]:
    """The measured values that get a label: at least 1/``max_labels`` of the log span apart, the first and the
    last always (a label too close to the last one gives way).

    Example:
        >>> _label_ticks([100, 80, 64, 51.2, 41, 32.8])
        [100, 80, 64, 51.2, 41, 32.8]
        >>> _label_ticks([100, 99, 98, 50, 49, 10], max_labels=6)
        [100, 50, 10]
    """
    logs = [math.log10(v) for v in values]
    gap = (logs[0] - logs[-1]) / max_labels
    kept = [0]
    for i in range(1, len(values)):
        if logs[kept[-1]] - logs[i] >= gap:
            kept.append(i)
    if kept[-1] != len(values) - 1:
        if len(kept) > 1 and logs[kept[-1]] - logs[-1] < gap:
            kept.pop()
        kept.append(len(values) - 1)
    return [values[i] for i in kept]


def _remaining_axis(ax: Axes, percents: Sequence[float]) -> None:
    """Log-scaled x axis of % remaining, decreasing left to right: a tick at every measured level, labels on those
    far enough apart to be read (the others keep a short unlabelled tick)."""
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullFormatter

    values = sorted({round(p, 6) for p in percents if p and p > 0}, reverse=True)
    if not values:
        return
    ax.set_xscale("log")
    ax.set_xlim(values[0] * 1.15, values[-1] / 1.15)
    labelled = _label_ticks(values)
    ax.xaxis.set_major_locator(FixedLocator(labelled))
    ax.xaxis.set_major_formatter(FixedFormatter([tick_label(t) for t in labelled]))
    ax.xaxis.set_minor_locator(FixedLocator([v for v in values if v not in labelled]))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.tick_params(axis="x", which="minor", length=3, width=0.8)
    if len(labelled) > 8:
        ax.tick_params(axis="x", which="major", labelsize=8.5)
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
        per_row = 4 if fig.get_figwidth() >= 9 else 3  # a legend row never wider than the figure
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncol=min(per_row, len(handles)),
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


def _plot_early_stop(stats: Sequence[Mapping[str, Any]], colors: Mapping[str, str], title: str,
                     budget: int | None) -> Figure:
    """Early-stopping iteration vs % remaining, from iteration 0 up to the training budget (dashed)."""
    fig = new_figure(6.4, 4.8)
    ax = fig.subplots()
    if budget:  # drawn first: the references head the legend
        ax.axhline(budget, color="#8b0000", ls=(0, (6, 3)), lw=1.2, zorder=1, label=f"training budget ({budget} it)")
    ci = _curve_panel(ax, stats, "early_stop_iter", 1.0, colors, "Early-stopping iteration (minimum validation loss)",
                      "Iteration", clip=(0.0, float(budget) if budget else math.inf))
    if budget:
        ax.set_ylim(0, budget * 1.06)
    else:
        ax.set_ylim(bottom=0)
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


#: At most this many levels get a validation curve (evenly spaced, the dense and the last level always).
MAX_CURVES = 6


def shown_levels(levels: Sequence[int], limit: int = MAX_CURVES) -> list[int]:
    """The levels whose validation curves are drawn: all up to ``limit``, else ``limit`` evenly spaced ones,
    the first and the last included.

    Example:
        >>> shown_levels(range(15))
        [0, 3, 6, 8, 11, 14]
        >>> shown_levels([0, 1, 2])
        [0, 1, 2]
    """
    levels = sorted(levels)
    if len(levels) <= limit:
        return levels
    return sorted({levels[round(i * (len(levels) - 1) / (limit - 1))] for i in range(limit)})


def _val_loss_groups(rows: Sequence[Mapping[str, Any]]) -> tuple[dict[tuple[str, int], list[Any]], dict[int, float]]:
    """Validation histories per (branch, level), and the mean remaining fraction per level."""
    groups: dict[tuple[str, int], list[Any]] = {}
    remaining: dict[int, list[float]] = {}
    for row in rows:
        if row.get("val_history"):
            groups.setdefault((str(row.get("branch", "ticket")), int(row["level"])), []).append(row["val_history"])
            if row.get("remaining") is not None:
                remaining.setdefault(int(row["level"]), []).append(float(row["remaining"]))
    return groups, {lv: sum(v) / len(v) for lv, v in remaining.items()}


def val_loss_caption(rows: Sequence[Mapping[str, Any]]) -> str:
    """The caption of the validation-loss figure, naming the levels shown when not all of them are."""
    groups, _ = _val_loss_groups(rows)
    levels = sorted({lv for _, lv in groups})
    shown = shown_levels(levels)
    if len(shown) == len(levels):
        return FIGURES["val_loss"]
    return (FIGURES["val_loss"] + f" {len(shown)} of the {len(levels)} levels are shown (evenly spaced: "
            + ", ".join(map(str, shown)) + "); the table and the other figures have all of them.")


def _plot_val_loss(rows: Sequence[Mapping[str, Any]], title: str) -> Figure | None:
    """Validation-loss curves, one panel per branch, one colour per shown level (at most :data:`MAX_CURVES`,
    evenly spaced); ``None`` without histories."""
    from matplotlib import colormaps

    groups, remaining = _val_loss_groups(rows)
    if not groups:
        return None
    branches = sorted({b for b, _ in groups}, key=branch_sort_key)
    levels = sorted({lv for _, lv in groups})
    shown = shown_levels(levels)
    ncols = min(3, len(branches))
    nrows = math.ceil(len(branches) / ncols)
    fig = new_figure(4.2 * ncols + 0.6, 3.4 * nrows + 1.2)
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False).ravel()
    cmap = colormaps["viridis"]
    colors = {lv: cmap(0.85 * i / max(1, len(shown) - 1)) for i, lv in enumerate(shown)}
    labels = {lv: f"{lv} ({tick_label(100 * remaining[lv])}%)" if lv in remaining else str(lv) for lv in shown}
    lows, highs, handles = [], [], {}
    for ax, branch in zip(axes, branches):
        reps = 1
        for level in shown:
            histories = groups.get((branch, level))
            if not histories:
                continue
            reps = max(reps, len(histories))
            steps, losses = _mean_curve(histories)
            if not steps:
                continue
            [line] = ax.plot(steps, losses, color=colors[level], lw=1.4)
            handles.setdefault(level, line)
            best = min(range(len(losses)), key=losses.__getitem__)
            ax.plot([steps[best]], [losses[best]], "o", color=colors[level], ms=4.5, mec="white", mew=0.6)
            lows.append(min(losses))
            highs.append(sorted(losses)[len(losses) // 2])
        ax.set_title(branch if reps == 1 else f"{branch} (mean of {reps} replicates)")
        ax.set_xlabel("Training iteration")
        ax.set_xlim(left=0)
    for ax in axes[len(branches):]:
        ax.set_visible(False)
    for ax in axes[::ncols]:
        ax.set_ylabel("Validation loss")
    if lows:  # keep the informative range: early, very high losses are clipped
        low, high = min(lows), max(highs)
        pad = 0.08 * (high - low or abs(high) or 1.0)
        axes[0].set_ylim(low - pad, high + 3 * pad)
    order = [lv for lv in shown if lv in handles]
    heading = "Level (% of weights remaining)" + (
        "" if len(shown) == len(levels) else f": {len(shown)} of {len(levels)} levels shown, evenly spaced")
    fig.legend([handles[lv] for lv in order], [labels[lv] for lv in order], loc="outside lower center",
               ncol=max(1, min(len(order), int(fig.get_figwidth() / 1.3))), frameon=False, title=heading,
               title_fontsize=8.5)
    fig.suptitle(title)
    return fig


def render_all(record: ExperimentRecord, title: str, formats: Sequence[str] = ("png", "svg")
               ) -> dict[str, dict[str, bytes] | None]:
    """The bytes of each of :data:`FIGURES` in each of ``formats`` (``None`` where the results lack its data)."""
    import matplotlib
    from matplotlib import style

    stats = aggregate(record.rows, metrics=("test_acc", "early_stop_iter", "early_stop_test_acc", "remaining"))
    stats = [{**s, "branch": f"{s['branch']} at {s['at']}"} if s.get("at") else s for s in stats]  # a line per k
    branches = sorted({s["branch"] for s in stats}, key=branch_sort_key)
    colors = branch_colors(branches)
    with style.context("default"), matplotlib.rc_context(RC_STYLE):
        figures = {
            "accuracy": _plot_accuracy(stats, colors, title),
            "early_stop": _plot_early_stop(stats, colors, title, training_budget(record.rows)),
            "layers": _plot_layers(record.rows, main_branch(record), title),
            "val_loss": _plot_val_loss(record.rows, title),
        }
        return {name: (figure_bytes(fig, formats) if fig is not None else None) for name, fig in figures.items()}


def render_figures(record: ExperimentRecord, title: str) -> dict[str, bytes | None]:
    """The PNG bytes of each of :data:`FIGURES` (``None`` where the results lack its data)."""
    return {name: (out["png"] if out else None) for name, out in render_all(record, title, ("png",)).items()}


def captions(record: ExperimentRecord) -> dict[str, str]:
    """The caption of each figure: :data:`FIGURES`, with the training budget and the levels shown filled in."""
    out = dict(FIGURES)
    budget = training_budget(record.rows)
    if budget:
        out["early_stop"] += f" Dashed red: the training budget ({budget} iterations)."
    out["val_loss"] = val_loss_caption(record.rows)
    return out
