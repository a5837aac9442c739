"""Pruning: from scores + the current mask + rates to the next mask. Pure torch, no Lightning.

One call of :func:`prune` is one level of iterative pruning: it removes a fraction of the weights that are
*still alive* (pruned weights are never candidates and never revived), either per parameter (``"layerwise"``)
or across a pool of parameters with a single score threshold (``"global"``). :func:`prune_to` is one-shot
pruning to a target fraction of weights remaining.

Selection is exact and deterministic: the weights with the smallest scores go first and, among equal scores,
the one with the lower flat index (for ``"global"``: the lower index in the concatenation of the parameters in
mask order). The k-th smallest score is found by selection on a small bracket of candidates (located by
sampling), never by sorting all the scores, so global pruning of 1e8 weights takes a few vectorized passes:
see :mod:`lightning_lottery.selection`, which does the selection; this module decides how many weights go.

Example:
    >>> import torch
    >>> from lightning_lottery.pruning import prune
    >>> scores = {"a": torch.tensor([4.0, 1.0, 3.0, 2.0]), "b": torch.tensor([0.5, 5.0])}
    >>> mask = {"a": torch.ones(4, dtype=torch.bool), "b": torch.ones(2, dtype=torch.bool)}
    >>> prune(scores, mask, 0.5, scope="layerwise")
    {'a': tensor([ True, False,  True, False]), 'b': tensor([False,  True])}
    >>> prune(scores, mask, 0.5, scope="global")
    {'a': tensor([ True, False,  True, False]), 'b': tensor([False,  True])}
"""

from __future__ import annotations

import fnmatch
import math
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from fractions import Fraction
from numbers import Integral, Real
from typing import Literal

import torch

from lightning_lottery.structured import (MASK_TYPES, broadcast, project_2_4, protect_output, random_units_like,
                                         unit_mask, unit_scores)
from lightning_lottery.masks import Mask
from lightning_lottery.selection import Layer, PruningError, finish, new_mask, prepare, threshold

__all__ = ["PruningError", "Scope", "Structure", "prune", "prune_to", "prune_weights", "pruning_count",
           "random_mask_like", "resolve_rates"]

Scope = Literal["global", "layerwise"]
#: ``"unstructured"``: single weights; ``"units"``: whole rows / filters (:mod:`lightning_lottery.structured`).
Structure = Literal["unstructured", "units"]

# -------------------------------------------------------------------------------------------- counting


def _exact(x: float) -> Fraction:
    """``x`` as the decimal it is written as (``0.2`` is exactly 1/5), so counts do not depend on binary rounding."""
    return Fraction(repr(float(x)))


def _round_half_up(x: Fraction) -> int:
    return math.floor(x + Fraction(1, 2))


