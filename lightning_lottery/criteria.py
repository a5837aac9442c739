"""Criteria: how important each weight is. Pure torch, no Lightning.

A criterion maps the prunable weights (by parameter name) to one float32 score tensor per name, of the same
shape and on the same device as the weight. A higher score means more important: pruning removes the weights
with the smallest scores. Criteria are registered by name so that recipes can refer to them as strings.

A criterion registered with ``data=True`` scores with the model and data: it is called as
``criterion(weights, generator, model=model, batches=batches)`` with ``weights`` the model's own parameters and
``batches`` the prune set (:mod:`lightning_lottery.saliency`); ``rounds`` is how many rounds of the exponential
density schedule pruning at initialization uses with it by default. The pruning-at-initialization scores
``snip``, ``grasp`` (signed: the highest kept) and ``synflow`` (100 rounds) are registered by
:mod:`lightning_lottery.saliency` (imported by the configuration), which keeps this module free of the pruning code.

Example:
    >>> import torch
    >>> from lightning_lottery.criteria import get_criterion
    >>> scores = get_criterion("magnitude")({"fc.weight": torch.tensor([[-3.0, 0.5], [2.0, -1.0]])})
    >>> scores["fc.weight"]
    tensor([[3.0000, 0.5000],
            [2.0000, 1.0000]])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

#: ``criterion(weights, generator=None) -> {name: float32 score, same shape and device as the weight}``.
Criterion = Callable[..., dict[str, torch.Tensor]]

_REGISTRY: dict[str, Criterion] = {}


@dataclass(frozen=True)
class CriterionInfo:
    """How a criterion is called: ``data`` (with ``model=`` and ``batches=``) and its default pruning rounds."""

    data: bool = False
    rounds: int = 1


_INFO: dict[str, CriterionInfo] = {}


def register_criterion(name: str, *, overwrite: bool = False, data: bool = False, rounds: int = 1
                       ) -> Callable[[Criterion], Criterion]:
    """Decorator that registers a criterion under ``name`` (returns the function unchanged).

    Registering a name twice raises ``ValueError`` unless ``overwrite=True``. ``data=True``: the criterion takes
    ``model=`` and ``batches=`` keywords; ``rounds``: its default rounds when pruning at initialization.

    Example:
        >>> @register_criterion("negative-magnitude-doc", overwrite=True)
        ... def _neg(weights, generator=None):
        ...     return {n: -w.detach().abs().float() for n, w in weights.items()}
        >>> "negative-magnitude-doc" in available_criteria()
        True
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a criterion name must be a non-empty string, got {name!r}")

    def decorator(fn: Criterion) -> Criterion:
        if not callable(fn):
            raise TypeError(f"criterion {name!r} must be callable, got {type(fn).__name__}")
        if name in _REGISTRY and _REGISTRY[name] is not fn and not overwrite:
            raise ValueError(f"criterion {name!r} is already registered (pass overwrite=True to replace it)")
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ValueError(f"criterion {name!r}: rounds must be a positive integer, got {rounds!r}")
        _REGISTRY[name] = fn
        _INFO[name] = CriterionInfo(bool(data), rounds)
        return fn

    return decorator


def get_criterion(name: str) -> Criterion:
    """The criterion registered as ``name``; ``ValueError`` naming it and listing the available ones otherwise.

    Example:
        >>> get_criterion("nope")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: unknown criterion 'nope'; available criteria: ...magnitude, random...
    """
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown criterion {name!r}; available criteria: {', '.join(available_criteria())}"
        ) from None


def criterion_info(name: str) -> CriterionInfo:
    """Whether the criterion ``name`` takes data, and its default rounds (``ValueError`` for an unknown name).

    Example:
        >>> criterion_info("magnitude")
        CriterionInfo(data=False, rounds=1)
    """
    get_criterion(name)
    return _INFO.get(name, CriterionInfo())


def available_criteria() -> list[str]:
    """The registered criterion names, sorted.

    Example:
        >>> {"magnitude", "random"} <= set(available_criteria())
        True
    """
    return sorted(_REGISTRY)


# ------------------------------------------------------------------------------------------- built-ins


@register_criterion("magnitude")
@torch.no_grad()
def magnitude_scores(
    weights: Mapping[str, torch.Tensor], generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """``|w|`` as float32 (the generator is unused): the criterion of the lottery ticket papers.

    Example:
        >>> magnitude_scores({"w": torch.tensor([-2.0, 1.0])})["w"]
        tensor([2., 1.])
    """
    del generator  # deterministic
    return {name: torch.abs(w.detach()).to(torch.float32) for name, w in weights.items()}


@register_criterion("random")
@torch.no_grad()
def random_scores(
    weights: Mapping[str, torch.Tensor], generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """Uniform ``[0, 1)`` scores: the random-pruning control.

    Scores are drawn on the CPU from ``generator`` (the global CPU generator if ``None``), one tensor per name
    in mapping order, and then moved to the weight's device, so that a seed gives the same scores on any device.

    Example:
        >>> w = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
        >>> s1 = random_scores(w, torch.Generator().manual_seed(0))
        >>> s2 = random_scores(w, torch.Generator().manual_seed(0))
        >>> all(torch.equal(s1[n], s2[n]) for n in w)
        True
    """
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(
            f"the random criterion draws on the CPU for reproducibility; got a generator on {generator.device}"
        )
    return {
        name: torch.rand(tuple(w.shape), generator=generator, dtype=torch.float32).to(w.device)
        for name, w in weights.items()
    }

