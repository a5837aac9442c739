"""Processes of an experiment: one process, or every process of a DDP group running the level loop in step.

:func:`launch` looks at the experiment's parallel ``Trainer`` settings. With one process it runs the experiment
here. Under ``ddp`` Lightning's launcher starts the other processes (which run the same program up to here), or
finds them started by torchrun / SLURM, and every process joins one process group before the first level. Under
``ddp_spawn`` the workers are spawned once for the whole experiment; each run's ``Trainer`` joins them with a DDP
strategy rebuilt from the user's settings (comm hooks included, see :func:`~lightning_lottery._compat.ddp_settings`)
and rank 0's final weights come back to the caller's model, as after a spawned fit.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import ParallelStrategy

from lightning_lottery import _compat, distributed

if TYPE_CHECKING:
    from lightning_lottery.scheduler import PruningScheduler

__all__ = ["launch", "parallel_probe"]

_PARALLEL_KEYS = ("accelerator", "strategy", "devices", "num_nodes", "plugins")


def parallel_probe(trainer_kwargs: Mapping[str, Any]) -> pl.Trainer | None:
    """A Trainer with the experiment's parallel settings when they use several processes, else ``None``."""
    kwargs = {k: trainer_kwargs[k] for k in _PARALLEL_KEYS if k in trainer_kwargs}
    if "strategy" not in kwargs and "devices" not in kwargs and "num_nodes" not in kwargs:
        return None
    probe = pl.Trainer(**kwargs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                       enable_model_summary=False)
    if not isinstance(probe.strategy, ParallelStrategy) or probe.world_size == 1:
        return None
    return probe


def launch(scheduler: PruningScheduler) -> list[dict[str, Any]]:
    """Run ``scheduler``'s experiment in the processes its trainer settings ask for; returns the results rows."""
    probe = parallel_probe(scheduler.trainer_kwargs)
    if probe is None:
        return scheduler._run()
    launcher = probe.strategy.launcher
    assert launcher is not None
    if _compat.is_spawn_launcher(launcher):
        _compat.ddp_settings(probe.strategy)  # type: ignore[arg-type]  # settings we cannot carry: refuse now
        # only a path comes back: Lightning joins the workers before it reads their (pipe-sized) result
        weights = Path(launcher.launch(_spawned_worker, scheduler, scheduler.model))
        scheduler.model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        weights.unlink()
        return scheduler.store.results()
    return launcher.launch(_run_in_group, scheduler, probe)


def _run_in_group(scheduler: PruningScheduler, probe: pl.Trainer) -> list[dict[str, Any]]:
    """In every process: join the process group (as the first fit would), then run the experiment."""
    created = not distributed.initialized()
    probe.strategy.setup_environment()
    if not distributed.is_main():
        scheduler.stream = None
    rows = scheduler._run()
    if created:  # leave together: a rank exiting while its peers still talk to it can abort them
        distributed.barrier()
        torch.distributed.destroy_process_group()
    return rows


def _spawned_worker(scheduler: PruningScheduler, model: pl.LightningModule) -> str | None:
    """One ddp_spawn worker: join the process group, run the whole experiment; rank 0 saves the final weights to a
    temporary file and returns its path (the results are in the experiment directory)."""
    probe = parallel_probe(scheduler.trainer_kwargs)
    assert probe is not None
    settings = _compat.ddp_settings(probe.strategy)  # type: ignore[arg-type]
    # every run's Trainer joins these processes instead of spawning new ones
    scheduler.executor.worker_strategy = lambda: _compat.rebuild_ddp(settings)
    _run_in_group(scheduler, probe)
    if not distributed.is_main():
        return None
    fd, path = tempfile.mkstemp(prefix="lightning-lottery-weights-", suffix=".pt")
    with os.fdopen(fd, "wb") as f:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, f)
    return path
