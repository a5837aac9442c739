"""Inference speed of an exported ticket: dense vs masked vs compact vs sparse, side by side (docs/performance.md,
"Export").

    .venv/bin/python benchmarks/export_speed.py [--structured] [--rounds 15] [--out benchmarks/results_export]
    .venv/bin/python benchmarks/export_speed.py --model resnet20 --structured --out benchmarks/results_export_resnet20

The ticket: LeNet-300-100 (784-300-100-10) under the default recipe's mask after 11 levels (recipes/
lenet300_fashion_mnist.yaml: 20% per level, the output layer 10%: fc1 and fc2 8.59% alive, fc3 31.4%, 8.7% in all),
layerwise magnitude pruning of Glorot weights (no training, so no pixel is dead and compaction removes little; a
trained IMP mask has the same per-layer densities). Variants, on the same random batch:

* dense     the network (``model.net``) with all its weights;
* masked    the same network with the pruned weights zero (dense kernels: the cost of a ticket as trained);
* compact   :func:`lightning_lottery.export.compact` of the masked network (an ``nn.Sequential`` of layers);
* fused     compact with its Linear(+ReLU) runs as one ``LinearStack`` (what ``export --format compact`` writes);
* sparse    compact, then each Linear layer as ``torch.sparse_csr`` where it measured faster, chosen at the row's
            batch size and thread count (so the batch-1 row may keep every layer dense), in the faster of the two
            layouts (``[batch, features]`` or ``[features, batch]``, see ``lightning_lottery.export.sparse``).

``--model resnet20``: ResNet-20 (CIFAR-10, 3×32×32, default init) pruned by magnitude to 8.7% (``--structured``:
25% of the filters of every conv, L1 norms, ``structure: units``); variants dense, masked and compact
(:func:`lightning_lottery.export.compact_resnet`: each block's internal channels; the residual channels stay).

Batch 1 and 256, 1 thread and all cores; each setting runs rounds that time every variant once (about 20 ms of calls
each), the order rotating; medians over rounds after 3 warm-up rounds; ratios to dense are medians over rounds of
the per-round ratio. The machine and the load average before and after go into the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lightning_lottery.export import compact, sparsify  # noqa: E402
from lightning_lottery.export.bench import machine, measure, table  # noqa: E402
from lightning_lottery.export.chain import masked_copy, plain_network  # noqa: E402
from lightning_lottery.export.layers import fuse_linear_relu  # noqa: E402
from lightning_lottery.masks import prunable_parameters, remaining  # noqa: E402
from lightning_lottery.pruning import prune_to  # noqa: E402

TARGETS = {"speedup_batch256": 3.0, "speedup_batch1_min": 1.0}


def default_ticket(levels: int = 11, structured: bool = False) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The default recipe's 8.7% ticket, or with ``structured`` a ticket at 25% of the hidden units (L1 norms of
    the fan-in, ``structure: units``; the outputs keep all: 784-75-25-10, 23% of the weights)."""
    from lightning_lottery.models import LeNet300100

    torch.manual_seed(0)
    model = LeNet300100().eval()
    params = prunable_parameters(model)
    if structured:
        ones = {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}
        return model, prune_to({n: p.detach().abs() for n, p in params.items()}, ones, 0.25, structure="units")
    targets = {"net.fc1.weight": 0.8 ** levels, "net.fc2.weight": 0.8 ** levels, "net.fc3.weight": 0.9 ** levels}
    ones = {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}
    mask = prune_to({n: p.detach().abs() for n, p in params.items()}, ones, 1.0, targets=targets)
    return model, mask


def resnet_ticket(structured: bool = False) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """ResNet-20 (default init) pruned by magnitude to 8.7% of its weights, or to 25% of its units."""
    from lightning_lottery.models import ResNet20

    torch.manual_seed(0)
    model = ResNet20().eval()
    params = prunable_parameters(model)
    ones = {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}
    scores = {n: p.detach().abs() for n, p in params.items()}
    return model, prune_to(scores, ones, 0.25 if structured else 0.087, structure="units" if structured else
                           "unstructured")


def resnet_main(args: argparse.Namespace) -> int:
    from lightning_lottery.export import compact_resnet

    model, mask = resnet_ticket(args.structured)
    shape = (3, 32, 32)
    small, report = compact_resnet(model, mask, shape)
    print(f"ticket: {100 * remaining(mask):.2f}% remaining; compaction removed {report['channels_removed']} internal "
          f"channels; parameters {report['parameters_before']:,} -> {report['parameters_after']:,}", file=sys.stderr)
    before = machine()
    rows = measure({"dense": plain_network(model), "masked": plain_network(masked_copy(model, mask)),
                    "compact": small}, shape, args.batch_sizes, args.threads,
                   rounds=args.rounds)
    after = machine()
    print(table(rows))
    print(f"machine: {before['cpu_model']}, {before['cpu_affinity']} cores, torch {before['torch']}, "
          f"MKL {before['mkl']}; load average {before['load_average']} before, {after['load_average']} after")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"machine": before, "load_after": after["load_average"],
                                                       "compaction": report, "rows": rows}, indent=2) + "\n")
    (args.out / "results.md").write_text(table(rows) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 0], help="0: all cores")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results_export")
    parser.add_argument("--structured", action="store_true", help="the structured ticket at 25%% of the units")
    parser.add_argument("--model", choices=["lenet", "resnet20"], default="lenet")
    args = parser.parse_args(argv)
    if args.model == "resnet20":
        return resnet_main(args)
    model, mask = default_ticket(structured=args.structured)
    shape = (784,)
    masked = plain_network(masked_copy(model, mask))  # model.net: no LightningModule call in any variant
    small, report = compact(model, mask, shape)
    print(f"ticket: {100 * remaining(mask):.2f}% remaining; compaction removed {report['units_removed']} units, "
          f"inputs kept {report['inputs_kept']}/{report['inputs']}", file=sys.stderr)
    fused = fuse_linear_relu(small)
    before = machine()
    rows, choices = [], {}
    for n_threads in args.threads:
        count = n_threads or os.cpu_count() or 1
        sparse = {}
        for batch in args.batch_sizes:
            sparse[batch], rep = sparsify(small, torch.randn(batch, *shape), num_threads=count)
            choices[f"batch {batch}, {count} threads"] = {"layout": rep["layout"], **{
                r["layer"]: (r["choice"], r["ratio"]) for r in rep["layers"]}}
        rows += measure({"dense": plain_network(model), "masked": masked, "compact": small, "fused": fused,
                         "sparse": sparse}, shape,
                        args.batch_sizes, (count,), rounds=args.rounds)
    after = machine()
    print(table(rows))
    print("per-layer choices (sparse/dense time):", json.dumps(choices))
    print(f"machine: {before['cpu_model']}, {before['cpu_affinity']} cores, torch {before['torch']}, "
          f"MKL {before['mkl']}; load average {before['load_average']} before, {after['load_average']} after")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"machine": before, "load_after": after["load_average"],
                                                       "compaction": report, "choices": choices, "rows": rows,
                                                       "targets": TARGETS}, indent=2) + "\n")
    (args.out / "results.md").write_text(table(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
