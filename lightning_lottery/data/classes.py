"""A class subset of a labelled dataset (``classes: [5, 6, 7, 8, 9]``): the other classes' samples left out, the
labels remapped to ``0..k-1`` in the order given. Used by ticket transfer across tasks (Morcos et al. 2019).

Example:
    >>> import torch
    >>> classes = check_classes([7, 2], 10)
    >>> x, y = select_classes((torch.arange(5.0), torch.tensor([2, 7, 1, 7, 9])), classes)
    >>> x.tolist(), y.tolist()
    ([0.0, 1.0, 3.0], [1, 0, 0])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["check_classes", "select_classes"]


def check_classes(classes: Sequence[int] | None, num_classes: int) -> tuple[int, ...] | None:
    """``classes`` as a tuple, or ``None`` for all; ``ValueError`` naming ``classes`` for an empty, repeated or
    unknown class."""
    if classes is None:
        return None
    values = list(classes) if not isinstance(classes, (str, bytes)) else [classes]
    if not values or any(isinstance(c, bool) or not isinstance(c, int) for c in values):
        raise ValueError(f"classes must be a non-empty list of class indices, got {classes!r}")
    unknown = [c for c in values if not 0 <= c < num_classes]
    if unknown:
        raise ValueError(f"classes: unknown class {unknown[0]} (the data has classes 0..{num_classes - 1})")
    if len(set(values)) != len(values):
        raise ValueError(f"classes must be distinct, got {list(values)}")
    return tuple(values)


def select_classes(split: tuple[Tensor, Tensor], classes: Sequence[int] | None) -> tuple[Tensor, Tensor]:
    """The samples of ``split`` whose label is in ``classes``, labels remapped to their position in ``classes``
    (``None``: ``split`` as it is)."""
    if classes is None:
        return split
    x, y = split
    remap = torch.full((max(int(y.max()) if y.numel() else 0, *classes) + 1,), -1, dtype=torch.int64)
    remap[torch.as_tensor(list(classes))] = torch.arange(len(classes))
    labels = remap[y]
    keep = labels >= 0
    return x[keep], labels[keep]
