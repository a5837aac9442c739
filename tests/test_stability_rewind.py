"""Instability analysis at several rewind steps (lottery.stability.at) and rewind_to: auto: the run graph, the seeds,
the files, the choice, the validation, and the runs end to end (resumed after a kill, from the CLI, in W&B)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TinyData, TinyMLP

from lightning_lottery import PruningScheduler
from lightning_lottery.cli import main
from lightning_lottery.config import LotteryConfig
from lightning_lottery.data import DigitsDataModule
from lightning_lottery.models import LeNet300100
from lightning_lottery.plan import Plan, Run, Seeds
from lightning_lottery.report.stability import k_of
from lightning_lottery.rewind import RewindState
from lightning_lottery.stability import Stability, choose_rewind
from lightning_lottery.store import ExperimentStore
from lightning_lottery.ticket import Ticket

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "recipes" / "lenet300_digits_smoke.yaml")
TRAINER = dict(max_steps=6, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")


# ------------------------------------------------------------------------------------------ the run graph
def test_one_stability_run_per_level_and_rewind_step_with_its_own_seeds():
    plan = Plan(levels=2, replicates=2, main="ticket", stability=(0, 2), stability_at=("0it", "100it", "500it"))
    runs = [r for r in plan.runs() if r.branch == "stability"]
    assert [(r.replicate, r.level, r.at) for r in runs[:6]] == [
        (0, 0, "0it"), (0, 0, "100it"), (0, 0, "500it"), (0, 2, "0it"), (0, 2, "100it"), (0, 2, "500it")]
    assert len(runs) == 12 and len(set(runs)) == 12
    assert str(runs[1]) == "stability level 0 at 100it (replicate 0)"
    assert plan.needs(Run(0, "stability", 0, "500it")) == (Run(0, "ticket", 0),)
    assert plan.needs(Run(1, "stability", 2, "0it")) == (Run(1, "ticket", 1),)
    assert plan.needs(Run(0, "ticket", 1)) == (Run(0, "ticket", 0),)  # a fixed rewind point: no stability needed
    seeds = Seeds((0, 1), plan.stability_at)
    drawn = [seeds.stability(r, c) for r in runs for c in (1, 2)]
    assert len(set(drawn)) == len(drawn) and all(0 <= s < 2**32 for s in drawn)
    # without stability.at: the runs and seeds of before (one run per level at rewind_to)
    single = Plan(levels=2, replicates=1, main="ticket", stability=(0, 2))
    assert [r for r in single.runs() if r.branch == "stability"] == [Run(0, "stability", 0), Run(0, "stability", 2)]
    assert Seeds((0,)).stability(Run(0, "stability", 2), 1) == 7_000_004


def test_auto_runs_the_choosing_level_first_and_every_later_run_needs_it():
    plan = Plan(levels=2, replicates=1, main="ticket", controls=("random_mask",), stability=(1, 2),
                stability_at=("0it", "100it"), choose=1)
    order = [(r.branch, r.level, r.at) for r in plan.runs()]
    assert order == [("ticket", 0, ""), ("stability", 1, "0it"), ("stability", 1, "100it"), ("ticket", 1, ""),
                     ("random_mask", 1, ""), ("ticket", 2, ""), ("random_mask", 2, ""), ("stability", 2, "0it"),
                     ("stability", 2, "100it")]
    chooser = (Run(0, "stability", 1, "0it"), Run(0, "stability", 1, "100it"))
    assert plan.needs(Run(0, "ticket", 1)) == (Run(0, "ticket", 0), *chooser)
    assert plan.needs(Run(0, "random_mask", 2)) == (Run(0, "ticket", 1), *chooser)
    assert plan.needs(Run(0, "stability", 1, "100it")) == (Run(0, "ticket", 0),)
    # a damaged choosing run is redone with everything it chose for
    assert [str(r) for r in plan.dependents(Run(0, "stability", 1, "0it"))] == [
        "ticket level 1 (replicate 0)", "random_mask level 1 (replicate 0)", "ticket level 2 (replicate 0)",
        "random_mask level 2 (replicate 0)", "stability level 2 at 0it (replicate 0)",
        "stability level 2 at 100it (replicate 0)"]
    for run in plan.runs():  # the sequential order runs every run after what it needs
        done = plan.runs()[:plan.runs().index(run)]
        assert all(n in done for n in plan.needs(run))


def test_store_paths_and_finished_runs_round_trip_the_rewind_step(tmp_path):
    store = ExperimentStore(tmp_path)
    runs = [Run(0, "ticket", 0), Run(0, "stability", 1, "100it"), Run(0, "stability", 1, "2000it"),
            Run(0, "stability", 0)]
    store.bind({"x": 1}, "t", runs=runs)
    for run in runs:
        store.finish(run, {"branch": run.branch, "replicate": 0, "level": run.level, "remaining": 1.0})
    assert store.run_dir(runs[1]).relative_to(tmp_path).as_posix() == "replicate_0/stability/100it/level_01"
    assert store.run_dir(runs[3]).relative_to(tmp_path).as_posix() == "replicate_0/stability/level_00"
    assert store.finished_runs() == [Run(0, "ticket", 0), Run(0, "stability", 0), Run(0, "stability", 1, "100it"),
                                     Run(0, "stability", 1, "2000it")]
    assert store.progress().done == 4
    assert json.loads((tmp_path / "experiment.json").read_text())["plan"][1] == [0, "stability", 1, "100it"]


# ------------------------------------------------------------------------------------------------ the choice
def test_the_smallest_stable_k_is_chosen():
    choice = choose_rewind([("2000it", 2000, 0.0), ("0it", 0, 0.05), ("500it", 500, 0.019), ("100it", 100, 0.021)],
                           0.02, 1)
    assert (choice.at, choice.step, choice.stable, choice.level) == ("500it", 500, True, 1)
    assert list(choice.barriers) == ["0it", "100it", "500it", "2000it"]  # by step
    assert "k = 500it" in choice.describe() and "2 pp" in choice.describe()
    assert choose_rewind([("0it", 0, 0.02)], 0.02, 0).at == "0it"  # at the threshold: stable
    assert choose_rewind([("1ep", 50, 0.0), ("100it", 100, 0.0)], 0.02, 1).at == "1ep"  # by step, not by name


def test_no_stable_k_takes_the_largest_and_says_so():
    choice = choose_rewind([("0it", 0, 0.08), ("100it", 100, float("nan")), ("500it", 500, None)], 0.02, 1)
    assert (choice.at, choice.stable) == ("500it", False)
    assert "NO candidate is stable" in choice.describe() and "flagged" in choice.describe()
    assert choice.to_dict()["barriers"] == {"0it": 0.08, "100it": pytest.approx(float("nan"), nan_ok=True),
                                            "500it": None}
    with pytest.raises(ValueError, match="at least one candidate"):
        choose_rewind([], 0.02, 1)


# -------------------------------------------------------------------------------------------- the settings
def test_the_rewind_steps_are_normalised_and_identify_the_experiment():
    assert Stability(at=["2ep", "500it", 0, "500it"]).at == ("0it", "500it", "2ep")
    assert Stability(at="100it").at == ("100it",)
    assert LotteryConfig(stability={"levels": [1], "at": ["100it"]}).identity()["stability"] == {
        "levels": [1], "at": ["100it"]}
    auto = LotteryConfig(rewind_to="auto", levels=2, stability={"levels": [1], "at": ["500it", "0it"]})
    assert auto.level0_rewind_to == "0it" and LotteryConfig(rewind_to="3it").level0_rewind_to == "3it"


@pytest.mark.parametrize("settings, message", [
    (dict(stability={"at": ["5xx"]}), "lottery.stability.at"),
    (dict(stability={"choose_level": 2}), "lottery.stability.choose_level must be 0 or 1"),
    (dict(stability={"max_barrier": 1.5}), "lottery.stability.max_barrier"),
    (dict(stability={"max_barrier": 0.05}), "choose the rewind point of rewind_to: auto"),
    (dict(rewind_to="auto"), "lottery.stability.at: give at least one"),
    (dict(rewind_to="auto", stability={"levels": [1]}), "lottery.stability.at: give at least one"),
    (dict(rewind_to="auto", stability={"levels": [0], "at": ["0it"]}), "must include stability.choose_level 1"),
    (dict(rewind_to="auto", levels=0, stability={"levels": [0], "at": ["0it"], "choose_level": 0}),
     "lottery.levels is 0"),
    (dict(rewind_to="auto", rewind="pai", prune_at_init={"remaining": [0.5]}, levels=1,
          stability={"levels": [1], "at": ["0it"]}), "rewind: pai"),
    (dict(rewind_to="sometime"), "or 'auto'"),
])
def test_settings_errors_name_the_key(settings, message):
    with pytest.raises(ValueError, match=message):
        LotteryConfig(**settings)


def test_a_candidate_past_the_budget_is_refused_before_anything_is_written(tmp_path):
    scheduler = PruningScheduler(TinyMLP(), TinyData(), levels=1, out_dir=str(tmp_path / "x"), val_every_n_steps=3,
                                 stability={"levels": [1], "at": ["0it", "50it"]}, trainer_kwargs=TRAINER, stream=None)
    with pytest.raises(ValueError, match="lottery.stability.at 50it is not inside level 0's training budget"):
        scheduler.preflight(check_metrics=False)
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------------------ end to end
def test_identical_copies_give_barrier_zero_at_every_level_and_k(tmp_path):
    """TinyData's loader shuffles with a fixed generator: both copies of every (level, k) end identical."""
    torch.manual_seed(0)
    scheduler = PruningScheduler(TinyMLP(), TinyData(), levels=1, out_dir=str(tmp_path / "x"), val_every_n_steps=3,
                                 stability={"levels": [0, 1], "at": ["0it", "2it"], "alphas": 3},
                                 trainer_kwargs=TRAINER, stream=None)
    with pytest.warns(UserWarning, match="ended identical"):
        rows = scheduler.run()
    analysed = [r for r in rows if r["branch"] == "stability"]
    assert sorted((r["level"], r["at"], r["rewind_step"]) for r in analysed) == [
        (0, "0it", 0), (0, "2it", 2), (1, "0it", 0), (1, "2it", 2)]
    for r in analysed:
        assert r["barrier_test_err"] == 0.0 and r["barrier_train_loss"] == 0.0 and r["steps"] == 6
    snapshot = RewindState.load(tmp_path / "x/replicate_0/rewind_points/2it.pt")
    assert snapshot.step == 2
    # the main line's rewind point is still rewind_to (0it): θk for k = 0 is the same state
    rewind = RewindState.load(tmp_path / "x/replicate_0/rewind_point.pt")
    zero = RewindState.load(tmp_path / "x/replicate_0/rewind_points/0it.pt")
    assert rewind.step == 0 and all(torch.equal(rewind.model[k], zero.model[k]) for k in rewind.model)


