"""Experiment tracking in Weights & Biases: one run per level, the experiment as one group, tickets as artifacts.

Every level (branch, replicate) is its own W&B run through Lightning's ``WandbLogger``: ``group`` is the
experiment id, ``job_type`` the branch, the run name shows the level and the % of weights remaining, and the run
config holds the resolved recipe plus ``level``, ``branch``, ``replicate`` and ``remaining``. When a level is
done its run gets the level's results as summary values and its ticket as an artifact of type
``lottery-ticket``, then it is finished. A final ``summary`` run logs the results table and the curves.

Offline first: with ``WANDB_MODE=offline`` (or ``mode: offline``) everything is written under
``<experiment>/wandb/`` for a later ``wandb sync``. No API key is ever written anywhere by this module.

Example:
    >>> from lightning_lottery.tracking import WandbSettings
    >>> WandbSettings(project="lottery", mode="offline").enabled
    True
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Optional, Union

from lightning_lottery.result import SUMMARY_KEYS, RunResult

if TYPE_CHECKING:
    from lightning.pytorch.loggers import Logger, WandbLogger

    from lightning_lottery.store import LevelInfo

#: A function of the run's :class:`~lightning_lottery.store.LevelInfo` returning its logger(s) (``False``: none).
LoggerFactory = Callable[["LevelInfo"], Union["Logger", list["Logger"], bool]]


@dataclass(frozen=True)
class WandbSettings:
    """The ``wandb:`` section of a recipe.

    Args:
        enabled: log to W&B at all (``false``, or ``WANDB_MODE=disabled``, switches tracking off).
        project: W&B project.
        entity: W&B entity (user or team); ``None`` for the default one.
        mode: ``online``, ``offline`` or ``disabled``; ``None`` follows ``WANDB_MODE`` (W&B's default: online).
        tags: tags of every run.
        log_tickets: upload each level's ticket as an artifact of type ``lottery-ticket``.
        dir: where W&B writes its files; default: the experiment directory (``<out_dir>/wandb``).
    """

    enabled: bool = True
    project: str = "lightning-lottery"
    entity: Optional[str] = None
    mode: Optional[Literal["online", "offline", "disabled"]] = None
    tags: list[str] = field(default_factory=list)
    log_tickets: bool = True
    dir: Optional[str] = None

    @property
    def active(self) -> bool:
        return self.enabled and self.resolved_mode() != "disabled"

    def resolved_mode(self) -> str:
        """``mode``, else ``WANDB_MODE``, else ``online`` when a W&B login is found and ``offline`` when not."""
        if self.mode:
            return self.mode
        env = os.environ.get("WANDB_MODE", "")
        if env:
            return "offline" if env == "dryrun" else env
        return "online" if _logged_in() else "offline"


def _logged_in() -> bool:
    """Whether W&B credentials exist (environment or ~/.netrc), without asking W&B's servers."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc

    try:
        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbTracker:
    """Makes each level's ``WandbLogger`` and closes its run with summary values and the ticket artifact.

    Args:
        settings: the ``wandb:`` settings.
        experiment_id: the experiment's id (the W&B group).
        experiment_hash: the configuration hash (artifact metadata).
        config: the resolved recipe (the run config).
        out_dir: the experiment directory (default place of W&B's files).
    """

    def __init__(self, settings: WandbSettings, experiment_id: str, experiment_hash: str,
                 config: Mapping[str, Any], out_dir: str | os.PathLike) -> None:
        self.settings = settings
        self.experiment_id = experiment_id
        self.experiment_hash = experiment_hash
        self.config = dict(config)
        self.dir = Path(settings.dir) if settings.dir else Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("WANDB_SILENT", "true")  # our progress lines say where runs go
        import multiprocessing

        if multiprocessing.parent_process() is None:
            # a W&B service inherited from whatever launched this process (not our spawned workers) would still
            # hold the run ids of a killed earlier attempt: start our own, so a resumed run can take its id again
            os.environ.pop("WANDB_SERVICE", None)

    def _init_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"project": self.settings.project, "group": self.experiment_id,
                                  "tags": list(self.settings.tags), "dir": str(self.dir)}
        if self.settings.entity:
            kwargs["entity"] = self.settings.entity
        kwargs["mode"] = self.settings.resolved_mode()
        return kwargs

    def logger(self, info: LevelInfo) -> WandbLogger:
        """The ``WandbLogger`` of one level (its run starts when Lightning first logs)."""
        from lightning.pytorch.loggers import WandbLogger

        config = {**self.config, "level": info.level, "branch": info.branch, "replicate": info.replicate,
                  "remaining": info.remaining, "experiment_id": self.experiment_id,
                  "experiment_hash": self.experiment_hash}
        return WandbLogger(
            name=run_name(info.branch, info.level, info.remaining, info.replicate),
            id=run_id(self.experiment_id, info.branch, info.replicate, info.level), resume="allow",
            job_type=info.branch, config=config, save_dir=str(self.dir), log_model=False,
            **{k: v for k, v in self._init_kwargs().items() if k != "dir"},
        )

    def finish_level(self, logger: WandbLogger, row: Mapping[str, Any], ticket_path: Path | None) -> None:
        """Write the level's summary values and ticket artifact to its run, then finish the run."""
        import wandb

        run = logger.experiment
        run.summary.update(summary_values(row))
        if ticket_path is not None and self.settings.log_tickets:
            artifact = wandb.Artifact(
                ticket_artifact_name(self.experiment_id, row["branch"], int(row["replicate"]), int(row["level"])),
                type="lottery-ticket",
                metadata={"level": row["level"], "branch": row["branch"], "replicate": row["replicate"],
                          "remaining": row["remaining"], "test_acc": row.get("test_acc"),
                          "early_stop_test_acc": row.get("early_stop_test_acc"),
                          "experiment_id": self.experiment_id, "recipe_hash": self.experiment_hash},
            )
            artifact.add_file(str(ticket_path), name="ticket.safetensors")
            run.log_artifact(artifact, aliases=["latest", f"level-{row['level']}"])
        run.finish()

    def finish_experiment(self, rows: Sequence[Mapping[str, Any]], images: Mapping[str, Path] | None = None) -> None:
        """A ``summary`` run with the results table, test accuracy and early-stop iteration vs % remaining."""
        import wandb

        columns = ["branch", "replicate", "level", "remaining_pct", "test_acc", "early_stop_iter",
                   "early_stop_test_acc", "min_val_loss", "steps"]
        data = [[r["branch"], r["replicate"], r["level"], 100.0 * r["remaining"], r.get("test_acc"),
                 r.get("early_stop_iter"), r.get("early_stop_test_acc"), r.get("min_val_loss"), r.get("steps")]
                for r in rows]
        run = wandb.init(job_type="summary", name=f"{self.experiment_id} summary",
                         config={**self.config, "experiment_id": self.experiment_id,
                                 "experiment_hash": self.experiment_hash}, **self._init_kwargs())
        try:
            table = wandb.Table(columns=columns, data=data)
            payload: dict[str, Any] = {
                "results": table,
                "test_acc_vs_remaining": wandb.plot.line(
                    table, "remaining_pct", "test_acc", stroke="branch", title="Test accuracy vs % weights remaining"),
                "early_stop_vs_remaining": wandb.plot.line(
                    table, "remaining_pct", "early_stop_iter", stroke="branch",
                    title="Early-stopping iteration vs % weights remaining"),
            }
            for key, path in (images or {}).items():
                payload[f"report/{key}"] = wandb.Image(str(path))
            run.log(payload)
            run.summary.update({"levels": len({r["level"] for r in rows}), "runs": len(rows)})
        finally:
            run.finish()


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
    metrics = {f"lottery/{k}": v for k, v in result.summary().items()}
    for logger in loggers:
        logger.log_metrics(metrics, step=result.steps)
        logger.save()
    if tracker is not None:
        from lightning.pytorch.loggers import WandbLogger

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
    """Artifact name of a level's ticket (letters, digits, ``-``, ``_`` and ``.`` only)."""
    raw = f"{experiment_id}-{branch}-r{replicate}-level{level:02d}"
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in raw)


