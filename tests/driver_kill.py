"""A test-only callback that SIGKILLs the whole process group — the driver and every worker — at a chosen moment of a
chosen run (a crashed node, or ``kill -9`` of the driver and its pool).

Armed by ``LOTTERY_TEST_KILL_GROUP="<run dir suffix>:<global step>"``, e.g. ``replicate_1/ticket/level_01:6``; inert
without it. Start the driver with ``start_new_session=True`` so that the group is only the experiment's processes.
"""

from __future__ import annotations

import os
import signal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

ENV = "LOTTERY_TEST_KILL_GROUP"


class KillGroup(Callback):
    """SIGKILL this process group after the ``step``-th batch of the run whose directory ends with the suffix."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        armed = os.environ.get(ENV)
        if not armed:
            return
        where, step = armed.rsplit(":", 1)
        if str(trainer.default_root_dir).rstrip("/").endswith(where) and trainer.global_step == int(step):
            os.killpg(os.getpgrp(), signal.SIGKILL)
