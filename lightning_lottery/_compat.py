"""The only module that touches Lightning's private API, each use behind one named function.

``tests/test_compat.py`` has one test per private name relied on here, so a Lightning release that renames or
removes one fails there, with :class:`LightningCompatError` naming it, and not later as a wrong step count.
Tested with the ``lightning`` versions admitted by ``pyproject.toml`` (the upper bound is the newest one tested).

Example:
    >>> from lightning_lottery import _compat
    >>> import lightning.pytorch as pl
    >>> trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
    ...                      enable_model_summary=False)
    >>> _compat.is_spawn_launcher(trainer.strategy.launcher)
    False
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import Any

import lightning
import lightning.pytorch as pl
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import DDPStrategy
from typing_extensions import override

__all__ = ["LightningCompatError", "batch_in_epoch", "quiet_lightning", "batches_done", "ddp_settings", "is_spawn_launcher", "override", "rebuild_ddp", "set_loop_position"]


def quiet_lightning() -> None:
    """Lightning's per-fit banners (GPU available, tips, 'max_steps reached') and its own deprecation noise
    (``isinstance(treespec, LeafSpec)``, from its ``_pytree``) would bury the level progress."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


class LightningCompatError(RuntimeError):
    """This version of Lightning lacks a private name lightning-lottery relies on."""


def _missing(what: str, err: Exception) -> LightningCompatError:
    return LightningCompatError(
        f"lightning {lightning.__version__} has no {what} ({err}); lightning-lottery relies on it: install a "
        "lightning version admitted by lightning-lottery's requirements")


def _spawn_launcher_class() -> type:
    try:
        from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher
    except ImportError as err:
        raise _missing("lightning.pytorch.strategies.launchers.multiprocessing._MultiProcessingLauncher", err) from err
    return _MultiProcessingLauncher


def is_spawn_launcher(launcher: object) -> bool:
    """Whether a strategy's launcher spawns worker processes per fit (``ddp_spawn``, ``ddp_fork``, ...)."""
    return isinstance(launcher, _spawn_launcher_class())


#: DDPStrategy constructor arguments → the private attributes they are kept in.
_DDP_ATTRIBUTES = {
    "process_group_backend": "_process_group_backend",
    "timeout": "_timeout",
    "ddp_comm_state": "_ddp_comm_state",
    "ddp_comm_hook": "_ddp_comm_hook",
    "ddp_comm_wrapper": "_ddp_comm_wrapper",
    "model_averaging_period": "_model_averaging_period",
}


def ddp_settings(strategy: DDPStrategy) -> dict[str, Any]:
    """The user's settings of a DDP strategy, as ``DDPStrategy`` constructor arguments (``torch``'s
    ``DistributedDataParallel`` keyword arguments included), to rebuild it in already started processes.

    Raises ``ValueError`` for settings that cannot be carried over: a custom ``checkpoint_io`` (Lightning's
    default ``TorchCheckpointIO``, which the strategy creates on first use, is fine) or a subclass of
    ``DDPStrategy`` (its behaviour would be lost). The cluster environment is not carried over either: the
    rebuilt strategy gets the one its Trainer detects or is given in ``plugins``.
    """
    if type(strategy) is not DDPStrategy:
        raise ValueError(f"cannot run a {type(strategy).__name__} in the experiment's worker processes: only "
                         "Lightning's own DDPStrategy settings can be carried over; use strategy='ddp' instead")
    try:
        settings = {arg: getattr(strategy, attr) for arg, attr in _DDP_ATTRIBUTES.items()}
        kwargs = dict(strategy._ddp_kwargs)
        checkpoint_io = strategy._checkpoint_io  # None until first used
    except AttributeError as err:
        raise _missing("DDPStrategy attribute", err) from err
    if checkpoint_io is not None and type(checkpoint_io) is not TorchCheckpointIO:
        raise ValueError("a custom checkpoint_io of the DDP strategy cannot be carried into the experiment's "
                         "worker processes; use strategy='ddp'")
    return {**settings, **kwargs}


def rebuild_ddp(settings: Mapping[str, Any]) -> DDPStrategy:
    """A DDP strategy with ``settings`` that joins processes which exist already (no launcher of its own)."""
    return DDPStrategy(start_method="popen", **settings)


def set_loop_position(trainer: pl.Trainer, step: int, epoch: int, batch: int = 0, batches: int | None = None) -> None:
    """Make the fit loop continue from optimizer step ``step``, ``batch`` training batches into epoch ``epoch``, as
    Lightning's restore of a mid-epoch checkpoint does: the epoch then runs only its remaining batches, so
    ``max_epochs`` ends where it ended before. ``batches`` is the number of training batches done in all (it drives
    step-based validation); ``None`` means ``step`` × ``accumulate_grad_batches``.

    Called from ``on_train_start`` (after the fit loop's own reset). For ``batch > 0`` the epoch loop is marked as
    restarting, which is how a checkpoint restore keeps ``batch_progress.current`` through the epoch loop's reset;
    that reset then counts one more ``_batches_that_stepped`` (a checkpoint leaves the last one out), so it is set
    one lower here. The data loader is not fast-forwarded (neither is a non-resumable one by a checkpoint restore):
    the remaining batches of the epoch are drawn from its start, and Lightning says so in a ``PossibleUserWarning``.
    """
    if step == 0 and epoch == 0 and batch == 0:
        return
    try:
        epoch_loop = trainer.fit_loop.epoch_loop
        if trainer.lightning_module.automatic_optimization:
            tracker = epoch_loop.automatic_optimization.optim_progress.optimizer.step.total
        else:
            tracker = epoch_loop.manual_optimization.optim_step_progress.total
        total_batches = epoch_loop.batch_progress.total  # step-based validation (val_check_interval) counts these
        epoch_batches = epoch_loop.batch_progress.current
        epochs = (trainer.fit_loop.epoch_progress.current, trainer.fit_loop.epoch_progress.total)
        epoch_loop._batches_that_stepped  # noqa: B018 - checked before anything is changed
        epoch_loop.restarting  # noqa: B018
    except AttributeError as err:
        raise _missing("fit-loop progress counter", err) from err
    accumulate = trainer.accumulate_grad_batches
    tracker.ready = tracker.completed = step
    epoch_loop._batches_that_stepped = step
    done = batches if batches is not None else step * accumulate
    total_batches.ready = total_batches.started = total_batches.processed = total_batches.completed = done
    for progress in epochs:
        progress.ready = progress.started = progress.processed = progress.completed = epoch
    if batch > 0:
        epoch_batches.ready = epoch_batches.started = epoch_batches.processed = epoch_batches.completed = batch
        if batch % accumulate == 0:  # the epoch loop's reset adds the step a checkpoint does not count yet
            epoch_loop._batches_that_stepped = step - 1
        epoch_loop.restarting = True


def batches_done(trainer: pl.Trainer) -> int:
    """The number of training batches completed so far in this fit's loop (all epochs)."""
    try:
        return int(trainer.fit_loop.epoch_loop.batch_progress.total.completed)
    except AttributeError as err:
        raise _missing("fit-loop batch progress counter", err) from err


def batch_in_epoch(trainer: pl.Trainer) -> int:
    """The index, within the current epoch, of the training batch about to run (Lightning counts it as "ready"
    right after ``on_after_batch_transfer``)."""
    try:
        return int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)
    except AttributeError as err:
        raise _missing("fit-loop batch progress counter", err) from err
