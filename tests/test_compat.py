"""Tests of lightning_lottery._compat: one per private Lightning name it relies on, plus the rule that no other
module of the package touches them and that ``pyproject.toml`` admits only tested Lightning versions.

A Lightning release that renames or removes one of these names fails here, with a message naming it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning
import lightning.pytorch as pl
import pytest
from lightning.pytorch.demos.boring_classes import BoringModel, ManualOptimBoringModel
from lightning.pytorch.loggers import Logger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import DDPStrategy
from packaging.requirements import Requirement
from packaging.version import Version
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from lightning_lottery import _compat
from lightning_lottery._compat import LightningCompatError

ROOT = Path(__file__).resolve().parents[1]
LIGHTNING = f"lightning {lightning.__version__}"
_QUIET = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
          "enable_model_summary": False}


def _trainer(**kwargs: Any) -> pl.Trainer:
    return pl.Trainer(**{**_QUIET, **kwargs})


# ------------------------------------------------------------------------------- _MultiProcessingLauncher


def test_multiprocessing_launcher_exists() -> None:
    module = importlib.import_module("lightning.pytorch.strategies.launchers.multiprocessing")
    assert hasattr(module, "_MultiProcessingLauncher"), (
        f"{LIGHTNING} has no lightning.pytorch.strategies.launchers.multiprocessing._MultiProcessingLauncher: "
        "update _compat.is_spawn_launcher")


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp_fork"])
def test_spawn_launchers_are_recognised(strategy: str) -> None:
    trainer = _trainer(strategy=strategy, accelerator="cpu", devices=2)  # nothing is spawned before fit
    assert _compat.is_spawn_launcher(trainer.strategy.launcher), (
        f"{LIGHTNING}: the launcher of strategy={strategy!r} is a {type(trainer.strategy.launcher).__name__}, "
        "not a _MultiProcessingLauncher: update _compat.is_spawn_launcher")


def test_other_launchers_are_not_spawn_launchers() -> None:
    assert _trainer().strategy.launcher is None
    assert not _compat.is_spawn_launcher(None)
    ddp = _trainer(strategy="ddp", accelerator="cpu", devices=2)
    assert ddp.strategy.launcher is not None
    assert not _compat.is_spawn_launcher(ddp.strategy.launcher)


def test_missing_launcher_class_is_a_compat_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.pytorch.strategies.launchers import multiprocessing

    monkeypatch.delattr(multiprocessing, "_MultiProcessingLauncher")
    with pytest.raises(LightningCompatError, match=re.escape(LIGHTNING) + ".*_MultiProcessingLauncher"):
        _compat.is_spawn_launcher(None)


# ------------------------------------------------------------------------------------------- DDP settings

_SENTINEL_STATE = object()

#: The user's DDP settings, as constructor arguments, and the private attribute each one is kept in.
_DDP_SETTINGS: dict[str, tuple[Any, str]] = {
    "process_group_backend": ("gloo", "_process_group_backend"),
    "timeout": (timedelta(minutes=7), "_timeout"),
    "ddp_comm_state": (_SENTINEL_STATE, "_ddp_comm_state"),
    "ddp_comm_hook": (default_hooks.allreduce_hook, "_ddp_comm_hook"),
    "ddp_comm_wrapper": (default_hooks.fp16_compress_wrapper, "_ddp_comm_wrapper"),
    "model_averaging_period": (4, "_model_averaging_period"),
}
#: Keyword arguments that DDPStrategy hands on to torch's DistributedDataParallel.
_DDP_KWARGS = {"find_unused_parameters": True, "static_graph": True, "bucket_cap_mb": 13}


def _user_ddp(**extra: Any) -> DDPStrategy:
    return DDPStrategy(**{arg: value for arg, (value, _) in _DDP_SETTINGS.items()}, **_DDP_KWARGS, **extra)


def _private_attributes(strategy: DDPStrategy) -> dict[str, Any]:
    return {attr: getattr(strategy, attr) for _, attr in _DDP_SETTINGS.values()}


@pytest.mark.parametrize(("arg", "attr"), [(arg, attr) for arg, (_, attr) in _DDP_SETTINGS.items()]
                         + [("**kwargs", "_ddp_kwargs"), ("checkpoint_io", "_checkpoint_io"),
                            ("start_method", "_start_method")])
def test_ddp_keeps_its_settings_in_these_attributes(arg: str, attr: str) -> None:
    if arg == "**kwargs":
        value, strategy = _DDP_KWARGS, DDPStrategy(**_DDP_KWARGS)
    elif arg == "checkpoint_io":
        value = TorchCheckpointIO()
        strategy = DDPStrategy(checkpoint_io=value)
    elif arg == "start_method":
        value, strategy = "spawn", DDPStrategy(start_method="spawn")
    else:
        value = _DDP_SETTINGS[arg][0]
        strategy = DDPStrategy(**{arg: value})
    assert hasattr(strategy, attr), (
        f"{LIGHTNING}: DDPStrategy no longer has {attr} (where {arg} was kept): update _compat.ddp_settings")
    assert getattr(strategy, attr) == value, (
        f"{LIGHTNING}: DDPStrategy({arg}=...) is no longer kept in {attr}: update _compat.ddp_settings")


def test_ddp_settings_returns_the_users_settings() -> None:
    expected = {**{arg: value for arg, (value, _) in _DDP_SETTINGS.items()}, **_DDP_KWARGS}
    assert _compat.ddp_settings(_user_ddp()) == expected
    # as launch.py reads them: from the strategy of a Trainer built with the user's arguments
    trainer = _trainer(strategy=_user_ddp(start_method="spawn"), accelerator="cpu", devices=2)
    assert _compat.is_spawn_launcher(trainer.strategy.launcher)
    assert _compat.ddp_settings(trainer.strategy) == expected  # type: ignore[arg-type]


def test_rebuild_ddp_restores_the_settings_and_joins_existing_processes() -> None:
    user = _user_ddp(start_method="spawn")
    rebuilt = _compat.rebuild_ddp(_compat.ddp_settings(user))
    assert type(rebuilt) is DDPStrategy
    assert _private_attributes(rebuilt) == _private_attributes(user)
    assert rebuilt._ddp_comm_hook is default_hooks.allreduce_hook
    assert rebuilt._ddp_comm_state is _SENTINEL_STATE
    assert rebuilt._ddp_kwargs == _DDP_KWARGS
    assert rebuilt._start_method == "popen"
    assert _compat.ddp_settings(rebuilt) == _compat.ddp_settings(user)


def test_rebuilt_ddp_gets_no_launcher_of_its_own() -> None:
    trainer = _trainer(strategy=_compat.rebuild_ddp(_compat.ddp_settings(_user_ddp())), accelerator="cpu",
                       devices=2)
    assert trainer.strategy.launcher is not None
    assert not _compat.is_spawn_launcher(trainer.strategy.launcher)


def test_ddp_subclasses_are_refused() -> None:
    class MyDDP(DDPStrategy):
        pass

    lookalike = type("DDPStrategy", (DDPStrategy,), {})  # a subclass with the real one's name
    for strategy in (MyDDP(), lookalike()):
        with pytest.raises(ValueError, match="only Lightning's own DDPStrategy"):
            _compat.ddp_settings(strategy)
    with pytest.raises(ValueError, match="SingleDeviceStrategy"):
        _compat.ddp_settings(_trainer(accelerator="cpu", devices=1).strategy)  # type: ignore[arg-type]


class _MyCheckpointIO(TorchCheckpointIO):
    pass


def test_custom_checkpoint_io_is_refused() -> None:
    with pytest.raises(ValueError, match="checkpoint_io"):
        _compat.ddp_settings(DDPStrategy(checkpoint_io=_MyCheckpointIO()))
    trainer = _trainer(strategy="ddp_spawn", plugins=[_MyCheckpointIO()], accelerator="cpu", devices=2)
    with pytest.raises(ValueError, match="checkpoint_io"):
        _compat.ddp_settings(trainer.strategy)  # type: ignore[arg-type]


def test_default_checkpoint_io_is_accepted() -> None:
    lazily = DDPStrategy()
    assert lazily._checkpoint_io is None
    assert type(lazily.checkpoint_io) is TorchCheckpointIO  # created on first use
    for strategy in (lazily, DDPStrategy(checkpoint_io=TorchCheckpointIO())):
        assert _compat.ddp_settings(strategy) == _compat.ddp_settings(DDPStrategy())


def test_missing_ddp_attribute_is_a_compat_error(monkeypatch: pytest.MonkeyPatch) -> None:
    strategy = _user_ddp()
    monkeypatch.delattr(strategy, "_ddp_kwargs")
    with pytest.raises(LightningCompatError, match=re.escape(LIGHTNING) + ".*_ddp_kwargs"):
        _compat.ddp_settings(strategy)


# ------------------------------------------------------------------------------------------ loop counters

#: The fit-loop counters set_loop_position writes, and the progress fields written in each.
_LOOP_COUNTERS = {
    "fit_loop.epoch_loop.automatic_optimization.optim_progress.optimizer.step.total": ("ready", "completed"),
    "fit_loop.epoch_loop.manual_optimization.optim_step_progress.total": ("ready", "completed"),
    "fit_loop.epoch_loop.batch_progress.total": ("ready", "started", "processed", "completed"),
    "fit_loop.epoch_progress.current": ("ready", "started", "processed", "completed"),
    "fit_loop.epoch_progress.total": ("ready", "started", "processed", "completed"),
    "fit_loop.epoch_loop._batches_that_stepped": (),
    "fit_loop.epoch_loop.batch_progress.current": ("ready", "started", "processed", "completed"),
}


def test_epoch_loop_has_a_restarting_flag() -> None:
    """``set_loop_position`` marks the epoch loop ``restarting`` for a mid-epoch position (as a checkpoint restore
    does) so that its reset keeps ``batch_progress.current``."""
    epoch_loop = _trainer(accelerator="cpu").fit_loop.epoch_loop
    assert isinstance(epoch_loop.restarting, bool), f"{LIGHTNING}: epoch loop has no restarting flag"
    epoch_loop.restarting = True
    assert epoch_loop.restarting and epoch_loop.val_loop.restarting


@pytest.mark.parametrize("path", list(_LOOP_COUNTERS))
def test_loop_counter_exists(path: str) -> None:
    obj: Any = _trainer(accelerator="cpu")
    for i, part in enumerate(path.split(".")):
        assert hasattr(obj, part), (
            f"{LIGHTNING}: Trainer.{'.'.join(path.split('.')[:i + 1])} is gone: update _compat.set_loop_position")
        obj = getattr(obj, part)
    for field in _LOOP_COUNTERS[path]:
        assert isinstance(getattr(obj, field, None), int), (
            f"{LIGHTNING}: Trainer.{path}.{field} is not an int counter: update _compat.set_loop_position")
    if not _LOOP_COUNTERS[path]:
        assert isinstance(obj, int)


def test_batch_in_epoch_is_the_index_of_the_batch_about_to_run() -> None:
    """``batch_in_epoch`` (the CIFAR-10 augmentation's seed) counts the training batches of the current epoch."""
    from lightning.pytorch.demos.boring_classes import BoringModel

    seen: list[tuple[int, int]] = []

    class Recording(BoringModel):
        def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
            if self.trainer.training:
                seen.append((self.trainer.current_epoch, _compat.batch_in_epoch(self.trainer)))
            return batch

    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, limit_train_batches=3, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Recording())
    assert seen == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]


