"""A datamodule base for datasets held as in-memory tensors: splits built once, batched by ``TensorLoader``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from lightning import LightningDataModule
from torch import Tensor

from lightning_lottery.data.tensor_loader import TensorLoader

__all__ = ["Splits", "TensorDataModule"]

#: ``{"train": (x, y), "val": (x, y), "test": (x, y)}``: inputs and labels of each split.
Splits = dict[str, tuple[Tensor, Tensor]]


class TensorDataModule(LightningDataModule):
    """Train/val/test splits as in-memory ``(inputs, labels)`` tensors, served by :class:`TensorLoader`.

    Subclasses implement ``_build_splits`` (return the three splits); ``setup`` calls it once and caches the
    result, so calling ``setup`` again (a new fit with the same datamodule) costs nothing, and the loaders call
    ``setup`` themselves when it has not run. Training batches (``batch_size``) are shuffled with ``seed``, the
    shuffle epoch following the trainer's epoch when one is attached; validation and test batches
    (``eval_batch_size``) come in a fixed order. ``val_dataloader`` returns no loader (``[]``) when ``val_size``
    is 0, ``test_dataloader`` likewise when ``test_size`` is 0; ``test_size=None`` (the data fixes the test
    split) always gets a test loader. Under DDP each process gets its shard of every split (``batch_size`` is per
    process, as with Lightning's ``DistributedSampler``); training shards are equal in size.

    Example:
        >>> import torch
        >>> class Ramp(TensorDataModule):
        ...     def _build_splits(self) -> Splits:
        ...         x, y = torch.arange(10.0).unsqueeze(1), torch.arange(10) % 2
        ...         return {"train": (x[:8], y[:8]), "val": (x[8:], y[8:]), "test": (x[:0], y[:0])}
        >>> dm = Ramp(batch_size=3, eval_batch_size=4, val_size=2, seed=0, test_size=0)
        >>> len(dm.train_dataloader()), [b[0].flatten().tolist() for b in dm.val_dataloader()], dm.test_dataloader()
        (3, [[8.0, 9.0]], [])
    """

    def __init__(
        self,
        *,
        batch_size: int,
        eval_batch_size: int,
        val_size: int,
        seed: int,
        test_size: int | None = None,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.val_size = val_size
        self.test_size = test_size
        self.seed = seed
        self._splits: Splits | None = None

    def _build_splits(self) -> Splits:
        """The ``"train"``, ``"val"`` and ``"test"`` splits (called once, by the first ``setup``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _build_splits")

    def _hold_out_val(
        self, train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], transform: Callable[[Tensor], Tensor]
    ) -> Splits:
        """Splits of data with a fixed test set: ``val_size`` training samples (a permutation seeded by ``seed``)
        become the validation split; ``transform`` converts the inputs of each split after splitting."""
        x_train, y_train = train
        if self.val_size >= len(x_train):
            raise ValueError(f"val_size {self.val_size} leaves no training images (the files hold {len(x_train)})")
        perm = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(self.seed))
        val_idx, train_idx = perm[: self.val_size], perm[self.val_size :]
        return {
            "train": (transform(x_train[train_idx]), y_train[train_idx]),
            "val": (transform(x_train[val_idx]), y_train[val_idx]),
            "test": (transform(test[0]), test[1]),
        }

    def setup(self, stage: str | None = None) -> None:
        """Build the splits (once; later calls return immediately)."""
        if self._splits is None:
            self._splits = self._build_splits()

    def _split(self, name: str) -> tuple[Tensor, Tensor]:
        if self._splits is None:
            self.setup()
        assert self._splits is not None
        return self._splits[name]

    def _shard(self) -> dict[str, int]:
        """This process's place among the data-parallel processes of the attached trainer."""
        if self.trainer is None or self.trainer.world_size == 1:
            return {}
        return {"num_replicas": self.trainer.world_size, "rank": self.trainer.global_rank}

    def train_dataloader(self) -> TensorLoader:
        """Shuffled training batches; the shuffle epoch follows the trainer's epoch when attached."""
        loader = TensorLoader(*self._split("train"), batch_size=self.batch_size, shuffle=True, seed=self.seed,
                              even_shards=True, **self._shard())
        if self.trainer is not None:
            loader.set_epoch(self.trainer.current_epoch)
        return loader

    def val_dataloader(self) -> TensorLoader | list[TensorLoader]:
        """Validation batches in a fixed order (no loader when ``val_size`` is 0)."""
        if self.val_size == 0:
            return []
        return TensorLoader(*self._split("val"), batch_size=self.eval_batch_size, **self._shard())

    def test_dataloader(self) -> TensorLoader | list[TensorLoader]:
        """Test batches in a fixed order (no loader when ``test_size`` is 0)."""
        if self.test_size == 0:
            return []
        return TensorLoader(*self._split("test"), batch_size=self.eval_batch_size, **self._shard())
