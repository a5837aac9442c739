"""``PruningScheduler``: the level loop (train → test → prune → rewind) across fresh ``Trainer`` fits; resumable.

An experiment is a set of *runs*, one ``Trainer.fit`` each, identified by (replicate, branch, level):

- the main line (branch ``ticket``; ``weights_rewind``, ``lr_rewind`` or ``finetune`` for the other rewinding
  variants) trains level 0 dense, prunes its final weights, starts level 1 from the rewind point, and so on;
- control branches reuse a level's mask: ``random_reinit`` (same mask, a fresh initialization, trained from step
  0), ``random_mask`` (random positions with the same per-layer counts, from the rewind point) and ``oneshot``
  (level 0's final weights pruned at once to the level's per-layer fractions, from the rewind point);
- replicates repeat everything under other seeds.
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.strategies import DDPStrategy, ParallelStrategy
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher

from lightning_lottery import distributed, pruning
from lightning_lottery.callback import LotteryTicket, capture_state
from lightning_lottery.config import LotteryConfig
from lightning_lottery.criteria import get_criterion
from lightning_lottery.masks import (
    Mask,
    count_alive,
    count_total,
    layer_counts,
    load_mask,
    ones_mask,
    prunable_parameters,
    remaining,
    save_mask,
)
from lightning_lottery.progress import ExperimentProgress, format_table
from lightning_lottery.rewind import RewindState, cpu_copy
from lightning_lottery.store import ExperimentStore, Run, config_hash
from lightning_lottery.ticket import Ticket
from lightning_lottery.tracking import SUMMARY_KEYS, WandbSettings, WandbTracker

#: Branch name of the main line, by rewinding variant.
MAIN_BRANCH = {"full": "ticket", "weights": "weights_rewind", "lr": "lr_rewind", "finetune": "finetune"}


@dataclass(frozen=True)
class LevelInfo:
    """What a logger factory is told about the run it makes a logger for."""

    level: int
    levels: int
    remaining: float
    directory: Path
    experiment_id: str
    branch: str = "ticket"
    replicate: int = 0
    seed: int = 0


LoggerFactory = Callable[[LevelInfo], "Logger | list[Logger] | bool"]


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
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor)

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "best_weights": self.best_weights}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict["history"])
        self.best_weights = state_dict.get("best_weights")

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


class PruningScheduler:
    """Find a lottery ticket: level 0 trains the dense network, each further level prunes and rewinds.

    Every run is a fresh ``Trainer`` built from ``trainer_kwargs`` (your callbacks are copied per run) plus a
    :class:`~lightning_lottery.LotteryTicket`, a validation-history recorder and checkpointing for resume. After
    each fit the scheduler tests the final weights and the weights at the early-stopping iteration (minimum
    validation loss), prunes by the criterion and writes the run's files. Rerunning the same experiment in the
    same directory continues where it stopped.

    The model must log ``val_loss`` during validation and ``test_acc`` (and optionally ``test_loss``) in test.

    Under a multi-process strategy (``trainer_kwargs`` with ``strategy="ddp"``, ``"ddp_spawn"``, ``torchrun`` or
    SLURM) every process runs the level loop in step: the processes start (and join one process group) before the
    first level and live until the last; ``ddp_spawn`` spawns its workers once for the whole experiment. Rank 0
    computes each run's mask and starting state and broadcasts them, every rank checks that its mask has the same
    checksum, and only rank 0 writes files, prints and talks to W&B. Resuming reads ``out_dir`` on every rank, so
    on several nodes it must be a shared filesystem (as Lightning's ``ckpt_path`` requires).
    Replicates and the ``random_reinit`` control re-initialize the model under another seed with its
    ``reset_parameters()`` method when it has one (else each submodule's).

    Args:
        model: any ``LightningModule``; its weights at construction time are θ0 of the first replicate.
        datamodule: any ``LightningDataModule``; reused across runs.
        config: the search settings; keyword arguments override its fields.
        trainer_kwargs: arguments of ``lightning.pytorch.Trainer`` for every run (``max_steps`` or ``max_epochs``
            is the training budget of level 0; later levels train to the same final step).
        logger: ``None`` for a CSV logger per run, ``False`` for none, or a function of :class:`LevelInfo`
            returning the run's logger(s).
        wandb: W&B settings; ``None`` for no W&B.
        experiment_config: what identifies the experiment (the CLI passes the resolved recipe); derived from the
            model, data and settings when ``None``.
        stream: where the progress lines and the final table go (``None``: quiet).

    Example:
        >>> import tempfile
        >>> from lightning_lottery import PruningScheduler
        >>> from lightning_lottery.data import DigitsDataModule
        >>> from lightning_lottery.models import LeNet300100
        >>> scheduler = PruningScheduler(
        ...     LeNet300100(in_features=64), DigitsDataModule(), levels=2, rate=0.5, out_dir=tempfile.mkdtemp(),
        ...     val_every_n_steps=5, stream=None,
        ...     trainer_kwargs=dict(max_steps=10, enable_progress_bar=False, enable_model_summary=False))
        >>> [round(row["remaining"], 2) for row in scheduler.run()]
        [1.0, 0.5, 0.25]
    """

    def __init__(
        self,
        model: pl.LightningModule,
        datamodule: pl.LightningDataModule,
        config: LotteryConfig | None = None,
        *,
        trainer_kwargs: Mapping[str, Any] | None = None,
        logger: LoggerFactory | bool | None = None,
        wandb: WandbSettings | None = None,
        experiment_config: Mapping[str, Any] | None = None,
        stream: TextIO | None = sys.stderr,
        **overrides: Any,
    ) -> None:
        config = config or LotteryConfig()
        self.config = LotteryConfig(**{**config.to_dict(), **overrides}) if overrides else config
        self.model = model
        self.datamodule = datamodule
        self.trainer_kwargs = dict(trainer_kwargs or {})
        if "logger" in self.trainer_kwargs:
            raise ValueError("pass loggers with PruningScheduler(logger=...), not in trainer_kwargs: each run needs its own")
        self.trainer_kwargs.pop("enable_checkpointing", None)
        self.trainer_kwargs.pop("default_root_dir", None)
        self.logger = logger
        self.wandb = wandb if wandb is not None and wandb.active else None
        self.stream = stream
        self.store = ExperimentStore(self.config.out_dir)
        self.experiment_config = dict(experiment_config) if experiment_config is not None else self._default_identity()
        self.experiment_id = ""
        self.main_branch = MAIN_BRANCH[self.config.rewind]
        self._theta0 = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        self._tracker: WandbTracker | None = None
        self._worker_ddp: dict[str, Any] | None = None  # in ddp_spawn workers: how to build each run's DDP

    def __getstate__(self) -> dict[str, Any]:  # ddp_spawn pickles the scheduler for its workers
        state = self.__dict__.copy()
        state["stream"] = {sys.stderr: "stderr", sys.stdout: "stdout"}.get(self.stream)  # type: ignore[call-overload]
        state["_tracker"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.stream = getattr(sys, state["stream"]) if state["stream"] else None

    # ------------------------------------------------------------------------------------------------ run
    def runs(self) -> list[Run]:
        """Every run of the experiment, in execution order."""
        cfg = self.config
        out = []
        for replicate in range(len(cfg.replicate_seeds)):
            for level in range(cfg.levels + 1):
                out.append(Run(replicate, self.main_branch, level))
                if level > 0:
                    out.extend(Run(replicate, branch, level) for branch in cfg.controls)
        return out

    def run(self) -> list[dict[str, Any]]:
        """Run (or finish) every run of the experiment; returns the results rows."""
        probe = self._probe()
        if probe is None:
            return self._run()
        launcher = probe.strategy.launcher
        assert launcher is not None
        if isinstance(launcher, _MultiProcessingLauncher):  # ddp_spawn: the workers live for the whole experiment
            # only a path comes back: Lightning joins the workers before it reads their (pipe-sized) result
            weights = Path(launcher.launch(_spawned_worker, self, self.model))
            # as Lightning does after a spawned fit: the model gets rank 0's final weights
            self.model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            weights.unlink()
            return self.store.results()
        # ddp: the launcher starts the other processes (which run this same program up to here), or finds them
        # started by torchrun / SLURM; then every process runs the experiment
        return launcher.launch(self._run_in_group, probe)

    def _probe(self) -> pl.Trainer | None:
        """A Trainer with the run's parallel settings when they use several processes, else ``None``."""
        keys = ("accelerator", "strategy", "devices", "num_nodes", "plugins")
        kwargs = {k: self.trainer_kwargs[k] for k in keys if k in self.trainer_kwargs}
        if "strategy" not in kwargs and "devices" not in kwargs and "num_nodes" not in kwargs:
            return None
        probe = pl.Trainer(**kwargs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                           enable_model_summary=False)
        if not isinstance(probe.strategy, ParallelStrategy) or probe.world_size == 1:
            return None
        return probe

    def _run_in_group(self, probe: pl.Trainer) -> list[dict[str, Any]]:
        """In every process: join the process group (as the first fit would), then run the experiment."""
        created = not distributed.initialized()
        probe.strategy.setup_environment()
        if not distributed.is_main():
            self.stream = None
        rows = self._run()
        if created:  # leave together: a rank exiting while its peers still talk to it can abort them
            distributed.barrier()
            torch.distributed.destroy_process_group()
        return rows

    def _run(self) -> list[dict[str, Any]]:
        cfg = self.config
        main = distributed.is_main()
        # missing data fails here, before the directory is bound to this configuration
        distributed.on_main(self.datamodule.prepare_data)
        distributed.everywhere(lambda: self.datamodule.setup("fit"))
        self.experiment_id = distributed.on_main(lambda: self.store.bind(self.experiment_config, cfg.name))
        distributed.on_main(self._write_costs)
        if self.wandb is not None and main:
            self._tracker = WandbTracker(self.wandb, self.experiment_id, config_hash(self.experiment_config),
                                         self.experiment_config, self.store.root)
            mode = self.wandb.resolved_mode()
            where = f"offline runs in {self._tracker.dir / 'wandb'} (upload later: wandb sync {self._tracker.dir / 'wandb'}/offline-run-*)"
            self._say(f"[lottery] W&B {mode}: group {self.experiment_id} in project {self.wandb.project}"
                      + (f"; {where}" if mode == "offline" else ""))
        runs = self.runs()
        progress = ExperimentProgress(len(runs), cfg.levels, self.stream)
        trained_any = False
        done = distributed.broadcast([self.store.is_done(run) for run in runs])  # all ranks: rank 0's view
        for run, is_done in zip(runs, done):
            if is_done:
                if main:
                    progress.skipped(run, self.store.read_metrics(run))
                continue
            progress.start(run)
            row = self._run_one(run, progress)
            trained_any = True
            progress.done(run, row)
        return distributed.on_main(lambda: self._finish(trained_any))

    def _finish(self, trained_any: bool) -> list[dict[str, Any]]:
        """Results table, aggregate, report and the W&B summary (rank 0)."""
        rows = self.store.results()
        fresh = not trained_any and (self.store.root / "aggregate.csv").is_file()
        if not fresh:  # derived files are rebuilt only when something new was trained
            self.store.write_aggregate(rows)
        report = self._write_report(rebuild=not fresh)
        if self._tracker is not None and (trained_any or not self.store.summary_logged()):
            self._tracker.finish_experiment(rows, report)
            self.store.mark_summary_logged()
        self._say(format_table(rows))
        return rows

    # ---------------------------------------------------------------------------------------------- one run
    def _run_one(self, run: Run, progress: ExperimentProgress) -> dict[str, Any]:
        cfg = self.config
        start = time.perf_counter()
        seed = cfg.replicate_seeds[run.replicate]
        run_dir = self.store.run_dir(run)
        run_dir.mkdir(parents=True, exist_ok=True)
        if run.level == 0:
            self._load_theta0(run.replicate, seed)
        # rank 0 reads (or computes) the run's mask and starting state; every rank trains from the same ones
        mask, start_state = distributed.on_main(lambda: self._start(run, seed))
        lottery = LotteryTicket(mask, rewind_to=cfg.rewind_to, include=cfg.include, exclude=cfg.exclude,
                                rewind_point=start_state)
        lottery.level = run.level
        history = ValidationHistory()
        ckpt_dir = self.store.checkpoint_dir(run)
        every = cfg.checkpoint_every_n_steps or (10 * cfg.val_every_n_steps if cfg.val_every_n_steps else None)
        last = ModelCheckpoint(dirpath=ckpt_dir, filename="last", save_top_k=1, every_n_train_steps=every,
                               enable_version_counter=False)
        info = LevelInfo(run.level, cfg.levels, remaining(mask), run_dir, self.experiment_id, run.branch,
                         run.replicate, seed)
        loggers = self._loggers(info)
        trainer = self._make_trainer(run, info, [lottery, history, last, progress.callback()], loggers)

        pl.seed_everything(seed, workers=True, verbose=False)
        resume = ckpt_dir / "last.ckpt"
        ckpt_path = distributed.broadcast(str(resume) if resume.is_file() else None)
        trainer.fit(self.model, datamodule=self.datamodule, ckpt_path=ckpt_path, weights_only=True)
        if trainer.interrupted:
            raise KeyboardInterrupt(f"{run} was interrupted; rerun the same command to resume it")
        assert lottery.rewind_point is not None
        main = distributed.is_main()
        is_main_line = run.branch == self.main_branch
        if main and is_main_line and run.level == 0:
            lottery.rewind_point.save(self.store.rewind_file(run.replicate))
        if main and is_main_line and self._needs_final_state(run.level):
            capture_state(trainer, self.model).save(self.store.final_state_file(run))
        test = self._test(trainer)
        if is_main_line and run.level < cfg.levels:  # the next level's mask, from the final weights
            next_mask = self._next_mask(mask, seed, run.level)
            distributed.check_same_mask(next_mask, f"level {run.level + 1} mask (pruned from {run})")
            if main:
                save_mask(next_mask, self.store.mask_file(run.next_level()), {"level": str(run.level + 1)})
        best_entry, val_history = history.best(), list(history.history)
        if distributed.broadcast(best_entry is not None and best_entry["step"] == trainer.global_step):
            early = test  # the early-stopping iteration is the last one: the same weights
        else:
            early = self._test_weights(trainer, history.best_weights) if history.best_weights is not None else {}
        ticket_path = self.store.ticket_file(run)
        if main:
            Ticket.from_state(lottery.rewind_point.model if start_state is None else start_state.model, mask,
                              level=run.level, branch=run.branch, replicate=run.replicate, remaining=remaining(mask),
                              experiment=self.experiment_id, rewind_step=lottery.rewind_point.step).save(ticket_path)
        row = {
            "branch": run.branch,
            "replicate": run.replicate,
            "seed": seed,
            "level": run.level,
            "remaining": remaining(mask),
            "alive": count_alive(mask),
            "total": count_total(mask),
            "test_acc": test.get("test_acc"),
            "test_loss": test.get("test_loss"),
            "early_stop_iter": best_entry["step"] if best_entry else None,
            "early_stop_test_acc": early.get("test_acc"),
            "min_val_loss": best_entry["val_loss"] if best_entry else None,
            "best_val_acc": max((r.get("val_acc", float("nan")) for r in val_history), default=None),
            "steps": trainer.global_step,
            "rewind_step": lottery.rewind_point.step,
            "wall_s": round(time.perf_counter() - start, 3),
            "layers": layer_counts(mask),
            "val_history": val_history,
        }
        self._log_summary(loggers, row, ticket_path)
        if main:
            self.store.finish(run, row)
            if not cfg.keep_checkpoints:
                shutil.rmtree(ckpt_dir, ignore_errors=True)
        distributed.barrier()  # the run is durable before any rank starts the next one
        return row

    def _start(self, run: Run, seed: int) -> tuple[Mask, RewindState | None]:
        """The mask a run trains with and the state it starts from (``None``: the model as it is, level 0)."""
        cfg = self.config
        if run.level == 0:
            params = prunable_parameters(self.model, cfg.include, cfg.exclude)
            mask = {n: m.cpu() for n, m in ones_mask(params).items()}
            save_mask(mask, self.store.mask_file(run), {"level": "0"})
            return mask, None
        main = run.with_branch(self.main_branch)
        ticket_mask = load_mask(self.store.mask_file(main))
        rewind = RewindState.load(self.store.rewind_file(run.replicate))
        branch = run.branch
        if branch == "ticket" or branch == "random_mask" or branch == "oneshot":
            state = rewind
        elif branch == "weights_rewind":
            state = rewind.without_optimizer_state()
        elif branch == "lr_rewind":
            trained = RewindState.load(self.store.final_state_file(main.previous_level()))
            state = rewind.without_optimizer_state().with_model(trained.model)
        elif branch == "finetune":
            trained = RewindState.load(self.store.final_state_file(main.previous_level()))
            state = trained.at_position(rewind.step, rewind.epoch)
        elif branch == "random_reinit":
            state = RewindState(0, 0, self._fresh_init(seed + 10_000 * run.level))
        else:
            raise ValueError(f"unknown branch {branch!r}")
        if branch == "random_mask":
            generator = torch.Generator().manual_seed(seed * 1000 + run.level + 500)
            mask = pruning.random_mask_like(ticket_mask, generator)
        elif branch == "oneshot":
            mask = self._oneshot_mask(run.replicate, ticket_mask)
        else:
            mask = ticket_mask
        if branch != self.main_branch:
            save_mask(mask, self.store.mask_file(run), {"level": str(run.level), "branch": branch})
        return mask, state

    def _next_mask(self, mask: Mask, seed: int, level: int) -> Mask:
        cfg = self.config
        weights = {n: p.detach() for n, p in prunable_parameters(self.model, cfg.include, cfg.exclude).items()}
        generator = torch.Generator().manual_seed(seed * 1000 + level)
        scores = get_criterion(cfg.criterion)(weights, generator=generator)
        device_mask = {n: m.to(weights[n].device) for n, m in mask.items()}
        return {n: m.cpu() for n, m in pruning.prune(scores, device_mask, cfg.rate, scope=cfg.scope,
                                                      rates=cfg.rates).items()}

    def _oneshot_mask(self, replicate: int, ticket_mask: Mask) -> Mask:
        """Level 0's final weights pruned at once to the ticket's per-layer fractions at this level."""
        cfg = self.config
        dense = RewindState.load(self.store.final_state_file(Run(replicate, self.main_branch, 0)))
        weights = {n: dense.model[n] for n in ticket_mask}
        scores = get_criterion(cfg.criterion)(weights, generator=torch.Generator().manual_seed(0))
        ones = {n: torch.ones_like(m) for n, m in ticket_mask.items()}
        targets = {n: count_alive({n: m}) / m.numel() for n, m in ticket_mask.items()}
        return pruning.prune_to(scores, ones, 1.0, scope="layerwise", targets=targets)

    def _needs_final_state(self, level: int) -> bool:
        return (self.config.rewind in ("lr", "finetune") and level < self.config.levels) or (
            level == 0 and "oneshot" in self.config.controls)

    # --------------------------------------------------------------------------------------- initialization
    def _load_theta0(self, replicate: int, seed: int) -> None:
        """θ0 of a replicate: the model as given for the first, a fresh initialization under its seed after."""
        if replicate == 0:
            self.model.load_state_dict(self._theta0)
        else:
            self.model.load_state_dict(self._fresh_init(seed))

    def _fresh_init(self, seed: int) -> dict[str, torch.Tensor]:
        """The model's own initializer under ``seed``; the live model is left as it was."""
        saved = copy.deepcopy(self.model.state_dict())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            reset = getattr(self.model, "reset_parameters", None)
            if callable(reset):
                reset()
            else:
                for module in self.model.modules():
                    if module is not self.model and callable(getattr(module, "reset_parameters", None)):
                        module.reset_parameters()
            fresh = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(saved)
        return fresh

    # ------------------------------------------------------------------------------------------- trainer
    def _loggers(self, info: LevelInfo) -> list[Logger]:
        if self.logger is None:
            loggers: list[Logger] = [CSVLogger(save_dir=str(info.directory), name="logs", version="")]
        elif self.logger is False or self.logger is True:
            loggers = [CSVLogger(save_dir=str(info.directory), name="logs", version="")] if self.logger else []
        else:
            made = self.logger(info)
            loggers = [] if made is False else list(made) if isinstance(made, (list, tuple)) else [made]  # type: ignore[list-item]
        if self._tracker is not None:
            loggers.append(self._tracker.logger(info))
        return loggers

    def _make_trainer(self, run: Run, info: LevelInfo, own: list[Callback], loggers: list[Logger]) -> pl.Trainer:
        cfg = self.config
        kwargs = dict(self.trainer_kwargs)
        user_callbacks = kwargs.pop("callbacks", None) or []
        if isinstance(user_callbacks, Callback):
            user_callbacks = [user_callbacks]
        # ours first: user callbacks see the rewound, masked model in their hooks
        kwargs["callbacks"] = own + [copy.deepcopy(c) for c in user_callbacks]
        kwargs["default_root_dir"] = str(info.directory)
        kwargs["enable_checkpointing"] = True
        kwargs["logger"] = loggers if loggers else False
        if cfg.val_every_n_steps is not None:
            kwargs["val_check_interval"] = cfg.val_every_n_steps
            kwargs["check_val_every_n_epoch"] = None
            if kwargs.get("num_sanity_val_steps") is None:
                kwargs["num_sanity_val_steps"] = 0
        if run.level > 0:  # train to the same final step as level 0, starting from the rewind point
            level0 = Run(run.replicate, self.main_branch, 0)
            kwargs["max_steps"] = distributed.on_main(lambda: int(self.store.read_metrics(level0)["steps"]))
            kwargs["max_epochs"] = -1
        if self._worker_ddp is not None:  # inside ddp_spawn's workers: the processes exist, join them
            kwargs["strategy"] = DDPStrategy(start_method="popen", **self._worker_ddp)
        return pl.Trainer(**kwargs)

    def _test(self, trainer: pl.Trainer) -> dict[str, float]:
        results = trainer.test(self.model, datamodule=self.datamodule, verbose=False)
        return {k: float(v) for k, v in (results[0] if results else {}).items()}

    def _test_weights(self, trainer: pl.Trainer, weights: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Test the model with ``weights`` loaded, then give it its own weights back."""
        own = cpu_copy(self.model.state_dict())
        self.model.load_state_dict(weights)
        try:
            return self._test(trainer)
        finally:
            self.model.load_state_dict(own)

    def _log_summary(self, loggers: Sequence[Logger], row: Mapping[str, Any], ticket_path: Path) -> None:
        """Every logger of the run receives the run's results; the W&B run also gets its ticket, then finishes."""
        metrics = {f"lottery/{k}": float(row[k]) for k in SUMMARY_KEYS if row.get(k) is not None}
        for logger in loggers:
            logger.log_metrics(metrics, step=int(row["steps"]))
            logger.save()
        if self._tracker is not None:
            from lightning.pytorch.loggers import WandbLogger

            for logger in loggers:
                if isinstance(logger, WandbLogger):
                    self._tracker.finish_level(logger, row, ticket_path)

    # ---------------------------------------------------------------------------------------------- output
    def _write_costs(self) -> None:
        """Per-layer MACs per weight (for the report's theoretical speedup), measured once on one input."""
        if self.store.costs_file.exists():
            return
        from lightning_lottery.flops import layer_costs

        try:
            batch = next(iter(self.datamodule.train_dataloader()))
        except Exception:  # a datamodule that cannot give a batch outside a trainer: no speedup column
            return
        example = batch[0] if isinstance(batch, (list, tuple)) else batch
        if not isinstance(example, torch.Tensor):
            return
        names = prunable_parameters(self.model, self.config.include, self.config.exclude)
        device = next(self.model.parameters()).device
        costs = layer_costs(self.model, example[:1].to(device), names)
        self.store.write_costs(costs)

    def _write_report(self, rebuild: bool = True) -> dict[str, Path]:
        from lightning_lottery.report import build_report

        existing = self.store.root / "report" / "report.html"
        try:
            html = build_report(self.store.root) if rebuild or not existing.is_file() else existing
        except Exception as err:  # the report must never cost the results
            self._say(f"[lottery] report not written: {err}")
            return {}
        self._say(f"[lottery] report: {html}")
        return {p.stem: p for p in sorted(Path(html).parent.glob("*.png"))}

    def _default_identity(self) -> dict[str, Any]:
        def describe(obj: Any) -> dict[str, Any]:
            hparams = dict(getattr(obj, "hparams", {}) or {})
            return {"class": f"{type(obj).__module__}.{type(obj).__qualname__}", "hparams": hparams}

        return {
            "model": describe(self.model),
            "data": describe(self.datamodule),
            # callbacks are objects without a stable description; pass experiment_config to include them
            "trainer": {k: repr(v) for k, v in sorted(self.trainer_kwargs.items()) if k != "callbacks"},
            "lottery": self.config.identity(),
        }

    def _say(self, text: str) -> None:
        if self.stream is not None:
            print(text, file=self.stream, flush=True)


def _spawned_worker(scheduler: PruningScheduler, model: pl.LightningModule) -> str | None:
    """One ddp_spawn worker: join the process group, run the whole experiment; rank 0 saves the final weights to a
    temporary file and returns its path (the results are in the experiment directory)."""
    probe = scheduler._probe()
    assert probe is not None and isinstance(probe.strategy, DDPStrategy)
    strategy = probe.strategy
    # every run's Trainer joins these processes instead of spawning new ones
    scheduler._worker_ddp = {"process_group_backend": strategy._process_group_backend, "timeout": strategy._timeout,
                             **strategy._ddp_kwargs}
    scheduler._run_in_group(probe)
    if not distributed.is_main():
        return None
    fd, path = tempfile.mkstemp(prefix="lightning-lottery-weights-", suffix=".pt")
    with os.fdopen(fd, "wb") as f:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, f)
    return path
