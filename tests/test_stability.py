"""Instability analysis (lottery.stability): the barrier maths, the run graph, and the runs end to end."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from conftest import TinyConvBN, TinyData, TinyMLP
from torch import nn

from lightning_lottery import PruningScheduler
from lightning_lottery.cli import main
from lightning_lottery.config import LotteryConfig
from lightning_lottery.data import DigitsDataModule
from lightning_lottery.executor import _data_seed
from lightning_lottery.plan import Plan, Run, Seeds
from lightning_lottery.result import RESULT_COLUMNS, RunResult
from lightning_lottery.stability import Stability, alphas, barrier, interpolate, recompute_bn, summarize

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "recipes" / "lenet300_digits_smoke.yaml")
class ShuffledData(TinyData):
    """Shuffled by torch's global generator, i.e. by each copy's seed."""

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(self.x, self.y),
                                           batch_size=self.batch_size, shuffle=True)


TRAINER = dict(max_steps=6, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")


# ------------------------------------------------------------------------------------------------ the maths
def test_alpha_grid_is_evenly_spaced_with_both_ends():
    assert alphas(2) == [0.0, 1.0]
    grid = alphas(11)
    assert len(grid) == 11 and grid[0] == 0.0 and grid[-1] == 1.0
    assert all(math.isclose(b - a, 0.1) for a, b in zip(grid, grid[1:]))


def test_identical_copies_have_barrier_zero():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    errors, losses = [], []
    for alpha in alphas(11):
        net.load_state_dict(interpolate(state, state, alpha))
        assert all(torch.equal(net.state_dict()[k], state[k]) for k in state)
        with torch.no_grad():
            logits = net(x)
        errors.append(float((logits.argmax(1) != y).float().mean()))
        losses.append(float(nn.functional.cross_entropy(logits, y)))
    assert barrier(errors) == 0.0 and barrier(losses) == 0.0


def test_a_known_bump_in_one_dimension():
    """loss(w) = (w² − 1)²: the minima w = −1 and w = +1 are separated by a barrier of height 1 at w = 0."""
    first, second = {"w": torch.tensor([-1.0])}, {"w": torch.tensor([1.0])}
    losses = [float((interpolate(first, second, a)["w"] ** 2 - 1) ** 2) for a in alphas(11)]
    assert losses[0] == losses[-1] == 0.0 and losses[5] == 1.0
    assert barrier(losses) == pytest.approx(1.0)
    # a tilted line: the barrier is measured from the mean of the ends, never below 0
    assert barrier([0.1, 0.2, 0.3]) == pytest.approx(0.1) and barrier([0.3, 0.1, 0.1]) == pytest.approx(0.1)
    assert barrier([0.2, 0.1, 0.2]) == 0.0


def test_interpolate_keeps_integer_buffers_of_the_first_copy():
    a = {"w": torch.zeros(2), "n": torch.tensor(3)}
    b = {"w": torch.ones(2), "n": torch.tensor(9)}
    mid = interpolate(a, b, 0.5)
    assert torch.equal(mid["w"], torch.full((2,), 0.5)) and int(mid["n"]) == 3
    with pytest.raises(ValueError, match="differ in their keys"):
        interpolate(a, {"w": torch.ones(2)}, 0.5)


def test_summarize_gives_none_without_a_loss():
    curve = [{"alpha": a, "test_err": e, "train_loss": None} for a, e in zip(alphas(3), (0.1, 0.3, 0.1))]
    assert summarize(curve) == {"barrier_test_err": pytest.approx(0.2), "barrier_train_loss": None}


def test_recompute_bn_re_estimates_the_running_statistics():
    net = nn.Sequential(nn.BatchNorm1d(2), nn.Linear(2, 2)).eval()
    net[0].running_mean.fill_(100.0)
    batches = [(torch.full((4, 2), float(i)), None) for i in (1, 3, 5)]
    assert recompute_bn(net, batches, count=2)
    assert torch.allclose(net[0].running_mean, torch.full((2,), 2.0))  # the mean of the first two batches
    assert not net.training and net[0].momentum == 0.1  # modes and momentum restored
    assert not recompute_bn(nn.Linear(2, 2), batches, count=2)  # no BatchNorm: nothing forwarded


def test_settings_are_checked_and_only_changes_identify():
    assert Stability(levels=[3, 0, 3]).levels == (0, 3)
    assert Stability(levels=[0], alphas=30, bn="recompute").changed() == {"levels": [0], "alphas": 30,
                                                                          "bn": "recompute"}
    for bad in ({"levels": []}, {"alphas": 1}, {"bn": "keep"}, {"bn_batches": 0}, {"levels": [-1]}):
        with pytest.raises(ValueError, match="lottery.stability"):
            Stability(**bad)
    with pytest.raises(ValueError, match="lottery.stability"):
        LotteryConfig(stability={"level": [0]})
    assert LotteryConfig().identity()["stability"] is None
    assert LotteryConfig(stability={"levels": [1]}).identity()["stability"] == {"levels": [1]}


# ------------------------------------------------------------------------------------------ the run graph
def test_the_plan_runs_stability_after_the_level_it_needs():
    plan = Plan(levels=2, replicates=1, main="ticket", controls=("random_mask",), stability=(0, 2, 5))
    assert [str(r) for r in plan.runs()] == [
        "ticket level 0 (replicate 0)", "stability level 0 (replicate 0)", "ticket level 1 (replicate 0)",
        "random_mask level 1 (replicate 0)", "ticket level 2 (replicate 0)", "random_mask level 2 (replicate 0)",
        "stability level 2 (replicate 0)"]  # level 5 is past the experiment's levels
    assert plan.needs(Run(0, "stability", 0)) == (Run(0, "ticket", 0),)
    assert plan.needs(Run(0, "stability", 2)) == (Run(0, "ticket", 1),)
    assert Run(0, "stability", 2) in plan.dependents(Run(0, "ticket", 0))
    seeds = Seeds((0, 1))
    drawn = {seeds.stability(Run(r, "stability", lv), c) for r in (0, 1) for lv in range(3) for c in (1, 2)}
    assert len(drawn) == 12 and not drawn & {0, 1}


def test_other_runs_keep_their_metrics_keys():
    row = RunResult(branch="ticket", replicate=0, seed=0, level=0, remaining=1.0, alive=1, total=1).to_dict()
    assert not {"barrier_test_err", "barrier_train_loss", "stability_curve"} & set(row)
    assert not {"barrier_test_err", "stability_curve"} & set(RESULT_COLUMNS)


def test_a_tensor_datamodule_draws_under_the_copy_seed_meanwhile():
    data = DigitsDataModule()
    data.setup("fit")
    own = next(iter(data.train_dataloader()))[1]
    with _data_seed(data, 12345):
        other = next(iter(data.train_dataloader()))[1]
    assert data.seed == 0 and not torch.equal(own, other)
    assert torch.equal(next(iter(data.train_dataloader()))[1], own)


# ------------------------------------------------------------------------------------------------ end to end
def _find(out_dir: Path, stability: str, *extra: str) -> int:
    return main(["find", "--config", SMOKE, "--lottery.out_dir", str(out_dir), "--trainer.max_steps", "12",
                 "--lottery.val_every_n_steps", "6", "--lottery.levels", "1", "--wandb.enabled", "false",
                 "--quiet", "true", "--lottery.stability", stability, *extra])


def test_cli_stability_levels_and_alphas_on_the_digits(tmp_path):
    out = tmp_path / "exp"
    assert _find(out, "{levels: [0, 1], alphas: 3}") == 0
    rows = json.loads((out / "results.json").read_text())
    assert [(r["branch"], r["level"]) for r in rows] == [("ticket", 0), ("stability", 0), ("ticket", 1),
                                                         ("stability", 1)]
    for level in (0, 1):
        metrics = json.loads((out / f"replicate_0/stability/level_{level:02d}/metrics.json").read_text())
        curve = metrics["stability_curve"]
        assert [r["alpha"] for r in curve] == [0.0, 0.5, 1.0] and metrics["steps"] == 12
        assert metrics["barrier_test_err"] == pytest.approx(
            max(r["test_err"] for r in curve) - (curve[0]["test_err"] + curve[-1]["test_err"]) / 2, abs=1e-6)
        assert metrics["barrier_train_loss"] >= 0 and metrics["barrier_test_err"] >= 0
        # the ends of the line are the two copies: their mean test accuracy is the run's
        assert 1 - (curve[0]["test_err"] + curve[-1]["test_err"]) / 2 == pytest.approx(metrics["test_acc"], abs=1e-5)
        assert curve[0] != curve[-1]  # other data orders: other networks
        assert not (out / f"replicate_0/stability/level_{level:02d}/checkpoints").exists()
    level1 = json.loads((out / "replicate_0/stability/level_01/metrics.json").read_text())
    assert level1["remaining"] == json.loads((out / "replicate_0/ticket/level_01/metrics.json").read_text())["remaining"]
    assert "barrier_test_err" not in (out / "results.csv").read_text().splitlines()[0]
    assert (out / "report" / "stability.png").is_file() and "fig-stability" in (out / "report/report.html").read_text()
    assert "stability" not in (out / "report/summary.csv").read_text()  # an analysis, not a control
    assert len((out / "report/stability.csv").read_text().splitlines()) == 1 + 2 * 3

    before = {p: p.stat().st_mtime_ns for p in out.glob("replicate_0/*/level_*/metrics.json")}
    assert _find(out, "{levels: [0, 1], alphas: 3}") == 0  # a rerun recomputes nothing
    assert {p: p.stat().st_mtime_ns for p in out.glob("replicate_0/*/level_*/metrics.json")} == before


def test_cli_stability_bn_recompute_and_bn_batches(tmp_path):
    out = tmp_path / "exp"
    assert _find(out, "{levels: [1], alphas: 2, bn: recompute, bn_batches: 2}", "--lottery.rewind_to", "3it") == 0
    identity = json.loads((out / "experiment.json").read_text())["identity"]["lottery"]
    assert identity["stability"] == {"levels": [1], "alphas": 2, "bn": "recompute", "bn_batches": 2}
    metrics = json.loads((out / "replicate_0/stability/level_01/metrics.json").read_text())
    ends = [p["test_err"] for p in metrics["stability_curve"]]
    assert len(ends) == 2  # two points: the barrier is half the ends' difference
    assert metrics["barrier_test_err"] == pytest.approx(abs(ends[0] - ends[1]) / 2, abs=1e-6)
    assert metrics["rewind_step"] == 3


def test_identical_copies_end_to_end_give_barrier_zero_and_a_warning(tmp_path):
    """TinyData's loader shuffles with a fixed generator: both copies see the same batches and end identical."""
    torch.manual_seed(0)
    scheduler = PruningScheduler(TinyMLP(), TinyData(), levels=0, out_dir=str(tmp_path / "x"), val_every_n_steps=3,
                                 stability={"levels": [0], "alphas": 5}, trainer_kwargs=TRAINER, stream=None)
    with pytest.warns(UserWarning, match="ended identical"):
        scheduler.run()
    metrics = json.loads((tmp_path / "x/replicate_0/stability/level_00/metrics.json").read_text())
    assert metrics["barrier_test_err"] == 0.0 and metrics["barrier_train_loss"] == 0.0
    assert len({r["test_err"] for r in metrics["stability_curve"]}) == 1


def test_batchnorm_recompute_on_a_conv_net(tmp_path):
    torch.manual_seed(0)
    scheduler = PruningScheduler(TinyConvBN(), ShuffledData(image=True), levels=0, out_dir=str(tmp_path / "x"),
                                 val_every_n_steps=3, stability={"levels": [0], "alphas": 3, "bn": "recompute",
                                                                 "bn_batches": 2},
                                 trainer_kwargs=TRAINER, stream=None)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*ended identical")
        scheduler.run()
    metrics = json.loads((tmp_path / "x/replicate_0/stability/level_00/metrics.json").read_text())
    assert metrics.get("barrier_train_loss") is None  # the model logs no test_loss
    assert metrics["barrier_test_err"] is not None and len(metrics["stability_curve"]) == 3
