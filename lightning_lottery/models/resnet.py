"""ResNet-20 for CIFAR-10 (He et al. 2016): the lottery ticket paper's "ResNet-18"."""

from __future__ import annotations

from collections import OrderedDict

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_lottery.models.classifier import ImageClassifier, OptimizerName
from lightning_lottery.models.layers import init_batchnorm_net

__all__ = ["BasicBlock", "CifarResNet", "ResNet20", "init_batchnorm_net"]


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers around an identity shortcut, or a 1×1 conv-BN projection when the shape changes.

    Example:
        >>> import torch
        >>> block = BasicBlock(16, 32, stride=2)
        >>> block(torch.zeros(1, 16, 8, 8)).shape, [n for n, _ in block.named_children()][-1]
        (torch.Size([1, 32, 4, 4]), 'shortcut')
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                    bn=nn.BatchNorm2d(out_channels),
                )
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Conv-BN-ReLU stem, three stages of ``blocks`` :class:`BasicBlock` (widths w, 2w, 4w; the second and third
    halve the resolution), global average pooling and one Linear layer ``fc``.

    Example:
        >>> import torch
        >>> CifarResNet(blocks=1, width=4)(torch.zeros(2, 3, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(self, blocks: int = 3, width: int = 16, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        channels = width
        for stage in range(1, 4):
            out_channels = width * 2 ** (stage - 1)
            stage_blocks: OrderedDict[str, nn.Module] = OrderedDict()
            for b in range(1, blocks + 1):
                stride = 2 if stage > 1 and b == 1 else 1
                stage_blocks[f"block{b}"] = BasicBlock(channels, out_channels, stride)
                channels = out_channels
            self.add_module(f"stage{stage}", nn.Sequential(stage_blocks))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn(self.conv(x)))
        out = self.stage3(self.stage2(self.stage1(out)))
        return self.fc(self.pool(out).flatten(1))


class ResNet20(ImageClassifier):
    """ResNet-20 for CIFAR-10, called "ResNet-18" in Frankle & Carbin 2019: a 16-channel stem conv, 3 × 3 basic
    blocks of widths 16, 32, 64 (6n+2 = 20 layers), BatchNorm, average pooling and a 10-way fc layer.

    Shortcuts are identities, except the first block of stages 2 and 3, which changes shape: there a 1×1
    strided conv + BN projects the input ("option B" of He et al.). That matches the paper's counts: 270,256 conv
    weights (267,696 in 3×3 convs + 2,560 in the two projections) and 270,896 weights with fc; the paper's 274K
    total also counts BatchNorm parameters and running statistics. (Parameter-free "option A" shortcuts would give
    267.7K conv weights.) Names: ``net.conv``, ``net.bn``, ``net.stageS.blockB.{conv1,bn1,conv2,bn2}``,
    ``net.stageS.block1.shortcut.{conv,bn}`` and the output layer ``net.fc`` (``output_layer``). Init:
    kaiming-normal (fan_in) Conv/Linear weights, zero biases, BN weight 1 / bias 0. Defaults: SGD lr 0.1,
    momentum 0.9, weight decay 1e-4 (the standard CIFAR schedule; recipes add milestones and warmup).

    Args:
        in_channels: input channels.
        num_classes: output classes.
        width: channels of the first stage (the others have 2× and 4×).
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"``.
        lr: base learning rate.
        momentum: SGD momentum.
        weight_decay: L2 penalty (the optimizer's ``weight_decay``).
        milestones: optimizer steps at which the learning rate is multiplied by ``gamma``.
        gamma: factor applied at each milestone.
        warmup_steps: steps of linear learning-rate warmup (0: none).
        fused: Adam/AdamW's implementation: ``None`` (default) uses torch's fused kernel when no
            ``GradScaler`` is in use, ``True``/``False`` force it on/off (see ``ImageClassifier``).

    Example:
        >>> import torch
        >>> model = ResNet20()
        >>> model.output_layer, model(torch.zeros(2, 3, 32, 32)).shape
        ('net.fc.weight', torch.Size([2, 10]))
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        width: int = 16,
        optimizer: OptimizerName = "sgd",
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        milestones: list[int] | None = None,
        gamma: float = 0.1,
        warmup_steps: int = 0,
        fused: bool | None = None,
    ) -> None:
        super().__init__(num_classes=num_classes)
        self.save_hyperparameters()
        self.net = CifarResNet(blocks=3, width=width, in_channels=in_channels, num_classes=num_classes)
        self.reset_parameters()

    @property
    def output_layer(self) -> str:
        """Parameter name of the output layer's weight (not pruned in the paper's ResNet experiments)."""
        return "net.fc.weight"

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan_in) Conv and Linear weights, zero biases, standard BatchNorm init."""
        init_batchnorm_net(self.net)
