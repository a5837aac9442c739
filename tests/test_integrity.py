"""Finished files are checked on every start: a damaged one is named in one line and its run (and the runs
depending on it) recomputed; derived tables are rebuilt; one writer per directory; no leftovers; progress."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_lottery.cli import main
from lightning_lottery.dirlock import DirectoryLock
from lightning_lottery.plan import Run
from lightning_lottery.report import build_report
from lightning_lottery.store import ExperimentStore

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "recipes" / "lenet300_digits_smoke.yaml")
FAST = ["--lottery.levels", "1", "--trainer.max_steps", "20", "--lottery.val_every_n_steps", "10",
        "--wandb.enabled", "false"]
L0, L1 = "replicate_0/ticket/level_00", "replicate_0/ticket/level_01"


def find(out: Path) -> int:
    return main(["find", "--config", SMOKE, "--lottery.out_dir", str(out), *FAST])


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "exp"
    assert find(out) == 0
    return out


@pytest.fixture
def exp(finished, tmp_path) -> Path:
    out = tmp_path / "exp"
    shutil.copytree(finished, out)
    return out


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])


@pytest.mark.parametrize("damaged, dependents", [
    (f"{L1}/ticket.safetensors", 0), (f"{L1}/mask.safetensors", 1), (f"{L0}/metrics.json", 1),
    ("replicate_0/rewind_point.pt", 1), (f"{L1}/metrics.json", 0)])
def test_a_damaged_file_is_named_and_its_runs_recomputed(exp, capsys, damaged, dependents):
    before = (exp / "results.csv").read_text()
    _truncate(exp / damaged)
    capsys.readouterr()
    assert find(exp) == 0
    err = capsys.readouterr().err
    assert (f"[lottery] {damaged} is damaged (checksum mismatch): recomputing that run and the {dependents} run(s) "
            "that depend on it") in err
    assert (exp / "results.csv").read_text().split("\n")[0] == before.split("\n")[0]
    def strip(text: str) -> list[list[str]]:  # every column but wall_s
        rows = [line.split(",") for line in text.splitlines()]
        wall = rows[0].index("wall_s")
        return [row[:wall] + row[wall + 1:] for row in rows]

    assert strip((exp / "results.csv").read_text()) == strip(before)
    assert ExperimentStore(exp).verify(Run(0, "ticket", 1)) is None


def test_derived_tables_are_rebuilt_from_the_runs(exp):
    want = {name: (exp / name).read_bytes() for name in ("results.csv", "results.json", "layers.csv", "aggregate.csv")}
    for name in want:
        (exp / name).write_bytes(b"")
    assert find(exp) == 0
    assert {name: (exp / name).read_bytes() for name in want} == want


def test_a_damaged_experiment_json_is_one_error_naming_it(exp, capsys):
    _truncate(exp / "experiment.json")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        find(exp)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "experiment.json is damaged" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_second_writer_is_refused_naming_the_first(exp, capsys):
    lock = DirectoryLock(exp / ".lock")
    lock.acquire()
    try:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            find(exp)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert f"pid {os.getpid()}" in err and "in use by another process" in err and "Traceback" not in err
    finally:
        lock.release()


def test_a_second_process_is_refused_while_the_first_runs(exp):
    """Two real processes: the second finds the first's lock."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from lightning_lottery.dirlock import DirectoryLock; "
         f"DirectoryLock({str(exp / '.lock')!r}).acquire(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = subprocess.run([sys.executable, "-m", "lightning_lottery.cli", "find", "--config", SMOKE,
                               "--lottery.out_dir", str(exp), *FAST], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and f"pid {holder.pid}" in proc.stderr, proc.stderr[-2000:]
    finally:
        holder.kill()
        holder.wait()


def test_a_dead_holder_lock_is_taken_over(exp, capsys):
    (exp / ".lock").write_text(json.dumps({"host": os.uname().nodename, "pid": 999999, "since": "yesterday"}))
    capsys.readouterr()
    assert find(exp) == 0
    assert "took over the lock of pid 999999" in capsys.readouterr().err
    assert (exp / ".lock").read_text() == ""  # released at the end


def test_leftovers_are_cleaned_on_the_next_start(exp):
    (exp / L1 / "checkpoints").mkdir()
    (exp / L1 / "checkpoints" / "last.ckpt").write_bytes(b"old")
    stray = [exp / ".results.csv.tmp-12345", exp / L0 / ".ticket.safetensors.tmp-777"]
    for path in stray:
        path.write_bytes(b"half")
    assert find(exp) == 0
    assert not (exp / L1 / "checkpoints").exists() and not any(p.exists() for p in stray)


def test_a_partial_experiment_says_it_is_incomplete(exp):
    for name in ("metrics.json", "manifest.json"):
        (exp / L1 / name).unlink()
    progress = ExperimentStore(exp).progress()
    assert (progress.done, progress.planned, progress.levels_done, progress.levels_planned) == (1, 2, 1, 2)
    html = build_report(exp).read_text()
    assert "incomplete: 1 of 2 runs done (1 of 2 levels)" in html
    assert ExperimentStore(exp).progress().describe().startswith("incomplete")
