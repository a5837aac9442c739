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

__all__ = ["GROUPBY", "RANGE", "build_wandb_report", "publish_wandb_report"]

#: How the report groups the runs: the replicates of one branch and level are one group.
GROUPBY: tuple[str, ...] = ("config.branch", "config.level")
#: The error band / bars of a group: the standard error of the mean over its runs (W&B's ``stderr``).
RANGE = "stderr"
#: The x of the accuracy curves: each run's % of weights remaining, logged once in its history.
REMAINING_X = "lottery/remaining_pct"


def build_wandb_report(experiment_dir: str | os.PathLike, project: str, entity: str | None = None) -> Report:
    """A W&B Report (``wandb_workspaces.reports.v2``, not saved) over the runs of the experiment's W&B group.

    The runs are the experiment's runs (config ``level``, ``branch``, ``replicate``, ``remaining_pct``; summary
    ``test_acc``, ...); the experiment's ``summary`` run is left out. Two run sets over them:

    - grouped by ``config.branch``: line plots of ``lottery/test_acc``, ``lottery/early_stop_test_acc`` and
      ``lottery/early_stop_iter`` against ``lottery/remaining_pct`` (each run logs them once, at its last step;
      W&B line plots take history on x, not config), log x, one line per branch: the mean over the runs at each
      % remaining, i.e. over the replicates of a level, with a standard-error band (``groupby_rangefunc``);
    - grouped by ``config.branch`` and ``config.level`` (:data:`GROUPBY`): the runs table with one row per
      level, a bar chart of the test accuracy per group with standard-error bars, the validation loss per group
      (mean ± standard error) and a scatter plot of every run (W&B's scatter plot has no grouping options).

    Works offline: nothing is sent; ``entity`` defaults to ``$WANDB_ENTITY`` (or empty, resolved by
    :func:`publish_wandb_report`).

    Example:
        >>> import json, pathlib, tempfile
        >>> out = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (out / "experiment.json").write_text(json.dumps({"id": "exp-1", "hash": "h", "config": {}}))
        >>> _ = (out / "results.json").write_text(json.dumps([{"branch": "ticket", "level": 0, "remaining": 1.0}]))
        >>> report = build_wandb_report(out, project="p", entity="me")
        >>> report.title, report.project, len(report.blocks)
        ('Lottery tickets: exp-1', 'p', 8)
    """
    import wandb_workspaces.reports.v2 as wr

    record = load_experiment(experiment_dir)
    entity = entity if entity is not None else os.environ.get("WANDB_ENTITY", "")
    dataset, arch, metric = triple(record.config)
    group = record.id.replace("'", "\\'")
    levels_filter = f"Metric('Group') = '{group}' and Metric('JobType') != 'summary'"

    def runset(name: str, groupby: list[str]) -> Any:
        return wr.Runset(
            entity=entity, project=project, name=name, filters=levels_filter, groupby=groupby,
            order=[wr.OrderBy("CreatedTimestamp", ascending=True)],
            pinned_columns=["run:displayName", "config:branch.value", "config:level.value",
                            "config:replicate.value", "config:remaining_pct.value"],
            visible_columns=["summary:test_acc", "summary:early_stop_iter", "summary:early_stop_test_acc",
                             "summary:best_val_acc", "summary:min_val_loss", "summary:steps"],
        )

    def curve(y: str, title: str, x: int, yy: int) -> Any:
        # one point per run in its history (``lottery/<key>`` at the run's last step); grouped by branch, W&B
        # draws the mean over the runs at each x — the replicates of a level — and their standard error as a band
        return wr.LinePlot(title=title, x=REMAINING_X, y=[y], log_x=True, title_x="% weights remaining",
                           groupby=wr.Config("branch"), groupby_aggfunc="mean", groupby_rangefunc=RANGE,
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
            wr.H2(text="Accuracy and early stopping vs weights remaining (mean ± standard error over replicates)"),
            wr.PanelGrid(
                runsets=[runset(f"{record.id} by branch", ["config.branch"])],
                panels=[
                    curve("lottery/test_acc", "Test accuracy vs % weights remaining", 0, 0),
                    curve("lottery/early_stop_test_acc", "Test accuracy at early stop vs % weights remaining", 12, 0),
                    curve("lottery/early_stop_iter", "Early-stopping iteration vs % weights remaining", 0, 8),
                ],
            ),
            wr.H2(text="Per branch and level (the replicates of a level grouped)"),
            wr.PanelGrid(
                runsets=[runset(record.id, list(GROUPBY))],
                panels=[
                    wr.BarPlot(title="Test accuracy per branch and level", metrics=[wr.SummaryMetric("test_acc")],
                               orientation="v", groupby_aggfunc="mean", groupby_rangefunc=RANGE,
                               layout=wr.Layout(x=0, y=0, w=12, h=8)),
                    wr.LinePlot(title="Validation loss per branch and level", x="trainer/global_step",
                                y=["val_loss"], groupby_aggfunc="mean", groupby_rangefunc=RANGE,
                                layout=wr.Layout(x=12, y=0, w=12, h=8)),
                    wr.ScatterPlot(title="Test accuracy of every run vs % remaining", x=wr.Config("remaining_pct"),
                                   y=wr.SummaryMetric("test_acc"), log_x=True,
                                   layout=wr.Layout(x=0, y=8, w=12, h=8)),
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
