"""Mean, std (ddof=1) and Student-t 95% CI per (branch, level), against hand computation."""

from __future__ import annotations

import csv
import math

import pytest

from lightning_lottery.aggregate import aggregate, aggregate_columns, write_aggregate

T_975_DOF2 = 4.302652729749464  # Student's t quantile 0.975 with 2 degrees of freedom (tables)
T_975_DOF1 = 12.706204736174705


def _rows() -> list[dict]:
    return [
        {"branch": "random_reinit", "replicate": 0, "level": 1, "test_acc": 0.80, "early_stop_iter": 100},
        {"branch": "ticket", "replicate": 0, "level": 1, "test_acc": 0.90, "early_stop_iter": 300},
        {"branch": "ticket", "replicate": 1, "level": 1, "test_acc": 0.92, "early_stop_iter": 200},
        {"branch": "ticket", "replicate": 2, "level": 1, "test_acc": 0.97, "early_stop_iter": None},
        {"branch": "ticket", "replicate": 0, "level": 0, "test_acc": 0.95, "early_stop_iter": 400},
    ]


def test_mean_std_ci_by_hand():
    out = aggregate(_rows(), metrics=("test_acc", "early_stop_iter"))
    assert [(r["branch"], r["level"], r["n"]) for r in out] == [("ticket", 0, 1), ("ticket", 1, 3),
                                                                ("random_reinit", 1, 1)]
    three = out[1]
    # (0.90 + 0.92 + 0.97) / 3 = 0.93; deviations -0.03, -0.01, 0.04 -> var = 0.0026 / 2 = 0.0013
    assert three["test_acc_mean"] == pytest.approx(0.93)
    assert three["test_acc_std"] == pytest.approx(math.sqrt(0.0013))
    assert three["test_acc_ci95"] == pytest.approx(T_975_DOF2 * math.sqrt(0.0013) / math.sqrt(3))
    assert three["test_acc_n"] == 3
    # a null value drops out of that metric only: two values, 300 and 200
    assert three["early_stop_iter_n"] == 2
    assert three["early_stop_iter_mean"] == 250
    assert three["early_stop_iter_std"] == pytest.approx(math.sqrt(5000))
    assert three["early_stop_iter_ci95"] == pytest.approx(T_975_DOF1 * math.sqrt(5000) / math.sqrt(2))


def test_single_replicate_has_no_spread():
    dense = aggregate(_rows(), metrics=("test_acc",))[0]
    assert dense["test_acc_mean"] == 0.95
    assert dense["test_acc_std"] is None and dense["test_acc_ci95"] is None and dense["test_acc_n"] == 1


def test_all_null_metric_and_nan():
    rows = [{"branch": "ticket", "level": 2, "x": None}, {"branch": "ticket", "level": 2, "x": float("nan")}]
    [out] = aggregate(rows, metrics=("x",))
    assert out["n"] == 2 and out["x_n"] == 0 and out["x_mean"] is None and out["x_std"] is None


def test_default_metrics_and_columns():
    [out] = aggregate([{"branch": "ticket", "level": 0, "remaining": 1.0, "test_acc": 0.5}])
    assert list(out) == aggregate_columns()
    assert out["remaining_mean"] == 1.0 and out["early_stop_iter_mean"] is None


def test_stability_rows_at_several_rewind_steps_are_kept_apart():
    rows = [{"branch": "stability", "level": 1, "replicate": r, "at": at, "test_acc": acc}
            for r in (0, 1) for at, acc in (("100it", 0.8), ("1000it", 0.9), ("500it", 0.85))]
    rows.append({"branch": "ticket", "level": 1, "replicate": 0, "test_acc": 0.7})
    out = aggregate(rows, metrics=("test_acc",))
    assert [(r["branch"], r["at"], r["n"], r["test_acc_mean"]) for r in out] == [
        ("ticket", None, 1, 0.7), ("stability", "100it", 2, 0.8), ("stability", "500it", 2, 0.85),
        ("stability", "1000it", 2, 0.9)]


def test_write_aggregate_csv(tmp_path):
    path = write_aggregate(_rows(), tmp_path / "sub" / "aggregate.csv", metrics=("test_acc",))
    with open(path, newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["branch", "level", "at", "n", "test_acc_mean", "test_acc_std", "test_acc_ci95", "test_acc_n"]
    assert [(r["branch"], r["level"], r["n"]) for r in table] == [("ticket", "0", "1"), ("ticket", "1", "3"),
                                                                  ("random_reinit", "1", "1")]
    assert table[0]["test_acc_std"] == "" and float(table[0]["test_acc_mean"]) == 0.95
    assert float(table[1]["test_acc_ci95"]) == pytest.approx(T_975_DOF2 * math.sqrt(0.0013) / math.sqrt(3))
    assert not list(tmp_path.glob("sub/*.tmp"))
