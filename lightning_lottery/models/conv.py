"""Conv-2, Conv-4 and Conv-6: the small VGG-like CIFAR-10 networks of the lottery ticket paper."""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

from torch import nn

from lightning_lottery.models.classifier import ImageClassifier, OptimizerName
from lightning_lottery.models.layers import fc_layers, init_glorot_net

__all__ = ["ConvNet", "ConvVariant"]

ConvVariant = Literal["conv2", "conv4", "conv6"]

#: Output channels of the 3×3 convolutions; a 2×2 max-pool follows every pair.
_PLANS: dict[str, tuple[int, ...]] = {
    "conv2": (64, 64),
    "conv4": (64, 64, 128, 128),
    "conv6": (64, 64, 128, 128, 256, 256),
}
#: Hidden sizes of the fully connected layers (the output layer follows).
_HIDDEN = (256, 256)


class ConvNet(ImageClassifier):
    """Conv-2 / Conv-4 / Conv-6 (Frankle & Carbin 2019, Figure 2): 3×3 convs, pool, then fc 256, 256, classes.

    ``net.features`` holds ``conv1``, ``relu1``, ``conv2``, ``relu2``, ``pool1``, ``conv3``, … (3×3 kernels,
    padding 1, ReLU, a 2×2 max-pool after every pair of convolutions); ``net.classifier`` holds ``flatten``,
    then ``fc1``, ``fc2`` (256 units, ReLU) and the output layer ``fc3`` (``output_layer``), each preceded by
    ``dropoutN`` when ``dropout > 0``. Recipes address the two groups with the patterns ``net.features.*`` and
    ``net.classifier.*``. Weights are Gaussian Glorot (``xavier_normal_``), biases zero. Defaults follow the
    paper's Conv-2 (Adam, lr 2e-4, batch 60); Conv-4 and Conv-6 use lr 3e-4. On 32×32×3 inputs the weights
    number 4.30M / 38.6K in convs (Conv-2), 2.42M / 260K (Conv-4) and 2.26M / 1.14M (Conv-6; the paper's
    table says 1.7M, which does not add up for this architecture: its fc1 alone has 4·4·256·256 = 1.05M).

    Args:
        variant: ``"conv2"``, ``"conv4"`` or ``"conv6"`` (2, 4 or 6 convolutions).
        in_channels: input channels (3 for CIFAR-10, 1 for MNIST-style data).
        image_size: input height = width; fixes the size of ``fc1``.
        num_classes: output classes.
        dropout: dropout rate before each fc layer (0: no dropout layers).
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
        >>> model = ConvNet("conv2", in_channels=1, image_size=28)
        >>> [n for n, _ in model.named_parameters() if n.endswith("weight")][1:3]
        ['net.features.conv2.weight', 'net.classifier.fc1.weight']
        >>> model.output_layer
        'net.classifier.fc3.weight'
        >>> model(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        variant: ConvVariant = "conv2",
        in_channels: int = 3,
        image_size: int = 32,
        num_classes: int = 10,
        dropout: float = 0.0,
        optimizer: OptimizerName = "adam",
        lr: float = 2e-4,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        milestones: list[int] | None = None,
        gamma: float = 0.1,
        warmup_steps: int = 0,
        fused: bool | None = None,
    ) -> None:
        super().__init__(num_classes=num_classes)
        if variant not in _PLANS:
            raise ValueError(f"unknown ConvNet variant {variant!r}; expected one of {sorted(_PLANS)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        plan = _PLANS[variant]
        size = image_size // 2 ** (len(plan) // 2)
        if size < 1:
            raise ValueError(f"image_size {image_size} is too small for {variant} ({len(plan) // 2} 2×2 pools)")
        self.save_hyperparameters()

        features: OrderedDict[str, nn.Module] = OrderedDict()
        channels = in_channels
        for i, out_channels in enumerate(plan, start=1):
            features[f"conv{i}"] = nn.Conv2d(channels, out_channels, kernel_size=3, padding=1)
            features[f"relu{i}"] = nn.ReLU()
            if i % 2 == 0:
                features[f"pool{i // 2}"] = nn.MaxPool2d(2)
            channels = out_channels

        sizes = [channels * size * size, *_HIDDEN, num_classes]
        classifier = fc_layers(sizes, dropout)
        self.net = nn.Sequential(OrderedDict(features=nn.Sequential(features), classifier=nn.Sequential(classifier)))
        self._output_name = f"net.classifier.fc{len(sizes) - 1}.weight"
        self.reset_parameters()

    @property
    def output_layer(self) -> str:
        """Parameter name of the output layer's weight."""
        return self._output_name

    def reset_parameters(self) -> None:
        """Gaussian Glorot weights and zero biases for every Conv and Linear layer."""
        init_glorot_net(self.net)
