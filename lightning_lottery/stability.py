"""Instability analysis (Frankle, Dziugaite, Roy & Carbin, ICML 2020): the settings and the maths, pure torch.

A level's subnetwork m ⊙ θk (the dense network at level 0) is trained twice to the end under different SGD noise;
the two results θ¹, θ² are evaluated along the line (1−α)·θ¹ + α·θ² on an evenly spaced α grid. The *barrier* of a
curve is ``max_α E(α) − ½(E(0) + E(1))``: about 0 when the two copies are linearly mode connected ("stable").

BatchNorm running statistics (``bn``): the two public implementations disagree. ``interpolate`` (the default,
VITA-Group/Backdoor-LTH) interpolates the running means and variances like every other floating-point tensor;
``recompute`` resets them at every α and re-estimates them from ``bn_batches`` training batches in train mode
(cumulative average, no gradients), as ``torch.optim.swa_utils.update_bn`` does. gsaltintas/lmc's third choice,
keeping model 1's buffers, is not offered. For a model without BatchNorm both are the same.

Several rewind steps (``at``): every level's subnetwork m_L ⊙ θk is analysed for every k in ``at``; the θk are
copied during level 0's dense training (:mod:`lightning_lottery.snapshots`). ``lottery.rewind_to: auto`` then rewinds
the main line to the smallest k whose subnetwork at ``choose_level`` is stable, i.e. whose test-error barrier is at
most ``max_barrier`` (:func:`choose_rewind`). ``choose_level`` is 0 (the dense network) or 1 (the default): level 1's
mask is pruned from level 0's dense training alone, so it is the same for every k; the mask of a level ≥ 2 comes
from the main line's level 1, which is trained from the k being chosen. Each replicate chooses its own k.

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
from typing import Any, Literal, Optional

import torch
from torch import nn

from lightning_lottery.rewind import RewindStep

__all__ = ["AUTO", "RewindChoice", "Stability", "alphas", "barrier", "choose_rewind", "interpolate", "recompute_bn",
           "summarize"]

#: ``lottery.rewind_to: auto``: the rewind step is chosen by stability (:func:`choose_rewind`).
AUTO = "auto"


@dataclass(frozen=True)
class Stability:
    """``lottery.stability``: which levels get a stability run and how the interpolation is evaluated.

    Args:
        levels: the levels whose subnetwork (level 0: the dense network) is trained twice from the experiment's
            rewind point ``lottery.rewind_to`` and interpolated; levels above ``lottery.levels`` are not run.
        alphas: points of the evenly spaced α grid in [0, 1], ends included (the paper: 30).
        bn: ``interpolate`` or ``recompute`` the BatchNorm running statistics at each α (see the module docstring).
        bn_batches: training batches that ``recompute`` forwards at each α.
        at: the rewind steps k analysed (``["0it", "100it", "2ep"]``, sorted, iterations first); empty (the
            default): only ``lottery.rewind_to``. Each θk is copied during level 0's training.
        choose_level: with ``lottery.rewind_to: auto``, the level whose barriers choose k: 0 or 1 (see the module
            docstring); it must be one of ``levels``.
        max_barrier: with ``lottery.rewind_to: auto``, the largest test-error barrier of a stable k (0.02 = 2
            percentage points).

    Example:
        >>> Stability(levels=[1], at=["500it", "0it", "500it"]).at
        ('0it', '500it')
    """

    levels: tuple[int, ...] = (0,)
    alphas: int = 11
    bn: Literal["interpolate", "recompute"] = "interpolate"
    bn_batches: int = 10
    at: tuple[str, ...] = ()
    choose_level: int = 1
    max_barrier: float = 0.02

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
        at = (self.at,) if isinstance(self.at, (str, int)) else self.at
        try:
            steps = {RewindStep.parse(v) for v in at}
        except ValueError as err:
            raise ValueError(f"lottery.stability.at: {err}") from None
        object.__setattr__(self, "at", tuple(str(s) for s in sorted(steps, key=lambda s: (s.unit != "it", s.amount))))
        if isinstance(self.choose_level, bool) or self.choose_level not in (0, 1):
            raise ValueError(f"lottery.stability.choose_level must be 0 or 1, got {self.choose_level!r}: the mask of "
                             "a level >= 2 comes from the main line's level 1, which is trained from the chosen k")
        if isinstance(self.max_barrier, bool) or not isinstance(self.max_barrier, (int, float)) or not (
                0.0 <= self.max_barrier < 1.0):
            raise ValueError(f"lottery.stability.max_barrier must be a test-error barrier in [0, 1), got "
                             f"{self.max_barrier!r}")

    def changed(self) -> dict[str, Any]:
        """The settings away from their defaults (``levels`` always): what identifies the experiment."""
        out: dict[str, Any] = {"levels": list(self.levels)}
        for f in dataclasses.fields(self):
            if f.name != "levels" and getattr(self, f.name) != f.default:
                value = getattr(self, f.name)
                out[f.name] = list(value) if isinstance(value, tuple) else value
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


@dataclass(frozen=True)
class RewindChoice:
    """What ``lottery.rewind_to: auto`` chose for a replicate, and the barriers behind it.

    Args:
        at: the chosen rewind step (``"500it"``).
        step: its optimizer step.
        stable: whether its barrier is at most ``max_barrier`` (``False``: no candidate was; the largest is used).
        level: the level whose barriers chose it.
        max_barrier: the threshold.
        barriers: the test-error barrier of every candidate, smallest k first (``None``: not measured).
    """

    at: str
    step: int
    stable: bool
    level: int
    max_barrier: float
    barriers: dict[str, Optional[float]]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        """One line for the progress output and the report."""
        measured = ", ".join(f"{k} {'—' if b is None else f'{100 * b:.2f}'}" for k, b in self.barriers.items())
        limit = f"{100 * self.max_barrier:g} pp"
        if self.stable:
            return (f"rewind_to auto: k = {self.at}, the smallest candidate whose level-{self.level} test-error "
                    f"barrier is <= {limit} (barriers in pp: {measured})")
        return (f"rewind_to auto: NO candidate is stable at level {self.level} (every test-error barrier > {limit}; "
                f"barriers in pp: {measured}); using the largest, k = {self.at} (flagged unstable)")


def choose_rewind(candidates: Sequence[tuple[str, int, Optional[float]]], max_barrier: float, level: int
                  ) -> RewindChoice:
    """The smallest candidate ``(at, step, test-error barrier)`` (by step) whose barrier is at most ``max_barrier``;
    when none is, the largest one, with ``stable=False``.

    Example:
        >>> choice = choose_rewind([("100it", 100, 0.01), ("0it", 0, 0.05), ("500it", 500, 0.0)], 0.02, 1)
        >>> choice.at, choice.stable, list(choice.barriers)
        ('100it', True, ['0it', '100it', '500it'])
        >>> choose_rewind([("0it", 0, 0.05), ("100it", 100, None)], 0.02, 1).at
        '100it'
    """
    if not candidates:
        raise ValueError("rewind_to auto needs at least one candidate in lottery.stability.at")
    ordered = sorted(candidates, key=lambda c: c[1])
    barriers = {at: (None if b is None else float(b)) for at, _, b in ordered}
    for at, step, value in ordered:
        if value is not None and not math.isnan(value) and value <= max_barrier:
            return RewindChoice(at, int(step), True, level, float(max_barrier), barriers)
    at, step, _ = ordered[-1]
    return RewindChoice(at, int(step), False, level, float(max_barrier), barriers)
