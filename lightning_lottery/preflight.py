"""Preflight: the mistakes caught before anything is trained or written.

:func:`preflight` checks an experiment's settings against its model, data and trainer settings — every pattern
matches a parameter, something is prunable, the training budget is not empty and holds the rewind point, the
output directory can be written, the model logs the metrics the scheduler reads (one validation batch and one
test batch) — and returns a :class:`Preflight` that describes what would run (``lightning-lottery find
--dry_run true`` prints it). A failed check raises one :class:`PreflightError` naming the setting and the fix.

Example:
    >>> from lightning_lottery.config import LotteryConfig
    >>> from lightning_lottery.preflight import training_budget
    >>> training_budget({"max_steps": 0}, batches_per_epoch=10)
    Traceback (most recent call last):
    ...
    lightning_lottery.preflight.PreflightError: trainer.max_steps is 0: nothing would be trained; give a positive max_steps or max_epochs
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_lottery.config import LotteryConfig
from lightning_lottery.masks import MaskError, prunable_parameters
from lightning_lottery.plan import STABILITY, Plan, Run
from lightning_lottery.pruning import PruningError, resolve_rates
from lightning_lottery.rewind import RewindStep

__all__ = ["Budget", "Preflight", "PreflightError", "check_initialized", "preflight", "training_budget"]

#: What the scheduler reads: logged in validation / in test.
REQUIRED_METRICS = {"validate": ("val_loss",), "test": ("test_acc",)}


class PreflightError(ValueError):
    """A setting that cannot work, found before anything was trained or written."""


@dataclass(frozen=True)
class Budget:
    """Level 0's training budget in optimizer steps and epochs (``None``: not known before training)."""

    steps: int | None
    epochs: int | None
    batches_per_epoch: int | None

    def __str__(self) -> str:
        steps = f"{self.steps} optimizer steps" if self.steps is not None else "steps unknown"
        epochs = f"{self.epochs} epoch(s)" if self.epochs is not None else "epochs unknown"
        per = f", {self.batches_per_epoch} batches per epoch" if self.batches_per_epoch is not None else ""
        return f"{steps}, {epochs}{per}"


def training_budget(trainer_kwargs: Mapping[str, Any], batches_per_epoch: int | None) -> Budget:
    """Level 0's budget from ``max_steps`` / ``max_epochs`` (Lightning's rules: the first limit reached stops)."""
    max_steps = trainer_kwargs.get("max_steps", -1)
    max_epochs = trainer_kwargs.get("max_epochs")
    if max_steps is not None and max_steps == 0:
        raise PreflightError("trainer.max_steps is 0: nothing would be trained; give a positive max_steps or max_epochs")
    if max_epochs is not None and max_epochs == 0:
        raise PreflightError("trainer.max_epochs is 0: nothing would be trained; give a positive max_epochs or max_steps")
    if batches_per_epoch == 0:
        raise PreflightError("the training data has no batch (check the datamodule and trainer.limit_train_batches)")
    accumulate = int(trainer_kwargs.get("accumulate_grad_batches") or 1)
    steps_per_epoch = math.ceil(batches_per_epoch / accumulate) if batches_per_epoch else None
    if max_steps is None or max_steps < 0:
        epochs = 1000 if max_epochs is None or max_epochs < 0 else int(max_epochs)  # Lightning's default
        steps = epochs * steps_per_epoch if steps_per_epoch else None
        return Budget(steps, epochs, batches_per_epoch)
    steps = int(max_steps)
    if max_epochs is not None and max_epochs > 0 and steps_per_epoch:
        steps = min(steps, int(max_epochs) * steps_per_epoch)
    epochs = math.ceil(steps / steps_per_epoch) if steps_per_epoch else None
    return Budget(steps, epochs, batches_per_epoch)


def _check_rewind(rewind_to: str, budget: Budget, key: str = "lottery.rewind_to") -> None:
    point = RewindStep.parse(rewind_to)
    limit = budget.steps if point.unit == "it" else budget.epochs
    if limit is not None and point.amount > 0 and point.amount >= limit:
        unit = "optimizer steps" if point.unit == "it" else "epochs"
        raise PreflightError(f"{key} {rewind_to} is not inside level 0's training budget of {limit} "
                             f"{unit} ({budget}); choose an earlier rewind point or train longer")


