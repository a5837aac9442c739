"""The report's instability analysis (``lottery.stability``): the error-vs-α curves of each level, the barrier per
level, a table, and ``stability.csv`` (every point of every curve).

The stability runs are an analysis, not a ticket or a control: :func:`split` takes them out of the rows the rest
of the report (table, verdict, figures) is made of.

Example:
    >>> rows = [{"branch": "ticket", "level": 0}, {"branch": "stability", "level": 0, "stability_curve": []}]
    >>> [len(part) for part in split(rows)]
    [1, 1]
"""

from __future__ import annotations

import html
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from lightning_lottery import branches
from lightning_lottery.store_format import csv_text

__all__ = ["CAPTION", "FIGURE", "curve_csv", "render", "section_html", "split"]

FIGURE = "stability"
CAPTION = ("Instability analysis (Frankle et al. 2020): each level's network trained twice from the rewind point "
           "under other data orders; test error and train loss of (1−α)·θ¹ + α·θ² (mean over replicates), and the "
           "barrier max_α E(α) − ½(E(0) + E(1)) of test error per level.")
_CURVE_COLUMNS = ("replicate", "level", "remaining", "alpha", "test_err", "test_loss", "train_err", "train_loss")


def _is_analysis(branch: str) -> bool:
    try:
        return branches.get(branch).analysis
    except ValueError:
        return False


def split(rows: Sequence[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """``(the other rows, the stability rows)``."""
    analysis = [r for r in rows if _is_analysis(str(r.get("branch", "")))]
    return [r for r in rows if r not in analysis], analysis


def _by_level(rows: Sequence[Mapping[str, Any]]) -> dict[int, list[Mapping[str, Any]]]:
    out: dict[int, list[Mapping[str, Any]]] = {}
    for r in sorted(rows, key=lambda r: (int(r["level"]), int(r.get("replicate", 0)))):
        out.setdefault(int(r["level"]), []).append(r)
    return out


def _mean(values: Sequence[Any]) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return statistics.fmean(kept) if kept else None


def _mean_curve(runs: Sequence[Mapping[str, Any]], metric: str) -> tuple[list[float], list[float | None]]:
    curves = [r.get("stability_curve") or [] for r in runs]
    alphas = [p["alpha"] for p in curves[0]] if curves and curves[0] else []
    return alphas, [_mean([c[i].get(metric) for c in curves if len(c) == len(alphas)]) for i in range(len(alphas))]


def render(rows: Sequence[Mapping[str, Any]], title: str, formats: Sequence[str] = ("png", "svg")
           ) -> dict[str, bytes] | None:
    """The figure's bytes in each of ``formats``: test error vs α and train loss vs α (a line per level), and the
    test-error barrier vs % weights remaining; ``None`` without stability runs."""
    levels = _by_level(rows)
    if not levels:
        return None
    import matplotlib
    from matplotlib import style
    from matplotlib.ticker import NullLocator

    from lightning_lottery.report.style import RC_STYLE, figure_bytes, new_figure, tick_label

    with style.context("default"), matplotlib.rc_context(RC_STYLE):
        fig = new_figure(13.0, 4.2)
        err_ax, loss_ax, bar_ax = fig.subplots(1, 3)
        for level, runs in levels.items():
            label = f"level {level} ({100 * float(runs[0]['remaining']):.1f}%)"
            for ax, metric, scale in ((err_ax, "test_err", 100.0), (loss_ax, "train_loss", 1.0)):
                alphas, values = _mean_curve(runs, metric)
                points = [(a, v * scale) for a, v in zip(alphas, values) if v is not None]
                if points:
                    ax.plot(*zip(*points), marker="o", markersize=3, label=label)
        err_ax.set(title="Test error along the line", xlabel="α", ylabel="Test error (%)")
        loss_ax.set(title="Train loss along the line", xlabel="α", ylabel="Train loss")
        err_ax.legend(fontsize=7.5, frameon=False)
        stats = [(100 * float(runs[0]["remaining"]), _mean([r.get("barrier_test_err") for r in runs]))
                 for runs in levels.values()]
        stats = [(x, 100 * y) for x, y in stats if y is not None]
        if stats:
            bar_ax.plot(*zip(*stats), marker="o", color="#d62728")
            bar_ax.set_xscale("log")
            bar_ax.xaxis.set_minor_locator(NullLocator())
            bar_ax.set_xticks([x for x, _ in stats], [tick_label(x) for x, _ in stats])
            bar_ax.invert_xaxis()
        bar_ax.axhline(0.0, color="#999", linewidth=0.8)
        bar_ax.set(title="Barrier per level (k = lottery.rewind_to)", xlabel="Weights remaining (%)",
                   ylabel="Test-error barrier (pp)")
        fig.suptitle(title)
        return figure_bytes(fig, formats)


def _cell(value: float | None, scale: float = 1.0, digits: int = 2) -> str:
    return "—" if value is None else f"{scale * value:.{digits}f}"


def section_html(rows: Sequence[Mapping[str, Any]], image: bytes | None) -> str:
    """The page's section: a table per level (mean over replicates) and the figure; empty without stability runs."""
    import base64

    levels = _by_level(rows)
    if not levels:
        return ""
    esc = html.escape
    head = ("<tr><th>level</th><th>% remaining</th><th>n</th><th>test-error barrier (pp)</th>"
            "<th>train-loss barrier</th><th>test acc of the copies (%)</th></tr>")
    body = "".join(
        f"<tr><td>{level}</td><td>{100 * float(runs[0]['remaining']):.1f}</td><td>{len(runs)}</td>"
        f"<td>{_cell(_mean([r.get('barrier_test_err') for r in runs]), 100)}</td>"
        f"<td>{_cell(_mean([r.get('barrier_train_loss') for r in runs]), digits=4)}</td>"
        f"<td>{_cell(_mean([r.get('test_acc') for r in runs]), 100)}</td></tr>" for level, runs in levels.items())
    parts = ['<h2 id="stability">Instability analysis</h2>',
             ("<p>A barrier near 0 means the two copies are linearly mode connected: the network is stable to SGD "
              "noise. Every point of every curve is in <code>stability.csv</code>.</p>"),
             f'<table id="stability-table">{head}{body}</table>']
    if image is not None:
        b64 = base64.b64encode(image).decode("ascii")
        parts.append(f'<figure id="fig-{FIGURE}"><img alt="{esc(CAPTION)}" src="data:image/png;base64,{b64}">'
                     f'<figcaption>{esc(CAPTION)} <a href="{FIGURE}.svg">SVG</a></figcaption></figure>')
    return "\n".join(parts)


def curve_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """Every point of every curve: replicate, level, remaining, alpha, test_err, test_loss, train_err, train_loss."""
    points = [{"replicate": r.get("replicate", 0), "level": r["level"], "remaining": r["remaining"], **p}
              for runs in _by_level(rows).values() for r in runs for p in r.get("stability_curve") or []]
    return csv_text(points, _CURVE_COLUMNS)
