"""``RewindSnapshots``: copies of the training state θk at several steps k of one fit (``lottery.stability.at``).

The instability analysis trains every level's subnetwork from each θk; they are taken during level 0's dense
training beside the main line's own rewind point, without changing that training (the callback only reads).
Each copy is written, atomically and by rank 0 only, to its file as soon as its step is reached, so it survives a
kill: a resumed fit finds the files of the steps it already passed and writes the later ones.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> snapshots = RewindSnapshots({"0it": Path(tempfile.mkdtemp()) / "0it.pt"})
    >>> [str(s) for s in snapshots.steps.values()]
    ['0it']
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from lightning_lottery._compat import override
from lightning_lottery.callback import capture_state
from lightning_lottery.rewind import RewindStep

__all__ = ["RewindSnapshots"]


class RewindSnapshots(Callback):
    """Write the training state (as :func:`~lightning_lottery.callback.capture_state` copies it) to ``files[k]``
    when training reaches each step ``k`` (``"500it"``: before that optimizer step; ``"2ep"``: at that epoch's start).

    Args:
        files: the rewind step of each copy → the file it is written to.
    """

    def __init__(self, files: Mapping[str, Path]) -> None:
        self.files = {at: Path(path) for at, path in files.items()}
        self.steps = {at: RewindStep.parse(at) for at in self.files}
        self._written: set[str] = set()  # in this process: a step is written once even with gradient accumulation

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._maybe_write(trainer, pl_module, "ep", trainer.current_epoch)

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._maybe_write(trainer, pl_module, "it", trainer.global_step, batch_idx)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        missing = [at for at, path in self.files.items() if not path.is_file()]
        if trainer.is_global_zero and missing and not trainer.interrupted:
            raise RuntimeError(f"lottery.stability.at {', '.join(missing)} was never reached: level 0 stopped at step "
                               f"{trainer.global_step}, epoch {trainer.current_epoch}; choose earlier steps or train "
                               "longer")

    def _maybe_write(self, trainer: pl.Trainer, pl_module: pl.LightningModule, unit: str, position: int,
                     batch: int = 0) -> None:
        if not trainer.is_global_zero:
            return
        for at, step in self.steps.items():
            if step.unit != unit or at in self._written:
                continue
            if position == step.amount:
                capture_state(trainer, pl_module, batch=batch).save(self.files[at])
                self._written.add(at)
            elif position > step.amount and not self.files[at].is_file():
                raise RuntimeError(f"lottery.stability.at {at} was passed before it could be copied (at {position}): "
                                   f"{self.files[at]} is missing; delete the run's checkpoints to train it again")
