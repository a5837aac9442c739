"""Inference latency and throughput of model variants, measured side by side. Pure torch, no Lightning.

Every variant runs on the same random batch; a round times each variant once (a block of calls lasting about
``block_s``), in an order that rotates from round to round, so load on a shared machine hits all alike. Reported:
the median seconds per batch over the rounds (after warm-up rounds), samples per second, and the median over rounds
of each variant's time over dense's in the same round. The machine and its load average before and after are
recorded with the numbers.

Example:
    >>> import torch
    >>> from torch import nn
    >>> rows = measure({"dense": nn.Linear(4, 2)}, (4,), batch_sizes=(1,), thread_counts=(1,), rounds=2, block_s=0.001)
    >>> sorted(rows[0])
    ['batch_size', 'latency_s', 'ratio_to_dense', 'speedup_vs_dense', 'threads', 'throughput_per_s', 'variant']
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_lottery.export.sparse import threads

__all__ = ["machine", "measure", "table"]


def machine() -> dict[str, Any]:
    """CPU model, core counts, torch version and threads, the load average now."""
    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "cpu_model": cpu,
            "cpu_count": os.cpu_count(), "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else None, "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "python": platform.python_version(), "torch": torch.__version__, "mkl": torch.backends.mkl.is_available()}


def _block(fn: Callable[[], Any], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


@torch.no_grad()
def measure(models: Mapping[str, nn.Module | Mapping[int, nn.Module]], input_shape: Sequence[int],
            batch_sizes: Sequence[int] = (1, 256), thread_counts: Sequence[int] = (1, 0), rounds: int = 15,
            warmup: int = 3, block_s: float = 0.02, seed: int = 0) -> list[dict[str, Any]]:
    """Rows ``{variant, batch_size, threads, latency_s, throughput_per_s, ratio_to_dense, speedup_vs_dense}``.

    ``models`` maps a name to a model, or to ``{batch_size: model}`` for variants chosen per batch size (sparse). A
    thread count of 0 means all cores (``os.cpu_count()``). The first variant is the baseline ("dense")."""
    rows: list[dict[str, Any]] = []
    names = list(models)
    for n_threads in thread_counts:
        count = n_threads or os.cpu_count() or 1
        with threads(count):
            for batch in batch_sizes:
                x = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(seed))
                chosen = {n: (m[batch] if isinstance(m, Mapping) else m).eval() for n, m in models.items()}
                fns = {n: (lambda m=m, x=x: m(x)) for n, m in chosen.items()}
                calls = {}
                for n, fn in fns.items():
                    t = _block(fn, 1)
                    calls[n] = max(1, min(2000, int(block_s / max(t, 1e-7))))
                times: dict[str, list[float]] = {n: [] for n in names}
                for r in range(warmup + rounds):
                    order = names[r % len(names):] + names[:r % len(names)]
                    for n in order:
                        t = _block(fns[n], calls[n])
                        if r >= warmup:
                            times[n].append(t)
                base = times[names[0]]
                for n in names:
                    ratio = statistics.median(a / b for a, b in zip(times[n], base))
                    latency = statistics.median(times[n])
                    rows.append({"variant": n, "batch_size": batch, "threads": count, "latency_s": latency,
                                 "throughput_per_s": batch / latency, "ratio_to_dense": ratio,
                                 "speedup_vs_dense": 1.0 / ratio})
    return rows


def table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A markdown table of :func:`measure`'s rows."""
    lines = ["| variant | batch | threads | latency (ms) | samples/s | speedup vs dense |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['batch_size']} | {r['threads']} | {r['latency_s'] * 1e3:.3f} | "
                     f"{r['throughput_per_s']:,.0f} | {r['speedup_vs_dense']:.2f}× |")
    return "\n".join(lines)
