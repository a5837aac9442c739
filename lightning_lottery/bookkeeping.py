"""A run's bookkeeping callbacks: the validation history, the resume checkpoint, and one callback that holds them.

:class:`Bookkeeping` puts the parts behind one Lightning callback (Lightning calls every hook of every callback at
every step); :class:`ValidationHistory` keeps the early-stopping iteration's weights; :class:`ResumeCheckpoint`
writes ``last.ckpt`` after its step's validation. The executor builds them for every run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from lightning_lottery._compat import override
from lightning_lottery.atomic import atomic_commit, temporary_name
from lightning_lottery.rewind import cpu_copy

__all__ = ["Bookkeeping", "ResumeCheckpoint", "ValidationHistory"]


class ValidationHistory(Callback):
    """Records ``(step, val_loss, val_acc)`` at every validation and a CPU copy of the model's state at the best
    one (the early-stopping iteration); both are part of the checkpoint, so they survive a resume.

    A copy in memory costs one CPU copy of the state dict per improvement of the validation loss, where a
    checkpoint file would be a write of the model, optimizer and callback states each time.

    Example:
        >>> history = ValidationHistory()
        >>> history.history, history.best(), history.best_weights
        ([], None, None)
    """

    def __init__(self, monitor: str = "val_loss", accuracy: str = "val_acc") -> None:
        self.monitor, self.accuracy = monitor, accuracy
        self.history: list[dict[str, float]] = []
        self.best_weights: dict[str, torch.Tensor] | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "best_weights": self.best_weights}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict["history"])
        self.best_weights = state_dict.get("best_weights")

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        row = {"step": trainer.global_step, self.monitor: float(trainer.callback_metrics[self.monitor])}
        if self.accuracy in trainer.callback_metrics:
            row[self.accuracy] = float(trainer.callback_metrics[self.accuracy])
        self.history.append(row)
        if self.best() is row:
            self.best_weights = cpu_copy(pl_module.state_dict())

    def best(self) -> dict[str, float] | None:
        """The entry with the smallest monitored value (the earliest one on ties)."""
        return min(self.history, key=lambda r: r[self.monitor]) if self.history else None


class ResumeCheckpoint(Callback):
    """Writes ``last.ckpt`` every ``every`` steps (``None``: every epoch), *after* that step's validation when one runs at it, atomically.

    A checkpoint written before its step's validation would lose that validation on resume (Lightning does not
    re-run it), and with it the early-stopping iteration; one written after it resumes to exactly the history of an
    uninterrupted run. A step expects a validation when ``val_every`` divides it (``None``: at the end of an epoch
    that validates); if the expected validation does not come (no validation data), the checkpoint is written at
    the next step's end.

    Example:
        >>> ResumeCheckpoint(Path("checkpoints/last.ckpt"), every=200, val_every=20).every
        200
    """

    def __init__(self, path: Path, every: int | None, val_every: int | None) -> None:
        self.path, self.every, self.val_every = Path(path), every, val_every
        self._pending = False  # due at this step, waiting for its validation

    def _validates_at(self, trainer: pl.Trainer, batch_idx: int) -> bool:
        if self.val_every:
            return trainer.global_step % self.val_every == 0
        every_epoch = trainer.check_val_every_n_epoch or 0
        return (batch_idx + 1 == trainer.num_training_batches and every_epoch > 0
                and (trainer.current_epoch + 1) % every_epoch == 0)

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._pending:  # the validation expected at the due step did not come
            self._save(trainer)
        due = trainer.global_step % self.every == 0 if self.every else batch_idx + 1 == trainer.num_training_batches
        if due:  # every `every` steps, else at the end of every epoch
            if self._validates_at(trainer, batch_idx):
                self._pending = True
            else:
                self._save(trainer)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending and not trainer.sanity_checking:
            self._save(trainer)

    def _save(self, trainer: pl.Trainer) -> None:
        self._pending = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_name(self.path)
        trainer.save_checkpoint(tmp)  # every rank takes part; rank 0 writes
        if trainer.is_global_zero:
            atomic_commit(tmp, self.path)


class Bookkeeping(Callback):
    """A run's bookkeeping callbacks (validation history, resume checkpoint, progress) behind one callback.

    Lightning calls every hook of every callback at every step, overridden or not (about 0.1 ms per callback per
    step on CPU, issue 18); behind one callback the parts pay that once. Each part is called, in the given order,
    only for the hooks it overrides: ``on_train_batch_end`` and ``on_validation_end`` (a part overriding another
    hook, or a part other than ``state`` with a state, is refused). The checkpoint state is ``state``'s own, under
    its ``state_key``, as if it were a callback of the Trainer itself: checkpoints resume across both layouts.

    Example:
        >>> history = ValidationHistory()
        >>> Bookkeeping(history, [history]).state_key == history.state_key
        True
    """

    HOOKS = ("on_train_batch_end", "on_validation_end")

    def __init__(self, state: Callback, parts: list[Callback]) -> None:
        self.state, self.parts = state, list(parts)
        for part in self.parts:
            extra = [name for name in dir(Callback) if (name.startswith(("on_", "setup", "teardown")) or (
                part is not state and name == "state_dict")) and name not in self.HOOKS
                     and getattr(type(part), name) is not getattr(Callback, name)]
            if extra:
                raise ValueError(f"{type(part).__name__} overrides {extra[0]}, which Bookkeeping does not forward")
        self._state_key = state.state_key  # once: Lightning reads it at every hook call
        self._calls = {hook: [getattr(p, hook) for p in self.parts
                              if getattr(type(p), hook) is not getattr(Callback, hook)] for hook in self.HOOKS}

    @property
    @override
    def state_key(self) -> str:
        return self._state_key

    @override
    def state_dict(self) -> dict[str, Any]:
        return self.state.state_dict()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.state.load_state_dict(state_dict)

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        for call in self._calls["on_train_batch_end"]:
            call(trainer, pl_module, outputs, batch, batch_idx)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for call in self._calls["on_validation_end"]:
            call(trainer, pl_module)
