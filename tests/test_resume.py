"""An interrupted experiment resumes to the same results: SIGKILL at many moments, then compare with an
uninterrupted run (``results.csv`` but ``wall_s``, masks and tickets, byte for byte)."""

from __future__ import annotations

import csv
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from lightning_lottery.cli import main
from lightning_lottery.data.tensor_loader import TensorLoader
from lightning_lottery.tracking import read_offline_run

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "recipes" / "lenet300_digits_smoke.yaml")
# 1197 training digits in batches of 60: 20 batches an epoch; validation every 5 steps, a checkpoint every 10
ARGS = ["find", "--config", SMOKE, "--lottery.levels", "1", "--trainer.max_steps", "45",
        "--lottery.val_every_n_steps", "5", "--lottery.checkpoint_every_n_steps", "10", "--quiet", "true",
        "--trainer.callbacks+=kill_switch.KillSwitch"]

#: Where the kills hit, in order, all in one experiment directory (each rerun resumes the previous kill).
KILLS = [
    "level_00:on_train_batch_end:13",    # mid-epoch, 3 steps after the checkpoint of step 10
    "level_00:on_train_batch_end:23",    # after the checkpoint at the last batch of epoch 0 (step 20)
    "level_00:on_validation_start:30",   # a checkpoint is due at step 30, its validation has not run yet
    "level_00:on_validation_end:40",     # just after the checkpoint written at the end of step 40's validation
    "level_00:on_test_start:45",         # fit done (last checkpoint at 40), testing
    "level_01:on_fit_start:0",           # between runs: level 0 done, level 1 not started
    "level_01:on_train_batch_start:20",  # just after level 1's epoch-boundary checkpoint
    "level_01:on_train_batch_end:33",    # mid-epoch in level 1
]


def _find(out_dir: Path, kill: str = "", wandb: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "LOTTERY_TEST_KILL": kill, "PYTHONPATH": str(Path(__file__).parent),
           "WANDB_MODE": "offline"}
    args = [*ARGS, "--lottery.out_dir", str(out_dir), "--wandb.enabled", str(wandb).lower()]
    return subprocess.run([sys.executable, "-m", "lightning_lottery.cli", *args], env=env, cwd=out_dir.parent,
                          capture_output=True, text=True, timeout=300)


def _digest(obj: object) -> object:
    if isinstance(obj, torch.Tensor):
        return hashlib.sha256(obj.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()).hexdigest()
    if isinstance(obj, dict):
        return {str(k): _digest(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_digest(v) for v in obj]
    return obj


def _content(path: Path) -> object:
    """What a file holds, independent of serialisation order (safetensors writes its metadata in any order)."""
    if path.suffix == ".safetensors":
        with safe_open(str(path), "pt") as f:
            return {"metadata": f.metadata(), "tensors": {k: _digest(f.get_tensor(k)) for k in sorted(f.keys())}}
    return _digest(torch.load(path, weights_only=True))


def _outcome(out_dir: Path) -> dict[str, object]:
    with open(out_dir / "results.csv") as f:
        rows = [{k: v for k, v in row.items() if k != "wall_s"} for row in csv.DictReader(f)]
    files = {p.relative_to(out_dir).as_posix(): _content(p)
             for pattern in ("replicate_*/*/level_*/mask.safetensors", "replicate_*/*/level_*/ticket.safetensors",
                             "replicate_*/rewind_point.pt")
             for p in sorted(out_dir.glob(pattern))}
    return {"rows": rows, "files": files}


def test_sigkill_at_every_moment_resumes_bit_identical(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    monkeypatch.delenv("LOTTERY_TEST_KILL", raising=False)
    assert main([*ARGS, "--lottery.out_dir", str(tmp_path / "straight"), "--wandb.enabled", "false"]) == 0
    expected = _outcome(tmp_path / "straight")

    out = tmp_path / "killed"
    out.mkdir()
    for kill in KILLS:
        proc = _find(out, kill)
        assert proc.returncode == -9, f"{kill}: not killed (rc {proc.returncode}): {proc.stderr[-2000:]}"
    proc = _find(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _outcome(out) == expected
    # no leftovers: no temporary file anywhere, no checkpoint of a finished run
    assert not [p for p in out.rglob(".*.tmp-*")]
    assert not list(out.glob("replicate_*/*/level_*/checkpoints"))


def test_wandb_resumes_the_same_run_after_a_kill(tmp_path):
    out = tmp_path / "exp"
    out.mkdir()
    assert _find(out, "level_00:on_train_batch_end:23", wandb=True).returncode == -9
    proc = _find(out, wandb=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ids: dict[str, set[str]] = {}
    for run_dir in sorted((out / "wandb").glob("offline-run-*")):
        record = read_offline_run(run_dir)
        ids.setdefault(record.job_type, set()).add(record.run_id)
    # level 0 was attempted twice, level 1 once: still one W&B run per run (plus the summary)
    assert len(ids["ticket"]) == 2 and all(i.endswith(("-l00", "-l01")) for i in ids["ticket"])
    assert len(list((out / "wandb").glob("offline-run-*"))) == 4  # 2 attempts of level 0, level 1, summary


@pytest.mark.parametrize("drawn", [0, 3, 5])
def test_loader_state_continues_the_pass(drawn):
    """A loader restored from ``state_dict()`` after ``drawn`` batches of epoch 1 yields what the original would
    (after the pass's last batch: the next epoch, not the same one again)."""
    x = torch.arange(50.0).unsqueeze(1)
    batches = lambda it: [b[0].flatten().tolist() for b in it]  # noqa: E731
    original = TensorLoader(x, batch_size=10, shuffle=True, seed=3)
    batches(original)  # epoch 0
    it = iter(original)
    head = [next(it)[0].flatten().tolist() for _ in range(drawn)]
    state = original.state_dict()
    expected = batches(it) + batches(original)  # the rest of epoch 1, then epoch 2
    restored = TensorLoader(x, batch_size=10, shuffle=True, seed=3)
    restored.load_state_dict(state)
    got = batches(restored) + batches(restored)
    assert got[: len(expected)] == expected and len(head + expected) == 10
