"""Structured pruning: whole units (rows of a Linear weight, output filters of a Conv weight). Pure torch, no Lightning.

A *unit* is one output unit of a layer: index ``i`` along dimension 0 of its weight, whose fan-in is ``w[i]`` (a row of
a Linear weight, a filter of a Conv weight). The mask stays a bool mask over the weight: a removed unit is a row or
filter of ``False``, so everything downstream (training, tickets, reports, :func:`lightning_lottery.export.compact`,
which removes such units with their bias, BatchNorm channel and the next layer's columns) works unchanged.

Unit score: the L1 or L2 norm of the unit's *alive* fan-in scores (with the ``magnitude`` criterion, of its fan-in
weights; with ``random``, of random scores). Global scope compares units of different layers per weight: the score is
divided by ``fan_in ** (1/p)`` (L1: the mean ``|w|`` of the fan-in; L2: its root mean square), ``fan_in`` being the
number of weights of a unit (``w[i].numel()``), so a wide layer's units are not favoured for their width.

One level removes ``pruning_count(alive units, rate)`` of the *alive units* (a unit is alive while any of its weights
is), per layer or across the pool with one threshold, with the exact selection, tie rule (lower unit index first,
global: in mask order), ``rates`` overrides and clamping of :func:`lightning_lottery.pruning.prune`, applied to unit
scores. The *output layer* (the last parameter in mask order: the model's parameter order, where the classifier
comes last) is never unit-pruned; more layers are kept whole with ``rates: {name: 0}``. At least one unit per layer
stays alive. The levels themselves are :func:`lightning_lottery.pruning.prune` / ``prune_to`` with
``structure="units"``: this module holds the unit helpers they use (and imports nothing of them: no cycle).

Example:
    >>> import torch
    >>> w = torch.tensor([[3.0, -1.0], [0.5, 0.5], [-2.0, 2.0]])
    >>> out = torch.ones(2, 3)
    >>> mask = {"fc.weight": torch.ones(3, 2, dtype=torch.bool), "out.weight": torch.ones(2, 3, dtype=torch.bool)}
    >>> unit_scores({"fc.weight": w.abs()}, {"fc.weight": mask["fc.weight"]}, "l1")["fc.weight"].tolist()
    [4.0, 1.0, 4.0]
    >>> from lightning_lottery.pruning import prune
    >>> new = prune({"fc.weight": w.abs(), "out.weight": out}, mask, 0.34, structure="units")
    >>> new["fc.weight"].tolist(), bool(new["out.weight"].all())
    ([[True, True], [False, False], [True, True]], True)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch

from lightning_lottery.masks import Mask
from lightning_lottery.selection import PruningError

__all__ = ["MASK_TYPES", "NORMS", "STRUCTURES", "Norm", "broadcast", "is_2_4", "is_unit_structured", "output_layer",
           "project_2_4", "protect_output", "random_units_like", "unit_counts", "unit_mask", "unit_scores"]

Norm = Literal["l1", "l2"]
NORMS = ("l1", "l2")
STRUCTURES = ("unstructured", "units")
#: ``lottery.mask_type``: ``"any"`` (no pattern) or ``"2:4"`` (at most 2 alive weights in every block of 4 along a
#: unit's fan-in: the semi-structured sparsity of NVIDIA's sparse tensor cores, :func:`project_2_4`).
MASK_TYPES = ("any", "2:4")


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` as ``[units, fan_in]`` (a 1-D tensor: one weight per unit)."""
    return t.reshape(t.shape[0], -1) if t.dim() > 0 else t.reshape(1, 1)


def _check_norm(norm: object) -> None:
    if norm not in NORMS:
        raise PruningError(f"unit_norm must be 'l1' or 'l2', got {norm!r}")


def unit_mask(mask: Mapping[str, torch.Tensor]) -> Mask:
    """Per parameter, which units are alive (any alive weight in the unit's fan-in): a 1-D bool tensor."""
    return {n: _rows(m).any(1) for n, m in mask.items()}


def unit_counts(mask: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, int]]:
    """Per parameter, ``(alive units, units)``.

    Example:
        >>> unit_counts({"w": torch.tensor([[True, False], [False, False], [True, True]])})
        {'w': (2, 3)}
    """
    return {n: (int(u.sum()), int(u.numel())) for n, u in unit_mask(mask).items()}


def is_unit_structured(mask: Mapping[str, torch.Tensor]) -> bool:
    """Whether every unit of every parameter is all alive or all pruned.

    Example:
        >>> is_unit_structured({"w": torch.tensor([[True, True], [False, False]])})
        True
    """
    return all(bool((_rows(m).all(1) == _rows(m).any(1)).all()) for m in mask.values())


def output_layer(names: list[str] | tuple[str, ...] | Mapping[str, object]) -> str | None:
    """The parameter whose units are never removed: the last prunable parameter (the model's parameter order)."""
    names = list(names)
    return names[-1] if names else None


