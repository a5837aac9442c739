"""What a whole ``lightning-lottery find`` process costs against the same fits written by hand (issue 18).

    python benchmarks/whole_process.py                       # 5 alternating pairs, default recipe, 2 pruned levels
    python benchmarks/whole_process.py --recipe recipes/lenet300_digits_smoke.yaml --levels 3 --max_steps 0
    python benchmarks/whole_process.py --phases              # one find, in this process, time per phase
    python benchmarks/whole_process.py --phases --cprofile /tmp/find.prof   # the same under cProfile

**Pairs** (the default). Each pair runs, each in a fresh process and a fresh temporary directory:

- (a) ``python -m lightning_lottery.console find --config RECIPE --lottery.levels L --trainer.max_steps S
  --wandb.enabled false`` (L + 1 trainings: level 0 and L pruned levels), and
- (b) ``python benchmarks/plain_fits.py --config RECIPE --fits L+1 --max_steps S``: the same model, data, trainer
  settings and validation cadence, L + 1 Lightning fits plus one test each, with nothing of the plugin.

The order alternates (a, b), (b, a), ... so that drifts of machine speed hit both alike. It reports each pair's
wall times and ratio (a)/(b), the median of the ratios, and the load average before and after every pair.
``--max_steps 0`` keeps the recipe's own budget.

**Phases** (``--phases``). One ``find`` in this process, the time in each phase, *exclusive* of the phases nested
in it (a test inside the report would count as the test's), measured by timers wrapped around the functions that
make each phase (imports: ``import lightning_lottery.cli``, which imports Lightning). With ``--plain`` it does the
same for the plain script's phases (imports, instantiate, trainer, fit, test). ``--cprofile FILE`` runs the find
under ``cProfile`` (Python time is inflated: read the shares) and prints the top functions by cumulative time.

Writes ``OUT/whole_process.json`` (``--out``, default ``benchmarks/results``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = ROOT / "recipes" / "lenet300_fashion_mnist.yaml"


def log(msg: str) -> None:
    print(f"[whole {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["WANDB_MODE"] = "disabled"
    return env


def _recipe_levels_steps(recipe: Path) -> tuple[int, int]:
    import yaml

    data = yaml.safe_load(recipe.read_text())
    return int(data["lottery"]["levels"]), int(data["trainer"]["max_steps"])


def find_argv(recipe: Path, levels: int, max_steps: int | None, out_dir: str) -> list[str]:
    argv = ["find", "--config", str(recipe), "--lottery.levels", str(levels), "--wandb.enabled", "false",
            "--lottery.out_dir", out_dir]
    return argv + (["--trainer.max_steps", str(max_steps)] if max_steps else [])


def plain_argv(recipe: Path, fits: int, max_steps: int | None, out_dir: str) -> list[str]:
    argv = [str(ROOT / "benchmarks" / "plain_fits.py"), "--config", str(recipe), "--fits", str(fits), "--out", out_dir]
    return argv + (["--max_steps", str(max_steps)] if max_steps else [])


def timed_process(argv: list[str], log_file: Path) -> float:
    began = time.perf_counter()
    with log_file.open("w") as f:
        done = subprocess.run([sys.executable, *argv], cwd=ROOT, env=_env(), stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - began
    if done.returncode:
        raise SystemExit(f"{' '.join(argv[:3])} ... failed (exit {done.returncode}); see {log_file}")
    return wall


def pairs(args: argparse.Namespace) -> dict[str, Any]:
    recipe = Path(args.recipe).resolve()
    levels = args.levels if args.levels is not None else _recipe_levels_steps(recipe)[0]
    steps = args.max_steps or None
    rows = []
    logs = Path(args.out) / "whole_process_logs"
    logs.mkdir(parents=True, exist_ok=True)
    for i in range(args.pairs):
        order = ("find", "plain") if i % 2 == 0 else ("plain", "find")
        load_before = os.getloadavg()
        walls: dict[str, float] = {}
        for side in order:
            with tempfile.TemporaryDirectory(prefix=f"whole-{side}-") as tmp:
                out = str(Path(tmp) / "experiment")
                argv = (["-m", "lightning_lottery.console", *find_argv(recipe, levels, steps, out)] if side == "find"
                        else plain_argv(recipe, levels + 1, steps, out))
                walls[side] = timed_process(argv, logs / f"pair{i}_{side}.log")
        row = {"pair": i, "order": list(order), "find_s": round(walls["find"], 3), "plain_s": round(walls["plain"], 3),
               "ratio": round(walls["find"] / walls["plain"], 4), "load_before": load_before,
               "load_after": os.getloadavg()}
        log(f"pair {i + 1}/{args.pairs}: find {row['find_s']} s, plain {row['plain_s']} s, ratio {row['ratio']}, "
            f"load {row['load_before'][0]:.2f} -> {row['load_after'][0]:.2f}")
        rows.append(row)
    return {
        "recipe": str(recipe.relative_to(ROOT)) if recipe.is_relative_to(ROOT) else str(recipe),
        "levels": levels, "trainings": levels + 1, "max_steps": steps, "pairs": rows,
        "median_ratio": statistics.median(r["ratio"] for r in rows),
        "median_find_s": statistics.median(r["find_s"] for r in rows),
        "median_plain_s": statistics.median(r["plain_s"] for r in rows),
        "find_command": "python -m lightning_lottery.console " + " ".join(find_argv(recipe, levels, steps, "TMP")),
        "plain_command": "python " + " ".join(plain_argv(recipe, levels + 1, steps, "TMP")),
    }


# ------------------------------------------------------------------------------------------------------- phases
class PhaseClock:
    """Exclusive time per phase: a wrapped function's time minus that of the wrapped functions it calls."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._stack: list[list[float]] = []  # [start, time of nested phases]
        self._absorbing = 0  # inside a phase that keeps the time of what it calls (preflight's probe fit)

    def wrap(self, owner: Any, name: str, phase: str, absorb: bool = False) -> None:
        original = getattr(owner, name)
        clock = self

        @functools.wraps(original)
        def timed(*a: Any, **k: Any) -> Any:
            if clock._absorbing:
                return original(*a, **k)
            clock._stack.append([time.perf_counter(), 0.0])
            clock._absorbing += absorb
            try:
                return original(*a, **k)
            finally:
                clock._absorbing -= absorb
                start, nested = clock._stack.pop()
                spent = time.perf_counter() - start
                clock.seconds[phase] = clock.seconds.get(phase, 0.0) + spent - nested
                clock.calls[phase] = clock.calls.get(phase, 0) + 1
                if clock._stack:
                    clock._stack[-1][1] += spent

        setattr(owner, name, timed)


