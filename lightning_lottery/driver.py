"""The driver of an experiment whose runs train at once: it walks the run graph and submits every run whose inputs
are finished (:meth:`~lightning_lottery.plan.Plan.ready`), as soon as they are, to a pool of workers
(:mod:`lightning_lottery.pools`), and records the results through the store as the sequential walk does.

One writer: the driver holds the experiment directory's lock from start to end (a second driver is refused), binds
and verifies the directory, writes the shared tables (``results.*`` after every finished run, then
``aggregate.csv``, the report and the W&B summary run, exactly as after a sequential walk). Workers write only
their runs' files, each under the run's claim (:mod:`lightning_lottery.claims`). Resume: the directory is the
state — a rerun after a kill resubmits what has no ``metrics.json``; a run still claimed by a live worker of an
earlier driver is waited for, one whose claim went stale is taken over (and resumes from its checkpoint).

Example:
    >>> from lightning_lottery.plan import Plan, Run
    >>> plan = Plan(levels=2, replicates=2, main="ticket", controls=("random_mask",))
    >>> eta_seconds(plan, finished=set(), per_run_s=10.0, workers=2)  # 10 runs, 2 at a time
    50.0
    >>> eta_seconds(plan, finished=set(), per_run_s=10.0, workers=100)  # the critical path: 3 runs
    30.0
"""

from __future__ import annotations

import math
import pickle
import sys
import time
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any, TextIO

import torch

from lightning_lottery.claims import CLAIM_FILE, describe, is_stale, read_claim
from lightning_lottery.plan import Plan, Run
from lightning_lottery.pool_settings import LaunchSettings
from lightning_lottery.pools import Outcome, Pool, make_pool

if TYPE_CHECKING:
    from lightning_lottery.scheduler import PruningScheduler

__all__ = ["GraphProgress", "drive", "eta_seconds"]


def eta_seconds(plan: Plan, finished: Collection[Run], per_run_s: float, workers: int | None) -> float:
    """Seconds left, at ``per_run_s`` a run: the larger of the critical path of what is not finished (the bound
    however many workers) and the runs left shared among ``workers`` (``None``: unlimited)."""
    left = len(plan.runs()) - len(finished)
    path = len(plan.critical_path(finished))
    spread = math.ceil(left / workers) if workers else 0
    return float(max(path, spread)) * per_run_s


class GraphProgress:
    """The driver's progress lines: runs done / running / waiting, the run that finished, elapsed and the ETA from
    the graph's critical path."""

    def __init__(self, plan: Plan, levels: int, workers: int | None, stream: TextIO | None) -> None:
        self.plan, self.levels, self.workers, self.stream = plan, levels, workers, stream
        self.total = len(plan.runs())
        self.finished: set[Run] = set()
        self.running: set[Run] = set()
        self.seconds: list[float] = []
        self.started = time.perf_counter()

    def line(self, run: Run, what: str) -> str:
        from lightning_lottery.progress import _duration

        waiting = self.total - len(self.finished) - len(self.running)
        per_run = sum(self.seconds) / len(self.seconds) if self.seconds else None
        eta = "—" if per_run is None else _duration(
            eta_seconds(self.plan, self.finished, per_run, self.workers))
        replicate = f" r{run.replicate}" if run.replicate else ""
        return (f"[lottery] {len(self.finished)}/{self.total} done · {len(self.running)} running · {waiting} waiting"
                f" · {run.branch}{replicate} level {run.level}/{self.levels} {what} · elapsed "
                f"{_duration(time.perf_counter() - self.started)} · ETA {eta} (critical path "
                f"{len(self.plan.critical_path(self.finished))} runs)")

    def skipped(self, run: Run) -> None:
        self.finished.add(run)
        self._say(self.line(run, "already done, skipped"))

    def submitted(self, run: Run) -> None:
        self.running.add(run)

    def done(self, run: Run, row: Mapping[str, Any] | None) -> None:
        self.running.discard(run)
        self.finished.add(run)
        if row is None:
            self._say(self.line(run, "finished by another worker"))
            return
        self.seconds.append(float(row["wall_s"]))
        acc = row.get("test_acc")
        self._say(self.line(run, f"· {100 * row['remaining']:.1f}% remaining · test acc "
                                 f"{'—' if acc is None else f'{acc:.4f}'} · {row['wall_s']:.1f}s"))

    def _say(self, text: str) -> None:
        if self.stream is not None:
            print(text, file=self.stream, flush=True)


def _payload(scheduler: PruningScheduler, settings: LaunchSettings) -> bytes:
    """The pickled scheduler the workers start from (before the data is set up: a small pickle); refuses, before
    anything is written, what workers cannot do."""
    if settings.launcher in ("local", "ray"):
        from lightning_lottery.launch import parallel_probe

        if parallel_probe(scheduler.trainer_kwargs) is not None:
            raise ValueError(f"launch.launcher {settings.launcher} trains each run in one process; a multi-process "
                             "trainer.strategy inside each run needs launch.launcher slurm (launch.slurm.tasks_per_node"
                             " = trainer.devices), or launch.launcher null")
    try:
        return pickle.dumps(scheduler)
    except Exception as err:  # a lambda in the model, an on_event closure, ...
        raise ValueError(f"launch.launcher {settings.launcher}: the experiment cannot be sent to worker processes "
                         f"({type(err).__name__}: {err}); use launch.launcher null") from None


