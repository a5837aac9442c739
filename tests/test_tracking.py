"""W&B tracking, read back from W&B's own offline run files (no network, no key)."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from conftest import TinyData, TinyMLP

from lightning_lottery import PruningScheduler
from lightning_lottery.aggregate import aggregate
from lightning_lottery.masks import checksum, load_mask
from lightning_lottery.ticket import Ticket
from lightning_lottery.tracking import (
    WandbSettings,
    mask_artifact_name,
    mask_overlap,
    read_offline_run,
    rewind_artifact_name,
    run_name,
    ticket_artifact_name,
)

TRAINER = dict(max_steps=8, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
SECRET = "0123456789abcdef0123456789abcdef01234567"


REPLICATES = 2


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """One small experiment with W&B offline: 3 ticket levels + random_mask controls, 2 replicates; every W&B
    notice printed (``wandb.termwarn``) and every warning raised is recorded."""
    import os
    import warnings
    from unittest import mock

    import wandb

    out = tmp_path_factory.mktemp("tracked")
    old = os.environ.get("WANDB_API_KEY")
    os.environ["WANDB_API_KEY"] = SECRET  # must never be written anywhere
    notices: list[str] = []
    real_termwarn = wandb.termwarn
    try:
        torch.manual_seed(0)
        with warnings.catch_warnings(record=True) as caught, \
                mock.patch.object(wandb, "termwarn", lambda text, *a, **k: (notices.append(str(text)),
                                                                           real_termwarn(text, *a, **k))):
            warnings.simplefilter("always")
            rows = PruningScheduler(
                TinyMLP(), TinyData(), levels=2, rate=0.5, val_every_n_steps=4, out_dir=str(out),
                controls=["random_mask"], replicates=REPLICATES, trainer_kwargs=TRAINER, stream=None,
                wandb=WandbSettings(project="lottery-tests", mode="offline", tags=["test"]),
            ).run()
    finally:
        if old is None:
            os.environ.pop("WANDB_API_KEY", None)
        else:
            os.environ["WANDB_API_KEY"] = old
    paths = sorted((out / "wandb").glob("offline-run-*"))
    runs = [read_offline_run(p) for p in paths]
    for run, path in zip(runs, paths):
        run.path = path  # type: ignore[attr-defined]
    wandb_warnings = [str(w.message) for w in caught if "wandb" in (w.filename or "")]
    return out, rows, runs, notices + wandb_warnings


def test_one_run_per_level_and_branch_in_one_group(experiment):
    out, rows, runs, _ = experiment
    experiment_id = json.loads((out / "experiment.json").read_text())["id"]
    level_runs = [r for r in runs if r.job_type != "summary"]
    assert len(level_runs) == len(rows) == 5 * REPLICATES  # ticket L0-L2, random_mask L1-L2
    assert {r.group for r in runs} == {experiment_id}
    assert sorted(r.job_type for r in level_runs) == ["random_mask"] * 2 * REPLICATES + ["ticket"] * 3 * REPLICATES
    by_name = {r.name: r for r in level_runs}
    for row in rows:
        run = by_name[run_name(row["branch"], row["level"], row["remaining"], row["replicate"])]
        assert run.project == "lottery-tests"
        assert run.config["level"] == row["level"] and run.config["branch"] == row["branch"]
        assert run.config["replicate"] == row["replicate"] and run.config["remaining"] == row["remaining"]
        assert run.config["remaining_pct"] == pytest.approx(100 * row["remaining"])
        assert run.config["lottery"]["rate"] == 0.5  # the resolved configuration
        assert run.summary["test_acc"] == pytest.approx(row["test_acc"])
        assert run.summary["early_stop_iter"] == row["early_stop_iter"]
        assert run.summary["early_stop_test_acc"] == pytest.approx(row["early_stop_test_acc"])
        for layer, values in row["layers"].items():
            assert run.summary[f"remaining/{layer}"] == pytest.approx(values["remaining"])
        # per-step metrics were logged during training
        assert any("val_loss" in h for h in run.history) and any("train_loss" in h or "epoch" in h for h in run.history)


def test_tickets_are_artifacts_with_metadata(experiment):
    out, rows, runs, _ = experiment
    experiment = json.loads((out / "experiment.json").read_text())
    artifacts = {a["name"]: a for r in runs for a in r.logged}
    for row in rows:
        name = ticket_artifact_name(experiment["id"], row["branch"], row["replicate"], row["level"])
        art = artifacts[name]
        assert art["type"] == "lottery-ticket" and art["files"] == ["ticket.safetensors"]
        meta = art["metadata"]
        assert meta["level"] == row["level"] and meta["remaining"] == pytest.approx(row["remaining"])
        assert meta["branch"] == row["branch"] and meta["replicate"] == row["replicate"]
        assert meta["test_acc"] == pytest.approx(row["test_acc"]) and meta["recipe_hash"] == experiment["hash"]
        mask_file = out / f"replicate_{row['replicate']}" / row["branch"] / f"level_{row['level']:02d}" / "mask.safetensors"
        assert meta["checksum"] == checksum(load_mask(mask_file)) == checksum(Ticket.load(
            mask_file.with_name("ticket.safetensors")).mask)


def test_summary_run_has_results_table_and_curves(experiment):
    _, rows, runs, _ = experiment
    (summary,) = [r for r in runs if r.job_type == "summary"]
    s = summary.summary
    assert s["results/_type"] == "table-file" and s["results/nrows"] == len(rows)
    assert s["early_stop_vs_remaining_table/nrows"] == len(rows)  # the line plot's data
    assert s["report/accuracy/_type"] == "image-file"  # the report's figures
    assert s["runs"] == len(rows) and s["replicates"] == REPLICATES


def test_no_secret_is_written(experiment):
    out, _, _, _ = experiment
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_csv_logger_receives_the_same_level_metrics(experiment):
    out, rows, _, _ = experiment
    for row in rows:
        log = out / f"replicate_{row['replicate']}" / row["branch"] / f"level_{row['level']:02d}" / "logs" / "metrics.csv"
        lines = list(csv.DictReader(open(log)))
        final = [line for line in lines if line.get("lottery/test_acc")]
        assert final and float(final[-1]["lottery/test_acc"]) == pytest.approx(row["test_acc"])


def test_tracking_can_be_switched_off(tmp_path):
    PruningScheduler(TinyMLP(), TinyData(), levels=1, rate=0.5, out_dir=str(tmp_path), trainer_kwargs=TRAINER,
                     stream=None, wandb=WandbSettings(enabled=False)).run()
    assert not (tmp_path / "wandb").exists()


# ------------------------------------------------------------------------------------------------ grouping
def test_grouping_by_branch_and_level_holds_exactly_the_replicates(experiment):
    """What the Report's (and a user's) grouping by ``config.branch``, ``config.level`` aggregates: one group per
    (branch, level) with one run per replicate, all at the same % remaining, all in the experiment's group."""
    _, rows, runs, _ = experiment
    groups: dict[tuple[str, int], list] = {}
    for run in (r for r in runs if r.job_type != "summary"):
        groups.setdefault((run.config["branch"], run.config["level"]), []).append(run)
    assert set(groups) == {(r["branch"], r["level"]) for r in rows}
    for members in groups.values():
        assert sorted(m.config["replicate"] for m in members) == list(range(REPLICATES))
        assert len({m.config["remaining_pct"] for m in members}) == 1
    # the line plots' x and y: logged once in every run's history
    for run in (r for r in runs if r.job_type != "summary"):
        final = [h for h in run.history if "lottery/remaining_pct" in h]
        assert len(final) == 1 and final[0]["lottery/remaining_pct"] == pytest.approx(run.config["remaining_pct"])
        assert final[0]["lottery/test_acc"] == pytest.approx(run.summary["test_acc"])


