"""The report's instability analysis (``lottery.stability``): the error-vs-α curves of each (level, k), the barrier vs
k (one line per level), a table, ``rewind_to: auto``'s choice, and ``stability.csv`` (every point of every curve).

The stability runs are an analysis, not a ticket or a control: :func:`split` takes them out of the rows the rest
of the report (table, verdict, figures) is made of. A run's k is its ``at`` (``stability.at``), else its rewind step.

Example:
    >>> rows = [{"branch": "ticket", "level": 0}, {"branch": "stability", "level": 0, "stability_curve": []}]
    >>> [len(part) for part in split(rows)]
    [1, 1]
    >>> k_of({"at": "500it", "rewind_step": 500}), k_of({"rewind_step": 0})
    ('500it', '0it')
"""

from __future__ import annotations

import base64
import html
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_lottery import branches
from lightning_lottery.aggregate import t_quantile
from lightning_lottery.atomic import atomic_write_bytes
from lightning_lottery.store_format import csv_text

__all__ = ["BARRIER_FIGURE", "CAPTION", "FIGURE", "curve_csv", "k_of", "render", "render_barrier", "section_html",
           "split", "write_section"]

FIGURE = "stability"
BARRIER_FIGURE = "stability_barrier"
CAPTION = ("Instability analysis (Frankle et al. 2020): each level's subnetwork m ⊙ θk trained twice from θk under "
           "other data orders; test error and train loss of (1−α)·θ¹ + α·θ² (mean over replicates), one column per "
           "rewind step k, one line per level.")
BARRIER_CAPTION = ("Barrier max_α E(α) − ½(E(0) + E(1)) vs the rewind step k, one line per level: test error (pp) and "
                   "train loss (mean over replicates; bars: 95% CI where there are several).")
_CURVE_COLUMNS = ("replicate", "level", "k", "rewind_step", "remaining", "alpha", "test_err", "test_loss",
                  "train_err", "train_loss")


def _is_analysis(branch: str) -> bool:
    try:
        return branches.get(branch).analysis
    except ValueError:
        return False


