"""The ``launch:`` section of a recipe: where an experiment's runs train — one after another in this process (the
default), in local worker processes, as SLURM jobs (submitit) or as Ray tasks. None of it changes results, so none
of it is part of the experiment's identity.

Example:
    >>> from lightning_lottery.pool_settings import LaunchSettings
    >>> LaunchSettings().parallel, LaunchSettings(launcher="local", workers=1).parallel
    (False, False)
    >>> LaunchSettings(launcher="local", workers=2).threads(cores=8, default=8)
    4
    >>> LaunchSettings(launcher="local", workers=0)
    Traceback (most recent call last):
    ...
    ValueError: launch.workers must be a positive integer or null, got 0
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from lightning_lottery.sections import nested

__all__ = ["LAUNCHERS", "LaunchSettings", "RaySettings", "SlurmSettings", "launcher_requested"]

#: The launchers ``launch.launcher`` accepts.
LAUNCHERS = ("local", "slurm", "ray")


@dataclass(frozen=True)
class SlurmSettings:
    """SLURM jobs through submitit (``launch.launcher: slurm``); each ready wave of runs is one job array.

    Args:
        partition: the SLURM partition (``--partition``).
        time_min: each job's time limit in minutes (``--time``).
        gpus_per_task: GPUs per task (``--gpus-per-task``).
        cpus_per_task: CPUs per task (``--cpus-per-task``); also the run's torch threads.
        tasks_per_node: tasks per node: ``trainer.devices`` for a DDP run inside each job.
        nodes: nodes per job (``trainer.num_nodes`` for a multi-node DDP run).
        mem_gb: memory per job in GB.
        array_parallelism: how many jobs of one array run at once (``--array=...%N``).
        account: ``--account``; ``qos``: ``--qos``; ``constraint``: ``--constraint``.
        setup: shell lines run before each job (``module load ...``, ``source venv/bin/activate``).
        additional: other ``sbatch`` options, e.g. ``{"exclusive": true}``.
        cluster: submitit's cluster: ``null`` (SLURM where ``sbatch`` exists), ``local`` (jobs as local processes,
            to try a recipe without SLURM) or ``debug`` (in the driver's process).
    """

    partition: Optional[str] = None
    time_min: int = 60
    gpus_per_task: Optional[int] = None
    cpus_per_task: Optional[int] = None
    tasks_per_node: int = 1
    nodes: int = 1
    mem_gb: Optional[float] = None
    array_parallelism: Optional[int] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    setup: list[str] = field(default_factory=list)
    additional: dict[str, Any] = field(default_factory=dict)
    cluster: Optional[Literal["slurm", "local", "debug"]] = None

    def __post_init__(self) -> None:
        for key in ("time_min", "tasks_per_node", "nodes", "gpus_per_task", "cpus_per_task", "array_parallelism"):
            _positive(f"launch.slurm.{key}", getattr(self, key), optional=key not in ("time_min", "tasks_per_node",
                                                                                     "nodes"))
        if self.cluster not in (None, "slurm", "local", "debug"):
            raise ValueError(f"launch.slurm.cluster must be slurm, local, debug or null, got {self.cluster!r}")

    def __hash__(self) -> int:
        return hash(json.dumps(dataclasses.asdict(self), sort_keys=True, default=str))


@dataclass(frozen=True)
class RaySettings:
    """Ray tasks (``launch.launcher: ray``), one per run.

    Args:
        address: an existing Ray cluster (``auto``, ``ray://HEAD:10001``); ``null`` starts a local instance.
        num_cpus: CPUs each run reserves (also its torch threads, rounded down, at least 1).
        num_gpus: GPUs each run reserves (a fraction shares a GPU).
        local_cpus: CPUs of the local instance (default: the machine's).
    """

    address: Optional[str] = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    local_cpus: Optional[int] = None

    def __post_init__(self) -> None:
        if not float(self.num_cpus) > 0 or float(self.num_gpus) < 0:
            raise ValueError(f"launch.ray.num_cpus must be > 0 and launch.ray.num_gpus >= 0, got "
                             f"{self.num_cpus!r} and {self.num_gpus!r}")
        _positive("launch.ray.local_cpus", self.local_cpus, optional=True)


@dataclass(frozen=True)
class LaunchSettings:
    """Where the runs of an experiment train (:mod:`lightning_lottery.driver`).

    Args:
        launcher: ``null`` (every run in this process, one after another), ``local`` (worker processes on this
            machine), ``slurm`` (submitit jobs) or ``ray`` (Ray tasks).
        workers: how many runs train at once: local worker processes (default: the machine's cores); for slurm
            and ray the jobs or tasks in flight (default: every run whose inputs are finished).
        threads_per_worker: torch threads of each worker (default: cores // workers, at most the driver's own,
            so that workers × threads ≤ cores).
        heartbeat_s: seconds between a worker's heartbeats in its run's claim.
        stale_after_s: a claim without a heartbeat for this long is taken over (its worker is presumed dead).
        poll_s: how often the driver looks for finished runs.
        folder: submitit's job files (pickles, logs); default ``OUT/submitit``.
        slurm: the SLURM settings (:class:`SlurmSettings`).
        ray: the Ray settings (:class:`RaySettings`).
    """

    launcher: Optional[Literal["local", "slurm", "ray"]] = None
    workers: Optional[int] = None
    threads_per_worker: Optional[int] = None
    heartbeat_s: float = 10.0
    stale_after_s: float = 60.0
    poll_s: float = 0.5
    folder: Optional[str] = None
    slurm: SlurmSettings = field(default_factory=SlurmSettings)
    ray: RaySettings = field(default_factory=RaySettings)

    def __post_init__(self) -> None:
        for key, cls in (("slurm", SlurmSettings), ("ray", RaySettings)):
            nested(self, key, cls, "launch")
        if self.launcher not in (None, *LAUNCHERS):
            raise ValueError(f"launch.launcher must be one of {', '.join(LAUNCHERS)} or null, got {self.launcher!r}")
        _positive("launch.workers", self.workers, optional=True)
        _positive("launch.threads_per_worker", self.threads_per_worker, optional=True)
        for key in ("heartbeat_s", "stale_after_s", "poll_s"):
            if not float(getattr(self, key)) > 0:
                raise ValueError(f"launch.{key} must be > 0, got {getattr(self, key)!r}")
        if float(self.stale_after_s) <= 2 * float(self.heartbeat_s):
            raise ValueError(f"launch.stale_after_s ({self.stale_after_s}) must be more than twice launch.heartbeat_s "
                             f"({self.heartbeat_s}): a live worker's claim would look stale between two heartbeats")

    def __hash__(self) -> int:
        return hash(json.dumps(dataclasses.asdict(self), sort_keys=True, default=str))

    @property
    def parallel(self) -> bool:
        """Whether runs go to workers (``False``: today's sequential walk in this process)."""
        return self.launcher is not None and not (self.launcher == "local" and self.workers == 1)

    def max_in_flight(self) -> int | None:
        """How many runs the driver has out at once (``None``: no limit)."""
        if self.launcher == "local":
            return self.workers or os.cpu_count() or 1
        return self.workers

    def threads(self, cores: int | None = None, default: int | None = None) -> int:
        """Torch threads per worker: ``threads_per_worker``, else ``cores // workers`` capped at ``default``
        (the driver's own thread count), at least 1."""
        if self.threads_per_worker:
            return self.threads_per_worker
        if self.launcher == "ray":
            return max(int(self.ray.num_cpus), 1)
        if self.launcher == "slurm" and self.slurm.cpus_per_task:
            return self.slurm.cpus_per_task
        cores = cores or os.cpu_count() or 1
        share = max(cores // (self.max_in_flight() or 1), 1)
        return min(share, default) if default else share


def launcher_requested(argv: Sequence[str]) -> str | None:
    """The launcher a command line asks for, read before it is parsed: its ``--launcher`` / ``--launch.launcher``,
    else the last ``--config`` recipe's ``launch.launcher``; ``None`` when neither says. Never raises (the parser
    reports a bad command line).

    Example:
        >>> launcher_requested(["find", "--config", "no-such.yaml", "--launcher", "local", "--workers", "2"])
        'local'
        >>> launcher_requested(["find", "--launch.launcher=ray"]), launcher_requested(["find"])
        ('ray', None)
    """
    given, recipes = None, []
    for i, arg in enumerate(argv):
        for flag in ("--launcher", "--launch.launcher"):
            if arg == flag and i + 1 < len(argv):
                given = argv[i + 1]
            elif arg.startswith(flag + "="):
                given = arg.split("=", 1)[1]
        if arg in ("--config", "-c") and i + 1 < len(argv):
            recipes.append(argv[i + 1])
        elif arg.startswith("--config="):
            recipes.append(arg.split("=", 1)[1])
    if given is not None:
        return given
    for recipe in reversed(recipes):
        try:
            import yaml

            section = (yaml.safe_load(Path(recipe).read_text()) or {}).get("launch") or {}
        except Exception:  # noqa: BLE001  (not a readable recipe: the parser says so)
            continue
        if isinstance(section, dict) and section.get("launcher") is not None:
            return str(section["launcher"])
    return None


def _positive(key: str, value: Any, optional: bool) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{key} must be a positive integer{' or null' if optional else ''}, got {value!r}")
