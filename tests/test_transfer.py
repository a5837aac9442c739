"""Ticket transfer (``lottery.transfer``, branch ``transfer``) and class subsets of the datamodules, end to end
through the CLI on the digits smoke data: a source experiment on digits 0–4, targets on other digits."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch

from lightning_lottery import branches
from lightning_lottery.cli import main
from lightning_lottery.config import LotteryConfig
from lightning_lottery.data import DigitsDataModule
from lightning_lottery.data.classes import check_classes, select_classes
from lightning_lottery.masks import load_mask
from lightning_lottery.rewind import RewindState
from lightning_lottery.ticket import Ticket
from lightning_lottery.transfer import Transfer, reinitialized

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "recipes" / "lenet300_digits_smoke.yaml")
FAST = ["--trainer.max_steps", "10", "--lottery.val_every_n_steps", "5", "--wandb.enabled", "false", "--quiet",
        "true"]
HEAD = ("net.fc3.weight", "net.fc3.bias")


@pytest.fixture(autouse=True)
def _no_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")


def find(out: Path, *args: str) -> int:
    return main(["find", "--config", SMOKE, "--lottery.out_dir", str(out), *FAST, *args])


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A two-level experiment on digits 0–4 (a 5-way head)."""
    out = tmp_path_factory.mktemp("transfer") / "source"
    assert find(out, "--lottery.levels", "2", "--data.init_args.classes", "[0, 1, 2, 3, 4]",
                "--model.init_args.num_classes", "5") == 0
    return out


def run_file(out: Path, branch: str, level: int, name: str) -> Path:
    return out / "replicate_0" / branch / f"level_{level:02d}" / name


# ------------------------------------------------------------------------------------------ class subsets
def test_class_subsets_keep_those_classes_and_remap_their_labels_in_order():
    full, part = DigitsDataModule(), DigitsDataModule(classes=[7, 2, 9])
    full.setup(), part.setup()
    assert part.num_classes == 3 and DigitsDataModule.num_classes == 10
    for split in ("train", "val", "test"):
        x, y = full._split(split)
        px, py = part._split(split)
        keep = (y == 7) | (y == 2) | (y == 9)
        assert torch.equal(px, x[keep])
        assert torch.equal(py, torch.tensor([{7: 0, 2: 1, 9: 2}[int(v)] for v in y[keep]]))
    x, y = select_classes((torch.arange(4.0), torch.tensor([3, 1, 3, 0])), (3, 0))
    assert x.tolist() == [0.0, 2.0, 3.0] and y.tolist() == [0, 0, 1]
    assert check_classes(None, 10) is None


@pytest.mark.parametrize("classes,message", [
    ([10], "unknown class 10"), ([-1], "unknown class -1"), ([], "non-empty"), ([1, 1], "distinct"),
    (["a"], "class indices"),
])
def test_bad_class_subsets_are_one_clear_error(classes, message):
    with pytest.raises(ValueError, match=f"classes.*{message}|{message}"):
        DigitsDataModule(classes=classes)


def test_fashion_mnist_takes_the_class_subset_option():
    from lightning_lottery.data import FashionMNISTDataModule

    assert FashionMNISTDataModule(classes=[5, 6, 7, 8, 9]).num_classes == 5
    with pytest.raises(ValueError, match="unknown class 10"):
        FashionMNISTDataModule(classes=[10])


# ------------------------------------------------------------------------------------------ settings
@pytest.mark.parametrize("settings,message", [
    (dict(rewind="transfer"), "set lottery.transfer.source"),
    (dict(rewind="weights", transfer={"source": "x"}), "leave rewind unset"),
    (dict(transfer={"source": "x", "head_mask": "maybe"}), "head_mask must be 'drop' or 'keep'"),
    (dict(transfer={"source": ""}), "transfer.source must be"),
    (dict(transfer={"source": "x", "reinit": [1]}), "reinit must be a list"),
    (dict(transfer={"source": "x", "reinitialise": []}), "lottery.transfer: .*unexpected keyword"),
    (dict(transfer={"source": "x"}, controls=["oneshot"]), "oneshot"),
    (dict(transfer={"source": "x"}, early_bird={}), "early_bird"),
])
def test_bad_transfer_settings_are_one_clear_error(settings, message):
    with pytest.raises(ValueError, match=message):
        LotteryConfig(**settings)


def test_transfer_is_the_main_line_of_its_own_rewind_mode():
    config = LotteryConfig(transfer={"source": "src", "reinit": "net.fc3"})
    assert config.rewind == "transfer" and branches.main_line("transfer").name == "transfer"
    assert config.transfer == Transfer("src", ("net.fc3",)) and "transfer" not in branches.control_names()
    assert config.identity()["transfer"] == {"source": "src", "reinit": ["net.fc3"]}
    assert "transfer" not in LotteryConfig().identity()
    assert reinitialized("net.fc3.weight", ["net.fc*"]) and not reinitialized("net.fc30.weight", ["net.fc3"])


