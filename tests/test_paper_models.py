"""Tests of the paper's networks (Conv-2/4/6, ResNet-20, VGG-16/19) and the warmup LR schedule."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from lightning_lottery.masks import prunable_parameters
from lightning_lottery.models import VGG, ConvNet, ImageClassifier, LeNet300100, ResNet20, WarmupMultiStep


def _weights(model: nn.Module, conv_only: bool = False) -> int:
    """Weights as the paper counts them: Conv and Linear weights (no biases, no BatchNorm)."""
    return sum(
        p.numel() for p in prunable_parameters(model).values() if not conv_only or p.dim() == 4
    )


# ------------------------------------------------------------------------------ parameter counts
@pytest.mark.parametrize(
    ("variant", "total", "conv", "paper_total", "paper_conv"),
    [
        ("conv2", 4_300_992, 38_592, 4.3e6, 38e3),
        ("conv4", 2_425_024, 259_776, 2.4e6, 260e3),
        # the paper's table says 1.7M for Conv-6, which its own architecture cannot have (fc1 alone is 1.05M)
        ("conv6", 2_261_184, 1_144_512, None, 1.1e6),
    ],
)
def test_convnet_counts_match_the_paper(
    variant: str, total: int, conv: int, paper_total: float | None, paper_conv: float
) -> None:
    model = ConvNet(variant)  # type: ignore[arg-type]
    assert (_weights(model), _weights(model, conv_only=True)) == (total, conv)
    if paper_total is not None:
        assert total == pytest.approx(paper_total, rel=0.02)
    assert conv == pytest.approx(paper_conv, rel=0.05)


def test_resnet20_counts_match_the_paper() -> None:
    model = ResNet20()
    # 274K / 270K in the paper: 1x1 projection shortcuts ("option B") give exactly 270,256 conv weights
    assert _weights(model, conv_only=True) == 270_256
    assert _weights(model) == 270_896
    state = sum(v.numel() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked"))
    assert round(state / 1000) == 274  # the paper's 274K counts BN parameters and running statistics too
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 18 + 2  # stem, 9 blocks of 2, two projections: 20 layers with the fc


def test_vgg_counts_match_the_paper() -> None:
    vgg19 = VGG(depth=19)
    assert _weights(vgg19, conv_only=True) == 20_018_880
    assert _weights(vgg19) == 20_024_000
    assert _weights(vgg19) == pytest.approx(20.0e6, rel=0.005)
    assert sum(isinstance(m, nn.Conv2d) for m in vgg19.modules()) == 16
    assert sum(isinstance(m, nn.Conv2d) for m in VGG(depth=16).modules()) == 13
    with pytest.raises(ValueError, match="depth"):
        VGG(depth=11)  # type: ignore[arg-type]


def test_lenet_count_matches_the_paper() -> None:
    assert _weights(LeNet300100()) == 266_200  # "266K"


# ------------------------------------------------------------------------------------ names, shapes
def test_convnet_names_shapes_and_dropout() -> None:
    model = ConvNet("conv4", in_channels=1, image_size=28, num_classes=5, dropout=0.5)
    names = list(prunable_parameters(model))
    assert names == [
        "net.features.conv1.weight", "net.features.conv2.weight", "net.features.conv3.weight",
        "net.features.conv4.weight", "net.classifier.fc1.weight", "net.classifier.fc2.weight",
        "net.classifier.fc3.weight",
    ]  # fmt: skip
    assert model.output_layer == names[-1]
    assert dict(model.named_parameters())["net.classifier.fc1.weight"].shape == (256, 128 * 7 * 7)
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 3
    assert not any(isinstance(m, nn.Dropout) for m in ConvNet("conv2").modules())
    model.eval()
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 5)
    assert ConvNet("conv6")(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="variant"):
        ConvNet("conv8")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="too small"):
        ConvNet("conv6", image_size=4)


def test_resnet_and_vgg_names_and_shapes() -> None:
    resnet = ResNet20(num_classes=7)
    names = list(prunable_parameters(resnet))
    assert names[0] == "net.conv.weight" and names[-1] == resnet.output_layer == "net.fc.weight"
    assert "net.stage2.block1.shortcut.conv.weight" in names and "net.stage3.block3.conv2.weight" in names
    assert "net.stage1.block1.shortcut.conv.weight" not in names  # identity where the shape is kept
    assert resnet(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    vgg = VGG(depth=16)
    names = list(prunable_parameters(vgg))
    assert names[0] == "net.features.conv1.weight" and names[-1] == vgg.output_layer == "net.fc.weight"
    assert vgg(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_models_store_hyperparameters() -> None:
    for model in (ConvNet("conv6", lr=3e-4), ResNet20(warmup_steps=5), VGG(depth=16, lr=0.01)):
        assert isinstance(model, ImageClassifier)
        hp = dict(model.hparams)
        rebuilt = type(model)(**hp)  # the hparams are the constructor's arguments: a recipe can rebuild it
        assert [n for n, _ in rebuilt.named_parameters()] == [n for n, _ in model.named_parameters()]
    assert ConvNet("conv6", lr=3e-4).hparams.variant == "conv6"
    assert ResNet20(warmup_steps=5).hparams.warmup_steps == 5


# ------------------------------------------------------------------------------------------- init
def test_convnet_glorot_normal_init() -> None:
    torch.manual_seed(0)
    model = ConvNet("conv4")
    for name, param in model.named_parameters():
        if name.endswith("bias"):
            assert torch.count_nonzero(param) == 0, name
            continue
        fan_out, fan_in = param.shape[0], param[0].numel()
        receptive = param[0, 0].numel()
        expected = math.sqrt(2.0 / (fan_in + fan_out * receptive))
        assert param.std().item() == pytest.approx(expected, rel=0.1), name
        assert abs(param.mean().item()) < 0.1 * expected, name


@pytest.mark.parametrize("factory", [ResNet20, lambda: VGG(depth=16)])
def test_batchnorm_nets_kaiming_init(factory) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = factory()
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            fan_in = module.weight[0].numel()
            expected = math.sqrt(2.0 / fan_in)
            tol = 0.3 if module.weight.numel() < 1000 else 0.1
            assert module.weight.std().item() == pytest.approx(expected, rel=tol), name
            if module.bias is not None:
                assert torch.count_nonzero(module.bias) == 0, name
        elif isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0), name


def test_bn_models_train_and_evaluate() -> None:
    torch.manual_seed(0)
    model = ResNet20()
    x, y = torch.randn(8, 3, 16, 16), torch.randint(10, (8,))
    opt = model.configure_optimizers()["optimizer"]
    before = copy.deepcopy(model.state_dict())
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert not torch.equal(before["net.conv.weight"], model.net.conv.weight)
    assert not torch.equal(before["net.bn.running_mean"], model.net.bn.running_mean)
    model.eval()
    assert torch.isfinite(model(x)).all()


# -------------------------------------------------------------------------------------- LR schedule
def _lrs(model: ImageClassifier, steps: int) -> list[float]:
    config = model.configure_optimizers()
    opt, sched = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_then_milestones() -> None:
    model = ResNet20(lr=0.4, warmup_steps=4, milestones=[6, 8], gamma=0.5)
    sched = model.configure_optimizers()["lr_scheduler"]["scheduler"]
    assert isinstance(sched, torch.optim.lr_scheduler.LambdaLR)
    assert _lrs(model, 10) == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4, 0.4, 0.2, 0.2, 0.1, 0.1])


def test_warmup_only_and_milestones_inside_warmup() -> None:
    assert _lrs(ConvNet("conv2", lr=1.0, warmup_steps=2), 4) == pytest.approx([0.5, 1.0, 1.0, 1.0])
    # a milestone during the warmup scales the ramp (the paper's ResNet: warmup 20K, first milestone 20K)
    model = VGG(depth=16, lr=1.0, warmup_steps=4, milestones=[2])
    assert _lrs(model, 5) == pytest.approx([0.25, 0.5, 0.075, 0.1, 0.1])


def test_schedule_without_warmup_is_unchanged() -> None:
    model = VGG(depth=16, lr=0.1, milestones=[2])
    sched = model.configure_optimizers()["lr_scheduler"]["scheduler"]
    assert isinstance(sched, torch.optim.lr_scheduler.MultiStepLR)
    assert "lr_scheduler" not in ConvNet("conv2").configure_optimizers()


def test_warmup_schedule_state_round_trips() -> None:
    model = ResNet20(lr=1.0, warmup_steps=10, milestones=[3])
    config = model.configure_optimizers()
    opt, sched = config["optimizer"], config["lr_scheduler"]["scheduler"]
    for _ in range(5):
        opt.step()
        sched.step()
    state = copy.deepcopy(sched.state_dict())
    assert state["lr_lambdas"][0] == {"warmup_steps": 10, "milestones": [3], "gamma": 0.1}
    fresh = ResNet20(lr=1.0, warmup_steps=10, milestones=[3]).configure_optimizers()
    fresh["lr_scheduler"]["scheduler"].load_state_dict(state)
    assert fresh["lr_scheduler"]["scheduler"].get_last_lr() == pytest.approx(sched.get_last_lr())
    with pytest.raises(ValueError, match="warmup_steps"):
        WarmupMultiStep(warmup_steps=-1)
