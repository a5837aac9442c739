"""LotteryTicket inside real Trainer fits: exact zeros, exact rewinds, checkpoint resume."""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import pytest
import torch
from conftest import TinyConvBN, TinyData, TinyMLP, make_trainer, random_mask
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_lottery import LotteryTicket, Ticket
from lightning_lottery.masks import MaskError, prunable_parameters


class ZeroChecker(Callback):
    """After every batch: pruned weights exactly zero, and their optimizer state exactly zero."""

    def __init__(self, mask):
        self.mask, self.checked = mask, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        params = prunable_parameters(pl_module)
        opt = trainer.optimizers[0]
        for name, m in self.mask.items():
            p = params[name]
            assert torch.equal(p.detach()[~m], torch.zeros_like(p.detach()[~m])), name
            for key, state in opt.state.get(p, {}).items():
                if isinstance(state, torch.Tensor) and state.shape == p.shape:
                    assert torch.count_nonzero(state[~m]) == 0, (name, key)
        self.checked += 1


class Probe(Callback):
    """Records the model/optimizer state at on_train_start (after LotteryTicket rewound) and at step k."""

    def __init__(self, capture_step: int | None = None):
        self.capture_step = capture_step
        self.at_start = self.at_k = None

    def _snapshot(self, trainer, pl_module):
        return {
            "model": copy.deepcopy(pl_module.state_dict()),
            "opt": copy.deepcopy(trainer.optimizers[0].state_dict()),
            "sched": [copy.deepcopy(c.scheduler.state_dict()) for c in trainer.lr_scheduler_configs],
            "step": trainer.global_step,
            "lr": trainer.optimizers[0].param_groups[0]["lr"],
        }

    def on_train_start(self, trainer, pl_module):
        self.at_start = self._snapshot(trainer, pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.capture_step is not None and trainer.global_step == self.capture_step and self.at_k is None:
            self.at_k = self._snapshot(trainer, pl_module)


@pytest.mark.parametrize(
    "optimizer,weight_decay,accumulate",
    [("sgd", 0.01, 1), ("adam", 0.0, 1), ("adam", 0.1, 1), ("adamw", 0.1, 1), ("sgd", 0.01, 3), ("adamw", 0.1, 2)],
)
def test_pruned_weights_exactly_zero_after_every_step(optimizer, weight_decay, accumulate):
    model = TinyMLP(optimizer=optimizer, lr=0.05, weight_decay=weight_decay)
    mask = random_mask(model)
    checker = ZeroChecker(mask)
    lottery = LotteryTicket(mask)
    make_trainer([lottery, checker], max_steps=8, accumulate_grad_batches=accumulate).fit(model, TinyData())
    assert checker.checked == 8 * accumulate
    # alive weights did train
    assert lottery.rewind_point is not None
    w0 = lottery.rewind_point.model["net.0.weight"]
    assert not torch.equal(w0[mask["net.0.weight"]], model.net[0].weight.detach()[mask["net.0.weight"]])


def test_mask_is_bool_and_no_reparametrization():
    model = TinyMLP()
    lottery = LotteryTicket(random_mask(model))
    names_before = [n for n, _ in model.named_parameters()]
    make_trainer([lottery], max_steps=2).fit(model, TinyData())
    assert [n for n, _ in model.named_parameters()] == names_before  # no weight_orig / weight_mask
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())
    assert all(m.dtype == torch.bool for m in lottery.mask.values())
    assert all(t.device.type == "cpu" for t in lottery.rewind_point.model.values())


