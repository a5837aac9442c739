"""The invariants behind the fast masking path of ``LotteryTicket`` (issue 6).

The callback masks gradients before every optimizer step with integer-view multiplies and skips the post-step
weight multiply for the optimizers in ``ZERO_PRESERVING_OPTIMIZERS``. These tests prove, for every optimizer path
that is special-cased (and for one that is not), that every pruned weight is exactly 0.0 after every optimizer step,
that the gradients the optimizer (and gradient clipping) sees are masked, and that pruned optimizer state stays zero.
No timing assertions here: speed is measured by benchmarks/run.py.
"""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from conftest import TinyData, TinyMLP, make_trainer, random_mask
from lightning.pytorch.callbacks import Callback

from lightning_lottery import LotteryTicket
from lightning_lottery.callback import ZERO_PRESERVING_OPTIMIZERS, _zero_pruned
from lightning_lottery.masks import prunable_parameters


class Optim(TinyMLP):
    """TinyMLP with any optimizer: ``factory(params) -> Optimizer``; records the gradients gradient clipping sees."""

    def __init__(self, factory, **kwargs):
        super().__init__(**kwargs)
        self.factory = factory
        self.clipped_grads: list[dict[str, torch.Tensor]] = []

    def configure_optimizers(self):
        return self.factory(self.parameters())

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        params = prunable_parameters(self)
        self.clipped_grads.append({n: p.grad.detach().clone() for n, p in params.items() if p.grad is not None})
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)


class AfterEveryStep(Callback):
    """Placed after LotteryTicket: after every optimizer step, pruned weights and their optimizer state are 0.0."""

    def __init__(self, mask):
        self.mask, self.steps_checked, self.last_step = mask, 0, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.last_step:  # accumulating: no optimizer step in this batch
            return
        self.last_step = trainer.global_step
        params = prunable_parameters(pl_module)
        for name, m in self.mask.items():
            p = params[name].detach()
            assert torch.count_nonzero(p[~m]) == 0, name
            assert bool((p[~m] == 0.0).all()), name
            for opt in trainer.optimizers:
                for key, value in opt.state.get(params[name], {}).items():
                    # Adamax's infinity norm is max(beta2 * u, |g| + eps) >= eps by construction; its update
                    # exp_avg / exp_inf is still exactly 0 (and a rewind zeroes it, as all state)
                    if isinstance(value, torch.Tensor) and value.shape == p.shape and key != "exp_inf":
                        assert torch.count_nonzero(value[~m]) == 0, (name, key)
        self.steps_checked += 1


class NoisyMomentum(torch.optim.Optimizer):
    """An optimizer the callback does not know: it moves every weight, zero gradient or not."""

    def __init__(self, params, lr=0.05):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"]).add_(0.01)
        return loss