def _digits(out: Path, on_event=None) -> PruningScheduler:
    torch.manual_seed(0)
    return PruningScheduler(
        LeNet300100(in_features=64), DigitsDataModule(), levels=2, rate=0.5, out_dir=str(out), val_every_n_steps=4,
        rewind_to="auto", stability={"levels": [1], "at": ["0it", "4it"], "alphas": 3, "max_barrier": 0.5},
        trainer_kwargs=dict(TRAINER, max_steps=8), stream=None, on_event=on_event)


class Kill(Exception):
    pass


@pytest.mark.parametrize("event, where", [("fit_end", "ticket level 0"), ("run_start", "stability level 1 at 4it"),
                                          ("fit_start", "ticket level 1")])
def test_a_killed_auto_experiment_resumed_gives_the_same_results(tmp_path, event, where):
    reference = {(r["branch"], r["level"], r.get("at")): r for r in _digits(tmp_path / "ref").run()}

    def kill(name, run):
        if name == event and str(run).startswith(where):
            raise Kill(str(run))

    with pytest.raises(Kill):
        _digits(tmp_path / "x", kill).run()
    resumed = {(r["branch"], r["level"], r.get("at")): r for r in _digits(tmp_path / "x").run()}
    assert resumed.keys() == reference.keys()
    for key, row in reference.items():
        for field in ("test_acc", "test_loss", "remaining", "rewind_step", "barrier_test_err", "stability_curve"):
            assert resumed[key].get(field) == row.get(field), (key, field)
    choice = json.loads((tmp_path / "x/replicate_0/rewind_choice.json").read_text())
    assert choice == json.loads((tmp_path / "ref/replicate_0/rewind_choice.json").read_text())