def test_rewind_to_theta0_is_exact_and_never_aliased():
    torch.manual_seed(0)
    model = TinyMLP(optimizer="sgd", lr=0.1)
    theta0 = copy.deepcopy(model.state_dict())
    lottery = LotteryTicket(rewind_to="0it")
    make_trainer([lottery], max_steps=6).fit(model, TinyData())
    # training moved the live weights, the rewind copy did not move
    assert not torch.equal(model.net[0].weight.detach(), theta0["net.0.weight"])
    for k, v in theta0.items():
        assert torch.equal(lottery.rewind_point.model[k], v), k
    mask = lottery.prune(model, rate=0.2)
    assert abs(lottery.remaining - 0.8) < 0.01
    probe = Probe()
    make_trainer([lottery, probe], max_steps=6).fit(model, TinyData())
    for name, value in probe.at_start["model"].items():
        if name in mask:
            m = mask[name]
            assert torch.equal(value[m], theta0[name][m]), name
            assert torch.count_nonzero(value[~m]) == 0, name
        else:
            assert torch.equal(value, theta0[name]), name  # biases rewind too
    # a second level rewinds to the same θ0 (the copy survived level 1's training)
    for k, v in theta0.items():
        assert torch.equal(lottery.rewind_point.model[k], v), k
    mask2 = lottery.prune(model, rate=0.2)
    probe2 = Probe()
    make_trainer([lottery, probe2], max_steps=6).fit(model, TinyData())
    w = probe2.at_start["model"]["net.0.weight"]
    m2 = mask2["net.0.weight"]
    assert torch.equal(w[m2], theta0["net.0.weight"][m2])
    assert not (m2 & ~mask["net.0.weight"]).any()  # pruned weights never revived


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_late_rewind_restores_weights_optimizer_scheduler_and_step(optimizer):
    torch.manual_seed(0)
    model = TinyMLP(optimizer=optimizer, lr=0.01, scheduler=True)
    lottery = LotteryTicket(rewind_to="3it")
    probe0 = Probe(capture_step=3)
    make_trainer([lottery, probe0], max_steps=8).fit(model, TinyData())
    at_k = probe0.at_k
    assert lottery.rewind_point.step == 3
    mask = lottery.prune(model, rate=0.5, scope="global")
    saved = copy.deepcopy(lottery.rewind_point.state_dict())
    probe1 = Probe()
    trainer = make_trainer([lottery, probe1], max_steps=8)
    trainer.fit(model, TinyData())
    # training level 1 left the rewind point untouched (no aliasing of optimizer or weights)
    after = lottery.rewind_point.state_dict()
    for i, opt_state in enumerate(saved["optimizers"]):
        for idx, entry in opt_state["state"].items():
            for key, value in entry.items():
                assert torch.equal(after["optimizers"][i]["state"][idx][key], value), (idx, key)
    for k, v in saved["model"].items():
        assert torch.equal(after["model"][k], v), k
    start = probe1.at_start
    assert start["step"] == 3  # training continues from k ...
    assert trainer.global_step == 8  # ... to the same end
    assert start["lr"] == at_k["lr"] and start["sched"] == at_k["sched"]
    params = prunable_parameters(model)
    index = {name: i for i, name in enumerate(n for n, _ in model.named_parameters())}
    for name, value in start["model"].items():
        expected = at_k["model"][name]
        if name in mask:
            m = mask[name]
            assert torch.equal(value[m], expected[m]) and torch.count_nonzero(value[~m]) == 0, name
            for key, saved in at_k["opt"]["state"][index[name]].items():
                live = start["opt"]["state"][index[name]][key]
                if saved.shape == params[name].shape:
                    assert torch.equal(live[m], saved[m]) and torch.count_nonzero(live[~m]) == 0, (name, key)
                else:
                    assert torch.equal(live, saved), (name, key)
        else:
            assert torch.equal(value, expected), name


def test_rewind_by_epoch():
    model = TinyMLP()
    lottery = LotteryTicket(rewind_to="1ep")
    trainer = make_trainer([lottery], max_steps=30)  # 12 batches per epoch
    trainer.fit(model, TinyData())
    assert lottery.rewind_point.step == 12 and lottery.rewind_point.epoch == 1
    lottery.prune(model, 0.2)
    probe = Probe()
    trainer = make_trainer([lottery, probe], max_steps=30)
    trainer.fit(model, TinyData())
    assert probe.at_start["step"] == 12 and trainer.global_step == 30


def test_unreached_rewind_point_is_an_error():
    with pytest.raises(RuntimeError, match="rewind point 50it was never reached"):
        make_trainer([LotteryTicket(rewind_to="50it")], max_steps=5).fit(TinyMLP(), TinyData())


def test_user_conv_batchnorm_module_rewinds_buffers():
    torch.manual_seed(0)
    model = TinyConvBN()
    data = TinyData(image=True)
    theta0 = copy.deepcopy(model.state_dict())
    lottery = LotteryTicket()
    make_trainer([lottery], max_steps=6).fit(model, data)
    assert sorted(lottery.mask) == ["features.0.weight", "features.3.weight", "head.weight"]
    assert not torch.equal(model.features[1].running_mean, theta0["features.1.running_mean"])
    mask = lottery.prune(model, rate=0.5, scope="global")
    probe = Probe()
    checker = ZeroChecker(mask)
    make_trainer([lottery, probe, checker], max_steps=6).fit(model, data)
    assert torch.equal(probe.at_start["model"]["features.1.running_mean"], theta0["features.1.running_mean"])
    assert torch.equal(probe.at_start["model"]["features.1.running_var"], theta0["features.1.running_var"])
    assert checker.checked == 6


