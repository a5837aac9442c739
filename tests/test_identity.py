"""The experiment id: a hash of the settings that differ from their defaults, pinned for one recipe."""

from __future__ import annotations

from pathlib import Path

from lightning_lottery.cli import build_parser
from lightning_lottery.identity import cli_identity, experiment_identity, non_default
from lightning_lottery.config import LotteryConfig
from lightning_lottery.store import config_hash

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "recipes" / "lenet300_digits_smoke.yaml")


def recipe_id(*overrides: str) -> tuple[str, dict]:
    cfg = build_parser().parse_args(["find", "--config", SMOKE, *overrides]).find.as_dict()
    identity = cli_identity(cfg)
    return f"{cfg['lottery']['name']}-{config_hash(identity)[:8]}", identity


def test_the_smoke_recipe_id_is_pinned():
    """If this changes, every existing experiment directory of the recipe is orphaned: change it only on purpose."""
    experiment_id, identity = recipe_id()
    assert identity == {
        "data": {"class_path": "lightning_lottery.data.DigitsDataModule", "init_args": {"batch_size": 60}},
        "lottery": {"levels": 3, "name": "lenet300_digits_smoke", "rates": {"net.fc3.weight": 0.1},
                    "val_every_n_steps": 20},
        "model": {"class_path": "lightning_lottery.models.LeNet300100", "init_args": {"in_features": 64}},
        "trainer": {"accelerator": "cpu", "devices": 1, "log_every_n_steps": 10, "max_steps": 200},
    }
    assert experiment_id == "lenet300_digits_smoke-" + config_hash(identity)[:8]
    assert experiment_id == PINNED_SMOKE_ID


PINNED_SMOKE_ID = "lenet300_digits_smoke-39166b92"


def test_a_setting_passed_at_its_default_gives_the_same_id():
    base, _ = recipe_id()
    for overrides in (["--trainer.num_nodes", "1"], ["--lottery.criterion", "magnitude"],
                      ["--model.init_args.num_classes", "10"], ["--trainer.accumulate_grad_batches", "1"],
                      ["--lottery.out_dir", "elsewhere"], ["--trainer.enable_progress_bar", "true"],
                      ["--wandb.project", "other"], ["--quiet", "true"]):
        assert recipe_id(*overrides)[0] == base, overrides
    assert recipe_id("--trainer.max_steps", "300")[0] != base
    assert recipe_id("--lottery.criterion", "random")[0] != base


def test_python_objects_identity_counts_non_defaults_only():
    from lightning_lottery.data import DigitsDataModule
    from lightning_lottery.models import LeNet300100

    identity = experiment_identity(LeNet300100(in_features=64), DigitsDataModule(),
                                   {"max_steps": 10, "num_nodes": 1, "enable_progress_bar": False},
                                   LotteryConfig(levels=2, out_dir="x"))
    assert identity["model"]["hparams"] == {"in_features": 64}
    assert identity["data"]["hparams"] == {}
    assert identity["trainer"] == {"max_steps": 10}
    assert identity["lottery"] == {"levels": 2}


def test_non_default_compares_canonical_json():
    assert non_default({"t": (1, 2), "d": {"b": 1}}, {"t": [1, 2], "d": {"b": 1}}) == {}
    assert non_default({"new": 1}, {}) == {"new": 1}
