"""Instability analysis (Frankle, Dziugaite, Roy & Carbin, ICML 2020): the settings and the maths, pure torch.

A level's subnetwork m ⊙ θk (the dense network at level 0) is trained twice to the end under different SGD noise;
the two results θ¹, θ² are evaluated along the line (1−α)·θ¹ + α·θ² on an evenly spaced α grid. The *barrier* of a
curve is ``max_α E(α) − ½(E(0) + E(1))``: about 0 when the two copies are linearly mode connected ("stable").

BatchNorm running statistics (``bn``): the two public implementations disagree. ``interpolate`` (the default,
VITA-Group/Backdoor-LTH) interpolates the running means and variances like every other floating-point tensor;
``recompute`` resets them at every α and re-estimates them from ``bn_batches`` training batches in train mode
(cumulative average, no gradients), as ``torch.optim.swa_utils.update_bn`` does. gsaltintas/lmc's third choice,
keeping model 1's buffers, is not offered. For a model without BatchNorm both are the same.

Example:
    >>> import torch
    >>> alphas(3)
    [0.0, 0.5, 1.0]
    >>> round(barrier([0.1, 0.3, 0.1]), 6)
    0.2
    >>> interpolate({"w": torch.tensor([0.0])}, {"w": torch.tensor([2.0])}, 0.25)["w"].item()
    0.5
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

__all__ = ["Stability", "alphas", "barrier", "interpolate", "recompute_bn", "summarize"]


@dataclass(frozen=True)
class Stability:
    """``lottery.stability``: which levels get a stability run and how the interpolation is evaluated.

    Args:
        levels: the levels whose subnetwork (level 0: the dense network) is trained twice from the experiment's
            rewind point ``lottery.rewind_to`` and interpolated; levels above ``lottery.levels`` are not run.
        alphas: points of the evenly spaced α grid in [0, 1], ends included (the paper: 30).
        bn: ``interpolate`` or ``recompute`` the BatchNorm running statistics at each α (see the module docstring).
        bn_batches: training batches that ``recompute`` forwards at each α.
    """

    levels: tuple[int, ...] = (0,)
    alphas: int = 11
    bn: Literal["interpolate", "recompute"] = "interpolate"
    bn_batches: int = 10

    def __post_init__(self) -> None:
        levels = self.levels
        if isinstance(levels, int) and not isinstance(levels, bool):
            levels = (levels,)
        if not levels or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in levels):
            raise ValueError(f"lottery.stability.levels must be a non-empty list of levels >= 0, got {self.levels!r}")
        object.__setattr__(self, "levels", tuple(sorted({int(v) for v in levels})))
        for key, low in (("alphas", 2), ("bn_batches", 1)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"lottery.stability.{key} must be an integer >= {low}, got {value!r}")
        if self.bn not in ("interpolate", "recompute"):
            raise ValueError(f"lottery.stability.bn must be 'interpolate' or 'recompute', got {self.bn!r}")

    def changed(self) -> dict[str, Any]:
        """The settings away from their defaults (``levels`` always): what identifies the experiment."""
        out: dict[str, Any] = {"levels": list(self.levels)}
        for f in dataclasses.fields(self):
            if f.name != "levels" and getattr(self, f.name) != f.default:
                out[f.name] = getattr(self, f.name)
        return out


def alphas(points: int) -> list[float]:
    """``points`` evenly spaced values from 0 to 1, both included."""
    return [i / (points - 1) for i in range(points)]


def interpolate(first: Mapping[str, torch.Tensor], second: Mapping[str, torch.Tensor], alpha: float
                ) -> dict[str, torch.Tensor]:
    """``(1 − alpha)·first + alpha·second`` for every floating-point tensor; others (BatchNorm's
    ``num_batches_tracked``) are ``first``'s."""
    if set(first) != set(second):
        raise ValueError(f"the two states differ in their keys: {sorted(set(first) ^ set(second))[:5]}")
    out = {}
    for name, a in first.items():
        b = second[name]
        out[name] = torch.lerp(a, b.to(a.device, a.dtype), alpha) if a.is_floating_point() else a.clone()
    return out


def barrier(errors: Sequence[float]) -> float:
    """``max(errors) − ½(errors[0] + errors[-1])`` (≥ 0: the ends are part of the max)."""
    if len(errors) < 2:
        raise ValueError("a barrier needs the curve at both ends")
    return float(max(errors) - 0.5 * (errors[0] + errors[-1]))


_BN = nn.modules.batchnorm._BatchNorm


def recompute_bn(model: nn.Module, batches: Iterable[Any], count: int) -> bool:
    """Reset every BatchNorm's running statistics and re-estimate them from the inputs of the first ``count``
    ``batches`` (``(x, y)`` or ``x``) in train mode, without gradients, as a cumulative average. Returns whether the
    model has any BatchNorm (without one nothing is forwarded); the model's train/eval modes are restored."""
    norms = [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]
    if not norms:
        return False
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the batches
    device = next(model.parameters()).device
    model.train()
    try:
        with torch.no_grad():
            for i, batch in enumerate(batches):
                if i >= count:
                    break
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                model(x.to(device))
    finally:
        for m in norms:
            m.momentum = momenta[m]
        for m, training in modes.items():
            m.train(training)
    return True


def summarize(curve: Sequence[Mapping[str, float | None]]) -> dict[str, float | None]:
    """The barriers of a curve of rows ``{alpha, test_err, test_loss, train_err, train_loss}``: on test error and on
    train loss (``None`` where a value of the curve is missing).

    Example:
        >>> summarize([{"test_err": 0.1, "train_loss": None}, {"test_err": 0.1, "train_loss": 0.2}])
        {'barrier_test_err': 0.0, 'barrier_train_loss': None}
    """
    out: dict[str, float | None] = {}
    for key, metric in (("barrier_test_err", "test_err"), ("barrier_train_loss", "train_loss")):
        values = [r.get(metric) for r in curve]
        out[key] = None if any(v is None or math.isnan(v) for v in values) else barrier(values)  # type: ignore[arg-type]
    return out
