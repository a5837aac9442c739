"""Tests of the reference networks and the classifier base."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lightning_lottery.data import DigitsDataModule
from lightning_lottery.models import ImageClassifier, LeNet300100


def test_lenet_parameter_names_and_counts() -> None:
    model = LeNet300100()
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert shapes == {
        "net.fc1.weight": (300, 784),
        "net.fc1.bias": (300,),
        "net.fc2.weight": (100, 300),
        "net.fc2.bias": (100,),
        "net.fc3.weight": (10, 100),
        "net.fc3.bias": (10,),
    }
    weights = sum(p.numel() for name, p in model.named_parameters() if name.endswith("weight"))
    biases = sum(p.numel() for name, p in model.named_parameters() if name.endswith("bias"))
    assert (weights, biases) == (266_200, 410)
    assert model.output_layer == "net.fc3.weight" and model.output_layer in shapes
    assert model.hparams.hidden_sizes == [300, 100] and model.hparams.lr == 1.2e-3


def test_lenet_other_sizes() -> None:
    model = LeNet300100(in_features=64, hidden_sizes=[32], num_classes=5)
    names = [n for n, _ in model.named_parameters()]
    assert names == ["net.fc1.weight", "net.fc1.bias", "net.fc2.weight", "net.fc2.bias"]
    assert model.output_layer == "net.fc2.weight"
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 5)  # flattens its input


def test_lenet_glorot_normal_init_and_zero_biases() -> None:
    torch.manual_seed(0)
    model = LeNet300100()
    for name, param in model.named_parameters():
        if name.endswith("bias"):
            assert torch.count_nonzero(param) == 0
        else:
            fan_out, fan_in = param.shape
            expected = math.sqrt(2.0 / (fan_in + fan_out))
            assert param.std().item() == pytest.approx(expected, rel=0.06), name
            assert abs(param.mean().item()) < 0.1 * expected


def test_configure_optimizers() -> None:
    adam = LeNet300100(in_features=4, hidden_sizes=[3])
    config = adam.configure_optimizers()
    assert isinstance(config["optimizer"], torch.optim.Adam) and "lr_scheduler" not in config
    assert config["optimizer"].param_groups[0]["lr"] == 1.2e-3
    sgd = LeNet300100(
        in_features=4, hidden_sizes=[3], optimizer="sgd", lr=0.1, momentum=0.8, weight_decay=1e-4,
        milestones=[2, 4], gamma=0.5,
    )
    config = sgd.configure_optimizers()
    opt, sched = config["optimizer"], config["lr_scheduler"]
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["momentum"] == 0.8 and opt.param_groups[0]["weight_decay"] == 1e-4
    assert sched["interval"] == "step" and isinstance(sched["scheduler"], torch.optim.lr_scheduler.MultiStepLR)
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched["scheduler"].step()
    assert lrs == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])
    adamw = LeNet300100(in_features=4, hidden_sizes=[3], optimizer="adamw", weight_decay=0.01)
    assert isinstance(adamw.configure_optimizers()["optimizer"], torch.optim.AdamW)
    bad = LeNet300100(in_features=4, hidden_sizes=[3], optimizer="rmsprop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rmsprop"):
        bad.configure_optimizers()


def _fused(model: ImageClassifier) -> bool | None:
    return model.configure_optimizers()["optimizer"].defaults["fused"]


def test_adam_is_fused_by_default_on_cpu_and_can_be_turned_off() -> None:
    tiny = {"in_features": 4, "hidden_sizes": [3]}
    assert _fused(LeNet300100(**tiny)) is True
    assert _fused(LeNet300100(**tiny, optimizer="adamw")) is True
    assert _fused(LeNet300100(**tiny, fused=False)) is False
    assert not _fused(LeNet300100(**tiny, optimizer="sgd"))  # auto leaves SGD to torch's default
    assert _fused(LeNet300100(**tiny, optimizer="sgd", fused=True)) is True
    assert not _fused(LeNet300100(**tiny).to(torch.float16).to("meta"))  # no fused kernel for "meta"


def test_auto_fused_steps_aside_for_a_grad_scaler() -> None:
    """Lightning unscales before the step (and clips) only with unfused optimizers under a GradScaler."""
    from lightning.pytorch.plugins import MixedPrecision

    scaler = torch.amp.GradScaler("cpu")
    trainer = L.Trainer(accelerator="cpu", max_steps=1, plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)],
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, gradient_clip_val=1.0)
    model = LeNet300100(in_features=4, hidden_sizes=[3])
    data = torch.utils.data.TensorDataset(torch.randn(8, 4), torch.randint(0, 10, (8,)))
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=4))
    assert not trainer.optimizers[0].defaults["fused"]


def test_fused_and_unfused_adam_agree_to_rounding() -> None:
    """The default (fused) Adam is the same algorithm as torch's unfused one: 20 steps agree to rounding."""
    states = []
    for fused in (True, False):
        torch.manual_seed(0)
        model = LeNet300100(in_features=6, hidden_sizes=[5], optimizer="adamw", weight_decay=0.1, fused=fused)
        opt = model.configure_optimizers()["optimizer"]
        gen = torch.Generator().manual_seed(1)
        for _ in range(20):
            x, y = torch.randn(8, 6, generator=gen), torch.randint(0, 10, (8,), generator=gen)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        states.append(model.state_dict())
    for name in states[0]:
        torch.testing.assert_close(states[0][name], states[1][name], rtol=1e-5, atol=1e-6, msg=name)


def _dataset_loss(model: ImageClassifier, dm: DigitsDataModule) -> float:
    assert dm._splits is not None
    x, y = dm._splits["train"]
    with torch.no_grad():
        return F.cross_entropy(model(x), y).item()


def test_lenet_trains_on_digits_and_logs_metrics() -> None:
    L.seed_everything(0, verbose=False)
    dm = DigitsDataModule()
    dm.setup()
    model = LeNet300100(in_features=64)
    before = _dataset_loss(model, dm)
    trainer = L.Trainer(
        max_steps=20,
        val_check_interval=10,  # the epoch is 38 batches: without this no validation runs in 20 steps
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 20
    metrics = trainer.callback_metrics
    assert {"train_loss", "val_loss", "val_acc"} <= set(metrics)
    assert 0.5 < metrics["val_acc"].item() <= 1.0
    after = _dataset_loss(model, dm)
    assert after < 0.5 * before
    assert metrics["train_loss"].item() < before
    (results,) = trainer.test(model, datamodule=dm, verbose=False)
    assert set(results) == {"test_loss", "test_acc"}
    assert 0.5 < results["test_acc"] <= 1.0
    # accuracy is plain (micro) accuracy: check it by hand
    assert dm._splits is not None
    x, y = dm._splits["test"]
    with torch.no_grad():
        manual = (model(x).argmax(1) == y).float().mean().item()
    assert results["test_acc"] == pytest.approx(manual, abs=1e-6)
