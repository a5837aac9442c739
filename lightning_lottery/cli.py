"""``lightning-lottery``: run a ticket search from a YAML recipe (jsonargparse, the parser behind LightningCLI).

    lightning-lottery find --config recipes/lenet300_fashion_mnist.yaml [--lottery.levels 3 ...]
    lightning-lottery find --config recipes/lenet300_fashion_mnist.yaml --print_config
    lightning-lottery report experiments/lenet300_fashion_mnist [--wandb true]
    lightning-lottery retrain --config recipes/lenet300_fashion_mnist.yaml --ticket PATH_OR_WANDB_ARTIFACT

A recipe has the sections ``model`` and ``data`` (``class_path`` + ``init_args`` of any LightningModule /
LightningDataModule), ``trainer`` (``lightning.pytorch.Trainer`` arguments, used for every run), ``lottery``
(:class:`~lightning_lottery.config.LotteryConfig`) and ``wandb`` (:class:`~lightning_lottery.tracking.WandbSettings`).
Unknown keys and invalid values are rejected before anything is written.
"""

from __future__ import annotations

import contextlib
import copy
import signal
import sys
import threading
from argparse import ArgumentError
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, Optional

import lightning.pytorch as pl
import torch
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace
from jsonargparse.typing import PositiveInt

from lightning_lottery import distributed
from lightning_lottery._compat import quiet_lightning
from lightning_lottery.config import LotteryConfig
from lightning_lottery.data.errors import DataNotFoundError
from lightning_lottery.export.commands import add_export_commands, run_benchmark, run_export
from lightning_lottery.identity import cli_identity
from lightning_lottery.masks import MaskError
from lightning_lottery.optimizers import OPTIMIZER_BASES, SCHEDULER_BASES, use_recipe_optimizer
from lightning_lottery.pool_settings import LaunchSettings
from lightning_lottery.preflight import PreflightError
from lightning_lottery.pruning import PruningError
from lightning_lottery.recipe_files import recipe_listing, resolve_recipes
from lightning_lottery.store import ExperimentMismatchError
from lightning_lottery.tracking import WandbSettings
from lightning_lottery.trainer_args import add_trainer_arguments
from lightning_lottery.trainer_args import trainer_kwargs as _trainer_kwargs

#: Errors caused by the user's input or files: one line, no traceback.
USER_ERRORS = (DataNotFoundError, MaskError, PruningError, ExperimentMismatchError, FileNotFoundError,
               PreflightError, OSError)


class _RecipeError(ValueError):
    """A recipe value the settings classes reject."""

def _known_classes() -> str:
    """The project's models and datamodules, for ``--help`` (importing them also makes their short names work)."""
    import lightning_lottery.data as data
    import lightning_lottery.models as models

    def names(module: Any, base: type) -> str:
        return ", ".join(sorted(n for n in dir(module) if isinstance(getattr(module, n), type)
                                and issubclass(getattr(module, n), base) and getattr(module, n) is not base))

    return (f"models: {names(models, pl.LightningModule)}; datamodules: {names(data, pl.LightningDataModule)} "
            "(short names work: --model LeNet300100, --model.help LeNet300100)")


def build_parser(command: str | None = None) -> ArgumentParser:
    """The ``lightning-lottery`` parser with its subcommands (``command``: that one only; a recipe parser reads
    ``Trainer``'s signature and docstrings, a few tenths of a second each)."""
    from lightning_lottery import __version__

    parser = ArgumentParser(prog="lightning-lottery", description="Find lottery tickets with PyTorch Lightning.",
                            env_prefix="LIGHTNING_LOTTERY", **_STRICT)
    parser.add_argument("--version", action="version", version=f"lightning-lottery {__version__}")
    subcommands = parser.add_subcommands(required=True, dest="command")
    wanted = lambda name: command is None or command == name  # noqa: E731
    if wanted("find"):
        subcommands.add_subcommand("find", _recipe_parser("Train, prune and rewind, level by level; rerun to resume."),
                                   help="run an iterative-magnitude-pruning experiment from a recipe")
    if wanted("report"):
        subcommands.add_subcommand("report", _report_parser(), help="figures and tables of an experiment directory")
    if wanted("retrain"):
        retrain = _recipe_parser("Train a saved ticket (a file or a W&B artifact) once more with a recipe's settings.")
        retrain.add_argument("--ticket", type=str, required=True,
                             help="ticket.safetensors, or a W&B artifact reference (wandb:ENTITY/PROJECT/NAME:ALIAS)")
        retrain.add_argument("--save_trained", type=Optional[str], default=None,
                             help="write the trained weights under the ticket's mask here (a .safetensors ticket file: "
                                  "lightning-lottery export PATH --experiment DIR exports it)")
        subcommands.add_subcommand("retrain", retrain, help="train a ticket again")
    if wanted("recipes"):
        subcommands.add_subcommand("recipes", ArgumentParser(description="The packaged recipes, one line each.",
                                                             **_STRICT),
                                   help="list the packaged recipes (run one with find --config NAME)")
    if wanted("export") or wanted("benchmark"):
        add_export_commands(subcommands)
    return parser


