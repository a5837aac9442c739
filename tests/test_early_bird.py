"""Early-bird tickets (``lottery.early_bird``): the window of masks, the declaration rule, the settings' errors, and
the CLI on the digits smoke data (the fit stopped at the declared step, the steps saved, a killed run resumed)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_lottery.cli import main
from lightning_lottery.config import LotteryConfig
from lightning_lottery.early_bird import EarlyBird, MaskWindow, mask_distance
from lightning_lottery.result import RESULT_COLUMNS, SUMMARY_KEYS, RunResult, budget

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "recipes" / "lenet300_digits_smoke.yaml")
EB = ["--lottery.early_bird.every", "5it", "--lottery.early_bird.window", "2", "--lottery.early_bird.eps", "0.05"]
FAST = ["--trainer.max_steps", "60", "--lottery.val_every_n_steps", "10", "--quiet", "true", "--lottery.levels", "2"]


@pytest.fixture(autouse=True)
def _no_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")


def m(*bits: int) -> dict[str, torch.Tensor]:
    return {"w": torch.tensor([bool(b) for b in bits])}


def test_mask_distance_is_the_fraction_of_positions_that_differ_over_all_tensors():
    a = {"a": torch.tensor([True, True]), "b": torch.tensor([[True, False], [False, False]])}
    b = {"a": torch.tensor([True, False]), "b": torch.tensor([[False, False], [False, True]])}
    assert mask_distance(a, b) == pytest.approx(3 / 6)
    assert mask_distance(a, a) == 0.0
    with pytest.raises(ValueError, match="different parameters"):
        mask_distance(a, {"a": a["a"]})
    with pytest.raises(ValueError, match="shapes"):
        mask_distance({"w": torch.ones(2, dtype=torch.bool)}, {"w": torch.ones(3, dtype=torch.bool)})


def test_the_ticket_is_declared_when_every_distance_to_the_full_window_is_below_eps():
    window = MaskWindow(window=2, eps=0.3)
    # 4 positions: one flip = 0.25 < 0.3, two flips = 0.5
    assert window.add(10, m(1, 1, 0, 0)) is None
    assert window.add(20, m(0, 0, 1, 1)) == 1.0 and window.found is None
    assert window.add(30, m(0, 0, 1, 0)) == 0.75 and window.found is None  # far from step 10's mask
    assert window.add(40, m(0, 0, 1, 0)) == 0.25 and window.found == 40  # 0.25 to step 20's, 0 to 30's
    assert window.add(50, m(0, 0, 1, 0)) == 0.0
    found = window.found
    assert window.add(60, m(1, 1, 1, 1)) == 0.75 and window.found == found  # declared once, never moved
    assert [d["step"] for d in window.distances] == [20, 30, 40, 50, 60]


def test_declaration_waits_for_a_full_window_and_eps_is_strict():
    window = MaskWindow(window=3, eps=0.25)
    for step in (1, 2, 3):
        window.add(step, m(1, 0, 1, 0))
        assert window.found is None  # only 0, 1, 2 earlier masks
    window.add(4, m(1, 0, 1, 0))
    assert window.found == 4 and torch.equal(window.mask["w"], m(1, 0, 1, 0)["w"])
    strict = MaskWindow(window=1, eps=0.25)
    strict.add(1, m(1, 0, 1, 0))
    strict.add(2, m(1, 1, 1, 0))  # distance 0.25 == eps: not below
    assert strict.found is None
    strict.add(3, m(1, 1, 1, 0))
    assert strict.found == 3


def test_the_window_state_round_trips():
    window = MaskWindow(window=2, eps=0.5)
    for step, bits in ((5, (1, 0)), (10, (1, 1)), (15, (1, 1))):
        window.add(step, m(*bits))
    restored = MaskWindow(window=2, eps=0.5)
    restored.load_state_dict(window.state_dict())
    assert restored.found == window.found and restored.distances == window.distances
    assert restored.add(20, m(0, 0)) == window.add(20, m(0, 0))


@pytest.mark.parametrize("settings,message", [
    (dict(every="2ep"), "every must be a positive number of iterations"),
    (dict(every="0it"), "every must be a positive"),
    (dict(every="soon"), "lottery.early_bird.every"),
    (dict(window=0), "window must be an integer >= 1"),
    (dict(eps=1.0), r"eps must be in \(0, 1\)"),
    (dict(eps=0), r"eps must be in \(0, 1\)"),
    (dict(stop="yes"), "stop must be true or false"),
])
def test_bad_settings_are_one_clear_error(settings, message):
    with pytest.raises(ValueError, match=message):
        EarlyBird(**settings)


def test_config_errors_and_identity():
    with pytest.raises(ValueError, match="lottery.early_bird: .*unexpected keyword"):
        LotteryConfig(early_bird={"every": "5it", "windows": 2})
    with pytest.raises(ValueError, match="lottery.early_bird draws"):
        LotteryConfig(early_bird={}, rewind="pai", levels=1, prune_at_init={"remaining": [0.5]})
    assert "early_bird" not in LotteryConfig().identity()  # identities of experiments without it are unchanged
    assert LotteryConfig(early_bird={"every": 50}).identity()["early_bird"] == {"every": "50it"}
    assert EarlyBird(every=50) == EarlyBird(every="50it") and hash(LotteryConfig(early_bird={}))


def test_result_fields_are_columns_and_summary_keys_and_left_out_when_unset():
    assert {"early_bird_step", "steps_saved"} <= set(RESULT_COLUMNS) & set(SUMMARY_KEYS)
    row = RunResult(branch="ticket", replicate=0, seed=0, level=0, remaining=1.0, alive=1, total=1, steps=7)
    assert "early_bird_step" not in row.to_dict() and budget(row.to_dict()) == 7
    assert budget({"steps": 25, "steps_saved": 35}) == 60


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


def test_early_bird_end_to_end_stops_each_pruning_level_and_records_the_steps(tmp_path):
    out = tmp_path / "eb"
    assert main(["find", "--config", SMOKE, "--lottery.out_dir", str(out), "--wandb.enabled", "false", *FAST, *EB,
                 "--lottery.controls", "[random_reinit]"]) == 0
    rows = {(r["branch"], int(r["level"])): r for r in _rows(out)}
    for level in (0, 1):  # the levels that prune: stopped at the declared step, the rest of the budget saved
        row = rows[("ticket", level)]
        step = int(row["early_bird_step"])
        assert 0 < step < 60 and int(row["steps"]) == step and int(row["steps_saved"]) == 60 - step
    # the last level has nothing to prune: it trains the whole budget (level 0's, not its early-bird step)
    assert rows[("ticket", 2)]["steps"] == "60" and rows[("ticket", 2)]["early_bird_step"] == ""
    assert rows[("random_reinit", 1)]["steps"] == "60" and rows[("random_reinit", 1)]["steps_saved"] == ""
    logged = (out / "replicate_0" / "ticket" / "level_00" / "logs")
    metrics = next(logged.rglob("metrics.csv")).read_text()
    assert "mask_distance" in metrics.splitlines()[0] and "lottery/steps_saved" in metrics.splitlines()[0]
    summary = (out / "report" / "summary.csv").read_text().splitlines()[0]
    assert "early_bird_step" in summary and "steps_saved" in summary
    assert "early-bird step" in (out / "report" / "report.html").read_text()


def test_without_stop_the_ticket_is_recorded_and_training_goes_on(tmp_path):
    out = tmp_path / "nostop"
    assert main(["find", "--config", SMOKE, "--lottery.out_dir", str(out), "--wandb.enabled", "false", *FAST, *EB,
                 "--lottery.early_bird.stop", "false", "--lottery.levels", "1"]) == 0
    row = _rows(out)[0]
    assert row["steps"] == "60" and row["steps_saved"] == "0" and 0 < int(row["early_bird_step"]) < 60


def test_a_killed_early_bird_run_resumes_to_the_same_results(tmp_path, monkeypatch):
    """Killed at step 23 (checkpoint at 20, before the declaration): the resumed window declares at the same step."""
    args = ["find", "--config", SMOKE, *FAST, *EB, "--lottery.levels", "1", "--lottery.checkpoint_every_n_steps",
            "10", "--wandb.enabled", "false", "--trainer.callbacks+=kill_switch.KillSwitch"]
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    monkeypatch.delenv("LOTTERY_TEST_KILL", raising=False)
    assert main([*args, "--lottery.out_dir", str(tmp_path / "straight")]) == 0
    straight = _rows(tmp_path / "straight")
    assert int(straight[0]["early_bird_step"]) > 20  # the kill below comes before the declaration

    def run(kill: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "LOTTERY_TEST_KILL": kill, "PYTHONPATH": os.pathsep.join([str(ROOT), str(Path(__file__).parent)])}
        return subprocess.run([sys.executable, "-m", "lightning_lottery.cli", *args, "--lottery.out_dir",
                               str(tmp_path / "killed")], env=env, capture_output=True, text=True, timeout=300)

    assert run("level_00:on_train_batch_end:23").returncode == -9
    proc = run("")
    assert proc.returncode == 0, proc.stderr[-3000:]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]  # noqa: E731
    assert strip(_rows(tmp_path / "killed")) == strip(straight)