class _StepLogger(Logger):
    """The ``step`` of every ``log_metrics`` call that carries the training metric."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[int | None] = []

    @property
    def name(self) -> str:
        return "steps"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if "seen" in metrics:
            self.steps.append(step)


class _Auto(BoringModel):
    def training_step(self, batch: Any, batch_idx: int) -> Any:
        self.log("seen", 1.0)
        return super().training_step(batch, batch_idx)


class _Manual(ManualOptimBoringModel):
    def training_step(self, batch: Any, batch_idx: int) -> Any:
        self.log("seen", 1.0)
        return super().training_step(batch, batch_idx)


class _Recorder(pl.Callback):
    """Positions the loop at ``on_train_start`` (when given) and records what the fit then does."""

    def __init__(self, position: tuple[int, int] | None = None) -> None:
        self.position = position
        self.at_start: tuple[int, int] | None = None
        self.epochs: list[int] = []
        self.batches: list[tuple[int, int]] = []  # (current_epoch, global_step) before each batch
        self.validations: list[tuple[int, int]] = []  # (global_step, batches trained in this fit) at each

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.position is not None:
            _compat.set_loop_position(trainer, *self.position)
        self.at_start = (trainer.global_step, trainer.current_epoch)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epochs.append(trainer.current_epoch)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.batches.append((trainer.current_epoch, trainer.global_step))

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.validations.append((trainer.global_step, len(self.batches)))


def _fit(model: pl.LightningModule, max_steps: int, position: tuple[int, int] | None = None,
         accumulate: int = 1) -> tuple[pl.Trainer, _Recorder, _StepLogger]:
    """Fit on CPU with 4-batch epochs, step-based validation every 3 batches and a log entry per step."""
    recorder, logger = _Recorder(position), _StepLogger()
    trainer = pl.Trainer(
        max_steps=max_steps, accumulate_grad_batches=accumulate, limit_train_batches=4, limit_val_batches=1,
        val_check_interval=3, check_val_every_n_epoch=None, num_sanity_val_steps=0, log_every_n_steps=1,
        logger=logger, callbacks=[recorder], accelerator="cpu", devices=1, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(model)
    return trainer, recorder, logger


@pytest.mark.parametrize(("module", "accumulate"), [(_Auto, 1), (_Auto, 2), (_Manual, 1)])
@pytest.mark.parametrize("first", [4, 6])  # stop at an epoch boundary / mid-epoch
def test_set_loop_position_continues_a_fit(module: type[pl.LightningModule], accumulate: int, first: int) -> None:
    max_steps = 10
    pl.seed_everything(0, verbose=False)
    ref_trainer, ref, ref_log = _fit(module(), max_steps, accumulate=accumulate)  # uninterrupted, for comparison
    model = module()
    stopped, _, _ = _fit(model, first, accumulate=accumulate)
    step, epoch = stopped.global_step, stopped.current_epoch
    assert step == first

    trainer, rec, log = _fit(model, max_steps, (step, epoch), accumulate=accumulate)  # a fresh Trainer
    done = step * accumulate  # batches the positioned fit counts as trained already
    where = f"{LIGHTNING}, {module.__name__}, accumulate={accumulate}, from step {step} of epoch {epoch}"
    assert rec.at_start == (step, epoch), where
    assert rec.epochs[0] == epoch, where
    assert rec.batches[0] == (epoch, step), where
    assert len(rec.batches) == (max_steps - step) * accumulate, f"{where}: trained {len(rec.batches)} batches"
    assert trainer.global_step == max_steps, where
    assert [s for _, s in rec.batches] == [s for _, s in ref.batches[done:]], where
    assert log.steps == ref_log.steps[step:], f"{where}: logger steps (_batches_that_stepped)"
    assert [(s, n + done) for s, n in rec.validations] == [v for v in ref.validations if v[1] > done], (
        f"{where}: step-based validation")
    if done % 4 == 0:  # positioned at an epoch boundary: the rest is exactly the uninterrupted fit
        assert rec.batches == ref.batches[done:], where
        assert trainer.current_epoch == ref_trainer.current_epoch, where


@pytest.mark.parametrize(("module", "accumulate", "first"),
                         [(_Auto, 1, 6), (_Auto, 2, 5), (_Manual, 1, 7), (_Auto, 1, 4)])
def test_set_loop_position_mid_epoch_continues_exactly(module: type[pl.LightningModule], accumulate: int,
                                                       first: int) -> None:
    """Positioned ``batch`` batches into an epoch (``batch_progress.current`` kept through the epoch loop's reset by
    marking it ``restarting``), the fit is the rest of the uninterrupted one: same batches, epochs, logger steps
    (``_batches_that_stepped``), validations and final epoch."""
    max_steps = 10
    pl.seed_everything(0, verbose=False)
    ref_trainer, ref, ref_log = _fit(module(), max_steps, accumulate=accumulate)
    model = module()
    stopped, _, _ = _fit(model, first, accumulate=accumulate)
    step = stopped.global_step
    done = step * accumulate
    epoch, batch = divmod(done, 4)  # (a fit stopped by max_steps mid-epoch counts that epoch as done)
    trainer, rec, log = _fit(model, max_steps, (step, epoch, batch, done), accumulate=accumulate)
    where = f"{LIGHTNING}, {module.__name__}, accumulate={accumulate}, step {step}, epoch {epoch}, batch {batch}"
    assert rec.batches == ref.batches[done:], where
    assert rec.epochs == [e for e in ref.epochs if e >= epoch], where
    assert log.steps == ref_log.steps[step:], f"{where}: logger steps (_batches_that_stepped)"
    assert [(s, n + done) for s, n in rec.validations] == [v for v in ref.validations if v[1] > done], where
    assert (trainer.global_step, trainer.current_epoch) == (ref_trainer.global_step, ref_trainer.current_epoch), where


def test_batches_done_counts_the_completed_training_batches() -> None:
    seen: list[int] = []

    class Recording(pl.Callback):
        def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
            seen.append(_compat.batches_done(trainer))

    _trainer(accelerator="cpu", max_epochs=2, limit_train_batches=3, limit_val_batches=0,
             callbacks=[Recording()]).fit(BoringModel())
    assert seen == [0, 1, 2, 3, 4, 5]


def test_set_loop_position_at_the_start_changes_nothing() -> None:
    _compat.set_loop_position(SimpleNamespace(), 0, 0)  # type: ignore[arg-type]  # touches nothing


def test_missing_fit_loop_is_a_compat_error() -> None:
    with pytest.raises(LightningCompatError, match=re.escape(LIGHTNING) + ".*fit_loop"):
        _compat.set_loop_position(SimpleNamespace(), 3, 1)  # type: ignore[arg-type]


def test_missing_counter_is_a_compat_error_and_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    trainer, _, _ = _fit(_Auto(), 2)
    epoch_loop = trainer.fit_loop.epoch_loop
    monkeypatch.delattr(epoch_loop, "_batches_that_stepped")
    with pytest.raises(LightningCompatError, match=re.escape(LIGHTNING) + ".*_batches_that_stepped"):
        _compat.set_loop_position(trainer, 7, 3)
    assert (trainer.global_step, trainer.current_epoch) == (2, 1)
    assert epoch_loop.batch_progress.total.completed == 2


# ------------------------------------------------------------------------------------ private-name rule

#: Lightning private names only _compat.py may use (Callback._generate_state_key is protected API: allowed).
PRIVATE_NAMES = ("_MultiProcessingLauncher", "_ddp_kwargs", "optim_progress", "optim_step_progress",
                 "batch_progress", "epoch_progress", "_batches_that_stepped", "_process_group_backend", "_timeout",
                 "_ddp_comm_state", "_ddp_comm_hook", "_ddp_comm_wrapper", "_start_method",
                 "_model_averaging_period", "restarting")
_PRIVATE_RE = re.compile(r"(?<![A-Za-z0-9_])(" + "|".join(map(re.escape, PRIVATE_NAMES)) + r")(?![A-Za-z0-9_])")


def test_only_compat_uses_lightning_private_names() -> None:
    package = ROOT / "lightning_lottery"
    hits = []
    for path in sorted(package.rglob("*.py")):
        if path == package / "_compat.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for match in _PRIVATE_RE.finditer(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {match.group(1)}")
    listing = "\n".join(hits)
    assert not hits, f"Lightning private names outside lightning_lottery/_compat.py (move them there):\n{listing}"


# --------------------------------------------------------------------------------------- tested versions


def _lightning_requirement() -> Requirement:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    with open(ROOT / "pyproject.toml", "rb") as f:
        dependencies = tomllib.load(f)["project"]["dependencies"]
    found = [Requirement(d) for d in dependencies if Requirement(d).name == "lightning"]
    assert len(found) == 1, f"pyproject.toml should list lightning once, got {found}"
    return found[0]


def test_lightning_requirement_has_an_upper_bound() -> None:
    requirement = _lightning_requirement()
    assert any(spec.operator in ("<", "<=", "~=", "==") for spec in requirement.specifier), (
        f"pyproject.toml's {requirement} admits untested Lightning releases: bound it by the newest one tested")


def test_installed_lightning_is_admitted() -> None:
    requirement = _lightning_requirement()
    installed = Version(importlib.metadata.version("lightning"))
    assert requirement.specifier.contains(installed, prereleases=True), (
        f"installed lightning {installed} is not admitted by pyproject.toml's {requirement}: test it, then "
        "move the bound")
