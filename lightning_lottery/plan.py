"""The run plan of an experiment: its runs, what each run needs, the order they run in, and every seed.

Pure data, no Lightning and no torch. A :class:`Run` is one ``Trainer.fit``: a (replicate, branch, level). The
:class:`Plan` is the run graph: level L of the main line needs level L−1 (whose final weights give mask L);
a control at level L needs the main line's mask L, i.e. the main line's run at level L−1; a ``stability`` run
(two copies interpolated, :mod:`lightning_lottery.stability`) at level L ≥ 1 needs the same, at level 0 the main
line's level 0 (the rewind point); with several rewind steps (``stability.at``) there is one stability run per
(level, k) (:attr:`Run.at`); with ``rewind_to: auto`` (``Plan.choose``) every main-line and control run at level ≥ 1
needs the stability runs of the choosing level, whose barriers choose its rewind point; replicates are independent. :meth:`Plan.ready` says which runs can start given the finished ones, so an executor may run them
in any order the graph allows; :meth:`Plan.runs` is the sequential order. :class:`Seeds` derives every seed.

Example:
    >>> from lightning_lottery.plan import Plan, Run
    >>> plan = Plan(levels=2, replicates=1, main="ticket", controls=("random_mask",))
    >>> [str(r) for r in plan.runs()][:3]
    ['ticket level 0 (replicate 0)', 'ticket level 1 (replicate 0)', 'random_mask level 1 (replicate 0)']
    >>> plan.needs(Run(0, "random_mask", 2))
    (Run(replicate=0, branch='ticket', level=1),)
    >>> [str(r) for r in plan.ready({Run(0, "ticket", 0)})]
    ['ticket level 1 (replicate 0)', 'random_mask level 1 (replicate 0)']
    >>> [str(r) for r in plan.dependents(Run(0, "ticket", 1))]
    ['ticket level 2 (replicate 0)', 'random_mask level 2 (replicate 0)']
    >>> [str(r) for r in plan.critical_path({Run(0, "ticket", 0)})]
    ['ticket level 1 (replicate 0)', 'ticket level 2 (replicate 0)']
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace

__all__ = ["STABILITY", "Plan", "Run", "Seeds"]

#: The branch name of the stability runs (the instability analysis of a level's subnetwork).
STABILITY = "stability"


@dataclass(frozen=True, order=True, repr=False)
class Run:
    """One training run of an experiment: a (replicate, branch, level); a stability run at one of several rewind
    steps also has its step ``at`` (``"500it"``; ``""``: the experiment's ``rewind_to``)."""

    replicate: int
    branch: str
    level: int
    at: str = ""

    def with_branch(self, branch: str) -> Run:
        return replace(self, branch=branch)

    def next_level(self) -> Run:
        return replace(self, level=self.level + 1)

    def previous_level(self) -> Run:
        return replace(self, level=self.level - 1)

    def __repr__(self) -> str:
        at = f", at={self.at!r}" if self.at else ""
        return f"Run(replicate={self.replicate!r}, branch={self.branch!r}, level={self.level!r}{at})"

    def __str__(self) -> str:
        return f"{self.branch} level {self.level}{f' at {self.at}' if self.at else ''} (replicate {self.replicate})"


@dataclass(frozen=True)
class Plan:
    """The run graph of an experiment: ``replicates`` × (the main line's levels 0..``levels`` + ``controls`` at
    every level ≥ 1 + a ``stability`` run at each of the ``stability`` levels up to ``levels``).

    Args:
        levels: pruning levels after the dense level 0.
        replicates: independent repetitions under other seeds.
        main: the main line's branch name (it depends on the rewinding mode, see :mod:`lightning_lottery.branches`).
        controls: the control branches trained with each level's mask, in the order they run.
        stability: the levels with a stability run (levels above ``levels`` are left out).
        stability_at: the rewind steps of the stability runs, one run per (level, step); empty: one run per level
            at the experiment's ``rewind_to``.
        choose: ``rewind_to: auto``: the level whose stability runs choose the rewind point of every main-line and
            control run at level ≥ 1 (they run before that level's main line); ``None``: a fixed rewind point.

    Example:
        >>> plan = Plan(levels=1, replicates=1, main="ticket", stability=(1,), stability_at=("0it", "100it"), choose=1)
        >>> [str(r) for r in plan.runs()]  # doctest: +NORMALIZE_WHITESPACE
        ['ticket level 0 (replicate 0)', 'stability level 1 at 0it (replicate 0)',
         'stability level 1 at 100it (replicate 0)', 'ticket level 1 (replicate 0)']
    """

    levels: int
    replicates: int
    main: str
    controls: tuple[str, ...] = ()
    stability: tuple[int, ...] = ()
    stability_at: tuple[str, ...] = ()
    choose: int | None = None

    def runs(self) -> list[Run]:
        """Every run in sequential execution order: per replicate, per level, the main line, the controls, then the
        stability runs (with ``choose``: the choosing level's stability runs before its main line)."""
        out = []
        for replicate in range(self.replicates):
            for level in range(self.levels + 1):
                first = self.choose == level and level > 0  # they choose this level's rewind point
                if first:
                    out.extend(self.stability_runs(replicate, level))
                out.append(Run(replicate, self.main, level))
                if level > 0:
                    out.extend(Run(replicate, branch, level) for branch in self.controls)
                if not first:
                    out.extend(self.stability_runs(replicate, level))
        return out

    def stability_runs(self, replicate: int, level: int) -> list[Run]:
        """The stability runs of a level: one per rewind step (none when the level has no stability run)."""
        if level not in self.stability:
            return []
        return [Run(replicate, STABILITY, level, at) for at in self.stability_at or ("",)]

    def needs(self, run: Run) -> tuple[Run, ...]:
        """The runs whose outputs ``run`` starts from (level 0 of the main line needs none)."""
        if run.branch == STABILITY and run.level == 0:
            return (Run(run.replicate, self.main, 0),)  # the rewind point(s)
        if run.level == 0:
            return ()
        if self.choose is not None and run.branch != STABILITY:  # the rewind point is chosen by these
            return (Run(run.replicate, self.main, run.level - 1), *self.stability_runs(run.replicate, self.choose))
        return (Run(run.replicate, self.main, run.level - 1),)

    def dependents(self, run: Run) -> list[Run]:
        """The runs that start, directly or through others, from ``run``'s outputs, in execution order."""
        found: set[Run] = {run}
        out = []
        for r in self.runs():  # execution order puts every run after the runs it needs
            if any(n in found for n in self.needs(r)):
                found.add(r)
                out.append(r)
        return out

    def ready(self, finished: Collection[Run], running: Collection[Run] = ()) -> list[Run]:
        """The runs that are neither finished nor running and whose needs are all finished, in execution order."""
        return [r for r in self.runs() if r not in finished and r not in running
                and all(n in finished for n in self.needs(r))]

    def by_urgency(self, runs: Sequence[Run], finished: Collection[Run] = ()) -> list[Run]:
        """``runs`` ordered for workers: those that start the longest chain of unfinished runs first (the main
        line before the controls, which no run needs), ties in execution order.

        Example:
            >>> plan = Plan(levels=2, replicates=2, main="ticket", controls=("random_mask",))
            >>> [str(r) for r in plan.by_urgency(plan.ready({Run(0, "ticket", 0), Run(1, "ticket", 0)}))]
            ... # doctest: +NORMALIZE_WHITESPACE
            ['ticket level 1 (replicate 0)', 'ticket level 1 (replicate 1)', 'random_mask level 1 (replicate 0)',
             'random_mask level 1 (replicate 1)']
        """
        order = self.runs()
        children: dict[Run, list[Run]] = {}
        for r in order:
            for n in self.needs(r):
                children.setdefault(n, []).append(r)
        chain: dict[Run, int] = {}
        for r in reversed(order):  # every run after the runs it needs
            chain[r] = 0 if r in finished else 1 + max((chain[c] for c in children.get(r, ())), default=0)
        position = {r: i for i, r in enumerate(order)}
        return sorted(runs, key=lambda r: (-chain[r], position[r]))

    def critical_path(self, finished: Collection[Run] = (),
                      cost: Callable[[Run], float] | None = None) -> list[Run]:
        """The longest chain of runs not yet finished, each starting from the previous one's outputs, by the sum of
        ``cost`` (default: 1 per run): the time the rest of the experiment takes however many workers run it.
        Ties go to the chain that comes first in execution order."""
        weight = cost or (lambda run: 1.0)
        best: dict[Run, tuple[float, list[Run]]] = {}
        for r in self.runs():  # execution order puts every run after the runs it needs
            if r in finished:
                continue
            before = max((best[n] for n in self.needs(r) if n in best), key=lambda t: t[0], default=(0.0, []))
            best[r] = (before[0] + weight(r), [*before[1], r])
        return max(best.values(), key=lambda t: t[0], default=(0.0, []))[1]

    def is_main_line(self, run: Run) -> bool:
        return run.branch == self.main

    def main_run(self, replicate: int, level: int) -> Run:
        return Run(replicate, self.main, level)


@dataclass(frozen=True)
class Seeds:
    """Every seed of an experiment, derived from one seed per replicate (the only place seeds are made).

    Example:
        >>> from lightning_lottery.plan import Run, Seeds
        >>> seeds = Seeds((0, 1))
        >>> seeds.run(Run(1, "ticket", 2)), seeds.reinit(Run(1, "random_reinit", 2)), seeds.criterion(Run(0, "ticket", 3))
        (1, 20001, 3)
    """

    replicate_seeds: Sequence[int]
    #: The rewind steps of the stability runs (``Plan.stability_at``): each has its own data-order seeds.
    stability_at: Sequence[str] = ()

    def replicate(self, replicate: int) -> int:
        """The seed of a replicate: θ0 of replicates after the first is the model's initializer under it."""
        return int(self.replicate_seeds[replicate])

    def run(self, run: Run) -> int:
        """The global seed set before a run's fit (data order, dropout, augmentation)."""
        return self.replicate(run.replicate)

    def reinit(self, run: Run) -> int:
        """The fresh initialization of the ``random_reinit`` control at ``run.level``."""
        return self.replicate(run.replicate) + 10_000 * run.level

    def random_mask(self, run: Run) -> int:
        """The positions of the ``random_mask`` control at ``run.level``."""
        return self.replicate(run.replicate) * 1000 + run.level + 500

    def stability(self, run: Run, copy: int) -> int:
        """The data-order seed of copy ``copy`` (1 or 2) of a stability run (global seed and data module seed); a run
        at the i-th of several rewind steps adds ``1_000_000 × (i + 1)``."""
        offset = 1_000_000 * (1 + list(self.stability_at).index(run.at)) if run.at else 0
        return 7_000_000 + offset + self.replicate(run.replicate) * 1000 + 2 * run.level + copy - 1

    def criterion(self, run: Run) -> int:
        """The generator a (possibly random) criterion scores with when ``run`` prunes its final weights."""
        return self.replicate(run.replicate) * 1000 + run.level

    #: The generator of the one-shot control's criterion (level 0's weights are scored once per replicate).
    oneshot_criterion: int = 0
