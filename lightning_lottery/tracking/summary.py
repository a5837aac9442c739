"""What the summary run logs besides the results: mean ± 95% CI over replicates, mask overlap."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:

    from lightning_lottery.store import ExperimentStore




def aggregate_table(stats: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of the summary run's ``aggregate`` table: per (branch, level) the replicates ``n``, the
    mean % remaining and, per metric, mean, 95% CI half-width and the bounds (the mean when the CI is unknown).

    Example:
        >>> stats = [{"branch": "ticket", "level": 1, "n": 2, "remaining_mean": 0.5,
        ...           "test_acc_mean": 0.9, "test_acc_ci95": 0.05, "early_stop_test_acc_mean": None,
        ...           "early_stop_test_acc_ci95": None}]
        >>> columns, data = aggregate_table(stats)
        >>> dict(zip(columns, data[0]))["test_acc_hi"]
        0.9500000000000001
    """
    columns = ["branch", "level", "n", "remaining_pct"]
    for metric in ("test_acc", "early_stop_test_acc"):
        columns += [f"{metric}_mean", f"{metric}_ci95", f"{metric}_lo", f"{metric}_hi"]
    data = []
    for s in stats:
        row: list[Any] = [s["branch"], s["level"], s["n"],
                          None if s.get("remaining_mean") is None else 100.0 * s["remaining_mean"]]
        for metric in ("test_acc", "early_stop_test_acc"):
            mean, ci = s.get(f"{metric}_mean"), s.get(f"{metric}_ci95")
            lo, hi = (None, None) if mean is None else (mean - (ci or 0.0), mean + (ci or 0.0))
            row += [mean, ci, lo, hi]
        data.append(row)
    return columns, data


def ci_chart(stats: Sequence[Mapping[str, Any]], metric: str, title: str) -> Any:
    """A W&B line-series chart of ``metric`` vs % remaining: per branch its mean and the two bounds of the 95%
    CI over replicates (W&B's built-in chart presets have no error-bar mark; the bounds are the band's edges)."""
    import wandb

    from lightning_lottery.aggregate import branch_sort_key

    xs: list[list[float]] = []
    ys: list[list[float]] = []
    keys: list[str] = []
    for branch in sorted({s["branch"] for s in stats}, key=branch_sort_key):
        points = sorted((100.0 * s["remaining_mean"], s[f"{metric}_mean"], s.get(f"{metric}_ci95") or 0.0)
                        for s in stats if s["branch"] == branch and s.get(f"{metric}_mean") is not None
                        and s.get("remaining_mean") is not None)
        if not points:
            continue
        x = [p[0] for p in points]
        for label, values in (("mean", [p[1] for p in points]), ("95% CI low", [p[1] - p[2] for p in points]),
                              ("95% CI high", [p[1] + p[2] for p in points])):
            xs.append(x)
            ys.append(values)
            keys.append(f"{branch} {label}")
    if not ys:
        xs, ys, keys = [[]], [[]], ["none"]
    return wandb.plot.line_series(xs, ys, keys=keys, title=title, xname="% weights remaining")


def mask_overlap(a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
    """``|a ∧ b| / |a|``: the fraction of ``a``'s alive weights that are alive in ``b`` too (1.0 when ``a`` is
    empty).

    Example:
        >>> import torch
        >>> mask_overlap({"w": torch.tensor([True, True, False, False])}, {"w": torch.tensor([True, False, True, False])})
        0.5
    """
    import torch

    alive = sum(int(torch.count_nonzero(m)) for m in a.values())
    both = sum(int(torch.count_nonzero(a[n].bool() & b[n].to(a[n].device).bool())) for n in a)
    return both / alive if alive else 1.0


def mask_overlap_by_level(store: ExperimentStore, branch: str, replicates: Sequence[int],
                          levels: Sequence[int]) -> list[dict[str, Any]]:
    """Per level, the mean :func:`mask_overlap` over ordered pairs of distinct replicates of ``branch``'s masks
    (symmetric), with its min and max, the number of pairs, the mean fraction remaining and the overlap two
    independent random masks of that density would have in expectation (the fraction remaining). Empty with
    fewer than two replicates; a level is left out unless every replicate's mask file is there."""
    from itertools import permutations

    from lightning_lottery.masks import load_mask, remaining
    from lightning_lottery.plan import Run

    out: list[dict[str, Any]] = []
    if len(replicates) < 2:
        return out
    for level in levels:
        paths = [store.mask_file(Run(r, branch, level)) for r in replicates]
        if not all(p.is_file() for p in paths):
            continue
        masks = [load_mask(p) for p in paths]
        values = [mask_overlap(masks[i], masks[j]) for i, j in permutations(range(len(masks)), 2)]
        fraction = sum(remaining(m) for m in masks) / len(masks)
        out.append({"level": level, "remaining_pct": 100.0 * fraction, "overlap": sum(values) / len(values),
                    "overlap_min": min(values), "overlap_max": max(values), "pairs": len(values) // 2,
                    "random_expected": fraction})
    return out




#: The columns of the summary run's ``stability_curves`` table (one row per point of a curve and split).
STABILITY_COLUMNS: tuple[str, ...] = ("replicate", "level", "k", "remaining_pct", "alpha", "split", "error", "loss")


def stability_table(rows: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    """The rows of ``stability_curves``: every point of every stability run's curve, once for ``test`` and once
    for ``train`` (error and loss at that α).

    Example:
        >>> stability_table([{"branch": "stability", "replicate": 0, "level": 1, "remaining": 0.8, "at": "0it",
        ...                   "stability_curve": [{"alpha": 0.0, "test_err": 0.1, "test_loss": 0.3,
        ...                                        "train_err": 0.05, "train_loss": 0.2}]}])
        [[0, 1, '0it', 80.0, 0.0, 'test', 0.1, 0.3], [0, 1, '0it', 80.0, 0.0, 'train', 0.05, 0.2]]
    """
    from lightning_lottery.report.stability import k_of

    out = []
    for r in rows:
        for p in r.get("stability_curve") or []:
            for split in ("test", "train"):
                out.append([r["replicate"], r["level"], k_of(r), 100.0 * r["remaining"], p["alpha"], split,
                            p.get(f"{split}_err"), p.get(f"{split}_loss")])
    return out


def stability_chart(data: Sequence[Sequence[Any]], title: str) -> Any:
    """A W&B line-series chart of test error vs α: one line per (level, k), the mean over replicates."""
    import wandb

    curves: dict[tuple[int, str], dict[float, list[float]]] = {}
    for _, level, k, _, alpha, split, error, _ in data:
        if split == "test" and error is not None:
            curves.setdefault((level, k), {}).setdefault(alpha, []).append(error)
    keys = sorted(curves)
    xs = [sorted(curves[key]) for key in keys]
    ys = [[sum(curves[key][a]) / len(curves[key][a]) for a in x] for key, x in zip(keys, xs)]
    return wandb.plot.line_series(xs or [[]], ys or [[]], keys=[f"level {lv} k={k}" for lv, k in keys] or ["none"],
                                  title=title, xname="alpha")
