"""Where a run trains when runs train at once: local worker processes, submitit jobs (SLURM), Ray tasks.

Each pool takes runs (:meth:`Pool.submit`), says which are finished (:meth:`Pool.ready`) and hands back each
run's :class:`Outcome` (:meth:`Pool.result`, the worker's error raised here). Every worker runs
:func:`train_run` on its own copy of the experiment's scheduler (pickled once by the driver, the ``payload``): it
claims the run (:mod:`lightning_lottery.claims`), trains it exactly as the sequential walk does
(``PruningScheduler._run_one``) and writes the run's own files — its directory, the next level's mask, the
replicate's rewind point — but never the shared tables (``results.*``, ``aggregate.csv``, the report), which the
driver writes. A worker logs its run's W&B run itself (online or offline); the driver logs the summary run.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from lightning_lottery import distributed, worker_start
from lightning_lottery._compat import quiet_lightning
from lightning_lottery.atomic import atomic_write_bytes
from lightning_lottery.claims import CLAIM_FILE, RunClaim
from lightning_lottery.plan import Run
from lightning_lottery.pool_settings import LaunchSettings
from lightning_lottery.progress import ExperimentProgress
from lightning_lottery.store import ExperimentStore

if TYPE_CHECKING:
    from lightning_lottery.scheduler import PruningScheduler

__all__ = ["Outcome", "Pool", "make_pool", "train_run"]


@dataclass(frozen=True)
class Outcome:
    """What a worker did with a run: ``trained`` it (its results ``row``; ``holder``: the stale claim it took
    over, if any), found it ``done`` already, or found it ``claimed`` by a live worker (``holder``)."""

    run: Run
    status: Literal["trained", "done", "claimed"]
    row: dict[str, Any] | None = None
    holder: dict[str, Any] = field(default_factory=dict)


class RunFiles(ExperimentStore):
    """A worker's store: the run's files, not the shared tables (the driver rebuilds them as results come in)."""

    def write_results(self) -> None:
        pass

    def start_run(self) -> None:
        """Forget the files of an earlier run of this worker: the manifest lists only this run's."""
        self._produced = []


# ------------------------------------------------------------------------------------------------ in a worker
_SCHEDULERS: dict[str, PruningScheduler] = {}  # payload digest → this process's copy of the scheduler


def worker_scheduler(payload: bytes, threads: int) -> PruningScheduler:
    """This worker's scheduler: unpickled from ``payload`` once per process, quiet, its data set up, its store
    writing run files only, its W&B tracker of its own."""
    key = hashlib.sha256(payload).hexdigest()
    if key not in _SCHEDULERS:
        torch.set_num_threads(threads)
        quiet_lightning()  # no per-fit banners from workers
        sent = pickle.loads(payload)  # {"scheduler": the pickled scheduler, "experiment_id": ...}
        scheduler: PruningScheduler = pickle.loads(sent["scheduler"])
        scheduler.experiment_id = sent["experiment_id"]
        scheduler.stream = None
        scheduler.store = RunFiles(scheduler.store.root)
        scheduler.datamodule.setup("fit")
        if scheduler.wandb is not None:
            scheduler._start_tracking()
        _SCHEDULERS.clear()
        _SCHEDULERS[key] = scheduler
    return _SCHEDULERS[key]


def train_run(scheduler: PruningScheduler, run: Run) -> Outcome:
    """Claim ``run``, train it as the sequential walk does, release the claim. Under a DDP strategy (a SLURM job
    of several tasks) every task joins one process group; rank 0 claims and writes, every rank trains."""
    from lightning_lottery.launch import parallel_probe

    probe = parallel_probe(scheduler.trainer_kwargs)
    if probe is not None and not distributed.initialized():
        probe.strategy.setup_environment()
    settings = scheduler.launcher or LaunchSettings()
    store = scheduler.store
    claim = RunClaim(store.run_dir(run) / CLAIM_FILE, settings.heartbeat_s, settings.stale_after_s)
    ours = distributed.on_main(claim.acquire)
    if not ours:
        return Outcome(run, "claimed", holder=distributed.on_main(lambda: claim.holder))
    try:
        if distributed.on_main(lambda: store.is_done(run)):
            return Outcome(run, "done")
        if isinstance(store, RunFiles):
            store.start_run()
        row = scheduler._run_one(run, ExperimentProgress(1, scheduler.config.levels, None))
        return Outcome(run, "trained", row, dict(claim.taken_over))
    finally:
        if distributed.is_main():
            claim.release()


