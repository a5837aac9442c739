"""The engine gives the same results as the engine it replaced: every branch and rewind mode of the smoke recipe.

``tests/data/engine_golden.json`` holds the rows of ``results.csv`` (every column but ``wall_s``) and the checksum
of every run's mask, recorded with the engine before the redesign (``scheduler.py`` as one class, commit 017311f).
Rerecord only for an intended change of results: ``LOTTERY_RECORD_GOLDEN=1 pytest tests/test_engine_golden.py``.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import pytest
from safetensors.torch import load_file

from lightning_lottery.cli import main
from lightning_lottery.masks import checksum
from lightning_lottery.report import load_experiment
from lightning_lottery.report.record import main_branch

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "recipes" / "lenet300_digits_smoke.yaml")
GOLDEN = Path(__file__).parent / "data" / "engine_golden.json"
BASE = ["--trainer.max_steps", "20", "--lottery.val_every_n_steps", "5", "--lottery.rewind_to", "5it",
        "--wandb.enabled", "false", "--quiet", "true"]

#: name → command-line overrides: together every branch and every rewind mode.
SCENARIOS: dict[str, list[str]] = {
    "full_controls_2reps": ["--lottery.levels", "1", "--lottery.replicates", "2",
                            "--lottery.controls", "[random_reinit, random_mask, oneshot]"],
    "weights_controls": ["--lottery.levels", "2", "--lottery.rewind", "weights",
                         "--lottery.controls", "[random_reinit, random_mask]"],
    "lr": ["--lottery.levels", "2", "--lottery.rewind", "lr", "--model.init_args.milestones", "[8]"],
    "finetune": ["--lottery.levels", "2", "--lottery.rewind", "finetune", "--model.init_args.milestones", "[8]"],
}


def _run(name: str, out_dir: Path) -> dict[str, object]:
    assert main(["find", "--config", SMOKE, "--lottery.out_dir", str(out_dir), *BASE, *SCENARIOS[name]]) == 0
    with open(out_dir / "results.csv") as f:
        rows = [{k: v for k, v in row.items() if k != "wall_s"} for row in csv.DictReader(f)]
    masks = {str(p.parent.relative_to(out_dir)): checksum(load_file(p))
             for p in sorted(out_dir.glob("replicate_*/*/level_*/mask.safetensors"))}
    return {"rows": rows, "masks": masks}


def _same(recorded: str, now: str) -> bool:
    if recorded == now:
        return True
    try:
        return math.isclose(float(recorded), float(now), rel_tol=1e-6, abs_tol=1e-9)
    except ValueError:
        return False


def test_the_main_line_comes_first_in_the_results_table(tmp_path):
    """``results.csv`` lists each level's main line before its controls, whatever the main line is called (the
    engine before the redesign put ``weights_rewind`` after ``random_mask``)."""
    rows = _run("weights_controls", tmp_path / "exp")["rows"]
    assert [(r["level"], r["branch"]) for r in rows] == [
        ("0", "weights_rewind"), ("1", "weights_rewind"), ("1", "random_mask"), ("1", "random_reinit"),
        ("2", "weights_rewind"), ("2", "random_mask"), ("2", "random_reinit")]
    # the report of that experiment is about the main line, not a control
    record = load_experiment(tmp_path / "exp")
    assert main_branch(record) == "weights_rewind"
    html = (tmp_path / "exp" / "report" / "report.html").read_text()
    assert "trade-off curve with 3 operating points" in html


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_results_match_the_engine_before_the_redesign(tmp_path, name):
    result = _run(name, tmp_path / name)
    if os.environ.get("LOTTERY_RECORD_GOLDEN"):
        golden = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
        golden[name] = result
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
        pytest.skip("golden results recorded (LOTTERY_RECORD_GOLDEN is set): nothing to compare against this time")
    expected = json.loads(GOLDEN.read_text())[name]
    assert result["masks"] == expected["masks"]
    key = lambda row: (row["replicate"], row["level"], row["branch"])  # noqa: E731
    got_rows = {key(row): row for row in result["rows"]}
    assert sorted(got_rows) == sorted(key(row) for row in expected["rows"])
    for want in expected["rows"]:
        got = got_rows[key(want)]
        assert set(got) >= set(want), f"columns lost: {set(want) - set(got)}"
        different = {k: (want[k], got[k]) for k in want if not _same(want[k], got[k])}
        assert not different, f"{want['branch']} level {want['level']} r{want['replicate']}: {different}"
