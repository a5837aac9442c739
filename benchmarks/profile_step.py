"""Where a masked training step spends the time it adds: a torch.profiler comparison of dense and LotteryTicket.

    .venv/bin/python benchmarks/profile_step.py [--model lenet300|conv2] [--optimizer adam|adam-unfused|sgd]
                                                [--steps 200] [--threads 1]

Trains the benchmark's network (batch 60, random in-memory data, the mask of benchmarks/run.py: half of every
prunable weight) once without and once with ``LotteryTicket``, profiles the same steps of both (after warm-up) with
``torch.profiler`` on the CPU, and prints, per training step, the self CPU time of every operator whose time differs
by more than 1% of the dense step between the two, largest differences first. This is the profile behind the
"where a target is missed" notes of docs/performance.md; benchmarks/run.py gives the timings themselves.

``--diagnostic-nonzero-moments`` (a diagnostic that breaks the invariant "optimizer state of pruned entries is
zero", never a mode of the library): after the first step, set Adam's second moment of the pruned entries to 1e-20
instead of 0.0 (pruned weights stay exactly 0.0 because their first moment is 0.0), to show how much of the masked
step's extra time is the optimizer working on exact zeros.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import types
from pathlib import Path
from typing import Any

os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402  (benchmarks/run.py: the same models, data, mask and trainer settings)

OPTIMIZERS = {
    "adam": None,  # the module's own: Adam as in the papers, fused by default (ImageClassifier's `fused`)
    "adam-unfused": lambda ps, lr: torch.optim.Adam(ps, lr=lr, fused=False),  # torch's default implementation
    "sgd": lambda ps, lr: torch.optim.SGD(ps, lr=lr, momentum=0.9),
}


def nonzero_moments_callback(mask: dict[str, torch.Tensor]) -> Any:
    """Diagnostic only: once, after the first step, pruned entries of ``exp_avg_sq`` become 1e-20."""
    from lightning.pytorch.callbacks import Callback

    class NonzeroMoments(Callback):
        done = False

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            if self.done or trainer.global_step == 0:
                return
            params = dict(pl_module.named_parameters())
            for name, m in mask.items():
                state = trainer.optimizers[0].state[params[name]]
                if "exp_avg_sq" in state:
                    state["exp_avg_sq"][~m.to(state["exp_avg_sq"].device)] = 1e-20
            self.done = True

    return NonzeroMoments()


def profile_fit(model: Any, callbacks: list[Any], x: torch.Tensor, y: torch.Tensor, warmup: int,
                steps: int) -> dict[str, float]:
    """Self CPU microseconds per training step, by operator, over ``steps`` steps after ``warmup`` steps."""
    from lightning.pytorch.callbacks import Callback
    from torch.profiler import ProfilerActivity, profile

    from lightning_lottery.data import TensorLoader

    prof = profile(activities=[ProfilerActivity.CPU])

    class Window(Callback):
        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            if trainer.global_step == warmup:
                prof.__enter__()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if trainer.global_step == warmup + steps:
                prof.__exit__(None, None, None)

    trainer = bench.bench_trainer(torch.device("cpu"), warmup + steps, [Window(), *callbacks])
    trainer.fit(model, train_dataloaders=TensorLoader(x, y, batch_size=60, shuffle=True, seed=0))
    return {e.key: e.self_cpu_time_total / steps for e in prof.key_averages()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="lenet300", choices=["lenet300", "conv2"])
    p.add_argument("--optimizer", default="adam", choices=sorted(OPTIMIZERS))
    p.add_argument("--steps", type=int, default=200, help="profiled steps (after 30 warm-up steps)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--diagnostic-nonzero-moments", action="store_true",
                   help="pruned Adam second moments at 1e-20 instead of 0 (breaks an invariant; diagnostic only)")
    args = p.parse_args(argv)
    bench.quiet_lightning()
    torch.set_num_threads(args.threads)
    from lightning_lottery import LotteryTicket

    spec = next(s for s in bench.model_specs("28x28x1") if s.name == args.model)
    base = spec.build()
    if OPTIMIZERS[args.optimizer] is not None:
        lr = float(base.hparams.get("lr", 1e-3))
        make = OPTIMIZERS[args.optimizer]
        base.configure_optimizers = types.MethodType(lambda self: make(self.parameters(), lr), base)
    mask = bench.half_mask(base)
    x, y = bench.random_data(spec.input_shape, 50 * 60)
    warmup = 30
    dense = profile_fit(copy.deepcopy(base), [], x, y, warmup, args.steps)
    extra = [nonzero_moments_callback(mask)] if args.diagnostic_nonzero_moments else []
    masked = profile_fit(copy.deepcopy(base), [LotteryTicket(mask, rewind_to="0it"), *extra], x, y, warmup,
                         args.steps)
    total_d, total_m = sum(dense.values()), sum(masked.values())
    diag = ", DIAGNOSTIC: pruned second moments 1e-20" if args.diagnostic_nonzero_moments else ""
    print(f"{args.model}, {args.optimizer}{diag}, {args.threads} thread(s), {args.steps} profiled steps; self CPU time "
          f"per step (profiler overhead included): dense {total_d / 1e3:.3f} ms, LotteryTicket {total_m / 1e3:.3f} ms "
          f"(+{(total_m - total_d) / 1e3:.3f} ms, x{total_m / total_d:.3f})")
    print()
    print("| operator | dense µs/step | LotteryTicket µs/step | difference µs/step |")
    print("|---|---:|---:|---:|")
    rows = sorted(set(dense) | set(masked), key=lambda k: -abs(masked.get(k, 0.0) - dense.get(k, 0.0)))
    for k in rows:
        d, m = dense.get(k, 0.0), masked.get(k, 0.0)
        if abs(m - d) >= 0.01 * total_d:
            print(f"| `{k}` | {d:.1f} | {m:.1f} | {m - d:+.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
