"""``PruningScheduler``: the public API of an experiment — walks the run plan, asks the executor, writes through the
store; resumable.

An experiment is a set of runs, one ``Trainer.fit`` each (:mod:`lightning_lottery.plan`); what each run starts from
and which mask it trains is its branch's (:mod:`lightning_lottery.branches`); one run is trained and tested by
:mod:`lightning_lottery.executor`; processes are :mod:`lightning_lottery.launch`'s; every file is
:mod:`lightning_lottery.store`'s.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import lightning.pytorch as pl
import torch

from lightning_lottery import branches, distributed, launch, saliency, stability, tracking
from lightning_lottery.config import LotteryConfig
from lightning_lottery.criteria import criterion_info, get_criterion
from lightning_lottery.early_bird_callback import EarlyBirdWatch
from lightning_lottery.executor import EventHandler, Executor
from lightning_lottery.flops import costs_on_first_batch
from lightning_lottery.identity import experiment_identity
from lightning_lottery.level_masks import LevelMasks
from lightning_lottery.masks import Mask, ones_mask, prunable_parameters, remaining
from lightning_lottery.plan import STABILITY, Plan, Run, Seeds
from lightning_lottery.pool_settings import LaunchSettings
from lightning_lottery.preflight import Preflight, PreflightError, check_initialized, preflight
from lightning_lottery.pruning import PruningError
from lightning_lottery.progress import ExperimentProgress, format_table, lightning_banners_off
from lightning_lottery.result import budget
from lightning_lottery.rewind import RewindState, cpu_copy, fresh_initialization
from lightning_lottery.stability import AUTO, RewindChoice
from lightning_lottery.store import ExperimentStore, LevelInfo, config_hash
from lightning_lottery.ticket import Ticket
from lightning_lottery.transfer import TransferSource
from lightning_lottery.tracking import LoggerFactory, WandbSettings, WandbTracker

__all__ = ["LevelInfo", "PruningScheduler"]


class PruningScheduler:
    """Find a lottery ticket: level 0 trains the dense network, each further level prunes and rewinds.

    Every run is a fresh ``Trainer`` built from ``trainer_kwargs`` (your callbacks are copied per run) plus a
    :class:`~lightning_lottery.LotteryTicket`, a validation-history recorder and checkpointing for resume. After
    each fit the scheduler tests the final weights and the weights at the early-stopping iteration (minimum
    validation loss), prunes by the criterion and writes the run's files. Rerunning the same experiment in the
    same directory continues where it stopped. The model must log ``val_loss`` during validation and
    ``test_acc`` (and optionally ``test_loss``) in test.

    Under a multi-process strategy (``strategy="ddp"``, ``"ddp_spawn"``, torchrun or SLURM) every process runs
    the level loop in step (:mod:`lightning_lottery.launch`): rank 0 computes each run's mask and starting state
    and broadcasts them, every rank checks that its mask has the same checksum, and only rank 0 writes files,
    prints and talks to W&B. On several nodes ``out_dir`` must be on a shared filesystem. Replicates and the
    ``random_reinit`` control re-initialize the model under another seed with its ``reset_parameters()``.

    Args:
        model: any ``LightningModule``; its weights at construction time are θ0 of the first replicate.
        datamodule: any ``LightningDataModule``; reused across runs.
        config: the search settings; keyword arguments override its fields.
        trainer_kwargs: arguments of ``lightning.pytorch.Trainer`` for every run (``max_steps`` or ``max_epochs``
            is the training budget of level 0; later levels train to the same final step).
        logger: ``None`` for a CSV logger per run, ``False`` for none, or a function of :class:`LevelInfo`
            returning the run's logger(s).
        wandb: W&B settings; ``None`` for no W&B.
        experiment_config: the resolved configuration to record (the CLI passes the recipe); ``identity``: what
            identifies the experiment (default: the settings of the objects given that differ from defaults).
        stream: where the progress lines and the final table go (``None``: quiet).
        on_event: called with ``(event, run)`` at each phase of a run (see :mod:`lightning_lottery.executor`).
        launcher: where the runs train (:class:`~lightning_lottery.pool_settings.LaunchSettings`): ``None``, one
            after another in this process; else local worker processes, SLURM jobs or Ray tasks, each run as soon
            as its inputs are finished (:mod:`lightning_lottery.driver`), with the same results.

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

    def __init__(self, model: pl.LightningModule, datamodule: pl.LightningDataModule,
                 config: LotteryConfig | None = None, *, trainer_kwargs: Mapping[str, Any] | None = None,
                 logger: LoggerFactory | bool | None = None, wandb: WandbSettings | None = None,
                 experiment_config: Mapping[str, Any] | None = None, identity: Mapping[str, Any] | None = None,
                 stream: TextIO | None = sys.stderr, on_event: EventHandler | None = None,
                 launcher: LaunchSettings | None = None, **overrides: Any) -> None:
        check_initialized(model)
        config = config or LotteryConfig()
        self.config = LotteryConfig(**{**config.to_dict(), **overrides}) if overrides else config
        self.model, self.datamodule = model, datamodule
        self.trainer_kwargs = dict(trainer_kwargs or {})
        if "logger" in self.trainer_kwargs:
            raise ValueError("pass loggers with PruningScheduler(logger=...), not in trainer_kwargs: each run needs its own")
        self.trainer_kwargs.pop("enable_checkpointing", None)
        self.trainer_kwargs.pop("default_root_dir", None)
        self.logger = logger
        self.wandb = wandb if wandb is not None and wandb.active else None
        self.stream = stream
        self.store = ExperimentStore(self.config.out_dir)
        self.identity = dict(identity) if identity is not None else experiment_identity(
            model, datamodule, self.trainer_kwargs, self.config)
        try:  # a source that is not there is the user's mistake, said before anything is written
            self._source = TransferSource(self.config.transfer) if self.config.transfer is not None else None
        except ValueError as err:
            raise PreflightError(str(err)) from None
        if self._source is not None:  # the source experiment is part of what identifies this one
            self.identity = {**self.identity, "transfer_source": self._source.identity()}
        self.experiment_config = dict(experiment_config) if experiment_config is not None else self.identity
        self.experiment_id = ""
        cfg = self.config
        self.plan = Plan(cfg.levels, len(cfg.replicate_seeds), branches.main_line(cfg.rewind).name, tuple(cfg.controls),
                         cfg.stability.levels if cfg.stability is not None else (),
                         cfg.stability.at if cfg.stability is not None else (),
                         cfg.stability.choose_level if cfg.stability is not None and cfg.rewind_to == AUTO else None)
        self.seeds = Seeds(tuple(cfg.replicate_seeds), self.plan.stability_at)
        self._choices: dict[int, RewindChoice] = {}  # rewind_to: auto, per replicate (rank 0)
        self.executor = Executor(model, datamodule, cfg, self.trainer_kwargs, on_event)
        self._theta0 = cpu_copy(model.state_dict())
        self._tracker: WandbTracker | None = None
        self.launcher = launcher

    def __getstate__(self) -> dict[str, Any]:  # ddp_spawn pickles the scheduler for its workers
        state = self.__dict__.copy()
        state["stream"] = {sys.stderr: "stderr", sys.stdout: "stdout"}.get(self.stream)  # type: ignore[call-overload]
        state["_tracker"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.stream = getattr(sys, state["stream"]) if state["stream"] else None

    def runs(self) -> list[Run]:
        """Every run of the experiment, in execution order."""
        return self.plan.runs()

    def preflight(self, check_metrics: bool = True) -> Preflight:
        """Check the experiment before anything is trained or written (:mod:`lightning_lottery.preflight`) and
        describe what it would run; raises :class:`~lightning_lottery.preflight.PreflightError` on a mistake."""
        checked = preflight(self.model, self.datamodule, self.config, self.trainer_kwargs, self.plan,
                            check_metrics=check_metrics)
        if self.config.prune_at_init is not None and criterion_info(self.config.criterion).data:
            try:  # the prune set can be drawn and the model gives logits
                saliency.num_classes(self.model, self._masks().prune_set(Run(0, self.plan.main, 1))[0])
            except PruningError as err:
                raise PreflightError(f"lottery.prune_at_init: {err}") from None
        if self._source is not None:
            cfg = self.config
            try:
                self._source.check(self.model.state_dict(), list(prunable_parameters(self.model, cfg.include,
                                   cfg.exclude)), cfg.levels, len(cfg.replicate_seeds))
            except ValueError as err:
                raise PreflightError(str(err)) from None
        return checked

    def run(self) -> list[dict[str, Any]]:
        """Run (or finish) every run of the experiment; returns the results rows."""
        with lightning_banners_off():
            self.preflight()
            if self.launcher is not None and self.launcher.parallel:
                from lightning_lottery.driver import drive

                return drive(self)
            return launch.launch(self)

    # ---------------------------------------------------------------------------------- the walk (every rank)
    def _run(self) -> list[dict[str, Any]]:
        main = distributed.is_main()
        # missing data fails here, before the directory is bound to this configuration
        distributed.on_main(self.datamodule.prepare_data)
        distributed.everywhere(lambda: self.datamodule.setup("fit"))
        distributed.on_main(self.store.lock)  # one writer per directory, before anything is written (rank 0)
        try:
            return self._walk(main)
        finally:
            if main:
                self.store.unlock()

    def _open_experiment(self, main: bool) -> None:
        """Bind the directory, verify and clean it, measure the costs, start W&B (the sequential walk and the
        driver of parallel runs both start here)."""
        self.experiment_id = distributed.on_main(
            lambda: self.store.bind(self.identity, self.config.name, self.experiment_config, self.plan.runs()))
        distributed.on_main(lambda: self._prepare_directory())
        distributed.on_main(self._write_costs)
        if self.wandb is not None and main:
            self._start_tracking()

    def _walk(self, main: bool) -> list[dict[str, Any]]:
        self._open_experiment(main)
        runs = self.plan.runs()
        progress = ExperimentProgress(len(runs), self.config.levels, self.stream)
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

    def _run_one(self, run: Run, progress: ExperimentProgress) -> dict[str, Any]:
        self.executor.emit("run_start", run)
        main, is_main_line, seed = distributed.is_main(), self.plan.is_main_line(run), self.seeds.run(run)
        run_dir = self.store.run_dir(run)
        run_dir.mkdir(parents=True, exist_ok=True)
        if run.level == 0:  # θ0: the model as given for the first replicate, a fresh initialization after
            self.model.load_state_dict(self._theta0 if run.replicate == 0 else self._fresh_init(seed))
        # rank 0 reads (or computes) the run's mask and starting state; every rank trains from the same ones
        mask, start = distributed.on_main(lambda: self._start(run))
        max_steps = None if run.level == 0 and run.branch != STABILITY else distributed.on_main(
            lambda: budget(self.store.read_metrics(self.plan.main_run(run.replicate, 0))))
        info = LevelInfo(run.level, self.config.levels, remaining(mask), run_dir, self.experiment_id, run.branch,
                         run.replicate, seed, run.at)
        loggers = tracking.make_loggers(self.logger, info, self._tracker)
        if run.branch == STABILITY:  # two copies from the ticket, then their interpolation
            assert start is not None and self.config.stability is not None
            trained = self.executor.stability(
                run, mask, start, seeds=(self.seeds.stability(run, 1), self.seeds.stability(run, 2)),
                max_steps=max_steps, info=info, progress=progress.callback(), settings=self.config.stability,
                loggers=loggers)
        else:
            watch = EarlyBirdWatch(self.config.early_bird, lambda: self._next_mask(mask, run)) if (
                self.config.early_bird is not None and is_main_line and run.level < self.config.levels) else None
            snapshots = {at: self.store.snapshot_file(run.replicate, at) for at in self.plan.stability_at
                         } if is_main_line and run.level == 0 else {}  # θk of every stability.at, copied meanwhile
            trained = self.executor.execute(run, mask, start, seed=seed, max_steps=max_steps, info=info,
                                            loggers=loggers, progress=progress.callback(),
                                            keep_final_state=self._keeps_final_state(run), early_bird=watch,
                                            snapshots=snapshots)
            if main:
                self.store.record_produced(snapshots.values())
        if main and is_main_line and run.level == 0:
            self.store.save_rewind_point(run.replicate, trained.rewind_point)
        if main and trained.final_state is not None:
            self.store.save_final_state(run, trained.final_state)
        if is_main_line and run.level < self.config.levels:  # the next level's mask, from the final weights
            self.executor.emit("prune_start", run)
            next_mask = self._next_mask(mask, run)
            distributed.check_same_mask(next_mask, f"level {run.level + 1} mask (pruned from {run})")
            self.executor.emit("prune_end", run)
            if main:
                self.store.save_mask(run.next_level(), next_mask)
        result = trained.result
        ticket_path = None
        if main:
            ticket = Ticket.from_state((start or trained.rewind_point).model, mask, level=run.level,
                                       branch=run.branch, replicate=run.replicate, remaining=result.remaining,
                                       experiment=self.experiment_id, rewind_step=result.rewind_step)
            ticket_path = self.store.save_ticket(run, ticket)
        tracking.publish_result(trained.loggers, result, ticket_path, self._tracker)
        if main:
            self.store.finish(run, result.to_dict())
            if not self.config.keep_checkpoints:
                self.store.remove_checkpoints(run)
        distributed.barrier()  # the run is durable before any rank starts the next one
        self.executor.emit("run_end", run)
        return result.to_dict()

    def _start(self, run: Run) -> tuple[Mask, RewindState | None]:
        """The mask a run trains with and the state it starts from (``None``: the model as it is, level 0; the
        rewind point for level 0's stability run)."""
        cfg = self.config
        if run.level == 0:
            mask = {n: m.cpu() for n, m in ones_mask(prunable_parameters(self.model, cfg.include, cfg.exclude)).items()}
            self.store.save_mask(run, mask)
            return mask, self._rewind_point(run) if run.branch == STABILITY else None
        branch = branches.get(run.branch)
        inputs = branches.Inputs(
            run=run, seeds=self.seeds, mask=self.store.load_mask(self.plan.main_run(run.replicate, run.level)),
            rewind_point=self._rewind_point(run),
            trained=lambda level: self.store.load_final_state(self.plan.main_run(run.replicate, level)),
            fresh_init=self._fresh_init, score=get_criterion(cfg.criterion), structure=cfg.structure,
            transferred=None if self._source is None else (
                lambda r: self._source.weights(r, self.store.load_rewind_point(r).model)))  # type: ignore[union-attr]
        state, mask = branch.start(inputs), branch.mask(inputs)
        if not branch.is_main_line:
            self.store.save_mask(run, mask)
        return mask, state

    def _rewind_point(self, run: Run) -> RewindState:
        """The state a run at level ≥ 1 (or a stability run) rewinds to: θk of its step for a stability run at one of
        several steps, the chosen θk with ``rewind_to: auto``, else the replicate's rewind point."""
        if run.branch == STABILITY and run.at:
            return self.store.load_snapshot(run.replicate, run.at)
        if self.plan.choose is not None and run.branch != STABILITY:
            return self.store.load_snapshot(run.replicate, self._choice(run.replicate).at)
        return self.store.load_rewind_point(run.replicate)

    def _choice(self, replicate: int) -> RewindChoice:
        """``rewind_to: auto``: the replicate's rewind step, from its stability runs at the choosing level (rank 0);
        written to ``rewind_choice.json`` and said once per process."""
        if replicate not in self._choices:
            st = self.config.stability
            assert st is not None and self.plan.choose is not None
            rows = [self.store.read_metrics(r) for r in self.plan.stability_runs(replicate, self.plan.choose)]
            choice = stability.choose_rewind([(r.at, int(row["rewind_step"]), row.get("barrier_test_err")) for r, row
                                              in zip(self.plan.stability_runs(replicate, self.plan.choose), rows)],
                                             st.max_barrier, self.plan.choose)
            self.store.save_choice(replicate, choice.to_dict())
            self._choices[replicate] = choice
            text = f"[lottery] replicate {replicate}: {choice.describe()}"
            if choice.stable:
                self._say(text)
            else:  # never silent, even when quiet
                print(text, file=self.stream or sys.stderr, flush=True)
        return self._choices[replicate]

    def _masks(self) -> LevelMasks:
        return LevelMasks(self.model, self.datamodule, self.config, self.seeds, self.store, self._source)

    def _next_mask(self, mask: Mask, run: Run) -> Mask:
        """The mask of ``run``'s next level (:class:`~lightning_lottery.level_masks.LevelMasks`)."""
        return self._masks().next(mask, run)

    def _keeps_final_state(self, run: Run) -> bool:
        """Whether a later run starts from this main-line run's trained weights (a branch's ``trained``)."""
        if not self.plan.is_main_line(run):
            return False
        uses = {branches.get(self.plan.main).trained, *(branches.get(c).trained for c in self.plan.controls)}
        return ("previous" in uses and run.level < self.config.levels) or ("dense" in uses and run.level == 0)

    def _fresh_init(self, seed: int) -> dict[str, torch.Tensor]:
        return fresh_initialization(self.model, seed)

    # ------------------------------------------------------------------------------------------ output (rank 0)
    def _start_tracking(self) -> None:
        assert self.wandb is not None
        self._tracker = WandbTracker(self.wandb, self.experiment_id, config_hash(self.identity),
                                     self.experiment_config, self.store.root, store=self.store,
                                     main_branch=self.plan.main)
        mode, where = self.wandb.resolved_mode(), self._tracker.dir / "wandb"
        self._say(f"[lottery] W&B {mode}: group {self.experiment_id} in project {self.wandb.project}"
                  + (f"; offline runs in {where} (upload later: wandb sync {where}/offline-run-*)"
                     if mode == "offline" else ""))

    def _prepare_directory(self) -> None:
        """Leftovers removed, finished runs verified (damaged ones and their dependents redone), tables rebuilt.
        What it finds is said on stderr even when quiet: nothing about the results is silent."""
        def say(text: str) -> None:
            print(text, file=self.stream or sys.stderr, flush=True)

        if self.store.taken_over:
            held = self.store.taken_over
            say(f"[lottery] took over the lock of pid {held.get('pid')} on {held.get('host')} "
                f"(since {held.get('since')}; no longer running)")
        self.store.prepare(self.plan, self.config.keep_checkpoints, say)

    def _write_costs(self) -> None:
        """Per-layer MACs per weight (for the report's theoretical speedup), measured once on one input."""
        if self.store.read_costs() is None:
            names = prunable_parameters(self.model, self.config.include, self.config.exclude)
            costs = costs_on_first_batch(self.model, self.datamodule, names)
            if costs is not None:
                self.store.write_costs(costs)

    def _finish(self, trained_any: bool) -> list[dict[str, Any]]:
        """Results table, aggregate, report and the W&B summary."""
        for replicate in range(self.plan.replicates) if self.plan.choose is not None else ():  # said on every run
            if all(self.store.is_done(r) for r in self.plan.stability_runs(replicate, self.plan.choose)):
                self._choice(replicate)
        rows = self.store.results()
        fresh = not trained_any and self.store.has_aggregate()
        if not fresh:  # derived files are rebuilt only when something new was trained
            self.store.write_aggregate(rows)
        report = self._write_report(rebuild=not fresh)
        if self._tracker is not None and (trained_any or not self.store.summary_logged()):
            self._tracker.finish_experiment(rows, report)
            self.store.mark_summary_logged()
        self._say(format_table(rows))
        return rows

    def _write_report(self, rebuild: bool = True) -> dict[str, Path]:
        from lightning_lottery.report import build_report

        existing = self.store.report_dir / "report.html"
        try:
            html = build_report(self.store.root) if rebuild or not existing.is_file() else existing
        except Exception as err:  # the report must never cost the results
            self._say(f"[lottery] report not written: {err}")
            return {}
        self._say(f"[lottery] report: {html}")
        return {p.stem: p for p in sorted(Path(html).parent.glob("*.png"))}

    def _say(self, text: str) -> None:
        if self.stream is not None:
            print(text, file=self.stream, flush=True)
