"""A LightningModule base for the reference classifiers: loss, accuracy, logging, optimizer."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning import LightningModule
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

__all__ = ["ImageClassifier", "OptimizerName", "WarmupMultiStep"]

OptimizerName = Literal["adam", "adamw", "sgd"]


@dataclass
class WarmupMultiStep:
    """LR factor for optimizer step ``s`` (0-based): linear warmup, then ×``gamma`` at each milestone.

    ``factor(s) = min(1, (s + 1) / warmup_steps) * gamma ** (number of milestones <= s)``: the first step
    trains at ``1 / warmup_steps`` of the base rate, step ``warmup_steps - 1`` at the full rate; milestones
    count optimizer steps (as ``MultiStepLR`` does). A plain dataclass rather than a closure, so that
    ``LambdaLR.state_dict`` (checkpoints, rewind points) stores it.

    Example:
        >>> f = WarmupMultiStep(warmup_steps=4, milestones=[6], gamma=0.1)
        >>> [round(f(s), 3) for s in range(8)]
        [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 0.1, 0.1]
    """

    warmup_steps: int = 0
    milestones: Sequence[int] = ()
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if int(self.warmup_steps) < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        self.warmup_steps = int(self.warmup_steps)
        self.milestones = sorted(int(m) for m in self.milestones)
        self.gamma = float(self.gamma)

    def __call__(self, step: int) -> float:
        warmup = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        return warmup * self.gamma ** bisect.bisect_right(self.milestones, step)


class ImageClassifier(LightningModule):
    """Cross-entropy classification around ``self.net``, which subclasses build.

    Logs ``train_loss`` (progress bar and loggers) at the steps Lightning writes to the loggers (every
    ``Trainer(log_every_n_steps=...)`` steps), at the first and the last step and at the last batch of each epoch,
    and ``val_loss``/``val_acc`` and ``test_loss``/``test_acc`` (per epoch; accuracy is the fraction of correct
    predictions). One ``self.log`` call costs more than LeNet-300-100's optimizer step on a CPU, and the loggers
    only receive every ``log_every_n_steps``-th value anyway; ``log_every_n_steps=1`` logs every step.

    ``configure_optimizers`` reads the hyperparameters that subclasses store with ``save_hyperparameters()``:
    ``optimizer`` ("adam", "adamw" or "sgd"), ``lr``, ``momentum`` (sgd only), ``weight_decay``, and optionally
    ``milestones`` + ``gamma`` for a step-based ``MultiStepLR`` (milestones count optimizer steps, not epochs) and
    ``warmup_steps`` for a linear warmup (then one ``LambdaLR`` with :class:`WarmupMultiStep` does both).

    ``fused`` picks Adam/AdamW's implementation. ``None`` (the default) uses torch's fused kernel
    (``fused=True``, on CPU and CUDA) unless a ``GradScaler`` is in use (``precision="16-mixed"``), where
    Lightning unscales before the step and allows gradient clipping only with the unfused optimizers. The reason is
    speed on sparse networks: the unfused CPU Adam takes ``sqrt`` of every second moment, and torch's CPU ``sqrt``
    costs about 8× more per exact zero than per positive value, while a lottery ticket's pruned moments are
    exactly zero (docs/performance.md). The fused kernel runs the same update in one pass; results agree with
    the unfused Adam to rounding. ``fused=False`` gives torch's default implementation, ``True`` forces the fused
    one (also for SGD).

    Example:
        >>> class Linear(ImageClassifier):
        ...     def __init__(self, lr: float = 0.1, optimizer: str = "sgd") -> None:
        ...         super().__init__(num_classes=3)
        ...         self.save_hyperparameters()
        ...         self.net = torch.nn.Linear(4, 3)
        >>> model = Linear()
        >>> model(torch.zeros(2, 4)).shape
        torch.Size([2, 3])
        >>> type(model.configure_optimizers()["optimizer"]).__name__
        'SGD'
    """

    net: nn.Module

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    def forward(self, x: Tensor) -> Tensor:
        """Class logits for a batch of inputs."""
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        if self._log_train_loss_now(batch_idx):
            self.log("train_loss", loss.detach(), on_step=True, on_epoch=False, prog_bar=True, batch_size=len(y))
        return loss

    def _log_train_loss_now(self, batch_idx: int) -> bool:
        """Whether this training step logs ``train_loss``: the steps the loggers write (Lightning writes step
        metrics when ``(optimizer steps so far + 1) % log_every_n_steps == 0``), the first and last step, and the
        last batch of an epoch (so ``callback_metrics`` and the progress bar hold a recent value)."""
        trainer = self._trainer
        if trainer is None or trainer.log_every_n_steps <= 1:
            return True
        step = self.global_step + 1  # the optimizer step this batch completes (counting from 1)
        return (step % trainer.log_every_n_steps == 0 or step == 1 or step == trainer.max_steps
                or batch_idx + 1 == trainer.num_training_batches)

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str, accuracy: MulticlassAccuracy) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        accuracy.update(logits, y)
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, batch_size=len(y), sync_dist=True)
        self.log(f"{stage}_acc", accuracy, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._evaluate(batch, "val", self.val_acc)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._evaluate(batch, "test", self.test_acc)

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x)

    def configure_optimizers(self) -> Any:
        """The optimizer named by ``hparams.optimizer`` and, with ``milestones`` and/or ``warmup_steps``, a
        per-step LR schedule (``MultiStepLR`` without warmup, else ``LambdaLR`` with :class:`WarmupMultiStep`)."""
        hp = self.hparams
        name = str(hp.get("optimizer", "adam")).lower()
        lr = float(hp.get("lr", 1e-3))
        weight_decay = float(hp.get("weight_decay", 0.0))
        params = list(self.parameters())
        fused = self._fused(name, params)
        optimizer: torch.optim.Optimizer
        if name == "adam":
            optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused)
        elif name == "adamw":
            optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)
        elif name == "sgd":
            momentum = float(hp.get("momentum", 0.0))
            optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=fused)
        else:
            raise ValueError(f"unknown optimizer {name!r}; expected 'adam', 'adamw' or 'sgd'")
        milestones = list(hp.get("milestones") or [])
        gamma = float(hp.get("gamma", 0.1))
        warmup_steps = int(hp.get("warmup_steps") or 0)
        scheduler: torch.optim.lr_scheduler.LRScheduler
        if warmup_steps > 0:
            factor = WarmupMultiStep(warmup_steps=warmup_steps, milestones=milestones, gamma=gamma)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=factor)
        elif milestones:
            scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=gamma)
        else:
            return {"optimizer": optimizer}
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _fused(self, name: str, params: list[nn.Parameter]) -> bool | None:
        """``hparams.fused``, with ``None`` resolved: fused Adam/AdamW where torch has the kernel for the
        parameters' device and dtype and no ``GradScaler`` is in use; otherwise torch's default (``None``)."""
        choice = self.hparams.get("fused")
        if choice is not None:
            return bool(choice)
        if name not in ("adam", "adamw") or not params:
            return None
        trainer = self._trainer
        if trainer is not None and getattr(trainer.precision_plugin, "scaler", None) is not None:
            return None
        devices = {p.device.type for p in params}
        floating = all(p.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) for p in params)
        return True if floating and devices <= {"cpu", "cuda"} else None