def _check_fraction(
    value: object, what: str, *, low_open: bool, high_open: bool, low: float = 0.0, high: float = 1.0
) -> float:
    """``value`` as a float, or ``PruningError`` naming it if it is not a finite number in the interval."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if ok:
        v = float(value)  # type: ignore[arg-type]
        ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise PruningError(f"{what} must be a number in {interval}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def pruning_count(alive: int, rate: float) -> int:
    """How many of ``alive`` weights one level at ``rate`` removes: ``floor(rate * alive + 0.5)``.

    That is ``rate * alive`` rounded to the nearest integer, halves rounded up. The product is computed exactly
    with ``rate`` taken as the decimal it is written as (``0.2`` means 1/5), so the count never depends on
    binary floating-point rounding.

    Example:
        >>> pruning_count(1000, 0.2), pruning_count(150528, 0.2), pruning_count(5, 0.5), pruning_count(0, 0.2)
        (200, 30106, 3, 0)
    """
    if isinstance(alive, bool) or not isinstance(alive, Integral) or alive < 0:
        raise PruningError(f"alive must be a non-negative integer, got {alive!r}")
    r = _check_fraction(rate, "rate", low_open=False, high_open=False)
    return _round_half_up(_exact(r) * int(alive))


def _keep_count(total: int, target: float) -> int:
    """Weights kept out of ``total`` at a remaining fraction ``target``: ``floor(target * total + 0.5)``."""
    return _round_half_up(_exact(target) * total)


# --------------------------------------------------------------------------------------------- rates


def _resolve(
    names: Sequence[str],
    default: float,
    overrides: Mapping[str, float],
    *,
    what: str,
    default_check: dict[str, bool],
    override_check: dict[str, bool],
) -> tuple[dict[str, float], set[str]]:
    """Per-name value from a default and fnmatch-pattern overrides (last matching pattern wins)."""
    value = _check_fraction(default, what, **default_check)
    overrides = overrides or {}
    out = {n: value for n in names}
    overridden: set[str] = set()
    for pattern, v in overrides.items():
        if not isinstance(pattern, str):
            raise PruningError(f"{what} override pattern must be a string, got {pattern!r}")
        v = _check_fraction(v, f"{what} override {pattern!r}", **override_check)
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise PruningError(
                f"{what} override pattern {pattern!r} matches no prunable parameter (names: {list(names)})"
            )
        for n in hits:
            out[n] = v
            overridden.add(n)
    return out, overridden


_RATE_DEFAULT = {"low_open": True, "high_open": True}
_RATE_OVERRIDE = {"low_open": False, "high_open": True}
_TARGET_DEFAULT = {"low_open": True, "high_open": False}
_TARGET_OVERRIDE = {"low_open": True, "high_open": False}


def resolve_rates(names: Sequence[str], rate: float, rates: Mapping[str, float]) -> dict[str, float]:
    """The pruning rate of each parameter name.

    ``rate`` (in ``(0, 1)``) applies to every name unless a key of ``rates`` matches it: keys are fnmatch patterns
    over parameter names (``"fc3.weight"``, ``"features.*"``) and, when several match, the last one in mapping
    order wins. An override is in ``[0, 1)``; ``0`` means the parameter is never pruned. A pattern that matches
    no name, or a value out of range, raises :class:`PruningError` naming it.

    Example:
        >>> resolve_rates(["conv.weight", "fc1.weight", "fc2.weight"], 0.2, {"fc*": 0.1, "fc2.weight": 0.0})
        {'conv.weight': 0.2, 'fc1.weight': 0.1, 'fc2.weight': 0.0}
    """
    return _resolve(
        names, rate, rates, what="rate", default_check=_RATE_DEFAULT, override_check=_RATE_OVERRIDE
    )[0]


# -------------------------------------------------------------------------------------------- levels


def _warn(message: str) -> None:
    """``warnings.warn`` attributed to the first caller outside this module."""
    level, frame = 1, sys._getframe(0)
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        level, frame = level + 1, frame.f_back
    warnings.warn(message, stacklevel=level)


def _clamp(layer: Layer, count: int, min_alive: int) -> int:
    """``count`` limited so that ``min_alive`` weights stay alive, with a warning when that changes it."""
    limit = max(0, layer.n_alive - min_alive)
    if count > limit:
        _warn(
            f"pruning {count} of the {layer.n_alive} alive weights of {layer.name!r} would leave fewer than "
            f"min_alive={min_alive}; pruning {limit} instead"
        )
        return limit
    return count


def _prune_layer(layer: Layer, count: int) -> torch.Tensor:
    """Remove the ``count`` alive weights of one layer with the smallest scores (lower index first on ties)."""
    if count <= 0:
        return finish(layer, layer.alive.clone())
    t, lt, eq = threshold([layer], count)
    return finish(layer, new_mask(layer, t, count - lt[0], eq[0]))


def _prune_pool(pool: list[Layer], k: int, min_alive: int) -> dict[str, torch.Tensor]:
    """Remove the ``k`` alive weights of the pool with the smallest scores, with one threshold."""
    if k <= 0 or not pool:
        return {layer.name: finish(layer, layer.alive.clone()) for layer in pool}
    if len({layer.score.dtype for layer in pool}) > 1:  # one dtype, so that one threshold compares exactly
        pool = [replace(layer, score=layer.score.to(torch.float64)) for layer in pool]
    t, lt, eq = threshold(pool, k)
    ties_left = k - sum(lt)
    out = {}
    for layer, n_lt, n_eq in zip(pool, lt, eq):
        take = min(n_eq, ties_left)
        ties_left -= take
        count = n_lt + take
        clamped = _clamp(layer, count, min_alive)
        if clamped < count:  # a subset of what the threshold would prune: the layer's own smallest scores
            out[layer.name] = _prune_layer(layer, clamped)
        else:
            out[layer.name] = finish(layer, new_mask(layer, t, take, n_eq))
    return out


def _check_structure(structure: object) -> str:
    if structure not in ("unstructured", "units"):
        raise PruningError(f"structure must be 'unstructured' or 'units', got {structure!r}")
    return structure  # type: ignore[return-value]


def _check_mask_type(mask_type: object) -> str:
    if mask_type not in MASK_TYPES:
        raise PruningError(f"mask_type must be one of {', '.join(MASK_TYPES)}, got {mask_type!r}")
    return mask_type  # type: ignore[return-value]


def _by_units(level: Callable[..., Mask], scores: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor],
              value: float, scope: str, overrides: dict[str, dict[str, float]], norm: str, min_alive: int) -> Mask:
    """``level`` (:func:`prune` or :func:`prune_to`) on unit scores and unit masks, broadcast back over the weights.
    Global scope compares the norms per weight (:func:`lightning_lottery.structured.unit_scores`)."""
    units = unit_mask(mask)
    us = unit_scores(scores, mask, norm, per_weight=scope == "global")  # type: ignore[arg-type]
    new = level(us, {n: u.to(us[n].device) for n, u in units.items()}, value, scope=scope, min_alive=min_alive,
                **overrides)
    return broadcast(mask, new)


def _check_common(scope: object, min_alive: object) -> None:
    if scope not in ("global", "layerwise"):
        raise PruningError(f"scope must be 'global' or 'layerwise', got {scope!r}")
    if isinstance(min_alive, bool) or not isinstance(min_alive, int) or min_alive < 0:
        raise PruningError(f"min_alive must be a non-negative integer, got {min_alive!r}")


# ---------------------------------------------------------------------------------------------- public


def prune(
    scores: Mapping[str, torch.Tensor],
    mask: Mapping[str, torch.Tensor],
    rate: float,
    *,
    scope: Scope = "layerwise",
    rates: Mapping[str, float] = {},  # noqa: B006 - read only
    min_alive: int = 1,
    structure: Structure = "unstructured",
    unit_norm: str = "l1",
    mask_type: str = "any",
) -> Mask:
    """One level of iterative pruning: remove a fraction ``rate`` of the weights that are still alive.

    ``mask_type="2:4"`` then projects the new mask to 2:4 (:func:`lightning_lottery.structured.project_2_4`: of
    every block of 4 along a unit's fan-in the 2 best-scored alive weights stay), so it may remove more.

    ``structure="units"`` removes whole units instead (rows of a Linear weight, filters of a Conv weight), scored by
    the ``unit_norm`` (``"l1"`` / ``"l2"``) of their alive fan-in scores, the output layer (the last parameter) never:
    :mod:`lightning_lottery.structured` (``rate`` is then the fraction of alive *units*).

    ``"layerwise"``: each parameter loses ``pruning_count(alive, its rate)`` weights (rates from
    :func:`resolve_rates`). ``"global"``: the parameters without an override in ``rates`` form one pool that loses
    ``pruning_count(alive in the pool, rate)`` weights below one score threshold; overridden parameters are pruned
    layerwise at their own rate. The smallest scores go first; on equal scores the lower flat index goes first
    (global: index in the concatenation in mask order). Pruned weights are never candidates and never revived.
    No parameter is left with fewer than ``min_alive`` alive weights: its count is clamped, with a warning
    (for global scope the pool then loses fewer weights; nothing is redistributed).

    Returns new bool masks on the input masks' devices; the input is not modified. Raises :class:`PruningError`
    for NaN scores, scores and mask that disagree in names or shapes, and invalid rates or patterns.

    Example:
        >>> import torch
        >>> s = {"w": torch.tensor([1.0, 1.0, 1.0, 0.5, 2.0])}
        >>> m = {"w": torch.tensor([True, True, True, True, False])}
        >>> prune(s, m, 0.5)["w"]  # 2 of the 4 alive: the 0.5, then the lowest-index 1.0
        tensor([False,  True,  True, False, False])
    """
    _check_common(scope, min_alive)
    if _check_mask_type(mask_type) != "any":
        return project_2_4(prune(scores, mask, rate, scope=scope, rates=rates, min_alive=min_alive,
                                 structure=structure, unit_norm=unit_norm), scores)
    if _check_structure(structure) == "units":
        return _by_units(prune, scores, mask, rate, scope, {"rates": protect_output(list(mask), rates, 0.0)},
                         unit_norm, min_alive)
    layers = prepare(scores, mask)
    per_name, overridden = _resolve(
        [layer.name for layer in layers], rate, rates, what="rate",
        default_check=_RATE_DEFAULT, override_check=_RATE_OVERRIDE,
    )  # fmt: skip
    out: dict[str, torch.Tensor] = {}
    pool = [layer for layer in layers if scope == "global" and layer.name not in overridden]
    if pool:
        k = pruning_count(sum(layer.n_alive for layer in pool), per_name[pool[0].name])
        out.update(_prune_pool(pool, k, min_alive))
    for layer in layers:
        if layer.name not in out:
            count = _clamp(layer, pruning_count(layer.n_alive, per_name[layer.name]), min_alive)
            out[layer.name] = _prune_layer(layer, count)
    return {layer.name: out[layer.name] for layer in layers}


def prune_to(
    scores: Mapping[str, torch.Tensor],
    mask: Mapping[str, torch.Tensor],
    target: float,
    *,
    scope: Scope = "layerwise",
    targets: Mapping[str, float] = {},  # noqa: B006 - read only
    min_alive: int = 1,
    structure: Structure = "unstructured",
    unit_norm: str = "l1",
    mask_type: str = "any",
) -> Mask:
    """One-shot pruning to a fraction ``target`` in ``(0, 1]`` of weights remaining.

    ``structure="units"``: of *units* remaining (the output layer keeps all), as in :func:`prune`.
    ``mask_type="2:4"``: the result projected to 2:4, as in :func:`prune`.

    The kept count is ``floor(target * total + 0.5)`` of each parameter's total (``"layerwise"``) or of the pool's
    total (``"global"``, the parameters without an override in ``targets``). ``targets`` maps fnmatch patterns to
    per-parameter remaining fractions in ``(0, 1]`` (``1`` = untouched; the last matching pattern wins); those
    parameters are pruned layerwise. Weights already pruned count as removed and are never revived: if fewer
    than the target are alive, nothing changes. Selection, ties, ``min_alive`` and errors are as in :func:`prune`.

    Example:
        >>> import torch
        >>> s = {"w": torch.arange(10.0)}
        >>> prune_to(s, {"w": torch.ones(10, dtype=torch.bool)}, 0.3)["w"].nonzero().flatten().tolist()
        [7, 8, 9]
    """
    _check_common(scope, min_alive)
    if _check_mask_type(mask_type) != "any":
        return project_2_4(prune_to(scores, mask, target, scope=scope, targets=targets, min_alive=min_alive,
                                    structure=structure, unit_norm=unit_norm), scores)
    if _check_structure(structure) == "units":
        return _by_units(prune_to, scores, mask, target, scope,
                         {"targets": protect_output(list(mask), targets, 1.0)}, unit_norm, min_alive)
    layers = prepare(scores, mask)
    per_name, overridden = _resolve(
        [layer.name for layer in layers], target, targets, what="target",
        default_check=_TARGET_DEFAULT, override_check=_TARGET_OVERRIDE,
    )  # fmt: skip
    out: dict[str, torch.Tensor] = {}
    pool = [layer for layer in layers if scope == "global" and layer.name not in overridden]
    if pool:
        n_alive = sum(layer.n_alive for layer in pool)
        keep = _keep_count(sum(layer.numel for layer in pool), per_name[pool[0].name])
        out.update(_prune_pool(pool, max(0, n_alive - keep), min_alive))
    for layer in layers:
        if layer.name not in out:
            count = max(0, layer.n_alive - _keep_count(layer.numel, per_name[layer.name]))
            out[layer.name] = _prune_layer(layer, _clamp(layer, count, min_alive))
    return {layer.name: out[layer.name] for layer in layers}


def random_mask_like(mask: Mapping[str, torch.Tensor], generator: torch.Generator | None = None,
                     structure: Structure = "unstructured") -> Mask:
    """A mask with the same number of alive weights per parameter as ``mask``, at uniformly random positions.

    The random-mask control of the lottery-ticket paper. Positions are drawn on CPU (reproducible across devices).
    ``structure="units"``: whole units shuffled instead (same alive units per parameter):
    :func:`lightning_lottery.random_units_like`.

    Example:
        >>> import torch
        >>> m = {"w": torch.tensor([True, True, False, False, False])}
        >>> int(random_mask_like(m, torch.Generator().manual_seed(0))["w"].sum())
        2
    """
    if _check_structure(structure) == "units":
        return random_units_like(mask, generator)
    out: Mask = {}
    for name, m in mask.items():
        flat = torch.zeros(m.numel(), dtype=torch.bool)
        alive = int(torch.count_nonzero(m))
        flat[torch.randperm(m.numel(), generator=generator)[:alive]] = True
        out[name] = flat.view(m.shape).to(m.device)
    return out


def prune_weights(weights: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor], rate: float,
                  score: Callable[..., Mapping[str, torch.Tensor]], generator: torch.Generator | None = None,
                  **options: object) -> Mask:
    """One level on the parameters ``weights`` themselves: ``score(weights, generator=generator)`` (a criterion of
    :mod:`lightning_lottery.criteria`), then :func:`prune` with ``options`` (``scope``, ``rates``, ``structure``,
    ``unit_norm``, ``mask_type``, ...) on the weights' devices. What ``LotteryTicket.prune`` runs.

    Example:
        >>> w = {"a": torch.tensor([[3.0, -1.0], [0.1, 0.2]]), "out": torch.ones(2, 2)}
        >>> m = {n: torch.ones(2, 2, dtype=torch.bool) for n in w}
        >>> magnitude = lambda ws, generator=None: {n: t.abs() for n, t in ws.items()}
        >>> prune_weights(w, m, 0.5, magnitude, structure="units")["a"].tolist()
        [[True, True], [False, False]]
    """
    detached = {n: p.detach() for n, p in weights.items()}
    scores = score(detached, generator=generator)
    on_device = {n: m.to(detached[n].device) for n, m in mask.items()}
    return prune(scores, on_device, rate, **options)  # type: ignore[arg-type]