def summary_values(row: Mapping[str, Any]) -> dict[str, Any]:
    """The run summary of a level: results plus ``remaining/<layer>`` per prunable parameter."""
    values = {k: row.get(k) for k in SUMMARY_KEYS if row.get(k) is not None}
    values.update({f"remaining/{name}": v["remaining"] for name, v in row.get("layers", {}).items()})
    return values


# ------------------------------------------------------------------------------------ reading offline runs
@dataclass
class OfflineRun:
    """What an offline W&B run file holds: run metadata, config, summary, history rows and artifacts."""

    run_id: str = ""
    group: str = ""
    job_type: str = ""
    name: str = ""
    project: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    artifacts: list[dict[str, Any]] = field(default_factory=list)


def read_offline_run(run_dir: str | os.PathLike) -> OfflineRun:
    """Parse the ``run-*.wandb`` file of an offline run directory (W&B's own record log) without network."""
    from wandb.proto import wandb_internal_pb2 as pb

    files = sorted(Path(run_dir).glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no run-*.wandb file")
    out = OfflineRun()
    for data in _log_records(files[0].read_bytes()):
        record = pb.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            out.run_id, out.group, out.job_type, out.name, out.project = (
                r.run_id, r.run_group, r.job_type, r.display_name, r.project)
            out.config.update(_items(r.config.update))
        elif kind == "config":
            out.config.update(_items(record.config.update))
        elif kind == "summary":
            out.summary.update({_key(i): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "history":
            out.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "artifact":
            a = record.artifact
            out.artifacts.append({"name": a.name, "type": a.type, "metadata": json.loads(a.metadata or "{}"),
                                  "files": [e.path for e in a.manifest.contents], "aliases": list(a.aliases)})
    return out


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def _items(items: Any) -> dict[str, Any]:
    values = {}
    for item in items:
        value = json.loads(item.value_json)
        values[_key(item)] = value.get("value", value) if isinstance(value, dict) and set(value) <= {"value", "desc"} else value
    return values


def _log_records(raw: bytes) -> list[bytes]:
    """Records of W&B's transaction log: a 7-byte header, then LevelDB-style chunks in 32 KiB blocks."""
    block, pos, chunks, records = 32768, 7, [], []
    if raw[:4] != b":W&B":
        raise ValueError("not a W&B run file")
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        pos += 7
        if kind == 0 and length == 0:
            break
        chunks.append(raw[pos:pos + length])
        pos += length
        if kind in (1, 4):  # FULL or LAST
            records.append(b"".join(chunks))
            chunks = []
    return records