#: Parse errors are raised (and printed as one line by :func:`main`); no option is accepted by a prefix of its name.
_STRICT: dict[str, Any] = {"exit_on_error": False, "allow_abbrev": False}


def _recipe_parser(description: str) -> ArgumentParser:
    parser = ArgumentParser(description=description, epilog=_known_classes(), **_STRICT)
    parser.add_argument("-c", "--config", action=ActionConfigFile,
                        help="a YAML recipe: a file, or the name of a packaged recipe (lightning-lottery recipes)")
    parser.add_subclass_arguments(pl.LightningModule, "model", required=True, help="the network (a LightningModule)")
    parser.add_subclass_arguments(pl.LightningDataModule, "data", required=True, help="the data (a LightningDataModule)")
    add_trainer_arguments(parser)
    parser.add_subclass_arguments(OPTIMIZER_BASES, "optimizer", instantiate=False, fail_untyped=False,
                                  skip={"params"}, required=False,
                                  help="any torch.optim optimizer for the model's parameters (replaces the model's "
                                       "configure_optimizers), e.g. --optimizer SGD --optimizer.lr 0.05")
    parser.add_subclass_arguments(SCHEDULER_BASES, "lr_scheduler", instantiate=False, fail_untyped=False,
                                  skip={"optimizer"}, required=False,
                                  help="any torch.optim LR scheduler of --optimizer, e.g. --lr_scheduler StepLR")
    parser.add_class_arguments(LotteryConfig, "lottery", instantiate=False)
    parser.add_class_arguments(WandbSettings, "wandb", instantiate=False)
    parser.add_class_arguments(LaunchSettings, "launch", instantiate=False)
    parser.add_argument("--launcher", type=Optional[str], default=None,
                        help="train runs at once: local (worker processes), slurm (submitit) or ray; "
                             "short for --launch.launcher")
    parser.add_argument("--workers", type=Optional[PositiveInt], default=None,
                        help="runs at once (local: worker processes); short for --launch.workers")
    parser.add_argument("--quiet", type=bool, default=False, nargs="?", const=True,
                        help="no progress lines or final table")
    parser.add_argument("--torch_num_threads", type=Optional[PositiveInt], default=None,
                        help="CPU threads for torch (1 is fastest for small models on few cores); default: torch's")
    parser.add_argument("--resume", type=Optional[str], default=None,
                        help="an experiment directory: rerun its experiment from its experiment.json alone")
    parser.add_argument("--dry_run", type=bool, default=False, nargs="?", const=True,
                        help="check the recipe and print the prunable parameters, the run plan and the budget; "
                             "train and write nothing")
    return parser


def _report_parser() -> ArgumentParser:
    parser = ArgumentParser(description="Write report.html and PNG figures from an experiment directory (no training).",
                            **_STRICT)
    parser.add_argument("experiment_dir", type=str, help="the experiment directory (lottery.out_dir)")
    parser.add_argument("--output_dir", type=Optional[str], default=None, help="default: EXPERIMENT_DIR/report")
    parser.add_argument("--compare", type=str, nargs="+", default=None,
                        help="other experiment directories: one figure (compare.png) of test accuracy vs % remaining "
                             "of every experiment's main line and its random_mask / random_reinit controls")
    parser.add_argument("--wandb", type=bool, default=False, nargs="?", const=True,
                        help="also publish the panels as a W&B Report")
    parser.add_argument("--project", type=Optional[str], default=None, help="W&B project (default: the recipe's)")
    parser.add_argument("--entity", type=Optional[str], default=None, help="W&B entity (default: the recipe's)")
    return parser


def _settings(parser: ArgumentParser, cfg: Namespace) -> tuple[LotteryConfig, WandbSettings]:
    try:
        return LotteryConfig(**cfg.lottery.as_dict()), WandbSettings(**cfg.wandb.as_dict())
    except (TypeError, ValueError) as err:
        raise _RecipeError(str(err)) from None


