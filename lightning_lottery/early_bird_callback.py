"""``EarlyBirdWatch``: the early-bird rule (:mod:`lightning_lottery.early_bird`) run inside one ``fit``.

Every ``lottery.early_bird.every`` steps it asks for the mask the level's pruning would produce from the current
weights, logs its ``mask_distance`` to the run's loggers and, once the ticket is declared, stops the fit there
(``stop: true``) so that the next level is pruned from the weights of that step. Its window of masks is part of the
checkpoint: a killed run resumed declares at the same step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from lightning_lottery._compat import override
from lightning_lottery.early_bird import EarlyBird, MaskWindow
from lightning_lottery.masks import Mask

__all__ = ["EarlyBirdWatch"]


class EarlyBirdWatch(Callback):
    """Draws the level's next mask every ``settings.every`` steps and stops the fit when it has settled.

    Args:
        settings: ``lottery.early_bird``.
        draw: the mask the level's pruning gives for the model's current weights.
        ready: whether the fit may stop now (the rewind point must have been captured first).

    Example:
        >>> import torch
        >>> watch = EarlyBirdWatch(EarlyBird(every="10it", window=2), draw=lambda: {"w": torch.ones(3, dtype=torch.bool)})
        >>> watch.window.window, watch.found, watch.fields(100)
        (2, None, {'early_bird_step': None, 'steps_saved': 0})
    """

    def __init__(self, settings: EarlyBird, draw: Callable[[], Mask], ready: Callable[[], bool] = lambda: True
                 ) -> None:
        self.settings, self.draw, self.ready = settings, draw, ready
        self.window = MaskWindow(settings.window, settings.eps)
        self.planned: int | None = None  # the steps the fit was given
        self.stopped = False

    @property
    def found(self) -> int | None:
        """The step at which the ticket was declared (``None``: not yet)."""
        return self.window.found

    @property
    @override
    def state_key(self) -> str:
        return type(self).__qualname__

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"window": self.window.state_dict(), "stopped": self.stopped}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.window.load_state_dict(state_dict["window"])
        self.stopped = bool(state_dict["stopped"])

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        planned = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else trainer.estimated_stepping_batches
        self.planned = int(planned) if planned != float("inf") else None
        if self.stopped:  # resumed from a checkpoint written at the step it stopped: stop again, at once
            trainer.should_stop = True

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step == 0 or step % self.settings.interval:
            return
        distance = self.window.add(step, self.draw())
        if distance is not None:
            for logger in trainer.loggers:
                logger.log_metrics({"mask_distance": distance}, step=step)
        if self.settings.stop and self.found is not None and not self.stopped and self.ready():
            self.stopped = True
        if self.stopped:
            trainer.should_stop = True

    def fields(self, steps: int) -> dict[str, int | None]:
        """The run's :class:`~lightning_lottery.result.RunResult` fields after a fit of ``steps`` steps: the step
        the ticket was declared at and the steps not trained because of it."""
        saved = max(self.planned - steps, 0) if self.stopped and self.planned is not None else 0
        return {"early_bird_step": self.found, "steps_saved": saved}
