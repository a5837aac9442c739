"""PruningScheduler end to end on tiny data: files, exact counts, determinism, resume, config binding."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from conftest import TinyConvBN, TinyData, TinyMLP
from lightning.pytorch.callbacks import Callback

from lightning_lottery import LotteryConfig, PruningScheduler, Ticket
from lightning_lottery.masks import checksum, load_mask
from lightning_lottery.rewind import RewindState
from lightning_lottery.store import RESULT_COLUMNS, ExperimentMismatchError, config_hash

TRAINER = dict(max_steps=12, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")


def scheduler(out_dir, model=None, data=None, trainer=None, **overrides) -> PruningScheduler:
    torch.manual_seed(0)
    settings = dict(levels=2, rate=0.5, val_every_n_steps=4, checkpoint_every_n_steps=4, out_dir=str(out_dir), seed=0)
    settings.update(overrides)
    return PruningScheduler(model or TinyMLP(), data or TinyData(), trainer_kwargs=trainer or TRAINER, stream=None,
                            **settings)


def test_levels_write_results_masks_and_tickets(tmp_path):
    rows = scheduler(tmp_path, rewind_to="2it").run()
    assert [r["level"] for r in rows] == [0, 1, 2]
    # layerwise 50%: 128 → 64 → 32, 256 → 128 → 64, 48 → 24 → 12
    assert [r["alive"] for r in rows] == [432, 216, 108]
    assert [r["remaining"] for r in rows] == [1.0, 0.5, 0.25]
    for r in rows:
        assert r["steps"] == 12 and r["rewind_step"] == 2
        assert 0.0 <= r["test_acc"] <= 1.0 and 0.0 <= r["early_stop_test_acc"] <= 1.0
        assert r["early_stop_iter"] in {h["step"] for h in r["val_history"]}
        assert r["min_val_loss"] == min(h["val_loss"] for h in r["val_history"])
        assert [h["step"] for h in r["val_history"]] == [4, 8, 12]
    with open(tmp_path / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == RESULT_COLUMNS and len(table) == 3
    with open(tmp_path / "layers.csv") as f:
        layers = list(csv.DictReader(f))
    assert {row["layer"] for row in layers} == {"net.0.weight", "net.2.weight", "net.4.weight"}
    # each level's ticket is θk ⊙ m of that level's mask
    rewind = RewindState.load(tmp_path / "replicate_0" / "rewind_point.pt")
    for level in range(3):
        ticket = Ticket.load(tmp_path / "replicate_0" / "ticket" / f"level_{level:02d}" / "ticket.safetensors")
        mask = load_mask(tmp_path / "replicate_0" / "ticket" / f"level_{level:02d}" / "mask.safetensors")
        assert ticket.metadata["level"] == str(level)
        for name, m in mask.items():
            assert torch.equal(ticket.mask[name], m)
            assert torch.equal(ticket.state[name], rewind.model[name] * m)
    # mid-level checkpoints are cleaned up once a level is done
    assert not any(tmp_path.glob("replicate_0/*/*/checkpoints/*.ckpt"))


def test_global_scope_with_override(tmp_path):
    rows = scheduler(tmp_path, levels=1, scope="global", rates={"net.4.weight": 0.0}).run()
    layers = rows[1]["layers"]
    assert layers["net.4.weight"]["remaining"] == 1.0
    assert layers["net.0.weight"]["alive"] + layers["net.2.weight"]["alive"] == 192  # 384 / 2


def test_same_seed_same_masks_and_metrics(tmp_path):
    a = scheduler(tmp_path / "a").run()
    b = scheduler(tmp_path / "b").run()
    for ra, rb in zip(a, b):
        for key in ("remaining", "test_acc", "early_stop_iter", "min_val_loss", "val_history"):
            assert ra[key] == rb[key], key
    for level in range(3):
        ma = load_mask(tmp_path / "a" / "replicate_0" / "ticket" / f"level_{level:02d}" / "mask.safetensors")
        mb = load_mask(tmp_path / "b" / "replicate_0" / "ticket" / f"level_{level:02d}" / "mask.safetensors")
        assert checksum(ma) == checksum(mb)


class CrashAt(Callback):
    """Simulates a killed process in the middle of a level."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            raise SystemExit("simulated crash")


