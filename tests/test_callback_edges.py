"""LotteryTicket used in ways it cannot silently get wrong: each test reproduces a user's report (docs/reliability.md, section A).

1. epoch budgets after a mid-epoch rewind, 2. the same Trainer for the next fit, 3. resuming with a differently
configured callback, 4. tied weights, 5. modules with ``get_extra_state``, 6. several ``opt.step()`` per batch with
an optimizer outside the zero-preserving set, 7. nothing prunable / lazy layers.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from conftest import TinyData, TinyMLP, make_trainer, random_mask
from lightning.pytorch.callbacks import Callback
from torch import nn

from lightning_lottery import LotteryTicket, Ticket
from lightning_lottery.masks import MaskError, prunable_parameters
from lightning_lottery.rewind import RewindState


class StepCounter(Callback):
    """Counts optimizer steps and the training batches of one fit."""

    def __init__(self) -> None:
        self.steps = self.batches = 0

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        self.steps += 1

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.batches += 1


class SaveAtStep(Callback):
    """Lightning's own mid-epoch checkpoint: saved at the end of the batch that makes optimizer step ``step``."""

    def __init__(self, step: int, path: str) -> None:
        self.step, self.path, self.saved = step, path, False

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step and not self.saved:
            trainer.save_checkpoint(self.path)
            self.saved = True


class OneCycle(TinyMLP):
    """OneCycleLR sized by ``trainer.estimated_stepping_batches``: it raises if the fit steps once too often."""

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _eight_batch_data() -> TinyData:
    return TinyData(n=64, batch_size=8)  # 8 training batches per epoch


# --------------------------------------------------------------------------------- 1. epoch budgets


BUDGETS = {"max_epochs": {"max_epochs": 2, "max_steps": -1}, "max_steps": {"max_steps": 7},
           "both": {"max_epochs": 2, "max_steps": 7}, "epochs_3": {"max_epochs": 3, "max_steps": -1}}


