"""Several experiments in one figure (``lightning-lottery report DIR --compare OTHER ...``): test accuracy vs % of
weights remaining of each experiment's main line and of its ``random_mask`` / ``random_reinit`` controls.

It answers the sanity checks of Frankle, Dziugaite, Roy & Carbin (ICLR 2021): masks found by pruning at
initialization (``rewind: pai``) lose nothing when their positions are shuffled within each layer (``random_mask``)
or their weights re-initialized (``random_reinit``), while masks of IMP with rewinding do. One colour per
experiment; solid: its main line, dashed: ``random_mask``, dotted: ``random_reinit``; bands: 95% CI over replicates.

Example:
    >>> label({"lottery": {"name": "lenet_pai", "rewind": "pai", "criterion": "snip"}}, "pai")
    'lenet_pai (pai, snip)'
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_lottery.aggregate import aggregate
from lightning_lottery.atomic import atomic_write_bytes
from lightning_lottery.report.record import ExperimentRecord, load_experiment, main_branch, triple
from lightning_lottery.report.stability import split

__all__ = ["CONTROLS", "FIGURE", "build_comparison", "label", "render_comparison"]

FIGURE = "compare"
#: The controls drawn beside each main line, with their line style.
CONTROLS: dict[str, Any] = {"random_mask": (0, (5, 2)), "random_reinit": (0, (1, 1.5))}


def label(config: Mapping[str, Any], branch: str) -> str:
    """An experiment's name in the legend: its ``lottery.name``, the main line and the criterion."""
    lottery = dict(config.get("lottery") or {})
    return f"{lottery.get('name', 'experiment')} ({branch}, {lottery.get('criterion') or 'magnitude'})"


def render_comparison(records: Sequence[ExperimentRecord], title: str, formats: Sequence[str] = ("png", "svg")
                      ) -> dict[str, bytes]:
    """The figure's bytes in each of ``formats``."""
    import matplotlib
    from matplotlib import style

    from lightning_lottery.report.figures import _remaining_axis
    from lightning_lottery.report.style import RC_STYLE, figure_bytes, new_figure

    with style.context("default"), matplotlib.rc_context(RC_STYLE):
        fig = new_figure(8.4, 5.6)
        ax = fig.subplots()
        percents: list[float] = []
        for i, record in enumerate(records):
            rows, _ = split(record.rows)
            main = main_branch(record)
            stats = aggregate(rows, metrics=("test_acc", "remaining"))
            name = label(record.config, main) + (f" #{i + 1}" if len(records) > 1 and any(
                label(r.config, main_branch(r)) == label(record.config, main) for r in records[:i]) else "")
            for branch, dash in ((main, "solid"), *CONTROLS.items()):
                points = sorted(((100 * s["remaining_mean"], 100 * s["test_acc_mean"], 100 * (s["test_acc_ci95"] or 0),
                                  s["n"]) for s in stats if s["branch"] == branch and s.get("test_acc_mean") is not None
                                 and s.get("remaining_mean")), reverse=True)
                if branch != main:  # a control starts from the main line's dense network
                    points = [p for p in points if p[0] < 100.0]
                if not points:
                    continue
                x, y, ci, n = zip(*points)
                percents.extend(x)
                reps = max(n)
                what = "main line" if branch == main else branch
                ax.plot(x, y, color=f"C{i % 10}", ls=dash, marker="o", ms=3, lw=1.5,
                        label=f"{name}: {what}" + (f" (n={reps})" if reps > 1 else ""))
                if any(ci):
                    ax.fill_between(x, [max(0.0, a - b) for a, b in zip(y, ci)],
                                    [min(100.0, a + b) for a, b in zip(y, ci)], color=f"C{i % 10}", alpha=0.12, lw=0)
        _remaining_axis(ax, percents)
        ax.set_ylabel("Test accuracy (%)")
        ax.set_title("Main lines and their sanity-check controls (Frankle et al. 2021)")
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", fontsize=7.5, frameon=False, ncol=2,
                   title="solid: main line · dashed: random_mask (in-layer shuffle) · dotted: random_reinit · "
                         "bands: 95% CI", title_fontsize=8)
        fig.suptitle(title)
        return figure_bytes(fig, formats)


def build_comparison(experiment_dirs: Sequence[str | os.PathLike], output_dir: str | os.PathLike) -> Path:
    """Write ``compare.png`` and ``compare.svg`` of ``experiment_dirs`` (the first one's report directory by
    default) and return the PNG's path."""
    records = [load_experiment(d) for d in experiment_dirs]
    dataset, arch, _ = triple(records[0].config)
    files = render_comparison(records, f"{arch} on {dataset}: {len(records)} experiments")
    out = Path(output_dir)
    for fmt, data in files.items():
        atomic_write_bytes(out / f"{FIGURE}.{fmt}", data)
    return out / f"{FIGURE}.png"
