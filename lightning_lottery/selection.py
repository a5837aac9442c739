"""Exact, deterministic selection of the k smallest scores across a pool of tensors. Pure torch, no Lightning.

The machinery under :mod:`lightning_lottery.pruning`. :func:`prepare` checks scores against a mask and flattens
both into :class:`Layer` entries; :func:`threshold` finds the k-th smallest *alive* score ``t`` of a pool of
layers and, per layer, how many alive scores are ``< t`` and ``== t``; :func:`new_mask` keeps the alive weights
scored above ``t`` minus the first (lowest-index) tied ones. Dead weights are never candidates.

The threshold is found by selection (``kthvalue``) on a small bracket of candidates, located from a random
sample when the pool is large, never by sorting all the scores; a bracket that misses is widened, so the result
never depends on the sample, only the speed does.

Example:
    >>> import torch
    >>> from lightning_lottery.selection import new_mask, prepare, threshold
    >>> scores = {"a": torch.tensor([4.0, 1.0, 3.0, 1.0]), "b": torch.tensor([1.0, 0.5])}
    >>> mask = {"a": torch.ones(4, dtype=torch.bool), "b": torch.tensor([True, True])}
    >>> pool = prepare(scores, mask)
    >>> threshold(pool, 3)  # 3rd smallest alive score; per layer, how many alive scores are below it and equal
    (1.0, [0, 1], [2, 1])
    >>> new_mask(pool[0], 1.0, 2, 2)  # "a" loses both of its tied 1.0s
    tensor([ True, False,  True, False])
    >>> new_mask(pool[1], 1.0, 0, 1)  # "b" keeps its tied 1.0
    tensor([ True, False])
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

__all__ = ["Layer", "PruningError", "finish", "new_mask", "prepare", "threshold"]

#: Pools with at most this many alive weights are selected directly (no sampling).
_DIRECT_LIMIT = 1 << 22
#: Number of alive scores sampled to bracket the threshold in large pools.
_SAMPLE_SIZE = 1 << 16
#: Chunk size used to locate the first ``n`` tied weights without an int64 cumsum over the whole tensor.
_CHUNK = 1 << 20


class PruningError(ValueError):
    """Invalid pruning request: bad rate, unknown pattern, NaN scores, or scores that do not fit the mask."""


@dataclass
class Layer:
    """One parameter's scores and alive mask, flattened."""

    name: str
    score: torch.Tensor  # flat, comparable dtype, on the score's device
    alive: torch.Tensor  # flat bool, on the score's device (may alias the input mask: never written)
    shape: torch.Size
    out_device: torch.device  # the input mask's device
    n_alive: int
    numel: int


def _comparable(score: torch.Tensor) -> torch.Tensor:
    """Scores in a dtype where Python-scalar comparisons and kthvalue are exact."""
    if score.dtype in (torch.float32, torch.float64):
        return score
    if score.is_floating_point():
        return score.to(torch.float32)  # half/bfloat16 are exact in float32
    if score.is_complex():
        raise PruningError("scores must be real numbers, got a complex tensor")
    return score.to(torch.float64)


def _has_nan(x: torch.Tensor) -> bool:
    """Whether ``x`` has a NaN; a finite sum (one cheap reduction) rules it out in the common case."""
    if not x.is_floating_point() or x.numel() == 0:
        return False
    return not bool(torch.isfinite(x.sum())) and bool(torch.isnan(x).any())


def prepare(scores: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor]) -> list[Layer]:
    """Validate scores against the mask and flatten both, in mask order.

    Raises :class:`PruningError` for names or shapes that disagree, a non-bool mask, complex scores, or a NaN
    score at an alive position.
    """
    for name in scores:
        if name not in mask:
            raise PruningError(f"scores have parameter {name!r} that the mask does not have")
    layers = []
    for name, m in mask.items():
        if name not in scores:
            raise PruningError(f"scores lack parameter {name!r} of the mask")
        s = scores[name]
        if not isinstance(s, torch.Tensor) or not isinstance(m, torch.Tensor):
            raise PruningError(f"scores and mask of {name!r} must be tensors")
        if m.dtype != torch.bool:
            raise PruningError(f"mask of {name!r} has dtype {m.dtype}, expected torch.bool")
        if tuple(s.shape) != tuple(m.shape):
            raise PruningError(
                f"scores of {name!r} have shape {tuple(s.shape)} but its mask has shape {tuple(m.shape)}"
            )
        s = _comparable(s.detach()).reshape(-1)
        alive = m.reshape(-1).to(s.device)
        if _has_nan(s) and bool(torch.isnan(s).logical_and_(alive).any()):
            raise PruningError(f"scores of {name!r} contain NaN")
        n_alive = int(torch.count_nonzero(alive))
        layers.append(Layer(name, s, alive, m.shape, m.device, n_alive, m.numel()))
    return layers


def _count(x: torch.Tensor) -> int:
    return int(torch.count_nonzero(x))


