"""scikit-learn's bundled 8×8 digits: a tiny offline dataset for tests and smoke runs."""

from __future__ import annotations

from typing import Optional

import torch

from lightning_lottery.data.classes import check_classes, select_classes
from lightning_lottery.data.tensor_datamodule import Splits, TensorDataModule

__all__ = ["DigitsDataModule"]


class DigitsDataModule(TensorDataModule):
    """The 1,797 8×8 handwritten digits of ``sklearn.datasets.load_digits`` (bundled, no download).

    Pixels are scaled to [0, 1] (÷16) and standardised with the training split's mean/std; shape
    ``[N, 64]`` when ``flatten`` (default), else ``[N, 1, 8, 8]``. A permutation seeded by ``seed``
    assigns ``test_size`` images to test, ``val_size`` to validation and the rest to training. ``classes`` keeps
    only those digits, each split restricted after splitting, labels remapped to ``0..k-1`` in the order given.

    Example:
        >>> dm = DigitsDataModule(batch_size=32)
        >>> dm.setup("fit")
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> x.shape, y.dtype
        (torch.Size([32, 64]), torch.int64)
    """

    num_classes: int = 10

    def __init__(
        self,
        batch_size: int = 32,
        eval_batch_size: int = 512,
        val_size: int = 300,
        test_size: int = 300,
        seed: int = 0,
        flatten: bool = True,
        classes: Optional[list[int]] = None,
    ) -> None:
        super().__init__(
            batch_size=batch_size, eval_batch_size=eval_batch_size, val_size=val_size, seed=seed, test_size=test_size
        )
        self.save_hyperparameters()
        if val_size < 0 or test_size < 0 or val_size + test_size >= 1797:
            raise ValueError(f"val_size + test_size must leave training data, got {val_size} + {test_size}")
        self.flatten = flatten
        self.classes = check_classes(classes, 10)
        if self.classes is not None:
            self.num_classes = len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input: ``(64,)`` when flattened, else ``(1, 8, 8)``."""
        return (64,) if self.flatten else (1, 8, 8)

    def _build_splits(self) -> Splits:
        """Load, split and standardise."""
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.as_tensor(digits.data, dtype=torch.float32).div_(16.0)
        y = torch.as_tensor(digits.target, dtype=torch.int64)
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed))
        t, v = self.test_size, self.val_size
        parts = {"test": perm[:t], "val": perm[t : t + v], "train": perm[t + v :]}
        train_x = x[parts["train"]]
        mean, std = train_x.mean(), train_x.std()
        x = (x - mean) / std
        if not self.flatten:
            x = x.reshape(-1, 1, 8, 8)
        return {name: select_classes((x[idx], y[idx]), self.classes) for name, idx in parts.items()}
