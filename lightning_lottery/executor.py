"""One run of an experiment: callbacks, ``Trainer``, fit, the tests at the end and at the early-stopping iteration.

:class:`Executor` knows nothing of levels, branches or files beyond the run's own directory: it is handed the
mask and the state to start from, trains, tests, and returns a :class:`Trained` with the typed
:class:`~lightning_lottery.result.RunResult`. Under a multi-process strategy every rank calls it in step.

Events: an ``on_event(name, run)`` function, when given, is called at ``trainer_made``, ``fit_start``,
``fit_end``, ``test_start`` and ``test_end`` (the early-stop test and, in a stability run, every evaluation along
the interpolation included); the scheduler adds ``run_start``,
``prune_start``, ``prune_end`` and ``run_end``. ``benchmarks/run.py`` times the phases of a level with them.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from lightning.pytorch.strategies import Strategy

from lightning_lottery import distributed, stability
from lightning_lottery.bookkeeping import Bookkeeping, ResumeCheckpoint, ValidationHistory
from lightning_lottery.callback import LotteryTicket, capture_state
from lightning_lottery.config import LotteryConfig
from lightning_lottery.data.tensor_datamodule import TensorDataModule
from lightning_lottery.early_bird_callback import EarlyBirdWatch
from lightning_lottery.masks import Mask, count_alive, count_total, layer_counts, remaining
from lightning_lottery.plan import Run
from lightning_lottery.result import RunResult
from lightning_lottery.rewind import RewindState, cpu_copy
from lightning_lottery.snapshots import RewindSnapshots
from lightning_lottery.stability import Stability
from lightning_lottery.store import LevelInfo

__all__ = ["Bookkeeping", "Executor", "ResumeCheckpoint", "Trained", "ValidationHistory"]

EventHandler = Callable[[str, Run], None]


@dataclass
class Trained:
    """What a run leaves behind: its result, the rewind point of its fit, its final state when asked for, and its
    loggers (still open: the scheduler logs the result and closes them)."""

    result: RunResult
    rewind_point: RewindState
    final_state: RewindState | None = None
    loggers: list[Logger] = field(default_factory=list)


class Executor:
    """Trains and tests one run with a fresh ``Trainer`` built from ``trainer_kwargs``.

    Args:
        model: the ``LightningModule`` (trained in place).
        datamodule: the ``LightningDataModule``.
        config: the experiment's settings (rewind point, prunable patterns, validation and checkpoint cadence).
        trainer_kwargs: ``Trainer`` arguments of every run; the user's callbacks are deep-copied per run.
        on_event: called with ``(event, run)`` at the phases listed in the module docstring.

    ``worker_strategy``, when set (inside ``ddp_spawn``'s workers), builds each run's strategy.
    """

    def __init__(self, model: pl.LightningModule, datamodule: pl.LightningDataModule, config: LotteryConfig,
                 trainer_kwargs: Mapping[str, Any], on_event: EventHandler | None = None) -> None:
        self.model, self.datamodule, self.config = model, datamodule, config
        self.trainer_kwargs = dict(trainer_kwargs)
        self.on_event = on_event
        self.worker_strategy: Callable[[], Strategy] | None = None

    def emit(self, event: str, run: Run) -> None:
        if self.on_event is not None:
            self.on_event(event, run)

    def execute(self, run: Run, mask: Mask, start: RewindState | None, *, seed: int, max_steps: int | None,
                info: LevelInfo, loggers: list[Logger], progress: Callback, keep_final_state: bool,
                early_bird: EarlyBirdWatch | None = None, snapshots: Mapping[str, Path] | None = None) -> Trained:
        """Fit ``run`` from ``start`` (``None``: the model as it is) with ``mask``, resuming its checkpoint if one
        exists; test the final weights and those at the early-stopping iteration. ``early_bird`` (a main-line run
        that prunes, with ``lottery.early_bird``) may stop the fit early; its fields go into the result.
        ``snapshots``: rewind step → file of the training-state copies written meanwhile
        (:class:`~lightning_lottery.snapshots.RewindSnapshots`)."""
        cfg = self.config
        began = time.perf_counter()
        lottery = LotteryTicket(mask, rewind_to=cfg.level0_rewind_to, include=cfg.include, exclude=cfg.exclude,
                                rewind_point=start)
        lottery.level = run.level
        history = ValidationHistory()
        resume = info.directory / "checkpoints" / "last.ckpt"
        every = cfg.checkpoint_every_n_steps or (10 * cfg.val_every_n_steps if cfg.val_every_n_steps else None)
        last = ResumeCheckpoint(resume, every, cfg.val_every_n_steps)  # after `history`: it sees the validation
        watch = [early_bird] if early_bird is not None else []  # before `last`: its window is in the checkpoint
        if early_bird is not None:
            early_bird.ready = lambda: lottery.rewind_point is not None
        copies = [RewindSnapshots(snapshots)] if snapshots else []
        trainer = self._trainer(info, [lottery, *copies, *watch, Bookkeeping(history, [history, last, progress])],
                                loggers, max_steps)
        self.emit("trainer_made", run)

        pl.seed_everything(seed, workers=True, verbose=False)
        ckpt_path = distributed.broadcast(str(resume) if resume.is_file() else None)
        self.emit("fit_start", run)
        trainer.fit(self.model, datamodule=self.datamodule, ckpt_path=ckpt_path, weights_only=True)
        self.emit("fit_end", run)
        if trainer.interrupted:
            raise KeyboardInterrupt(f"{run} was interrupted; rerun the same command to resume it")
        rewind_point = lottery.rewind_point
        assert rewind_point is not None
        final_state = capture_state(trainer, self.model) if keep_final_state and distributed.is_main() else None
        test = self._test(trainer, run)
        best, val_history = history.best(), list(history.history)
        if distributed.broadcast(best is not None and best["step"] == trainer.global_step):
            early = test  # the early-stopping iteration is the last one: the same weights
        else:
            early = self._test_weights(trainer, run, history.best_weights) if history.best_weights is not None else {}
        result = RunResult(
            branch=run.branch, replicate=run.replicate, seed=seed, level=run.level,
            remaining=remaining(mask), alive=count_alive(mask), total=count_total(mask),
            test_acc=test.get("test_acc"), test_loss=test.get("test_loss"),
            early_stop_iter=best["step"] if best else None, early_stop_test_acc=early.get("test_acc"),
            min_val_loss=best["val_loss"] if best else None,
            best_val_acc=max((r.get("val_acc", float("nan")) for r in val_history), default=None),
            steps=trainer.global_step, wall_s=round(time.perf_counter() - began, 3),
            rewind_step=rewind_point.step, layers=layer_counts(mask), val_history=val_history,
            **(early_bird.fields(trainer.global_step) if early_bird is not None else {}),
        )
        return Trained(result, rewind_point, final_state, loggers)

    def _trainer(self, info: LevelInfo, own: list[Callback], loggers: list[Logger], max_steps: int | None
                 ) -> pl.Trainer:
        cfg = self.config
        kwargs = dict(self.trainer_kwargs)
        user_callbacks = kwargs.pop("callbacks", None) or []
        if isinstance(user_callbacks, Callback):
            user_callbacks = [user_callbacks]
        # ours first: user callbacks see the rewound, masked model in their hooks
        kwargs["callbacks"] = own + [copy.deepcopy(c) for c in user_callbacks]
        kwargs["default_root_dir"] = str(info.directory)
        kwargs["enable_checkpointing"] = False  # ResumeCheckpoint writes the run's checkpoint
        # one progress line per run (ours) instead of a bar and a model summary per fit, unless asked for
        kwargs.setdefault("enable_progress_bar", False)
        kwargs.setdefault("enable_model_summary", False)
        kwargs["logger"] = loggers if loggers else False
        if cfg.validation_cadence:
            kwargs.update(cfg.validation_cadence)
            if kwargs.get("num_sanity_val_steps") is None:
                kwargs["num_sanity_val_steps"] = 0
        if max_steps is not None:  # a later level trains to the same final step as level 0
            kwargs["max_steps"] = max_steps
            kwargs["max_epochs"] = -1
        if self.worker_strategy is not None:  # inside ddp_spawn's workers: the processes exist, join them
            kwargs["strategy"] = self.worker_strategy()
        return pl.Trainer(**kwargs)

    def _test(self, trainer: pl.Trainer, run: Run) -> dict[str, float]:
        self.emit("test_start", run)
        results = trainer.test(self.model, datamodule=self.datamodule, verbose=False)
        self.emit("test_end", run)
        return {k: float(v) for k, v in (results[0] if results else {}).items()}

    def _test_weights(self, trainer: pl.Trainer, run: Run, weights: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Test the model with ``weights`` loaded, then give it its own weights back."""
        own = cpu_copy(self.model.state_dict())
        self.model.load_state_dict(weights)
        try:
            return self._test(trainer, run)
        finally:
            self.model.load_state_dict(own)

    # ------------------------------------------------------------------------------------ the stability run
    def stability(self, run: Run, mask: Mask, start: RewindState, *, seeds: tuple[int, int], max_steps: int | None,
                  info: LevelInfo, progress: Callback, settings: Stability, loggers: list[Logger]) -> Trained:
        """Train two copies of ``run``'s network from ``start`` with ``mask`` under the data-order ``seeds``, then
        evaluate ``(1 − α)·θ¹ + α·θ²`` on the α grid on the test data and on the training data.

        Each copy is one :meth:`execute` (its own resume checkpoint, ``checkpoints/copy_<i>`` in the run's directory;
        no loggers) under ``pl.seed_everything(seed)`` and, for a :class:`TensorDataModule` (the bundled data
        modules: their training shuffle and augmentation follow their ``seed``), that seed for the copy's fit. The
        training data is evaluated with the model's ``test_step`` (``test_loss``, ``test_acc``)."""
        began = time.perf_counter()
        copies, states = [], []
        for i, seed in enumerate(seeds, 1):
            copy_info = dataclasses.replace(info, directory=info.directory / "checkpoints" / f"copy_{i}", seed=seed)
            with _data_seed(self.datamodule, seed):
                copies.append(self.execute(run, mask, start, seed=seed, max_steps=max_steps, info=copy_info, loggers=[],
                                           progress=progress, keep_final_state=False).result)
            states.append(cpu_copy(self.model.state_dict()))
        if distributed.is_main() and all(torch.equal(a, states[1][k]) for k, a in states[0].items()):
            warnings.warn(f"{run}: the two copies ended identical (barrier 0 by construction): the training data's "
                          "order follows neither the global seed nor a TensorDataModule's seed", stacklevel=2)
        curve = self._interpolation(run, states, info, settings)
        first = copies[0]

        def mean(key: str) -> float | None:
            values = [getattr(c, key) for c in copies]
            return None if None in values else sum(values) / 2

        result = RunResult(
            branch=run.branch, replicate=run.replicate, seed=seeds[0], level=run.level, remaining=first.remaining,
            alive=first.alive, total=first.total, test_acc=mean("test_acc"), test_loss=mean("test_loss"),
            steps=first.steps, wall_s=round(time.perf_counter() - began, 3), rewind_step=first.rewind_step,
            layers=first.layers, at=run.at or None, stability_curve=curve, **stability.summarize(curve))
        return Trained(result, start, None, loggers)

    def _interpolation(self, run: Run, states: list[dict[str, torch.Tensor]], info: LevelInfo, settings: Stability
                       ) -> list[dict[str, float]]:
        """The rows ``{alpha, test_err, test_loss, train_err, train_loss}`` of the curve (a loss is ``None`` when the
        model logs no ``test_loss``); the model ends with the second copy's weights."""
        trainer = self._trainer(info, [], [], None)
        rows = []
        for alpha in stability.alphas(settings.alphas):
            self.model.load_state_dict(stability.interpolate(states[0], states[1], alpha))
            if settings.bn == "recompute":
                stability.recompute_bn(self.model, self._train_batches(), settings.bn_batches)
            test = self._test(trainer, run)
            self.emit("test_start", run)
            with warnings.catch_warnings():  # the training data, shuffled, on purpose
                warnings.filterwarnings("ignore", message=".*sampler has shuffling enabled")
                train = trainer.test(self.model, dataloaders=self._train_batches(), verbose=False)
            self.emit("test_end", run)
            train_metrics = {k: float(v) for k, v in (train[0] if train else {}).items()}
            values = {"test_err": 1.0 - test["test_acc"], "test_loss": test.get("test_loss"),
                      "train_err": 1.0 - train_metrics["test_acc"], "train_loss": train_metrics.get("test_loss")}
            rows.append({"alpha": round(alpha, 6), **{k: None if v is None else round(v, 7) for k, v in values.items()}})
        self.model.load_state_dict(states[1])
        return rows

    def _train_batches(self) -> Any:
        return self.datamodule.train_dataloader()


@contextlib.contextmanager
def _data_seed(datamodule: pl.LightningDataModule, seed: int) -> Iterator[None]:
    """A :class:`TensorDataModule`'s ``seed`` (training shuffle, augmentation) set to ``seed`` meanwhile; its splits
    were made at ``setup`` and do not change."""
    if not isinstance(datamodule, TensorDataModule):
        yield
        return
    own = datamodule.seed
    datamodule.setup("fit")  # the splits under its own seed, before the seed changes
    datamodule.seed = seed
    try:
        yield
    finally:
        datamodule.seed = own
