"""LeNet-300-100: the fully connected network of the lottery ticket paper."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from lightning_lottery.models.classifier import ImageClassifier, OptimizerName
from lightning_lottery.models.layers import fc_layers, init_glorot_net

__all__ = ["LeNet300100"]


class LeNet300100(ImageClassifier):
    """Fully connected ReLU network ``in_features → 300 → 100 → num_classes`` (Frankle & Carbin 2019).

    The input is flattened. Linear layers are named ``net.fc1``, ``net.fc2``, … (the last is the output
    layer, see ``output_layer``), with Gaussian Glorot weights (``xavier_normal_``) and zero biases.
    Defaults follow the paper: Adam at lr 1.2e-3 (batch 60, 50K iterations).

    Example:
        >>> import torch
        >>> model = LeNet300100()
        >>> [name for name, _ in model.named_parameters()][::2]
        ['net.fc1.weight', 'net.fc2.weight', 'net.fc3.weight']
        >>> model.output_layer
        'net.fc3.weight'
        >>> model(torch.zeros(5, 1, 28, 28)).shape
        torch.Size([5, 10])
    """

    def __init__(
        self,
        in_features: int = 784,
        hidden_sizes: Sequence[int] = (300, 100),
        num_classes: int = 10,
        optimizer: OptimizerName = "adam",
        lr: float = 1.2e-3,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        milestones: list[int] | None = None,
        gamma: float = 0.1,
        fused: bool | None = None,
    ) -> None:
        super().__init__(num_classes=num_classes)
        hidden_sizes = [int(h) for h in hidden_sizes]  # stored as a list: YAML-friendly hparams
        self.save_hyperparameters()
        sizes = [in_features, *hidden_sizes, num_classes]
        self.net = nn.Sequential(fc_layers(sizes))
        self._output_name = f"net.fc{len(sizes) - 1}.weight"
        self.reset_parameters()

    @property
    def output_layer(self) -> str:
        """Parameter name of the output layer's weight (pruned at half the rate in the paper)."""
        return self._output_name

    def reset_parameters(self) -> None:
        """Gaussian Glorot weights and zero biases for every Linear layer."""
        init_glorot_net(self.net)
