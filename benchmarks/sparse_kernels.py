"""Which CPU sparse kernel of torch is fastest for the default ticket's Linear layers (docs/performance.md, "Export").

    .venv/bin/python benchmarks/sparse_kernels.py [--batch_sizes 1 256] [--threads 1] [--rounds 21] [--json PATH]

For each Linear layer of the default 8.7% LeNet-300-100 ticket (``benchmarks/export_speed.py``), every candidate
computes ``y = x Wᵀ + b`` (or its transpose, ``W xᵀ + b``, in the feature-major layout) and is checked against dense
within 1e-5; then the candidates and dense are timed in one process, in rounds whose order rotates, each call block
lasting about 2 ms; reported: per candidate the median over rounds of dense time / candidate time, and the load
average before and after. Candidates (all ship with torch; the names are those in the output):

* ``csr_t``        ``addmm(b, W_csr, xᵀ)ᵀ`` on the transposed view of ``x`` (batch-major ``SparseLinear``)
* ``csr_t_i32``    the same with int32 CSR indices (MKL's LP64 index type: no conversion per call)
* ``csr_fm``       ``addmm(b, W_csr, xᵀ)`` with ``xᵀ`` contiguous (feature-major ``SparseLinear``)
* ``csr_fm_i32``   the same with int32 CSR indices (MKL's LP64 index type: no conversion per call)
* ``csr_fm_mm``    ``torch.sparse.mm(W_csr, xᵀ)`` plus the bias (no addmm)
* ``dense_at_csc`` ``x @ Wᵀ`` with ``Wᵀ`` as a CSR matrix (dense × sparse)
* ``coo_fm``       ``torch.sparse.addmm(b, W_coo, xᵀ)`` (COO, torch's own kernel)
* ``bsr4_fm``      ``W`` as BSR with 4×4 blocks (unstructured masks fill few entries of a block)
* ``scipy_fm``     scipy's CSR × dense (``scipy.sparse.csr_array @ xᵀ``, on numpy views) plus the bias
* ``numba_fm``     only when ``numba`` is installed (``pip install numba``; not a dependency): a CSR × dense loop of
                   our own, compiled by numba (``fastmath``), that adds ``w_ij · xᵀ[j, :]`` into each output row;
                   the inner loop over the batch vectorizes. It shows what a kernel outside torch can reach here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

warnings.filterwarnings("ignore", message=".*[Ss]parse.*")


def _numba_kernel() -> Callable[..., object] | None:
    """``out[i, :] = b[i] + Σ_k val[k] · x[col[k], :]`` over row i's nonzeros, compiled by numba; None without it."""
    try:
        import numba
    except ImportError:
        return None

    @numba.njit(fastmath=True, cache=False)
    def csr_times_dense(crow, col, val, bias, x, out):  # type: ignore[no-untyped-def]
        for i in range(crow.shape[0] - 1):
            row = out[i]
            row[:] = bias[i]
            for k in range(crow[i], crow[i + 1]):
                v, src = val[k], x[col[k]]
                for t in range(x.shape[1]):
                    row[t] += v * src[t]
        return out

    return csr_times_dense


NUMBA_KERNEL = _numba_kernel()