class AdamSubclass(torch.optim.Adam):
    """A subclass of a known optimizer may change ``step``: it must be treated as unknown."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(1e-3)
        return loss


KNOWN = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.05),
    "sgd-momentum-wd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=0.01),
    "sgd-nesterov-dampening": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1),
    "sgd-maximize": lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.5, dampening=0.1, maximize=True),
    "adam": lambda ps: torch.optim.Adam(ps, lr=0.01),
    "adam-wd-amsgrad": lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=0.1, amsgrad=True),
    "adam-for-loop": lambda ps: torch.optim.Adam(ps, lr=0.01, foreach=False, maximize=True),
    "adam-fused": lambda ps: torch.optim.Adam(ps, lr=0.01, fused=True),
    "adam-decoupled": lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
    "adamw-wd": lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1),
    "adamw-amsgrad": lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.5, amsgrad=True),
    "adamw-fused-wd": lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.5, fused=True),
    "sgd-fused-momentum-wd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=0.01, fused=True),
    "nadam": lambda ps: torch.optim.NAdam(ps, lr=0.01, weight_decay=0.1),
    "nadam-decoupled": lambda ps: torch.optim.NAdam(ps, lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
    "radam": lambda ps: torch.optim.RAdam(ps, lr=0.01, weight_decay=0.1),
    "radam-decoupled": lambda ps: torch.optim.RAdam(ps, lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
    "adamax": lambda ps: torch.optim.Adamax(ps, lr=0.01, weight_decay=0.1),
    "adagrad": lambda ps: torch.optim.Adagrad(ps, lr=0.05, weight_decay=0.1, lr_decay=0.01,
                                              initial_accumulator_value=0.1),
    "rmsprop": lambda ps: torch.optim.RMSprop(ps, lr=0.01, weight_decay=0.1),
    "rmsprop-momentum-centered": lambda ps: torch.optim.RMSprop(ps, lr=0.01, momentum=0.9, centered=True,
                                                                weight_decay=0.1),
}


def _fit(factory, max_steps=8, **trainer_kwargs):
    model = Optim(factory)
    mask = random_mask(model, seed=3)
    checker = AfterEveryStep(mask)
    lottery = LotteryTicket(mask)
    trainer = make_trainer([lottery, checker], max_steps=max_steps, **trainer_kwargs)
    trainer.fit(model, TinyData())
    assert checker.steps_checked == max_steps
    return model, mask, lottery


def test_every_known_optimizer_type_is_tested():
    tested = {type(f([torch.nn.Parameter(torch.zeros(1))])) for f in KNOWN.values()}
    assert tested == set(ZERO_PRESERVING_OPTIMIZERS)


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_known_optimizers_keep_pruned_weights_zero_without_post_step_multiply(name):
    model, mask, lottery = _fit(KNOWN[name])
    assert lottery._mask_after_step is False  # the skipped path is the one that was exercised
    w = model.net[0].weight.detach()
    w0 = lottery.rewind_point.model["net.0.weight"]
    assert not torch.equal(w[mask["net.0.weight"]], w0[mask["net.0.weight"]])  # alive weights trained


@pytest.mark.parametrize("factory", [NoisyMomentum, AdamSubclass], ids=["unknown", "subclass"])
def test_unknown_optimizers_keep_the_post_step_multiply(factory):
    model, mask, lottery = _fit(factory)
    assert lottery._mask_after_step is True
    # the optimizer moved every weight: without the post-step multiply the pruned ones would not be zero
    assert bool((model.net[0].weight.detach()[mask["net.0.weight"]] != 0).all())


def test_unknown_optimizer_is_masked_again_after_the_callback_is_reused():
    """The decision is made per fit: a known optimizer in the next fit skips, an unknown one does not."""
    model = Optim(KNOWN["adam"])
    mask = random_mask(model, seed=3)
    lottery = LotteryTicket(mask)
    make_trainer([lottery, AfterEveryStep(mask)], max_steps=3).fit(model, TinyData())
    assert lottery._mask_after_step is False
    model.factory = NoisyMomentum
    checker = AfterEveryStep(mask)
    make_trainer([lottery, checker], max_steps=6).fit(model, TinyData())
    assert lottery._mask_after_step is True and checker.steps_checked == 6


@pytest.mark.parametrize("name,accumulate", [("sgd-momentum-wd", 3), ("adamw-wd", 2), ("adam", 4)])
def test_gradient_accumulation(name, accumulate):
    _, _, lottery = _fit(KNOWN[name], accumulate_grad_batches=accumulate)
    assert lottery._mask_after_step is False


@pytest.mark.parametrize("name", ["sgd-momentum-wd", "adam", "unknown"])
@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_gradient_clipping_sees_masked_gradients(name, algorithm):
    factory = NoisyMomentum if name == "unknown" else KNOWN[name]
    model, mask, _ = _fit(factory, gradient_clip_val=0.01, gradient_clip_algorithm=algorithm)
    assert len(model.clipped_grads) == 8
    for grads in model.clipped_grads:
        for n, m in mask.items():
            assert torch.count_nonzero(grads[n][~m]) == 0, n
            assert torch.count_nonzero(grads[n][m]) > 0, n


def test_resuming_dense_optimizer_state_zeroes_pruned_state(tmp_path):
    """A masked fit resumed from a checkpoint of dense training: Adam's moments for pruned weights are non-zero
    there; they are zeroed at the first step, so that the skipped post-step multiply stays exact."""
    model = Optim(KNOWN["adamw-wd"])
    dense = make_trainer([], max_steps=5)
    dense.fit(model, TinyData())
    ckpt = tmp_path / "dense.ckpt"
    dense.save_checkpoint(ckpt)
    mask = random_mask(model, seed=3)
    state = dense.optimizers[0].state[model.net[0].weight]
    assert torch.count_nonzero(state["exp_avg"][~mask["net.0.weight"]]) > 0  # the case under test
    checker = AfterEveryStep(mask)
    lottery = LotteryTicket(mask, rewind_to="5it")
    make_trainer([lottery, checker], max_steps=10).fit(model, TinyData(), ckpt_path=ckpt, weights_only=False)
    assert checker.steps_checked == 5 and lottery._mask_after_step is False


def test_bf16_weights_use_the_integer_view_path():
    model, mask, lottery = _fit(KNOWN["adamw-wd"], precision="bf16-true")
    assert model.net[0].weight.dtype == torch.bfloat16
    assert lottery._mask_after_step is False


def test_dense_mask_does_no_masking_work():
    model = Optim(KNOWN["adam"])
    mask = {n: torch.ones_like(m) for n, m in random_mask(model).items()}
    lottery = LotteryTicket(mask)
    make_trainer([lottery], max_steps=2).fit(model, TinyData())
    assert lottery._dense and lottery._masked_params == [] and lottery._mask_after_step is None


def test_layers_without_pruned_weights_are_skipped():
    model = Optim(KNOWN["adam"])
    mask = random_mask(model)
    mask["net.4.weight"] = torch.ones_like(mask["net.4.weight"])
    lottery = LotteryTicket(mask)
    checker = AfterEveryStep(mask)
    make_trainer([lottery, checker], max_steps=3).fit(model, TinyData())
    assert len(lottery._masked_params) == 2 and checker.steps_checked == 3
    assert all(m.dtype == torch.bool for m in lottery._masked_masks)  # 1 byte per weight, one device copy


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_zero_pruned_equals_a_multiply_by_the_mask(dtype):
    g = torch.Generator().manual_seed(0)
    t = torch.randn(7, 5, generator=g).to(dtype)
    t[0, 0] = float("nan")
    t[1, 1] = float("-inf")
    t[2, 2] = -0.0
    m = torch.rand(7, 5, generator=g) < 0.5
    m[0, 0] = m[1, 1] = m[2, 2] = False
    expected = torch.where(m, t, torch.zeros((), dtype=dtype))
    strided = t.t().contiguous().t()  # a non-contiguous layout too
    _zero_pruned([t, None, strided], [m, m, m])
    for out in (t, strided):
        assert torch.equal(out, expected)
        assert not torch.signbit(out[~m]).any()  # +0.0, not -0.0


def test_zero_pruned_other_dtypes_fall_back_to_a_multiply():
    g = torch.Generator().manual_seed(0)
    m = torch.rand(7, 5, generator=g) < 0.5
    for t in (torch.randn(7, 5, generator=g, dtype=torch.complex64), torch.randint(-9, 9, (7, 5), generator=g)):
        expected = t * m
        _zero_pruned([t], [m])
        assert torch.equal(t, expected)


def test_scheduler_level_keeps_exact_zeros(tmp_path):
    """The reference module (Adam) through one pruning level of a real Trainer: exact zeros after every step."""
    from lightning_lottery.models import LeNet300100

    pl.seed_everything(0, verbose=False)
    model = LeNet300100(in_features=8, hidden_sizes=(16, 16), num_classes=3)
    lottery = LotteryTicket(rewind_to="0it")
    make_trainer([lottery], max_steps=4).fit(model, TinyData())
    lottery.prune(model, rate=0.5)
    checker = AfterEveryStep(lottery.mask)
    make_trainer([lottery, checker], max_steps=8).fit(model, TinyData())
    assert checker.steps_checked == 8 and lottery._mask_after_step is False


class _LogsEveryStep:
    """The reference module as it was: ``train_loss`` logged at every step."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss.detach(), on_step=True, on_epoch=False, prog_bar=True, batch_size=len(y))
        return loss


