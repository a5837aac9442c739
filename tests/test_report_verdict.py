"""The verdict at the top of the report: pure logic over the summary table (no matplotlib, no files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_lottery.report.record import ExperimentRecord
from lightning_lottery.report.verdict import training_budget, verdict, verdict_html, verdict_text
from lightning_lottery.store_format import Progress


def _entry(branch: str, level: int, acc: float, *, n: int = 1, ci: float | None = None, stop: float | None = None,
           stop_ci: float | None = None) -> dict:
    return {"branch": branch, "level": level, "n": n, "remaining": 0.5 ** level, "compression": 2.0 ** level,
            "test_acc": acc, "test_acc_ci95": ci, "early_stop_iter": stop, "early_stop_iter_ci95": stop_ci}


def _single(accs: dict[int, float], stops: dict[int, float] | None = None, branch: str = "ticket") -> list[dict]:
    return [_entry(branch, lv, acc, stop=(stops or {}).get(lv)) for lv, acc in accs.items()]


def test_single_replicate_winning_ticket_is_the_sparsest_level_at_or_above_dense():
    table = _single({0: 0.90, 1: 0.92, 2: 0.90, 3: 0.89, 4: 0.95}, stops={0: 2800, 4: 1200})
    v = verdict(table, "ticket", budget=3000)
    assert v.found is True and v.rule == "single" and v.level == 4 and v.remaining == 0.5 ** 4
    assert v.headline == ("Winning ticket: ticket at level 4 keeps 6.25% of the weights (16× compression) with "
                          "95.00% test accuracy vs 90.00% for the dense network.")
    assert "Rule: accuracy ≥ dense accuracy (one replicate)." in v.details
    assert "It learns faster: early stop at 1200 vs 2800 for the dense network (training budget 3000 it)." in v.details
    # level 2 ties the dense accuracy: ≥ counts
    assert verdict(_single({0: 0.90, 1: 0.80, 2: 0.90}), "ticket").level == 2


def test_replicates_use_dense_mean_minus_its_ci_and_say_so():
    table = [_entry("ticket", 0, 0.900, n=3, ci=0.010, stop=2800, stop_ci=200),
             _entry("ticket", 1, 0.905, n=3, ci=0.004, stop=2000, stop_ci=100),
             _entry("ticket", 2, 0.893, n=3, ci=0.005, stop=3000, stop_ci=0),  # within the dense CI: wins
             _entry("ticket", 3, 0.880, n=3, ci=0.005)]
    v = verdict(table, "ticket")
    assert v.found is True and v.rule == "ci" and v.level == 2 and v.replicates == 3
    assert "89.30 ± 0.50% test accuracy vs 90.00 ± 1.00% for the dense network" in v.headline
    assert "Rule: mean ≥ dense mean − the dense 95% CI half-width (89.00%), over 3 replicates." in v.details
    assert "It learns slower: early stop at 3000 vs 2800 ± 200 for the dense network." in v.details
    assert not any("One replicate" in line for line in v.details)


def test_no_winning_ticket_found():
    v = verdict(_single({0: 0.90, 1: 0.89, 2: 0.85}), "ticket")
    assert v.found is False and v.level == 1  # the closest level is named
    assert v.headline.startswith("No winning ticket found: no pruned level of ticket reaches the dense accuracy "
                                 "(90.00%); the closest, level 1 (50% of the weights), reaches 89.00% (1.0 pp below).")
    assert verdict_html(v).startswith('<section id="verdict" class="verdict-none">')


def test_controls_at_the_winning_level():
    table = [*_single({0: 0.90, 1: 0.91, 2: 0.905}),
             _entry("random_mask", 1, 0.89), _entry("random_mask", 2, 0.884),
             _entry("random_reinit", 1, 0.88), _entry("random_reinit", 2, 0.863)]
    v = verdict(table, "ticket")
    assert v.level == 2 and v.controls == pytest.approx({"random_reinit": 4.2, "random_mask": 2.1})
    assert ("Controls at 25% of the weights: random_reinit falls 4.2 pp below the ticket, random_mask 2.1 pp."
            in v.details)
    assert not any("No controls" in line or "Not run" in line for line in v.details)


def test_a_control_above_the_ticket_a_missing_level_and_a_control_not_run():
    table = [*_single({0: 0.90, 1: 0.91, 2: 0.905}, branch="weights_rewind"),
             _entry("random_mask", 2, 0.907), _entry("oneshot", 1, 0.80)]
    v = verdict(table, "weights_rewind")
    assert ("Controls at 25% of the weights: random_mask is 0.2 pp above the weights_rewind, oneshot has no run at "
            "this level." in v.details)
    assert "Not run: random_reinit." in v.details and v.controls["oneshot"] is None


def test_no_controls_and_one_replicate_are_stated():
    v = verdict(_single({0: 0.90, 1: 0.91}), "ticket")
    assert ("No controls were run: the ticket is not compared with random reinitialization or random masks."
            in v.details)
    assert "One replicate: no confidence intervals." in v.details


def test_no_verdict_without_dense_or_pruned_levels():
    assert verdict(_single({1: 0.9}), "ticket").found is None
    v = verdict(_single({0: 0.9}), "ticket")
    assert v.found is None and v.headline == "No verdict yet: no pruned level of ticket has finished."
    assert 'class="verdict-undecided"' in verdict_html(v)


def test_the_dense_level_is_the_main_lines():
    table = [_entry("random_reinit", 0, 0.99), *_single({0: 0.90, 1: 0.91})]
    assert verdict(table, "ticket").found is True


def test_verdict_text_from_rows_of_an_incomplete_experiment():
    rows = [{"branch": "ticket", "replicate": 0, "level": lv, "remaining": 0.8 ** lv, "alive": 10, "total": 10,
             "test_acc": acc, "early_stop_iter": stop, "steps": 3000}
            for lv, acc, stop in ((0, 0.87, 2800), (1, 0.88, 1200))]
    record = ExperimentRecord(Path("."), "demo", "", {}, rows, progress=Progress(2, 12, 2, 12))
    text = verdict_text(record)
    lines = text.splitlines()
    assert lines[0].startswith("Winning ticket: ticket at level 1 keeps 80% of the weights")
    assert lines[1].startswith("Provisional: this experiment is incomplete")
    assert "It learns faster: early stop at 1200 vs 2800 for the dense network (training budget 3000 it)." in lines
    assert "One replicate: no confidence intervals." in lines and any("No controls were run" in x for x in lines)
    assert training_budget(rows) == 3000 and training_budget([{"steps": None}]) is None
