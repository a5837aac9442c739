"""Measured inference speedups of exported tickets, kept in the experiment directory (``measurements.json``).

``lightning-lottery benchmark`` writes them (:func:`record`): per run (replicate, branch, level) and export format,
the rows of :func:`lightning_lottery.export.bench.measure` (every variant, batch size and thread count) and the
machine they were measured on. A later benchmark of the same run and format replaces its entry. The report's table
shows, next to the theoretical speedup, the *headline* measured one (:func:`headline`): the exported model against
dense at the largest batch size measured, with the fewest threads. Pure Python (no torch, no Lightning).

Example:
    >>> import tempfile
    >>> from lightning_lottery.plan import Run
    >>> root = tempfile.mkdtemp()
    >>> rows = [{"variant": v, "batch_size": b, "threads": 1, "speedup_vs_dense": s}
    ...         for v, b, s in (("dense", 1, 1.0), ("sparse", 1, 1.1), ("dense", 256, 1.0), ("sparse", 256, 2.5))]
    >>> record(root, Run(0, "ticket", 3), "sparse", rows, {"cpu_model": "x"})
    >>> headline(read(root)[0])
    {'speedup': 2.5, 'batch_size': 256, 'threads': 1, 'format': 'sparse'}
    >>> merge([{"replicate": 0, "branch": "ticket", "level": 3}], read(root))[0]["measured_speedup"]
    2.5
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_lottery.plan import Run
from lightning_lottery.store import read_json, write_json

__all__ = ["FILE", "headline", "measurement_rows", "merge", "read", "record", "run_of"]

FILE = "measurements.json"
_RUN_DIR = re.compile(r"replicate_(\d+)/([^/]+)/level_(\d+)$")


def _path(root: str | os.PathLike) -> Path:
    return Path(root) / FILE


def read(root: str | os.PathLike) -> list[dict[str, Any]]:
    """The entries of ``root/measurements.json`` (``[]`` when there is none)."""
    path = _path(root)
    return list(read_json(path)) if path.is_file() else []


def record(root: str | os.PathLike, run: Run, fmt: str, rows: Sequence[Mapping[str, Any]],
           machine: Mapping[str, Any]) -> None:
    """Add (or replace) the measurements of ``run``'s model exported as ``fmt``."""
    key = {"replicate": run.replicate, "branch": run.branch, "level": run.level, "format": fmt}
    kept = [e for e in read(root) if {k: e.get(k) for k in key} != key]
    entry = {**key, "machine": dict(machine), "rows": [dict(r) for r in rows]}
    kept.append(entry)
    kept.sort(key=lambda e: (e["replicate"], e["branch"], e["level"], e["format"]))
    write_json(_path(root), kept)


def run_of(run_dir: str | os.PathLike, root: str | os.PathLike) -> Run | None:
    """The run whose directory is ``run_dir`` (``root/replicate_R/BRANCH/level_LL``), else ``None``."""
    try:
        rel = Path(run_dir).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return None
    m = _RUN_DIR.search(rel)
    return Run(int(m.group(1)), m.group(2), int(m.group(3))) if m else None


def headline(entry: Mapping[str, Any]) -> dict[str, Any] | None:
    """The exported variant's speedup over dense at the largest batch size measured, with the fewest threads."""
    rows = [r for r in entry.get("rows", []) if r.get("variant") == entry.get("format")]
    if not rows:
        return None
    best = max(rows, key=lambda r: (r["batch_size"], -r["threads"]))
    return {"speedup": float(best["speedup_vs_dense"]), "batch_size": int(best["batch_size"]),
            "threads": int(best["threads"]), "format": str(entry["format"])}


def merge(rows: Sequence[Mapping[str, Any]], entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` (of ``results.json``) with ``measured_speedup`` where a run was measured (the best format's
    headline speedup when several formats were)."""
    best: dict[tuple[int, str, int], float] = {}
    for e in entries:
        h = headline(e)
        if h is not None:
            key = (int(e["replicate"]), str(e["branch"]), int(e["level"]))
            best[key] = max(best.get(key, 0.0), h["speedup"])
    out = []
    for r in rows:
        key = (int(r.get("replicate", 0)), str(r.get("branch")), int(r.get("level", 0)))
        out.append({**r, "measured_speedup": best[key]} if key in best else dict(r))
    return out


def measurement_rows(entries: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of the W&B ``measured_speedup`` table: one row per run, format, variant and setting.

    Example:
        >>> cols, data = measurement_rows([{"replicate": 0, "branch": "ticket", "level": 1, "format": "sparse",
        ...     "machine": {"cpu_model": "x"}, "rows": [{"variant": "sparse", "batch_size": 1, "threads": 1,
        ...     "latency_s": 0.001, "throughput_per_s": 1000.0, "speedup_vs_dense": 1.5}]}])
        >>> dict(zip(cols, data[0]))["speedup_vs_dense"]
        1.5
    """
    columns = ["replicate", "branch", "level", "format", "variant", "batch_size", "threads", "latency_ms",
               "throughput_per_s", "speedup_vs_dense", "cpu_model"]
    data = []
    for e in entries:
        for r in e.get("rows", []):
            data.append([e["replicate"], e["branch"], e["level"], e["format"], r["variant"], r["batch_size"],
                         r["threads"], 1e3 * float(r.get("latency_s") or 0.0), r.get("throughput_per_s"),
                         r.get("speedup_vs_dense"), (e.get("machine") or {}).get("cpu_model")])
    return columns, data
