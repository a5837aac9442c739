"""What issue 18 made cheaper still does the same: one bookkeeping callback with the checkpoint layout of three,
the gradient mask of the per-step path, each figure laid out once for both formats."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lightning_lottery import PruningScheduler
from lightning_lottery.data import DigitsDataModule
from lightning_lottery.executor import Bookkeeping, ResumeCheckpoint, ValidationHistory
from lightning_lottery.masks import mask_gradients_, zero_pruned_
from lightning_lottery.models import LeNet300100


def test_one_bookkeeping_callback_writes_the_checkpoint_layout_of_separate_callbacks(tmp_path: Path):
    scheduler = PruningScheduler(
        LeNet300100(in_features=64), DigitsDataModule(), levels=0, out_dir=str(tmp_path / "exp"), stream=None,
        val_every_n_steps=5, checkpoint_every_n_steps=10, keep_checkpoints=True,
        trainer_kwargs=dict(max_steps=12, enable_progress_bar=False, enable_model_summary=False))
    scheduler.run()
    ckpt = scheduler.store.run_dir(scheduler.runs()[0]) / "checkpoints" / "last.ckpt"
    states = torch.load(ckpt, map_location="cpu", weights_only=False)["callbacks"]
    assert set(states) == {"LotteryTicket", ValidationHistory().state_key}
    history = states[ValidationHistory().state_key]
    assert [row["step"] for row in history["history"]] == [5, 10]  # written after step 10's validation
    assert history["best_weights"] is not None


def test_bookkeeping_calls_each_part_for_the_hooks_it_overrides_in_order(tmp_path: Path):
    calls: list[str] = []

    class Part(Callback):
        def __init__(self, name: str) -> None:
            self.name = name

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            calls.append(self.name)

    history = ValidationHistory()
    book = Bookkeeping(history, [Part("a"), ResumeCheckpoint(tmp_path / "last.ckpt", 10, 5), Part("b")])
    assert book._calls["on_validation_end"][0].__self__.name == "a"
    assert [getattr(c, "__self__", None).__class__.__name__ for c in book._calls["on_train_batch_end"]] == [
        "ResumeCheckpoint"]
    assert book.state_key == history.state_key and book.state_dict() == history.state_dict()
    book.load_state_dict({"history": [{"step": 5, "val_loss": 1.0}], "best_weights": None})
    assert history.history == [{"step": 5, "val_loss": 1.0}]


def test_bookkeeping_refuses_a_part_whose_hooks_it_would_not_call():
    class Other(Callback):
        def on_train_batch_start(self, *args: Any) -> None:
            pass

    with pytest.raises(ValueError, match="Other overrides on_train_batch_start"):
        Bookkeeping(ValidationHistory(), [Other()])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_the_per_step_gradient_mask_is_zero_pruned_bit_for_bit(dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.zeros(s, dtype=dtype)) for s in [(7, 5), (3,), (4, 4)]]
    masks = [torch.rand(p.shape, generator=g) > 0.4 for p in params]
    grads = [torch.randn(p.shape, generator=g).to(dtype) for p in params]
    grads[1][0] = -0.0
    grads[2][1, 1] = float("nan")
    for p, grad in zip(params, grads):
        p.grad = grad.clone()
    mask_gradients_(params, masks)
    expected = [grad.clone() for grad in grads]
    zero_pruned_(expected, masks)
    bits = torch.int16 if dtype in (torch.bfloat16, torch.float16) else torch.int64 if dtype == torch.float64 else torch.int32
    for p, e in zip(params, expected):
        assert torch.equal(p.grad.view(bits), e.view(bits))


def test_the_per_step_gradient_mask_falls_back_for_missing_or_differentiable_gradients():
    params = [torch.nn.Parameter(torch.ones(3)) for _ in range(3)]
    masks = [torch.tensor([True, False, True])] * 3
    params[0].grad = torch.full((3,), 2.0)
    params[2].grad = torch.full((3,), 2.0, requires_grad=True)  # as after backward(create_graph=True)
    mask_gradients_(params, masks)  # params[1] has no gradient
    assert params[0].grad.tolist() == [2.0, 0.0, 2.0] and params[2].grad.tolist() == [2.0, 0.0, 2.0]
    assert params[1].grad is None


def test_a_figure_is_laid_out_once_for_both_formats_and_stays_deterministic():
    import matplotlib

    from lightning_lottery.report.style import RC_STYLE, figure_bytes, new_figure

    def render() -> dict[str, bytes]:
        with matplotlib.rc_context(RC_STYLE):
            fig = new_figure(3, 2)
            ax = fig.subplots()
            ax.plot([0, 1, 2], [2, 0, 1], label="a")
            ax.set_xlabel("a long label that the layout makes room for")
            fig.legend(loc="outside lower center")
            return figure_bytes(fig)

    first, second = render(), render()
    assert first == second and first["png"][1:4] == b"PNG" and b"a long label" in first["svg"]


def test_bookkeeping_refuses_a_second_part_with_a_state():
    class Stateful(Callback):
        def state_dict(self) -> dict[str, Any]:
            return {"lost": True}

    with pytest.raises(ValueError, match="Stateful overrides state_dict"):
        history = ValidationHistory()
        Bookkeeping(history, [history, Stateful()])
