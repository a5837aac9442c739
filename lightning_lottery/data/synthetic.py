"""Random but learnable data of any shape: smoke tests of recipes whose real data is not on the machine."""

from __future__ import annotations

import math

import torch

from lightning_lottery.data.tensor_datamodule import Splits, TensorDataModule

__all__ = ["SyntheticImageDataModule"]


class SyntheticImageDataModule(TensorDataModule):
    """Noisy copies of one random prototype per class, as in-memory tensors of shape ``[N, *shape]``.

    Each class ``c`` has a prototype ``p_c`` with N(0, 1) entries; a sample of class ``c`` is
    ``(p_c + ε) / √2`` with fresh N(0, 1) noise ``ε`` (unit variance overall). Labels are uniform. Any
    classifier that can tell the prototypes apart learns it (nearest prototype is near-perfect in high
    dimension). Everything is drawn from one generator seeded with ``seed``; ``flatten`` gives
    ``[N, prod(shape)]``. Training batches are shuffled (``TensorLoader``), evaluation batches are
    ``eval_batch_size`` large.

    Args:
        shape: shape of one input, e.g. ``[3, 32, 32]``.
        num_classes: number of classes (and prototypes).
        train_size: training samples.
        val_size: validation samples.
        test_size: test samples.
        batch_size: training batch size.
        eval_batch_size: validation and test batch size.
        seed: seed of everything drawn.
        flatten: ``[N, prod(shape)]`` inputs.

    Example:
        >>> dm = SyntheticImageDataModule(shape=[1, 8, 8], num_classes=3, train_size=20, batch_size=8)
        >>> dm.setup("fit")
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> x.shape, y.dtype, len(dm.train_dataloader())
        (torch.Size([8, 1, 8, 8]), torch.int64, 3)
    """

    def __init__(
        self,
        shape: list[int] = [3, 32, 32],  # noqa: B006 - never mutated; a list keeps the recipe YAML plain
        num_classes: int = 10,
        train_size: int = 256,
        val_size: int = 64,
        test_size: int = 64,
        batch_size: int = 32,
        eval_batch_size: int = 256,
        seed: int = 0,
        flatten: bool = False,
    ) -> None:
        super().__init__(
            batch_size=batch_size, eval_batch_size=eval_batch_size, val_size=val_size, seed=seed, test_size=test_size
        )
        shape = [int(s) for s in shape]
        self.save_hyperparameters()
        if not shape or any(s < 1 for s in shape):
            raise ValueError(f"shape must be a non-empty list of positive sizes, got {shape}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if train_size < 1 or val_size < 0 or test_size < 0:
            sizes = f"{train_size}, {val_size}, {test_size}"
            raise ValueError(f"need train_size >= 1, val_size >= 0, test_size >= 0; got {sizes}")
        self.shape = shape
        self.num_classes = num_classes
        self.train_size = train_size
        self.flatten = flatten

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input: ``shape``, or ``(prod(shape),)`` when flattened."""
        return (math.prod(self.shape),) if self.flatten else tuple(self.shape)

    def _build_splits(self) -> Splits:
        """Draw the three splits."""
        g = torch.Generator().manual_seed(self.seed)
        prototypes = torch.randn(self.num_classes, *self.shape, generator=g)
        sizes = {"train": self.train_size, "val": self.val_size, "test": self.test_size}
        splits: Splits = {}
        for name, n in sizes.items():
            y = torch.randint(self.num_classes, (n,), generator=g)
            x = (prototypes[y] + torch.randn(n, *self.shape, generator=g)) / math.sqrt(2.0)
            splits[name] = (x.reshape(n, math.prod(self.shape)) if self.flatten else x, y)
        return splits