def _sample_bracket(pool: list[Layer], k: int, n_alive: int) -> tuple[float, float] | None:
    """Bounds ``lo <= hi`` that very likely enclose the k-th smallest alive score, from a random sample."""
    total = sum(layer.numel for layer in pool)
    n_draw = math.ceil(_SAMPLE_SIZE * total / n_alive)
    if n_draw > total // 4:
        return None
    gen = torch.Generator().manual_seed(0)  # only speed depends on the sample, never the result
    samples = []
    for layer in pool:
        n = math.ceil(n_draw * layer.numel / total)
        if layer.n_alive == 0 or n == 0:
            continue
        pos = torch.randint(layer.numel, (n,), generator=gen).to(layer.score.device)
        picked = layer.score[pos][layer.alive[pos]]
        samples.append(picked.to(pool[0].score.device))
    sample = torch.sort(torch.cat(samples)).values if samples else torch.empty(0)
    size = sample.numel()
    if size < 1024:
        return None
    q = k / n_alive
    rank = q * size
    margin = 5.0 * math.sqrt(size * q * (1.0 - q)) + 16.0
    lo_i, hi_i = math.floor(rank - margin), math.ceil(rank + margin)
    lo = sample[lo_i].item() if lo_i >= 0 else -math.inf
    hi = sample[hi_i].item() if hi_i < size else math.inf
    return lo, hi


def _in_bracket(layer: Layer, lo: float, hi: float) -> torch.Tensor:
    """Alive entries with ``lo <= score <= hi`` (may alias ``layer.alive``: never write to the result)."""
    inside = layer.alive
    if lo != -math.inf:
        inside = (layer.score >= lo).logical_and_(inside)
    if hi != math.inf:
        inside = (layer.score <= hi).logical_and_(inside)
    return inside


def threshold(pool: list[Layer], k: int) -> tuple[float, list[int], list[int]]:
    """The k-th smallest alive score ``t`` of the pool (``1 <= k <= alive``) and, per layer, the numbers of alive
    scores ``< t`` and ``== t``. Exact: a sampled bracket only limits which scores are selected upon.

    The layers of a pool must share one score dtype, so that one threshold compares exactly.
    """
    n_alive = sum(layer.n_alive for layer in pool)
    lo, hi = -math.inf, math.inf
    if n_alive > _DIRECT_LIMIT:
        bracket = _sample_bracket(pool, k, n_alive)
        if bracket is not None:
            lo, hi = bracket
    while True:  # count the alive scores below the bracket and gather those inside it (when few)
        below: list[int] = []
        n_cand: list[int] = []
        cands: list[torch.Tensor] | None = []
        for layer in pool:
            inside = _in_bracket(layer, lo, math.inf)
            n_ge = layer.n_alive if lo == -math.inf else _count(inside)
            below.append(layer.n_alive - n_ge)
            if hi != math.inf:
                inside = (layer.score <= hi).logical_and_(inside)
            n_cand.append(n_ge if hi == math.inf else _count(inside))
            if cands is not None and lo != hi and sum(n_cand) <= _DIRECT_LIMIT:
                cands.append(layer.score[inside])
            else:
                cands = None
            del inside
        c_lo = sum(below)
        if c_lo >= k:  # the sampled bracket missed (rare): widen it and count again
            lo = -math.inf
        elif c_lo + sum(n_cand) < k:
            hi = math.inf
        else:
            break
    if lo == hi:  # every candidate equals the threshold
        return lo, below, n_cand
    if cands is None:  # many candidates: maybe a big tie at a bound settles it without selection
        for t in (lo, hi):
            if t in (-math.inf, math.inf):
                continue
            eq = [_count((layer.score == t).logical_and_(layer.alive)) for layer in pool]
            lt = below if t == lo else [b + n - e for b, n, e in zip(below, n_cand, eq)]
            if sum(lt) < k <= sum(lt) + sum(eq):
                return t, lt, eq
        cands = [layer.score[_in_bracket(layer, lo, hi)] for layer in pool]
    device = pool[0].score.device
    t = float(torch.kthvalue(torch.cat([c.to(device) for c in cands]), k - c_lo).values.item())
    lt = [b + _count(c < t) for b, c in zip(below, cands)]
    eq = [_count(c == t) for c in cands]
    return t, lt, eq


def _clear_first_true_(flat: torch.Tensor, n: int) -> None:
    """Set the first ``n`` True entries of a flat bool tensor to False, in place, chunk by chunk (no int64 copy)."""
    for chunk in flat.split(_CHUNK):  # views into ``flat``
        if n <= 0:
            return
        c = _count(chunk)
        if c <= n:
            if c:
                chunk.fill_(False)
            n -= c
        else:
            chunk[torch.nonzero(chunk).squeeze(1)[:n]] = False
            return


def new_mask(layer: Layer, t: float, prune_ties: int, ties: int) -> torch.Tensor:
    """Alive weights scored above ``t``, plus the tied ones left after pruning the first ``prune_ties`` of them
    (``ties`` is the layer's number of alive scores ``== t``). Flat, on the score's device: see :func:`finish`."""
    keep = (layer.score > t).logical_and_(layer.alive)
    if prune_ties < ties:
        eq = (layer.score == t).logical_and_(layer.alive)
        _clear_first_true_(eq, prune_ties)
        keep.logical_or_(eq)
    return keep


def finish(layer: Layer, flat: torch.Tensor) -> torch.Tensor:
    """A flat mask of ``layer`` in the shape and on the device of the layer's input mask."""
    return flat.reshape(layer.shape).to(layer.out_device)