@pytest.mark.parametrize("every,max_steps,accumulate", [(3, 10, 1), (4, 9, 2), (50, 20, 1), (1, 5, 1)])
def test_reference_module_logs_what_the_loggers_write(tmp_path, every, max_steps, accumulate):
    """Logging ``train_loss`` only when needed changes nothing a logger receives, and ``callback_metrics`` (the
    progress bar) holds the loss of the last step at the end of the fit."""
    import contextlib
    import csv
    from pathlib import Path

    from lightning.pytorch.loggers import CSVLogger

    from lightning_lottery.models import LeNet300100

    class Old(_LogsEveryStep, LeNet300100):
        pass

    rows, last = {}, {}
    for cls in (LeNet300100, Old):
        pl.seed_everything(0, verbose=False)
        model = cls(in_features=8, hidden_sizes=(16,), num_classes=3)
        logger = CSVLogger(tmp_path, name=cls.__name__)
        trainer = make_trainer([], max_steps=max_steps, logger=logger, log_every_n_steps=every,
                               accumulate_grad_batches=accumulate)
        trainer.fit(model, TinyData(n=48))  # 6 batches per epoch: epochs end within the fit
        path = Path(logger.experiment.metrics_file_path)
        with path.open() if path.is_file() else contextlib.nullcontext([]) as f:  # nothing written: no file
            rows[cls] = [(r["step"], r["train_loss"]) for r in csv.DictReader(f) if r.get("train_loss")]
        last[cls] = float(trainer.callback_metrics["train_loss"])
    assert rows[LeNet300100] == rows[Old]
    assert len(rows[Old]) == max_steps // every
    assert last[LeNet300100] == last[Old]
