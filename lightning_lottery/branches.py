"""The branch registry: what each kind of run starts from and which mask it trains.

A branch is one :class:`Branch` entry: a name, a one-line description, a ``start`` function (the training state
the run begins at: the rewind point, the weights only, the trained weights with the schedule replayed, a fresh
initialization, ...) and a ``mask`` function (the level's mask, a random one with the same per-layer counts, a
one-shot one). A branch with ``rewind`` set is the *main line* of that rewinding mode (``lottery.rewind``); an
``analysis`` branch (``stability``) is run by its own setting (``lottery.stability``); the others are *controls*
trained with each level's mask. The main-line name per rewind mode, the control names the
configuration accepts and the report's idea of "the main branch" are all derived from this registry.

Adding a branch is one :func:`register` call plus its tests.

Example:
    >>> from lightning_lottery import branches
    >>> branches.main_line("weights").name, branches.control_names()
    ('weights_rewind', ('random_reinit', 'random_mask', 'oneshot'))
    >>> branches.main_branch_of(["random_reinit", "weights_rewind"])
    'weights_rewind'
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, Optional

import torch

from lightning_lottery import pruning, structured
from lightning_lottery.masks import Mask, count_alive
from lightning_lottery.plan import STABILITY, Run, Seeds
from lightning_lottery.rewind import RewindState

__all__ = ["Branch", "Inputs", "control_names", "get", "main_branch_of", "main_line", "main_line_names",
           "register", "rewind_modes"]

#: Scores of a criterion: ``(weights, generator) -> scores`` (see :mod:`lightning_lottery.criteria`).
Scorer = Callable[..., Mapping[str, torch.Tensor]]


@dataclass(frozen=True)
class Inputs:
    """What a run at level ≥ 1 may start from; files are read only when a branch asks for them.

    Args:
        run: the run being started.
        seeds: the experiment's seeds.
        mask: the main line's mask at ``run.level``.
        rewind_point: the replicate's rewind point (training state at step k).
        trained: the final training state of the main line's run at a level (``final_state.pt``).
        fresh_init: the model's own initialization under a seed (a ``state_dict``).
        score: the experiment's criterion.
        structure: ``lottery.structure``: with ``"units"`` the random and one-shot masks are structured too.
        transferred: with ``lottery.transfer``, the weights a transferred ticket of a replicate starts from (the
            source experiment's rewind weights, the re-initialized layers' from this experiment's rewind point).
    """

    run: Run
    seeds: Seeds
    mask: Mask
    rewind_point: RewindState
    trained: Callable[[int], RewindState]
    fresh_init: Callable[[int], dict[str, torch.Tensor]]
    score: Scorer
    structure: str = "unstructured"
    transferred: Optional[Callable[[int], dict[str, torch.Tensor]]] = None


@dataclass(frozen=True)
class Branch:
    """One kind of run.

    Args:
        name: the branch name (directory name, W&B job type, ``results.csv`` ``branch`` column).
        description: one line for help texts and the report.
        start: the training state the run starts from.
        mask: the mask the run trains (default: the level's mask).
        rewind: the ``lottery.rewind`` mode whose main line this is; ``None`` for a control.
        trained: which trained weights the branch starts from, so the main line keeps them: ``"previous"`` (the
            main line's previous level) or ``"dense"`` (level 0); ``None`` for none.
        analysis: run by its own setting, not a control (``lottery.controls`` does not accept it).
    """

    name: str
    description: str
    start: Callable[[Inputs], RewindState]
    mask: Callable[[Inputs], Mask] = lambda inputs: inputs.mask
    rewind: Optional[str] = None
    trained: Optional[Literal["previous", "dense"]] = None
    analysis: bool = False

    @property
    def is_main_line(self) -> bool:
        return self.rewind is not None


_REGISTRY: dict[str, Branch] = {}


def register(branch: Branch) -> Branch:
    """Add ``branch`` to the registry (its name must be new)."""
    if branch.name in _REGISTRY:
        raise ValueError(f"branch {branch.name!r} is already registered")
    _REGISTRY[branch.name] = branch
    return branch


def get(name: str) -> Branch:
    """The registered branch ``name``; ``ValueError`` lists the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown branch {name!r}; known: {', '.join(_REGISTRY)}") from None


def main_line(rewind: str) -> Branch:
    """The main-line branch of a rewinding mode."""
    for branch in _REGISTRY.values():
        if branch.rewind == rewind:
            return branch
    raise ValueError(f"lottery.rewind must be one of {', '.join(rewind_modes())}; got {rewind!r}")


def rewind_modes() -> tuple[str, ...]:
    """The ``lottery.rewind`` values, in registration order."""
    return tuple(b.rewind for b in _REGISTRY.values() if b.rewind is not None)


def main_line_names() -> tuple[str, ...]:
    return tuple(b.name for b in _REGISTRY.values() if b.is_main_line)


def control_names() -> tuple[str, ...]:
    """The branches ``lottery.controls`` accepts, in registration order."""
    return tuple(b.name for b in _REGISTRY.values() if not b.is_main_line and not b.analysis)


def main_branch_of(names: Iterable[str], rewind: str | None = None) -> str:
    """The main line among the branches of an experiment's results: the main line of ``rewind`` when given, else
    the one main-line branch present (``ticket`` when none is)."""
    present = set(names)
    if rewind is not None and rewind in rewind_modes():
        return main_line(rewind).name
    for name in main_line_names():
        if name in present:
            return name
    return sorted(present)[0] if present else main_line("full").name


# ------------------------------------------------------------------------------------------ the branches
def _trained_previous(inputs: Inputs) -> RewindState:
    return inputs.trained(inputs.run.level - 1)


def _at_rewind_point(state: RewindState, rewind_point: RewindState) -> RewindState:
    """``state`` (e.g. trained weights and optimizer) placed at the rewind point's loop position."""
    return state.at_position(rewind_point.step, rewind_point.epoch, rewind_point.batch, rewind_point.batches)


def _transferred(inputs: Inputs) -> RewindState:
    """The source experiment's ticket weights at this experiment's rewind position, without optimizer state (the
    re-initialized layers may have other shapes)."""
    if inputs.transferred is None:
        raise ValueError("branch 'transfer' trains another experiment's tickets: set lottery.transfer")
    return inputs.rewind_point.without_optimizer_state().with_model(inputs.transferred(inputs.run.replicate))


def _random_mask(inputs: Inputs) -> Mask:
    generator = torch.Generator().manual_seed(inputs.seeds.random_mask(inputs.run))
    return pruning.random_mask_like(inputs.mask, generator, structure=inputs.structure)  # type: ignore[arg-type]


def _oneshot_mask(inputs: Inputs) -> Mask:
    """Level 0's final weights pruned at once to the level's per-layer fractions."""
    dense = inputs.trained(0)
    weights = {n: dense.model[n] for n in inputs.mask}
    scores = inputs.score(weights, generator=torch.Generator().manual_seed(inputs.seeds.oneshot_criterion))
    ones = {n: torch.ones_like(m) for n, m in inputs.mask.items()}
    if inputs.structure == "units":  # the level's fractions of alive units per layer (lottery.unit_norm: l1)
        units = {n: t[0] / t[1] for n, t in structured.unit_counts(inputs.mask).items()}
        return pruning.prune_to(scores, ones, 1.0, scope="layerwise", targets=units, structure="units")
    targets = {n: count_alive({n: m}) / m.numel() for n, m in inputs.mask.items()}
    return pruning.prune_to(scores, ones, 1.0, scope="layerwise", targets=targets)


register(Branch("ticket", "the main line: weights and training state rewound to step k (Frankle & Carbin)",
                start=lambda i: i.rewind_point, rewind="full"))
register(Branch("weights_rewind", "the main line: weights rewound to step k, fresh optimizer moments",
                start=lambda i: i.rewind_point.without_optimizer_state(), rewind="weights"))
register(Branch("lr_rewind", "the main line: trained weights kept, learning-rate schedule replayed from step k "
                "(Renda et al. 2020)",
                start=lambda i: i.rewind_point.without_optimizer_state().with_model(_trained_previous(i).model),
                rewind="lr", trained="previous"))
register(Branch("finetune", "the main line: trained weights and optimizer kept, trained on at the final "
                "learning rate", start=lambda i: _at_rewind_point(_trained_previous(i), i.rewind_point),
                rewind="finetune", trained="previous"))
register(Branch("pai", "the main line of pruning at initialization: the mask scored at the rewind point (θ0) with "
                "lottery.criterion and the training data, pruned at once to the level's lottery.prune_at_init "
                "fraction, trained from the rewind point", start=lambda i: i.rewind_point, rewind="pai"))
register(Branch("transfer", "the main line of ticket transfer: the source experiment's level-L ticket (its mask and "
                "rewind weights, lottery.transfer.reinit layers from this experiment's rewind point) trained on this "
                "task (Morcos et al. 2019)", start=_transferred, rewind="transfer"))
register(Branch("random_reinit", "control: the level's mask on a fresh initialization, trained from step 0",
                start=lambda i: RewindState(0, 0, i.fresh_init(i.seeds.reinit(i.run)))))
register(Branch("random_mask", "control: random positions with the level's per-layer counts, from the rewind point",
                start=lambda i: i.rewind_point, mask=_random_mask))
register(Branch("oneshot", "control: level 0's final weights pruned at once to the level's per-layer fractions",
                start=lambda i: i.rewind_point, mask=_oneshot_mask, trained="dense"))
register(Branch(STABILITY, "analysis: two copies trained from the rewind point with the level's mask under other "
                "data orders, evaluated along the line between them (lottery.stability; Frankle et al. 2020)",
                start=lambda i: i.rewind_point, analysis=True))