def test_checkpoint_resume_mid_level_keeps_mask_and_rewind_point(tmp_path):
    torch.manual_seed(0)
    model = TinyMLP(optimizer="adam", lr=0.01)
    lottery = LotteryTicket(rewind_to="2it")
    make_trainer([lottery], max_steps=6).fit(model, TinyData())
    mask = lottery.prune(model, rate=0.5)
    ckpt = ModelCheckpoint(dirpath=tmp_path, filename="last", every_n_train_steps=4, save_top_k=1)

    class Crash(Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 5:
                raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        make_trainer([lottery, ckpt, Crash()], max_steps=10, enable_checkpointing=True).fit(model, TinyData())
    # a new process: fresh objects, a different (wrong) mask in the constructor, resumed from the checkpoint
    fresh_model = TinyMLP(optimizer="adam", lr=0.01)
    resumed = LotteryTicket(random_mask(fresh_model, keep=0.9, seed=5), rewind_to="2it")
    probe, checker = Probe(), ZeroChecker(mask)
    trainer = make_trainer([resumed, probe, checker], max_steps=10, enable_checkpointing=True)
    trainer.fit(fresh_model, TinyData(), ckpt_path=str(tmp_path / "last.ckpt"), weights_only=True)
    assert probe.at_start["step"] == 4  # continued mid-level, not rewound again
    assert all(torch.equal(resumed.mask[n], mask[n]) for n in mask)
    for k, v in lottery.rewind_point.model.items():
        assert torch.equal(resumed.rewind_point.model[k], v), k
    assert resumed.level == 1 and checker.checked == 6 and trainer.global_step == 10


def test_ticket_round_trip_and_mismatch(tmp_path):
    model = TinyMLP()
    lottery = LotteryTicket()
    make_trainer([lottery], max_steps=3).fit(model, TinyData())
    mask = lottery.prune(model, rate=0.3)
    path = tmp_path / "ticket.safetensors"
    lottery.ticket(level=1).save(path)
    ticket = Ticket.load(path)
    assert ticket.metadata["level"] == "1"
    # train the ticket again in another model instance: starts from θ0 ⊙ m
    other = TinyMLP()
    probe = Probe()
    make_trainer([LotteryTicket(ticket=path), probe], max_steps=3).fit(other, TinyData())
    w = probe.at_start["model"]["net.0.weight"]
    assert torch.equal(w, lottery.rewind_point.model["net.0.weight"] * mask["net.0.weight"])
    # a ticket that does not fit the model: one error naming the parameter
    with pytest.raises(MaskError, match="net.0.weight"):
        make_trainer([LotteryTicket(ticket=path)], max_steps=1).fit(TinyConvBN(), TinyData(image=True))


def test_mask_shape_mismatch_names_parameter():
    model = TinyMLP()
    bad = random_mask(model)
    bad["net.2.weight"] = torch.ones(3, 3, dtype=torch.bool)
    with pytest.raises(MaskError, match=r"net\.2\.weight.*shape"):
        make_trainer([LotteryTicket(bad)], max_steps=1).fit(model, TinyData())


def test_state_dict_round_trip():
    model = TinyMLP()
    lottery = LotteryTicket(rewind_to="2it")
    make_trainer([lottery], max_steps=4).fit(model, TinyData())
    lottery.prune(model, rate=0.2)
    other = LotteryTicket(rewind_to="2it")
    other.load_state_dict(lottery.state_dict())
    assert other.state_key == lottery.state_key
    assert other.level == 1 and other._pending_rewind
    assert all(torch.equal(other.mask[n], lottery.mask[n]) for n in lottery.mask)


def test_seeded_fits_are_deterministic():
    def run():
        pl.seed_everything(3, verbose=False)
        model = TinyMLP()
        lottery = LotteryTicket()
        make_trainer([lottery], max_steps=5).fit(model, TinyData())
        return lottery.prune(model, rate=0.4, scope="global")

    a, b = run(), run()
    assert all(torch.equal(a[n], b[n]) for n in a)
