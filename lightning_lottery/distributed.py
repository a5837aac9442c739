"""Processes of a distributed experiment: who writes, waiting for each other, agreeing on values.

Thin wrappers over ``torch.distributed`` that degrade to the single-process behaviour when no process group is
initialized, so the scheduler calls them unconditionally. Lightning's DDP strategies initialize the process group;
:func:`launch` starts the processes (and the group) before the first level, so that every rank can agree on what to
run from the start.

Example:
    >>> from lightning_lottery import distributed
    >>> distributed.rank(), distributed.world_size(), distributed.is_main()
    (0, 1, True)
    >>> distributed.on_main(lambda: 41 + 1)  # rank 0 computes, every rank gets the value (or the error)
    42
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from lightning_lottery.masks import MaskError, checksum

T = TypeVar("T")

__all__ = [
    "RankMismatchError",
    "barrier",
    "broadcast",
    "check_same_mask",
    "everywhere",
    "gather",
    "is_main",
    "on_main",
    "rank",
    "world_size",
]


class RankMismatchError(MaskError):
    """Processes of one experiment disagree on a value that must be identical on every rank."""


def initialized() -> bool:
    """Whether a ``torch.distributed`` process group is up."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """Global rank of this process (0 without a process group)."""
    return dist.get_rank() if initialized() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if initialized() else 1


def is_main() -> bool:
    """Whether this process writes files, prints and talks to W&B (global rank 0)."""
    return rank() == 0


def barrier() -> None:
    """Wait until every process gets here."""
    if initialized() and world_size() > 1:
        dist.barrier()


def broadcast(obj: T, src: int = 0) -> T:
    """``obj`` as rank ``src`` has it, on every rank (picklable objects)."""
    if not initialized() or world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather(obj: T) -> list[T]:
    """``obj`` of every rank, in rank order, on every rank."""
    if not initialized() or world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only; every rank returns its result, or raises its error (so no rank waits forever)."""
    result: Any = None
    error: BaseException | None = None
    if is_main():
        try:
            result = fn()
        except Exception as err:  # re-raised below, on every rank
            error = err
    result, error = broadcast((result, error))
    if error is not None:
        raise error
    return result


def everywhere(fn: Callable[[], T]) -> T:
    """Run ``fn`` on every rank; if it fails on any rank, every rank raises (its own error, else the first one)."""
    try:
        result, error = fn(), None
    except Exception as err:
        result, error = None, err
    errors = gather(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    failed = [(r, e) for r, e in enumerate(errors) if e is not None]
    if failed:
        r, message = failed[0]
        raise RuntimeError(f"rank {r} failed: {message}")
    return result  # type: ignore[return-value]


def check_same_mask(mask: Mapping[str, torch.Tensor], what: str = "mask") -> str:
    """The mask's checksum, after checking that every rank holds the same mask; raises on every rank otherwise."""
    mine = checksum(mask)
    sums = gather(mine)
    if len(set(sums)) > 1:
        listing = ", ".join(f"rank {r}: {s[:12]}" for r, s in enumerate(sums))
        raise RankMismatchError(f"the {what} differs across ranks ({listing}); every rank must train the same mask")
    return mine
