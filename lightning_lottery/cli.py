"""``lightning-lottery``: run a ticket search from a YAML recipe (jsonargparse, the parser behind LightningCLI).

    lightning-lottery find --config recipes/lenet300_fashion_mnist.yaml [--lottery.levels 3 ...]
    lightning-lottery find --config recipes/lenet300_fashion_mnist.yaml --print_config

A recipe has four sections: ``model`` and ``data`` (``class_path`` + ``init_args`` of any LightningModule /
LightningDataModule), ``trainer`` (``lightning.pytorch.Trainer`` arguments, used for every level) and
``lottery`` (:class:`~lightning_lottery.config.LotteryConfig`). Unknown keys and invalid values are rejected
before anything is written.
"""

from __future__ import annotations

import copy
import logging
import sys
import warnings
from collections.abc import Sequence
from typing import Any, Optional

import torch

import lightning.pytorch as pl
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace
from jsonargparse.typing import PositiveInt

from lightning_lottery.config import LotteryConfig
from lightning_lottery.data.errors import DataNotFoundError
from lightning_lottery.masks import MaskError
from lightning_lottery.pruning import PruningError
from lightning_lottery.store import ExperimentMismatchError

#: Errors caused by the user's input or files: one line, no traceback.
USER_ERRORS = (DataNotFoundError, MaskError, PruningError, ExperimentMismatchError)

#: Trainer settings that do not change results: they may differ when an experiment is resumed.
_TRAINER_NOT_IDENTITY = ("enable_progress_bar", "enable_model_summary", "logger")


def build_parser() -> ArgumentParser:
    """The ``lightning-lottery`` parser with its subcommands."""
    parser = ArgumentParser(prog="lightning-lottery", description="Find lottery tickets with PyTorch Lightning.")
    subcommands = parser.add_subcommands(required=True, dest="command")
    subcommands.add_subcommand("find", _find_parser(), help="run an iterative-magnitude-pruning experiment from a recipe")
    return parser


def _find_parser() -> ArgumentParser:
    find = ArgumentParser(description="Train, prune and rewind, level by level; rerun to resume.")
    find.add_argument("--config", action=ActionConfigFile, help="a YAML recipe")
    find.add_subclass_arguments(pl.LightningModule, "model", required=True, help="the network (a LightningModule)")
    find.add_subclass_arguments(pl.LightningDataModule, "data", required=True, help="the data (a LightningDataModule)")
    find.add_class_arguments(
        pl.Trainer, "trainer", instantiate=False,
        skip={"enable_checkpointing", "default_root_dir"},
        fail_untyped=False,
    )
    find.add_class_arguments(LotteryConfig, "lottery", instantiate=False)
    find.add_argument("--quiet", type=bool, default=False, help="no progress lines or final table")
    find.add_argument("--torch_num_threads", type=Optional[PositiveInt], default=None,
                      help="CPU threads for torch (1 is fastest for small models on few cores); default: torch's")
    return find


def _identity(cfg: Namespace) -> dict[str, Any]:
    """The parts of the resolved recipe that define the experiment (its hash binds the output directory)."""
    ident = cfg.clone().as_dict()
    ident.pop("config", None)
    ident.pop("quiet", None)
    ident.pop("torch_num_threads", None)
    for key in _TRAINER_NOT_IDENTITY:
        ident["trainer"].pop(key, None)
    ident["lottery"] = LotteryConfig(**ident["lottery"]).identity()
    return ident


def run_find(parser: ArgumentParser, cfg: Namespace) -> int:
    """Instantiate the recipe and run the scheduler."""
    from lightning_lottery.scheduler import PruningScheduler

    try:
        lottery = LotteryConfig(**cfg.lottery.as_dict())
    except (TypeError, ValueError) as err:
        parser.error(str(err))
    if cfg.torch_num_threads:
        torch.set_num_threads(cfg.torch_num_threads)
    _quiet_lightning_info()
    pl.seed_everything(lottery.seed, workers=True, verbose=False)  # θ0 depends on the seed
    init = parser.instantiate(cfg)
    trainer_kwargs = _trainer_kwargs(init.trainer)
    scheduler = PruningScheduler(
        init.model,
        init.data,
        lottery,
        trainer_kwargs=trainer_kwargs,
        logger=_logger_factory(trainer_kwargs.pop("logger", None)),
        experiment_config=_identity(cfg),
        stream=None if cfg.quiet else sys.stderr,
    )
    try:
        scheduler.run()
    except USER_ERRORS as err:
        parser.exit(2, f"lightning-lottery: error: {err}\n")
    print(f"results: {scheduler.store.root / 'results.csv'}", file=sys.stderr)
    return 0


def _quiet_lightning_info() -> None:
    """Lightning's per-fit banners (GPU available, tips, 'max_steps reached') would bury the level progress."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def _logger_factory(template: Any) -> Any:
    """Recipe loggers become one fresh copy per level (``None``/``True``: a CSV logger in each level's directory)."""
    if template is None or template is True:
        return None
    if template is False:
        return False
    return lambda info: copy.deepcopy(template)


def _trainer_kwargs(trainer: Namespace) -> dict[str, Any]:
    kwargs = dict(vars(trainer))
    return {k: (v.as_dict() if isinstance(v, Namespace) else v) for k, v in kwargs.items()}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lightning-lottery`` console script."""
    parser = build_parser()
    cfg = parser.parse_args(list(argv) if argv is not None else None)
    if cfg.command == "find":
        find_parser = parser._subcommands_action._name_parser_map["find"]  # noqa: SLF001
        return run_find(find_parser, cfg.find)
    parser.error(f"unknown command {cfg.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
