"""MACs per weight measured with forward hooks, against hand computation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_lottery.flops import dense_macs, layer_costs, masked_macs, theoretical_speedup


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks for m in model.modules())


def test_linear_macs_per_weight_is_one_per_sample():
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    # batch size must not matter: the count is per sample
    for batch in (1, 7):
        costs = layer_costs(net, torch.randn(batch, 6), ["0.weight", "2.weight"])
        assert costs == {"0.weight": {"numel": 30, "macs_per_weight": 1}, "2.weight": {"numel": 10, "macs_per_weight": 1}}


def test_linear_extra_leading_dims_multiply():
    layer = nn.Linear(4, 3)
    assert layer_costs(layer, torch.randn(2, 5, 7, 4), ["weight"])["weight"]["macs_per_weight"] == 35
    assert layer_costs(layer, torch.randn(4), ["weight"])["weight"]["macs_per_weight"] == 1  # unbatched


def test_conv2d_macs_per_weight_is_output_positions():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),            # 10x12 -> 10x12: 120 positions
        nn.Conv2d(8, 4, 3, stride=2),             # 10x12 -> 4x5: 20 positions
        nn.Conv2d(4, 4, 3, padding=1, groups=2),  # grouped: weight (4, 2, 3, 3), 4x5 positions
        nn.Flatten(), nn.Linear(4 * 4 * 5, 10),
    )
    names = ["0.weight", "1.weight", "2.weight", "4.weight"]
    costs = layer_costs(net, torch.randn(2, 3, 10, 12), names)
    assert costs["0.weight"] == {"numel": 8 * 3 * 9, "macs_per_weight": 120}
    assert costs["1.weight"] == {"numel": 4 * 8 * 9, "macs_per_weight": 20}
    assert costs["2.weight"] == {"numel": 4 * 2 * 9, "macs_per_weight": 20}
    assert costs["4.weight"] == {"numel": 800, "macs_per_weight": 1}
    # dense MACs of one sample, by hand: out_positions * C_out * C_in/groups * k*k (+ fc in*out)
    assert dense_macs(costs) == 120 * 8 * 3 * 9 + 20 * 4 * 8 * 9 + 20 * 4 * 2 * 9 + 800


def test_conv1d_and_transposed_conv():
    net = nn.Sequential(nn.Conv1d(2, 3, 5), nn.ConvTranspose1d(3, 2, 4, stride=2))
    costs = layer_costs(net, torch.randn(1, 2, 20), ["0.weight", "1.weight"])
    assert costs["0.weight"]["macs_per_weight"] == 16  # 20 - 5 + 1
    assert costs["1.weight"]["macs_per_weight"] == 16  # one use per *input* position


def test_non_layer_parameters_cost_nothing_and_unknown_names_fail():
    net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    costs = layer_costs(net, torch.randn(4, 3), ["0.weight", "0.bias", "1.weight"])
    assert costs["0.bias"] == {"numel": 3, "macs_per_weight": 0}
    assert costs["1.weight"] == {"numel": 3, "macs_per_weight": 0}
    with pytest.raises(KeyError, match="nope.weight"):
        layer_costs(net, torch.randn(4, 3), ["nope.weight"])


def test_shared_layer_counts_every_call():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(self.fc(x))

    assert layer_costs(Twice(), torch.randn(3, 4), ["fc.weight"])["fc.weight"]["macs_per_weight"] == 2


def test_hooks_removed_modes_restored_and_buffers_untouched():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Dropout(0.5), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    net.train()
    net[2].eval()  # mixed modes are restored module by module
    stats = net[1].running_mean.clone()
    layer_costs(net, torch.randn(2, 1, 6, 6), ["0.weight", "4.weight"])
    assert _no_hooks(net)
    assert [m.training for m in net] == [True, True, False, True, True]
    assert torch.equal(net[1].running_mean, stats)  # measured in eval mode, under no_grad
    assert all(p.grad is None for p in net.parameters())


def test_hooks_removed_when_forward_fails():
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(5, 2))  # shape mismatch in the 2nd layer
    with pytest.raises(RuntimeError):
        layer_costs(net, torch.randn(1, 4), ["0.weight", "1.weight"])
    assert _no_hooks(net)
    assert net.training


def test_tuple_input_is_unpacked():
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, a, b):
            return self.fc(a + b)

    costs = layer_costs(Two(), (torch.randn(2, 3), torch.randn(2, 3)), ["fc.weight"])
    assert costs == {"fc.weight": {"numel": 6, "macs_per_weight": 1}}


def test_speedup_for_a_known_mask():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    costs = layer_costs(net, torch.randn(1, 1, 8, 8), ["0.weight", "2.weight"])
    assert costs == {"0.weight": {"numel": 36, "macs_per_weight": 36}, "2.weight": {"numel": 1440, "macs_per_weight": 1}}
    alive = {"0.weight": 18, "2.weight": 144}  # conv at 50%, fc at 10%
    dense = 36 * 36 + 1440
    sparse = 18 * 36 + 144
    assert masked_macs(costs, alive) == sparse
    assert theoretical_speedup(costs, alive) == pytest.approx(dense / sparse)
    # the `layers` entry of a results row works as well; missing layers count as dense
    layers = {"0.weight": {"alive": 18, "total": 36, "remaining": 0.5}}
    assert masked_macs(costs, layers) == 18 * 36 + 1440
    assert theoretical_speedup(costs, {n: c["numel"] for n, c in costs.items()}) == 1.0
    assert math.isinf(theoretical_speedup(costs, {"0.weight": 0, "2.weight": 0}))
