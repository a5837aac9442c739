"""Sparse export: Linear layers become ``torch.sparse_csr`` where that measures faster. Pure torch, no Lightning.

Each ``nn.Linear`` of the model is timed on the input it really gets (one forward pass of an example batch of the
user's batch size), dense ``F.linear`` against :class:`~lightning_lottery.export.layers.SparseLinear`, in
alternating pairs; the layer becomes sparse only if the median of its sparse times is below ``margin`` × the median
of its dense times. Conv layers stay dense. Works on any model (only Linear modules are replaced).

Why ``torch.sparse_csr``: it ships with torch (no extra dependency), runs MKL's sparse kernels on x86 builds and
keeps autograd-free inference in one library. scipy's CSR product was measured next to it on the default ticket's
layers (docs/performance.md, "Export"): no faster at batch 256, and single-threaded.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    >>> small, report = sparsify(net, torch.randn(8, 64), repeats=3)
    >>> sorted(report["layers"][0])
    ['choice', 'dense_s', 'density', 'layer', 'layout', 'ratio', 'sparse_s']
"""

from __future__ import annotations

import copy
import statistics
from collections import OrderedDict
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_lottery.export.chain import set_submodule
from lightning_lottery.export.layers import (ELEMENTWISE, FeatureMajorLinear, FromFeatureMajor, SparseLinear,
                                             ToFeatureMajor)

__all__ = ["sparsify", "threads"]


@contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Run the body with ``torch.set_num_threads(n)`` (``None``: unchanged), restoring the previous count."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _time(fn: Any, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


@torch.no_grad()
def time_pair(dense: Any, sparse: Any, repeats: int = 15, min_s: float = 2e-3) -> tuple[float, float]:
    """Median seconds per call of ``dense`` and ``sparse``, timed in alternating pairs after a warm-up."""
    calls = 1
    for fn in (dense, sparse, dense, sparse):  # warm-up; also picks calls per sample to last about min_s
        t = _time(fn, calls)
        calls = max(calls, min(1000, int(min_s / max(t, 1e-7)) + 1))
    d, s = [], []
    for i in range(repeats):
        order = (dense, sparse) if i % 2 == 0 else (sparse, dense)
        for fn in order:
            (d if fn is dense else s).append(_time(fn, calls))
    return statistics.median(d), statistics.median(s)


def _linear_inputs(model: nn.Module, example: Tensor) -> dict[str, Tensor]:
    """The input each ``nn.Linear`` of ``model`` gets in a forward pass of ``example``, by module name."""
    inputs: dict[str, Tensor] = {}

    def keep_input(name: str) -> Any:
        def hook(module: nn.Module, args: Any, result: Any) -> None:  # returns None: the output is unchanged
            inputs.setdefault(name, args[0].detach())
        return hook

    hooks = [m.register_forward_hook(keep_input(n)) for n, m in model.named_modules() if type(m) is nn.Linear]
    try:
        model(example)
    finally:
        for h in hooks:
            h.remove()
    return inputs


def _choose(linear: nn.Linear, name: str, x: Tensor | None, feature_major: bool, repeats: int, margin: float,
            force: str | None) -> tuple[SparseLinear | None, dict[str, Any]]:
    """The SparseLinear for ``linear`` if it measures faster on ``x`` (else ``None``), and the report row."""
    density = float(torch.count_nonzero(linear.weight)) / max(1, linear.weight.numel())
    candidate = SparseLinear.from_linear(linear, feature_major)
    row: dict[str, Any] = {"layer": name, "layout": "feature-major" if feature_major else "batch-major",
                           "density": round(density, 5), "dense_s": None, "sparse_s": None, "ratio": None}
    if force is None and x is not None:
        w, b = linear.weight, linear.bias
        if feature_major:
            x = x.t().contiguous()
            bias = b.unsqueeze(1) if b is not None else torch.zeros(w.shape[0], 1, dtype=w.dtype)
            dense = lambda x=x, w=w, bias=bias: torch.addmm(bias, w, x)  # noqa: E731
        else:
            dense = lambda x=x, w=w, b=b: F.linear(x, w, b)  # noqa: E731
        dense_s, sparse_s = time_pair(dense, lambda x=x, c=candidate: c(x), repeats)
        row.update(dense_s=dense_s, sparse_s=sparse_s, ratio=round(sparse_s / dense_s, 4))
        sparse = sparse_s < margin * dense_s
    else:
        sparse = force == "sparse"
    row["choice"] = "sparse" if sparse else "dense"
    return (candidate if sparse else None), row