def _instantiate(parser: ArgumentParser, cfg: Namespace, seed: int) -> Namespace:
    if cfg.torch_num_threads:
        torch.set_num_threads(cfg.torch_num_threads)
    quiet_lightning()
    pl.seed_everything(seed, workers=True, verbose=False)  # θ0 depends on the seed
    init = parser.instantiate(cfg)
    section = lambda key: cfg[key].as_dict() if cfg.get(key) is not None else None  # noqa: E731
    try:
        use_recipe_optimizer(init.model, section("optimizer"), section("lr_scheduler"))
    except ValueError as err:
        raise _RecipeError(str(err)) from None
    return init


def run_find(parser: ArgumentParser, cfg: Namespace) -> int:
    """Instantiate the recipe and run the scheduler."""
    from lightning_lottery.scheduler import PruningScheduler

    lottery, wandb = _settings(parser, cfg)
    init = _instantiate(parser, cfg, lottery.replicate_seeds[0])
    trainer_kwargs = _trainer_kwargs(init.trainer)
    recipe = cfg.clone().as_dict()
    recipe.pop("config", None)
    scheduler = PruningScheduler(
        init.model,
        init.data,
        lottery,
        trainer_kwargs=trainer_kwargs,
        logger=_logger_factory(trainer_kwargs.pop("logger", None)),
        wandb=wandb,
        experiment_config=recipe,
        identity=cli_identity(recipe),
        stream=None if cfg.quiet else sys.stderr,
        launcher=_launch_settings(cfg),
    )
    if cfg.dry_run:
        print(scheduler.preflight().describe())
        return 0
    with _interrupt_is_one_line():
        scheduler.run()
    if distributed.is_main():
        print(f"results: {scheduler.store.root / 'results.csv'}", file=sys.stderr)
    return 0


def _launch_settings(cfg: Namespace) -> LaunchSettings:
    """The ``launch:`` section, ``--launcher`` and ``--workers`` overriding it."""
    section = cfg.launch.as_dict() if cfg.get("launch") is not None else {}
    if cfg.get("launcher") is not None:
        section["launcher"] = cfg.launcher
    if cfg.get("workers") is not None:
        section["workers"] = cfg.workers
    try:
        return LaunchSettings(**section)
    except (TypeError, ValueError) as err:
        raise _RecipeError(str(err)) from None


def run_retrain(parser: ArgumentParser, cfg: Namespace) -> int:
    """Train a ticket once with the recipe's model, data and trainer; print its test accuracy."""
    from lightning_lottery.callback import LotteryTicket
    from lightning_lottery.ticket import resolve_ticket

    lottery, _ = _settings(parser, cfg)
    save_to = _save_trained_path(cfg.get("save_trained"))
    try:
        ticket_path = resolve_ticket(cfg.ticket)
        callback = LotteryTicket(ticket=ticket_path, include=lottery.include, exclude=lottery.exclude)
    except RuntimeError as err:  # a W&B artifact that cannot be fetched
        raise _RecipeError(str(err)) from None
    init = _instantiate(parser, cfg, lottery.seed)
    kwargs = _trainer_kwargs(init.trainer)
    kwargs["callbacks"] = list(kwargs.get("callbacks") or []) + [callback]
    if kwargs.get("logger") is None:  # no default TensorBoard logger (and its tensorboardX notice) for one fit
        kwargs["logger"] = False
    kwargs["enable_checkpointing"] = False
    trainer = pl.Trainer(**kwargs)
    trainer.fit(init.model, datamodule=init.data)
    results = trainer.test(init.model, datamodule=init.data, verbose=False)
    metrics = {k: round(float(v), 4) for k, v in (results[0] if results else {}).items()}
    print(f"ticket {ticket_path}: {100 * callback.remaining:.1f}% weights remaining, {metrics}")
    if save_to is not None and distributed.is_main():
        from lightning_lottery.ticket import Ticket

        assert callback.mask is not None
        Ticket.from_model(init.model, callback.mask, trained="true", source=str(ticket_path),
                          **{f"metric/{k}": v for k, v in metrics.items()}).save(save_to)
        print(f"trained weights: {save_to}")
    return 0


def _save_trained_path(value: str | None) -> Path | None:
    """``--save_trained`` checked before training: a ``.safetensors`` path in an existing directory."""
    if value is None:
        return None
    path = Path(value)
    if path.suffix != ".safetensors":
        raise _RecipeError(f"--save_trained must name a .safetensors file, got {value!r}")
    if not path.parent.is_dir():
        raise _RecipeError(f"--save_trained: directory {str(path.parent)!r} does not exist")
    return path