class FirstStep(Callback):
    seen: list[int] = []

    def on_train_start(self, trainer, pl_module):
        FirstStep.seen.append(trainer.global_step)


def test_resume_after_interruption_recomputes_nothing(tmp_path):
    crash = dict(TRAINER, callbacks=[CrashAt(9)])
    s = scheduler(tmp_path, trainer=crash)
    # the crash hits level 0 at step 9: nothing is finished, a checkpoint at step 8 exists
    with pytest.raises(SystemExit):
        s.run()
    assert (tmp_path / "replicate_0" / "ticket" / "level_00" / "checkpoints" / "last.ckpt").is_file()
    assert not (tmp_path / "replicate_0" / "ticket" / "level_00" / "metrics.json").exists()
    # rerun without the crash: level 0 resumes at step 8 from its checkpoint, then levels 1, 2 run
    FirstStep.seen = []
    rows = scheduler(tmp_path, trainer=dict(TRAINER, callbacks=[FirstStep()])).run()
    assert FirstStep.seen == [8, 0, 0]
    assert [r["level"] for r in rows] == [0, 1, 2]
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    # a third run finds everything done: no fit at all, no file rewritten except the results tables
    FirstStep.seen = []
    again = scheduler(tmp_path, trainer=dict(TRAINER, callbacks=[FirstStep()])).run()
    assert FirstStep.seen == [] and again == rows
    changed = [p.name for p, t in stamps.items() if p.stat().st_mtime_ns != t and p.name != ".lock"]
    assert changed == []


def test_resume_between_levels(tmp_path):
    scheduler(tmp_path, levels=1).run()
    FirstStep.seen = []
    rows = scheduler(tmp_path, levels=1, trainer=dict(TRAINER, callbacks=[FirstStep()])).run()
    assert FirstStep.seen == [] and len(rows) == 2


def test_different_config_same_directory_is_an_error(tmp_path):
    scheduler(tmp_path, levels=1).run()
    with pytest.raises(ExperimentMismatchError, match="rate: was 0.5, now 0.3"):
        scheduler(tmp_path, levels=1, rate=0.3).run()
    assert json.loads((tmp_path / "experiment.json").read_text())["config"]["lottery"]["rate"] == 0.5


def test_settings_at_their_default_do_not_change_the_experiment(tmp_path):
    """The identity holds only settings away from their defaults (OpenLTH's rule): naming a default changes
    nothing, and an experiment stored before a setting existed (so without it) is still the same experiment."""
    first = scheduler(tmp_path, levels=0)
    first.run()
    again = scheduler(tmp_path, levels=0, criterion="magnitude", scope="layerwise",
                      trainer=dict(TRAINER, num_nodes=1, accumulate_grad_batches=1))
    again.run()
    assert again.experiment_id == first.experiment_id
    stored = json.loads((tmp_path / "experiment.json").read_text())
    assert "criterion" not in stored["identity"]["lottery"] and "num_nodes" not in stored["identity"]["trainer"]
    assert stored["hash"] == config_hash(stored["identity"])


def test_a_changed_setting_is_named(tmp_path):
    scheduler(tmp_path, levels=0).run()
    with pytest.raises(ExperimentMismatchError, match=r"lottery\.criterion: not set \(default\) in the stored "
                                                      r"experiment, now 'random'"):
        scheduler(tmp_path, levels=0, criterion="random").run()
    with pytest.raises(ExperimentMismatchError, match=r"lottery\.rate: was 0.5, now at its default"):
        scheduler(tmp_path, levels=0, rate=0.2).run()


def test_user_conv_bn_module_through_scheduler(tmp_path):
    rows = scheduler(tmp_path, model=TinyConvBN(), data=TinyData(image=True), levels=1, scope="global").run()
    assert rows[1]["alive"] == (36 + 144 + 12) // 2
    assert rows[1]["test_acc"] is not None


