"""Ticket transfer (Morcos, Yu, Paganini & Tian, NeurIPS 2019): a ticket found on one task trained on another.

``lottery.transfer`` names a *source* experiment directory. The experiment's main line (branch ``transfer``) trains,
at level L ≥ 1, the source's level-L ticket: its mask and the source's rewind weights, read through the source's
:class:`~lightning_lottery.store.ExperimentStore`. The ``reinit`` layers (the output head when the class count
differs) start from this experiment's own rewind point instead, their mask dropped (all ones) or kept
(``head_mask: keep``, when the shapes fit). Level 0 is this experiment's dense network, whose rewind point the
controls (``random_mask``: random positions with the transferred per-layer counts) start from. No Lightning.

Example:
    >>> Transfer(source="experiments/src", reinit=["net.fc3"]).changed()
    {'source': 'experiments/src', 'reinit': ['net.fc3']}
    >>> reinitialized("net.fc3.weight", ("net.fc3",)), reinitialized("net.fc2.weight", ("net.fc3",))
    (True, False)
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from lightning_lottery.branches import main_line_names
from lightning_lottery.masks import Mask
from lightning_lottery.plan import Run
from lightning_lottery.store import ExperimentStore

__all__ = ["Transfer", "TransferSource", "reinitialized"]


@dataclass(frozen=True)
class Transfer:
    """``lottery.transfer``: train another experiment's tickets on this experiment's task.

    Args:
        source: the source experiment's directory (its ``out_dir``).
        reinit: the layers (module names like ``net.fc3``, or fnmatch patterns of state-dict keys) that start from
            this experiment's rewind point instead of the source's weights.
        head_mask: for the ``reinit`` layers' weights: ``drop`` their mask (all ones) or ``keep`` the source's
            (only when the shapes fit).
    """

    source: str
    reinit: tuple[str, ...] = ()
    head_mask: Literal["drop", "keep"] = "drop"

    def __post_init__(self) -> None:
        if not isinstance(self.source, (str, Path)) or not str(self.source):
            raise ValueError(f"lottery.transfer.source must be the source experiment's directory, got {self.source!r}")
        object.__setattr__(self, "source", str(self.source))
        reinit = (self.reinit,) if isinstance(self.reinit, str) else self.reinit
        if not all(isinstance(p, str) and p for p in reinit):
            raise ValueError(f"lottery.transfer.reinit must be a list of layer names, got {self.reinit!r}")
        object.__setattr__(self, "reinit", tuple(reinit))
        if self.head_mask not in ("drop", "keep"):
            raise ValueError(f"lottery.transfer.head_mask must be 'drop' or 'keep', got {self.head_mask!r}")

    def changed(self) -> dict[str, Any]:
        """What identifies the experiment: the source and the layers re-initialized (``head_mask`` when not drop)."""
        out: dict[str, Any] = {"source": self.source, "reinit": list(self.reinit)}
        if self.head_mask != "drop":
            out["head_mask"] = self.head_mask
        return out


def reinitialized(name: str, patterns: Sequence[str]) -> bool:
    """Whether the state-dict key ``name`` belongs to one of the ``reinit`` layers (``net.fc3`` covers
    ``net.fc3.weight`` and ``net.fc3.bias``; fnmatch patterns match keys)."""
    return any(name == p or name.startswith(p + ".") or fnmatch.fnmatchcase(name, p) for p in patterns)


class TransferSource:
    """The source experiment of a transfer, read through its store; every mistake is a ``ValueError`` naming
    ``lottery.transfer``.

    Args:
        settings: ``lottery.transfer``.
    """

    def __init__(self, settings: Transfer) -> None:
        self.settings = settings
        self.store = ExperimentStore(settings.source)
        record = self.store.read_experiment() if self.store.root.is_dir() else None
        if record is None:
            raise ValueError(f"lottery.transfer.source: {settings.source} holds no experiment (no experiment.json); "
                             "run the source experiment first")
        self.record = record
        mains = sorted({r.branch for r in self.store.finished_runs() if r.branch in main_line_names()})
        if len(mains) != 1:
            raise ValueError(f"lottery.transfer.source: {settings.source} has "
                             f"{'no finished main-line run' if not mains else 'several main lines ' + str(mains)}")
        self.main = mains[0]

    def identity(self) -> dict[str, str]:
        """The source experiment's id and hash (recorded in this experiment's identity)."""
        return {"id": str(self.record["id"]), "hash": str(self.record["hash"])}

    def levels(self, replicate: int) -> int:
        """The highest level whose ticket (mask) the source holds for ``replicate``, levels below all present."""
        level = 0
        while self.store.mask_file(Run(replicate, self.main, level + 1)).is_file():
            level += 1
        return level

    def source_mask(self, replicate: int, level: int) -> Mask:
        return self.store.load_mask(Run(replicate, self.main, level))

    def mask(self, replicate: int, level: int, target: Mapping[str, torch.Tensor]) -> Mask:
        """The source's level-``level`` mask for the target's prunable parameters (``target``: their masks or
        weights, for the shapes): the ``reinit`` layers' dropped (all ones) or kept."""
        source, out = self.source_mask(replicate, level), {}
        for name, like in target.items():
            if reinitialized(name, self.settings.reinit) and self.settings.head_mask == "drop":
                out[name] = torch.ones(like.shape, dtype=torch.bool)
            else:
                out[name] = source[name].to("cpu", torch.bool)
        return out

    def weights(self, replicate: int, target: Mapping[str, Any]) -> dict[str, Any]:
        """The state a transferred ticket starts from: the source's rewind weights, the ``reinit`` layers' entries
        from ``target`` (this experiment's rewind point)."""
        source = self.store.load_rewind_point(replicate).model
        return {k: (target[k] if reinitialized(k, self.settings.reinit) else source[k]) for k in target}

    def check(self, target: Mapping[str, Any], prunable: Sequence[str], levels: int, replicates: int) -> None:
        """Every mistake before anything is trained: levels or replicates the source lacks, ``reinit`` names that
        match nothing, a layer neither listed nor of the same shape, a kept mask that does not fit."""
        where = f"lottery.transfer.source {self.settings.source}"
        for pattern in self.settings.reinit:
            if not any(reinitialized(k, (pattern,)) for k in target):
                raise ValueError(f"lottery.transfer.reinit: {pattern!r} matches no parameter of the model")
        for replicate in range(replicates):
            if not self.store.rewind_file(replicate).is_file():
                raise ValueError(f"{where} has no replicate {replicate} (no rewind point): lottery.replicates is "
                                 f"{replicates}")
            found = self.levels(replicate)
            if levels > found:
                raise ValueError(f"lottery.levels is {levels} but {where} holds tickets for levels 1..{found} "
                                 f"(replicate {replicate}): ask for at most {found}")
        source = self.store.load_rewind_point(0).model
        missing = sorted(set(target) ^ set(source))
        if missing:
            raise ValueError(f"{where}: the models differ in their parameters ({', '.join(missing[:4])}); "
                             "transfer needs the same architecture up to the reinit layers' shapes")
        for name, value in target.items():
            src = source[name]
            if not isinstance(value, torch.Tensor) or value.shape == src.shape:
                continue
            if not reinitialized(name, self.settings.reinit):
                raise ValueError(f"lottery.transfer: layer {name!r} has shape {list(src.shape)} in the source and "
                                 f"{list(value.shape)} here; list its layer in lottery.transfer.reinit")
            if name in prunable and self.settings.head_mask == "keep":
                raise ValueError(f"lottery.transfer.head_mask: keep needs {name!r} to fit, but its shape is "
                                 f"{list(src.shape)} in the source and {list(value.shape)} here; use drop")
        source_mask = self.source_mask(0, min(levels, self.levels(0)))
        if sorted(source_mask) != sorted(prunable):
            raise ValueError(f"{where} prunes {sorted(source_mask)}, this experiment {sorted(prunable)}: "
                             "use the same lottery.include / exclude")
