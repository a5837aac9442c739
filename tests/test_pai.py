"""Pruning at initialization end to end: configuration errors, and every new recipe key through the CLI on the
digits smoke data (``lottery.rewind: pai``, ``lottery.prune_at_init.*``, criteria ``snip``/``grasp``/``synflow``)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from conftest import TinyData, TinyMLP
from torch.utils.data import DataLoader

from lightning_lottery import PruningScheduler, branches, saliency
from lightning_lottery.cli import main
from lightning_lottery.config import LotteryConfig
from lightning_lottery.criteria import get_criterion
from lightning_lottery.masks import load_mask
from lightning_lottery.models import LeNet300100
from lightning_lottery.preflight import PreflightError
from lightning_lottery.rewind import RewindState

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "recipes" / "lenet300_digits_smoke.yaml")
FAST = ["--trainer.max_steps", "10", "--lottery.val_every_n_steps", "5", "--wandb.enabled", "false", "--quiet",
        "true", "--lottery.rewind", "pai", "--lottery.rates", "{}"]
TOTAL = 64 * 300 + 300 * 100 + 100 * 10  # LeNet 64-300-100-10


@pytest.fixture(autouse=True)
def _no_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")


def find(out: Path, *args: str) -> list[dict[str, str]]:
    assert main(["find", "--config", SMOKE, "--lottery.out_dir", str(out), *FAST, *args]) == 0
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


def mask(out: Path, branch: str, level: int) -> dict[str, torch.Tensor]:
    return load_mask(out / "replicate_0" / branch / f"level_{level:02d}" / "mask.safetensors")


@pytest.mark.parametrize("settings,message", [
    (dict(rewind="pai"), "prune_at_init.remaining"),
    (dict(prune_at_init={"remaining": [0.5]}), "set rewind: pai"),
    (dict(criterion="snip"), "use it with rewind: pai"),
    (dict(rewind="pai", levels=3, prune_at_init={"remaining": [0.5, 0.2]}), "lists 2 fraction"),
    (dict(rewind="pai", levels=1, rates={"x": 0.1}, prune_at_init={"remaining": [0.5]}), "lottery.rates"),
    (dict(rewind="pai", levels=1, controls=["oneshot"], prune_at_init={"remaining": [0.5]}), "oneshot"),
    (dict(rewind="pai", levels=1, prune_at_init={"remaining": [0.1], "min_density": 0.1}), "min_density"),
    (dict(rewind="pai", levels=1, prune_at_init={"remaining": [1.0]}), r"in \(0, 1\)"),
    (dict(rewind="pai", levels=1, prune_at_init={"remaining": [0.5], "rounds": 0}), "rounds"),
    (dict(rewind="pai", levels=1, prune_at_init={"remaining": [0.5], "remainder": 1}), "prune_at_init"),
])
def test_bad_settings_are_one_clear_error(settings, message):
    with pytest.raises(ValueError, match=message):
        LotteryConfig(**settings)


def test_identity_counts_only_changed_pai_settings():
    config = LotteryConfig(rewind="pai", levels=1, criterion="synflow", prune_at_init={"remaining": [0.5]})
    assert config.identity()["prune_at_init"] == {"remaining": [0.5]}
    assert LotteryConfig(rewind="pai", levels=1, prune_at_init={"remaining": [0.5], "min_density": 0.01}).identity()[
        "prune_at_init"] == {"remaining": [0.5], "min_density": 0.01}
    assert hash(config) == hash(LotteryConfig(**config.to_dict()))
    assert branches.main_line("pai").name == "pai" and "pai" not in branches.control_names()


def test_snip_end_to_end_with_the_sanity_checks(tmp_path):
    out = tmp_path / "snip"
    rows = find(out, "--lottery.criterion", "snip", "--lottery.levels", "2",
                "--lottery.prune_at_init.remaining", "[0.5, 0.1]",
                "--lottery.controls", "[random_mask, random_reinit]")
    assert [(r["branch"], r["level"]) for r in rows] == [
        ("pai", "0"), ("pai", "1"), ("random_mask", "1"), ("random_reinit", "1"),
        ("pai", "2"), ("random_mask", "2"), ("random_reinit", "2")]
    for level, target in ((1, 0.5), (2, 0.1)):
        assert {int(r["alive"]) for r in rows if r["level"] == str(level)} == {math.floor(target * TOTAL + 0.5)}
        pai, shuffled, reinit = (mask(out, b, level) for b in ("pai", "random_mask", "random_reinit"))
        for name, m in pai.items():  # in-layer shuffle: the layer's counts, other positions; reinit: the same mask
            assert int(shuffled[name].sum()) == int(m.sum()) and not torch.equal(shuffled[name], m)
            assert torch.equal(reinit[name], m)
    # level 2's mask is SNIP at θ0 on its prune set (drawn under the level's criterion seed), computed again here
    rewind = RewindState.load(out / "replicate_0" / "rewind_point.pt")
    model = LeNet300100(in_features=64)
    model.load_state_dict(rewind.model)
    from lightning_lottery.data import DigitsDataModule
    from lightning_lottery.plan import Run, Seeds

    data = DigitsDataModule(batch_size=60)
    data.setup("fit")
    batches = saliency.prune_set(data.train_dataloader(), 100, 256, Seeds((0,)).criterion(Run(0, "pai", 2)))
    names = list(mask(out, "pai", 2))
    expected = saliency.mask_at_init(model, rewind.model, names, lambda w: get_criterion("snip")(
        w, None, model=model, batches=batches), 0.1)
    assert all(torch.equal(expected[n], mask(out, "pai", 2)[n]) for n in names)


def test_grasp_layerwise_with_samples_and_batch_size(tmp_path):
    out = tmp_path / "grasp"
    rows = find(out, "--lottery.criterion", "grasp", "--lottery.levels", "1",
                "--lottery.prune_at_init.remaining", "[0.3]", "--lottery.prune_at_init.scope", "layerwise",
                "--lottery.prune_at_init.samples", "50", "--lottery.prune_at_init.batch_size", "16")
    assert rows[1]["branch"] == "pai" and float(rows[1]["remaining"]) == pytest.approx(0.3, abs=1e-4)
    for name, m in mask(out, "pai", 1).items():  # layerwise: each layer at the fraction
        assert int(m.sum()) == math.floor(0.3 * m.numel() + 0.5)


def test_synflow_rounds_and_min_density(tmp_path):
    out = tmp_path / "synflow"
    rows = find(out, "--lottery.criterion", "synflow", "--lottery.levels", "1",
                "--lottery.prune_at_init.remaining", "[0.01]", "--lottery.prune_at_init.min_density", "0.005",
                "--lottery.prune_at_init.rounds", "20")
    assert int(rows[1]["alive"]) == math.floor(0.01 * TOTAL + 0.5)
    for name, m in mask(out, "pai", 1).items():
        assert int(m.sum()) >= math.ceil(0.005 * m.numel()), name


def test_magnitude_at_init_is_pai_with_a_weights_only_criterion(tmp_path):
    out = tmp_path / "magnitude"
    find(out, "--lottery.levels", "1", "--lottery.prune_at_init.remaining", "[0.2]")
    rewind = RewindState.load(out / "replicate_0" / "rewind_point.pt")
    kept = mask(out, "pai", 1)
    scores = torch.cat([rewind.model[n].abs().flatten() for n in kept])
    flat = torch.cat([kept[n].flatten() for n in kept])
    assert scores[flat].min() >= scores[~flat].max()  # global magnitude at θ0


class DictBatches(TinyData):
    def train_dataloader(self):
        return DataLoader([{"x": x, "y": y} for x, y in zip(self.x, self.y)], batch_size=8)


def test_a_datamodule_without_input_label_batches_fails_before_training(tmp_path):
    scheduler = PruningScheduler(TinyMLP(), DictBatches(), levels=1, rewind="pai", criterion="snip",
                                 prune_at_init={"remaining": [0.5]}, out_dir=str(tmp_path / "x"), stream=None,
                                 trainer_kwargs=dict(max_steps=2, accelerator="cpu", enable_progress_bar=False))
    with pytest.raises(PreflightError, match="inputs, labels"):
        scheduler.run()
    assert not (tmp_path / "x").exists()


def test_the_fashion_mnist_pai_recipe_runs_two_steps(tmp_path):
    recipe = ROOT / "recipes" / "lenet300_fashion_mnist_pai.yaml"
    assert recipe.read_text().startswith("# recipe: ")
    out = tmp_path / "fm"
    assert main(["find", "--config", str(recipe), "--lottery.out_dir", str(out), "--lottery.levels", "1",
                 "--lottery.replicates", "1", "--trainer.max_steps", "2", "--lottery.val_every_n_steps", "1",
                 "--quiet", "true", "--data.val_size", "100", "--data.eval_batch_size", "50",
                 "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1"]) == 0
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["branch"] for r in rows] == ["pai", "pai", "random_mask", "random_reinit"]
    assert int(rows[1]["alive"]) == 213060  # IMP's level 1 of the controls recipe: matched fractions
