"""The W&B Report of an experiment (``wandb_workspaces.reports.v2``): built offline from the experiment directory,
published only when logged in."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from lightning_lottery.aggregate import branch_sort_key
from lightning_lottery.report.record import load_experiment, main_branch, triple
from lightning_lottery.report.table import summary_table, table_markdown

if TYPE_CHECKING:
    from wandb_workspaces.reports.v2 import Report

__all__ = ["build_wandb_report", "publish_wandb_report"]


def build_wandb_report(experiment_dir: str | os.PathLike, project: str, entity: str | None = None) -> Report:
    """A W&B Report (``wandb_workspaces.reports.v2``, not saved) over the runs of the experiment's W&B group.

    The runs are the levels (config ``level``, ``branch``, ``replicate``, ``remaining``; summary ``test_acc``,
    ``early_stop_iter``, ``early_stop_test_acc``); the experiment's ``summary`` run is left out. Each run is one
    point, so the accuracy and early-stopping charts are scatter plots of summary values against the config's
    ``remaining`` (log x; W&B line plots only take logged history on x). Also a validation-loss line plot per
    run and the runs table (its columns pinned to the level's keys). Works offline: nothing is sent; ``entity``
    defaults to ``$WANDB_ENTITY`` (or empty, resolved by :func:`publish_wandb_report`).

    Example:
        >>> import json, pathlib, tempfile
        >>> out = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (out / "experiment.json").write_text(json.dumps({"id": "exp-1", "hash": "h", "config": {}}))
        >>> _ = (out / "results.json").write_text(json.dumps([{"branch": "ticket", "level": 0, "remaining": 1.0}]))
        >>> report = build_wandb_report(out, project="p", entity="me")
        >>> report.title, report.project, len(report.blocks)
        ('Lottery tickets: exp-1', 'p', 6)
    """
    import wandb_workspaces.reports.v2 as wr

    record = load_experiment(experiment_dir)
    entity = entity if entity is not None else os.environ.get("WANDB_ENTITY", "")
    dataset, arch, metric = triple(record.config)
    group = record.id.replace("'", "\\'")
    runset = wr.Runset(
        entity=entity, project=project, name=record.id,
        filters=f"Metric('Group') = '{group}' and Metric('JobType') != 'summary'",
        order=[wr.OrderBy("CreatedTimestamp", ascending=True)],
        pinned_columns=["run:displayName", "config:branch.value", "config:level.value", "config:replicate.value",
                        "config:remaining.value"],
        visible_columns=["summary:test_acc", "summary:early_stop_iter", "summary:early_stop_test_acc",
                         "summary:best_val_acc", "summary:min_val_loss", "summary:steps"],
    )

    def scatter(y: str, title: str, x: int, yy: int) -> Any:
        return wr.ScatterPlot(title=title, x=wr.Config("remaining"), y=wr.SummaryMetric(y), log_x=True,
                              layout=wr.Layout(x=x, y=yy, w=12, h=8))

    table = summary_table(record.rows, record.costs)
    main = main_branch(record)
    best = [e for e in table if e["branch"] == main and e.get("test_acc") is not None]
    summary_md = (
        f"**Dataset** {dataset} · **architecture** {arch} · **metric** {metric}  \n"
        f"W&B group `{record.id}` · {len(record.rows)} trained network(s) · "
        f"{len({e['level'] for e in table})} level(s) · branches: "
        f"{', '.join(sorted({e['branch'] for e in table}, key=branch_sort_key))}"
    )
    if best:
        sparsest = min(best, key=lambda e: e["remaining"] or 1.0)
        summary_md += (f"  \nSparsest {main}: {100 * sparsest['remaining']:.3g}% of weights remaining, "
                       f"test accuracy {100 * sparsest['test_acc']:.2f}%.")
    return wr.Report(
        project=project,
        entity=entity,
        title=f"Lottery tickets: {record.id}"[:128],
        description=f"{arch} on {dataset}: iterative magnitude pruning, one run per level and branch.",
        blocks=[
            wr.MarkdownBlock(text=summary_md),
            wr.H2(text="Accuracy and early stopping vs weights remaining"),
            wr.PanelGrid(
                runsets=[runset],
                panels=[
                    scatter("test_acc", "Test accuracy vs fraction of weights remaining", 0, 0),
                    scatter("early_stop_test_acc", "Test accuracy at early stop vs fraction remaining", 12, 0),
                    scatter("early_stop_iter", "Early-stopping iteration vs fraction remaining", 0, 8),
                    wr.LinePlot(title="Validation loss per level", x="trainer/global_step", y=["val_loss"],
                                layout=wr.Layout(x=12, y=8, w=12, h=8)),
                ],
            ),
            wr.H2(text="Runs"),
            wr.P(text="One run per level, branch and replicate: the run set's table above lists their configuration "
                      "and results. Means over replicates (± 95% CI), from the experiment directory:"),
            wr.MarkdownBlock(text=table_markdown(table, with_speedup=record.costs is not None)),
        ],
    )


def _publish_blocker() -> str | None:
    """Why a report cannot be published from here, checked without network; ``None`` if it can be tried."""
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode in ("offline", "dryrun", "disabled"):
        return f"W&B is in {mode} mode (WANDB_MODE={mode})"
    if os.environ.get("WANDB_DISABLED", "").strip().lower() in ("1", "true", "yes"):
        return "W&B is disabled (WANDB_DISABLED)"
    import wandb

    if not wandb.login(prompt=False, verify=False):  # reads env / settings / netrc only
        return "not logged in to W&B (no API key)"
    return None


def publish_wandb_report(experiment_dir: str | os.PathLike, project: str, entity: str | None = None,
                         draft: bool = False) -> str:
    """Build the W&B report (:func:`build_wandb_report`) and save it to W&B; returns its URL.

    Raises ``RuntimeError`` (one line) before any network access when W&B is offline, disabled or not logged in.

    Example:
        >>> import os
        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ, {"WANDB_MODE": "offline"}):
        ...     publish_wandb_report(".", project="p")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        RuntimeError: cannot publish the W&B report: W&B is in offline mode (WANDB_MODE=offline); ...
    """
    blocker = _publish_blocker()
    if blocker:
        raise RuntimeError(f"cannot publish the W&B report: {blocker}; run `wandb login` online "
                           "(and unset WANDB_MODE) to publish it")
    if not entity and not os.environ.get("WANDB_ENTITY"):
        import wandb

        entity = wandb.Api().default_entity
    report = build_wandb_report(experiment_dir, project=project, entity=entity)
    report.save(draft=draft)
    return str(report.url)