# ------------------------------------------------------------------------------------------------- lineage
def test_lineage_each_run_uses_what_it_starts_from_and_logs_what_it_makes(experiment):
    out, rows, runs, _ = experiment
    exp = json.loads((out / "experiment.json").read_text())["id"]
    level_runs = {(r.config["replicate"], r.config["branch"], r.config["level"]): r
                  for r in runs if r.job_type != "summary"}
    producers = {a["name"]: (key, a) for key, r in level_runs.items() for a in r.logged}
    for (rep, branch, level), run in level_runs.items():
        used = {a["name"]: a for a in run.used}
        if level == 0:
            assert used == {}
        else:
            assert set(used) == {rewind_artifact_name(exp, rep), mask_artifact_name(exp, "ticket", rep, level)}
            # the rewind point was logged by the main line's level 0, the mask by its previous level: same digest,
            # so W&B resolves the use to that version
            assert producers[rewind_artifact_name(exp, rep)][0] == (rep, "ticket", 0)
            assert producers[mask_artifact_name(exp, "ticket", rep, level)][0] == (rep, "ticket", level - 1)
            for name, art in used.items():
                assert art["user_created"] and art["use_after_commit"]  # what use_artifact records
                assert art["digest"] == producers[name][1]["digest"] and art["type"] == producers[name][1]["type"]
        logged = {a["name"]: a for a in run.logged}
        expected = {ticket_artifact_name(exp, branch, rep, level)}
        if branch == "ticket":
            expected |= {rewind_artifact_name(exp, rep)} if level == 0 else set()
            expected |= {mask_artifact_name(exp, "ticket", rep, level + 1)} if level < 2 else set()
        else:  # random_mask trains a mask of its own
            expected |= {mask_artifact_name(exp, branch, rep, level)}
        assert set(logged) == expected