def _find(out: Path, *extra: str) -> int:
    return main(["find", "--config", SMOKE, "--lottery.out_dir", str(out), "--trainer.max_steps", "12",
                 "--lottery.val_every_n_steps", "6", "--lottery.levels", "2", "--wandb.enabled", "false",
                 "--quiet", "true", "--lottery.rewind_to", "auto", *extra])


def test_cli_auto_rewind_with_two_candidates(tmp_path, capsys):
    out = tmp_path / "exp"
    stability = ["--lottery.stability", "{levels: [0, 1], at: [0it, 4it], alphas: 3, max_barrier: 0.0}"]
    assert _find(out, *stability, "--dry_run", "true") == 0
    text = capsys.readouterr().out
    assert "trainings: 11 (4 stability run(s) x 2 copies + 3 others)" in text
    assert "stability level 1 at 4it (replicate 0)  [2 trainings + the interpolation]  (needs ticket L0)" in text
    assert "rewind point auto: the smallest k in [0it, 4it] whose level-1 test-error barrier is <= 0 pp" in text
    assert not out.exists()

    assert _find(out, *stability) == 0
    err = capsys.readouterr().err
    rows = json.loads((out / "results.json").read_text())
    assert [(r["branch"], r["level"], r.get("at")) for r in rows] == [
        ("ticket", 0, None), ("stability", 0, "0it"), ("stability", 0, "4it"), ("ticket", 1, None),
        ("stability", 1, "0it"), ("stability", 1, "4it"), ("ticket", 2, None)]
    choice = json.loads((out / "replicate_0/rewind_choice.json").read_text())
    barriers = {r["at"]: r["barrier_test_err"] for r in rows if r["branch"] == "stability" and r["level"] == 1}
    assert choice["barriers"] == barriers and choice["level"] == 1 and choice["max_barrier"] == 0.0
    expected = next((k for k in ("0it", "4it") if barriers[k] <= 0.0), "4it")
    assert choice["at"] == expected and choice["stable"] == (barriers[expected] <= 0.0)
    assert f"rewind_to auto: {'k = ' if choice['stable'] else 'NO candidate'}" in err  # said even when quiet
    # the main line rewinds to the chosen θk from level 1 on
    step = int(expected[:-2])
    assert [r["rewind_step"] for r in rows if r["branch"] == "ticket"] == [0, step, step]
    theta = RewindState.load(out / f"replicate_0/rewind_points/{expected}.pt").model
    ticket = Ticket.load(out / "replicate_0/ticket/level_02/ticket.safetensors")
    assert all(torch.equal(ticket.state[n], theta[n] * ticket.mask[n]) for n in ticket.mask)
    # report: barrier vs k, curves, the choice
    page = (out / "report/report.html").read_text()
    assert "fig-stability_barrier" in page and "fig-stability" in page and "rewind-choice" in page
    assert (out / "report/stability_barrier.svg").is_file()
    assert {line.split(",")[2] for line in (out / "report/stability.csv").read_text().splitlines()[1:]} == {"0it",
                                                                                                             "4it"}
    before = {p: p.stat().st_mtime_ns for p in out.glob("replicate_0/**/metrics.json")}
    assert _find(out, *stability) == 0  # a rerun recomputes nothing and says the choice again
    assert {p: p.stat().st_mtime_ns for p in out.glob("replicate_0/**/metrics.json")} == before
    assert "rewind_to auto" in capsys.readouterr().err


