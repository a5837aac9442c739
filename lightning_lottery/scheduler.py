"""``PruningScheduler``: the level loop (train → test → prune → rewind) across fresh ``Trainer`` fits; resumable."""

from __future__ import annotations

import copy
import json
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger

from lightning_lottery import pruning
from lightning_lottery.callback import LotteryTicket
from lightning_lottery.config import LotteryConfig
from lightning_lottery.criteria import get_criterion
from lightning_lottery.masks import (
    count_alive,
    count_total,
    load_mask,
    ones_mask,
    prunable_parameters,
    remaining,
    save_mask,
)
from lightning_lottery.rewind import RewindState
from lightning_lottery.store import ExperimentStore
from lightning_lottery.ticket import Ticket

#: Trainer arguments the scheduler sets itself for every level.
_OWNED_TRAINER_ARGS = ("callbacks", "logger", "default_root_dir", "enable_checkpointing")


@dataclass(frozen=True)
class LevelInfo:
    """What a logger factory is told about the level it makes a logger for."""

    level: int
    levels: int
    remaining: float
    directory: Path
    experiment_id: str
    branch: str = "ticket"
    replicate: int = 0


LoggerFactory = Callable[[LevelInfo], "Logger | list[Logger] | bool"]


class ValidationHistory(Callback):
    """Records ``(step, val_loss, val_acc)`` at every validation; part of the checkpoint, so it survives resume."""

    def __init__(self, monitor: str = "val_loss", accuracy: str = "val_acc") -> None:
        self.monitor, self.accuracy = monitor, accuracy
        self.history: list[dict[str, float]] = []

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor)

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict["history"])

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        row = {"step": trainer.global_step, self.monitor: float(trainer.callback_metrics[self.monitor])}
        if self.accuracy in trainer.callback_metrics:
            row[self.accuracy] = float(trainer.callback_metrics[self.accuracy])
        self.history.append(row)

    def best(self) -> dict[str, float] | None:
        """The entry with the smallest monitored value (the earliest one on ties)."""
        return min(self.history, key=lambda r: r[self.monitor]) if self.history else None


