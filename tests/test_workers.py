"""Runs at once (``--launcher local|slurm|ray``): the same results as the sequential walk, resume after the driver
is killed, per-run claims (a stale one taken over, a live one waited for), the critical path."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lightning_lottery.claims import CLAIM_FILE, RunClaim, is_stale, read_claim
from lightning_lottery.cli import main
from lightning_lottery.driver import eta_seconds
from lightning_lottery.plan import Plan, Run
from lightning_lottery.pool_settings import LaunchSettings
from lightning_lottery.tracking import read_offline_run

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "recipes" / "lenet300_digits_smoke.yaml")
#: the smoke recipe with controls and 2 replicates, tiny: 2 × (3 main-line runs + 2 controls × 2 levels) = 14 runs
GRID = ["--lottery.levels", "2", "--lottery.replicates", "2", "--lottery.controls", "[random_reinit, random_mask]",
        "--trainer.max_steps", "10", "--lottery.val_every_n_steps", "5", "--quiet", "true"]
#: smaller graphs (every experiment here starts processes that import torch and Lightning): 2 × (2 + 1) = 6 runs
SMALL = ["--lottery.levels", "1", "--lottery.replicates", "2", "--lottery.controls", "[random_mask]",
         "--trainer.max_steps", "10", "--lottery.val_every_n_steps", "5", "--quiet", "true"]
#: level 0, then level 1 of the main line and its control at once: 3 runs
TINY = ["--lottery.levels", "1", "--lottery.controls", "[random_mask]", "--trainer.max_steps", "10",
        "--lottery.val_every_n_steps", "5", "--quiet", "true"]
FAST_CLAIMS = ["--launch.heartbeat_s", "0.5", "--launch.stale_after_s", "3", "--launch.poll_s", "0.2"]


def _find(out: Path, args: list[str], *extra: str, env: dict[str, str] | None = None, quiet: bool = True
          ) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "lightning_lottery.cli", "find", "--config", SMOKE, *args,
               "--lottery.out_dir", str(out), *extra]
    if not quiet:
        command += ["--quiet", "false"]
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(Path(__file__).parent)]),
                "WANDB_MODE": "offline", **(env or {})}
    return subprocess.run(command, env=full_env, cwd=out.parent, capture_output=True, text=True, timeout=600,
                          start_new_session=True)


def _outcome(out: Path) -> dict[str, object]:
    from test_resume import _outcome as rows_and_files  # masks and tickets by content (metadata order aside)

    aggregate = (out / "aggregate.csv").read_text()
    return {**rows_and_files(out), "aggregate_lines": len(aggregate.splitlines())}


@pytest.fixture(scope="module")
def sequential(tmp_path_factory) -> dict[str, dict[str, object]]:
    base = tmp_path_factory.mktemp("sequential")
    out = {}
    for name, args in (("grid", GRID), ("small", SMALL), ("tiny", TINY)):
        assert main(["find", "--config", SMOKE, *args, "--lottery.out_dir", str(base / name),
                     "--wandb.enabled", "false"]) == 0
        out[name] = _outcome(base / name)
    return out


# ------------------------------------------------------------------------------------------------ pure parts
def test_critical_path_is_the_longest_chain_of_unfinished_runs():
    plan = Plan(levels=3, replicates=2, main="ticket", controls=("random_mask",))
    path = plan.critical_path()
    assert [str(r) for r in path] == [f"ticket level {lv} (replicate 0)" for lv in range(4)]
    assert all(plan.needs(b) == (a,) for a, b in zip(path, path[1:]))
    done = {Run(0, "ticket", lv) for lv in range(3)}
    assert plan.critical_path(done) == [Run(1, "ticket", lv) for lv in range(4)]  # replicate 1 is the longer now
    # costs: a slow control at the last level is the end of the critical path
    slow = plan.critical_path(cost=lambda r: 5.0 if r.branch == "random_mask" else 1.0)
    assert slow[-1] == Run(0, "random_mask", 3) and len(slow) == 4
    assert plan.critical_path(set(plan.runs())) == []
    stability = Plan(levels=1, replicates=1, main="ticket", stability=(0,))
    assert len(stability.critical_path()) == 2


def test_eta_is_bounded_by_the_critical_path_and_the_workers():
    plan = Plan(levels=2, replicates=2, main="ticket", controls=("random_mask", "random_reinit"))
    assert len(plan.runs()) == 14
    assert eta_seconds(plan, set(), 2.0, workers=1) == 28.0
    assert eta_seconds(plan, set(), 2.0, workers=None) == 6.0  # 3 levels of the main line
    assert eta_seconds(plan, set(plan.runs()[:7]), 2.0, workers=4) == 6.0  # replicate 1 is left: its critical path


def test_the_longest_chain_starts_first():
    plan = Plan(levels=3, replicates=2, main="ticket", controls=("random_mask", "random_reinit"))
    level0 = {Run(0, "ticket", 0), Run(1, "ticket", 0)}
    order = plan.by_urgency(plan.ready(level0), level0)
    assert order[:2] == [Run(0, "ticket", 1), Run(1, "ticket", 1)]  # each starts 3 more levels; a control none
    assert set(order[2:]) == {Run(r, b, 1) for r in (0, 1) for b in ("random_mask", "random_reinit")}
    # with replicate 1's main line further on, replicate 0's next main-line run is the most urgent
    ahead = level0 | {Run(1, "ticket", 1), Run(1, "ticket", 2)}
    assert plan.by_urgency(plan.ready(ahead), ahead)[0] == Run(0, "ticket", 1)


def test_the_launcher_is_read_from_the_command_line_before_parsing(tmp_path):
    from lightning_lottery.pool_settings import launcher_requested

    recipe = tmp_path / "r.yaml"
    recipe.write_text("launch:\n  launcher: local\n  workers: 2\n")
    assert launcher_requested(["find", "--config", str(recipe)]) == "local"
    assert launcher_requested(["find", f"--config={recipe}", "--launcher", "ray"]) == "ray"  # the flag wins
    assert launcher_requested(["find", "-c", str(recipe), "--launch.launcher=slurm"]) == "slurm"
    assert launcher_requested(["find", "--config", str(tmp_path / "missing.yaml")]) is None
    assert launcher_requested(["find", "--config", SMOKE]) is None


def test_the_console_starts_the_fork_server_before_importing_torch():
    code = ("import sys\nfrom multiprocessing import forkserver\nfrom lightning_lottery.worker_start import warm\n"
            "print(warm(['find', '--launcher', 'local']), forkserver._forkserver._forkserver_pid is not None, "
            "'torch' in sys.modules, warm(['find']))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.split() == ["True", "True", "False", "False"]


def test_launch_settings_are_checked():
    assert not LaunchSettings().parallel and LaunchSettings(launcher="ray").parallel
    assert LaunchSettings(launcher="local", workers=2).threads(cores=2, default=4) == 1
    assert LaunchSettings(launcher="local", workers=2, threads_per_worker=3).threads(cores=2) == 3
    assert hash(LaunchSettings(slurm={"additional": {"exclusive": True}})) is not None
    with pytest.raises(ValueError, match="launch.launcher must be one of local, slurm, ray"):
        LaunchSettings(launcher="kubernetes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stale_after_s"):
        LaunchSettings(heartbeat_s=10, stale_after_s=15)
    with pytest.raises(ValueError, match="launch.slurm.time_min"):
        LaunchSettings(slurm={"time_min": 0})


def test_a_bad_launch_setting_is_one_line_and_nothing_is_written(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["find", "--config", SMOKE, "--lottery.out_dir", str(tmp_path / "x"), "--launcher", "kubernetes"])
    assert exit_info.value.code == 2
    assert "launch.launcher must be one of local, slurm, ray" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_claims_refuse_a_live_holder_and_take_over_a_stale_one(tmp_path):
    path = tmp_path / CLAIM_FILE
    mine = RunClaim(path, heartbeat_s=0.1, stale_after_s=1.0)
    assert mine.acquire()
    first = read_claim(path)["heartbeat"]
    time.sleep(0.35)
    assert read_claim(path)["heartbeat"] > first  # the heartbeat thread keeps it fresh
    other = RunClaim(path, stale_after_s=1.0)
    assert not other.acquire() and other.holder["pid"] == os.getpid()
    mine.release()
    assert not path.exists()

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import json
    import socket

    path.write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "heartbeat": time.time()}))
    assert is_stale(read_claim(path), 60.0)  # a dead process on this host: stale at once
    taker = RunClaim(path)
    assert taker.acquire() and taker.taken_over["pid"] == int(dead.stdout)
    taker.release()
    path.write_text(json.dumps({"host": "node-elsewhere", "pid": 1, "heartbeat": time.time() - 100}))
    assert is_stale(read_claim(path), 60.0) and not is_stale(read_claim(path), 200.0)


# ------------------------------------------------------------------------------------------- whole experiments
def test_two_local_workers_give_the_sequential_results(sequential, tmp_path):
    out = tmp_path / "local"
    proc = _find(out, GRID, "--launcher", "local", "--workers", "2", "--wandb.enabled", "false", quiet=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _outcome(out) == sequential["grid"]
    assert not list(out.rglob(CLAIM_FILE)) and not list(out.rglob(".*.tmp-*"))
    assert "[lottery] 14/14 done · 0 running · 0 waiting" in proc.stderr


def test_a_killed_driver_rerun_resubmits_only_what_is_not_finished(sequential, tmp_path):
    out = tmp_path / "killed"
    out.mkdir()
    kill = {"LOTTERY_TEST_KILL_GROUP": "replicate_1/ticket/level_01:6"}
    proc = _find(out, SMALL, "--launcher", "local", "--workers", "2", "--wandb.enabled", "false",
                 "--trainer.callbacks+=driver_kill.KillGroup", env=kill)
    assert proc.returncode == -9, proc.stderr[-3000:]
    done_before = {p.parent for p in out.glob("replicate_*/*/level_*/metrics.json")}
    assert 0 < len(done_before) < 6
    proc = _find(out, SMALL, "--launcher", "local", "--workers", "2", "--wandb.enabled", "false", quiet=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("already done, skipped") == len(done_before)
    assert "took over ticket level 1 (replicate 1)" in proc.stderr  # the claim of the dead worker
    assert _outcome(out) == sequential["small"]
    assert not list(out.rglob(CLAIM_FILE))


def test_a_worker_killed_alone_stops_the_driver_and_the_rerun_takes_its_run_over(sequential, tmp_path):
    out = tmp_path / "worker-killed"
    out.mkdir()
    proc = _find(out, TINY, "--launcher", "local", "--workers", "2", "--wandb.enabled", "false",
                 "--trainer.callbacks+=kill_switch.KillSwitch", env={"LOTTERY_TEST_KILL": "level_00:on_train_batch_end:6"})
    assert proc.returncode != 0 and "died without a result" in proc.stderr, proc.stderr[-3000:]
    assert (out / "replicate_0" / "ticket" / "level_00" / CLAIM_FILE).is_file()  # left by the dead worker
    proc = _find(out, TINY, "--launcher", "local", "--workers", "2", "--wandb.enabled", "false", quiet=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "took over ticket level 0 (replicate 0)" in proc.stderr
    assert _outcome(out) == sequential["tiny"]


def test_a_live_claim_is_waited_for_and_a_stale_one_taken_over(sequential, tmp_path):
    """A worker on another node holds the first run: the driver waits while its heartbeat goes on, and takes the
    run over once the heartbeat stops. W&B offline: one run per run, logged from the workers, and the summary."""
    import json
    import threading

    out = tmp_path / "claimed"
    claim = out / "replicate_0" / "ticket" / "level_00" / CLAIM_FILE
    claim.parent.mkdir(parents=True)
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(0.2):
            claim.write_text(json.dumps({"host": "node-elsewhere", "pid": 4242, "heartbeat": time.time(),
                                         "since": "earlier"}))

    claim.write_text(json.dumps({"host": "node-elsewhere", "pid": 4242, "heartbeat": time.time(), "since": "earlier"}))
    beating = threading.Thread(target=heartbeat, daemon=True)
    beating.start()
    command = [sys.executable, "-m", "lightning_lottery.cli", "find", "--config", SMOKE, *TINY, "--lottery.out_dir",
               str(out), "--launcher", "local", "--workers", "2", "--wandb.enabled", "true", *FAST_CLAIMS,
               "--quiet", "false"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
    proc = subprocess.Popen(command, env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    lines = []
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append(line)
        if "is being trained by pid 4242 on node-elsewhere" in line:
            assert "ticket level 0 (replicate 0)" in line
            assert not (out / "replicate_0" / "ticket" / "level_00" / "metrics.json").exists()
            stop.set()  # the other worker dies: no more heartbeats
    stop.set()
    assert proc.wait(timeout=600) == 0, "".join(lines)[-3000:]
    text = "".join(lines)
    assert "took over ticket level 0 (replicate 0) from pid 4242 on node-elsewhere" in text
    assert _outcome(out) == sequential["tiny"]
    records = [read_offline_run(p) for p in sorted((out / "wandb").glob("offline-run-*"))]
    assert sorted(r.job_type for r in records) == ["random_mask", "summary", "ticket", "ticket"]
    assert len({r.run_id for r in records}) == 4


@pytest.mark.parametrize("engine, extra, launch", [
    ("submitit", "slurm", ["--launcher", "slurm", "--launch.slurm.cluster", "local"]),
    ("ray", "ray", ["--launcher", "ray", "--launch.ray.local_cpus", "2"]),
], ids=["submitit-local-executor", "ray-local-instance"])
def test_cluster_engines_give_the_sequential_results(sequential, tmp_path, engine, extra, launch):
    pytest.importorskip(engine, reason=f"the {extra} extra (pip install 'lightning-lottery[{extra}]') is not installed")
    out = tmp_path / engine
    proc = _find(out, TINY, *launch, "--wandb.enabled", "false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _outcome(out) == sequential["tiny"]
    if engine == "submitit":
        assert list((out / "submitit").glob("*/*_result.pkl"))  # the runs went through submitit's jobs
