"""Run by tests/test_distributed.py in a subprocess: a lottery-ticket search on 2 CPU processes (gloo).

    python tests/ddp_experiment.py scheduler STRATEGY OUT_DIR     # PruningScheduler, 2 levels, W&B offline
    python tests/ddp_experiment.py callback STRATEGY OUT_DIR      # LotteryTicket alone: fit, prune, fit
    python tests/ddp_experiment.py mismatch STRATEGY OUT_DIR      # a different mask on each rank: must fail

``DDP_TEST_ACCELERATOR=gpu`` runs on 2 GPUs (NCCL) instead.

Every process writes what it saw (mask and rewind-point checksums, metrics) to ``OUT_DIR/ranks/``; the test
compares the ranks. The model is initialized differently on every rank on purpose: θ0 must be rank 0's
weights after DDP's first broadcast.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from lightning_lottery import LotteryTicket, PruningScheduler
from lightning_lottery.data import DigitsDataModule
from lightning_lottery.masks import checksum
from lightning_lottery.models import LeNet300100
from lightning_lottery.tracking import WandbSettings


def state_checksum(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class Recorder(Callback):
    """Makes ranks start from different weights, then records what every rank trained with."""

    def __init__(self, out: str) -> None:
        self.out = out

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # before DDP wraps the model: rank 0 records its weights, the others perturb theirs
        if stage != "fit":
            return
        if trainer.global_rank == 0:
            self._write(trainer, "setup", {"weights": state_checksum(pl_module.state_dict())})
        else:
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.add_(0.01 * trainer.global_rank)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        lottery = next(c for c in trainer.callbacks if isinstance(c, LotteryTicket))
        metrics = {k: round(float(v), 6) for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
        self._write(trainer, "end", {
            "level": lottery.level,
            "mask": checksum(lottery.mask),
            "rewind": state_checksum(lottery.rewind_point.model),
            "weights": state_checksum(pl_module.state_dict()),
            "step": trainer.global_step,
            "metrics": metrics,
        })

    def _write(self, trainer: pl.Trainer, event: str, record: dict) -> None:
        folder = Path(self.out) / "ranks"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps({"event": event, "pid": os.getpid(), **record}) + "\n")


def trainer_kwargs(strategy: str, out: str) -> dict:
    return dict(accelerator=os.environ.get("DDP_TEST_ACCELERATOR", "cpu"), devices=2, strategy=strategy, max_steps=12, enable_progress_bar=False,
                enable_model_summary=False, callbacks=[Recorder(out)])


def scheduler(strategy: str, out: str) -> None:
    torch.manual_seed(0)
    model = LeNet300100(in_features=64, hidden_sizes=[300, 100])
    data = DigitsDataModule(batch_size=30)
    rows = PruningScheduler(model, data, levels=2, rate=0.5, out_dir=out, val_every_n_steps=4, name="ddp",
                            trainer_kwargs=trainer_kwargs(strategy, out), logger=False,
                            wandb=WandbSettings(project="ddp-test", mode="offline")).run()
    # ddp_spawn: rank 0's weights, back in the main process (flushed: the output must not depend on how W&B exits)
    # one write per line: under ddp both ranks print, and a line written in pieces interleaves with the other's
    sys.stdout.write(f"FINAL {state_checksum(model.state_dict())}\n")
    sys.stdout.write("ROWS " + json.dumps([{k: r[k] for k in ("level", "remaining", "test_acc", "steps")} for r in rows])
                     + "\n")
    sys.stdout.flush()


def callback(strategy: str, out: str) -> None:
    torch.manual_seed(0)
    model = LeNet300100(in_features=64, hidden_sizes=[300, 100])
    data = DigitsDataModule(batch_size=30)
    lottery = LotteryTicket(rewind_to="0it")
    kwargs = trainer_kwargs(strategy, out)
    kwargs["callbacks"] = [lottery, *kwargs["callbacks"]]
    pl.Trainer(**kwargs, logger=False, enable_checkpointing=False, limit_val_batches=0).fit(model, data)
    theta0 = lottery.rewind_point.model  # on ddp_spawn, handed back from the worker
    lottery.prune(model, rate=0.5)
    pl.Trainer(**kwargs, logger=False, enable_checkpointing=False, limit_val_batches=0).fit(model, data)
    zeros = all(int(torch.count_nonzero(p.detach()[~lottery.mask[n]])) == 0
                for n, p in model.named_parameters() if n in lottery.mask)
    line = json.dumps({"rank": int(os.environ.get("LOCAL_RANK", 0)), "level": lottery.level,
                       "theta0": state_checksum(theta0), "remaining": round(lottery.remaining, 4),
                       "zeros": zeros, "mask": checksum(lottery.mask)})
    sys.stdout.write(f"CALLBACK {line}\n")  # one write: the two ranks share the pipe
    sys.stdout.flush()


class RankMask(Callback):
    """Gives every rank a different random half of the weights (a bug the checksum must catch)."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        lottery = next(c for c in trainer.callbacks if isinstance(c, LotteryTicket))
        g = torch.Generator().manual_seed(trainer.global_rank)
        lottery.mask = {n: torch.rand(m.shape, generator=g) < 0.5 for n, m in lottery.mask.items()}


def mismatch(strategy: str, out: str) -> None:
    torch.manual_seed(0)
    model = LeNet300100(in_features=64, hidden_sizes=[300, 100])
    lottery = LotteryTicket({n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters()
                             if n.endswith("weight")})
    kwargs = trainer_kwargs(strategy, out)
    kwargs["callbacks"] = [RankMask(), lottery]
    pl.Trainer(**kwargs, logger=False, enable_checkpointing=False).fit(model, DigitsDataModule(batch_size=30))


if __name__ == "__main__":
    mode, strategy_name, out_dir = sys.argv[1:4]
    {"scheduler": scheduler, "callback": callback, "mismatch": mismatch}[mode](strategy_name, out_dir)
