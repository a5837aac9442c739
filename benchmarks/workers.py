"""Runs at once (issue 17): wall time of a shortened controls recipe with 1 and with N local workers.

    .venv/bin/python benchmarks/workers.py [--pairs 3] [--workers 2] [--max_steps 300] [--levels 11] \
        [--replicates 3] [--out benchmarks/results/workers]

The recipe is ``lenet300_fashion_mnist_controls`` (Fashion-MNIST, offline) with fewer steps per run: the same graph
shape — per replicate the main line's levels 0..L, plus ``random_reinit`` and ``random_mask`` at every level ≥ 1.
Trials alternate (1 worker, N workers, 1, N, ...) so that machine noise hits both alike; each trial is a fresh
``lightning-lottery find`` in a fresh directory (W&B off, quiet), timed from start to exit. Reported: the median
wall time of each, their ratio (the speedup), the 1-minute load average before and after every trial, and two
bounds from the sequential trial's ``results.csv``: the total training time (``sum wall_s``) and the critical path
(the longest chain of runs by ``wall_s``, :meth:`lightning_lottery.plan.Plan.critical_path`: what unlimited workers
could not beat). Writes ``OUT/workers.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_lottery.plan import Plan, Run  # noqa: E402


def trial(workers: int, out_dir: Path, args: argparse.Namespace) -> dict[str, float]:
    command = [sys.executable, "-m", "lightning_lottery.console", "find", "--config", "lenet300_fashion_mnist_controls",
               "--trainer.max_steps", str(args.max_steps), "--lottery.levels", str(args.levels),
               "--lottery.replicates", str(args.replicates), "--lottery.out_dir", str(out_dir),
               "--wandb.enabled", "false", "--quiet", "true"]
    if workers > 1:
        command += ["--launcher", "local", "--workers", str(workers)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
    load_before = os.getloadavg()[0]
    began = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - began
    if proc.returncode != 0:
        raise SystemExit(f"trial with {workers} worker(s) failed:\n{proc.stderr[-3000:]}")
    return {"workers": workers, "wall_s": round(wall, 2), "load_before": load_before,
            "load_after": os.getloadavg()[0]}


def bounds(out_dir: Path, args: argparse.Namespace) -> dict[str, float]:
    """Total training time and the critical path, from a finished directory's per-run ``wall_s``."""
    with open(out_dir / "results.csv") as f:
        seconds = {Run(int(r["replicate"]), r["branch"], int(r["level"])): float(r["wall_s"]) for r in csv.DictReader(f)}
    plan = Plan(args.levels, args.replicates, "ticket", ("random_reinit", "random_mask"))
    path = plan.critical_path(cost=lambda run: seconds[run])
    return {"runs": len(seconds), "sum_wall_s": round(sum(seconds.values()), 2),
            "critical_path_s": round(sum(seconds[r] for r in path), 2), "critical_path_runs": len(path)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3, help="alternating (1 worker, N workers) pairs")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max_steps", type=int, default=300, help="training steps per run (the recipe: 3000)")
    parser.add_argument("--levels", type=int, default=11)
    parser.add_argument("--replicates", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "workers")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="lottery-workers-"))
    trials, bound = [], None
    try:
        for pair in range(args.pairs):
            for workers in (1, args.workers):
                out_dir = scratch / f"p{pair}-w{workers}"
                trials.append({"pair": pair, **trial(workers, out_dir, args)})
                print(json.dumps(trials[-1]), flush=True)
                if workers == 1 and bound is None:
                    bound = bounds(out_dir, args)
                shutil.rmtree(out_dir, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    one = statistics.median(t["wall_s"] for t in trials if t["workers"] == 1)
    many = statistics.median(t["wall_s"] for t in trials if t["workers"] == args.workers)
    summary = {"median_1_worker_s": one, f"median_{args.workers}_workers_s": many, "speedup": round(one / many, 3),
               **(bound or {}), "cores": os.cpu_count(), "machine": platform.platform(),
               "python": platform.python_version(), "settings": {k: str(v) for k, v in vars(args).items()},
               "trials": trials}
    (args.out / "workers.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n| workers | median wall (s) | speedup |\n|---|---|---|\n| 1 | {one:.1f} | 1.00 |\n"
          f"| {args.workers} | {many:.1f} | {one / many:.2f} |\n")
    if bound:
        print(f"{bound['runs']} runs, {bound['sum_wall_s']:.1f} s of training in all; critical path "
              f"{bound['critical_path_s']:.1f} s ({bound['critical_path_runs']} runs): the bound for many workers")
    loads = [t["load_before"] for t in trials]
    print(f"load average (1 min) before the trials: {min(loads):.2f}-{max(loads):.2f}; written {args.out / 'workers.json'}")


if __name__ == "__main__":
    main()
