"""The HTML page of the report (self-contained: images embedded as base64), its verdict, its Blalock et al. (2020)
checklist and :func:`build_report`, which writes the page, the PNGs and SVGs, ``summary.csv`` and ``aggregate.csv``."""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_lottery.aggregate import branch_sort_key, write_aggregate
from lightning_lottery.atomic import atomic_write_bytes
from lightning_lottery.report.figures import captions, render_all
from lightning_lottery.report.record import ExperimentRecord, load_experiment, main_branch, triple
from lightning_lottery.report.stability import split, write_section
from lightning_lottery.report.table import summary_table, table_csv, table_html
from lightning_lottery.report.verdict import verdict_html, verdict_of
from lightning_lottery.store import ExperimentStore

__all__ = ["build_report"]

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
#verdict{border-left:4px solid #1f77b4;background:#f5f9fd;padding:.2em 1em .4em;margin:1em 0}
#verdict.verdict-none{border-color:#b22222;background:#fdf5f5}#verdict.verdict-undecided{border-color:#999}
#verdict h2{border:none;margin:.4em 0 .2em}#verdict .headline{font-size:1.05em;margin:.3em 0}
"""


def _config_text(config: Mapping[str, Any]) -> tuple[str, str]:
    """The configuration as (format, text): sorted YAML, JSON without PyYAML."""
    try:
        import yaml

        return "YAML", yaml.safe_dump(json.loads(json.dumps(config, default=repr)), sort_keys=True,
                                      default_flow_style=False, allow_unicode=True)
    except ImportError:  # pragma: no cover - PyYAML ships with the dependencies
        return "JSON", json.dumps(config, indent=2, sort_keys=True, default=repr)


def _checks(record: ExperimentRecord, table: Sequence[Mapping[str, Any]]) -> list[tuple[bool, str]]:
    """The Blalock et al. (2020) reporting checklist: (satisfied, text) per item."""
    main = main_branch(record)
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
          notes: Sequence[str], extra: str = "") -> str:
    """The self-contained page: header, verdict, notes, table, embedded figures (and links to their SVGs),
    checklist."""
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
        (f'<p id="progress" class="note"><b>{esc(record.progress.describe())}</b></p>'
         if record.progress is not None and not record.progress.complete else ""),
        verdict_html(verdict_of(record, table)),
        f'<details id="config"><summary>Configuration ({fmt})</summary><pre>{esc(config_text)}</pre></details>',
    ]
    if notes:
        parts.append('<ul class="notes">' + "".join(f'<li class="note">{esc(n)}</li>' for n in notes) + "</ul>")
    parts.append("<h2>Results</h2>")
    parts.append("<p>Means over replicates; ± is the half-width of the 95% confidence interval (Student's t). "
                 "Compression ratio = prunable weights / alive ones; theoretical speedup = multiply-accumulates of "
                 "the dense prunable layers / those of the alive weights (one sample).</p>")
    parts.append(table_html(table, with_speedup=record.costs is not None))
    parts.append("<h2>Figures</h2>")
    for name, caption in captions(record).items():
        data = images.get(name)
        if data is None:
            continue
        b64 = base64.b64encode(data).decode("ascii")
        parts.append(f'<figure id="fig-{name}"><img alt="{esc(caption)}" src="data:image/png;base64,{b64}">'
                     f'<figcaption>{esc(caption)} <a href="{name}.svg">SVG</a></figcaption></figure>')
    if extra:  # the instability analysis, when the experiment ran one
        parts.append(extra)
    parts.append("<h2>Reporting checklist (Blalock et al., 2020)</h2><ul class=\"checks\">")
    parts.extend(f"<li>{'✔' if ok else '✘'} {esc(text)}</li>" for ok, text in _checks(record, table))
    parts.append("</ul></body></html>\n")
    return "\n".join(parts)


def build_report(experiment_dir: str | os.PathLike, output_dir: str | os.PathLike | None = None) -> Path:
    """Write the report of ``experiment_dir`` into ``output_dir`` (default ``experiment_dir/report``) and return
    the path of its ``report.html``; the directory also gets each figure as PNG and SVG, ``summary.csv`` and
    ``aggregate.csv``. The page opens with the verdict (:func:`~lightning_lottery.report.verdict.verdict_of`).

    Reads only the experiment directory, through the store (``experiment.json``, the runs' metrics or
    ``results.json``, ``costs.json``); every file is written atomically. Without ``costs.json`` the speedup
    column is omitted and the report says why.

    Example:
        >>> import json, pathlib, tempfile
        >>> out = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (out / "results.json").write_text(json.dumps(
        ...     [{"branch": "ticket", "replicate": 0, "level": 0, "remaining": 1.0, "test_acc": 0.9}]))
        >>> html_path = build_report(out, out / "elsewhere")
        >>> sorted(p.name for p in html_path.parent.iterdir())  # doctest: +NORMALIZE_WHITESPACE
        ['accuracy.png', 'accuracy.svg', 'aggregate.csv', 'early_stop.png', 'early_stop.svg', 'report.html',
         'summary.csv']
    """
    record = load_experiment(experiment_dir)
    rows, stability_rows = split(record.rows)  # an analysis: not part of the table, verdict, figures
    record = dataclasses.replace(record, rows=rows)
    out = Path(output_dir) if output_dir is not None else ExperimentStore(record.root).report_dir
    dataset, arch, _ = triple(record.config)
    title = f"{arch} on {dataset} — {record.id}"
    notes = list(record.notes)
    if record.costs is None:
        notes.append("Theoretical speedup omitted: this experiment directory has no costs.json (it was written "
                     "before the scheduler recorded per-layer multiply-accumulates).")
    table = summary_table(record.rows, record.costs)
    files = render_all(record, title, ("png", "svg"))
    images = {name: (out["png"] if out else None) for name, out in files.items()}
    if images.get("layers") is None:
        notes.append("Per-layer figure omitted: the results have no per-layer counts ('layers').")
    if images.get("val_loss") is None:
        notes.append("Validation-loss figure omitted: the results have no validation history ('val_history').")
    for name, out_files in files.items():
        for fmt, data in (out_files or {}).items():
            atomic_write_bytes(out / f"{name}.{fmt}", data)
    atomic_write_bytes(out / "summary.csv", table_csv(table, with_speedup=record.costs is not None).encode())
    write_aggregate(record.rows, out / "aggregate.csv")
    extra = write_section(stability_rows, title, out, ExperimentStore(record.root).read_choices())
    html_path = out / "report.html"
    atomic_write_bytes(html_path, _html(record, table, images, notes, extra).encode())
    return html_path
