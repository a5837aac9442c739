"""The verdict at the top of the report: the sparsest winning ticket, its early stop against the dense network's,
how far the controls fall at that level, and what the experiment did not measure (controls, replicates).

Pure logic over :func:`~lightning_lottery.report.table.summary_table` (no matplotlib). A level of the main line
*wins* when its test accuracy at the end of training reaches the dense network's (level 0): with one replicate,
accuracy ≥ dense accuracy; with replicates (the dense level has a 95% CI), mean ≥ dense mean − the dense CI
half-width. The verdict names the rule it used.

Example:
    >>> table = [{"branch": "ticket", "level": 0, "n": 1, "remaining": 1.0, "test_acc": 0.90},
    ...          {"branch": "ticket", "level": 1, "n": 1, "remaining": 0.5, "test_acc": 0.91},
    ...          {"branch": "ticket", "level": 2, "n": 1, "remaining": 0.25, "test_acc": 0.88}]
    >>> v = verdict(table, "ticket")
    >>> v.found, v.level, v.rule
    (True, 1, 'single')
    >>> v.headline  # doctest: +NORMALIZE_WHITESPACE
    'Winning ticket: ticket at level 1 keeps 50% of the weights with 91.00% test accuracy vs 90.00% for the
     dense network.'
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lightning_lottery.aggregate import branch_sort_key
from lightning_lottery.branches import main_line_names

if TYPE_CHECKING:
    from lightning_lottery.report.record import ExperimentRecord

__all__ = ["Verdict", "training_budget", "verdict", "verdict_html", "verdict_of", "verdict_text"]

#: The controls the paper compares a ticket with; the verdict says which of them were not run.
PAPER_CONTROLS = ("random_reinit", "random_mask")


@dataclass(frozen=True)
class Verdict:
    """What the report concludes. ``found``: a winning ticket (``True``), none (``False``) or no verdict possible
    (``None``: no dense level or no pruned level yet). ``rule``: ``"single"`` (accuracy ≥ dense accuracy) or
    ``"ci"`` (mean ≥ dense mean − dense 95% CI half-width). ``level`` / ``remaining``: the winning level (or,
    without one, the pruned level closest to the dense accuracy). ``controls``: branch → percentage points the
    control falls below the main line at that level (negative: above it; ``None``: no run there)."""

    found: bool | None
    main: str
    headline: str
    details: tuple[str, ...] = ()
    rule: str = "single"
    replicates: int = 1
    level: int | None = None
    remaining: float | None = None
    controls: dict[str, float | None] = field(default_factory=dict)

    @property
    def lines(self) -> list[str]:
        """The headline, then each detail (one sentence each)."""
        return [self.headline, *self.details]


def _pct(fraction: float) -> str:
    """A fraction of the weights as a short percentage (3 significant digits)."""
    pct = 100 * fraction
    return f"{pct:.3g}" if pct >= 1 else f"{pct:.2g}"


def _acc(entry: Mapping[str, Any], key: str = "test_acc") -> str:
    """An accuracy as shown in the table: ``91.00%`` or ``91.00 ± 0.40%``."""
    ci = entry.get(f"{key}_ci95")
    return f"{100 * entry[key]:.2f}" + (f" ± {100 * ci:.2f}" if ci else "") + "%"


def _iters(entry: Mapping[str, Any]) -> str:
    ci = entry.get("early_stop_iter_ci95")
    return f"{entry['early_stop_iter']:.0f}" + (f" ± {ci:.0f}" if ci else "")


def _pp(gap: float) -> str:
    """A gap in percentage points: one decimal, two below 0.05 pp."""
    return f"{abs(gap):.1f}" if abs(gap) >= 0.05 else f"{abs(gap):.2f}"


def _dense(table: Sequence[Mapping[str, Any]], main: str) -> Mapping[str, Any] | None:
    """The dense network: level 0 of the main line, else of the first branch (main lines first) that has it."""
    dense = [e for e in table if e["level"] == 0 and e.get("test_acc") is not None]
    dense.sort(key=lambda e: (e["branch"] != main, branch_sort_key(e["branch"])))
    return dense[0] if dense else None


def _early_stop_line(ticket: Mapping[str, Any], dense: Mapping[str, Any], budget: int | None) -> str | None:
    if ticket.get("early_stop_iter") is None or dense.get("early_stop_iter") is None:
        return None
    it, dense_it = ticket["early_stop_iter"], dense["early_stop_iter"]
    pace = "learns faster" if it < dense_it else "learns slower" if it > dense_it else "learns as fast"
    tail = f" (training budget {budget} it)" if budget else ""
    cis = ticket.get("early_stop_iter_ci95"), dense.get("early_stop_iter_ci95")
    if it != dense_it and all(cis) and abs(it - dense_it) < cis[0] + cis[1]:
        tail += "; the 95% CIs overlap"
    return f"It {pace}: early stop at {_iters(ticket)} vs {_iters(dense)} for the dense network{tail}."


def _controls_line(gaps: Mapping[str, float | None], main: str, remaining: float) -> str:
    parts, below_said = [], False
    for branch, gap in gaps.items():
        if gap is None:
            parts.append(f"{branch} has no run at this level")
        elif gap >= 0:
            parts.append(f"{branch} {_pp(gap)} pp" if below_said else f"{branch} falls {_pp(gap)} pp below the {main}")
            below_said = True
        else:
            parts.append(f"{branch} is {_pp(gap)} pp above the {main}")
    return f"Controls at {_pct(remaining)}% of the weights: " + ", ".join(parts) + "."


def verdict(table: Sequence[Mapping[str, Any]], main: str, budget: int | None = None) -> Verdict:
    """The verdict on ``table`` (:func:`~lightning_lottery.report.table.summary_table`'s rows) for the main line
    ``main``; ``budget`` (the runs' final step) is named next to the early-stop iterations.

    Example:
        >>> table = [{"branch": "ticket", "level": 0, "n": 1, "remaining": 1.0, "test_acc": 0.90},
        ...          {"branch": "ticket", "level": 1, "n": 1, "remaining": 0.5, "test_acc": 0.85}]
        >>> verdict(table, "ticket").lines[:2]  # doctest: +NORMALIZE_WHITESPACE
        ['No winning ticket found: no pruned level of ticket reaches the dense accuracy (90.00%); the closest,
          level 1 (50% of the weights), reaches 85.00% (5.0 pp below).', 'Rule: accuracy ≥ dense accuracy
          (one replicate).']
    """
    mains = main_line_names()
    dense = _dense(table, main)
    if dense is None:
        return Verdict(None, main, f"No verdict: the results have no dense network (level 0) of {main}.")
    pruned = [e for e in table if e["branch"] == main and e["level"] > 0 and e.get("test_acc") is not None
              and e.get("remaining") is not None]
    replicates = max([int(e.get("n") or 1) for e in (dense, *pruned)])
    rule = "ci" if dense.get("test_acc_ci95") else "single"
    threshold = dense["test_acc"] - (dense["test_acc_ci95"] if rule == "ci" else 0.0)
    if rule == "ci":
        rule_line = (f"Rule: mean ≥ dense mean − the dense 95% CI half-width ({100 * threshold:.2f}%), over "
                     f"{replicates} replicates.")
    else:
        rule_line = "Rule: accuracy ≥ dense accuracy (one replicate)." if replicates == 1 else (
            "Rule: accuracy ≥ dense accuracy (the dense level has no confidence interval).")
    controls = sorted({e["branch"] for e in table if e["branch"] not in mains},  # the paper's controls first
                      key=lambda b: (PAPER_CONTROLS.index(b) if b in PAPER_CONTROLS else len(PAPER_CONTROLS), b))
    details: list[str] = []
    if not pruned:
        return Verdict(None, main, f"No verdict yet: no pruned level of {main} has finished.", (rule_line,), rule,
                       replicates)
    winners = [e for e in pruned if e["test_acc"] >= threshold]
    gaps: dict[str, float | None] = {}
    if winners:
        best = min(winners, key=lambda e: (e["remaining"], e["level"]))
        smaller = f" ({best['compression']:.3g}× compression)" if best.get("compression") else ""
        headline = (f"Winning ticket: {main} at level {best['level']} keeps {_pct(best['remaining'])}% of the "
                    f"weights{smaller} with {_acc(best)} test accuracy vs {_acc(dense)} for the dense network.")
        details.append(rule_line)
        if (line := _early_stop_line(best, dense, budget)) is not None:
            details.append(line)
        at_level = {e["branch"]: e for e in table if e["level"] == best["level"]}
        for branch in controls:
            other = at_level.get(branch)
            acc = other.get("test_acc") if other else None
            gaps[branch] = None if acc is None else 100 * (best["test_acc"] - acc)
        if gaps:
            details.append(_controls_line(gaps, main, best["remaining"]))
    else:
        best = max(pruned, key=lambda e: (e["test_acc"], -e["level"]))
        headline = (f"No winning ticket found: no pruned level of {main} reaches the dense accuracy "
                    f"({_acc(dense)}); the closest, level {best['level']} ({_pct(best['remaining'])}% of the "
                    f"weights), reaches {_acc(best)} ({_pp(100 * (dense['test_acc'] - best['test_acc']))} pp below).")
        details.append(rule_line)
    if not controls:
        details.append(f"No controls were run: the {main} is not compared with random reinitialization or random "
                       "masks.")
    elif missing := [c for c in PAPER_CONTROLS if c not in controls]:
        details.append("Not run: " + ", ".join(missing) + ".")
    if replicates == 1:
        details.append("One replicate: no confidence intervals.")
    return Verdict(bool(winners), main, headline, tuple(details), rule, replicates, best["level"], best["remaining"],
                   gaps)


def training_budget(rows: Sequence[Mapping[str, Any]]) -> int | None:
    """The training budget: the largest final step (``steps``) of the runs; ``None`` without any.

    Example:
        >>> training_budget([{"steps": 2800}, {"steps": 3000}, {}])
        3000
    """
    steps = [int(r["steps"]) for r in rows if isinstance(r.get("steps"), (int, float)) and r["steps"] > 0]
    return max(steps) if steps else None


def verdict_of(record: ExperimentRecord, table: Sequence[Mapping[str, Any]] | None = None) -> Verdict:
    """The verdict of an experiment record (its table is computed when not given); an incomplete experiment's
    verdict starts by saying it is provisional."""
    from lightning_lottery.report.record import main_branch
    from lightning_lottery.report.table import summary_table

    table = summary_table(record.rows) if table is None else table
    result = verdict(table, main_branch(record), training_budget(record.rows))
    progress = record.progress
    if progress is not None and not progress.complete:
        result = Verdict(result.found, result.main, result.headline,
                         (f"Provisional: this experiment is {progress.describe()}.", *result.details), result.rule,
                         result.replicates, result.level, result.remaining, result.controls)
    return result


def verdict_text(record: ExperimentRecord) -> str:
    """The verdict as plain text, one sentence a line (the headline first), e.g. for a W&B Markdown block.

    Example:
        >>> from pathlib import Path
        >>> from lightning_lottery.report.record import ExperimentRecord
        >>> rows = [{"branch": "ticket", "level": 0, "remaining": 1.0, "test_acc": 0.9, "steps": 100},
        ...         {"branch": "ticket", "level": 1, "remaining": 0.5, "test_acc": 0.9, "steps": 100}]
        >>> print(verdict_text(ExperimentRecord(Path("."), "e", "", {}, rows)))  # doctest: +NORMALIZE_WHITESPACE
        Winning ticket: ticket at level 1 keeps 50% of the weights with 90.00% test accuracy vs 90.00% for the
        dense network.
        Rule: accuracy ≥ dense accuracy (one replicate).
        No controls were run: the ticket is not compared with random reinitialization or random masks.
        One replicate: no confidence intervals.
    """
    return "\n".join(verdict_of(record).lines)


def verdict_html(result: Verdict) -> str:
    """The ``<section id="verdict">`` of the page: the headline in bold, then the details."""
    cls = {True: "found", False: "none", None: "undecided"}[result.found]
    items = "".join(f"<li>{html.escape(line)}</li>" for line in result.details)
    return (f'<section id="verdict" class="verdict-{cls}"><h2>Verdict</h2><p class="headline"><b>'
            f"{html.escape(result.headline)}</b></p>" + (f"<ul>{items}</ul>" if items else "") + "</section>")
