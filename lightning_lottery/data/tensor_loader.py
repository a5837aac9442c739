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

    The loader is resumable: :meth:`state_dict` holds the epoch of the pass in progress and how many of its batches
    were drawn; after :meth:`load_state_dict` the next pass continues that one exactly (the next epoch when it was
    complete). Lightning saves a stateful train loader in its checkpoints and restores it when it resumes one.

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
        >>> it = iter(loader); _ = next(it); state = loader.state_dict(); state
        {'epoch': 1, 'position': 1}
        >>> again = TensorLoader(x, y, batch_size=4); again.load_state_dict(state)
        >>> [b[1].tolist() for b in again]
        [[4, 5, 6, 7], [8, 9]]
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
        self._pass: tuple[int, int] | None = None  # (epoch, batches drawn) of the pass in progress
        self._resume: tuple[int, int] | None = None  # where the next pass starts, from load_state_dict

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

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "position"}``: the pass in progress and the batches drawn from it (else the next pass, 0)."""
        if self._resume is not None:
            epoch, position = self._resume
        elif self._pass is not None:
            epoch, position = self._pass
        else:
            epoch, position = self.epoch, 0
        return {"epoch": int(epoch), "position": int(position)}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Make the next pass continue the one ``state_dict`` describes."""
        self._resume = (int(state_dict["epoch"]), int(state_dict["position"]))
        self._pass = None

    def _order(self, epoch: int) -> Tensor:
        n = self.num_samples
        if not self.shuffle:
            order = torch.arange(n)
        else:
            generator = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
            order = torch.randperm(n, generator=generator)
        if self.num_replicas > 1:
            order = order[self.rank :: self.num_replicas][: self.shard_size]
        return order

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        # A generator: the epoch is drawn and advanced on the first ``next()``, so a bare ``iter()``
        # (Lightning calls one to check that the loader is iterable) does not consume an epoch.
        epoch, first = self._resume if self._resume is not None else (self.epoch, 0)
        self._resume = None
        if first >= len(self):  # the resumed pass was complete: the next one
            epoch, first = epoch + 1, 0
        order = self._order(epoch)
        self.epoch = epoch + 1
        b = self.batch_size
        for i in range(first, len(self)):
            self._pass = (epoch, i + 1)
            idx = order[i * b : (i + 1) * b]
            yield tuple(t[idx] for t in self.tensors)
        self._pass = None

    def __repr__(self) -> str:
        shapes = ", ".join(str(tuple(t.shape)) for t in self.tensors)
        return (
            f"TensorLoader({shapes}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"drop_last={self.drop_last}, seed={self.seed}, epoch={self.epoch}"
            + (f", rank={self.rank}/{self.num_replicas}" if self.num_replicas > 1 else "")
            + ")"
        )
