"""The recipe's trainer section: batch limits mean what Lightning means (an int counts batches, a float is a
fraction), from the command line and from YAML alike."""

from __future__ import annotations

from pathlib import Path

import pytest
from jsonargparse import ArgumentParser

from lightning_lottery.cli import build_parser, main
from lightning_lottery.trainer_args import BATCH_LIMITS, add_trainer_arguments, batch_limit

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "recipes" / "lenet300_digits_smoke.yaml"


def test_an_integer_limit_is_a_number_of_batches_from_the_command_line_and_from_yaml(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(SMOKE.read_text().replace("trainer:\n", "trainer:\n  limit_val_batches: 1\n"
                                                "  limit_train_batches: 1.0\n  overfit_batches: 2\n", 1))
    cfg = build_parser("find").parse_args(["find", "--config", str(recipe), "--trainer.limit_test_batches", "1",
                                           "--trainer.limit_predict_batches", "0.5"])
    t = cfg.find.trainer
    got = {name: t[name] for name in BATCH_LIMITS}
    assert got == {"limit_val_batches": 1, "limit_train_batches": 1.0, "limit_test_batches": 1,
                   "limit_predict_batches": 0.5, "overfit_batches": 2}
    assert [type(v) for v in got.values()] == [float, int, int, float, int]  # 1 is one batch, 1.0 all of them


def test_the_limits_default_to_lightnings_and_a_wrong_value_is_one_error() -> None:
    parser = ArgumentParser(exit_on_error=False)
    add_trainer_arguments(parser)
    ns = parser.parse_args([])
    assert ns.trainer.limit_test_batches is None and ns.trainer.overfit_batches == 0.0
    assert batch_limit("null") is None and batch_limit(3) == 3 and batch_limit("1e-1") == 0.1
    with pytest.raises(ValueError, match="not a number of batches"):
        batch_limit("some")


def test_find_tests_one_batch_when_told_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_lottery import executor

    seen: list[tuple[object, list[int]]] = []
    original = executor.Executor._test

    def spy(self, trainer, run):  # type: ignore[no-untyped-def]
        out = original(self, trainer, run)
        seen.append((trainer.limit_test_batches, list(trainer.num_test_batches)))
        return out

    monkeypatch.setattr(executor.Executor, "_test", spy)
    assert main(["find", "--config", str(SMOKE), "--lottery.out_dir", str(tmp_path / "x"), "--lottery.levels", "1",
                 "--trainer.max_steps", "2", "--quiet", "true", "--wandb.enabled", "false",
                 "--trainer.limit_test_batches", "1"]) == 0
    assert seen and all(limit == 1 and batches == [1] for limit, batches in seen)
