"""VGG-16 / VGG-19 for CIFAR-10 with BatchNorm and one fc layer (as in the lottery ticket paper)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal, Union

from torch import nn

from lightning_lottery.models.classifier import ImageClassifier, OptimizerName
from lightning_lottery.models.layers import init_batchnorm_net

__all__ = ["VGG"]

_M = "pool"
#: Output channels of the 3×3 convs, ``"pool"`` for a 2×2 max-pool (no pool after the last group).
_PLANS: dict[int, tuple[Union[int, str], ...]] = {
    16: (64, 64, _M, 128, 128, _M, 256, 256, 256, _M, 512, 512, 512, _M, 512, 512, 512),
    19: (64, 64, _M, 128, 128, _M, 256, 256, 256, 256, _M, 512, 512, 512, 512, _M, 512, 512, 512, 512),
}


class VGG(ImageClassifier):
    """VGG-16/19 for CIFAR-10 (Frankle & Carbin 2019): 3×3 conv-BN-ReLU layers in five groups separated by four
    2×2 max-pools, global average pooling and a single fc layer to the classes.

    Names: ``net.features.convI`` / ``bnI`` / ``reluI`` (I = 1…16 for VGG-19), ``net.features.poolK``,
    ``net.pool`` (average), the output layer ``net.fc`` (``output_layer``). Convs have no bias (BN follows).
    VGG-19 has 20,018,880 conv weights and 20,024,000 weights in all (the paper: 20.0M). Init: kaiming-normal
    (fan_in) Conv/Linear weights, zero biases, BN weight 1 / bias 0. Defaults: SGD lr 0.1, momentum 0.9, weight
    decay 1e-4.

    Args:
        depth: 16 or 19 (13 or 16 convolutions; the name counts the original VGG's 3 fc layers).
        in_channels: input channels.
        num_classes: output classes.
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
        >>> model = VGG(depth=16)
        >>> model.output_layer, model(torch.zeros(2, 3, 32, 32)).shape
        ('net.fc.weight', torch.Size([2, 10]))
        >>> [n for n in dict(model.named_parameters()) if n.startswith("net.features.conv")][-1]
        'net.features.conv13.weight'
    """

    def __init__(
        self,
        depth: Literal[16, 19] = 19,
        in_channels: int = 3,
        num_classes: int = 10,
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
        if depth not in _PLANS:
            raise ValueError(f"unknown VGG depth {depth!r}; expected one of {sorted(_PLANS)}")
        self.save_hyperparameters()
        features: OrderedDict[str, nn.Module] = OrderedDict()
        channels, conv, pool = in_channels, 0, 0
        for spec in _PLANS[depth]:
            if spec == _M:
                pool += 1
                features[f"pool{pool}"] = nn.MaxPool2d(2)
                continue
            conv += 1
            assert isinstance(spec, int)
            features[f"conv{conv}"] = nn.Conv2d(channels, spec, kernel_size=3, padding=1, bias=False)
            features[f"bn{conv}"] = nn.BatchNorm2d(spec)
            features[f"relu{conv}"] = nn.ReLU()
            channels = spec
        self.net = nn.Sequential(
            OrderedDict(
                features=nn.Sequential(features),
                pool=nn.AdaptiveAvgPool2d(1),
                flatten=nn.Flatten(),
                fc=nn.Linear(channels, num_classes),
            )
        )
        self.reset_parameters()

    @property
    def output_layer(self) -> str:
        """Parameter name of the output layer's weight (not pruned in the paper's VGG experiments)."""
        return "net.fc.weight"

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan_in) Conv and Linear weights, zero biases, standard BatchNorm init."""
        init_batchnorm_net(self.net)