def drive(scheduler: PruningScheduler) -> list[dict[str, Any]]:
    """Run (or finish) every run of ``scheduler``'s experiment on its launcher's workers; returns the results rows."""
    settings = scheduler.launcher
    assert settings is not None and settings.parallel
    payload = _payload(scheduler, settings)
    scheduler.datamodule.prepare_data()
    scheduler.datamodule.setup("fit")
    scheduler.store.lock()  # one driver per directory, before anything is written
    try:
        scheduler._open_experiment(True)
        return _Walk(scheduler, settings, payload).run()
    finally:
        scheduler.store.unlock()


class _Walk:
    def __init__(self, scheduler: PruningScheduler, settings: LaunchSettings, payload: bytes) -> None:
        self.scheduler, self.settings, self.payload = scheduler, settings, payload
        self.plan, self.store = scheduler.plan, scheduler.store
        self.stream = scheduler.stream
        self.progress = GraphProgress(self.plan, scheduler.config.levels, settings.max_in_flight(), self.stream)
        self.inflight: dict[Run, Any] = {}
        self.claim_at_submit: dict[Run, dict[str, Any] | None] = {}  # to tell our worker's claim from an old one
        self.elsewhere: set[Run] = set()  # claimed by a live worker this driver did not start
        self.trained_any = False

    def run(self) -> list[dict[str, Any]]:
        runs = self.plan.runs()
        for run in runs:
            if self.store.is_done(run):
                self.progress.skipped(run)
        if len(self.progress.finished) < len(runs):
            payload = pickle.dumps({"scheduler": self.payload, "experiment_id": self.scheduler.experiment_id})
            threads = self.settings.threads(default=torch.get_num_threads())
            pool = make_pool(self.settings, payload, self.store.root, threads)
            self._say(f"[lottery] {self.settings.launcher} launcher: up to "
                      f"{self.settings.max_in_flight() or 'every ready'} run(s) at once, {threads} torch thread(s) each")
            abort = True
            try:
                self._loop(pool, len(runs))
                abort = False
            finally:
                pool.close(abort=abort)
        return self.scheduler._finish(self.trained_any)

    def _loop(self, pool: Pool, total: int) -> None:
        cap = self.settings.max_in_flight()
        while len(self.progress.finished) < total:
            self._look_elsewhere()
            ready = [r for r in self.plan.ready(self.progress.finished, set(self.inflight) | self.elsewhere)
                     if not self._claimed_elsewhere(r)]
            ready = self.plan.by_urgency(ready, self.progress.finished)
            room = len(ready) if cap is None else max(cap - len(self.inflight), 0)
            wave = ready[:room]
            for run in wave:
                self.claim_at_submit[run] = read_claim(self.store.run_dir(run) / CLAIM_FILE)
            for run, handle in zip(wave, pool.submit(wave) if wave else []):
                self.inflight[run] = handle
                self.progress.submitted(run)
            if not self.inflight and not self.elsewhere:
                raise RuntimeError("no run can start: the run graph has runs whose inputs never finish")
            collected = False
            for run, handle in list(self.inflight.items()):
                if pool.ready(handle):
                    del self.inflight[run]
                    self._record(pool.result(handle))
                    collected = True
            if not collected:
                self._check_alive()
                pool.wait(self.settings.poll_s)

    def _check_alive(self) -> None:
        """A worker that died hard (killed, out of memory) while training one of our runs: its claim, made after
        we submitted the run, went stale without a result — stop, rather than wait for it forever."""
        for run in self.inflight:
            record = read_claim(self.store.run_dir(run) / CLAIM_FILE)
            if record is not None and record != self.claim_at_submit.get(run) \
                    and is_stale(record, self.settings.stale_after_s) and not self.store.is_done(run):
                raise RuntimeError(f"the worker training {run} ({describe(record)}) died without a result; rerun "
                                   "the same command to resume (the run is taken over from its checkpoint)")

    def _claimed_elsewhere(self, run: Run) -> bool:
        if run in self.elsewhere:
            return True
        record = read_claim(self.store.run_dir(run) / CLAIM_FILE)
        if record is None or is_stale(record, self.settings.stale_after_s):
            return False
        self.elsewhere.add(run)
        self.progress.running.add(run)
        self._say(f"[lottery] {run} is being trained by {describe(record)}, not started by this driver: waiting "
                  "for it (it is taken over if its heartbeat stops)")
        return True

    def _look_elsewhere(self) -> None:
        """Runs trained by other workers: finished (their results recorded), or their claim gone stale (free)."""
        for run in sorted(self.elsewhere):
            if self.store.is_done(run):
                self.elsewhere.discard(run)
                self._finished(run, None)
                continue
            record = read_claim(self.store.run_dir(run) / CLAIM_FILE)
            if record is None or is_stale(record, self.settings.stale_after_s):
                self.elsewhere.discard(run)
                self.progress.running.discard(run)

    def _record(self, outcome: Outcome) -> None:
        run = outcome.run
        if outcome.status == "claimed":
            self.progress.running.discard(run)
            self._claimed_elsewhere(run)
            return
        if outcome.status == "trained" and outcome.holder:
            self._say(f"[lottery] took over {run} from {describe(outcome.holder)}: no longer running")
        self._finished(run, outcome.row)

    def _finished(self, run: Run, row: Mapping[str, Any] | None) -> None:
        self.trained_any = True
        self.store.write_results()  # the driver owns the shared tables
        self.progress.done(run, row)

    def _say(self, text: str) -> None:
        if self.stream is not None:
            print(text, file=self.stream or sys.stderr, flush=True)