@pytest.mark.parametrize("accumulate", [1, 2, 3])
@pytest.mark.parametrize("budget", sorted(BUDGETS))
def test_mid_epoch_rewind_ends_where_the_first_fit_ended(tmp_path, budget: str, accumulate: int) -> None:
    """A rewound fit ends at fit 1's step and makes as many optimizer steps as Lightning's own resume from a
    checkpoint at the rewind step; OneCycleLR (sized by estimated_stepping_batches) does not overrun."""
    kwargs = {**BUDGETS[budget], "accumulate_grad_batches": accumulate}
    pl.seed_everything(0, verbose=False)
    model = OneCycle()
    lottery = LotteryTicket(rewind_to="3it")
    reference_ckpt = str(tmp_path / "step3.ckpt")
    first = make_trainer([lottery, SaveAtStep(3, reference_ckpt)], **kwargs)
    first.fit(model, _eight_batch_data())
    end = first.global_step
    assert lottery.rewind_point is not None and lottery.rewind_point.step == 3

    # Lightning's own resume from step 3
    counter_ref = StepCounter()
    ref = make_trainer([counter_ref], **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "resuming from a checkpoint that ended before the epoch ended"
        ref.fit(OneCycle(), _eight_batch_data(), ckpt_path=reference_ckpt)
    assert ref.global_step == end

    lottery.prune(model, rate=0.2)
    counter = StepCounter()
    second = make_trainer([lottery, counter], **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        second.fit(model, _eight_batch_data())
    assert second.global_step == end, f"rewound fit ended at step {second.global_step}, fit 1 at {end}"
    assert counter.steps == counter_ref.steps == end - 3
    assert counter.batches == counter_ref.batches
    assert second.current_epoch == ref.current_epoch


def test_rewind_point_records_the_batch_within_the_epoch(tmp_path) -> None:
    lottery = LotteryTicket(rewind_to="3it")
    make_trainer([lottery], max_steps=-1, max_epochs=1, accumulate_grad_batches=2).fit(TinyMLP(), _eight_batch_data())
    rp = lottery.rewind_point
    assert (rp.step, rp.epoch, rp.batch) == (3, 0, 6)
    rp.save(tmp_path / "rp.pt")
    assert RewindState.load(tmp_path / "rp.pt").batch == 6


def test_old_rewind_point_files_load_at_the_epoch_start(tmp_path) -> None:
    """Files written before ``batch`` was recorded load, at batch 0 of their epoch (as before)."""
    old = {"step": 4, "epoch": 1, "model": {"w": torch.zeros(2)}, "optimizers": [], "lr_schedulers": []}
    torch.save(old, tmp_path / "old.pt")
    rp = RewindState.load(tmp_path / "old.pt")
    assert (rp.step, rp.epoch, rp.batch) == (4, 1, 0)
    assert rp.with_model({}).batch == 0 and RewindState(4, 1, {}, batch=5).with_model({}).batch == 5
    assert RewindState(4, 1, {}, batch=5).without_optimizer_state().batch == 5


def test_epoch_rewind_still_replays_whole_epochs() -> None:
    lottery = LotteryTicket(rewind_to="1ep")
    model = TinyMLP()
    make_trainer([lottery], max_steps=-1, max_epochs=3).fit(model, _eight_batch_data())
    lottery.prune(model, 0.2)
    counter = StepCounter()
    trainer = make_trainer([lottery, counter], max_steps=-1, max_epochs=3)
    trainer.fit(model, _eight_batch_data())
    assert (trainer.global_step, counter.steps) == (24, 16)


# --------------------------------------------------------------------------- 2. the same Trainer again


@pytest.mark.parametrize("rewind_to", ["0it", "3it"])
def test_the_same_trainer_for_the_next_level_is_an_error(rewind_to: str) -> None:
    model = TinyMLP()
    lottery = LotteryTicket(rewind_to=rewind_to)
    trainer = make_trainer([lottery], max_steps=6)
    trainer.fit(model, TinyData())
    lottery.prune(model, 0.2)
    trained = copy.deepcopy(model.state_dict())
    with pytest.raises(RuntimeError, match="fresh Trainer"):
        trainer.fit(model, TinyData())
    assert lottery._pending_rewind  # nothing was done: a fresh Trainer still starts the level
    make_trainer([lottery], max_steps=6).fit(model, TinyData())
    assert not torch.equal(model.state_dict()["net.0.weight"], trained["net.0.weight"])


def test_two_lottery_callbacks_in_one_trainer_are_an_error() -> None:
    """One state key whatever the settings: Lightning refuses two at construction; a subclass (another key) is
    refused at fit start."""
    with pytest.raises(RuntimeError, match="more than one stateful callback of type `LotteryTicket`"):
        make_trainer([LotteryTicket(), LotteryTicket(rewind_to="2it")], max_steps=2)

    class Other(LotteryTicket):
        pass

    with pytest.raises(RuntimeError, match="one LotteryTicket per Trainer"):
        make_trainer([LotteryTicket(), Other(rewind_to="2it")], max_steps=2).fit(TinyMLP(), TinyData())


# ----------------------------------------------------------------- 3. resume with other settings


def _checkpoint_with_mask(tmp_path, rewind_to: str = "3it") -> tuple[str, LotteryTicket]:
    model = TinyMLP()
    lottery = LotteryTicket(random_mask(model), rewind_to=rewind_to)
    trainer = make_trainer([lottery], max_steps=5)
    trainer.fit(model, TinyData())
    path = str(tmp_path / "last.ckpt")
    trainer.save_checkpoint(path)
    return path, lottery


def test_resuming_with_another_rewind_step_names_both(tmp_path) -> None:
    path, _ = _checkpoint_with_mask(tmp_path)
    with pytest.raises(ValueError, match=r"3it.*10it|10it.*3it"):
        make_trainer([LotteryTicket(rewind_to="10it")], max_steps=8).fit(TinyMLP(), TinyData(), ckpt_path=path)


def test_resuming_finds_the_state_and_keeps_the_mask(tmp_path) -> None:
    path, before = _checkpoint_with_mask(tmp_path)
    resumed = LotteryTicket(rewind_to="3it")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "please add the following callbacks" warning
        warnings.filterwarnings("ignore", message=".*(workers|training batches|before the epoch ended).*")
        make_trainer([resumed], max_steps=8).fit(TinyMLP(), TinyData(), ckpt_path=path)
    assert all(torch.equal(resumed.mask[n], before.mask[n]) for n in before.mask)


def test_checkpoints_with_the_old_state_key_still_load(tmp_path) -> None:
    path, before = _checkpoint_with_mask(tmp_path)
    ckpt = torch.load(path, weights_only=False)
    ckpt["callbacks"] = {"LotteryTicket{'rewind_to': '3it'}": ckpt["callbacks"].pop(LotteryTicket().state_key)}
    torch.save(ckpt, path)
    resumed = LotteryTicket(rewind_to="3it")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_trainer([resumed], max_steps=8).fit(TinyMLP(), TinyData(), ckpt_path=path)
    assert all(torch.equal(resumed.mask[n], before.mask[n]) for n in before.mask)
    assert resumed.rewind_point is not None and resumed.rewind_point.step == 3
    other = LotteryTicket(rewind_to="10it")
    with pytest.raises(ValueError, match=r"3it.*10it|10it.*3it"):
        make_trainer([other], max_steps=8).fit(TinyMLP(), TinyData(), ckpt_path=path)


def test_state_key_does_not_depend_on_settings() -> None:
    assert LotteryTicket(rewind_to="3it").state_key == LotteryTicket(rewind_to="2ep", include=["*"]).state_key


def test_resuming_with_other_include_patterns_names_both(tmp_path) -> None:
    path, _ = _checkpoint_with_mask(tmp_path)
    other = LotteryTicket(rewind_to="3it", include=["net.0.weight"])
    with pytest.raises(ValueError, match="include"):
        make_trainer([other], max_steps=8).fit(TinyMLP(), TinyData(), ckpt_path=path)


# ----------------------------------------------------------------------------------- 4. tied weights


class TiedLinear(TinyMLP):
    """Two Linear modules share one weight."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.out = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.b.weight = self.a.weight
        del self.net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.b(torch.relu(self.a(x)))))


class TiedLM(nn.Module):
    def __init__(self, head_first: bool) -> None:
        super().__init__()
        if head_first:
            self.head = nn.Linear(8, 10, bias=False)
            self.emb = nn.Embedding(10, 8)
        else:
            self.emb = nn.Embedding(10, 8)
            self.head = nn.Linear(8, 10, bias=False)
        self.head.weight = self.emb.weight


def test_shared_linear_weight_is_one_prunable_parameter_and_every_alias_is_masked(tmp_path) -> None:
    model = TiedLinear()
    assert list(prunable_parameters(model)) == ["a.weight", "out.weight"]
    assert list(prunable_parameters(model, include=["b.weight"])) == ["a.weight"]
    assert list(prunable_parameters(model, exclude=["b.*"])) == ["out.weight"]
    lottery = LotteryTicket(rewind_to="2it")
    make_trainer([lottery], max_steps=4).fit(model, TinyData())
    mask = lottery.prune(model, 0.5)
    path = tmp_path / "t.safetensors"
    lottery.ticket().save(path)
    state = Ticket.load(path).state
    assert torch.count_nonzero(state["b.weight"][~mask["a.weight"]]) == 0
    fresh = TiedLinear()
    fresh.load_state_dict(state)
    assert torch.count_nonzero(fresh.a.weight.detach()[~mask["a.weight"]]) == 0
    make_trainer([lottery], max_steps=6).fit(model, TinyData())
    assert torch.count_nonzero(model.b.weight.detach()[~mask["a.weight"]]) == 0


@pytest.mark.parametrize("head_first", [False, True])
def test_tied_embedding_and_head_are_pruned_whatever_the_order(head_first: bool) -> None:
    model = TiedLM(head_first)
    names = list(prunable_parameters(model))
    assert names == ["head.weight" if head_first else "emb.weight"]
    state = model.state_dict()
    mask = {names[0]: torch.rand(10, 8, generator=torch.Generator().manual_seed(0)) < 0.5}
    ticket = Ticket.from_model(model, mask)
    for key in ("emb.weight", "head.weight"):
        assert torch.count_nonzero(ticket.state[key][~mask[names[0]]]) == 0, key
    assert set(ticket.state) == set(state)


def test_cpu_copy_keeps_aliases() -> None:
    from lightning_lottery.rewind import cpu_copy

    model = TiedLM(False)
    copied = cpu_copy(model.state_dict())
    assert copied["emb.weight"] is copied["head.weight"]


# ------------------------------------------------------------------------------- 5. get_extra_state


class Counting(nn.Module):
    """A module with non-tensor extra state."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x

    def get_extra_state(self) -> dict[str, int]:
        return {"calls": self.calls}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.calls = state["calls"]


class WithExtraState(TinyMLP):
    def __init__(self) -> None:
        super().__init__()
        self.counter = Counting()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.counter(x))


def test_modules_with_extra_state_train_rewind_and_make_tickets(tmp_path) -> None:
    model = WithExtraState()
    lottery = LotteryTicket(rewind_to="2it")
    make_trainer([lottery], max_steps=5).fit(model, TinyData())
    assert lottery.rewind_point.model["counter._extra_state"] == {"calls": 2}  # rewind points keep it
    lottery.prune(model, 0.2)
    seen = {}

    class AtStart(Callback):
        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            seen["calls"] = pl_module.counter.calls

    make_trainer([lottery, AtStart()], max_steps=5).fit(model, TinyData())  # used to crash in Ticket.check_fits
    assert seen["calls"] == 2
    path = tmp_path / "t.safetensors"
    lottery.ticket().save(path)  # tickets hold tensors only
    assert "counter._extra_state" not in Ticket.load(path).state
    again = WithExtraState()
    make_trainer([LotteryTicket(ticket=path)], max_steps=2).fit(again, TinyData())
    state = lottery.rewind_point.state_dict()
    torch.save(state, tmp_path / "rp.pt")
    assert RewindState.load(tmp_path / "rp.pt").model["counter._extra_state"] == {"calls": 2}


# --------------------------------------------------------------------- 6. several steps per batch


class PerturbingSGD(torch.optim.SGD):
    """A subclass of SGD (so not trusted to preserve zeros) that moves every weight at each step."""

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(1e-3)
        return loss


class TwoStepsPerBatch(TinyMLP):
    """Manual optimization: two ``opt.step()`` per batch; records the pruned weights each forward pass sees."""

    def __init__(self, factory: Any) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.factory = factory
        self.mask: dict[str, torch.Tensor] = {}
        self.nonzero_seen: list[int] = []

    def configure_optimizers(self) -> Any:
        return self.factory(self.parameters())

    def training_step(self, batch: Any, batch_idx: int) -> None:
        opt = self.optimizers()
        x, y = batch
        for _ in range(2):
            params = prunable_parameters(self)
            self.nonzero_seen.append(sum(int(torch.count_nonzero(params[n].detach()[~m])) for n, m in self.mask.items()))
            loss = nn.functional.cross_entropy(self(x), y)
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()


@pytest.mark.parametrize("factory", [lambda ps: PerturbingSGD(ps, lr=0.05), lambda ps: torch.optim.ASGD(ps, lr=0.05)],
                         ids=["sgd-subclass", "asgd"])
def test_pruned_weights_are_zero_after_every_step_of_a_batch(factory: Any) -> None:
    model = TwoStepsPerBatch(factory)
    model.mask = random_mask(model)
    lottery = LotteryTicket(model.mask)
    trainer = make_trainer([lottery], max_steps=8)
    trainer.fit(model, TinyData())
    assert len(model.nonzero_seen) == 8
    assert model.nonzero_seen == [0] * 8
    assert lottery._step_hooks == []  # removed at fit end
    for opt in trainer.optimizers:
        assert not opt._optimizer_step_post_hooks


def test_known_optimizers_register_no_step_hook() -> None:
    model = TinyMLP(optimizer="adam")
    lottery = LotteryTicket(random_mask(model))

    class During(Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            assert not trainer.optimizers[0]._optimizer_step_post_hooks

    make_trainer([lottery, During()], max_steps=3).fit(model, TinyData())
    assert lottery._mask_after_step is False


def test_step_hooks_are_removed_when_the_fit_fails() -> None:
    model = TwoStepsPerBatch(lambda ps: PerturbingSGD(ps, lr=0.05))
    model.mask = random_mask(model)
    lottery = LotteryTicket(model.mask)

    class Boom(Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            raise ValueError("boom")

    trainer = make_trainer([lottery, Boom()], max_steps=3)
    with pytest.raises(ValueError, match="boom"):
        trainer.fit(model, TinyData())
    assert lottery._step_hooks == []
    assert not trainer.optimizers[0]._optimizer_step_post_hooks


# -------------------------------------------------------------------- 7. nothing prunable, lazy layers


class WeightNormed(TinyMLP):
    def __init__(self) -> None:
        super().__init__()
        from torch.nn.utils.parametrizations import weight_norm

        for i in (0, 2, 4):
            self.net[i] = weight_norm(self.net[i])


def test_nothing_prunable_is_an_error_naming_the_fix() -> None:
    with pytest.raises(MaskError, match=r"no prunable parameter.*include="):
        make_trainer([LotteryTicket()], max_steps=2).fit(WeightNormed(), TinyData())


def test_include_makes_weight_normed_layers_prunable() -> None:
    model = WeightNormed()
    lottery = LotteryTicket(include=["*.parametrizations.weight.original1"])
    make_trainer([lottery], max_steps=3).fit(model, TinyData())
    mask = lottery.prune(model, 0.5)
    assert mask and all(not bool(m.all()) for m in mask.values())


def test_prune_with_nothing_prunable_is_an_error() -> None:
    lottery = LotteryTicket()
    lottery._rewind_point = RewindState(0, 0, {})
    with pytest.raises(MaskError, match="no prunable parameter"):
        lottery.prune(WeightNormed(), 0.2)
    assert lottery.level == 0


class Lazy(TinyMLP):
    def __init__(self) -> None:
        super().__init__()
        self.net[0] = nn.LazyLinear(16)


def test_lazy_layers_are_an_error_naming_the_fix() -> None:
    with pytest.raises(MaskError, match=r"net\.0\.weight.*uninitialized.*forward pass"):
        make_trainer([LotteryTicket()], max_steps=2).fit(Lazy(), TinyData())


def test_lazy_layers_work_after_one_forward_pass() -> None:
    model = Lazy()
    model(torch.zeros(1, 8))
    lottery = LotteryTicket()
    make_trainer([lottery], max_steps=2).fit(model, TinyData())
    assert "net.0.weight" in lottery.mask
