"""Early-bird tickets (You et al., ICLR 2020): the settings, the window of recent masks and the declaration rule.

During a level's training, every ``every`` steps the mask the level's pruning would produce from the current
weights is drawn; its *mask distance* is the largest normalised Hamming distance (the fraction of positions that
differ) to each of the previous ``window`` masks. Once ``window`` earlier masks are held and every distance is
below ``eps``, the ticket is declared at that step: the mask has stopped changing, and training on would not move
it. Pure torch (no Lightning); :mod:`lightning_lottery.early_bird_callback` drives it from inside a fit.

Example:
    >>> import torch
    >>> window = MaskWindow(window=2, eps=0.1)
    >>> m = {"w": torch.tensor([True, True, False, False])}
    >>> [window.add(step, m) for step in (10, 20, 30)], window.found
    ([None, 0.0, 0.0], 30)
    >>> mask_distance(m, {"w": torch.tensor([True, False, False, False])})
    0.25
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from lightning_lottery.rewind import RewindStep

__all__ = ["EarlyBird", "MaskWindow", "mask_distance"]


@dataclass(frozen=True)
class EarlyBird:
    """``lottery.early_bird``: draw the level's next mask during training and stop once it has settled.

    Args:
        every: how often the mask is drawn, in iterations (``"100it"`` or ``100``).
        window: how many previous masks the new one is compared with.
        eps: the declaration threshold of the normalised Hamming distance, in (0, 1).
        stop: stop the level's training when the ticket is declared and prune from the weights of that step
            (``false``: only log ``mask_distance`` and record the step).

    Example:
        >>> EarlyBird(every="50it").interval
        50
        >>> EarlyBird(eps=0)
        Traceback (most recent call last):
        ...
        ValueError: lottery.early_bird.eps must be in (0, 1), got 0
    """

    every: str = "100it"
    window: int = 5
    eps: float = 0.1
    stop: bool = True

    def __post_init__(self) -> None:
        every = f"{self.every}it" if isinstance(self.every, int) and not isinstance(self.every, bool) else self.every
        try:
            step = RewindStep.parse(every)
        except (ValueError, TypeError) as err:
            raise ValueError(f"lottery.early_bird.every: {err}") from None
        if step.unit != "it" or step.amount <= 0:
            raise ValueError(f"lottery.early_bird.every must be a positive number of iterations like '100it', "
                             f"got {self.every!r}")
        object.__setattr__(self, "every", str(step))
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"lottery.early_bird.window must be an integer >= 1, got {self.window!r}")
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) or not 0.0 < self.eps < 1.0:
            raise ValueError(f"lottery.early_bird.eps must be in (0, 1), got {self.eps!r}")
        if not isinstance(self.stop, bool):
            raise ValueError(f"lottery.early_bird.stop must be true or false, got {self.stop!r}")

    @property
    def interval(self) -> int:
        """``every`` in iterations."""
        return RewindStep.parse(self.every).amount

    def changed(self) -> dict[str, Any]:
        """The settings away from their defaults: what identifies the experiment (``{}`` for all defaults)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) != f.default}


def mask_distance(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """The normalised Hamming distance of two masks: positions that differ / positions, over all tensors."""
    if a.keys() != b.keys():
        raise ValueError(f"masks over different parameters: {sorted(a)} vs {sorted(b)}")
    differ = total = 0
    for name, m in a.items():
        other = b[name]
        if m.shape != other.shape:
            raise ValueError(f"mask {name!r}: shapes {list(m.shape)} and {list(other.shape)} differ")
        differ += int(torch.count_nonzero(m.bool() != other.bool().to(m.device)))
        total += m.numel()
    return differ / total if total else 0.0


class MaskWindow:
    """The last ``window`` masks drawn and the declaration rule; its state goes into a checkpoint.

    :meth:`add` returns the new mask's distance (the largest to the masks held; ``None`` for the first), and
    declares the ticket (``found`` = that step, ``mask`` = that mask) when ``window`` masks were held and every
    distance is below ``eps``. After the declaration nothing changes.
    """

    def __init__(self, window: int, eps: float) -> None:
        self.window, self.eps = window, eps
        self.masks: list[dict[str, torch.Tensor]] = []
        self.found: int | None = None
        self.mask: dict[str, torch.Tensor] | None = None
        self.distances: list[dict[str, float]] = []  # {step, mask_distance} per draw after the first

    def add(self, step: int, mask: Mapping[str, torch.Tensor]) -> float | None:
        """Take the mask drawn at ``step``; its distance to the window (``None`` when the window is empty)."""
        new = {n: m.detach().to("cpu", torch.bool, copy=True) for n, m in mask.items()}
        distances = [mask_distance(new, old) for old in self.masks]
        distance = max(distances) if distances else None
        if distance is not None:
            self.distances.append({"step": step, "mask_distance": distance})
        if self.found is None and len(distances) == self.window and all(d < self.eps for d in distances):
            self.found, self.mask = step, new
        self.masks = (self.masks + [new])[-self.window:]
        return distance

    def state_dict(self) -> dict[str, Any]:
        return {"masks": self.masks, "found": self.found, "mask": self.mask, "distances": self.distances}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.masks = list(state["masks"])
        self.found, self.mask = state["found"], state["mask"]
        self.distances = list(state["distances"])
