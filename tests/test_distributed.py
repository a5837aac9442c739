"""DDP on CPU: two gloo processes run a two-level search (``ddp`` and ``ddp_spawn``) and agree on everything.

Each case runs ``tests/ddp_experiment.py`` in a subprocess (the ``ddp`` launcher re-executes its script, so it
cannot run inside pytest's own process) and reads back what every rank recorded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_lottery.masks import checksum, load_mask
from lightning_lottery.rewind import RewindState
from lightning_lottery.tracking import read_offline_run

SCRIPT = Path(__file__).with_name("ddp_experiment.py")
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")


def run_script(mode: str, strategy: str, out: Path, check: bool = True, accelerator: str = "cpu"
               ) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(Path(__file__).parent.parent),
           "DDP_TEST_ACCELERATOR": accelerator}
    for key in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, str(SCRIPT), mode, strategy, str(out)], env=env, capture_output=True,
                          text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def records(out: Path) -> dict[int, list[dict]]:
    by_rank = {}
    for path in sorted((out / "ranks").glob("rank*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        by_rank[int(path.stem[4:])] = [{k: v for k, v in r.items() if k != "pid"} for r in rows]
    return by_rank


def ends(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["event"] == "end"]


@pytest.fixture(scope="module")
def experiments(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    base = tmp_path_factory.mktemp("ddp")
    return {s: (base / s, run_script("scheduler", s, base / s)) for s in ("ddp", "ddp_spawn")}


@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
def test_two_levels_identical_on_both_ranks_one_set_of_files(experiments, strategy):
    out, proc = experiments[strategy]
    ranks = records(out)
    assert sorted(ranks) == [0, 1]
    # every run: the same mask, rewind point, final weights and validation metrics on both ranks
    assert [r["level"] for r in ends(ranks[0])] == [0, 1, 2]
    assert ends(ranks[0]) == ends(ranks[1])
    # θ0 is rank 0's initialization, captured after DDP's broadcast (rank 1 started from other weights)
    first_setup = next(r for r in ranks[0] if r["event"] == "setup")
    assert {r["rewind"] for r in ends(ranks[0])} == {first_setup["weights"]}
    # the files hold what the ranks trained with
    for rec in ends(ranks[0]):
        mask = load_mask(out / "replicate_0" / "ticket" / f"level_{rec['level']:02d}" / "mask.safetensors")
        assert checksum(mask) == rec["mask"]
    rewind = RewindState.load(out / "replicate_0" / "rewind_point.pt")
    from ddp_experiment import state_checksum

    assert state_checksum(rewind.model) == first_setup["weights"]
    results = json.loads((out / "results.json").read_text())
    assert [r["level"] for r in results] == [0, 1, 2]
    # one writer: one W&B run per level plus the summary, one progress table
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert sorted(read_offline_run(r).job_type for r in runs) == ["summary", "ticket", "ticket", "ticket"]
    assert proc.stderr.count("level  % remaining") == 1
    finals = {line.split()[1] for line in proc.stdout.splitlines() if line.startswith("FINAL ")}
    assert finals == {ends(ranks[0])[-1]["weights"]}  # the caller's model holds the last run's weights
    assert proc.stderr.count("ticket level 2/2 · 25.0% remaining") == 1


def test_ddp_and_ddp_spawn_agree(experiments):
    a, b = (records(experiments[s][0]) for s in ("ddp", "ddp_spawn"))
    assert ends(a[0]) == ends(b[0])


def test_interrupted_ddp_experiment_resumes(experiments, tmp_path):
    source, _ = experiments["ddp"]
    out = tmp_path / "resume"
    import shutil

    shutil.copytree(source, out)
    shutil.rmtree(out / "ranks")
    # the last level did not finish: its done-marker is missing (its other files may exist or not)
    (out / "replicate_0" / "ticket" / "level_02" / "metrics.json").unlink()
    proc = run_script("scheduler", "ddp", out)
    assert proc.stderr.count("already done, skipped") == 2
    again = records(out)
    assert [r["level"] for r in ends(again[0])] == [2]
    assert ends(again[0]) == ends(again[1]) == ends(records(source)[0])[2:]
    assert len(json.loads((out / "results.json").read_text())) == 3


@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
def test_callback_alone_fit_prune_fit(tmp_path, strategy):
    proc = run_script("callback", strategy, tmp_path)
    lines = [json.loads(line.split(" ", 1)[1]) for line in proc.stdout.splitlines() if line.startswith("CALLBACK ")]
    assert lines, proc.stdout
    # ddp: both processes report; ddp_spawn: the main process, with the state handed back by rank 0's worker
    assert len(lines) == (2 if strategy == "ddp" else 1)
    ranks = records(tmp_path)
    first_setup = next(r for r in ranks[0] if r["event"] == "setup")
    for line in lines:
        assert line["level"] == 1 and line["remaining"] == 0.5 and line["zeros"]
        assert line["theta0"] == first_setup["weights"]
    assert len({line["mask"] for line in lines}) == 1
    assert ends(ranks[0]) == ends(ranks[1])


def test_different_masks_on_ranks_stop_with_a_clear_error(tmp_path):
    proc = run_script("mismatch", "ddp", tmp_path, check=False)
    assert proc.returncode != 0
    assert "RankMismatchError: the mask differs across ranks (rank 0: " in proc.stderr


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_cuda_ddp_two_levels(tmp_path):
    run_script("scheduler", "ddp", tmp_path, accelerator="gpu")
    ranks = records(tmp_path)
    assert [r["level"] for r in ends(ranks[0])] == [0, 1, 2]
    assert ends(ranks[0]) == ends(ranks[1])