def _check_validation(config: LotteryConfig, trainer_kwargs: Mapping[str, Any]) -> None:
    """``lottery.val_every_n_steps`` sets the trainer's validation cadence: a cadence of the trainer's own (not
    Lightning's default) would be overridden, so both at once is an error."""
    defaults = inspect.signature(pl.Trainer).parameters
    theirs = {k: trainer_kwargs.get(k) for k in config.validation_cadence}
    theirs = {k: v for k, v in theirs.items() if v is not None and v != defaults[k].default}
    if theirs:
        given = ", ".join(f"trainer.{k}={v}" for k, v in theirs.items())
        raise PreflightError(f"{given} and lottery.val_every_n_steps={config.val_every_n_steps} both set when to "
                             "validate, and lottery's would win: set lottery.val_every_n_steps: null to keep the "
                             "trainer's, or drop the trainer's")


def _check_out_dir(out_dir: str) -> None:
    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise PreflightError(f"lottery.out_dir {out_dir} is a file, not a directory")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise PreflightError(f"lottery.out_dir {out_dir}: {existing} is not writable")


def _batches_per_epoch(datamodule: pl.LightningDataModule, trainer_kwargs: Mapping[str, Any]) -> int | None:
    try:
        count = len(datamodule.train_dataloader())
    except Exception:  # an iterable loader, or one that needs a trainer: the budget in epochs stays unknown
        return None
    limit = trainer_kwargs.get("limit_train_batches")
    if isinstance(limit, int) and not isinstance(limit, bool):
        return min(count, limit)
    if isinstance(limit, float):
        return int(count * limit)
    return count


def _check_metrics(model: pl.LightningModule, datamodule: pl.LightningDataModule,
                   trainer_kwargs: Mapping[str, Any]) -> None:
    """One validation batch and one test batch: the metrics the scheduler reads must be logged."""
    kwargs = {k: trainer_kwargs[k] for k in ("accelerator", "precision") if k in trainer_kwargs}
    trainer = pl.Trainer(**kwargs, devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=1, limit_test_batches=1)
    for stage, names in REQUIRED_METRICS.items():
        hook = f"{'validation' if stage == 'validate' else stage}_step"
        if not callable(getattr(type(model), hook, None)) or getattr(type(model), hook) is getattr(
                pl.LightningModule, hook):
            raise PreflightError(f"{type(model).__name__} has no {hook}(): the scheduler needs "
                                 f"{' and '.join(names)} logged in it (self.log('{names[0]}', ...))")
        run = trainer.validate if stage == "validate" else trainer.test
        run(model, datamodule=datamodule, verbose=False)
        logged = sorted(trainer.callback_metrics)
        missing = [n for n in names if n not in trainer.callback_metrics]
        if missing:
            raise PreflightError(f"{type(model).__name__}.{hook}() does not log {missing[0]!r}, which the scheduler "
                                 f"reads (logged: {', '.join(logged) or 'nothing'}); add self.log({missing[0]!r}, ...)")


@dataclass(frozen=True)
class Preflight:
    """What an experiment would run: its prunable parameters, their rates, the plan and the budget."""

    parameters: dict[str, tuple[int, ...]]
    rates: dict[str, float]
    plan: Plan
    budget: Budget
    config: LotteryConfig

    def describe(self) -> str:
        """The dry run's text: prunable parameters with shapes and per-level rates, the plan, the budget."""
        cfg = self.config
        width = max(len(n) for n in self.parameters)
        lines = [f"prunable parameters ({len(self.parameters)}, scope {cfg.scope}, criterion {cfg.criterion}):"]
        pai = cfg.prune_at_init
        if pai is not None:  # pruned once at initialization, to each level's fraction
            fractions = ", ".join(f"{100 * f:.3g}%" for f in pai.remaining[:cfg.levels])
            lines.append(f"  pruned at initialization by {cfg.criterion} ({pai.scope}) to: 100%, {fractions} "
                         "of the prunable weights, one level each")
        for name, shape in self.parameters.items():
            if pai is not None:
                lines.append(f"  {name:<{width}}  {'x'.join(map(str, shape)):>12}")
                continue
            rate = self.rates[name]
            left = ", ".join(f"{100 * (1 - rate) ** lv:.3g}%" for lv in range(cfg.levels + 1))
            lines.append(f"  {name:<{width}}  {'x'.join(map(str, shape)):>12}  rate {rate:g}/level  remaining "
                         f"by level: {left}")
        runs = self.plan.runs()
        lines.append(f"run plan: {len(runs)} runs = {self.plan.replicates} replicate(s) x (levels 0..{cfg.levels} "
                     f"of {self.plan.main}" + (f" + {', '.join(self.plan.controls)} at levels 1..{cfg.levels}"
                                               if self.plan.controls else "")
                     + (f" + stability at levels {sorted(set(self.plan.stability) & set(range(cfg.levels + 1)))}"
                        f" x {len(self.plan.stability_at) or 1} rewind step(s)" if self.plan.stability else "") + ")")
        lines.extend(_describe_stability(cfg, self.plan))
        lines.extend(f"  {i + 1:>3}. {_describe(run, self.plan, cfg)}" for i, run in enumerate(runs))
        lines.append(f"budget per run: {self.budget}; rewind point {cfg.rewind_to}")
        lines.append(f"output: {cfg.out_dir} (nothing written by a dry run)")
        return "\n".join(lines)


