"""Batch image augmentation as pure torch functions: whole batches on their device, no per-sample Python loop."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["horizontal_flip", "random_crop", "random_crop_flip", "random_horizontal_flip", "translate"]


def _check_images(x: Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"expected a batch of images [N, C, H, W], got shape {list(x.shape)}")


def translate(x: Tensor, dy: Tensor, dx: Tensor, max_shift: int | None = None) -> Tensor:
    """Shift each image by its own integer offsets, filling with zeros: ``out[n, :, i, j] = x[n, :, i + dy[n],
    j + dx[n]]`` where that pixel exists, else 0.

    A random crop of size H×W from the image zero-padded by ``p`` pixels is ``translate`` with offsets in
    ``[-p, p]``. ``max_shift`` bounds ``|dy|`` and ``|dx|`` (given, it spares a device sync; default: computed).

    Example:
        >>> x = torch.arange(1.0, 10.0).reshape(1, 1, 3, 3)
        >>> translate(x, torch.tensor([1]), torch.tensor([-1]))[0, 0]
        tensor([[0., 4., 5.],
                [0., 7., 8.],
                [0., 0., 0.]])
    """
    _check_images(x)
    n, _, h, w = x.shape
    dy, dx = dy.to(x.device, torch.long), dx.to(x.device, torch.long)
    if dy.shape != (n,) or dx.shape != (n,):
        raise ValueError(f"expected one offset per image ({n}), got {list(dy.shape)} and {list(dx.shape)}")
    if max_shift is None:
        max_shift = int(max(dy.abs().max().item(), dx.abs().max().item())) if n else 0
    pad = int(max_shift)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad)) if pad else x
    rows = (dy + pad).unsqueeze(1) + torch.arange(h, device=x.device)  # [N, H] rows of ``padded``
    cols = (dx + pad).unsqueeze(1) + torch.arange(w, device=x.device)  # [N, W]
    batch = torch.arange(n, device=x.device)[:, None, None]
    # advanced indices around a slice: the result is [N, H, W, C]
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def horizontal_flip(x: Tensor, flip: Tensor) -> Tensor:
    """Mirror the images where the bool tensor ``flip`` ([N]) is true.

    Example:
        >>> x = torch.tensor([[[[1.0, 2.0]]], [[[3.0, 4.0]]]])
        >>> horizontal_flip(x, torch.tensor([True, False])).flatten().tolist()
        [2.0, 1.0, 3.0, 4.0]
    """
    _check_images(x)
    return torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)


def random_crop(x: Tensor, padding: int = 4, generator: torch.Generator | None = None) -> Tensor:
    """Random H×W crops of the images zero-padded by ``padding`` pixels on each side (one offset per image).

    Example:
        >>> x = torch.randn(8, 3, 5, 5)
        >>> random_crop(x, 2, torch.Generator().manual_seed(0)).shape
        torch.Size([8, 3, 5, 5])
    """
    _check_images(x)
    n = x.shape[0]
    offsets = torch.randint(-padding, padding + 1, (2, n), generator=generator, device=x.device)
    return translate(x, offsets[0], offsets[1], max_shift=padding)


def random_horizontal_flip(x: Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """Mirror each image with probability ``p``.

    Example:
        >>> x = torch.randn(4, 1, 2, 2)
        >>> torch.equal(random_horizontal_flip(x, p=1.0), x.flip(-1))
        True
    """
    _check_images(x)
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < p
    return horizontal_flip(x, flip)


def random_crop_flip(x: Tensor, padding: int = 4, generator: torch.Generator | None = None) -> Tensor:
    """The standard CIFAR augmentation: a random crop with ``padding`` zero pixels, then a random horizontal flip.

    Example:
        >>> x = torch.randn(16, 3, 32, 32)
        >>> a = random_crop_flip(x, generator=torch.Generator().manual_seed(1))
        >>> b = random_crop_flip(x, generator=torch.Generator().manual_seed(1))
        >>> a.shape, torch.equal(a, b)
        (torch.Size([16, 3, 32, 32]), True)
    """
    return random_horizontal_flip(random_crop(x, padding, generator), 0.5, generator)