def test_cli_report_compare_draws_every_experiment(tmp_path, capsys):
    runs = []
    for name, extra in (("imp", []), ("pai", ["--lottery.rewind", "pai", "--lottery.prune_at_init",
                                              "{remaining: [0.5, 0.25]}", "--lottery.rates", "{}"])):
        out = tmp_path / name
        assert main(["find", "--config", SMOKE, "--lottery.out_dir", str(out), "--trainer.max_steps", "6",
                     "--lottery.val_every_n_steps", "3", "--lottery.levels", "2", "--wandb.enabled", "false",
                     "--quiet", "true", "--lottery.controls", "[random_mask, random_reinit]", *extra]) == 0
        runs.append(out)
    capsys.readouterr()
    assert main(["report", str(runs[0]), "--compare", str(runs[1])]) == 0
    assert f"comparison: {runs[0] / 'report' / 'compare.png'}" in capsys.readouterr().out
    svg = (runs[0] / "report/compare.svg").read_text()
    for text in ("lenet300_digits_smoke (ticket, magnitude): main line", "(pai, magnitude): random_mask",
                 "random_reinit"):
        assert text in svg
    with pytest.raises(SystemExit):
        main(["report", str(runs[0]), "--compare", str(tmp_path / "nothing")])


def test_wandb_summary_has_the_stability_curves(tmp_path):
    from lightning_lottery.tracking import WandbSettings
    from lightning_lottery.tracking.offline import read_offline_run

    torch.manual_seed(0)
    PruningScheduler(TinyMLP(), TinyData(), levels=1, out_dir=str(tmp_path / "x"), val_every_n_steps=3,
                     stability={"levels": [0, 1], "at": ["0it", "2it"], "alphas": 3}, trainer_kwargs=TRAINER,
                     stream=None, wandb=WandbSettings(project="lottery-tests", mode="offline")).run()
    runs = [read_offline_run(p) for p in sorted((tmp_path / "x/wandb").glob("offline-run-*"))]
    (summary,) = [r for r in runs if r.job_type == "summary"]
    s = summary.summary
    assert s["stability_curves/_type"] == "table-file" and s["stability_curves/nrows"] == 4 * 3 * 2
    assert s["stability_test_err_vs_alpha_table/nrows"] == 4 * 3  # one line per (level, k), 3 alphas each
    stability_runs = [r for r in runs if r.job_type == "stability"]
    assert len(stability_runs) == 4 and len({r.run_id for r in stability_runs}) == 4  # one W&B run per (level, k)
    assert k_of({"rewind_step": 2}) == "2it"


