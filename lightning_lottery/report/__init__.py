"""Plots and the report of an experiment, from its directory alone (no model, no training).

:func:`build_report` writes ``OUT/report/``: four figures, each as PNG and SVG (test accuracy and early-stopping
iteration vs % weights remaining, per-layer remaining fraction per level, validation-loss curves per level),
``summary.csv`` (the report's table at full precision), ``aggregate.csv`` (mean / std / 95% CI per branch and level)
and a self-contained ``report.html`` (images embedded as base64) that opens with the verdict: the sparsest winning
ticket, its early stop against the dense network's, how far the controls fall, or that none was found. The output
is deterministic: the same directory gives the same bytes, wherever it was copied to. Following Blalock et al.
(2020) the report names the (dataset, architecture, metric) triple, shows the dense level as a reference, the whole
trade-off curve, compression ratio and theoretical speedup (from ``costs.json``), and mean ± 95% CI over
replicates.

:func:`build_wandb_report` makes the matching W&B Report (``wandb_workspaces.reports.v2``) over the runs of the
experiment's W&B group, without saving it; :func:`publish_wandb_report` saves it when logged in.

The experiment is read through :class:`~lightning_lottery.store.ExperimentStore` only, and every file is written
atomically. Modules: :mod:`~.record` (what is read, the main branch), :mod:`~.table` (the summary table),
:mod:`~.style` and :mod:`~.figures` (the plots), :mod:`~.verdict` (the conclusion, :func:`verdict_text` for the
W&B report), :mod:`~.page` (the HTML page and checklist) and
:mod:`~.wandb_report` (the W&B Report).

Example:
    >>> from lightning_lottery.report import build_report, triple
    >>> triple({"data": {"class_path": "lightning_lottery.data.DigitsDataModule"},
    ...         "model": {"class_path": "lightning_lottery.models.LeNet300100"}})
    ('Digits', 'LeNet300100', 'top-1 test accuracy')
"""

from lightning_lottery.report.figures import FIGURES
from lightning_lottery.report.page import build_report
from lightning_lottery.report.record import ExperimentRecord, load_experiment, triple
from lightning_lottery.report.style import BRANCH_COLORS, DPI
from lightning_lottery.report.table import summary_table
from lightning_lottery.report.verdict import verdict_text
from lightning_lottery.report.wandb_report import build_wandb_report, publish_wandb_report

__all__ = ["BRANCH_COLORS", "DPI", "FIGURES", "ExperimentRecord", "build_report", "build_wandb_report",
           "load_experiment", "publish_wandb_report", "summary_table", "triple", "verdict_text"]
