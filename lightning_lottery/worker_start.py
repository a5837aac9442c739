"""How local worker processes start: forked from a fork server that has imported Lightning once, and, when the
command line asks for local workers, started before the driver's own imports so that the two overlap.

Importing Lightning takes seconds (it imports torchmetrics, which imports torchvision). Spawned workers would each
pay it after the driver has paid it; the fork server pays it once, meanwhile, and every worker it forks starts with
it done. Forking is safe there: the server has imported torch but run nothing, so no thread pool exists yet. Where
there is no fork server (Windows), workers are spawned.

Example:
    >>> from lightning_lottery.worker_start import context
    >>> context().get_start_method() in ("forkserver", "spawn")
    True
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from multiprocessing.context import BaseContext

__all__ = ["PRELOAD", "context", "warm"]

#: What the fork server imports before it forks a worker: everything a worker needs to unpickle the experiment.
PRELOAD = ("lightning_lottery.scheduler",)


def context() -> BaseContext:
    """The start method of local workers: the fork server (preloading :data:`PRELOAD`), else spawn."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))
    return ctx


def warm(argv: Sequence[str]) -> bool:
    """Start the fork server now if ``argv`` asks for local workers (its imports run while this process imports
    the CLI); returns whether it did. A command line that turns out not to want workers leaves an idle server
    that exits with this process."""
    from lightning_lottery.pool_settings import launcher_requested

    if launcher_requested(argv) != "local" or context().get_start_method() != "forkserver":
        return False
    from multiprocessing import forkserver

    forkserver.ensure_running()
    return True
