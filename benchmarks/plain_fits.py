"""The same fits as ``lightning-lottery find``, written by hand: the "plain" side of benchmarks/whole_process.py.

    python benchmarks/plain_fits.py --config recipes/lenet300_fashion_mnist.yaml --fits 3 --max_steps 1500 --out DIR

Uses only Lightning and the project's public model and data module (the recipe's ``class_path`` + ``init_args``):
the recipe's ``trainer`` settings, ``torch_num_threads`` and seed, validation every ``lottery.val_every_n_steps``
steps (no sanity check, as ``find`` runs it), a CSV logger per fit (``find``'s default), no checkpointing, and
``--fits`` fits of ``max_steps`` steps each, every one from the same initial weights, each followed by one test
of the final weights. No pruning, no rewind point, no report: what a user would write to train the network that
many times.

``--phases FILE`` writes the time of each phase (imports, instantiate, trainer, fit, test) as JSON.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import copy  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

IMPORTED = time.perf_counter()


def instantiate(section: dict[str, Any]) -> Any:
    module, _, name = section["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**section.get("init_args", {}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="a recipe YAML (model, data, trainer, lottery sections)")
    parser.add_argument("--fits", type=int, default=3)
    parser.add_argument("--max_steps", type=int, default=None, help="default: the recipe's trainer.max_steps")
    parser.add_argument("--out", required=True, help="directory for the CSV logs")
    parser.add_argument("--phases", default=None, help="write the phase times here (JSON)")
    args = parser.parse_args()

    phases: dict[str, float] = {"imports": IMPORTED - STARTED}
    t = time.perf_counter()
    recipe = yaml.safe_load(Path(args.config).read_text())
    lottery = recipe.get("lottery", {})
    if recipe.get("torch_num_threads"):
        torch.set_num_threads(int(recipe["torch_num_threads"]))
    for name in ("lightning.pytorch", "lightning.fabric"):  # as find does: no per-fit banners
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    pl.seed_everything(int(lottery.get("seed", 0)), workers=True, verbose=False)
    model, data = instantiate(recipe["model"]), instantiate(recipe["data"])
    theta0 = copy.deepcopy(model.state_dict())
    kwargs = dict(recipe.get("trainer", {}))
    if args.max_steps is not None:
        kwargs["max_steps"] = args.max_steps
    val_every = lottery.get("val_every_n_steps")
    if val_every:
        kwargs.update(val_check_interval=val_every, check_val_every_n_epoch=None, num_sanity_val_steps=0)
    kwargs.update(enable_checkpointing=False)
    phases["instantiate"] = time.perf_counter() - t

    for i in range(args.fits):
        t = time.perf_counter()
        model.load_state_dict(theta0)
        trainer = pl.Trainer(**kwargs, logger=CSVLogger(args.out, name=f"fit_{i}"), default_root_dir=args.out)
        phases["trainer"] = phases.get("trainer", 0.0) + time.perf_counter() - t
        t = time.perf_counter()
        trainer.fit(model, datamodule=data)
        phases["fit"] = phases.get("fit", 0.0) + time.perf_counter() - t
        t = time.perf_counter()
        results = trainer.test(model, datamodule=data, verbose=False)
        phases["test"] = phases.get("test", 0.0) + time.perf_counter() - t
        print(f"fit {i + 1}/{args.fits}: {trainer.global_step} steps, test {results[0]}", flush=True)
    phases["total_in_process"] = time.perf_counter() - STARTED
    if args.phases:
        Path(args.phases).write_text(json.dumps(phases, indent=1))


if __name__ == "__main__":
    main()
