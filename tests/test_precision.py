"""Mixed and low precision, gradient clipping, manual optimization with two optimizers, torch.compile."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from conftest import TinyData, TinyMLP, make_trainer, random_mask
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins import MixedPrecision
from test_callback import ZeroChecker
from torch import nn

from lightning_lottery import LotteryTicket
from lightning_lottery.masks import prunable_parameters


class GradChecker(Callback):
    """Runs after LotteryTicket's hook: gradients of pruned weights must be exactly zero before the step."""

    def __init__(self, mask):
        self.mask, self.checked = mask, 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        params = prunable_parameters(pl_module)
        for name, m in self.mask.items():
            grad = params[name].grad
            if grad is not None:
                assert torch.count_nonzero(grad[~m]) == 0, name
        self.checked += 1


def _rewind_matches(lottery: LotteryTicket, model: pl.LightningModule, mask) -> None:
    """After a fit that started from the rewind point: the model started at θ0 ⊙ m (checked via the ticket)."""
    ticket = lottery.ticket()
    for name, m in mask.items():
        assert ticket.state[name].dtype == dict(model.named_parameters())[name].dtype
        assert torch.count_nonzero(ticket.state[name][~m]) == 0


@pytest.mark.parametrize(
    "precision,optimizer",
    [
        ("bf16-mixed", "adamw"),
        ("bf16-true", "adam"),
        ("16-true", "sgd"),
        pytest.param("16-mixed", "adam", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")),
    ],
)
def test_precisions_keep_bool_masks_and_exact_zeros(precision, optimizer):
    # (on CPU Lightning turns "16-mixed" into "bf16-mixed"; the GradScaler test below covers float16 autocast there)
    # (pure float16 with Adam's default eps=1e-8 turns every weight into NaN, pruned or not: eps underflows)
    torch.manual_seed(0)
    model = TinyMLP(optimizer=optimizer, lr=0.05, weight_decay=0.01)
    mask = random_mask(model)
    lottery = LotteryTicket(mask, rewind_to="0it")
    checker, grads = ZeroChecker(mask), GradChecker(mask)
    accelerator = "cuda" if precision == "16-mixed" else "cpu"
    make_trainer([lottery, checker, grads], max_steps=6, precision=precision, accelerator=accelerator).fit(
        model, TinyData())
    assert checker.checked == 6 and grads.checked == 6
    dtype = model.net[0].weight.dtype
    assert dtype == {"bf16-true": torch.bfloat16, "16-true": torch.float16}.get(precision, torch.float32)
    # masks stay bool; the rewind copy keeps the model's precision, off the device
    assert all(m.dtype == torch.bool for m in lottery.mask.values())
    rp = lottery.rewind_point.model["net.0.weight"]
    assert rp.dtype == dtype and rp.device.type == "cpu"
    # a second level: rewound to θ0 ⊙ m in the same precision, zeros still exact
    theta0 = {k: v.clone() for k, v in lottery.rewind_point.model.items()}
    new_mask = lottery.prune(model, rate=0.5)
    started = {}

    class AtStart(Callback):
        def on_train_start(self, trainer, pl_module):
            started.update({k: v.detach().clone() for k, v in pl_module.state_dict().items()})

    checker2 = ZeroChecker(new_mask)
    make_trainer([lottery, AtStart(), checker2], max_steps=4, precision=precision, accelerator=accelerator).fit(
        model, TinyData())
    assert checker2.checked == 4
    for name, m in new_mask.items():
        assert started[name].dtype == dtype
        assert torch.equal(started[name][m].cpu(), theta0[name][m].to(started[name].dtype)), name
        assert torch.count_nonzero(started[name][~m]) == 0
    _rewind_matches(lottery, model, new_mask)


def test_float16_adam_keeps_pruned_weights_zero_even_when_it_diverges():
    """Pure float16 with Adam's default eps: 0/0 on pruned entries; the post-step mask still clears them."""
    torch.manual_seed(0)
    model = TinyMLP(optimizer="adam", lr=0.05)
    mask = random_mask(model)
    checker = ZeroChecker(mask)
    make_trainer([LotteryTicket(mask), checker], max_steps=4, precision="16-true").fit(model, TinyData())
    assert checker.checked == 4 and model.net[0].weight.dtype == torch.float16


def test_grad_scaler_skipped_steps_leave_pruned_weights_zero():
    """float16 autocast with a GradScaler (as on CUDA): overflowing steps are skipped; zeros hold either way."""
    torch.manual_seed(0)
    model = TinyMLP(optimizer="sgd", lr=0.05, weight_decay=0.01)
    mask = random_mask(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40, growth_interval=1)  # the first steps overflow
    plugin = MixedPrecision("16-mixed", device="cpu", scaler=scaler)
    checker, grads = ZeroChecker(mask), GradChecker(mask)
    make_trainer([LotteryTicket(mask), checker, grads], max_steps=30, plugins=[plugin]).fit(model, TinyData())
    assert checker.checked == 30
    assert scaler.get_scale() < 2.0**40  # some steps were skipped (inf/NaN gradients)
    assert grads.checked == 30  # unscaled gradients were masked before every step, skipped or not


def test_gradient_clipping_sees_masked_gradients():
    torch.manual_seed(0)
    model = TinyMLP(optimizer="sgd", lr=0.5)
    mask = random_mask(model)
    checker, grads = ZeroChecker(mask), GradChecker(mask)
    norms = []

    class ClipSpy(Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            norms.append(float(torch.linalg.vector_norm(torch.stack(
                [p.grad.norm() for p in pl_module.parameters() if p.grad is not None]))))

    trainer = make_trainer([LotteryTicket(mask), checker, grads, ClipSpy()], max_steps=6, gradient_clip_val=1e-3,
                           gradient_clip_algorithm="norm")
    trainer.fit(model, TinyData())
    assert checker.checked == 6 and grads.checked == 6 and len(norms) == 6


class TwoOptimizers(pl.LightningModule):
    """Manual optimization: a body and a head, each with its own optimizer."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.body = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
        self.head = nn.Linear(16, 3)

    def training_step(self, batch, batch_idx):
        x, y = batch
        opt_body, opt_head = self.optimizers()
        loss = nn.functional.cross_entropy(self.head(self.body(x)), y)
        opt_body.zero_grad()
        opt_head.zero_grad()
        self.manual_backward(loss)
        opt_body.step()
        opt_head.step()

    def configure_optimizers(self):
        return (torch.optim.Adam(self.body.parameters(), lr=0.05, weight_decay=0.1),
                torch.optim.SGD(self.head.parameters(), lr=0.1, momentum=0.9))


def test_manual_optimization_with_two_optimizers():
    torch.manual_seed(0)
    model = TwoOptimizers()
    mask = random_mask(model)
    lottery = LotteryTicket(mask, rewind_to="2it")
    make_trainer([lottery], max_steps=12).fit(model, TinyData())  # manual: max_steps counts both optimizer steps
    assert lottery.rewind_point is not None and len(lottery.rewind_point.optimizers) == 2
    for name, p in prunable_parameters(model).items():
        assert torch.count_nonzero(p.detach()[~mask[name]]) == 0, name
    new_mask = lottery.prune(model, rate=0.5)
    seen = {}

    class AtStart(Callback):
        def on_train_start(self, trainer, pl_module):
            seen["step"] = trainer.global_step
            seen["states"] = [opt.state_dict() for opt in trainer.optimizers]

    make_trainer([lottery, AtStart()], max_steps=16).fit(model, TinyData())
    assert seen["step"] == lottery.rewind_point.step
    assert len(seen["states"]) == 2
    for name, p in prunable_parameters(model).items():
        assert torch.count_nonzero(p.detach()[~new_mask[name]]) == 0, name


def test_compiled_module_keeps_its_mask():
    torch.manual_seed(0)
    model = TinyMLP(optimizer="adam", lr=0.05)
    mask = random_mask(model)
    lottery = LotteryTicket(mask)
    compiled = torch.compile(model, backend="eager")  # the wrapper is what matters here, not the compiler
    make_trainer([lottery], max_steps=5).fit(compiled, TinyData())
    for name, p in prunable_parameters(model).items():
        assert torch.count_nonzero(p.detach()[~mask[name]]) == 0, name
    new_mask = lottery.prune(model, rate=0.5)
    make_trainer([lottery], max_steps=5).fit(torch.compile(model, backend="eager"), TinyData())
    assert set(lottery.mask) == set(mask)
    for name, p in prunable_parameters(model).items():
        assert torch.count_nonzero(p.detach()[~new_mask[name]]) == 0, name
    assert abs(lottery.remaining - 0.25) < 0.05