def _describe_stability(cfg: LotteryConfig, plan: Plan) -> list[str]:
    """The dry run's lines on the trainings and on the stability runs (two trainings each) and ``rewind_to: auto``."""
    runs = plan.runs()
    analysed = [r for r in runs if r.branch == STABILITY]
    lines = [f"trainings: {len(runs) - len(analysed) + 2 * len(analysed)} (" + (
        f"{len(analysed)} stability run(s) x 2 copies + " if analysed else "") + f"{len(runs) - len(analysed)} others)"]
    st = cfg.stability
    if st is None or not analysed:
        return lines
    levels = sorted({r.level for r in analysed})
    at = ", ".join(plan.stability_at) or cfg.rewind_to
    lines.append(f"stability: levels {levels} x k in [{at}]: each m_L ⊙ θk trained twice under other data orders, "
                 f"then {st.alphas} points of the line between them evaluated on the test and the training data "
                 f"(bn: {st.bn})")
    if plan.choose is not None:
        lines.append(f"rewind point auto: the smallest k in [{at}] whose level-{plan.choose} test-error barrier is <= "
                     f"{100 * st.max_barrier:g} pp, per replicate (else the largest, flagged); levels >= 1 rewind to it")
    return lines


def _describe(run: Run, plan: Plan, cfg: LotteryConfig) -> str:
    needs = ", ".join(f"{n.branch} L{n.level}{f' at {n.at}' if n.at else ''}" for n in plan.needs(run))
    pai = cfg.prune_at_init
    what = (f"  [mask scored at θ0 by {cfg.criterion}, {100 * pai.remaining[run.level - 1]:.3g}% kept]"
            if pai is not None and run.level > 0 and plan.is_main_line(run) else
            "  [2 trainings + the interpolation]" if run.branch == STABILITY else "")
    return f"{run}{what}" + (f"  (needs {needs})" if needs else "")


def check_initialized(model: torch.nn.Module) -> None:
    """Lazy modules (``LazyLinear``, ...) have no shape until their first forward pass: no mask, no θ0 copy."""
    lazy = [n for n, p in model.named_parameters() if isinstance(p, torch.nn.parameter.UninitializedParameter)]
    if lazy:
        raise PreflightError(f"parameter {lazy[0]!r} is not initialized yet (a Lazy module): run one forward pass "
                             "on an example batch in the model's __init__ (or use a non-lazy layer), so that θ0 and "
                             "the masks have a shape")


def preflight(model: pl.LightningModule, datamodule: pl.LightningDataModule, config: LotteryConfig,
              trainer_kwargs: Mapping[str, Any], plan: Plan, *, check_metrics: bool = True) -> Preflight:
    """Check the experiment before anything is trained or written; raise :class:`PreflightError` on a mistake.

    Prepares and sets up the data (``prepare_data`` on the first process of each node only)."""
    check_initialized(model)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        datamodule.prepare_data()
    datamodule.setup("fit")
    try:
        params = prunable_parameters(model, config.include, config.exclude)
        if not params:
            raise PreflightError("no prunable parameter: the model has no Linear or Conv weight (or lottery.exclude "
                                 "removed them all); select parameters with lottery.include, e.g. ['*.weight']")
        rates = resolve_rates(list(params), config.rate, config.rates)
    except (MaskError, PruningError) as err:
        raise PreflightError(f"lottery: {err}") from None
    _check_out_dir(config.out_dir)
    _check_validation(config, trainer_kwargs)
    budget = training_budget(trainer_kwargs, _batches_per_epoch(datamodule, trainer_kwargs))
    _check_rewind(config.level0_rewind_to, budget)
    for at in config.stability.at if config.stability is not None else ():
        _check_rewind(at, budget, "lottery.stability.at")
    if check_metrics:
        _check_metrics(model, datamodule, trainer_kwargs)
    return Preflight({n: tuple(p.shape) for n, p in params.items()}, rates, plan, budget, config)