def unit_scores(scores: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor], norm: Norm = "l1", *,
                per_weight: bool = False) -> dict[str, torch.Tensor]:
    """Per parameter, the L1 or L2 norm of each unit's alive fan-in scores (float64, 1-D, one entry per unit).

    ``per_weight=True`` divides by ``fan_in ** (1/p)`` (L1: mean, L2: root mean square over the unit's fan-in), the
    normalisation of the global scope. Pruned weights contribute nothing; a dead unit scores 0 (it is no candidate).

    Example:
        >>> s = {"c": torch.tensor([[[[3.0, 4.0]]], [[[1.0, 0.0]]]])}  # a Conv weight: 2 filters, fan-in 2
        >>> m = {"c": torch.ones(2, 1, 1, 2, dtype=torch.bool)}
        >>> unit_scores(s, m, "l2")["c"].tolist(), unit_scores(s, m, "l1", per_weight=True)["c"].tolist()
        ([5.0, 1.0], [3.5, 0.5])
    """
    _check_norm(norm)
    out = {}
    for name, m in mask.items():
        if name not in scores:
            raise PruningError(f"scores lack parameter {name!r} of the mask")
        s = scores[name]
        if tuple(s.shape) != tuple(m.shape):
            raise PruningError(f"scores of {name!r} have shape {tuple(s.shape)} but its mask has shape {tuple(m.shape)}")
        s = _rows(s.detach()).to(torch.float64)
        alive = _rows(m).to(s.device)
        if bool(torch.isnan(s[alive]).any()):
            raise PruningError(f"scores of {name!r} contain NaN")
        a = torch.where(alive, s.abs(), torch.zeros((), dtype=s.dtype, device=s.device))
        u = a.sum(1) if norm == "l1" else a.square().sum(1).sqrt()
        if per_weight:
            u = u / (s.shape[1] if norm == "l1" else s.shape[1] ** 0.5)
        out[name] = u
    return out


def protect_output(names: list[str], overrides: Mapping[str, float], value: float) -> dict[str, float]:
    """``overrides`` (``rates`` or ``targets``) with the output layer at ``value`` (rate 0 / target 1), placed last so
    that it wins over every other pattern."""
    last = output_layer(names)
    out = {k: v for k, v in overrides.items() if k != last}
    if last is not None:
        out[last] = value
    return out


def broadcast(mask: Mapping[str, torch.Tensor], units: Mapping[str, torch.Tensor]) -> Mask:
    """The weight masks with every weight of a removed unit pruned (alive weights of kept units unchanged)."""
    out = {}
    for n, m in mask.items():
        u = units[n].to(m.device)
        out[n] = (_rows(m) & u.view(-1, 1)).reshape(m.shape)
    return out


def random_units_like(mask: Mapping[str, torch.Tensor], generator: torch.Generator | None = None) -> Mask:
    """The structured random-mask control: per parameter, the units (rows / filters, with their fan-in patterns)
    shuffled to uniformly random positions, so alive units and alive weights per parameter are those of ``mask``.

    Example:
        >>> m = {"w": torch.tensor([[True, True], [False, False], [False, False]])}
        >>> unit_counts(random_units_like(m, torch.Generator().manual_seed(0)))
        {'w': (1, 3)}
    """
    out: Mask = {}
    for name, m in mask.items():
        perm = torch.randperm(m.shape[0] if m.dim() else 1, generator=generator)
        rows = _rows(m.cpu())
        out[name] = rows[perm].reshape(m.shape).to(m.device)
    return out


def _blocks(t: torch.Tensor, fill: object) -> tuple[torch.Tensor, int]:
    """``t`` as ``[units, blocks, 4]`` along the fan-in (the last block padded with ``fill``), and the fan-in."""
    rows = _rows(t)
    fan_in = rows.shape[1]
    pad = (-fan_in) % 4
    if pad:
        rows = torch.cat([rows, torch.full((rows.shape[0], pad), fill, dtype=rows.dtype, device=rows.device)], 1)
    return rows.reshape(rows.shape[0], -1, 4), fan_in


def is_2_4(mask: Mapping[str, torch.Tensor]) -> bool:
    """Whether every block of 4 consecutive weights along every unit's fan-in has at least 2 pruned (2:4 sparsity;
    a last, shorter block counts as padded with pruned weights).

    Example:
        >>> is_2_4({"w": torch.tensor([[True, False, True, False, True]])}), is_2_4({"w": torch.ones(1, 4).bool()})
        (True, False)
    """
    return all(bool((_blocks(m.to(torch.bool), False)[0].sum(-1) <= 2).all()) for m in mask.values())


def project_2_4(mask: Mapping[str, torch.Tensor], scores: Mapping[str, torch.Tensor]) -> Mask:
    """``mask`` projected to 2:4: in every block of 4 along a unit's fan-in (the flattened ``w[i]``) only the 2 alive
    weights of largest score stay alive (equal scores: the lower index). Pruned weights are never revived.

    Example:
        >>> m = {"w": torch.ones(1, 6, dtype=torch.bool)}
        >>> project_2_4(m, {"w": torch.tensor([[1.0, 4.0, 3.0, 2.0, 5.0, 6.0]])})["w"].tolist()
        [[False, True, True, False, True, True]]
    """
    out: Mask = {}
    for name, m in mask.items():
        if name not in scores:
            raise PruningError(f"scores lack parameter {name!r} of the mask")
        alive, fan_in = _blocks(m.to(torch.bool), False)
        s, _ = _blocks(scores[name].detach().to(torch.float64).to(m.device), float("-inf"))
        s = torch.where(alive, s, torch.full_like(s, float("-inf")))
        order = torch.sort(s, dim=-1, descending=True, stable=True).indices[..., :2]
        keep = torch.zeros_like(alive).scatter_(-1, order, True) & alive
        out[name] = keep.reshape(keep.shape[0], -1)[:, :fan_in].reshape(m.shape)
    return out