def instrument_find(clock: PhaseClock) -> None:
    import lightning.pytorch as pl

    from lightning_lottery import cli, executor, launch, scheduler, store, tracking

    targets: list[tuple[Any, str, str]] = [
        (cli.ArgumentParser, "parse_args", "parse recipe"),
        (cli, "build_parser", "parse recipe"),
        (cli, "_instantiate", "instantiate model and data"),
        (scheduler.PruningScheduler, "__init__", "scheduler set-up (identity, θ0 copy)"),
        (scheduler.PruningScheduler, "preflight", "preflight"),
        (launch, "parallel_probe", "launch probe"),
        (scheduler.PruningScheduler, "_prepare_directory", "writes (bind, prepare, costs)"),
        (scheduler.PruningScheduler, "_write_costs", "writes (bind, prepare, costs)"),
        (executor.Executor, "_trainer", "trainer construction"),
        (pl.Trainer, "fit", "fits"),
        (executor.ResumeCheckpoint, "_save", "checkpoint writes (in fits)"),
        (pl.Trainer, "test", "tests"),
        (scheduler.PruningScheduler, "_start", "run start (mask, rewind point)"),
        (scheduler.PruningScheduler, "_next_mask", "pruning"),
        (tracking, "publish_result", "loggers, W&B (off)"),
        (tracking, "make_loggers", "loggers, W&B (off)"),
        (scheduler.PruningScheduler, "_write_report", "report"),
        (scheduler.PruningScheduler, "_finish", "writes (results, aggregate)"),
    ]
    for method in ("bind", "save_mask", "save_rewind_point", "save_final_state", "save_ticket", "finish",
                   "remove_checkpoints", "write_aggregate"):
        targets.append((store.ExperimentStore, method, "writes (masks, tickets, results)"))
    for owner, name, phase in targets:
        clock.wrap(owner, name, phase, absorb=phase in ("preflight", "launch probe", "report"))


