"""A test-only callback that SIGKILLs its own process at a chosen moment of a chosen run (a hard crash).

Armed by ``LOTTERY_TEST_KILL="<run dir suffix>:<hook>:<global step>"``, e.g. ``level_00:on_train_batch_end:13``;
inert without it, so a rerun of the same recipe (same identity) trains normally.
"""

from __future__ import annotations

import os
import signal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

ENV = "LOTTERY_TEST_KILL"


class KillSwitch(Callback):
    """SIGKILL the process at ``hook`` of the run whose directory ends with the given suffix, at that step."""

    def _maybe_kill(self, trainer: pl.Trainer, hook: str) -> None:
        armed = os.environ.get(ENV)
        if not armed:
            return
        where, want_hook, step = armed.split(":")
        if (hook == want_hook and str(trainer.default_root_dir).rstrip("/").endswith(where)
                and trainer.global_step == int(step) and not trainer.sanity_checking):
            os.kill(os.getpid(), signal.SIGKILL)

    def on_fit_start(self, trainer, pl_module):
        self._maybe_kill(trainer, "on_fit_start")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._maybe_kill(trainer, "on_train_batch_start")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._maybe_kill(trainer, "on_train_batch_end")

    def on_validation_start(self, trainer, pl_module):
        self._maybe_kill(trainer, "on_validation_start")

    def on_validation_end(self, trainer, pl_module):
        self._maybe_kill(trainer, "on_validation_end")

    def on_test_start(self, trainer, pl_module):
        self._maybe_kill(trainer, "on_test_start")