def test_mask_and_rewind_artifacts_carry_their_checksums(experiment):
    import hashlib

    out, rows, runs, _ = experiment
    exp = json.loads((out / "experiment.json").read_text())["id"]
    logged = {a["name"]: a for r in runs for a in r.logged}
    for rep in range(REPLICATES):
        art = logged[rewind_artifact_name(exp, rep)]
        path = out / f"replicate_{rep}" / "rewind_point.pt"
        assert art["type"] == "lottery-rewind-point" and art["files"] == ["rewind_point.pt"]
        assert art["metadata"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert art["metadata"]["replicate"] == rep
        for branch, level in [("ticket", 1), ("ticket", 2), ("random_mask", 1), ("random_mask", 2)]:
            art = logged[mask_artifact_name(exp, branch, rep, level)]
            mask = load_mask(out / f"replicate_{rep}" / branch / f"level_{level:02d}" / "mask.safetensors")
            meta = art["metadata"]
            assert art["type"] == "lottery-mask" and art["files"] == ["mask.safetensors"]
            assert meta["checksum"] == checksum(mask) and (meta["level"], meta["branch"], meta["replicate"]) == (
                level, branch, rep)
            row = next(r for r in rows if (r["replicate"], r["branch"], r["level"]) == (rep, branch, level))
            assert meta["remaining"] == pytest.approx(row["remaining"])


# ------------------------------------------------------------------------------------------- summary run
def _table(run, key):
    (path,) = [p for p in run.path.glob(f"files/{run.summary[key + '/path']}")]
    data = json.loads(path.read_text())
    return [dict(zip(data["columns"], row)) for row in data["data"]]


def test_summary_run_logs_mean_and_95ci_over_replicates(experiment):
    _, rows, runs, _ = experiment
    (summary,) = [r for r in runs if r.job_type == "summary"]
    stats = {(s["branch"], s["level"]): s for s in aggregate(rows)}
    table = _table(summary, "aggregate")
    assert len(table) == len(stats) == 5
    for entry in table:
        s = stats[(entry["branch"], entry["level"])]
        assert entry["n"] == REPLICATES and entry["remaining_pct"] == pytest.approx(100 * s["remaining_mean"])
        assert entry["test_acc_mean"] == pytest.approx(s["test_acc_mean"])
        assert entry["test_acc_ci95"] == pytest.approx(s["test_acc_ci95"])
        assert entry["test_acc_lo"] == pytest.approx(s["test_acc_mean"] - s["test_acc_ci95"])
        assert entry["test_acc_hi"] == pytest.approx(s["test_acc_mean"] + s["test_acc_ci95"])
    # the chart: per branch the mean and both bounds at each % remaining
    chart = _table(summary, "test_acc_vs_remaining_table")
    series = {}
    for point in chart:
        series.setdefault(point["lineKey"], {})[round(point["step"], 6)] = point["lineVal"]
    assert set(series) == {f"{b} {k}" for b in ("ticket", "random_mask") for k in ("mean", "95% CI low", "95% CI high")}
    for (branch, level), s in stats.items():
        x = round(100 * s["remaining_mean"], 6)
        assert series[f"{branch} mean"][x] == pytest.approx(s["test_acc_mean"])
        assert series[f"{branch} 95% CI high"][x] == pytest.approx(s["test_acc_mean"] + s["test_acc_ci95"])


def test_summary_run_logs_mask_overlap_between_replicates(experiment):
    out, _, runs, _ = experiment
    (summary,) = [r for r in runs if r.job_type == "summary"]
    table = _table(summary, "mask_overlap")
    assert [e["level"] for e in table] == [0, 1, 2]
    for entry in table:
        m0, m1 = (load_mask(out / f"replicate_{r}" / "ticket" / f"level_{entry['level']:02d}" / "mask.safetensors")
                  for r in (0, 1))
        both = sum(int((m0[n] & m1[n]).sum()) for n in m0)
        expected = (both / sum(int(m.sum()) for m in m0.values()) + both / sum(int(m.sum()) for m in m1.values())) / 2
        assert entry["overlap"] == pytest.approx(expected) and entry["pairs"] == 1
        assert summary.summary[f"mask_overlap_by_level/level_{entry['level']:02d}"] == pytest.approx(expected)
    assert table[0]["overlap"] == 1.0 and table[0]["random_expected"] == 1.0
    assert not [k for k in summary.summary if k.startswith("mask_overlap/level")]  # no key inside the table's
    assert summary.summary["mask_overlap_vs_level_table/nrows"] == 2 * len(table)  # replicates and random baseline


def test_mask_overlap_is_the_share_of_the_first_masks_weights():
    a = {"w": torch.tensor([True, True, True, False]), "b": torch.tensor([True])}
    b = {"w": torch.tensor([True, False, False, True]), "b": torch.tensor([True])}
    assert mask_overlap(a, b) == pytest.approx(2 / 4) and mask_overlap(b, a) == pytest.approx(2 / 3)
    assert mask_overlap({"w": torch.zeros(3, dtype=torch.bool)}, {"w": torch.ones(3, dtype=torch.bool)}) == 1.0


# ------------------------------------------------------------------------------------------------ notices
def test_no_wandb_notice_or_warning_during_an_experiment(experiment):
    """Lightning's WandbLogger would pass ``anonymous=None`` to ``wandb.init`` ("The anonymous setting has no
    effect ..."): the tracker starts the runs itself; nothing else of W&B's is printed either."""
    _, _, _, notices = experiment
    assert notices == []


def test_use_artifact_online_is_wandbs_own(monkeypatch):
    from lightning_lottery.tracking import use_artifact

    calls = []

    class Online:
        offline = False

        def use_artifact(self, artifact):
            calls.append(("use", artifact))

        def _log_artifact(self, *a, **k):
            calls.append(("log", a, k))

    class Offline(Online):
        offline = True

    use_artifact(Online(), "A")
    use_artifact(Offline(), "B")
    assert calls == [("use", "A"), ("log", ("B",), {"is_user_created": True, "use_after_commit": True})]


@pytest.mark.parametrize("active", [True, False])
def test_resolve_ticket_uses_the_artifact_in_the_active_run(tmp_path, monkeypatch, active):
    """``retrain --ticket wandb:...``: with an active online run the reference goes through ``use_artifact``
    (lineage); without one through ``wandb.Api().artifact`` (downloaded, no use recorded)."""
    import wandb

    from lightning_lottery.ticket import resolve_ticket

    (tmp_path / "ticket.safetensors").write_bytes(b"x")
    calls = []

    class Artifact:
        def download(self, root=None):
            return str(tmp_path)

    class Run:
        offline = False

        def use_artifact(self, name, type=None):
            calls.append(("run.use_artifact", name, type))
            return Artifact()

    class Api:
        def __init__(self, *a, **k):
            pass

        def artifact(self, name, type=None):
            calls.append(("Api.artifact", name, type))
            return Artifact()

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setattr(wandb, "run", Run() if active else None)
    monkeypatch.setattr(wandb, "Api", Api)
    assert resolve_ticket("wandb:me/p/exp-ticket-r0-level02:latest") == tmp_path / "ticket.safetensors"
    assert calls == [("run.use_artifact" if active else "Api.artifact", "me/p/exp-ticket-r0-level02:latest",
                      "lottery-ticket")]