def phases(args: argparse.Namespace) -> dict[str, Any]:
    recipe = Path(args.recipe).resolve()
    levels = args.levels if args.levels is not None else _recipe_levels_steps(recipe)[0]
    steps = args.max_steps or None
    os.environ["WANDB_MODE"] = "disabled"
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    clock = PhaseClock()
    tmp = tempfile.mkdtemp(prefix="whole-phases-")
    began = time.perf_counter()
    if args.plain:
        phase_file = Path(tmp) / "phases.json"
        argv = plain_argv(recipe, levels + 1, steps, tmp) + ["--phases", str(phase_file)]
        wall = timed_process(argv, Path(tmp) / "plain.log")
        clock.seconds = json.loads(phase_file.read_text())
        total_in = clock.seconds.pop("total_in_process")
        clock.seconds["interpreter start, exit"] = wall - total_in
        command = "python " + " ".join(argv)
    else:
        import lightning_lottery.cli  # noqa: F401  (imports Lightning)

        clock.seconds["imports"] = time.perf_counter() - began
        instrument_find(clock)
        from lightning_lottery.console import main

        argv = find_argv(recipe, levels, steps, str(Path(tmp) / "experiment"))
        command = "python -m lightning_lottery.console " + " ".join(argv)
        if args.cprofile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            profiler.runcall(main, argv)
            profiler.dump_stats(args.cprofile)
            pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(args.top)
        else:
            main(argv)
        wall = time.perf_counter() - began
        clock.seconds["other (in find)"] = wall - sum(clock.seconds.values())
    total = sum(clock.seconds.values())
    rows = [{"phase": k, "s": round(v, 3), "share": round(v / total, 4), "calls": clock.calls.get(k)}
            for k, v in sorted(clock.seconds.items(), key=lambda kv: -kv[1])]
    return {"side": "plain" if args.plain else "find", "command": command, "recipe": str(recipe), "levels": levels,
            "max_steps": steps, "total_s": round(total, 3), "phases": rows, "cprofile": args.cprofile}


def markdown(result: dict[str, Any]) -> str:
    if "pairs" in result:
        lines = ["| pair | order | find s | plain s | find / plain | load before → after |", "|---|---|---:|---:|---:|---|"]
        for r in result["pairs"]:
            lines.append(f"| {r['pair'] + 1} | {', '.join(r['order'])} | {r['find_s']:.2f} | {r['plain_s']:.2f} | "
                         f"{r['ratio']:.3f} | {r['load_before'][0]:.2f} → {r['load_after'][0]:.2f} |")
        lines.append(f"| **median** | | {result['median_find_s']:.2f} | {result['median_plain_s']:.2f} | "
                     f"**{result['median_ratio']:.3f}** | |")
        return "\n".join(lines)
    lines = [f"{result['side']}: {result['command']}", "", "| phase | s | share | calls |", "|---|---:|---:|---:|"]
    lines += [f"| {r['phase']} | {r['s']:.3f} | {100 * r['share']:.1f}% | {r['calls'] or ''} |"
              for r in result["phases"]]
    lines.append(f"| total | {result['total_s']:.3f} | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--recipe", default=str(DEFAULT_RECIPE))
    parser.add_argument("--levels", type=int, default=2, help="pruned levels (trainings: levels + 1)")
    parser.add_argument("--max_steps", type=int, default=1500, help="steps per training; 0: the recipe's")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--phases", action="store_true", help="one run, in this process, time per phase")
    parser.add_argument("--plain", action="store_true", help="with --phases: the plain script's phases")
    parser.add_argument("--cprofile", default=None, help="with --phases: profile find with cProfile into this file")
    parser.add_argument("--top", type=int, default=40, help="functions printed with --cprofile")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    started = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "load_start": os.getloadavg(),
               "python": platform.python_version(), "machine": platform.processor() or platform.machine(),
               "cores": os.cpu_count()}
    result = phases(args) if args.phases else pairs(args)
    result.update(started, load_end=os.getloadavg())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "whole_process_phases" if args.phases else "whole_process"
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    print(markdown(result))
    print(f"load average: {result['load_start']} at the start, {result['load_end']} at the end; "
          f"written {out / f'{name}.json'}")


if __name__ == "__main__":
    main()
