"""The ``lightning-lottery`` command: recipes parse, bad input is rejected before writing, runs resume after SIGKILL."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lightning_lottery.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "recipes" / "lenet300_digits_smoke.yaml")
DEFAULT = str(ROOT / "recipes" / "lenet300_fashion_mnist.yaml")
FAST = ["--trainer.max_steps", "20", "--lottery.val_every_n_steps", "10", "--quiet", "true"]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "lightning_lottery.cli", *args]


def test_print_config(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["find", "--config", SMOKE, "--print_config"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "class_path: lightning_lottery.models.LeNet300100" in out and "rate: 0.2" in out


@pytest.mark.parametrize(
    "override,message",
    [
        (["--lottery.rate", "1.5"], "lottery.rate"),
        (["--lottery.rate", "0"], "lottery.rate"),
        (["--lottery.levels", "-2"], "lottery.levels"),
        (["--lottery.rewind_to", "soon"], "rewind_to"),
        (["--lottery.scope", "everywhere"], "lottery.scope"),
        (["--lottery.bogus", "1"], "bogus"),
        (["--trainer.max_stepz", "3"], "max_stepz"),
    ],
)
def test_invalid_input_rejected_before_anything_is_written(tmp_path, capsys, override, message):
    out_dir = tmp_path / "exp"
    with pytest.raises(SystemExit) as exit_info:
        main(["find", "--config", SMOKE, "--lottery.out_dir", str(out_dir), *override])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not out_dir.exists()


def test_unknown_key_in_recipe_file(tmp_path, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(Path(SMOKE).read_text().replace("  levels: 3", "  levels: 3\n  leveles: 4"))
    with pytest.raises(SystemExit):
        main(["find", "--config", str(recipe), "--lottery.out_dir", str(tmp_path / "exp")])
    assert "leveles" in capsys.readouterr().err
    assert not (tmp_path / "exp").exists()


def test_smoke_recipe_end_to_end(tmp_path):
    out_dir = tmp_path / "exp"
    proc = subprocess.run(
        cli("find", "--config", SMOKE, "--lottery.out_dir", str(out_dir), "--lottery.levels", "2",
            "--trainer.max_steps", "30", "--lottery.val_every_n_steps", "10"),
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(open(out_dir / "results.csv")))
    assert [r["level"] for r in rows] == ["0", "1", "2"]
    # LeNet 64-300-100-10 with hidden 20% / output 10%: 50200 → 40260 → 32298
    assert [r["alive"] for r in rows] == ["50200", "40260", "32298"]
    assert "level 2/2" in proc.stderr and "% remaining" in proc.stderr  # progress lines and the final table
    assert float(rows[0]["test_acc"]) > 0.5


def test_default_recipe_runs_on_real_data(tmp_path):
    out_dir = tmp_path / "exp"
    assert main(["find", "--config", DEFAULT, "--lottery.out_dir", str(out_dir), "--lottery.levels", "1", *FAST]) == 0
    rows = list(csv.DictReader(open(out_dir / "results.csv")))
    assert len(rows) == 2 and rows[1]["alive"] == str(int(235200 * 0.8) + int(30000 * 0.8) + 900)


def test_sigkill_then_rerun_continues(tmp_path):
    out_dir = tmp_path / "exp"
    args = cli("find", "--config", SMOKE, "--lottery.out_dir", str(out_dir), "--lottery.levels", "2",
               "--trainer.max_steps", "60", "--lottery.val_every_n_steps", "10")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    done0 = out_dir / "replicate_0" / "ticket" / "level_00" / "metrics.json"
    deadline = time.time() + 240
    while not done0.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert done0.exists()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stamp = done0.stat().st_mtime_ns
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "run 1/3 · ticket level 0/2" in rerun.stderr and "already done, skipped" in rerun.stderr
    assert done0.stat().st_mtime_ns == stamp
    assert len(list(csv.DictReader(open(out_dir / "results.csv")))) == 3


def test_recipe_callbacks_and_loggers_are_fresh_per_level(tmp_path):
    recipe = tmp_path / "with_callbacks.yaml"
    recipe.write_text(
        Path(SMOKE).read_text().replace(
            "trainer:\n",
            "trainer:\n"
            "  callbacks:\n"
            "    - class_path: lightning.pytorch.callbacks.LearningRateMonitor\n"
            "  logger:\n"
            "    class_path: lightning.pytorch.loggers.CSVLogger\n"
            f"    init_args: {{save_dir: {tmp_path / 'csv'}}}\n",
        )
    )
    out_dir = tmp_path / "exp"
    assert main(["find", "--config", str(recipe), "--lottery.out_dir", str(out_dir), "--lottery.levels", "1", *FAST]) == 0
    versions = sorted(p.name for p in (tmp_path / "csv" / "lightning_logs").iterdir())
    assert versions == ["version_0", "version_1"]  # one logger run per level
    for version in versions:
        header = (tmp_path / "csv" / "lightning_logs" / version / "metrics.csv").read_text().splitlines()[0]
        assert "lr-Adam" in header and "val_loss" in header


def test_missing_data_is_one_clear_error_and_writes_nothing(tmp_path, capsys):
    out_dir = tmp_path / "exp"
    with pytest.raises(SystemExit) as exit_info:
        main(["find", "--config", DEFAULT, "--lottery.out_dir", str(out_dir), "--data.data_dir",
              str(tmp_path / "nowhere"), *FAST])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "apt-get install dataset-fashion-mnist" in err and "Traceback" not in err
    assert not out_dir.exists()


def test_corrupt_mask_file_on_resume_names_the_file(tmp_path, capsys):
    out_dir = tmp_path / "exp"
    args = ["find", "--config", SMOKE, "--lottery.out_dir", str(out_dir), "--lottery.levels", "1", *FAST]
    assert main(args) == 0
    (out_dir / "results.csv").unlink()
    (out_dir / "replicate_0" / "ticket" / "level_01" / "metrics.json").unlink()  # level 1 unfinished ...
    mask = out_dir / "replicate_0" / "ticket" / "level_01" / "mask.safetensors"
    mask.write_bytes(mask.read_bytes()[:50])  # ... and its mask damaged
    # the mask is level 0's product (its checksum is in level 0's manifest): named, and level 0 recomputed
    assert main(args) == 0
    assert "replicate_0/ticket/level_01/mask.safetensors is damaged (checksum mismatch)" in capsys.readouterr().err
    assert len(list(csv.DictReader(open(out_dir / "results.csv")))) == 2


def test_report_retrain_and_wandb_reference_offline(tmp_path, capsys, monkeypatch):
    out_dir = tmp_path / "exp"
    assert main(["find", "--config", SMOKE, "--lottery.out_dir", str(out_dir), "--lottery.levels", "1", *FAST]) == 0
    assert (out_dir / "report" / "report.html").is_file()  # find writes the report at the end
    # the report regenerates from a copied directory, without training
    import shutil

    copy_dir = tmp_path / "copy"
    shutil.copytree(out_dir, copy_dir)
    shutil.rmtree(copy_dir / "report")
    capsys.readouterr()
    assert main(["report", str(copy_dir)]) == 0
    html = (copy_dir / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4
    assert (copy_dir / "report" / "summary.csv").read_text() == (out_dir / "report" / "summary.csv").read_text()
    # --wandb without a login: one line, no traceback
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert main(["report", str(copy_dir), "--wandb", "true"]) == 1
    err = capsys.readouterr().err
    assert "W&B report not published" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    # a saved ticket trains again; a W&B reference offline is one clear error
    ticket = out_dir / "replicate_0" / "ticket" / "level_01" / "ticket.safetensors"
    assert main(["retrain", "--config", SMOKE, "--ticket", str(ticket), "--trainer.max_steps", "5", "--quiet", "true",
                 "--wandb.enabled", "false"]) == 0
    assert "80.2% weights remaining" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["retrain", "--config", SMOKE, "--ticket", "wandb:me/proj/ticket:v0", "--trainer.max_steps", "5"])
    assert exit_info.value.code == 2
    assert "cannot fetch W&B artifact 'me/proj/ticket:v0'" in capsys.readouterr().err


def test_packaged_recipe_by_name_and_short_class_names(tmp_path, capsys):
    out = tmp_path / "exp"
    assert main(["find", "-c", "lenet300_digits_smoke", "--lottery.out_dir", str(out), "--dry_run", "true"]) == 0
    assert main(["find", "-c", "lenet300_digits_smoke", "--dry_run", "--lottery.out_dir", str(out), "--quiet"]) == 0
    assert not out.exists()  # a flag alone means true: still a dry run
    assert "net.fc1.weight" in capsys.readouterr().out
    assert main(["find", "-c", "lenet300_digits_smoke.yaml", "--model", "LeNet300100", "--model.in_features", "64",
                 "--data", "DigitsDataModule", "--lottery.out_dir", str(out), "--dry_run", "true"]) == 0
    assert not out.exists()


def test_recipes_version_and_help(capsys):
    assert main(["recipes"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert any(line.startswith("lenet300_fashion_mnist ") and "Fashion-MNIST" in line for line in listing)
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == "lightning-lottery 0.1.0"
    with pytest.raises(SystemExit):
        main(["find", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "models: " in help_text and "LeNet300100" in help_text and "DigitsDataModule" in help_text


def test_optimizer_and_lr_scheduler_from_the_command_line(tmp_path):
    """LightningCLI's --optimizer / --lr_scheduler: any torch.optim class for any model."""
    import torch

    from lightning_lottery import cli as cli_module

    parser = cli_module.build_parser()
    args = ["find", "-c", SMOKE, "--optimizer", "RMSprop", "--optimizer.lr", "0.01", "--lr_scheduler", "StepLR",
            "--lr_scheduler.step_size", "3"]
    cfg = parser.parse_args(cli_module.resolve_recipes(args)).find
    sub = parser._subcommands_action._name_parser_map["find"]
    init = cli_module._instantiate(sub, cfg, 0)
    configured = init.model.configure_optimizers()
    assert isinstance(configured["optimizer"], torch.optim.RMSprop)
    assert configured["optimizer"].defaults["lr"] == 0.01
    assert isinstance(configured["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.StepLR)
    plain = cli_module._instantiate(sub, parser.parse_args(["find", "-c", SMOKE]).find, 0)
    assert isinstance(plain.model.configure_optimizers()["optimizer"], torch.optim.Adam)  # the model's own


def test_a_scheduler_without_an_optimizer_is_one_line(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["find", "-c", SMOKE, "--lr_scheduler", "StepLR", "--lr_scheduler.step_size", "3",
              "--lottery.out_dir", str(tmp_path / "exp")])
    assert exit_info.value.code == 2
    assert "lr_scheduler needs an optimizer section" in capsys.readouterr().err


def test_an_experiment_reruns_from_its_directory_alone(tmp_path, capsys):
    out = tmp_path / "exp"
    assert main(["find", "-c", SMOKE, "--lottery.out_dir", str(out), "--lottery.levels", "1", *FAST,
                 "--wandb.enabled", "false"]) == 0
    before = (out / "results.csv").read_text()
    ticket = out / "replicate_0" / "ticket" / "level_01" / "metrics.json"
    stamp = ticket.stat().st_mtime_ns
    os.chdir(tmp_path / "..")  # from anywhere
    assert main(["find", "--resume", str(out)]) == 0  # the recorded recipe: the same experiment, nothing retrained
    assert main(["find", "--config", str(out / "experiment.json")]) == 0
    assert ticket.stat().st_mtime_ns == stamp and (out / "results.csv").read_text() == before


def test_report_of_a_partial_experiment_says_it_is_incomplete(tmp_path, capsys):
    out = tmp_path / "exp"
    assert main(["find", "-c", SMOKE, "--lottery.out_dir", str(out), "--lottery.levels", "1", *FAST,
                 "--wandb.enabled", "false"]) == 0
    assert main(["report", str(out)]) == 0
    assert "incomplete" not in capsys.readouterr().out
    import shutil

    shutil.rmtree(out / "replicate_0" / "ticket" / "level_01")  # as if the run had not finished
    assert main(["report", str(out)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.endswith("(incomplete: 1 of 2 runs done (1 of 2 levels); rerun find to finish it)"), line