def _regions(seq: nn.Sequential, inputs: Mapping[str, Tensor]) -> list[tuple[int, int]]:
    """Runs ``[first, last]`` of children of ``seq``: Linear layers on 2-d inputs with activations between."""
    children = list(seq.named_children())
    runs, start, last = [], None, None
    for i, (name, m) in enumerate(children):
        linear = type(m) is nn.Linear and name in inputs and inputs[name].dim() == 2
        if linear:
            start = i if start is None else start
            last = i
        elif start is not None and not isinstance(m, ELEMENTWISE):
            runs.append((start, last))
            start = None
    if start is not None:
        runs.append((start, last))
    return runs  # type: ignore[return-value]


def _feature_major(seq: nn.Sequential, batch_major: nn.Sequential, inputs: Mapping[str, Tensor], repeats: int,
                   margin: float, force: str | None) -> tuple[nn.Sequential | None, list[dict[str, Any]]]:
    """``seq`` with each run of Linear layers in ``[features, batch]`` layout, its layers sparse where faster."""
    children = list(seq.named_children())
    out: OrderedDict[str, nn.Module] = OrderedDict()
    rows, any_sparse, pos = [], False, 0
    for r, (first, last) in enumerate(_regions(seq, inputs)):
        for name, m in list(batch_major.named_children())[pos:first]:
            out[name] = m
        chosen = []
        for name, m in children[first:last + 1]:
            if type(m) is nn.Linear:
                sparse, row = _choose(m, name, inputs.get(name), True, repeats, margin, force)
                rows.append(row)
                if sparse is None:
                    sparse = FeatureMajorLinear(m.in_features, m.out_features, m.bias is not None).to(m.weight.dtype)
                    sparse.load_state_dict(m.state_dict())
                else:
                    any_sparse = True
                chosen.append((name, sparse))
            else:
                chosen.append((name, copy.deepcopy(m)))
        out[f"to_feature_major{r}"] = ToFeatureMajor()
        out.update(chosen)
        out[f"from_feature_major{r}"] = FromFeatureMajor()
        pos = last + 1
    for name, m in list(batch_major.named_children())[pos:]:
        out[name] = m
    return (nn.Sequential(out).eval() if any_sparse else None), rows


@torch.no_grad()
def sparsify(model: nn.Module, example: Tensor, num_threads: int | None = None, repeats: int = 15,
             margin: float = 0.95, force: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of ``model`` (eval mode) whose Linear layers are :class:`SparseLinear` where measured faster.

    ``example`` is a batch of the size the model will serve; ``num_threads`` the torch threads to measure with
    (default: the current setting). ``force="sparse"``/``"dense"`` skips the measurements (tests). For an
    ``nn.Sequential``, runs of Linear layers are also tried in ``[features, batch]`` layout (one transposed copy
    in, a view out; CSR products are faster there), each layer chosen again in that layout; the whole model in that
    layout is kept only if it measures faster than the per-layer batch-major choice (with ``force``: always). The
    report lists per Linear layer its layout, density, the two median times, their ratio and the choice.
    """
    base = copy.deepcopy(model).eval()
    inputs = _linear_inputs(base, example)
    with threads(num_threads):
        chosen: nn.Module = copy.deepcopy(base)
        rows = []
        for name, linear in [(n, m) for n, m in base.named_modules() if type(m) is nn.Linear]:
            sparse, row = _choose(linear, name, inputs.get(name), False, repeats, margin, force)
            rows.append(row)
            if sparse is not None:
                set_submodule(chosen, name, sparse)
        report: dict[str, Any] = {"batch_size": int(example.shape[0]), "threads": num_threads or torch.get_num_threads(),
                                  "margin": margin, "layout": "batch-major", "layers": rows}
        if isinstance(base, nn.Sequential):
            fm, fm_rows = _feature_major(base, chosen, inputs, repeats, margin, force)
            if fm is not None:
                keep = force is not None
                if not keep:
                    bm_s, fm_s = time_pair(lambda: chosen(example), lambda: fm(example), repeats)
                    report["whole_model_s"] = {"batch-major": bm_s, "feature-major": fm_s}
                    keep = fm_s < bm_s
                if keep:
                    names = {r["layer"] for r in fm_rows}
                    report.update(layout="feature-major", layers=fm_rows + [r for r in rows if r["layer"] not in names])
                    chosen = fm
    return chosen, report


def linear_names(model: nn.Module) -> list[str]:
    """Names of the :class:`SparseLinear` modules of ``model``."""
    return [n for n, m in model.named_modules() if isinstance(m, SparseLinear)]


def sparse_state(model: nn.Module) -> Mapping[str, Tensor]:
    """``model.state_dict()`` (SparseLinear stores plain tensors: safetensors can hold it)."""
    return {k: v for k, v in model.state_dict().items() if isinstance(v, Tensor)}
