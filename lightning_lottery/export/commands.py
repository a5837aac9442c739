"""``lightning-lottery export`` and ``lightning-lottery benchmark``: parsers, sources and runners.

    lightning-lottery export TICKET_OR_RUN_DIR --format compact|sparse|2:4 [--output DIR] [--state PATH]
    lightning-lottery benchmark EXPORT_DIR_OR_EXPERIMENT_DIR [--batch_sizes [1,256]] [--threads [1,0]]

``benchmark`` records its measurements in the experiment the ticket belongs to (``measurements.json``,
:mod:`lightning_lottery.measured`); the report shows them as "measured speedup". Given an experiment directory it
exports and measures every finished level of the main line (``--replicate``, ``--format``: ``auto`` is compact for
``structure: units`` and sparse otherwise, the sparse layers chosen at each batch size and thread count).

Which weights are exported: a ticket file holds θk ⊙ m, the weights training *starts* from, so exporting a ticket
gives the untrained small network. A run directory exports its ``final_state.pt`` (the trained weights, under the
run's mask) when the run kept one, else its ticket (said in the output). ``--state PATH`` exports any trained state
under the ticket's mask: a ``.pt`` with a ``model`` key (as ``RewindState`` saves it) or a safetensors
``state_dict``. The model class comes from the ``experiment.json`` above the source (or ``--experiment DIR``).
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import torch
from jsonargparse import ArgumentParser, Namespace
from torch import Tensor, nn

from lightning_lottery.export.chain import default_input_shape, masked_copy, model_chain, plain_network
from lightning_lottery.export.compact import compact
from lightning_lottery.export.io import INFO_FILE, load_export, read_export_info, save_export
from lightning_lottery.export.layers import UnsupportedModelError, fuse_linear_relu
from lightning_lottery.export.resnet import compact_resnet, describe_resnet_report, is_cifar_resnet
from lightning_lottery.export.semistructured import project_model, require_cuda_2_4, to_semi_structured
from lightning_lottery.export.sparse import sparsify
from lightning_lottery.masks import MaskError, read_safetensors
from lightning_lottery.ticket import Ticket

__all__ = ["add_export_commands", "load_source", "run_benchmark", "run_export"]

_STRICT: dict[str, Any] = {"exit_on_error": False, "allow_abbrev": False}


def add_export_commands(subcommands: Any) -> None:
    """Add ``export`` and ``benchmark`` to a jsonargparse subcommands action."""
    export = ArgumentParser(description="Export a ticket as a smaller dense model (compact) or with CSR Linear layers "
                                        "where they measure faster (sparse).", **_STRICT)
    export.add_argument("source", type=str, help="ticket.safetensors or a run directory (holding one)")
    export.add_argument("--format", type=str, default="compact", choices=["compact", "sparse", "2:4"],
                        help="2:4: the mask projected to 2:4, Linear weights semi-structured (needs CUDA >= 8.0)")
    export.add_argument("--output", type=Optional[str], default=None, help="default: SOURCE_DIR/export_FORMAT")
    export.add_argument("--state", type=Optional[str], default=None,
                        help="trained weights to export under the ticket's mask: .pt with a 'model' key, or "
                             "a safetensors state_dict (default: the run's final_state.pt, else the ticket's θk ⊙ m)")
    export.add_argument("--experiment", type=Optional[str], default=None,
                        help="the experiment directory whose experiment.json names the model (default: found above "
                             "SOURCE)")
    export.add_argument("--input_shape", type=Optional[list[int]], default=None,
                        help="one input's shape, e.g. [1,28,28] (default: from the reference model's settings)")
    export.add_argument("--batch_size", type=int, default=256, help="sparse: the batch size the layers are timed at")
    export.add_argument("--threads", type=int, default=0, help="sparse: torch threads to time with (0: all cores)")
    export.add_argument("--onnx", type=Optional[bool], default=None,
                        help="also write model.onnx (default: when the onnx package is installed; not for sparse)")
    subcommands.add_subcommand("export", export, help="a ticket as a smaller or sparse model")
    bench = ArgumentParser(description="Latency and throughput of an exported model against the dense and masked "
                                       "networks it came from (medians of alternating rounds; load recorded).",
                           **_STRICT)
    bench.add_argument("exported", type=str, help="a directory written by lightning-lottery export, or an "
                                                  "experiment directory (every level of its main line)")
    bench.add_argument("--batch_sizes", type=list[int], default=[1, 256])
    bench.add_argument("--threads", type=list[int], default=[1, 0], help="torch threads (0: all cores)")
    bench.add_argument("--rounds", type=int, default=15)
    bench.add_argument("--json", type=Optional[str], default=None, help="also write the rows and the machine here")
    bench.add_argument("--format", type=str, default="auto", choices=["auto", "compact", "sparse"],
                       help="experiment directory: the format to export each level as")
    bench.add_argument("--replicate", type=int, default=0, help="experiment directory: the replicate to measure")
    bench.add_argument("--branch", type=Optional[str], default=None,
                       help="experiment directory: the branch to measure (default: the main line)")
    subcommands.add_subcommand("benchmark", bench, help="measure an exported model against dense and masked")


def _find_experiment(start: Path) -> Path:
    for folder in [start, *start.parents]:
        if (folder / "experiment.json").is_file():
            return folder / "experiment.json"
    raise FileNotFoundError(f"no experiment.json above {start}: pass --experiment DIR (the experiment directory)")


def build_model(experiment_file: Path) -> nn.Module:
    """The model an ``experiment.json`` records (its ``class_path`` and ``init_args``)."""
    config = json.loads(Path(experiment_file).read_text()).get("config") or {}
    spec = config.get("model") or {}
    if "class_path" not in spec:
        raise MaskError(f"{experiment_file} records no model class_path")
    module_name, _, cls_name = spec["class_path"].rpartition(".")
    if not module_name:
        module_name, cls_name = "lightning_lottery.models", spec["class_path"]
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(**(spec.get("init_args") or {}))


def _read_state(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        tensors, _ = read_safetensors(path)
        return {k[6:] if k.startswith("state/") else k: v for k, v in tensors.items() if not k.startswith("mask/")}
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]
    if not isinstance(state, Mapping):
        raise MaskError(f"{path}: not a state_dict nor a file with a 'model' state_dict")
    return {k: v for k, v in state.items() if isinstance(v, Tensor)}


def load_source(source: str | os.PathLike, state: str | os.PathLike | None = None,
                experiment: str | os.PathLike | None = None) -> tuple[nn.Module, dict[str, Tensor], str]:
    """``(model with the weights to export, mask, which weights)`` for a ticket file or run directory."""
    path = Path(source)
    ticket_file = path / "ticket.safetensors" if path.is_dir() else path
    if not ticket_file.is_file():
        raise MaskError(f"{source}: no ticket (expected a ticket.safetensors or a run directory holding one)")
    ticket = Ticket.load(ticket_file)
    model = build_model(Path(experiment) / "experiment.json" if experiment else _find_experiment(ticket_file.parent))
    weights, which = ticket.state, f"starting weights θk ⊙ m of {ticket_file} (untrained)"
    if ticket.metadata.get("trained") == "true":  # written by lightning-lottery retrain --save_trained
        which = f"trained weights of {ticket_file}"
    trained = Path(state) if state else (path / "final_state.pt" if path.is_dir() else None)
    if trained is not None and (state or trained.is_file()):
        weights, which = _read_state(trained), f"trained weights of {trained}"
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or [k for k in missing if k in dict(model.named_parameters())]:
        raise MaskError(f"weights do not fit {type(model).__name__}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model, ticket.mask, which


def export_model(model: nn.Module, mask: Mapping[str, Tensor], fmt: str, input_shape: tuple[int, ...] | None,
                 batch_size: int = 256, num_threads: int = 0) -> tuple[nn.Module, dict[str, Any], tuple[int, ...]]:
    """``(exported model, report, input shape)``; ``fmt`` is ``"compact"`` or ``"sparse"`` (sparse compacts first
    when the model is a chain, then times its Linear layers at ``batch_size``)."""
    shape = tuple(input_shape) if input_shape else default_input_shape(model)
    if shape is None:
        raise UnsupportedModelError(f"pass --input_shape: one input's shape for {type(model).__name__} is unknown")
    report: dict[str, Any] = {"format": fmt}
    if fmt == "2:4":  # the GPU first: one clear error before any work
        require_cuda_2_4()
        projected, _, report["projection"] = project_model(model, mask)
        _, report["semi_structured"] = to_semi_structured(plain_network(projected))
        return plain_network(projected), report, shape
    if fmt == "compact" and is_cifar_resnet(model):  # ResNet-20: each block's internal channels
        small, report["compaction"] = compact_resnet(model, mask, shape)
        return small, report, shape
    try:
        model_chain(model)
        chain = True
    except UnsupportedModelError as err:
        if fmt == "compact":
            raise
        chain, report["compaction"] = False, f"skipped: {err}"
    out: nn.Module = masked_copy(model, mask)
    if chain:
        out, report["compaction"] = compact(model, mask, shape)
        if fmt == "compact" and isinstance(out, nn.Sequential):  # runs of Linear+ReLU as one module (batch 1)
            out = fuse_linear_relu(out)
    if fmt == "sparse":
        example = torch.randn(batch_size, *shape)
        out, report["sparse"] = sparsify(out, example, num_threads or os.cpu_count())
    return out, report, shape


def run_export(parser: ArgumentParser, cfg: Namespace) -> int:
    model, mask, which = load_source(cfg.source, cfg.state, cfg.experiment)
    out, report, shape = export_model(model, mask, cfg.format, cfg.input_shape, cfg.batch_size, cfg.threads)
    src = Path(cfg.source)
    target = Path(cfg.output) if cfg.output else (src if src.is_dir() else src.parent) / f"export_{cfg.format}"
    source = {"ticket": str(src / "ticket.safetensors" if src.is_dir() else src), "weights": which,
              "state": cfg.state, "experiment": cfg.experiment}
    doc = save_export(out, target, input_shape=shape, source=model, onnx=cfg.onnx,
                      info={"source": source, "report": report})
    print(f"exported ({cfg.format}, {which}) to {target / INFO_FILE}" + (" and model.onnx" if doc.get("onnx") == "model.onnx" else ""))
    print(describe_report(report))
    return 0


def describe_report(report: Mapping[str, Any]) -> str:
    """What compaction removed and which Linear layers became sparse, one line per layer."""
    lines = []
    comp = report.get("compaction")
    if isinstance(comp, str):
        lines.append(f"compaction {comp}")
    elif comp and comp.get("kind") == "resnet":
        lines += describe_resnet_report(comp)
    elif comp:
        lines.append(f"inputs kept {comp['inputs_kept']}/{comp['inputs']}; units removed {comp['units_removed']}; "
                     f"parameters {comp['parameters_before']:,} -> {comp['parameters_after']:,}")
        for r in comp["layers"]:
            lines.append(f"  {r['layer']}: {r['units_kept']}/{r['units']} units kept ({r['fan_out_pruned']} with "
                         f"all fan-out pruned, {r['fan_in_pruned_folded']} constant, folded into the next bias)")
    proj = report.get("projection")
    if proj:
        lines.append(f"2:4 projection: alive weights {proj['alive_before']:,} -> {proj['alive_after']:,}"
                     + (" (the mask was 2:4 already)" if proj["mask_was_2_4"] else " (the mask was not 2:4: outputs "
                        "differ from the ticket's; search with lottery.mask_type: 2:4)"))
    for r in report.get("semi_structured") or []:
        lines.append(f"  {r['layer']}: {r['choice']}" + (f" ({r['why']})" if r["why"] else ""))
    for r in (report.get("sparse") or {}).get("layers", []):
        timing = f", sparse/dense time {r['ratio']:.2f}" if r.get("ratio") is not None else ""
        lines.append(f"  {r['layer']}: density {r['density']:.3f} -> {r['choice']}{timing}")
    return "\n".join(lines)


def run_benchmark(parser: ArgumentParser, cfg: Namespace) -> int:
    from lightning_lottery.export.bench import machine, measure, table

    if not (Path(cfg.exported) / INFO_FILE).is_file() and (Path(cfg.exported) / "experiment.json").is_file():
        return benchmark_experiment(Path(cfg.exported), cfg)
    info = read_export_info(cfg.exported)
    if info["report"]["format"] == "2:4":
        raise UnsupportedModelError("benchmark times CPU variants; a 2:4 export runs on a GPU: load it with "
                                    "load_export and lightning_lottery.export.semistructured.to_semi_structured")
    exported = load_export(cfg.exported)
    source = info.get("source") or {}
    model, mask, _ = load_source(source["ticket"], source.get("state"), source.get("experiment"))
    variants = {"dense": plain_network(model.eval()), "masked": plain_network(masked_copy(model, mask)),
                info["report"]["format"]: exported}
    before = machine()
    rows = measure(variants, info["input_shape"], cfg.batch_sizes, cfg.threads, rounds=cfg.rounds)
    after = machine()
    print(table(rows))
    chosen = info["report"].get("sparse")
    if chosen:
        print(f"sparse layers were chosen at batch {chosen['batch_size']}, {chosen['threads']} threads; rows at other "
              "settings use that choice (export again with --batch_size/--threads for them)")
    print(f"machine: {before['cpu_model']}, {before['cpu_affinity']} cores, torch {before['torch']}; load average "
          f"{before['load_average']} before, {after['load_average']} after")
    if cfg.json:
        Path(cfg.json).write_text(json.dumps({"machine": before, "load_after": after["load_average"],
                                              "rows": rows}, indent=2) + "\n")
    _record(Path(source["ticket"]).parent, Path(source["experiment"]) if source.get("experiment") else None,
            info["report"]["format"], rows, {**before, "load_after": after["load_average"]})
    return 0


def _record(run_dir: Path, experiment: Path | None, fmt: str, rows: Any, machine: Mapping[str, Any]) -> None:
    """Record ``rows`` in the experiment of ``run_dir`` when it is one of its runs (else nothing)."""
    from lightning_lottery import measured

    try:
        root = experiment if experiment is not None else _find_experiment(run_dir).parent
    except FileNotFoundError:
        return
    run = measured.run_of(run_dir, root)
    if run is not None:
        measured.record(root, run, fmt, rows, machine)
        print(f"recorded in {root / measured.FILE} ({run.branch}, level {run.level}, replicate {run.replicate})")


def benchmark_experiment(root: Path, cfg: Namespace) -> int:
    """Export and measure every finished level (≥ 1) of one branch and replicate of the experiment ``root``."""
    from lightning_lottery.branches import main_branch_of
    from lightning_lottery.export.bench import machine, measure, table
    from lightning_lottery.store import ExperimentStore

    store = ExperimentStore(root)
    lottery = ((store.read_experiment() or {}).get("config") or {}).get("lottery") or {}
    fmt = cfg.format if cfg.format != "auto" else ("compact" if lottery.get("structure") == "units" else "sparse")
    finished = store.finished_runs()
    branch = cfg.branch or main_branch_of({r.branch for r in finished}, lottery.get("rewind"))
    runs = sorted((r for r in finished if r.branch == branch and r.replicate == cfg.replicate and r.level >= 1),
                  key=lambda r: r.level)
    if not runs:
        raise MaskError(f"{root}: no finished run of branch {branch!r}, replicate {cfg.replicate}, past level 0")
    for run in runs:
        model, mask, _ = load_source(store.run_dir(run), experiment=root)
        before, rows = machine(), []
        for n_threads in cfg.threads:
            count = n_threads or os.cpu_count() or 1
            exported: dict[int, nn.Module] = {}
            for batch in cfg.batch_sizes:
                exported[batch], _, shape = export_model(model, mask, fmt, None, batch, count)
            variants = {"dense": plain_network(model.eval()), "masked": plain_network(masked_copy(model, mask)),
                        fmt: exported}
            rows += measure(variants, shape, cfg.batch_sizes, (count,), rounds=cfg.rounds)
        after = machine()
        print(f"{branch}, level {run.level}, replicate {run.replicate} ({fmt}):\n{table(rows)}")
        _record(store.run_dir(run), root, fmt, rows, {**before, "load_after": after["load_average"]})
    print(f"machine: {before['cpu_model']}, {before['cpu_affinity']} cores, torch {before['torch']}; load average "
          f"{after['load_average']} at the end")
    return 0
