"""What identifies an experiment: the settings that differ from their defaults, canonicalised (OpenLTH's rule).

The experiment id is ``<name>-<first 8 hex digits of the SHA-256 of the identity>``. Only settings away from their
defaults count, so passing a setting at its default value (``--trainer.num_nodes 1``) gives the same id, and a
library release that adds an argument with a default does not orphan existing experiment directories. Settings
that do not change results (where files go, progress bars, loggers) never count.

Example:
    >>> from lightning_lottery.identity import non_default
    >>> non_default({"a": 1, "b": [2, 3], "c": None}, {"a": 1, "b": (2, 3), "c": 0})
    {'c': None}
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
from collections.abc import Mapping
from typing import Any

from lightning_lottery.config import LotteryConfig
from lightning_lottery.store_format import canonical_json

__all__ = ["IGNORED", "class_defaults", "cli_identity", "experiment_identity", "non_default"]

#: Trainer settings that do not change results (and sections of a recipe that are not the experiment).
IGNORED = {
    "trainer": ("enable_progress_bar", "enable_model_summary", "logger", "callbacks", "enable_checkpointing",
                "default_root_dir"),
    "recipe": ("config", "quiet", "torch_num_threads", "wandb", "ticket", "dry_run", "resume",
               "launch", "launcher", "workers"),
}


def _canonical(value: Any) -> Any:
    """``value`` as the experiment store hashes it (canonical JSON, objects by their ``repr``), read back."""
    return json.loads(canonical_json(value))


def non_default(values: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` that differ from ``defaults`` (compared as canonical JSON), sorted by key."""
    out = {}
    for key in sorted(values):
        value = _canonical(values[key])
        if key not in defaults or value != _canonical(defaults[key]):
            out[key] = value
    return out


def class_defaults(cls: type | str) -> dict[str, Any]:
    """The default values of ``cls.__init__``'s arguments (``cls`` may be a ``module.Class`` path)."""
    if isinstance(cls, str):
        module, _, name = cls.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
    try:
        signature = inspect.signature(cls.__init__)  # type: ignore[misc]
    except (TypeError, ValueError):
        return {}
    return {name: p.default for name, p in signature.parameters.items() if p.default is not inspect.Parameter.empty}


def _lottery(settings: LotteryConfig | Mapping[str, Any]) -> dict[str, Any]:
    config = settings if isinstance(settings, LotteryConfig) else LotteryConfig(**settings)
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
                for f in dataclasses.fields(LotteryConfig)}
    return non_default(config.identity(), defaults)


def _trainer(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    import lightning.pytorch as pl

    kept = {k: v for k, v in kwargs.items() if k not in IGNORED["trainer"]}
    return non_default(kept, class_defaults(pl.Trainer))


def experiment_identity(model: Any, datamodule: Any, trainer_kwargs: Mapping[str, Any],
                        lottery: LotteryConfig) -> dict[str, Any]:
    """The identity of an experiment given as Python objects (the model's and datamodule's ``hparams``, as
    ``save_hyperparameters()`` records them, stand for their configuration)."""

    def describe(obj: Any) -> dict[str, Any]:
        hparams = dict(getattr(obj, "hparams", {}) or {})
        return {"class": f"{type(obj).__module__}.{type(obj).__qualname__}",
                "hparams": non_default(hparams, class_defaults(type(obj)))}

    # objects (strategies, plugins) count by their repr
    return {"model": describe(model), "data": describe(datamodule), "trainer": _trainer(trainer_kwargs),
            "lottery": _lottery(lottery)}


def cli_identity(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """The identity of a resolved recipe (the ``find`` command's configuration as a dict)."""
    out: dict[str, Any] = {}
    for key, section in recipe.items():
        if key in IGNORED["recipe"] or section is None:
            continue
        if key == "trainer":
            out[key] = _trainer(section)
        elif key == "lottery":
            out[key] = _lottery(section)
        elif isinstance(section, Mapping) and isinstance(section.get("class_path"), str):
            init_args = dict(section.get("init_args") or {})
            out[key] = {"class_path": section["class_path"],
                        "init_args": non_default(init_args, class_defaults(section["class_path"]))}
        else:
            out[key] = _canonical(section)
    return out
