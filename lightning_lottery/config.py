"""``LotteryConfig``: the typed, hashable settings of a ticket search (the ``lottery:`` section of a recipe)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from lightning_lottery import branches, saliency  # noqa: F401 - saliency registers the criteria snip, grasp, synflow
from lightning_lottery.rewind import RewindStep
from lightning_lottery.sections import nested
from lightning_lottery.early_bird import EarlyBird
from lightning_lottery.stability import AUTO, Stability
from lightning_lottery.store import config_hash
from lightning_lottery.transfer import Transfer

# The accepted names come from the branch registry (typed for the command line's validation and --help).
RewindMode = Literal[branches.rewind_modes()]  # type: ignore[valid-type]
ControlName = Literal[branches.control_names()]  # type: ignore[valid-type]


@dataclass(frozen=True)
class PruneAtInit:
    """Pruning at initialization (``lottery.rewind: pai``): level L's mask is scored at the rewind point (θ0 with
    ``rewind_to: 0it``) with ``lottery.criterion`` and pruned at once to ``remaining[L-1]``; level 0 is the dense
    network. ``lottery.rate``, ``rates`` and ``scope`` are IMP's and not used.

    Args:
        remaining: the fraction of the prunable weights each level keeps (levels 1, 2, ...), each in (0, 1).
        scope: ``"global"`` (one threshold, the papers') or ``"layerwise"``.
        min_density: no layer keeps less than this fraction (``ceil(min_density × numel)`` of its weights, its
            highest-scoring); 0 = no guard. SynFlow is known to empty 1×1 shortcut convolutions.
        samples: the prune set's size (training samples); default 10 × the model's number of outputs.
        batch_size: the prune set's batch size.
        rounds: rounds of the exponential schedule (density ``remaining ** (r / rounds)`` after round r); default the
            criterion's: 100 for ``synflow``, 1 for the others.
    """

    remaining: tuple[float, ...]
    scope: Literal["layerwise", "global"] = "global"
    min_density: float = 0.0
    samples: Optional[int] = None
    batch_size: int = 256
    rounds: Optional[int] = None

    def __post_init__(self) -> None:
        remaining = self.remaining
        if isinstance(remaining, (int, float)) or not remaining:
            raise ValueError(f"lottery.prune_at_init.remaining must be a non-empty list of fractions, got {remaining!r}")
        object.__setattr__(self, "remaining", tuple(float(r) for r in remaining))
        bad = [r for r in self.remaining if not 0.0 < r < 1.0]
        if bad:
            raise ValueError(f"lottery.prune_at_init.remaining: every fraction must be in (0, 1), got {bad[0]!r}")
        if self.scope not in ("layerwise", "global"):
            raise ValueError(f"lottery.prune_at_init.scope must be 'layerwise' or 'global', got {self.scope!r}")
        if not 0.0 <= float(self.min_density) < min(self.remaining):
            raise ValueError(f"lottery.prune_at_init.min_density must be in [0, {min(self.remaining):g}) (below "
                             f"every remaining fraction), got {self.min_density!r}")
        for key in ("samples", "batch_size", "rounds"):
            value = getattr(self, key)
            if (value is not None or key == "batch_size") and (
                    isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"lottery.prune_at_init.{key} must be a positive integer"
                                 f"{'' if key == 'batch_size' else ' or null'}, got {value!r}")

    def changed(self) -> dict[str, Any]:
        """The settings away from their defaults (``remaining`` always): what identifies the experiment."""
        defaults = {f.name: f.default for f in dataclasses.fields(self) if f.name != "remaining"}
        return {"remaining": list(self.remaining),
                **{k: getattr(self, k) for k, d in defaults.items() if getattr(self, k) != d}}


#: Fields that do not change results: they may differ when an experiment is resumed.
NOT_IDENTITY = ("out_dir", "keep_checkpoints", "checkpoint_every_n_steps")


@dataclass(frozen=True)
class LotteryConfig:
    """Settings of an iterative-magnitude-pruning experiment.

    Args:
        levels: pruning levels after the dense level 0 (``levels=3`` trains 4 networks).
        rate: fraction of the alive weights pruned per level, in (0, 1).
        rates: per-parameter overrides of ``rate`` by fnmatch pattern, in [0, 1) (0 = never pruned), e.g.
            ``{"net.fc3.weight": 0.1}`` for the paper's output layer at half the rate.
        scope: ``"layerwise"`` (each parameter loses ``rate`` of its weights) or ``"global"`` (one threshold).
        rewind_to: rewind point: ``"0it"`` (θ0), ``"500it"`` or ``"2ep"``; ``"auto"``: the smallest k of
            ``stability.at`` whose subnetwork at ``stability.choose_level`` is stable (test-error barrier at most
            ``stability.max_barrier``), chosen per replicate before level 1 (``replicate_<r>/rewind_choice.json``).
        rewind: what the main line restarts each level from: ``full`` (weights and training state at the rewind
            point; branch ``ticket``), ``weights`` (weights at k, fresh optimizer moments; ``weights_rewind``),
            ``lr`` (the trained weights, the learning-rate schedule replayed from k; ``lr_rewind``, Renda et al.
            2020) or ``finetune`` (the trained weights and optimizer at the final learning rate; ``finetune``).
            ``pai`` is pruning at initialization (branch ``pai``; needs ``prune_at_init``).
        controls: control branches trained with each level's mask: ``random_reinit`` (fresh initialization),
            ``random_mask`` (random positions, same per-layer counts) and ``oneshot`` (level 0 pruned at once).
        replicates: how many times the whole experiment runs, with seeds ``seed``, ``seed + 1``, ...
        seeds: explicit seeds, one per replicate (overrides ``replicates``).
        criterion: scoring function by name (``"magnitude"``, ``"random"``; with ``rewind: pai`` also ``"snip"``,
            ``"grasp"``, ``"synflow"``, which score with the training data).
        prune_at_init: the settings of pruning at initialization (:class:`PruneAtInit`), for ``rewind: pai``.
        structure: ``"unstructured"`` (single weights) or ``"units"``: whole units (Linear rows, Conv filters) go,
            scored by the ``unit_norm`` of their alive fan-in scores; ``rate`` / ``rates`` are then fractions of alive
            units, global scope compares norms per weight, the output layer (the last prunable parameter) keeps all
            its units, and the ``random_mask`` / ``oneshot`` controls are structured too.
        unit_norm: ``"l1"`` or ``"l2"``, the norm of a unit's fan-in with ``structure: units``.
        mask_type: ``"any"`` or ``"2:4"``: every level's mask is projected to 2:4 (of each block of 4 weights along a
            unit's fan-in, the 2 best-scored alive ones stay), the pattern ``export --format 2:4`` runs on GPUs.
        include: fnmatch patterns of parameters to prune (default: weights of Linear and Conv layers).
        exclude: fnmatch patterns of parameters never to prune.
        val_every_n_steps: validate every this many training batches (the paper: 100); ``None`` keeps the trainer's
            ``val_check_interval`` / ``check_val_every_n_epoch`` (setting one of those as well is an error).
        seed: global seed set before every level.
        out_dir: the experiment directory.
        name: experiment name (the id is ``name-<hash>``).
        checkpoint_every_n_steps: write the mid-level checkpoint that a rerun resumes from every this many steps
            (default: every 10 validations, or every epoch when ``val_every_n_steps`` is ``None``).
        keep_checkpoints: keep each level's mid-level checkpoints after the level is done.
        stability: instability analysis (:class:`~lightning_lottery.stability.Stability`): at each of its levels, two
            copies trained from the rewind point under other data orders and interpolated (branch ``stability``).
        early_bird: early-bird tickets (:class:`~lightning_lottery.early_bird.EarlyBird`, You et al. 2020): each
            main-line level that prunes draws its next mask during training and stops once it has settled.
        transfer: ticket transfer (:class:`~lightning_lottery.transfer.Transfer`, Morcos et al. 2019): the main line
            (branch ``transfer``, ``rewind: transfer``, set by it) trains another experiment's tickets.

    Example:
        >>> from lightning_lottery.config import LotteryConfig
        >>> LotteryConfig(levels=3, rates={"net.fc3.weight": 0.1}).remaining_after(3) > 0.5
        True
        >>> LotteryConfig(rate=1.5)
        Traceback (most recent call last):
        ...
        ValueError: lottery.rate must be in (0, 1), got 1.5
    """

    levels: int = 5
    rate: float = 0.2
    rates: dict[str, float] = field(default_factory=dict)
    scope: Literal["layerwise", "global"] = "layerwise"
    rewind_to: str = "0it"
    rewind: RewindMode = "full"
    controls: list[ControlName] = field(default_factory=list)
    replicates: int = 1
    seeds: Optional[list[int]] = None
    criterion: str = "magnitude"
    include: Optional[list[str]] = None
    exclude: list[str] = field(default_factory=list)
    val_every_n_steps: Optional[int] = 100
    seed: int = 0
    out_dir: str = "experiments/default"
    name: str = "lottery"
    checkpoint_every_n_steps: Optional[int] = None
    keep_checkpoints: bool = False
    prune_at_init: Optional[PruneAtInit] = None
    structure: Literal["unstructured", "units"] = "unstructured"
    unit_norm: Literal["l1", "l2"] = "l1"
    stability: Optional[Stability] = None
    early_bird: Optional[EarlyBird] = None
    transfer: Optional[Transfer] = None
    mask_type: Literal["any", "2:4"] = "any"

    def __post_init__(self) -> None:
        from lightning_lottery.criteria import available_criteria, criterion_info

        if isinstance(self.prune_at_init, dict):
            try:
                object.__setattr__(self, "prune_at_init", PruneAtInit(**self.prune_at_init))
            except TypeError as err:
                raise ValueError(f"lottery.prune_at_init: {err}") from None
        if isinstance(self.stability, dict):
            try:
                object.__setattr__(self, "stability", Stability(**self.stability))
            except TypeError as err:
                raise ValueError(f"lottery.stability: {err}") from None
        self._nested("early_bird", EarlyBird)
        self._nested("transfer", Transfer)
        if self.transfer is not None and self.rewind == "full":  # the default: transfer's main line replaces it
            object.__setattr__(self, "rewind", "transfer")

        if isinstance(self.levels, bool) or not isinstance(self.levels, int) or self.levels < 0:
            raise ValueError(f"lottery.levels must be an integer >= 0, got {self.levels!r}")
        if not 0.0 < float(self.rate) < 1.0:
            raise ValueError(f"lottery.rate must be in (0, 1), got {self.rate!r}")
        for pattern, value in self.rates.items():
            if not 0.0 <= float(value) < 1.0:
                raise ValueError(f"lottery.rates[{pattern!r}] must be in [0, 1), got {value!r}")
        if self.scope not in ("layerwise", "global"):
            raise ValueError(f"lottery.scope must be 'layerwise' or 'global', got {self.scope!r}")
        try:
            if self.rewind_to != AUTO:
                RewindStep.parse(self.rewind_to)
        except ValueError as err:
            raise ValueError(f"lottery.rewind_to: {err} (or 'auto', chosen by stability)") from None
        self._check_auto()
        if self.rewind not in branches.rewind_modes():
            raise ValueError(f"lottery.rewind must be one of {', '.join(branches.rewind_modes())}; got {self.rewind!r}")
        unknown = [c for c in self.controls if c not in branches.control_names()]
        if unknown or len(set(self.controls)) != len(self.controls):
            raise ValueError(f"lottery.controls: unknown or repeated control(s) {unknown or self.controls}; "
                             f"available: {', '.join(branches.control_names())}")
        if isinstance(self.replicates, bool) or not isinstance(self.replicates, int) or self.replicates < 1:
            raise ValueError(f"lottery.replicates must be an integer >= 1, got {self.replicates!r}")
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            raise ValueError(f"lottery.seeds must be distinct and non-empty, got {self.seeds!r}")
        if self.criterion not in available_criteria():
            raise ValueError(f"lottery.criterion {self.criterion!r} is unknown; available: {available_criteria()}")
        self._check_pai(criterion_info(self.criterion).data)
        self._check_structure()
        self._check_early_bird_and_transfer()
        for key in ("val_every_n_steps", "checkpoint_every_n_steps"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"lottery.{key} must be a positive integer or null, got {value!r}")

    def _nested(self, key: str, cls: type) -> None:
        nested(self, key, cls, "lottery", strict=True)

    def _check_early_bird_and_transfer(self) -> None:
        if (self.rewind == "transfer") != (self.transfer is not None):
            raise ValueError("lottery.rewind: transfer trains another experiment's tickets: set lottery.transfer.source"
                             if self.transfer is None else f"lottery.transfer is set but lottery.rewind is "
                             f"{self.rewind!r}: transfer trains the source's tickets (leave rewind unset)")
        if self.early_bird is not None and self.rewind in ("pai", "transfer"):
            raise ValueError(f"lottery.early_bird draws the next level's mask during training; with rewind: "
                             f"{self.rewind} the masks do not come from training (remove early_bird)")
        if self.transfer is not None and "oneshot" in self.controls:
            raise ValueError("lottery.controls: oneshot prunes this experiment's dense network with IMP's rates; "
                             "with lottery.transfer use random_mask and random_reinit")

    def _check_auto(self) -> None:
        st = self.stability
        if self.rewind_to != AUTO:
            if st is not None and (st.choose_level != 1 or st.max_barrier != 0.02):
                raise ValueError("lottery.stability.choose_level and max_barrier choose the rewind point of "
                                 f"rewind_to: auto; lottery.rewind_to is {self.rewind_to!r}")
            return
        if st is None or not st.at:
            raise ValueError("lottery.rewind_to: auto chooses among the candidates of lottery.stability.at: give at "
                             "least one, e.g. stability: {at: [0it, 100it, 500it], levels: [1]}")
        if st.choose_level not in st.levels:
            raise ValueError(f"lottery.stability.levels {list(st.levels)} must include stability.choose_level "
                             f"{st.choose_level}: its barriers choose the rewind point of rewind_to: auto")
        if self.levels < max(1, st.choose_level):
            raise ValueError(f"lottery.rewind_to: auto chooses the rewind point of levels >= 1 from level "
                             f"{st.choose_level}'s stability; lottery.levels is {self.levels}")
        if self.rewind == "pai":
            raise ValueError("lottery.rewind_to: auto is IMP's; pruning at initialization (rewind: pai) scores at θ0")

    @property
    def level0_rewind_to(self) -> str:
        """The rewind point level 0 captures: ``rewind_to``, or with ``auto`` the first candidate of
        ``stability.at`` (every candidate is copied too)."""
        return self.stability.at[0] if self.rewind_to == AUTO and self.stability is not None else self.rewind_to

    @property
    def validation_cadence(self) -> dict[str, Any]:
        """The ``Trainer`` arguments ``val_every_n_steps`` sets in every run (none when it is ``None``)."""
        if self.val_every_n_steps is None:
            return {}
        return {"val_check_interval": self.val_every_n_steps, "check_val_every_n_epoch": None}

    def _check_structure(self) -> None:
        if self.structure not in ("unstructured", "units"):
            raise ValueError(f"lottery.structure must be 'unstructured' or 'units', got {self.structure!r}")
        if self.unit_norm not in ("l1", "l2"):
            raise ValueError(f"lottery.unit_norm must be 'l1' or 'l2', got {self.unit_norm!r}")
        if self.mask_type not in ("any", "2:4"):
            raise ValueError(f"lottery.mask_type must be 'any' or '2:4', got {self.mask_type!r}")
        if self.mask_type == "2:4" and (self.structure == "units" or self.rewind == "pai" or
                                        {"random_mask", "oneshot"} & set(self.controls)):
            raise ValueError("lottery.mask_type: 2:4 projects each level's IMP mask; it does not combine with "
                             "structure: units, rewind: pai or the random_mask / oneshot controls (their masks "
                             "are not 2:4)")
        if self.structure == "units" and self.rewind == "pai":
            raise ValueError("lottery.structure: units prunes whole units level by level; pruning at initialization "
                             "(rewind: pai) scores single weights: use structure: unstructured with it")

    def _check_pai(self, data_criterion: bool) -> None:
        pai = self.prune_at_init
        if (self.rewind == "pai") != (pai is not None):
            raise ValueError("lottery.rewind: pai and lottery.prune_at_init go together: pruning at initialization "
                             "needs prune_at_init.remaining (the fraction kept at each level) and rewind: pai"
                             if pai is None else f"lottery.prune_at_init is set but lottery.rewind is "
                             f"{self.rewind!r}; set rewind: pai (or remove prune_at_init)")
        if pai is None:
            if data_criterion:
                raise ValueError(f"lottery.criterion {self.criterion!r} scores weights at initialization with the "
                                 "training data: use it with rewind: pai and prune_at_init")
            return
        if self.levels > len(pai.remaining):
            raise ValueError(f"lottery.levels is {self.levels} but lottery.prune_at_init.remaining lists "
                             f"{len(pai.remaining)} fraction(s): level L trains the L-th; list one per level")
        if self.rates:
            raise ValueError("lottery.rates are IMP's per-level rates and mean nothing for pruning at "
                             "initialization; remove them (prune_at_init.min_density guards small layers)")
        if "oneshot" in self.controls:
            raise ValueError("lottery.controls: oneshot prunes trained weights with IMP's rates; with rewind: pai use "
                             "random_mask and random_reinit (the sanity checks of Frankle et al. 2021)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """The settings that change results (what binds an experiment directory): all but where files go; of
        ``prune_at_init``, only what differs from its defaults."""
        out = {k: v for k, v in self.to_dict().items() if k not in NOT_IDENTITY}
        if self.prune_at_init is not None:
            out["prune_at_init"] = self.prune_at_init.changed()
        if self.stability is not None:
            out["stability"] = self.stability.changed()
        for key in ("early_bird", "transfer"):  # absent unless set: identities from before them are unchanged
            value = getattr(self, key)
            if value is None:
                del out[key]
            else:
                out[key] = value.changed()
        return out

    @property
    def digest(self) -> str:
        """SHA-256 of the settings (stable across runs and machines)."""
        return config_hash(self.to_dict())

    def __hash__(self) -> int:
        return int(self.digest[:15], 16)

    @property
    def replicate_seeds(self) -> list[int]:
        """The seed of each replicate."""
        return list(self.seeds) if self.seeds is not None else [self.seed + r for r in range(self.replicates)]

    def remaining_after(self, level: int) -> float:
        """Nominal fraction remaining after ``level`` levels at the default rate (overrides not counted)."""
        return (1.0 - self.rate) ** level