def _task(payload: bytes, run: Run, threads: int) -> Outcome:
    return train_run(worker_scheduler(payload, threads), run)


def _task_from_file(payload_file: str, run: Run, threads: int) -> Outcome:
    return _task(Path(payload_file).read_bytes(), run, threads)


_LOCAL: dict[str, Any] = {}


def _local_init(payload_file: str, threads: int) -> None:
    """A local worker's start: the payload read from its file (a path through the start pipe, not the payload: a
    large write there blocks the driver until each child has imported its modules, one child after another)."""
    torch.set_num_threads(threads)
    _LOCAL.update(payload=Path(payload_file).read_bytes(), threads=threads)


def _local_task(run: Run) -> Outcome:
    return _task(_LOCAL["payload"], run, _LOCAL["threads"])


# ---------------------------------------------------------------------------------------------- the pools
class Pool:
    """Where runs go; subclasses: :class:`LocalPool`, :class:`SubmititPool`, :class:`RayPool`."""

    def submit(self, runs: Sequence[Run]) -> list[Any]:
        """Start ``runs`` (one wave: runs whose inputs are finished); returns a handle per run."""
        raise NotImplementedError

    def ready(self, handle: Any) -> bool:
        raise NotImplementedError

    def result(self, handle: Any) -> Outcome:
        """The run's outcome; the worker's error is raised here."""
        raise NotImplementedError

    def wait(self, timeout: float) -> None:
        """Return when a run may have finished, at the latest after ``timeout`` seconds."""
        time.sleep(timeout)

    def close(self, abort: bool = False) -> None:
        """Stop the pool (``abort``: kill what still runs)."""


class LocalPool(Pool):
    """``workers`` processes on this machine (forked from the fork server, :mod:`lightning_lottery.worker_start`),
    each with ``threads`` torch threads, each training one run at a time."""

    def __init__(self, payload: bytes, workers: int, threads: int) -> None:
        fd, self._payload_file = tempfile.mkstemp(prefix="lightning-lottery-", suffix=".pkl")
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        self._finished = threading.Event()
        self._pool = worker_start.context().Pool(workers, initializer=_local_init,
                                                 initargs=(self._payload_file, threads))

    def submit(self, runs: Sequence[Run]) -> list[Any]:
        def done(_: Any) -> None:
            self._finished.set()

        return [self._pool.apply_async(_local_task, (run,), callback=done, error_callback=done) for run in runs]

    def wait(self, timeout: float) -> None:
        self._finished.wait(timeout)
        self._finished.clear()  # before the driver looks: a run finishing after this sets it again

    def ready(self, handle: Any) -> bool:
        return bool(handle.ready())

    def result(self, handle: Any) -> Outcome:
        return handle.get()  # type: ignore[no-any-return]

    def close(self, abort: bool = False) -> None:
        if abort:
            self._pool.terminate()
        else:
            self._pool.close()
        self._pool.join()
        Path(self._payload_file).unlink(missing_ok=True)