def test_wandb_runs_use_the_rewind_point_they_start_from(tmp_path):
    """With rewind_to: auto the main line's runs use θk of the chosen step as their W&B input, not θ of level 0's
    rewind_to; level 0 logs every θk copy, each under its own name."""
    from lightning_lottery.tracking import WandbSettings
    from lightning_lottery.tracking.offline import read_offline_run

    torch.manual_seed(0)
    out = tmp_path / "x"
    PruningScheduler(TinyMLP(), TinyData(), levels=1, out_dir=str(out), val_every_n_steps=3, rewind_to="auto",
                     stability={"levels": [1], "at": ["0it", "2it"], "alphas": 3, "max_barrier": 0.99},
                     trainer_kwargs=TRAINER, stream=None,
                     wandb=WandbSettings(project="lottery-tests", mode="offline")).run()
    chosen = json.loads((out / "replicate_0/rewind_choice.json").read_text())["at"]
    assert chosen == "0it"  # every barrier is below 99 pp: the smallest k
    runs = {(r.job_type, r.config.get("level"), r.config.get("stability_at")): r
            for r in (read_offline_run(p) for p in sorted((out / "wandb").glob("offline-run-*")))}
    logged = {a["name"]: a for a in runs[("ticket", 0, None)].artifacts if not a["use_after_commit"]}
    copies = {n: a["metadata"]["at"] for n, a in logged.items() if a["type"] == "lottery-rewind-point"}
    assert sorted(copies.values(), key=str) == ["0it", "2it", None]  # rewind_to's point and both copies
    def used(key: tuple) -> list[str]:  # offline, a used artifact is logged with use_after_commit
        return sorted(a["name"].rsplit("-r0-", 1)[1] for a in runs[key].artifacts if a["use_after_commit"])

    assert used(("ticket", 1, None)) == ["mask-level01", f"rewind-point-{chosen}"]
    assert used(("stability", 1, "2it")) == ["mask-level01", "rewind-point-2it"]
