"""Experiment tracking in Weights & Biases: one run per run of the experiment, the experiment as one group,
lineage through artifacts, a summary run.

Every run (replicate, branch, level) is its own W&B run, handed to Lightning's ``WandbLogger``: ``group`` is the
experiment id, ``job_type`` the branch, the run name shows the level and the % of weights remaining, and the run
config holds the resolved recipe plus ``level``, ``branch``, ``replicate``, ``remaining`` and ``remaining_pct``.
Grouping by ``config.branch`` and ``config.level`` therefore aggregates exactly the replicates of one level (the
W&B Report does: :mod:`lightning_lottery.report.wandb_report`); the group stays one experiment. A run uses the
artifacts it starts from (rewind point, the level's mask) and logs what it makes (ticket, next mask): see
:class:`WandbTracker`. When a run is done it gets its results as summary values (and ``lottery/<key>`` plus
``lottery/remaining_pct`` in its history, for line plots against % remaining), then it is finished. A final
``summary`` run logs the results, their mean ± 95% CI over replicates and the replicates' mask overlap.

Offline first: with ``WANDB_MODE=offline`` (or ``mode: offline``) everything is written under
``<experiment>/wandb/`` for a later ``wandb sync``. No API key is ever written anywhere by this module.
:func:`read_offline_run` reads an offline run back (wandb 0.31 has no reader of its own: the transaction log is
read by its Go core only).

Example:
    >>> from lightning_lottery.tracking import WandbSettings
    >>> WandbSettings(project="lottery", mode="offline").enabled
    True
"""

from lightning_lottery.tracking.artifacts import use_artifact
from lightning_lottery.tracking.offline import OfflineRun, read_offline_run
from lightning_lottery.tracking.runs import (
    LoggerFactory,
    make_loggers,
    mask_artifact_name,
    publish_result,
    rewind_artifact_name,
    run_id,
    run_name,
    summary_values,
    ticket_artifact_name,
)
from lightning_lottery.tracking.settings import WandbSettings
from lightning_lottery.tracking.summary import (
    aggregate_table,
    ci_chart,
    mask_overlap,
    mask_overlap_by_level,
)
from lightning_lottery.tracking.tracker import WandbTracker

__all__ = ["LoggerFactory", "OfflineRun", "WandbSettings", "WandbTracker", "aggregate_table", "ci_chart",
           "make_loggers", "mask_artifact_name", "mask_overlap", "mask_overlap_by_level", "publish_result",
           "read_offline_run", "rewind_artifact_name", "run_id", "run_name", "summary_values",
           "ticket_artifact_name", "use_artifact"]