class SubmititPool(Pool):
    """SLURM jobs through submitit: one job per run; the runs of one wave are one job array."""

    def __init__(self, settings: LaunchSettings, payload: bytes, root: Path, threads: int) -> None:
        try:
            import submitit
        except ImportError:
            raise ValueError("launch.launcher slurm needs submitit: pip install 'lightning-lottery[slurm]'") from None
        folder = Path(settings.folder) if settings.folder else root / "submitit"
        self._payload_file = folder / "payload.pkl"  # once, not once per job
        atomic_write_bytes(self._payload_file, payload)
        self._threads, self._jobs = threads, []
        s = settings.slurm
        self._executor = submitit.AutoExecutor(folder=folder / "%j", cluster=s.cluster)
        params: dict[str, Any] = {"name": "lightning-lottery", "timeout_min": s.time_min, "nodes": s.nodes,
                                  "tasks_per_node": s.tasks_per_node}
        if s.cpus_per_task:
            params["cpus_per_task"] = s.cpus_per_task
        if s.mem_gb:
            params["mem_gb"] = s.mem_gb
        if self._executor.cluster == "slurm":
            slurm = {"partition": s.partition, "gpus_per_task": s.gpus_per_task, "account": s.account,
                     "qos": s.qos, "constraint": s.constraint, "array_parallelism": s.array_parallelism}
            params.update({f"slurm_{k}": v for k, v in slurm.items() if v is not None})
            if s.setup:
                params["slurm_setup"] = list(s.setup)
            if s.additional:
                params["slurm_additional_parameters"] = dict(s.additional)
        self._executor.update_parameters(**params)

    def submit(self, runs: Sequence[Run]) -> list[Any]:
        args = (str(self._payload_file),)
        if len(runs) > 1 and self._executor.cluster == "slurm":
            with self._executor.batch():  # one array: array_parallelism applies
                jobs = [self._executor.submit(_task_from_file, *args, run, self._threads) for run in runs]
        else:
            jobs = [self._executor.submit(_task_from_file, *args, run, self._threads) for run in runs]
        self._jobs.extend(jobs)
        return jobs

    def ready(self, handle: Any) -> bool:
        return bool(handle.done())

    def result(self, handle: Any) -> Outcome:
        return handle.result()  # type: ignore[no-any-return]  # a failed job raises with its traceback

    def close(self, abort: bool = False) -> None:
        if abort:
            for job in self._jobs:
                if not job.done():
                    job.cancel(check=False)


class RayPool(Pool):
    """Ray tasks, one per run (``num_cpus`` / ``num_gpus`` reserved each), on an existing cluster or a local one."""

    def __init__(self, settings: LaunchSettings, payload: bytes, threads: int) -> None:
        try:
            import ray
        except ImportError:
            raise ValueError("launch.launcher ray needs Ray: pip install 'lightning-lottery[ray]'") from None
        self._ray, r = ray, settings.ray
        self._started = not ray.is_initialized()
        if self._started:
            local = {"num_cpus": r.local_cpus} if r.address is None and r.local_cpus else {}
            ray.init(address=r.address, include_dashboard=False, log_to_driver=False, **local)
        self._payload = ray.put(payload)
        self._remote = ray.remote(num_cpus=r.num_cpus, num_gpus=r.num_gpus, max_retries=0)(_task)
        self._threads, self._refs = threads, []

    def submit(self, runs: Sequence[Run]) -> list[Any]:
        refs = [self._remote.remote(self._payload, run, self._threads) for run in runs]
        self._refs.extend(refs)
        return refs

    def ready(self, handle: Any) -> bool:
        done, _ = self._ray.wait([handle], timeout=0)
        return bool(done)

    def wait(self, timeout: float) -> None:
        _, pending = self._ray.wait(self._refs, num_returns=len(self._refs), timeout=0)  # one call, not one per run
        if pending:
            self._ray.wait(pending, num_returns=1, timeout=timeout)
        else:
            time.sleep(timeout)

    def result(self, handle: Any) -> Outcome:
        return self._ray.get(handle)  # type: ignore[no-any-return]

    def close(self, abort: bool = False) -> None:
        if abort:
            for ref in self._refs:
                self._ray.cancel(ref, force=True)
        if self._started:
            self._ray.shutdown()


def make_pool(settings: LaunchSettings, payload: bytes, root: Path, threads: int) -> Pool:
    """The pool ``settings.launcher`` names."""
    if settings.launcher == "local":
        return LocalPool(payload, settings.max_in_flight() or 1, threads)
    if settings.launcher == "slurm":
        return SubmititPool(settings, payload, root, threads)
    if settings.launcher == "ray":
        return RayPool(settings, payload, threads)
    raise ValueError(f"launch.launcher {settings.launcher!r} runs nothing in parallel")