def split(rows: Sequence[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """``(the other rows, the stability rows)``."""
    analysis = [r for r in rows if _is_analysis(str(r.get("branch", "")))]
    return [r for r in rows if r not in analysis], analysis


def k_of(row: Mapping[str, Any]) -> str:
    """The rewind step k of a stability row: its ``at``, else its rewind step in iterations."""
    return str(row.get("at") or f"{int(row.get('rewind_step') or 0)}it")


def _groups(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[int, str], list[Mapping[str, Any]]]:
    """The rows per (level, k), by level then by k's step."""
    out: dict[tuple[int, str], list[Mapping[str, Any]]] = {}
    for r in sorted(rows, key=lambda r: (int(r["level"]), int(r.get("rewind_step") or 0), k_of(r),
                                         int(r.get("replicate", 0)))):
        out.setdefault((int(r["level"]), k_of(r)), []).append(r)
    return out


def _ks(groups: Mapping[tuple[int, str], Sequence[Mapping[str, Any]]]) -> list[str]:
    """The rewind steps present, by step."""
    steps = {k: int(runs[0].get("rewind_step") or 0) for (_, k), runs in groups.items()}
    return sorted(steps, key=lambda k: (steps[k], k))


def _mean(values: Sequence[Any]) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return statistics.fmean(kept) if kept else None


def _ci95(values: Sequence[Any]) -> float:
    kept = [float(v) for v in values if v is not None]
    if len(kept) < 2:
        return 0.0
    return t_quantile(0.975, len(kept) - 1) * statistics.stdev(kept) / len(kept) ** 0.5


def _mean_curve(runs: Sequence[Mapping[str, Any]], metric: str) -> tuple[list[float], list[float | None]]:
    curves = [r.get("stability_curve") or [] for r in runs]
    alphas = [p["alpha"] for p in curves[0]] if curves and curves[0] else []
    return alphas, [_mean([c[i].get(metric) for c in curves if len(c) == len(alphas)]) for i in range(len(alphas))]


def _level_label(level: int, runs: Sequence[Mapping[str, Any]]) -> str:
    return f"level {level} ({100 * float(runs[0]['remaining']):.3g}%)"


def render(rows: Sequence[Mapping[str, Any]], title: str, formats: Sequence[str] = ("png", "svg")
           ) -> dict[str, bytes] | None:
    """The curves' figure in each of ``formats``: test error vs α (top) and train loss vs α (bottom), a column per k,
    a line per level; ``None`` without stability runs."""
    groups = _groups(rows)
    if not groups:
        return None
    import matplotlib
    from matplotlib import style

    from lightning_lottery.report.style import RC_STYLE, figure_bytes, new_figure

    ks, levels = _ks(groups), sorted({lv for lv, _ in groups})
    colors = {lv: f"C{i % 10}" for i, lv in enumerate(levels)}
    with style.context("default"), matplotlib.rc_context(RC_STYLE):
        fig = new_figure(max(6.4, 3.3 * len(ks) + 0.6), 6.2)
        axes = fig.subplots(2, len(ks), sharex=True, squeeze=False)
        for col, k in enumerate(ks):
            for row, (metric, scale, name) in enumerate((("test_err", 100.0, "Test error (%)"),
                                                         ("train_loss", 1.0, "Train loss"))):
                ax = axes[row][col]
                for level in levels:
                    runs = groups.get((level, k))
                    if not runs:
                        continue
                    alphas, values = _mean_curve(runs, metric)
                    points = [(a, v * scale) for a, v in zip(alphas, values) if v is not None]
                    if points:
                        ax.plot(*zip(*points), marker="o", markersize=3, color=colors[level],
                                label=_level_label(level, runs))
                if row == 0:
                    ax.set_title(f"k = {k}")
                else:
                    ax.set_xlabel("α  (θ = (1−α)·θ¹ + α·θ²)")
                if col == 0:
                    ax.set_ylabel(name)
        handles: dict[str, Any] = {}
        for ax in axes.ravel():
            for handle, label in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(label, handle)
        if handles:
            fig.legend(list(handles.values()), list(handles), loc="outside lower center", frameon=False,
                       ncol=min(4, len(handles)), title="level (% of weights remaining); mean over replicates",
                       title_fontsize=8.5)
        fig.suptitle(title)
        return figure_bytes(fig, formats)


def render_barrier(rows: Sequence[Mapping[str, Any]], title: str, choices: Mapping[int, Mapping[str, Any]] | None = None,
                   formats: Sequence[str] = ("png", "svg")) -> dict[str, bytes] | None:
    """Barrier vs k, one line per level: test error (pp; with ``rewind_to: auto`` the threshold and the chosen k)
    and train loss; ``None`` without stability runs."""
    groups = _groups(rows)
    if not groups:
        return None
    import matplotlib
    from matplotlib import style

    from lightning_lottery.report.style import RC_STYLE, figure_bytes, new_figure

    ks, levels = _ks(groups), sorted({lv for lv, _ in groups})
    with style.context("default"), matplotlib.rc_context(RC_STYLE):
        fig = new_figure(10.0, 4.4)
        err_ax, loss_ax = fig.subplots(1, 2)
        for i, level in enumerate(levels):
            for ax, key, scale in ((err_ax, "barrier_test_err", 100.0), (loss_ax, "barrier_train_loss", 1.0)):
                points = []
                for x, k in enumerate(ks):
                    runs = groups.get((level, k)) or []
                    mean = _mean([r.get(key) for r in runs])
                    if mean is not None:
                        points.append((x, scale * mean, scale * _ci95([r.get(key) for r in runs])))
                if not points:
                    continue
                label = _level_label(level, groups[next(g for g in groups if g[0] == level)])
                xs, ys, cis = zip(*points)
                ax.errorbar(xs, ys, yerr=cis if any(cis) else None, marker="o", ms=4, capsize=3, color=f"C{i % 10}",
                            label=label)
        for ax in (err_ax, loss_ax):
            ax.set_xticks(range(len(ks)), ks)
            ax.set_xlabel("Rewind step k")
            ax.axhline(0.0, color="#999", linewidth=0.8)
        err_ax.set(title="Test-error barrier", ylabel="Barrier (percentage points)")
        loss_ax.set(title="Train-loss barrier", ylabel="Barrier (loss)")
        for choice in (choices or {}).values():  # rewind_to: auto (the same threshold for every replicate)
            err_ax.axhline(100 * float(choice["max_barrier"]), color="#8b0000", ls="--", lw=1.0,
                           label=f"max_barrier ({100 * float(choice['max_barrier']):g} pp)")
            break
        chosen = sorted({str(c["at"]) for c in (choices or {}).values()})
        for k in chosen:
            if k in ks:
                err_ax.axvline(ks.index(k), color="#8b0000", ls=":", lw=1.0, label=f"chosen k = {k}")
        err_ax.legend(fontsize=7.5, frameon=False)
        fig.suptitle(title)
        return figure_bytes(fig, formats)


def _cell(value: float | None, scale: float = 1.0, digits: int = 2) -> str:
    return "—" if value is None else f"{scale * value:.{digits}f}"


def _figure(name: str, caption: str, image: bytes | None) -> str:
    if image is None:
        return ""
    esc = html.escape
    b64 = base64.b64encode(image).decode("ascii")
    return (f'<figure id="fig-{name}"><img alt="{esc(caption)}" src="data:image/png;base64,{b64}">'
            f'<figcaption>{esc(caption)} <a href="{name}.svg">SVG</a></figcaption></figure>')


def choice_html(choices: Mapping[int, Mapping[str, Any]]) -> str:
    """``rewind_to: auto``'s choice per replicate, with the barriers behind it; empty without one."""
    if not choices:
        return ""
    esc = html.escape
    items = []
    for replicate, c in sorted(choices.items()):
        barriers = ", ".join(f"{k}: {_cell(b, 100)}" for k, b in dict(c.get("barriers", {})).items())
        verdict = ("stable" if c.get("stable") else
                   "<strong>no candidate is stable: the largest is used (flagged)</strong>")
        items.append(f"<li>replicate {replicate}: k = <strong>{esc(str(c['at']))}</strong> ({verdict}); level-"
                     f"{c.get('level')} test-error barriers (pp): {esc(barriers)}</li>")
    first = next(iter(choices.values()))
    return (f'<h3 id="rewind-choice">Rewind step chosen by stability (rewind_to: auto)</h3><p>The smallest k whose '
            f"level-{first.get('level')} subnetwork has a test-error barrier of at most "
            f"{100 * float(first.get('max_barrier', 0.02)):g} pp; the main line and its controls rewind to it "
            f"(<code>replicate_*/rewind_choice.json</code>).</p><ul>{''.join(items)}</ul>")


def section_html(rows: Sequence[Mapping[str, Any]], image: bytes | None, barrier_image: bytes | None = None,
                 choices: Mapping[int, Mapping[str, Any]] | None = None) -> str:
    """The page's section: a table per (level, k) (mean over replicates), the choice, the figures; empty without
    stability runs."""
    groups = _groups(rows)
    if not groups:
        return ""
    head = ("<tr><th>level</th><th>% remaining</th><th>k</th><th>n</th><th>test-error barrier (pp)</th>"
            "<th>train-loss barrier</th><th>test acc of the copies (%)</th></tr>")
    body = "".join(
        f"<tr><td>{level}</td><td>{100 * float(runs[0]['remaining']):.1f}</td><td>{html.escape(k)}</td>"
        f"<td>{len(runs)}</td><td>{_cell(_mean([r.get('barrier_test_err') for r in runs]), 100)}</td>"
        f"<td>{_cell(_mean([r.get('barrier_train_loss') for r in runs]), digits=4)}</td>"
        f"<td>{_cell(_mean([r.get('test_acc') for r in runs]), 100)}</td></tr>" for (level, k), runs in groups.items())
    parts = ['<h2 id="stability">Instability analysis</h2>',
             ("<p>A barrier near 0 means the two copies are linearly mode connected: the subnetwork is stable to SGD "
              "noise from that rewind step on. Every point of every curve is in <code>stability.csv</code>.</p>"),
             f'<table id="stability-table">{head}{body}</table>', choice_html(choices or {}),
             _figure(BARRIER_FIGURE, BARRIER_CAPTION, barrier_image), _figure(FIGURE, CAPTION, image)]
    return "\n".join(p for p in parts if p)


def curve_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """Every point of every curve: replicate, level, k, rewind_step, remaining, alpha, test_err, test_loss, train_err,
    train_loss."""
    points = [{"replicate": r.get("replicate", 0), "level": r["level"], "k": k_of(r),
               "rewind_step": r.get("rewind_step"), "remaining": r["remaining"], **p}
              for runs in _groups(rows).values() for r in runs for p in r.get("stability_curve") or []]
    return csv_text(points, _CURVE_COLUMNS)


def write_section(rows: Sequence[Mapping[str, Any]], title: str, out: Path,
                  choices: Mapping[int, Mapping[str, Any]] | None = None) -> str:
    """Write the section's figures (PNG and SVG) and ``stability.csv`` into ``out``; returns its HTML (empty
    without stability runs)."""
    if not rows:
        return ""
    files = {FIGURE: render(rows, title), BARRIER_FIGURE: render_barrier(rows, title, choices)}
    for name, by_format in files.items():
        for fmt, data in (by_format or {}).items():
            atomic_write_bytes(out / f"{name}.{fmt}", data)
    atomic_write_bytes(out / "stability.csv", curve_csv(rows).encode())
    return section_html(rows, (files[FIGURE] or {}).get("png"), (files[BARRIER_FIGURE] or {}).get("png"), choices)
