"""The optimizer and LR scheduler of a recipe's ``optimizer:`` / ``lr_scheduler:`` sections (LightningCLI's convention).

Any ``torch.optim`` optimizer (or subclass) and scheduler, for any model, the user's own included: when a recipe
or the command line gives ``--optimizer SGD --optimizer.lr 0.05 [--lr_scheduler StepLR --lr_scheduler.step_size 10]``,
the model's ``configure_optimizers`` is replaced by one that builds them over ``model.parameters()``, as
LightningCLI's ``add_optimizer_args`` / ``add_lr_scheduler_args`` do. Without these sections the model's own
``configure_optimizers`` (the reference models' ``optimizer: adam|adamw|sgd``) is used.

Example:
    >>> import torch
    >>> from lightning_lottery.optimizers import use_recipe_optimizer
    >>> from lightning_lottery.models import LeNet300100
    >>> model = LeNet300100(in_features=4, hidden_sizes=[3])
    >>> use_recipe_optimizer(model, {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.5}})
    >>> type(model.configure_optimizers()).__name__, model.configure_optimizers().defaults["lr"]
    ('SGD', 0.5)
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

__all__ = ["OPTIMIZER_BASES", "SCHEDULER_BASES", "use_recipe_optimizer"]

OPTIMIZER_BASES: tuple[type, ...] = (Optimizer,)
SCHEDULER_BASES: tuple[type, ...] = (LRScheduler, ReduceLROnPlateau)


def _class(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _configure(model: torch.nn.Module, optimizer: Mapping[str, Any], scheduler: Mapping[str, Any] | None,
               monitor: str) -> Any:
    opt = _class(optimizer["class_path"])(model.parameters(), **dict(optimizer.get("init_args") or {}))
    if scheduler is None:
        return opt
    sched = _class(scheduler["class_path"])(opt, **dict(scheduler.get("init_args") or {}))
    config: dict[str, Any] = {"scheduler": sched}
    if isinstance(sched, ReduceLROnPlateau):
        config["monitor"] = monitor
    return {"optimizer": opt, "lr_scheduler": config}


def use_recipe_optimizer(model: torch.nn.Module, optimizer: Mapping[str, Any] | None,
                         scheduler: Mapping[str, Any] | None = None, monitor: str = "val_loss") -> None:
    """Make ``model.configure_optimizers`` build ``optimizer`` (and ``scheduler``), each a ``{"class_path",
    "init_args"}`` mapping; a scheduler needs an optimizer. ``ReduceLROnPlateau`` monitors ``monitor``."""
    if optimizer is None:
        if scheduler is not None:
            raise ValueError("lr_scheduler needs an optimizer section too (--optimizer CLASS): the scheduler steps it")
        return
    model.configure_optimizers = functools.partial(_configure, model, dict(optimizer),  # type: ignore[method-assign]
                                                   dict(scheduler) if scheduler is not None else None, monitor)
