"""Pieces shared by the reference networks: a fully connected stack and weight initialisers."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

__all__ = ["fc_layers", "init_batchnorm_net", "init_glorot_net"]


def fc_layers(sizes: Sequence[int], dropout: float = 0.0) -> OrderedDict[str, nn.Module]:
    """``flatten``, then Linear layers ``fc1`` … ``fcN`` between consecutive ``sizes``, each but the last followed
    by ``reluI`` and, when ``dropout > 0``, each preceded by ``dropoutI``.

    Example:
        >>> list(fc_layers([8, 4, 2]))
        ['flatten', 'fc1', 'relu1', 'fc2']
        >>> list(fc_layers([8, 4, 2], dropout=0.5))
        ['flatten', 'dropout1', 'fc1', 'relu1', 'dropout2', 'fc2']
    """
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        if dropout > 0:
            layers[f"dropout{i}"] = nn.Dropout(dropout)
        layers[f"fc{i}"] = nn.Linear(fan_in, fan_out)
        if i < len(sizes) - 1:
            layers[f"relu{i}"] = nn.ReLU()
    return layers


def init_glorot_net(net: nn.Module) -> None:
    """Gaussian Glorot (``xavier_normal_``) Conv and Linear weights, zero biases.

    Example:
        >>> import torch
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4, 2))
        >>> init_glorot_net(net)
        >>> [torch.count_nonzero(m.bias).item() for m in (net[0], net[2])]
        [0, 0]
    """
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_normal_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def init_batchnorm_net(net: nn.Module) -> None:
    """Kaiming-normal (fan_in, ReLU gain) Conv and Linear weights, zero biases, BatchNorm weight 1 and bias 0."""
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
