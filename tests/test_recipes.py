"""Every recipe parses, and runs two steps of two levels on data of its shape (synthetic where the data is absent)."""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from lightning_lottery import branches
from lightning_lottery.cli import main

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))

#: Input shape of the datasets that are not on this machine: their recipes are smoke-tested on synthetic data.
ABSENT_DATA_SHAPES = {
    "lightning_lottery.data.MNISTDataModule": [1, 28, 28],
    "lightning_lottery.data.CIFAR10DataModule": [3, 32, 32],
}
#: The paper's hyperparameters (Frankle & Carbin 2019, Figure 2 table), as the recipes must state them.
PAPER = {
    "lenet300_mnist": dict(lr=1.2e-3, max_steps=50_000, batch_size=60, scope="layerwise"),
    "conv2_cifar10": dict(lr=2e-4, max_steps=20_000, batch_size=60, scope="layerwise"),
    "conv4_cifar10": dict(lr=3e-4, max_steps=25_000, batch_size=60, scope="layerwise"),
    "conv6_cifar10": dict(lr=3e-4, max_steps=30_000, batch_size=60, scope="layerwise"),
    "resnet20_cifar10": dict(lr=0.03, max_steps=30_000, batch_size=128, scope="global", warmup_steps=20_000),
    "vgg19_cifar10": dict(lr=0.1, max_steps=112_480, batch_size=64, scope="global", warmup_steps=10_000),
}


def _load(recipe: Path) -> dict[str, Any]:
    return yaml.safe_load(recipe.read_text())


def _rewind_steps(rewind_to: str) -> int | None:
    """Steps of an ``Nit`` rewind point (``None`` for epochs)."""
    match = re.fullmatch(r"\s*(\d+)\s*it\s*", rewind_to)
    return int(match.group(1)) if match else None


@pytest.fixture(autouse=True)
def _no_wandb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")


def test_recipes_exist() -> None:
    names = {r.stem for r in RECIPES}
    assert set(PAPER) | {"conv2_fashion_mnist", "lenet300_fashion_mnist"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: r.stem)
def test_recipe_prints_its_config(recipe: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["find", "--config", str(recipe), "--print_config"])
    assert exit_info.value.code in (0, None)
    resolved = yaml.safe_load(capsys.readouterr().out)
    raw = _load(recipe)
    assert resolved["model"]["class_path"] == raw["model"]["class_path"]
    assert resolved["lottery"]["name"] == recipe.stem
    header = recipe.read_text().split("model:")[0]
    assert header.startswith("# ") and f"lightning-lottery find --config recipes/{recipe.name}" in header


@pytest.mark.parametrize("name", sorted(PAPER))
def test_recipe_has_the_papers_hyperparameters(name: str) -> None:
    raw = _load(ROOT / "recipes" / f"{name}.yaml")
    expected = dict(PAPER[name])
    model, data, lottery = raw["model"]["init_args"], raw["data"]["init_args"], raw["lottery"]
    assert model["lr"] == pytest.approx(expected.pop("lr"))
    assert raw["trainer"]["max_steps"] == expected.pop("max_steps")
    assert data["batch_size"] == expected.pop("batch_size")
    assert lottery["scope"] == expected.pop("scope")
    assert model.get("warmup_steps", 0) == expected.pop("warmup_steps", 0)
    assert not expected
    assert data["val_size"] == 5000 and lottery["val_every_n_steps"] == 100
    if lottery["scope"] == "global":  # the deep nets: conv 20% per level, fc never pruned
        assert lottery["rate"] == 0.2 and lottery["rates"] == {"net.fc.weight": 0.0}


def test_data_override_syntaxes_agree(capsys: pytest.CaptureFixture[str]) -> None:
    recipe = str(ROOT / "recipes" / "resnet20_cifar10.yaml")
    outputs = []
    for key in ("--data.shape", "--data.init_args.shape"):
        with pytest.raises(SystemExit):
            main(["find", "--config", recipe, "--data", "lightning_lottery.data.SyntheticImageDataModule",
                  key, "[3, 8, 8]", "--print_config"])  # fmt: skip
        outputs.append(yaml.safe_load(capsys.readouterr().out)["data"])
    assert outputs[0] == outputs[1]
    assert outputs[0]["class_path"] == "lightning_lottery.data.SyntheticImageDataModule"
    assert outputs[0]["init_args"]["shape"] == [3, 8, 8]


def _smoke_args(recipe: Path, out_dir: Path) -> list[str]:
    raw = _load(recipe)
    args = [
        "find", "--config", str(recipe), "--lottery.out_dir", str(out_dir), "--lottery.levels", "1",
        "--trainer.max_steps", "2", "--lottery.val_every_n_steps", "1", "--quiet", "true",
        "--trainer.accelerator", "cpu", "--trainer.log_every_n_steps", "1",
    ]  # fmt: skip
    rewind_to = str(raw["lottery"].get("rewind_to", "0it"))
    steps = _rewind_steps(rewind_to)
    if rewind_to != "auto" and (steps is None or steps >= 2):
        args += ["--lottery.rewind_to", "0it"]
    if (raw["lottery"].get("stability") or {}).get("at"):  # the candidates within two steps
        args += ["--lottery.stability.at", "[0it, 1it]"]
    data_class = raw["data"]["class_path"]
    if data_class in ABSENT_DATA_SHAPES:
        shape = ABSENT_DATA_SHAPES[data_class]
        args += [
            "--data", "lightning_lottery.data.SyntheticImageDataModule", "--data.shape", str(shape),
            "--data.train_size", "16", "--data.val_size", "4", "--data.test_size", "4", "--data.batch_size", "4",
        ]  # fmt: skip
    elif data_class == "lightning_lottery.data.FashionMNISTDataModule":  # real data: `make test` installs it
        args += ["--data.val_size", "100", "--data.eval_batch_size", "50", "--trainer.limit_val_batches", "1",
                 "--trainer.limit_test_batches", "1"]  # fmt: skip
    if "transfer" in raw["lottery"]:  # its source experiment first (the recipe named like the source's directory)
        source = out_dir.parent / "transfer_source"
        assert main(_smoke_args(ROOT / "recipes" / f"{Path(raw['lottery']['transfer']['source']).name}.yaml", source)) == 0
        args += ["--lottery.transfer.source", str(source)]
    return args


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: r.stem)
def test_recipe_runs_two_steps(recipe: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "x"
    assert main(_smoke_args(recipe, out_dir)) == 0
    with open(out_dir / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    lottery = _load(recipe)["lottery"]
    main_line = branches.main_line("transfer" if "transfer" in lottery else lottery.get("rewind", "full")).name
    tickets = [r for r in rows if r["branch"] == main_line and int(r["replicate"]) == 0]  # recipes may add controls
    assert [int(r["level"]) for r in tickets] == [0, 1]
    assert float(tickets[0]["remaining"]) == 1.0 > float(tickets[1]["remaining"]) > 0.7
    assert all(int(r["steps"]) == 2 for r in rows)