def run_report(parser: ArgumentParser, cfg: Namespace) -> int:
    """Write the local report; with ``--wandb`` publish the W&B Report too."""
    from lightning_lottery.report import build_report, publish_wandb_report
    from lightning_lottery.store import ExperimentStore, read_json

    root = Path(cfg.experiment_dir)
    if not (root / "results.json").is_file():
        raise FileNotFoundError(f"{root} has no results.json (not an experiment directory?)")
    missing = [d for d in cfg.compare or () if not (Path(d) / "results.json").is_file()]
    if missing:
        raise FileNotFoundError(f"--compare {missing[0]} has no results.json (not an experiment directory?)")
    html = build_report(root, cfg.output_dir)
    progress = ExperimentStore(root).progress()
    print(f"report: {html}" + ("" if progress.complete else f" ({progress.describe()}; rerun find to finish it)"))
    if cfg.compare:
        from lightning_lottery.report.compare import build_comparison

        print(f"comparison: {build_comparison([root, *cfg.compare], Path(html).parent)}")
    if cfg.wandb:
        recipe = read_json(root / "experiment.json").get("config", {})
        project = cfg.project or recipe.get("wandb", {}).get("project") or WandbSettings().project
        try:
            url = publish_wandb_report(root, project=project, entity=cfg.entity)
        except RuntimeError as err:
            print(f"W&B report not published: {err}", file=sys.stderr)
            return 1
        print(f"W&B report: {url}")
    return 0


def _logger_factory(template: Any) -> Any:
    """Recipe loggers become one fresh copy per run (``None``/``True``: a CSV logger in each run's directory)."""
    if template is None or template is True:
        return None
    if template is False:
        return False
    return lambda info: copy.deepcopy(template)


def run_recipes(parser: ArgumentParser, cfg: Namespace) -> int:
    """Print the packaged recipes: name, then the ``# recipe:`` line of each (paper row, data, expected time)."""
    print(recipe_listing())
    return 0


_COMMANDS = {"find": run_find, "retrain": run_retrain, "report": run_report, "recipes": run_recipes,
             "export": run_export, "benchmark": run_benchmark}


@contextlib.contextmanager
def _interrupt_is_one_line() -> Iterator[None]:
    """Ctrl-C during training: Lightning shuts the fit down and exits 1; make that a ``KeyboardInterrupt``."""
    interrupted = []

    def on_sigint(signum: int, frame: Any) -> None:
        interrupted.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint) if threading.current_thread() is threading.main_thread() else None
    try:
        yield
    except SystemExit:
        if interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _parse_error(err: ArgumentError, argv: Sequence[str]) -> str:
    """jsonargparse's message as one line, naming the recipe file when the recipe itself is the problem."""
    message = _one_line(err)
    recipe = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--config", "-c")), None)
    recipe = recipe or next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if message.startswith("Unexpected config") or message.startswith("Problems parsing config"):
        what = "is empty" if message.startswith("Unexpected config") else f"is not YAML ({message.split(':', 1)[1].strip()})"
        return f"recipe {recipe} {what}: a recipe is a YAML mapping with the sections model, data, trainer, lottery, wandb"
    if "expected one argument" in message:
        return f"{message} (a value that starts with '-' goes after '=': e.g. --lottery.rewind_to=VALUE)"
    return message


def _fail(message: str, command: str | None, code: int = 2) -> NoReturn:
    hint = f" (see: lightning-lottery {command + ' ' if command else ''}--help)" if code == 2 else ""
    print(f"lightning-lottery: error: {message}{hint}", file=sys.stderr)
    raise SystemExit(code)


def _user_error(err: BaseException) -> str:
    if isinstance(err, OSError) and not isinstance(err, FileNotFoundError) and err.filename:
        return f"{err.strerror or err}: {err.filename}"
    return _one_line(err)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lightning-lottery`` console script: every user error is one line on stderr (exit 2),
    an interruption one line too (exit 130)."""
    argv = resolve_recipes(list(argv) if argv is not None else sys.argv[1:])
    command = next((a for a in argv if a in _COMMANDS), None)
    parser = build_parser(command if argv and argv[0] == command else None)  # only the parser the command needs
    try:
        cfg = parser.parse_args(argv)
        sub_parser = parser._subcommands_action._name_parser_map[cfg.command]  # noqa: SLF001
        return _COMMANDS[cfg.command](sub_parser, cfg[cfg.command])
    except ArgumentError as err:
        _fail(_parse_error(err, argv), command)
    except (*USER_ERRORS, _RecipeError) as err:
        _fail(_user_error(err), command)
    except KeyboardInterrupt:
        _fail("interrupted; rerun the same command to resume where it stopped", None, code=130)


if __name__ == "__main__":
    sys.exit(main())
