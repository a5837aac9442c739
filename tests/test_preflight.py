"""Mistakes are one clear error before anything is trained or written (Python API and command line)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import lightning.pytorch as pl
import torch
from conftest import TinyData, TinyMLP
from torch import nn

from lightning_lottery import PruningScheduler
from lightning_lottery.cli import main
from lightning_lottery.preflight import PreflightError

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "recipes" / "lenet300_digits_smoke.yaml")
TRAINER = dict(max_steps=12, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")


def scheduler(out_dir, model=None, trainer=None, **settings) -> PruningScheduler:
    settings = {"levels": 1, "rate": 0.5, "val_every_n_steps": 4, "out_dir": str(out_dir), **settings}
    return PruningScheduler(model or TinyMLP(), TinyData(), trainer_kwargs=trainer or TRAINER, stream=None,
                            **settings)


class NoValLoss(TinyMLP):
    def validation_step(self, batch, batch_idx):
        self.log("val_accuracy", torch.tensor(0.5))


class NoTestAcc(TinyMLP):
    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", nn.functional.cross_entropy(self(x), y))


class NoTestStep(TinyMLP):
    test_step = pl.LightningModule.test_step  # the user wrote none: LightningModule's stub


class WeightNormed(TinyMLP):
    def __init__(self) -> None:
        super().__init__()
        for i in (0, 2, 4):
            self.net[i] = nn.utils.parametrizations.weight_norm(self.net[i])


class Lazy(TinyMLP):
    def __init__(self) -> None:
        super().__init__()
        self.net[0] = nn.LazyLinear(16)


@pytest.mark.parametrize("make,settings,trainer,message", [
    (TinyMLP, {"rates": {"nope.*": 0.1}}, None, "rate override pattern 'nope.*' matches no prunable parameter"),
    (TinyMLP, {"include": ["nope"]}, None, "include pattern 'nope' matches no parameter"),
    (TinyMLP, {"exclude": ["nope"]}, None, "exclude pattern 'nope' matches no prunable parameter"),
    (TinyMLP, {"exclude": ["*"]}, None, "no prunable parameter"),
    (WeightNormed, {}, None, "no prunable parameter"),
    (Lazy, {}, None, "is not initialized yet"),
    (TinyMLP, {"rewind_to": "99999it"}, None, "not inside level 0's training budget of 12 optimizer steps"),
    (TinyMLP, {"rewind_to": "5ep"}, None, "not inside level 0's training budget of 1 epochs"),
    (TinyMLP, {}, dict(TRAINER, max_steps=0), "trainer.max_steps is 0"),
    (TinyMLP, {}, dict(TRAINER, max_steps=-1, max_epochs=0), "trainer.max_epochs is 0"),
    (NoValLoss, {}, None, "does not log 'val_loss'.*logged: val_accuracy"),
    (NoTestAcc, {}, None, "does not log 'test_acc'.*logged: test_loss"),
    (NoTestStep, {}, None, "has no test_step"),
    (TinyMLP, {}, dict(TRAINER, val_check_interval=3), "trainer.val_check_interval=3 and lottery.val_every_n_steps=4 "
     "both set when to validate"),
    (TinyMLP, {}, dict(TRAINER, check_val_every_n_epoch=2), "trainer.check_val_every_n_epoch=2 and lottery"),
])
def test_mistakes_are_caught_before_anything_is_written(tmp_path, make, settings, trainer, message):
    out = tmp_path / "exp"
    with pytest.raises(PreflightError, match=message):
        scheduler(out, model=make(), trainer=trainer, **settings).run()
    assert not out.exists()


def test_an_epoch_budget_holds_its_rewind_point(tmp_path):
    # 96 samples / 8 = 12 batches per epoch, 2 epochs: "1ep" is inside, "2ep" is not
    trainer = dict(TRAINER, max_steps=-1, max_epochs=2)
    assert scheduler(tmp_path / "a", trainer=trainer, rewind_to="1ep").preflight().budget.steps == 24
    with pytest.raises(PreflightError, match="budget of 2 epochs"):
        scheduler(tmp_path / "b", trainer=trainer, rewind_to="2ep").preflight()


def test_the_trainers_validation_cadence_is_kept_when_the_lotterys_is_null(tmp_path):
    sched = scheduler(tmp_path / "exp", trainer=dict(TRAINER, val_check_interval=3, check_val_every_n_epoch=None),
                      val_every_n_steps=None)
    sched.run()
    metrics = sorted((tmp_path / "exp").rglob("metrics.json"))
    assert len(metrics) == 2  # levels 0 and 1
    for path in metrics:
        assert [h["step"] for h in json.loads(path.read_text())["val_history"]] == [3, 6, 9, 12]


def test_a_fixed_rerun_after_a_failed_preflight_is_accepted(tmp_path):
    with pytest.raises(PreflightError):
        scheduler(tmp_path, rates={"nope": 0.1}).run()
    rows = scheduler(tmp_path).run()
    assert [r["level"] for r in rows] == [0, 1]


def test_out_dir_that_is_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(PreflightError, match="is a file, not a directory"):
        scheduler(path).run()


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "exp"
    assert main(["find", "--config", SMOKE, "--lottery.out_dir", str(out), "--dry_run", "true",
                 "--lottery.levels", "2", "--lottery.controls", "[random_mask]"]) == 0
    text = capsys.readouterr().out
    assert "net.fc1.weight        300x64  rate 0.2/level  remaining by level: 100%, 80%, 64%" in text
    assert "net.fc3.weight" in text and "rate 0.1/level" in text
    assert "run plan: 5 runs" in text and "random_mask level 2 (replicate 0)  (needs ticket L1)" in text
    assert "budget per run: 200 optimizer steps" in text
    assert not out.exists()


@pytest.mark.parametrize("args,message", [
    (["--lottery.rewind_to", "-5it"], "goes after '='"),
    (["--lottery.rewind_to=-5it"], "rewind point '-5it'"),
    (["--trainer.max_step", "200"], "unrecognized arguments: --trainer.max_step"),  # no prefix matching
    (["--trainer.max_steps", "0"], "trainer.max_steps is 0"),
    (["--lottery.rewind_to", "99999it"], "not inside level 0's training budget"),
    (["--trainer.max_steps", "x"], "trainer.max_steps"),
    (["--lottery.exclude", "[nope]"], "exclude pattern 'nope'"),
    (["--trainer.val_check_interval", "5"], "set lottery.val_every_n_steps: null to keep the trainer's"),
])
def test_command_line_mistakes_are_one_line(tmp_path, capsys, args, message):
    out = tmp_path / "exp"
    with pytest.raises(SystemExit) as exit_info:
        main(["find", "--config", SMOKE, "--lottery.out_dir", str(out), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lightning-lottery: error: ") and message in err, err
    assert "(see: lightning-lottery find --help)" in err and "usage:" not in err
    assert not out.exists()


@pytest.mark.parametrize("content,message", [(b"\x00\x01\x02", "is not YAML"), (b"", "is empty")])
def test_bad_recipe_files_are_one_line(tmp_path, capsys, content, message):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_bytes(content)
    with pytest.raises(SystemExit):
        main(["find", "--config", str(recipe)])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"recipe {recipe} {message}" in err


def test_out_dir_that_is_a_file_on_the_command_line(tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(SystemExit):
        main(["find", "--config", SMOKE, "--lottery.out_dir", str(path)])
    assert capsys.readouterr().err.count("\n") == 1


def test_ctrl_c_is_one_line_and_the_rerun_resumes(tmp_path):
    out = tmp_path / "exp"
    cmd = [sys.executable, "-m", "lightning_lottery.cli", "find", "--config", SMOKE, "--lottery.out_dir", str(out),
           "--trainer.max_steps", "100000", "--lottery.levels", "1", "--lottery.val_every_n_steps", "50",
           "--wandb.enabled", "false"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "WANDB_MODE": "offline"})
    deadline = time.monotonic() + 120
    while not list(out.glob("replicate_0/ticket/level_00/checkpoints/last.ckpt")) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last == "lightning-lottery: error: interrupted; rerun the same command to resume where it stopped"
    assert "Traceback" not in err


def test_a_full_disk_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    import errno

    import lightning_lottery.masks as masks

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(masks, "atomic_write_bytes", full)
    with pytest.raises(SystemExit) as exit_info:
        main(["find", "--config", SMOKE, "--lottery.out_dir", str(tmp_path / "exp"), "--wandb.enabled", "false",
              "--quiet", "true"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device: " in err and "mask.safetensors" in err, err
