"""W&B tracking, read back from W&B's own offline run files (no network, no key)."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from conftest import TinyData, TinyMLP

from lightning_lottery import PruningScheduler
from lightning_lottery.tracking import WandbSettings, read_offline_run, run_name, ticket_artifact_name

TRAINER = dict(max_steps=8, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
SECRET = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """One small experiment with W&B offline: 3 ticket levels + random_mask controls."""
    import os

    out = tmp_path_factory.mktemp("tracked")
    old = os.environ.get("WANDB_API_KEY")
    os.environ["WANDB_API_KEY"] = SECRET  # must never be written anywhere
    try:
        torch.manual_seed(0)
        rows = PruningScheduler(
            TinyMLP(), TinyData(), levels=2, rate=0.5, val_every_n_steps=4, out_dir=str(out), controls=["random_mask"],
            trainer_kwargs=TRAINER, stream=None, wandb=WandbSettings(project="lottery-tests", mode="offline",
                                                                     tags=["test"]),
        ).run()
    finally:
        if old is None:
            os.environ.pop("WANDB_API_KEY", None)
        else:
            os.environ["WANDB_API_KEY"] = old
    runs = [read_offline_run(p) for p in sorted((out / "wandb").glob("offline-run-*"))]
    return out, rows, runs


def test_one_run_per_level_and_branch_in_one_group(experiment):
    out, rows, runs = experiment
    experiment_id = json.loads((out / "experiment.json").read_text())["id"]
    level_runs = [r for r in runs if r.job_type != "summary"]
    assert len(level_runs) == len(rows) == 5  # ticket L0-L2, random_mask L1-L2
    assert {r.group for r in runs} == {experiment_id}
    assert sorted(r.job_type for r in level_runs) == ["random_mask"] * 2 + ["ticket"] * 3
    by_name = {r.name: r for r in level_runs}
    for row in rows:
        run = by_name[run_name(row["branch"], row["level"], row["remaining"])]
        assert run.project == "lottery-tests"
        assert run.config["level"] == row["level"] and run.config["branch"] == row["branch"]
        assert run.config["replicate"] == 0 and run.config["remaining"] == row["remaining"]
        assert run.config["lottery"]["rate"] == 0.5  # the resolved configuration
        assert run.summary["test_acc"] == pytest.approx(row["test_acc"])
        assert run.summary["early_stop_iter"] == row["early_stop_iter"]
        assert run.summary["early_stop_test_acc"] == pytest.approx(row["early_stop_test_acc"])
        for layer, values in row["layers"].items():
            assert run.summary[f"remaining/{layer}"] == pytest.approx(values["remaining"])
        # per-step metrics were logged during training
        assert any("val_loss" in h for h in run.history) and any("train_loss" in h or "epoch" in h for h in run.history)


def test_tickets_are_artifacts_with_metadata(experiment):
    out, rows, runs = experiment
    experiment = json.loads((out / "experiment.json").read_text())
    artifacts = {a["name"]: a for r in runs for a in r.artifacts}
    for row in rows:
        name = ticket_artifact_name(experiment["id"], row["branch"], 0, row["level"])
        art = artifacts[name]
        assert art["type"] == "lottery-ticket" and art["files"] == ["ticket.safetensors"]
        meta = art["metadata"]
        assert meta["level"] == row["level"] and meta["remaining"] == pytest.approx(row["remaining"])
        assert meta["test_acc"] == pytest.approx(row["test_acc"]) and meta["recipe_hash"] == experiment["hash"]


def test_summary_run_has_results_table_and_curves(experiment):
    _, rows, runs = experiment
    (summary,) = [r for r in runs if r.job_type == "summary"]
    s = summary.summary
    assert s["results/_type"] == "table-file" and s["results/nrows"] == len(rows)
    assert s["test_acc_vs_remaining_table/nrows"] == len(rows)  # the line plots' data
    assert s["early_stop_vs_remaining_table/nrows"] == len(rows)
    assert s["report/accuracy/_type"] == "image-file"  # the report's figures
    assert s["runs"] == len(rows)


def test_no_secret_is_written(experiment):
    out, _, _ = experiment
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_csv_logger_receives_the_same_level_metrics(experiment):
    out, rows, _ = experiment
    for row in rows:
        log = out / "replicate_0" / row["branch"] / f"level_{row['level']:02d}" / "logs" / "metrics.csv"
        lines = list(csv.DictReader(open(log)))
        final = [line for line in lines if line.get("lottery/test_acc")]
        assert final and float(final[-1]["lottery/test_acc"]) == pytest.approx(row["test_acc"])


def test_tracking_can_be_switched_off(tmp_path):
    PruningScheduler(TinyMLP(), TinyData(), levels=1, rate=0.5, out_dir=str(tmp_path), trainer_kwargs=TRAINER,
                     stream=None, wandb=WandbSettings(enabled=False)).run()
    assert not (tmp_path / "wandb").exists()
