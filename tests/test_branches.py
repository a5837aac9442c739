"""Controls, rewinding variants, one-shot and replicates: each branch starts from what it claims."""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import pytest
import torch
from conftest import TinyData, TinyMLP
from lightning.pytorch.callbacks import Callback

from lightning_lottery import PruningScheduler
from lightning_lottery.masks import load_mask
from lightning_lottery.rewind import RewindState

TRAINER = dict(max_steps=8, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")


class StartProbe(Callback):
    """Records, per run directory, the state every run starts training from (after LotteryTicket rewound)."""

    seen: dict[str, dict] = {}

    def on_train_start(self, trainer, pl_module):
        run = Path(trainer.default_root_dir)
        StartProbe.seen[f"{run.parent.name}/{run.name}"] = {
            "model": copy.deepcopy(pl_module.state_dict()),
            "opt": copy.deepcopy(trainer.optimizers[0].state_dict()),
            "step": trainer.global_step,
            "lr": trainer.optimizers[0].param_groups[0]["lr"],
        }


def run(tmp_path, **settings):
    StartProbe.seen = {}
    torch.manual_seed(0)
    model = TinyMLP(optimizer="sgd", lr=0.1, scheduler=True)  # MultiStepLR ×0.5 at steps 2, 4, 6
    theta0 = copy.deepcopy(model.state_dict())
    base = dict(levels=1, rate=0.5, val_every_n_steps=4, out_dir=str(tmp_path), rewind_to="2it")
    rows = PruningScheduler(model, TinyData(), trainer_kwargs=dict(TRAINER, callbacks=[StartProbe()]), stream=None,
                            **{**base, **settings}).run()
    return rows, dict(StartProbe.seen), theta0


def mask_of(tmp_path, branch, level, replicate=0):
    return load_mask(tmp_path / f"replicate_{replicate}" / branch / f"level_{level:02d}" / "mask.safetensors")


def test_random_mask_and_random_reinit_controls(tmp_path):
    rows, seen, theta0 = run(tmp_path, controls=["random_reinit", "random_mask"])
    assert sorted((r["branch"], r["level"]) for r in rows) == [
        ("random_mask", 1), ("random_reinit", 1), ("ticket", 0), ("ticket", 1)]
    ticket, rand_mask, reinit = (mask_of(tmp_path, b, 1) for b in ("ticket", "random_mask", "random_reinit"))
    rewind = RewindState.load(tmp_path / "replicate_0" / "rewind_point.pt")
    for name, m in ticket.items():
        # random mask: same per-layer counts, other positions; trained from θk like the ticket
        assert int(rand_mask[name].sum()) == int(m.sum()) and not torch.equal(rand_mask[name], m)
        start = seen["random_mask/level_01"]["model"][name]
        assert torch.equal(start, rewind.model[name] * rand_mask[name])
        # random reinit: the ticket's mask, fresh weights, from step 0
        assert torch.equal(reinit[name], m)
        fresh = seen["random_reinit/level_01"]["model"][name]
        assert torch.count_nonzero(fresh[~m]) == 0
        assert not torch.equal(fresh[m], theta0[name][m]) and not torch.equal(fresh[m], rewind.model[name][m])
        assert fresh[m].std() == pytest.approx(theta0[name].std(), rel=0.5)  # the model's own initializer
    assert seen["random_mask/level_01"]["step"] == 2 and seen["random_reinit/level_01"]["step"] == 0
    assert seen["random_reinit/level_01"]["opt"]["state"] == {}


def test_lr_rewinding_keeps_trained_weights_and_replays_the_schedule(tmp_path):
    rows, seen, _ = run(tmp_path, rewind="lr")
    assert [r["branch"] for r in rows] == ["lr_rewind", "lr_rewind"]
    trained = RewindState.load(tmp_path / "replicate_0" / "lr_rewind" / "level_00" / "final_state.pt")
    start = seen["lr_rewind/level_01"]
    mask = mask_of(tmp_path, "lr_rewind", 1)
    for name, m in mask.items():
        assert torch.equal(start["model"][name], trained.model[name] * m)
    assert start["step"] == 2 and start["lr"] == pytest.approx(0.05)  # the schedule at k, not the final 0.0125
    assert start["opt"]["state"] == {}
    assert rows[1]["steps"] == 8


def test_finetuning_keeps_trained_weights_and_final_lr(tmp_path):
    rows, seen, _ = run(tmp_path, rewind="finetune")
    trained = RewindState.load(tmp_path / "replicate_0" / "finetune" / "level_00" / "final_state.pt")
    start = seen["finetune/level_01"]
    mask = mask_of(tmp_path, "finetune", 1)
    names = [n for n, _ in TinyMLP().named_parameters()]
    for name, m in mask.items():
        assert torch.equal(start["model"][name], trained.model[name] * m)
        momentum = start["opt"]["state"][names.index(name)]["momentum_buffer"]
        assert torch.equal(momentum, trained.optimizers[0]["state"][names.index(name)]["momentum_buffer"] * m)
    assert start["lr"] == pytest.approx(0.0125)  # the final learning rate ...
    assert start["step"] == 2 and rows[1]["steps"] == 8  # ... for the same budget T - k


def test_weights_only_rewinding(tmp_path):
    _, seen, _ = run(tmp_path, rewind="weights")
    rewind = RewindState.load(tmp_path / "replicate_0" / "rewind_point.pt")
    start = seen["weights_rewind/level_01"]
    for name, m in mask_of(tmp_path, "weights_rewind", 1).items():
        assert torch.equal(start["model"][name], rewind.model[name] * m)
    assert start["opt"]["state"] == {} and start["step"] == 2 and start["lr"] == pytest.approx(0.05)


def test_oneshot_matches_ticket_counts_from_dense_weights(tmp_path):
    rows, _, _ = run(tmp_path, levels=2, controls=["oneshot"])
    dense = RewindState.load(tmp_path / "replicate_0" / "ticket" / "level_00" / "final_state.pt")
    for level in (1, 2):
        ticket, oneshot = mask_of(tmp_path, "ticket", level), mask_of(tmp_path, "oneshot", level)
        for name, m in ticket.items():
            kept = oneshot[name]
            assert int(kept.sum()) == int(m.sum())
            w = dense.model[name].abs()
            assert w[kept].min() >= w[~kept].max()  # the largest dense weights, at once
    assert [r["remaining"] for r in rows if r["branch"] == "oneshot"] == [0.5, 0.25]


def test_replicates_differ_only_by_seed(tmp_path):
    rows, seen, theta0 = run(tmp_path, replicates=2, seed=3)
    assert sorted({(r["replicate"], r["seed"]) for r in rows}) == [(0, 3), (1, 4)]
    r0 = RewindState.load(tmp_path / "replicate_0" / "rewind_point.pt")
    r1 = RewindState.load(tmp_path / "replicate_1" / "rewind_point.pt")
    assert not torch.equal(r0.model["net.0.weight"], r1.model["net.0.weight"])
    with open(tmp_path / "aggregate.csv") as f:
        agg = list(csv.DictReader(f))
    assert {(a["branch"], a["level"]) for a in agg} == {("ticket", "0"), ("ticket", "1")}
    # the same settings with seeds [3] reproduce replicate 0 exactly
    single, _, _ = run(tmp_path / "single", seeds=[3])
    for a, b in zip([r for r in rows if r["replicate"] == 0], single):
        assert a["test_acc"] == b["test_acc"] and a["val_history"] == b["val_history"]
