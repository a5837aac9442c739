"""The loggers of one run, its results for every logger, and the names and ids of W&B runs and artifacts."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from lightning_lottery.result import SUMMARY_KEYS, RunResult

if TYPE_CHECKING:
    from lightning.pytorch.loggers import Logger

    from lightning_lottery.store import LevelInfo
    from lightning_lottery.tracking.tracker import WandbTracker

#: A function of the run's :class:`~lightning_lottery.store.LevelInfo` returning its logger(s) (``False``: none).
LoggerFactory = Callable[["LevelInfo"], Union["Logger", list["Logger"], bool]]



def make_loggers(factory: LoggerFactory | bool | None, info: LevelInfo, tracker: WandbTracker | None) -> list[Logger]:
    """The loggers of one run: ``None``/``True`` a CSV logger in the run's directory, ``False`` none, else what the
    factory makes; plus the run's W&B logger when tracking is on."""
    from lightning.pytorch.loggers import CSVLogger

    if factory is None or factory is True:
        loggers: list[Logger] = [CSVLogger(save_dir=str(info.directory), name="logs", version="")]
    elif factory is False:
        loggers = []
    else:
        made = factory(info)
        loggers = [] if made is False else list(made) if isinstance(made, (list, tuple)) else [made]  # type: ignore[list-item]
    if tracker is not None:
        loggers.append(tracker.logger(info))
    return loggers


def publish_result(loggers: Sequence[Logger], result: RunResult, ticket_path: Path | None,
                   tracker: WandbTracker | None) -> None:
    """Every logger of a run receives its results (``lottery/<key>``); its W&B run also gets the ticket, then
    finishes."""
    from lightning.pytorch.loggers import WandbLogger

    metrics = {f"lottery/{k}": v for k, v in result.summary().items()}
    for logger in loggers:
        extra = {"lottery/remaining_pct": 100.0 * result.remaining} if isinstance(logger, WandbLogger) else {}
        logger.log_metrics({**metrics, **extra}, step=result.steps)
        logger.save()
    if tracker is not None:
        for logger in loggers:
            if isinstance(logger, WandbLogger):
                tracker.finish_level(logger, result.to_dict(), ticket_path)


def run_name(branch: str, level: int, remaining: float, replicate: int = 0) -> str:
    """``"ticket L3 51.3%"`` (with ``" r1"`` for replicates after the first)."""
    name = f"{branch} L{level} {100 * remaining:.1f}%"
    return f"{name} r{replicate}" if replicate else name


def run_id(experiment_id: str, branch: str, replicate: int, level: int) -> str:
    """The W&B run id of one run: the same on every attempt, so a resumed run continues its W&B run instead of
    making a second one (letters, digits, ``-`` and ``_``; at most 64 characters).

    Example:
        >>> run_id("smoke-1a2b3c4d", "ticket", 0, 3)
        'smoke-1a2b3c4d-ticket-r0-l03'
    """
    raw = "".join(c if c.isalnum() or c in "-_" else "-" for c in f"{experiment_id}-{branch}-r{replicate}-l{level:02d}")
    if len(raw) <= 64:
        return raw
    import hashlib

    return f"{raw[:47]}-{hashlib.sha256(raw.encode()).hexdigest()[:16]}"


def ticket_artifact_name(experiment_id: str, branch: str, replicate: int, level: int) -> str:
    """Artifact name of a run's ticket (letters, digits, ``-``, ``_`` and ``.`` only).

    Example:
        >>> ticket_artifact_name("smoke-1a2b3c4d", "ticket", 0, 3)
        'smoke-1a2b3c4d-ticket-r0-level03'
    """
    return _artifact_name(f"{experiment_id}-{branch}-r{replicate}-level{level:02d}")


def mask_artifact_name(experiment_id: str, branch: str, replicate: int, level: int) -> str:
    """Artifact name of the mask a run at ``level`` trains (the main line's: pruned by its run at ``level - 1``).

    Example:
        >>> mask_artifact_name("smoke-1a2b3c4d", "ticket", 0, 3)
        'smoke-1a2b3c4d-ticket-r0-mask-level03'
    """
    return _artifact_name(f"{experiment_id}-{branch}-r{replicate}-mask-level{level:02d}")


def rewind_artifact_name(experiment_id: str, replicate: int, at: str = "") -> str:
    """Artifact name of a replicate's rewind point (``at``: its copy at one of several steps, ``stability.at``).

    Example:
        >>> rewind_artifact_name("smoke-1a2b3c4d", 1), rewind_artifact_name("smoke-1a2b3c4d", 1, "500it")
        ('smoke-1a2b3c4d-r1-rewind-point', 'smoke-1a2b3c4d-r1-rewind-point-500it')
    """
    return _artifact_name(f"{experiment_id}-r{replicate}-rewind-point{f'-{at}' if at else ''}")


def _artifact_name(raw: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in raw)


def summary_values(row: Mapping[str, Any]) -> dict[str, Any]:
    """The run summary of a level: results plus ``remaining/<layer>`` per prunable parameter."""
    values = {k: row.get(k) for k in SUMMARY_KEYS if row.get(k) is not None}
    values.update({f"remaining/{name}": v["remaining"] for name, v in row.get("layers", {}).items()})
    return values


