"""A dataloader over in-memory tensors: batches by indexing, no per-sample Python work."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

__all__ = ["TensorLoader"]


def _epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit generator seed from (seed, epoch); distinct pairs give unrelated streams."""
    state = np.random.SeedSequence([seed % 2**64, epoch % 2**64]).generate_state(1, dtype=np.uint64)
    return int(state[0]) >> 1


class TensorLoader:
    """Iterate over batches of equally long tensors, sliced along dimension 0.

    Each batch is a tuple with one tensor per input tensor, gathered with ``t[idx]`` (a copy, never a
    view of the data). When ``shuffle`` is true, every pass draws a permutation from a generator seeded
    with ``(seed, epoch)``; the epoch counter starts at 0 and increments on each pass (when its first batch
    is drawn), so a loader built again with the same seed replays the same sequence of epochs.
    ``set_epoch`` sets the counter.

    Lightning accepts it as a train/val/test dataloader (an iterable with ``__len__``). Under data parallelism
    (``num_replicas`` processes), every process draws the same permutation and takes every ``num_replicas``-th
    sample from position ``rank`` (as ``DistributedSampler`` does); with ``even_shards`` the few samples that would
    make shards unequal are left out of the pass, so every process runs the same number of batches (needed for
    training under DDP), otherwise every sample is used exactly once (exact evaluation).

    Example:
        >>> x, y = torch.arange(10.0).unsqueeze(1), torch.arange(10)
        >>> loader = TensorLoader(x, y, batch_size=4)
        >>> len(loader), [b[1].tolist() for b in loader]
        (3, [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]])
        >>> len(TensorLoader(x, y, batch_size=4, drop_last=True))
        2
        >>> [b[1].tolist() for b in TensorLoader(x, y, batch_size=4, num_replicas=3, rank=1)]
        [[1, 4, 7]]
    """

    def __init__(
        self,
        *tensors: Tensor,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        even_shards: bool = False,
    ) -> None:
        if not tensors:
            raise ValueError("TensorLoader needs at least one tensor")
        n = tensors[0].shape[0] if tensors[0].dim() > 0 else -1
        if n < 0 or any(t.dim() == 0 or t.shape[0] != n for t in tensors):
            sizes = [tuple(t.shape) for t in tensors]
            raise ValueError(f"TensorLoader: tensors must share their first dimension, got shapes {sizes}")
        if int(batch_size) < 1:
            raise ValueError(f"TensorLoader: batch_size must be >= 1, got {batch_size}")
        self.tensors: tuple[Tensor, ...] = tensors
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        if not 0 <= int(rank) < int(num_replicas):
            raise ValueError(f"TensorLoader: rank must be in [0, {num_replicas}), got {rank}")
        self.num_replicas, self.rank, self.even_shards = int(num_replicas), int(rank), bool(even_shards)
        self.epoch = 0

    @property
    def num_samples(self) -> int:
        """Number of samples (rows) in the tensors."""
        return int(self.tensors[0].shape[0])

    @property
    def shard_size(self) -> int:
        """Number of samples this process sees per pass."""
        n, r = self.num_samples, self.num_replicas
        if self.even_shards:
            return n // r
        return len(range(self.rank, n, r))

    def __len__(self) -> int:
        """Number of batches per pass."""
        n, b = self.shard_size, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch whose permutation the next pass uses."""
        self.epoch = int(epoch)

    def _order(self) -> Tensor:
        n = self.num_samples
        if not self.shuffle:
            order = torch.arange(n)
        else:
            generator = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch))
            order = torch.randperm(n, generator=generator)
        if self.num_replicas > 1:
            order = order[self.rank :: self.num_replicas][: self.shard_size]
        return order

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        # A generator: the epoch is drawn and advanced on the first ``next()``, so a bare ``iter()``
        # (Lightning calls one to check that the loader is iterable) does not consume an epoch.
        order = self._order()
        self.epoch += 1
        b = self.batch_size
        for start in range(0, len(self) * b, b):
            idx = order[start : start + b]
            yield tuple(t[idx] for t in self.tensors)

    def __repr__(self) -> str:
        shapes = ", ".join(str(tuple(t.shape)) for t in self.tensors)
        return (
            f"TensorLoader({shapes}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"drop_last={self.drop_last}, seed={self.seed}, epoch={self.epoch}"
            + (f", rank={self.rank}/{self.num_replicas}" if self.num_replicas > 1 else "")
            + ")"
        )
