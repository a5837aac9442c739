"""Progress of an experiment in the terminal: run i of n, level, % remaining, last accuracy, elapsed and ETA.

On a terminal the current run's line updates in place; in a log file (not a TTY) a line is written at each
quarter of a run. ``stream=None`` is the quiet mode.

Example:
    >>> import io
    >>> from lightning_lottery.progress import format_table
    >>> print(format_table([{"branch": "ticket", "replicate": 0, "level": 0, "remaining": 1.0, "test_acc": 0.9,
    ...                      "early_stop_iter": 100, "early_stop_test_acc": 0.91, "wall_s": 3.0}]))
    level  % remaining  test acc  early-stop it  acc @ early stop  wall s
    -----  -----------  --------  -------------  ----------------  ------
        0        100.0    0.9000            100            0.9100     3.0
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TextIO

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from lightning_lottery._compat import override

if TYPE_CHECKING:
    from lightning_lottery.plan import Run


class ExperimentProgress:
    """Tracks the runs of an experiment and prints progress lines with elapsed time and ETA."""

    def __init__(self, total_runs: int, levels: int, stream: TextIO | None) -> None:
        self.total, self.levels, self.stream = total_runs, levels, stream
        self.finished = 0
        self.trained_seconds: list[float] = []
        self.started = time.perf_counter()
        self.run: Run | None = None
        self.run_started = self.started
        self.remaining = 1.0
        self.last_acc: float | None = None

    # ------------------------------------------------------------------------------------------ run events
    def start(self, run: Run) -> None:
        self.run, self.run_started = run, time.perf_counter()

    def skipped(self, run: Run, row: Mapping[str, Any]) -> None:
        self.run = run
        self.finished += 1
        self._say(f"{self._head(run)} · {100 * row['remaining']:.1f}% remaining · test acc "
                  f"{_fmt(row.get('test_acc'))} · already done, skipped")

    def done(self, run: Run, row: Mapping[str, Any]) -> None:
        self.finished += 1
        self.trained_seconds.append(float(row["wall_s"]))
        self.last_acc = row.get("test_acc")
        left = self.total - self.finished
        eta = left * sum(self.trained_seconds) / len(self.trained_seconds)
        self._say(f"{self._head(run)} · {100 * row['remaining']:.1f}% remaining · test acc {_fmt(row.get('test_acc'))}"
                  f"{_outcome(row)} · {row['wall_s']:.1f}s · elapsed "
                  f"{_duration(time.perf_counter() - self.started)} · ETA {_duration(eta)}", end_line=True)

    def callback(self) -> Callback:
        """A Lightning callback reporting steps within the current run."""
        return _RunProgress(self)

    # -------------------------------------------------------------------------------------------- helpers
    def _head(self, run: Run, index: int | None = None) -> str:
        """``[lottery] run 5/36 · ticket r1 level 3/11``; ``index`` defaults to the runs finished so far."""
        replicate = f" r{run.replicate}" if run.replicate else ""
        number = self.finished if index is None else index
        at = f" at {run.at}" if run.at else ""
        return f"[lottery] run {number}/{self.total} · {run.branch}{replicate} level {run.level}/{self.levels}{at}"

    def eta(self, fraction_of_run: float) -> float:
        """Seconds left: the rest of this run (projected from its pace) plus the runs after it."""
        spent = time.perf_counter() - self.run_started
        this_run = spent / fraction_of_run if fraction_of_run > 0 else 0.0
        per_run = sum(self.trained_seconds) / len(self.trained_seconds) if self.trained_seconds else this_run
        return max(this_run - spent, 0.0) + per_run * max(self.total - self.finished - 1, 0)

    def _say(self, text: str, end_line: bool = True) -> None:
        if self.stream is None:
            return
        if _is_tty(self.stream):
            self.stream.write("\r\033[K" + text + ("\n" if end_line else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


class _RunProgress(Callback):
    def __init__(self, progress: ExperimentProgress) -> None:
        self.progress = progress
        self.next_report = 0.25
        self.tty: bool | None = None  # whether the stream is a terminal: asked once (an ioctl), not at every step

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        p = self.progress
        if p.stream is None or p.run is None or not trainer.max_steps or trainer.max_steps < 0:
            return
        fraction = trainer.global_step / trainer.max_steps
        if self.tty is None:
            self.tty = _is_tty(p.stream)
        tty = self.tty
        if not tty and fraction < self.next_report:
            return
        if tty and trainer.global_step % max(trainer.max_steps // 100, 1):
            return
        while self.next_report <= fraction:
            self.next_report += 0.25
        acc = trainer.callback_metrics.get("val_acc")
        text = (f"{p._head(p.run, p.finished + 1)} · step {trainer.global_step}/{trainer.max_steps} · val acc "
                f"{_fmt(float(acc)) if acc is not None else '—'} · elapsed "
                f"{_duration(time.perf_counter() - p.started)} · ETA {_duration(p.eta(fraction))}")
        p._say(text, end_line=not tty)


@contextlib.contextmanager
def lightning_banners_off() -> Iterator[None]:
    """Lightning's INFO banners at every fit (devices available, 'max_steps reached', tips) would bury the progress
    lines of an experiment of many fits; warnings and errors still show. The levels are restored afterwards."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        if logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _is_tty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _fmt(value: Any) -> str:
    return "—" if value is None else f"{value:.4f}"


def _outcome(row: Mapping[str, Any]) -> str:
    """`` · early stop at it 400`` for a trained run; a stability run's barriers instead (it has no early stop)."""
    if "barrier_test_err" in row or row.get("stability_curve"):
        err, loss = row.get("barrier_test_err"), row.get("barrier_train_loss")
        return (f" · barrier {'—' if err is None else f'{100 * err:.2f} pp'} test error, "
                f"{'—' if loss is None else f'{loss:.4f}'} train loss")
    return f" · early stop at it {row.get('early_stop_iter')}" if row.get("early_stop_iter") is not None else ""


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The final terminal table: level, % weights remaining, test accuracy, early-stopping iteration and its accuracy
    (with branch and replicate columns when the experiment has several)."""
    several = len({(r["branch"], r["replicate"]) for r in rows}) > 1
    header = (("branch", "rep") if several else ()) + (
        "level", "% remaining", "test acc", "early-stop it", "acc @ early stop", "wall s")
    lines = [header]
    for r in rows:
        lead = (str(r["branch"]) + (f" {r['at']}" if r.get("at") else ""), str(r["replicate"])) if several else ()
        lines.append(lead + (str(r["level"]), f"{100 * r['remaining']:.1f}", _fmt(r.get("test_acc")),
                             "—" if r.get("early_stop_iter") is None else str(r["early_stop_iter"]),
                             _fmt(r.get("early_stop_test_acc")),
                             f"{r.get('wall_s', 0):.1f}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)
