"""The recipe's ``trainer`` section: Lightning's ``Trainer`` arguments, with the batch limits parsed as Lightning
means them.

Lightning types ``limit_*_batches`` and ``overfit_batches`` as ``float | int``, where an int is a number of
batches and a float a fraction: ``1`` is one batch and ``1.0`` is all of them. jsonargparse tries the members of a
union in order, so with the signature's order ``limit_test_batches: 1`` (YAML) or ``--trainer.limit_test_batches 1``
was read as ``1.0``, every batch, and nobody was told. (Declaring them ``int | float`` does not help: ``typing``
caches unions regardless of their order and hands back Lightning's.) They are parsed here by :func:`batch_limit`:
an integer stays an int, anything else is a float.

Example:
    >>> from jsonargparse import ArgumentParser
    >>> parser = ArgumentParser()
    >>> add_trainer_arguments(parser)
    >>> ns = parser.parse_args(["--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "0.25"])
    >>> ns.trainer.limit_val_batches, ns.trainer.limit_test_batches
    (1, 0.25)
"""

from __future__ import annotations

import inspect
from typing import Any

import lightning.pytorch as pl
from jsonargparse import ArgumentParser, Namespace

__all__ = ["BATCH_LIMITS", "add_trainer_arguments", "batch_limit", "trainer_kwargs"]

#: ``Trainer`` arguments where an int counts batches and a float is a fraction of them.
BATCH_LIMITS = ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches",
                "overfit_batches")

#: Set by the plugin for every run (``default_root_dir``: the run's directory; checkpoints: ``ResumeCheckpoint``).
_OURS = frozenset({"enable_checkpointing", "default_root_dir"})


def batch_limit(value: Any) -> int | float | None:
    """``1``, ``"1"`` -> ``1`` (batches); ``0.5``, ``"1.0"`` -> floats (fractions); ``None``, ``"null"`` -> ``None``."""
    if value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
        return value  # type: ignore[no-any-return]
    text = str(value).strip()
    if text.lower() in ("null", "none"):
        return None
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{value!r} is not a number of batches (an int) or a fraction (a float)") from None


def add_trainer_arguments(parser: ArgumentParser, key: str = "trainer") -> None:
    """Add ``Trainer``'s arguments under ``key`` (not instantiated), :data:`BATCH_LIMITS` int first."""
    parser.add_class_arguments(pl.Trainer, key, instantiate=False, skip=set(_OURS | set(BATCH_LIMITS)),
                               fail_untyped=False)
    defaults = inspect.signature(pl.Trainer).parameters
    for name in BATCH_LIMITS:
        parser.add_argument(f"--{key}.{name}", type=batch_limit, default=defaults[name].default,
                            help=f"Trainer({name}=...): an int is a number of batches, a float a fraction (1.0: all)")


def trainer_kwargs(trainer: Namespace) -> dict[str, Any]:
    """The parsed ``trainer`` section as ``Trainer`` keyword arguments (nested namespaces as dicts)."""
    return {k: (v.as_dict() if isinstance(v, Namespace) else v) for k, v in vars(trainer).items()}