# ------------------------------------------------------------------------------------------ end to end
def test_a_ticket_transferred_to_a_new_head(source, tmp_path):
    """Digits 0–4 (5 classes) → digits 7–9 (3 classes): the head is re-initialized, its mask dropped; the other
    layers train the source's mask from the source's rewind weights; random_mask runs on the target."""
    out = tmp_path / "target"
    assert find(out, "--lottery.levels", "2", "--data.init_args.classes", "[7, 8, 9]",
                "--model.init_args.num_classes", "3", "--lottery.transfer.source", str(source),
                "--lottery.transfer.reinit", "[net.fc3]", "--lottery.controls", "[random_mask]") == 0
    with open(out / "results.csv") as f:
        rows = [(r["branch"], r["level"]) for r in csv.DictReader(f)]
    assert rows == [("transfer", "0"), ("transfer", "1"), ("random_mask", "1"), ("transfer", "2"),
                    ("random_mask", "2")]
    source_start = RewindState.load(source / "replicate_0" / "rewind_point.pt").model
    target_start = RewindState.load(out / "replicate_0" / "rewind_point.pt").model
    for level in (1, 2):
        theirs = load_mask(run_file(source, "ticket", level, "mask.safetensors"))
        ours = load_mask(run_file(out, "transfer", level, "mask.safetensors"))
        assert ours["net.fc3.weight"].shape == (3, 100) and bool(ours["net.fc3.weight"].all())  # dropped
        for name in ("net.fc1.weight", "net.fc2.weight"):
            assert torch.equal(ours[name], theirs[name])  # the kept mask elsewhere is the source's
        ticket = Ticket.load(run_file(out, "transfer", level, "ticket.safetensors"))
        for name, value in ticket.state.items():
            if name in HEAD:  # re-initialized from this experiment's rewind point, not the source's
                assert value.shape != source_start[name].shape and torch.equal(value, target_start[name])
            else:
                want = source_start[name] * ours[name] if name in ours else source_start[name]
                assert torch.equal(value, want), name
        control = load_mask(run_file(out, "random_mask", level, "mask.safetensors"))
        assert not torch.equal(control["net.fc1.weight"], ours["net.fc1.weight"])
        assert int(control["net.fc1.weight"].sum()) == int(ours["net.fc1.weight"].sum())
    recorded = json.loads((out / "experiment.json").read_text())
    source_id = json.loads((source / "experiment.json").read_text())["id"]
    assert recorded["identity"]["transfer_source"]["id"] == source_id


def test_head_mask_keep_keeps_the_source_mask_and_reinitializes_the_weights(source, tmp_path):
    out = tmp_path / "keep"
    assert find(out, "--lottery.levels", "1", "--data.init_args.classes", "[5, 6, 7, 8, 9]",
                "--model.init_args.num_classes", "5", "--lottery.transfer.source", str(source),
                "--lottery.transfer.reinit", "[net.fc3]", "--lottery.transfer.head_mask", "keep",
                "--lottery.seed", "7") == 0
    theirs = load_mask(run_file(source, "ticket", 1, "mask.safetensors"))
    ours = load_mask(run_file(out, "transfer", 1, "mask.safetensors"))
    assert all(torch.equal(ours[n], theirs[n]) for n in theirs) and not bool(ours["net.fc3.weight"].all())
    ticket = Ticket.load(run_file(out, "transfer", 1, "ticket.safetensors"))
    source_start = RewindState.load(source / "replicate_0" / "rewind_point.pt").model
    head = ours["net.fc3.weight"]  # another seed's initialization under the source's kept mask
    assert not torch.equal(ticket.state["net.fc3.weight"], source_start["net.fc3.weight"] * head)
    assert torch.equal(ticket.state["net.fc2.bias"], source_start["net.fc2.bias"])


@pytest.mark.parametrize("args,message", [
    (["--model.init_args.num_classes", "3"], ("layer 'net.fc3.weight' has shape \\[5, 100\\] in the source and "
                                              "\\[3, 100\\] here; list its layer in lottery.transfer.reinit")),
    (["--model.init_args.num_classes", "3", "--lottery.transfer.reinit", "[net.fc3]",
      "--lottery.transfer.head_mask", "keep"], "head_mask: keep needs 'net.fc3.weight' to fit"),
    (["--model.init_args.num_classes", "5", "--lottery.transfer.reinit", "[net.head]"], "'net.head' matches no"),
    (["--model.init_args.num_classes", "5", "--lottery.levels", "3"], "holds tickets for levels 1..2"),
    (["--model.init_args.num_classes", "5", "--lottery.replicates", "2"], "has no replicate 1"),
])
def test_a_transfer_mistake_is_one_line_before_anything_is_written(source, tmp_path, capsys, args, message):
    out = tmp_path / "bad"
    with pytest.raises(SystemExit) as raised:
        find(out, "--lottery.levels", "1", "--data.init_args.classes", "[7, 8, 9]",
             "--lottery.transfer.source", str(source), *args)
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and len(err.strip().splitlines()) == 1, err
    assert not (out / "experiment.json").exists()


def test_a_missing_source_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        find(tmp_path / "t", "--lottery.transfer.source", str(tmp_path / "nowhere"))
    assert "holds no experiment" in capsys.readouterr().err