def test_config_validation():
    for bad, match in [
        (dict(rate=1.0), "lottery.rate"),
        (dict(rate=0.0), "lottery.rate"),
        (dict(levels=-1), "lottery.levels"),
        (dict(rewind_to="soon"), "lottery.rewind_to"),
        (dict(rates={"x": 1.5}), "lottery.rates"),
        (dict(criterion="nope"), "lottery.criterion"),
        (dict(scope="everywhere"), "lottery.scope"),
    ]:
        with pytest.raises(ValueError, match=match):
            LotteryConfig(**bad)
    assert hash(LotteryConfig()) == hash(LotteryConfig())
    assert LotteryConfig().digest != LotteryConfig(rate=0.3).digest


def test_validation_history_is_complete_when_early_stop_is_early(tmp_path):
    # a learning rate that makes training diverge: minimum validation loss at the first validation
    rows = scheduler(tmp_path, model=TinyMLP(optimizer="sgd", lr=20.0), levels=0).run()
    (row,) = rows
    assert [h["step"] for h in row["val_history"]] == [4, 8, 12]
    assert row["early_stop_iter"] == min(row["val_history"], key=lambda h: h["val_loss"])["step"]
    assert row["early_stop_iter"] < 12



class WeightsAtValidation(Callback):
    """Copies of the weights at every validation, by step (a class attribute: the scheduler copies callbacks)."""

    by_step: dict[int, dict[str, torch.Tensor]] = {}

    def on_validation_end(self, trainer, pl_module):
        WeightsAtValidation.by_step[trainer.global_step] = {
            k: v.detach().clone() for k, v in pl_module.state_dict().items()}


def test_early_stop_test_uses_the_weights_of_the_best_validation_and_keeps_the_final_ones(tmp_path):
    import lightning.pytorch as pl

    WeightsAtValidation.by_step = {}
    torch.manual_seed(0)
    model = TinyMLP(optimizer="sgd", lr=20.0)  # diverges: the best validation is an early one
    trainer_kwargs = dict(TRAINER, callbacks=[WeightsAtValidation()])
    (row,) = scheduler(tmp_path, model=model, levels=0, trainer=trainer_kwargs).run()
    early, final_step = row["early_stop_iter"], row["steps"]
    assert early < final_step and sorted(WeightsAtValidation.by_step) == [4, 8, 12]
    assert not any(tmp_path.rglob("*.ckpt"))  # no checkpoint file for early stopping (the level cleaned up too)
    # the caller's model holds the final weights again after the early-stop test
    for k, v in WeightsAtValidation.by_step[final_step].items():
        assert torch.equal(model.state_dict()[k], v), k
    # the weights of the best validation, tested on their own, give the reported early-stop accuracy
    probe = TinyMLP(optimizer="sgd", lr=20.0)
    probe.load_state_dict(WeightsAtValidation.by_step[early])
    tester = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    (result,) = tester.test(probe, datamodule=TinyData(), verbose=False)
    assert result["test_acc"] == pytest.approx(row["early_stop_test_acc"], abs=1e-6)


def test_the_scheduler_is_quiet_from_python(tmp_path, capfd, caplog):
    """No progress bar, model summary or device banner per fit: the progress lines are the scheduler's own."""
    import logging

    trainer = dict(max_steps=12, accelerator="cpu")  # the user asked for nothing about bars or summaries
    level_before = logging.getLogger("lightning.pytorch").level
    PruningScheduler(TinyMLP(), TinyData(), trainer_kwargs=trainer, levels=1, rate=0.5, val_every_n_steps=4,
                     out_dir=str(tmp_path), stream=None).run()
    out, err = capfd.readouterr()
    logged = " ".join(record.getMessage() for record in caplog.records)
    for noise in ("GPU available", "Trainable params", "Epoch 0", "`Trainer.fit` stopped"):
        assert noise not in out + err + logged, noise
    assert logging.getLogger("lightning.pytorch").level == level_before  # the user's logging is left as it was