class PruningScheduler:
    """Find a lottery ticket: level 0 trains the dense network, each further level prunes and rewinds.

    Every level is a fresh ``Trainer`` built from ``trainer_kwargs`` (your callbacks are copied per level) plus a
    :class:`~lightning_lottery.LotteryTicket`, a validation-history recorder and checkpointing for resume. After
    each fit the scheduler tests the final weights and the weights at the early-stopping iteration (minimum
    validation loss), prunes by the criterion and writes the level's files. Rerunning the same experiment in the
    same directory continues where it stopped.

    The model must log ``val_loss`` during validation and ``test_acc`` (and optionally ``test_loss``) in test.

    Args:
        model: any ``LightningModule``; its weights at construction time are θ0.
        datamodule: any ``LightningDataModule``; reused across levels.
        config: the search settings; keyword arguments override its fields.
        trainer_kwargs: arguments of ``lightning.pytorch.Trainer`` for every level (``max_steps`` or
            ``max_epochs`` is the training budget of level 0; later levels train to the same final step).
        logger: ``None`` for a CSV logger per level, ``False`` for none, or a function of :class:`LevelInfo`
            returning the level's logger(s).
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
        experiment_config: Mapping[str, Any] | None = None,
        stream: TextIO | None = sys.stderr,
        **overrides: Any,
    ) -> None:
        config = config or LotteryConfig()
        self.config = LotteryConfig(**{**config.to_dict(), **overrides}) if overrides else config
        self.model = model
        self.datamodule = datamodule
        self.trainer_kwargs = dict(trainer_kwargs or {})
        clash = [k for k in _OWNED_TRAINER_ARGS if k in self.trainer_kwargs and k != "callbacks"]
        if "logger" in clash:
            raise ValueError("pass loggers with PruningScheduler(logger=...), not in trainer_kwargs: each level needs its own")
        self.trainer_kwargs.pop("enable_checkpointing", None)
        self.trainer_kwargs.pop("default_root_dir", None)
        self.logger = logger
        self.stream = stream
        self.store = ExperimentStore(self.config.out_dir)
        self.experiment_config = dict(experiment_config) if experiment_config is not None else self._default_identity()
        self.experiment_id = ""

    # ------------------------------------------------------------------------------------------------ run
    def run(self) -> list[dict[str, Any]]:
        """Run (or finish) every level; returns the results rows, one per level."""
        cfg = self.config
        # missing data fails here, before the directory is bound to this configuration
        self.datamodule.prepare_data()
        self.datamodule.setup("fit")
        self.experiment_id = self.store.bind(self.experiment_config, cfg.name)
        done = set(self.store.finished_levels())
        started = time.perf_counter()
        trained_times: list[float] = []
        for level in range(cfg.levels + 1):
            if level in done:
                row = self.store.read_metrics(level)
                self._say(self._progress_line(row, level, resumed=True))
                continue
            row = self._run_level(level)
            trained_times.append(row["wall_s"])
            left = cfg.levels - level
            eta = left * (sum(trained_times) / len(trained_times))
            self._say(self._progress_line(row, level, eta=eta, elapsed=time.perf_counter() - started))
        rows = self.store.results()
        self._say(format_table(rows))
        return rows

    # ----------------------------------------------------------------------------------------------- level
    def _run_level(self, level: int) -> dict[str, Any]:
        cfg = self.config
        start = time.perf_counter()
        level_dir = self.store.level_dir(level)
        level_dir.mkdir(parents=True, exist_ok=True)
        params = prunable_parameters(self.model, cfg.include, cfg.exclude)
        if level == 0:
            mask = {n: m.cpu() for n, m in ones_mask(params).items()}
            if not self.store.mask_file(0).exists():
                save_mask(mask, self.store.mask_file(0), {"level": "0"})
            rewind_point = None
        else:
            mask = load_mask(self.store.mask_file(level))
            rewind_point = RewindState.load(self.store.rewind_file)

        lottery = LotteryTicket(mask, rewind_to=cfg.rewind_to, include=cfg.include, exclude=cfg.exclude, rewind_point=rewind_point)
        lottery.level = level
        history = ValidationHistory()
        ckpt_dir = self.store.checkpoint_dir(level)
        every = cfg.checkpoint_every_n_steps or (10 * cfg.val_every_n_steps if cfg.val_every_n_steps else None)
        last = ModelCheckpoint(dirpath=ckpt_dir, filename="last", save_top_k=1, every_n_train_steps=every,
                               enable_version_counter=False)
        best = ModelCheckpoint(dirpath=ckpt_dir, filename="early-stop", monitor="val_loss", mode="min", save_top_k=1,
                               enable_version_counter=False)
        info = LevelInfo(level, cfg.levels, remaining(mask), level_dir, self.experiment_id)
        trainer = self._make_trainer(level, info, [lottery, history, last, best])

        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        resume = ckpt_dir / "last.ckpt"
        trainer.fit(self.model, datamodule=self.datamodule, ckpt_path=str(resume) if resume.is_file() else None,
                    weights_only=True)
        if trainer.interrupted:
            raise KeyboardInterrupt(f"level {level} was interrupted; rerun the same command to resume it")
        assert lottery.rewind_point is not None
        if level == 0:
            lottery.rewind_point.save(self.store.rewind_file)
        steps = trainer.global_step

        test = self._test(trainer, None)
        layers = {
            n: {"alive": int(m.sum()), "total": m.numel(), "remaining": int(m.sum()) / m.numel()} for n, m in mask.items()
        }
        if level < cfg.levels:  # the next level's mask, from the final weights
            weights = {n: p.detach() for n, p in prunable_parameters(self.model, cfg.include, cfg.exclude).items()}
            generator = torch.Generator().manual_seed(cfg.seed * 1000 + level)
            scores = get_criterion(cfg.criterion)(weights, generator=generator)
            device_mask = {n: m.to(weights[n].device) for n, m in mask.items()}
            next_mask = pruning.prune(scores, device_mask, cfg.rate, scope=cfg.scope, rates=cfg.rates)
            save_mask(next_mask, self.store.mask_file(level + 1), {"level": str(level + 1)})
        best_entry = history.best()
        early = self._test(trainer, best.best_model_path) if best.best_model_path else {}
        Ticket.from_state(lottery.rewind_point.model, mask, level=level, remaining=remaining(mask),
                          experiment=self.experiment_id, rewind_step=lottery.rewind_point.step).save(self.store.ticket_file(level))
        row = {
            "branch": "ticket",
            "replicate": 0,
            "level": level,
            "remaining": remaining(mask),
            "alive": count_alive(mask),
            "total": count_total(mask),
            "test_acc": test.get("test_acc"),
            "test_loss": test.get("test_loss"),
            "early_stop_iter": best_entry["step"] if best_entry else None,
            "early_stop_test_acc": early.get("test_acc"),
            "min_val_loss": best_entry["val_loss"] if best_entry else None,
            "best_val_acc": max((r.get("val_acc", float("nan")) for r in history.history), default=None),
            "steps": steps,
            "rewind_step": lottery.rewind_point.step,
            "wall_s": round(time.perf_counter() - start, 3),
            "layers": layers,
            "val_history": history.history,
        }
        self.store.finish_level(level, row)
        if not cfg.keep_checkpoints:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        return row

    def _make_trainer(self, level: int, info: LevelInfo, own: list[Callback]) -> pl.Trainer:
        cfg = self.config
        kwargs = dict(self.trainer_kwargs)
        user_callbacks = kwargs.pop("callbacks", None) or []
        if isinstance(user_callbacks, Callback):
            user_callbacks = [user_callbacks]
        kwargs["callbacks"] = [copy.deepcopy(c) for c in user_callbacks] + own
        kwargs["default_root_dir"] = str(info.directory)
        kwargs["enable_checkpointing"] = True
        if self.logger is None:
            kwargs["logger"] = CSVLogger(save_dir=str(info.directory), name="logs", version="")
        elif self.logger is False or self.logger is True:
            kwargs["logger"] = bool(self.logger)
        else:
            kwargs["logger"] = self.logger(info)
        if cfg.val_every_n_steps is not None:
            kwargs["val_check_interval"] = cfg.val_every_n_steps
            kwargs["check_val_every_n_epoch"] = None
            if kwargs.get("num_sanity_val_steps") is None:
                kwargs["num_sanity_val_steps"] = 0
        if level > 0:  # train to the same final step as level 0, starting from the rewind point
            kwargs["max_steps"] = int(self.store.read_metrics(0)["steps"])
            kwargs["max_epochs"] = -1
        return pl.Trainer(**kwargs)

    def _test(self, trainer: pl.Trainer, ckpt_path: str | None) -> dict[str, float]:
        results = trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt_path, verbose=False,
                               weights_only=True if ckpt_path else None)
        return {k: float(v) for k, v in (results[0] if results else {}).items()}

    # ---------------------------------------------------------------------------------------------- output
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

    def _progress_line(self, row: Mapping[str, Any], level: int, *, resumed: bool = False, eta: float = 0.0,
                       elapsed: float = 0.0) -> str:
        n = self.config.levels
        head = f"[lottery] level {level}/{n} ({level + 1}/{n + 1} done)"
        body = (f"{100 * row['remaining']:.1f}% weights remaining · test acc {_fmt(row.get('test_acc'))} · "
                f"early stop at it {row.get('early_stop_iter')}")
        if resumed:
            return f"{head} · {body} · already done, skipped"
        return f"{head} · {body} · {row['wall_s']:.1f}s · elapsed {_duration(elapsed)} · ETA {_duration(eta)}"


def _fmt(value: Any) -> str:
    return "—" if value is None else f"{value:.4f}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def format_table(rows: list[Mapping[str, Any]]) -> str:
    """The terminal table: level, % weights remaining, test accuracy, early-stopping iteration and its accuracy."""
    header = ("level", "% remaining", "test acc", "early-stop it", "acc @ early stop", "wall s")
    lines = [header]
    for r in rows:
        lines.append((str(r["level"]), f"{100 * r['remaining']:.1f}", _fmt(r.get("test_acc")),
                      str(r.get("early_stop_iter")), _fmt(r.get("early_stop_test_acc")), f"{r.get('wall_s', 0):.1f}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def load_results(out_dir: str | Path) -> list[dict[str, Any]]:
    """The results rows of an experiment directory (no training)."""
    return json.loads((Path(out_dir) / "results.json").read_text())