def candidates(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    """Name -> a call returning ``x Wᵀ + b`` in batch-major ``[batch, out]`` or feature-major ``[out, batch]``."""
    csr = w.to_sparse_csr()
    csr32 = torch.sparse_csr_tensor(csr.crow_indices().int(), csr.col_indices().int(), csr.values(), w.shape)
    csr_t_of_wt = w.t().contiguous().to_sparse_csr()
    coo = w.to_sparse().coalesce()
    xt = x.t().contiguous()
    b1 = b.unsqueeze(1)
    out: dict[str, Callable[[], torch.Tensor]] = {
        "dense": lambda: F.linear(x, w, b),
        "dense_fm": lambda: torch.addmm(b1, w, xt),
        "csr_t": lambda: torch.addmm(b1, csr, x.t()).t(),
        "csr_t_i32": lambda: torch.addmm(b1, csr32, x.t()).t(),
        "csr_fm": lambda: torch.addmm(b1, csr, xt),
        "csr_fm_i32": lambda: torch.addmm(b1, csr32, xt),
        "csr_fm_mm": lambda: torch.sparse.mm(csr, xt).add_(b1),
        "dense_at_csc": lambda: torch.addmm(b, x, csr_t_of_wt),
        "coo_fm": lambda: torch.sparse.addmm(b1, coo, xt),
    }
    if w.shape[0] % 4 == 0 and w.shape[1] % 4 == 0:
        bsr = w.to_sparse_bsr((4, 4))
        out["bsr4_fm"] = lambda: torch.addmm(b1, bsr, xt)
    import scipy.sparse

    sp, xtn, b1n = scipy.sparse.csr_array(w.numpy()), xt.numpy(), b1.numpy()
    out["scipy_fm"] = lambda: torch.from_numpy(sp @ xtn + b1n)
    if NUMBA_KERNEL is not None:
        kernel = NUMBA_KERNEL
        parts = (csr32.crow_indices().numpy(), csr32.col_indices().numpy(), csr32.values().numpy())
        y = torch.empty(w.shape[0], x.shape[0])
        out["numba_fm"] = lambda: torch.from_numpy(kernel(*parts, b.numpy(), xtn, y.numpy()))
    return out


def _block(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


@torch.no_grad()
def probe(w: torch.Tensor, b: torch.Tensor, batch: int, rounds: int) -> dict[str, float]:
    x = torch.randn(batch, w.shape[1], generator=torch.Generator().manual_seed(0))
    fns = candidates(w, b, x)
    ref = fns["dense"]()
    ok = {}
    for name, fn in list(fns.items()):
        try:
            y = fn()
        except (RuntimeError, NotImplementedError) as err:  # a layout this build cannot multiply
            print(f"  {name}: unsupported ({str(err).splitlines()[0][:80]})", file=sys.stderr)
            continue
        y = y.to_dense() if y.layout != torch.strided else y
        y = y.t() if y.shape != ref.shape else y
        if not torch.allclose(y, ref, atol=1e-5, rtol=1e-5):
            print(f"  {name}: wrong result (max diff {float((y - ref).abs().max()):.2e})", file=sys.stderr)
            continue
        ok[name] = fn
    calls = {n: max(1, int(2e-3 / max(_block(f, 3), 1e-7))) for n, f in ok.items()}
    names = list(ok)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds + 2):
        for n in names[r % len(names):] + names[:r % len(names)]:
            t = _block(ok[n], calls[n])
            if r >= 2:
                times[n].append(t)
    return {n: statistics.median(d / s for d, s in zip(times["dense"], times[n])) for n in names}


def main(argv: list[str] | None = None) -> int:
    from export_speed import default_ticket  # noqa: PLC0415  (benchmarks/ is on the path)

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    model, mask = default_ticket()
    layers = {n: (m.weight.detach() * mask[f"net.{n}.weight"], m.bias.detach())
              for n, m in model.net.named_children() if isinstance(m, torch.nn.Linear)}
    load_before = os.getloadavg()
    results: dict[str, dict[str, float]] = {}
    for n_threads in args.threads:
        torch.set_num_threads(n_threads or os.cpu_count() or 1)
        for batch in args.batch_sizes:
            for name, (w, b) in layers.items():
                key = f"{name} batch {batch} threads {torch.get_num_threads()}"
                results[key] = probe(w, b, batch, args.rounds)
                print(key + ": " + ", ".join(f"{k} {v:.2f}×" for k, v in results[key].items()))
    load_after = os.getloadavg()
    print(f"torch {torch.__version__}, MKL {torch.backends.mkl.is_available()}; load average {load_before} before, "
          f"{load_after} after (speedup = median over rounds of dense time / kernel time)")
    if args.json:
        args.json.write_text(json.dumps({"load_before": load_before, "load_after": load_after, "torch": torch.__version__,
                                         "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
