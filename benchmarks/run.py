"""Performance measurements of lightning-lottery (issue 6): one command, a JSON file and a markdown table.

    .venv/bin/python benchmarks/run.py [--quick] [--out benchmarks/results] [--threads 1] [--device auto]

Writes ``OUT/results.json`` (every number, the settings and the machine) and ``OUT/results.md`` (the tables of
docs/performance.md). What is measured:

1. steps      Time of one training step (on_train_batch_start → on_train_batch_end, all callbacks included) of
              LeNet-300-100 and Conv-2, batch 60: dense Lightning (no callback), our ``LotteryTicket`` with a
              random 50%-alive mask, and Lightning's ``ModelPruning`` holding the same mask through
              ``torch.nn.utils.prune`` (forward pre-hooks, ``weight_orig * weight_mask``). For LeNet also a bare
              PyTorch loop (same network, optimizer, data) and two floors of any callback: dense Lightning plus one
              callback that does nothing (Lightning's per-hook dispatch) and plus one that only masks the gradients
              (that and the multiply LotteryTicket does per step). Every variant runs in its own thread, but only one
              thread works at a time: they take turns in blocks of steps (A, B, C, A, B, C, ...), so machine noise
              hits all alike. Medians over the timed blocks, after warm-up blocks.
2. memory     Bytes added per prunable weight: by inspecting the tensors each method keeps (and where it keeps
              them), and on CUDA from ``torch.cuda.memory_allocated`` during training, relative to the dense fit.
3. level      Wall time of one IMP level of ``PruningScheduler`` (level 1: fit + tests + pruning + writes, W&B off,
              validation every 100 steps) vs the same Lightning fit without the plugin.
4. prune      Time and peak RSS added by one global magnitude-pruning step (``pruning.prune``, scope="global")
              over 1M, 10M and 100M weights in 5 layers; one subprocess per size.
5. transition Level n → n+1 in the scheduler: from ``trainer.fit`` returning at level n to the first
              ``on_train_batch_start`` at level n+1, with a breakdown (same scheduler run as 3).

``--quick`` shrinks everything (fewer steps, sizes up to 10M) to finish in about two minutes on 2 CPU cores;
the full run takes about 10-15 minutes there. ``--only steps,prune`` runs a subset. Data are in-memory random
tensors (``TensorLoader``); nothing is downloaded, W&B is disabled.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import gc
import json
import logging
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils import prune as torch_prune  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

ITEMS = ("steps", "memory", "level", "prune")  # "level" also measures the transitions (5)
TARGETS = {
    "step_lenet": 1.05,  # × dense Lightning step
    "step_conv2": 1.02,
    "bytes_per_weight": 1.0,  # on the device
    "level": 1.05,  # × plain fit
    "lightning_vs_bare": 1.35,
    "prune_100m_s": 2.0,
    "transition_s": 1.0,  # plus data set-up
}


# ============================================================================================ small helpers
def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def quiet_lightning() -> None:
    """Silence Lightning's info messages and the warnings of short benchmark fits."""
    import lightning.pytorch  # noqa: F401 - configures its loggers on import; override after

    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Median, mean, p10, p90, min and count of ``values`` (seconds kept as seconds)."""
    xs = sorted(values)
    if not xs:
        return {"n": 0}

    def q(p: float) -> float:
        return xs[min(len(xs) - 1, max(0, round(p * (len(xs) - 1))))]

    return {"n": len(xs), "median": statistics.median(xs), "mean": statistics.fmean(xs), "p10": q(0.1),
            "p90": q(0.9), "min": xs[0], "max": xs[-1]}


def machine_facts(device: torch.device, threads: int) -> dict[str, Any]:
    import lightning

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except Exception:
        commit = None
    facts: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "memory_total_gib": _mem_total_gib(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "torch_threads": threads,
        "device": str(device),
        "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "git_commit": commit,
    }
    return facts


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


# ========================================================================================== models & data
@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A reference network of the benchmark and the shape of one input."""

    name: str
    input_shape: tuple[int, ...]
    target: float  # allowed step time × dense Lightning

    def build(self) -> Any:
        from lightning_lottery.models import ConvNet, LeNet300100

        if self.name == "lenet300":
            return LeNet300100(in_features=math.prod(self.input_shape))
        c, h, _ = self.input_shape
        return ConvNet("conv2", in_channels=c, image_size=h)


def model_specs(conv_input: str, names: str = "lenet300,conv2") -> list[ModelSpec]:
    """The benchmark's models, those of the comma-separated ``names`` only."""
    conv_shape = (1, 28, 28) if conv_input == "28x28x1" else (3, 32, 32)
    specs = [ModelSpec("lenet300", (784,), TARGETS["step_lenet"]), ModelSpec("conv2", conv_shape, TARGETS["step_conv2"])]
    return [s for s in specs if s.name in names.split(",")]


def random_data(shape: Sequence[int], n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(10, (n,), generator=g)


def half_mask(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random mask with exactly half of every prunable weight alive (floor), on CPU."""
    from lightning_lottery.masks import prunable_parameters

    g = torch.Generator().manual_seed(seed)
    mask = {}
    for name, p in prunable_parameters(model).items():
        flat = torch.zeros(p.numel(), dtype=torch.bool)
        flat[torch.randperm(p.numel(), generator=g)[: p.numel() // 2]] = True
        mask[name] = flat.view(p.shape)
    return mask


def prunable_count(model: nn.Module) -> int:
    from lightning_lottery.masks import prunable_parameters

    return sum(p.numel() for p in prunable_parameters(model).values())


# ==================================================================== torch.nn.utils.prune via ModelPruning
def fixed_mask_method(flat_mask: torch.Tensor) -> type:
    """A ``torch.nn.utils.prune`` method whose mask is ``flat_mask`` (the concatenation, in order, of the masks of
    the pruned parameters), so that ``ModelPruning(use_global_unstructured=True)`` installs exactly our mask."""

    class FixedMask(torch_prune.BasePruningMethod):
        PRUNING_TYPE = "unstructured"

        def __init__(self, amount: float | None = None) -> None:  # ModelPruning passes `amount`; unused
            self.amount = amount

        def compute_mask(self, t: torch.Tensor, default_mask: torch.Tensor) -> torch.Tensor:
            if t.numel() != flat_mask.numel():
                raise RuntimeError("FixedMask is applied once, when every weight is alive")
            return default_mask * flat_mask.to(device=default_mask.device, dtype=default_mask.dtype)

    return FixedMask


def model_pruning_callback(model: nn.Module, mask: Mapping[str, torch.Tensor]) -> Any:
    """Lightning's ``ModelPruning`` holding ``mask`` from the end of the first epoch on (reparametrization kept:
    ``make_pruning_permanent=False``). Its lottery-ticket option (default) keeps a copy of the original layers."""
    from lightning.pytorch.callbacks import ModelPruning

    targets = [(model.get_submodule(name.rsplit(".", 1)[0]), name.rsplit(".", 1)[1]) for name in mask]
    flat = torch.cat([m.reshape(-1) for m in mask.values()])
    return ModelPruning(
        pruning_fn=fixed_mask_method(flat), parameters_to_prune=targets, use_global_unstructured=True,
        amount=0.5, apply_pruning=lambda epoch: epoch == 0, make_pruning_permanent=False,
        use_lottery_ticket_hypothesis=True, verbose=0,
    )


def model_pruning_targets(cb: Any) -> list[tuple[nn.Module, str]]:
    return list(cb._parameters_to_prune)


# ============================================================================== 1. interleaved step timing
class Aborted(RuntimeError):
    """Another variant failed: stop this one too."""


class Baton:
    """Lets exactly one of several threads work at a time; turns rotate in a fixed order."""

    def __init__(self, names: Sequence[str]) -> None:
        self._cond = threading.Condition()
        self._order = list(names)
        self._turn = 0
        self._done: set[str] = set()
        self.error: BaseException | None = None

    def wait(self, name: str) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self.error is not None or self._order[self._turn] == name)
            if self.error is not None:
                raise Aborted(f"{name}: stopped because another variant failed")

    def pass_on(self, name: str, finished: bool = False) -> None:
        with self._cond:
            if finished:
                self._done.add(name)
            if len(self._done) < len(self._order) and self._order[self._turn] == name:
                i = self._turn
                for _ in range(len(self._order)):
                    i = (i + 1) % len(self._order)
                    if self._order[i] not in self._done:
                        break
                self._turn = i
            self._cond.notify_all()

    def fail(self, name: str, err: BaseException) -> None:
        with self._cond:
            if self.error is None:
                self.error = err
            self._done.add(name)
            self._cond.notify_all()


class StepClock:
    """Per-step times of one variant; hands the baton on after every ``block`` steps."""

    def __init__(self, name: str, baton: Baton, block: int, total: int, sync: Callable[[], None]) -> None:
        self.name, self.baton, self.block, self.total, self.sync = name, baton, block, total, sync
        self.steps: list[tuple[int, float]] = []  # (block index, start → end seconds)
        self.iterations: list[tuple[int, float]] = []  # (block index, end → next end seconds, same block)
        self.n = 0
        self._t0 = 0.0
        self._last_end: float | None = None
        self.threads_seen: int | None = None

    def start(self) -> None:
        self.sync()
        self._t0 = time.perf_counter()

    def end(self) -> None:
        self.sync()
        t = time.perf_counter()
        block = self.n // self.block
        self.steps.append((block, t - self._t0))
        if self._last_end is not None:
            self.iterations.append((block, t - self._last_end))
        self._last_end = t
        self.n += 1
        if self.n % self.block == 0 and self.n < self.total:
            self.baton.pass_on(self.name)
            self.baton.wait(self.name)
            self._last_end = None  # the next interval would include the other variants' turns

    def timed(self, warmup_blocks: int, which: str = "steps") -> list[float]:
        return [s for b, s in getattr(self, which) if b >= warmup_blocks]

    def by_block(self, warmup_blocks: int) -> dict[int, list[float]]:
        out: dict[int, list[float]] = {}
        for b, s in self.steps:
            if b >= warmup_blocks:
                out.setdefault(b, []).append(s)
        return out


def clock_callbacks(clock: StepClock) -> tuple[Any, Any]:
    """Two callbacks: the first in the list starts the clock, the last one stops it (hooks run in list order)."""
    from lightning.pytorch.callbacks import Callback

    class ClockStart(Callback):
        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            clock.start()

    class ClockEnd(Callback):
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            clock.threads_seen = torch.get_num_threads()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            clock.end()

    return ClockStart(), ClockEnd()


def bench_trainer(device: torch.device, max_steps: int, callbacks: list[Any], **extra: Any) -> Any:
    import lightning.pytorch as pl

    return pl.Trainer(
        accelerator=device.type, devices=1, max_steps=max_steps, max_epochs=-1, callbacks=callbacks, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        **extra,
    )


def variant_callbacks(variant: str, model: nn.Module, mask: Mapping[str, torch.Tensor]) -> list[Any]:
    from lightning.pytorch.callbacks import Callback

    from lightning_lottery import LotteryTicket
    from lightning_lottery.masks import mask_gradients_

    class NoOp(Callback):  # what Lightning's dispatch of every hook to one more callback costs
        state_key = "NoOp"

    class GradientMask(NoOp):  # that, plus the per-step work LotteryTicket does (one multiply of the gradients)
        def __init__(self) -> None:
            names = dict(model.named_parameters())
            self.params, self.masks = [names[n] for n in mask], list(mask.values())

        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            mask_gradients_(self.params, self.masks)

    if variant == "lottery":
        return [LotteryTicket(mask, rewind_to="0it")]
    if variant == "modelpruning":
        return [model_pruning_callback(model, mask)]
    if variant == "noop":
        return [NoOp()]
    if variant == "gradmask":
        return [GradientMask()]
    return []


VARIANT_LABELS = {
    "dense": "dense Lightning (no callback)",
    "lottery": "LotteryTicket, 50% mask",
    "modelpruning": "ModelPruning (torch prune reparam.), same mask",
    "bare": "bare PyTorch loop, dense",
    "noop": "dense + one callback that does nothing (dispatch floor)",
    "gradmask": "dense + one callback that only masks the gradients",
}


def run_interleaved(spec: ModelSpec, variants: Sequence[str], device: torch.device, threads: int, block: int,
                    rounds: int, warmup_blocks: int, batch: int = 60) -> dict[str, Any]:
    """Train every variant in its own thread, one block of ``block`` steps at a time, in rotation."""
    from lightning_lottery.data import TensorLoader

    total = (warmup_blocks + rounds) * block
    base = spec.build()
    mask = half_mask(base)
    x, y = random_data(spec.input_shape, block * batch)  # one epoch = one block
    baton = Baton(variants)
    sync = synchronizer(device)
    clocks = {v: StepClock(v, baton, block, total, sync) for v in variants}
    state: dict[str, dict[str, Any]] = {v: {} for v in variants}

    def lightning_variant(v: str) -> None:
        model = copy.deepcopy(base)
        cbs = variant_callbacks(v, model, mask)
        start, end = clock_callbacks(clocks[v])
        trainer = bench_trainer(device, total, [start, *cbs, end])
        trainer.fit(model, train_dataloaders=TensorLoader(x, y, batch_size=batch, shuffle=True, seed=0))
        state[v].update(model=model, callbacks=cbs, global_step=trainer.global_step)

    def bare_variant(v: str) -> None:
        model = copy.deepcopy(base).to(device).train()
        opt = model.configure_optimizers()["optimizer"]  # the same optimizer Lightning builds
        clock = clocks[v]
        clock.threads_seen = torch.get_num_threads()
        loader = TensorLoader(x, y, batch_size=batch, shuffle=True, seed=0)
        done = 0
        while done < total:
            for xb, yb in loader:
                xb, yb = xb.to(device), yb.to(device)
                clock.start()
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(xb), yb)
                loss.backward()
                opt.step()
                clock.end()
                done += 1
                if done >= total:
                    break
        state[v].update(model=model, callbacks=[], global_step=done)

    def body(v: str) -> None:
        try:
            torch.set_num_threads(threads)  # per thread: OpenMP settings are thread-local
            baton.wait(v)
            (bare_variant if v == "bare" else lightning_variant)(v)
            baton.pass_on(v, finished=True)
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            state[v]["error"] = err
            baton.fail(v, err)

    workers = [threading.Thread(target=body, args=(v,), name=f"bench-{v}") for v in variants]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for v in variants:
        if "error" in state[v] and not isinstance(state[v]["error"], Aborted):
            raise RuntimeError(f"{spec.name}/{v} failed: {state[v]['error']!r}") from state[v]["error"]

    checks = check_variants(state, mask)
    dense = clocks["dense"]
    dense_blocks = dense.by_block(warmup_blocks)
    dense_median = statistics.median(dense.timed(warmup_blocks))
    out: dict[str, Any] = {"model": spec.name, "input_shape": list(spec.input_shape), "batch": batch,
                           "prunable_weights": prunable_count(base), "block": block, "rounds": rounds,
                           "warmup_blocks": warmup_blocks, "checks": checks, "variants": {}}
    for v in variants:
        clock = clocks[v]
        steps = clock.timed(warmup_blocks)
        blocks = clock.by_block(warmup_blocks)
        per_round = [statistics.median(blocks[b]) / statistics.median(dense_blocks[b])
                     for b in sorted(blocks) if b in dense_blocks]
        out["variants"][v] = {
            "label": VARIANT_LABELS[v],
            "step_s": summarize(steps),
            "iteration_s": summarize(clock.timed(warmup_blocks, "iterations")),
            "ratio_to_dense": statistics.median(steps) / dense_median,
            "per_round_ratio": summarize(per_round),
            "torch_threads_in_thread": clock.threads_seen,
            "steps_run": state[v].get("global_step"),
        }
    return out


def check_variants(state: Mapping[str, Mapping[str, Any]], mask: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """That the masked variants really trained with the mask: pruned weights zero / ModelPruning's buffers equal."""
    checks: dict[str, Any] = {}
    if "lottery" in state:
        model = state["lottery"]["model"]
        params = dict(model.named_parameters())
        checks["lottery_pruned_weights_zero"] = all(
            bool((params[n].detach().cpu()[~m] == 0).all()) for n, m in mask.items())
    if "modelpruning" in state:
        model = state["modelpruning"]["model"]
        ok = True
        for name, m in mask.items():
            module = model.get_submodule(name.rsplit(".", 1)[0])
            attr = name.rsplit(".", 1)[1]
            buf = getattr(module, attr + "_mask", None)
            ok = ok and buf is not None and bool((buf.detach().cpu().bool() == m).all())
        checks["modelpruning_holds_same_mask"] = ok
    return checks


def bench_steps(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    results = []
    for spec in model_specs(args.conv_input, args.models):
        variants = ["dense", "lottery", "modelpruning"] + (["bare", "noop", "gradmask"] if spec.name == "lenet300"
                                                             else [])
        log(f"steps: {spec.name} {tuple(spec.input_shape)}, variants {variants}, "
            f"{args.warmup_blocks}+{args.rounds} blocks of {args.block}")
        t0 = time.perf_counter()
        r = run_interleaved(spec, variants, device, args.threads, args.block, args.rounds, args.warmup_blocks)
        r["target_ratio"] = spec.target
        r["wall_s"] = time.perf_counter() - t0
        results.append(r)
        for v, s in r["variants"].items():
            log(f"  {v:13s} median {s['step_s']['median'] * 1e3:8.3f} ms  × dense {s['ratio_to_dense']:.3f}")
    return results


# ================================================================================= 2. memory per weight
def tensors_in(obj: Any, _seen: set[int] | None = None) -> Iterator[torch.Tensor]:
    """Every tensor reachable from ``obj`` through containers, dataclasses and modules (state dicts)."""
    seen = _seen if _seen is not None else set()
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, nn.Module):
        for t in obj.state_dict(keep_vars=True).values():
            yield from tensors_in(t, seen)
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from tensors_in(v, seen)
    elif isinstance(obj, (list, tuple, set)):
        for v in obj:
            yield from tensors_in(v, seen)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from tensors_in(getattr(obj, f.name), seen)


def tensor_footprint(objs: Iterable[Any]) -> dict[str, Any]:
    """Total bytes of distinct tensors reachable from ``objs``, and the devices they are on."""
    seen: set[tuple[str, int, int]] = set()
    total, devices = 0, set()
    for t in tensors_in(list(objs)):
        key = (str(t.device), t.data_ptr(), t.nbytes)
        if key in seen:
            continue
        seen.add(key)
        total += t.nbytes
        devices.add(str(t.device))
    return {"bytes": total, "devices": sorted(devices)}


def kept_tensors(variant: str, model: nn.Module, callbacks: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """What each method keeps besides the dense training state, by role (inspected during training).

    ``follows_weights``: whether the method puts these tensors on the weights' device (so on a GPU they take GPU
    memory). On CUDA this is read from the tensors themselves; on CPU, where everything is on the CPU, it says where
    they would be: our callback moves its masks to the weights' device and keeps mask and rewind point copies on the
    CPU; torch prune's buffers live in the module; ``ModelPruning`` copies the layers in its ``setup`` hook, which
    runs before Lightning moves the model to the device (so the copies stay where the model was: the CPU usually).
    """
    out: dict[str, dict[str, Any]] = {}
    if variant == "lottery":
        cb = callbacks[0]
        out["mask next to the weights (bool)"] = {**tensor_footprint([cb.device_masks]), "follows_weights": True}
        out["mask, CPU copy (bool)"] = {**tensor_footprint([cb.mask]), "follows_weights": False}
        out["rewind point (weights, buffers, optimizer state)"] = {
            **tensor_footprint([cb.rewind_point.state_dict() if cb.rewind_point else {}]), "follows_weights": False}
    elif variant == "modelpruning":
        cb = callbacks[0]
        targets = model_pruning_targets(cb)
        out["weight_mask buffers (float32)"] = {
            **tensor_footprint([getattr(m, n + "_mask") for m, n in targets if hasattr(m, n + "_mask")]),
            "follows_weights": True}
        out["masked weight recomputed each forward"] = {
            **tensor_footprint([getattr(m, n) for m, n in targets
                                if hasattr(m, n + "_orig") and not isinstance(getattr(m, n), nn.Parameter)]),
            "follows_weights": True}
        out["ModelPruning rewind copies of the layers"] = {
            **tensor_footprint([d["data"] for d in (cb._original_layers or {}).values()]), "follows_weights": False}
    weight_device = str(next(model.parameters()).device)
    if weight_device != "cpu":  # the real placement
        for fp in out.values():
            fp["follows_weights"] = weight_device in fp["devices"]
    return out


def bench_memory(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """One short fit per variant; at a late step, inspect what is kept (and, on CUDA, memory_allocated)."""
    from lightning.pytorch.callbacks import Callback

    from lightning_lottery.data import TensorLoader

    epoch, steps = 4, 10  # ModelPruning applies its mask at the end of epoch 0
    cuda = device.type == "cuda"
    results = []
    for spec in model_specs(args.conv_input, args.models):
        log(f"memory: {spec.name}")
        base = spec.build()
        mask = half_mask(base)
        n_weights = prunable_count(base)
        x, y = random_data(spec.input_shape, epoch * 60)
        row: dict[str, Any] = {"model": spec.name, "prunable_weights": n_weights, "variants": {}}
        for variant in ("dense", "lottery", "modelpruning"):
            model = copy.deepcopy(base)
            cbs = variant_callbacks(variant, model, mask)
            probe: dict[str, Any] = {}

            class Probe(Callback):
                def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
                    if trainer.global_step == steps - 1 and cuda:
                        torch.cuda.synchronize(device)
                        probe["resident"] = torch.cuda.memory_allocated(device)
                        torch.cuda.reset_peak_memory_stats(device)

                def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                                       batch_idx: int) -> None:
                    if trainer.global_step == steps:  # incremented by the optimizer step of this batch
                        if cuda:
                            torch.cuda.synchronize(device)
                            probe["peak"] = torch.cuda.max_memory_allocated(device)
                        probe["kept"] = kept_tensors(variant, pl_module, cbs)

            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.synchronize(device)
                probe["base"] = torch.cuda.memory_allocated(device)
            trainer = bench_trainer(device, steps, [*cbs, Probe()])
            trainer.fit(model, train_dataloaders=TensorLoader(x, y, batch_size=60, shuffle=True, seed=0))
            kept = probe.get("kept", {})
            entry: dict[str, Any] = {"kept": {}, "label": VARIANT_LABELS[variant]}
            follows = 0
            for role, fp in kept.items():
                entry["kept"][role] = {**fp, "bytes_per_weight": fp["bytes"] / n_weights}
                follows += fp["bytes"] if fp["follows_weights"] else 0
            entry["bytes_per_weight_with_weights"] = follows / n_weights
            entry["bytes_per_weight_cpu_only"] = sum(
                fp["bytes"] for fp in kept.values() if not fp["follows_weights"]) / n_weights
            if variant == "modelpruning":
                torch_only = sum(fp["bytes"] for role, fp in kept.items() if "ModelPruning" not in role)
                entry["bytes_per_weight_torch_prune_only"] = torch_only / n_weights
            if cuda:
                entry["cuda_resident_bytes"] = probe["resident"] - probe["base"]
                entry["cuda_peak_bytes"] = probe["peak"] - probe["base"]
            row["variants"][variant] = entry
            del trainer, model, cbs, probe
        if cuda:
            dense = row["variants"]["dense"]
            for variant in ("lottery", "modelpruning"):
                e = row["variants"][variant]
                e["cuda_added_resident_bytes_per_weight"] = (
                    e["cuda_resident_bytes"] - dense["cuda_resident_bytes"]) / n_weights
                e["cuda_added_peak_bytes_per_weight"] = (e["cuda_peak_bytes"] - dense["cuda_peak_bytes"]) / n_weights
        results.append(row)
        for v, e in row["variants"].items():
            log(f"  {v:13s} with the weights {e['bytes_per_weight_with_weights']:.2f} B/weight, "
                f"CPU only {e['bytes_per_weight_cpu_only']:.2f} B/weight")
    return results


# ============================================================================ 3 + 5. level and transition
TIMELINE: list[tuple[str, int | None, float]] = []
_LEVEL: dict[str, int | None] = {"level": None}


def mark(event: str) -> None:
    TIMELINE.append((event, _LEVEL["level"], time.perf_counter()))


def timeline_callback() -> Any:
    from lightning.pytorch.callbacks import Callback

    class Timeline(Callback):
        """Timestamps of a run's phases (deep-copied per run by the scheduler; writes to the global TIMELINE)."""

        def __init__(self) -> None:
            self.first = True

        def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
            mark(f"setup_{getattr(stage, 'value', stage)}")

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            mark("train_start")

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            if self.first:
                self.first = False
                mark("first_batch")

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            mark("train_end")

    return Timeline()


def timed_classes() -> tuple[Any, type, Any]:
    """The phases of a scheduler run, timestamped through public APIs only: the scheduler's ``on_event`` events
    (``run_start``, ``trainer_made``, ``fit_start``/``fit_end``, ``test_start``/``test_end``,
    ``prune_start``/``prune_end``, ``run_end``), a ``CheckpointIO`` plugin that times checkpoint writes and a
    datamodule whose ``setup`` is timed."""
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    from lightning_lottery.data import SyntheticImageDataModule

    def on_event(event: str, run: Any) -> None:
        _LEVEL["level"] = run.level
        mark(event)

    class TimedCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, *a: Any, **k: Any) -> None:
            mark("ckpt_start")
            try:
                super().save_checkpoint(*a, **k)
            finally:
                mark("ckpt_end")

    class TimedData(SyntheticImageDataModule):
        def setup(self, stage: str | None = None) -> None:
            mark("data_setup_start")
            super().setup(stage)
            mark("data_setup_end")

    return on_event, TimedData, TimedCheckpointIO


def _events(level: int) -> list[tuple[str, float]]:
    return [(e, t) for e, lv, t in TIMELINE if lv == level]


def _first(events: list[tuple[str, float]], name: str) -> float:
    return next(t for e, t in events if e == name)


def _last(events: list[tuple[str, float]], name: str) -> float:
    return [t for e, t in events if e == name][-1]


def _pairs(events: list[tuple[str, float]], start: str, end: str, after: float = -math.inf,
           before: float = math.inf) -> float:
    """Total time inside (start, end) pairs that lie within [after, before]."""
    total, opened = 0.0, None
    for e, t in events:
        if t < after or t > before:
            continue
        if e == start:
            opened = t
        elif e == end and opened is not None:
            total += t - opened
            opened = None
    return total


def level_breakdown(level: int) -> dict[str, float]:
    ev = _events(level)
    run_start, run_end = _first(ev, "run_start"), _last(ev, "run_end")
    fit_call, fit_return = _first(ev, "fit_start"), _first(ev, "fit_end")
    tests = _pairs(ev, "test_start", "test_end")
    prune_s = _pairs(ev, "prune_start", "prune_end")
    return {
        "wall_s": run_end - run_start,
        "before_fit_s": fit_call - run_start,
        "fit_s": fit_return - fit_call,
        "checkpoint_writes_in_fit_s": _pairs(ev, "ckpt_start", "ckpt_end", after=fit_call, before=fit_return),
        "checkpoint_writes_in_fit": sum(1 for e, t in ev if e == "ckpt_start" and fit_call <= t <= fit_return),
        "tests_s": tests,
        "next_mask_s": prune_s,
        "writes_and_rest_s": (run_end - fit_return) - tests - prune_s,
    }


def transition_breakdown(level: int) -> dict[str, float]:
    """From fit returning at ``level`` to the first training batch of ``level + 1``."""
    a, b = _events(level), _events(level + 1)
    fit_return = _first(a, "fit_end")
    run_end = _last(a, "run_end")
    tests = _pairs(a, "test_start", "test_end", after=fit_return)
    prune_s = _pairs(a, "prune_start", "prune_end", after=fit_return)
    run_start, fit_call = _first(b, "run_start"), _first(b, "fit_start")
    setup_fit, train_start, first = _first(b, "setup_fit"), _first(b, "train_start"), _first(b, "first_batch")
    data_setup = _pairs(b, "data_setup_start", "data_setup_end", after=fit_call, before=first)
    total = first - fit_return
    return {
        "total_s": total,
        "data_setup_s": data_setup,
        "total_without_data_setup_s": total - data_setup,
        "tests_of_level_s": tests,
        "next_mask_s": prune_s,
        "writes_and_rest_after_fit_s": (run_end - fit_return) - tests - prune_s,
        "between_runs_s": run_start - run_end,
        "load_mask_rewind_and_make_trainer_s": fit_call - run_start,
        "fit_start_to_setup_s": setup_fit - fit_call,
        "setup_to_train_start_s": train_start - setup_fit,
        "train_start_to_first_batch_s": first - train_start,
    }


def plain_fit(model: Any, datamodule: Any, steps: int, val_every: int, device: torch.device, root: str) -> dict:
    """The same training without the plugin: Lightning, same module, data, budget and validation cadence."""
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger

    pl.seed_everything(0, workers=True, verbose=False)
    trainer = pl.Trainer(
        accelerator=device.type, devices=1, max_steps=steps, max_epochs=-1, val_check_interval=val_every,
        check_val_every_n_epoch=None, num_sanity_val_steps=0, logger=CSVLogger(root, name="logs", version=""),
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
    )
    t0 = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    t1 = time.perf_counter()
    trainer.test(model, datamodule=datamodule, verbose=False)
    t2 = time.perf_counter()
    return {"fit_s": t1 - t0, "test_s": t2 - t1}


def bench_level(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Alternate plain fits and 2-level scheduler runs (levels 0, 1, 2) of LeNet-300-100 on random data."""
    on_event, TimedData, TimedCheckpointIO = timed_classes()
    from lightning_lottery import PruningScheduler
    from lightning_lottery.models import LeNet300100

    steps, val_every, reps = args.level_steps, 100, args.level_reps
    torch.set_num_threads(args.threads)
    base = LeNet300100()

    def data() -> Any:
        return TimedData(shape=[1, 28, 28], train_size=60 * 100, val_size=1000, test_size=1000, batch_size=60)

    plains, levels, transitions, totals = [], [], [], []
    for rep in range(reps):
        with tempfile.TemporaryDirectory(prefix="bench-plain-") as root:
            log(f"level: plain fit {rep + 1}/{reps} ({steps} steps)")
            plains.append(plain_fit(copy.deepcopy(base), data(), steps, val_every, device, root))
        with tempfile.TemporaryDirectory(prefix="bench-imp-") as root:
            log(f"level: scheduler run {rep + 1}/{reps} (levels 0-2, {steps} steps each)")
            TIMELINE.clear()
            _LEVEL["level"] = None
            scheduler = PruningScheduler(
                copy.deepcopy(base), data(), levels=2, rate=0.2, scope="layerwise", rewind_to="0it",
                val_every_n_steps=val_every, out_dir=root, stream=None, wandb=None, on_event=on_event,
                trainer_kwargs=dict(max_steps=steps, accelerator=device.type, devices=1, enable_progress_bar=False,
                                    enable_model_summary=False, callbacks=[timeline_callback()],
                                    plugins=[TimedCheckpointIO()]),
            )
            t0 = time.perf_counter()
            scheduler.run()
            totals.append(time.perf_counter() - t0)
            levels.append(level_breakdown(1))
            transitions.append({f"{n}->{n + 1}": transition_breakdown(n) for n in (0, 1)})
    plain_fit_s = statistics.median(p["fit_s"] for p in plains)
    plain_fit_test_s = statistics.median(p["fit_s"] + p["test_s"] for p in plains)
    level_s = statistics.median(lv["wall_s"] for lv in levels)
    return {
        "model": "lenet300", "steps": steps, "val_every_n_steps": val_every, "reps": reps,
        "plain": plains, "scheduler_levels": levels, "scheduler_run_total_s": totals,
        "plain_fit_s": plain_fit_s, "plain_fit_and_test_s": plain_fit_test_s, "level_s": level_s,
        "level_over_plain_fit": level_s / plain_fit_s,
        "level_over_plain_fit_and_test": level_s / plain_fit_test_s,
        "level_overhead_s": level_s - plain_fit_s,
        "transitions": transitions,
        "target_ratio": TARGETS["level"], "target_transition_s": TARGETS["transition_s"],
    }


# ==================================================================================== 4. global pruning
def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark (VmHWM) to its current RSS (Linux >= 4.0); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_kib() -> int:
    """The RSS high-water mark: VmHWM (per address space, so not inherited from the parent at fork like
    ``ru_maxrss`` is), else ``getrusage`` max RSS."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def prune_worker(size: int, threads: int, repeats: int, device_name: str) -> dict[str, Any]:
    """One global magnitude pruning step over ``size`` weights in 5 layers (run in a fresh process)."""
    from lightning_lottery import pruning
    from lightning_lottery.criteria import get_criterion

    torch.set_num_threads(threads)
    device = torch.device(device_name)
    cuda = device.type == "cuda"
    sync = synchronizer(device)
    per = [size // 5] * 5
    per[-1] += size - sum(per)
    g = torch.Generator(device=device).manual_seed(0)
    weights = {f"layer{i}.weight": torch.randn(n, device=device, generator=g) for i, n in enumerate(per)}
    mask = {name: torch.ones(w.shape, dtype=torch.bool, device=device) for name, w in weights.items()}
    criterion = get_criterion("magnitude")
    sync()
    gc.collect()
    out: dict[str, Any] = {"weights": size, "layers": 5, "device": str(device), "threads": threads}

    reset = _reset_peak_rss()
    rss0 = _rss_kib()
    t0 = time.perf_counter()
    scores = criterion(weights)
    sync()
    out["criterion_s"] = time.perf_counter() - t0
    out["peak_rss_added_by_criterion_mib"] = max(0, _peak_rss_kib() - rss0) / 1024
    reset = _reset_peak_rss() and reset
    rss1 = _rss_kib()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    t0 = time.perf_counter()
    new = pruning.prune(scores, mask, 0.2, scope="global")
    sync()
    out["first_prune_s"] = time.perf_counter() - t0
    out["peak_rss_added_by_prune_mib"] = max(0, _peak_rss_kib() - rss1) / 1024
    out["peak_method"] = "VmHWM reset before each call" if reset else "VmHWM since exec (upper bound)"
    out["inputs_mib"] = sum(t.nbytes for d in (weights, mask, scores) for t in d.values()) / 2**20
    if cuda:
        out["cuda_peak_added_by_prune_mib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    out["pruned"] = size - sum(int(m.sum()) for m in new.values())
    del new
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        new = pruning.prune(scores, mask, 0.2, scope="global")
        sync()
        times.append(time.perf_counter() - t0)
        del new
    out["prune_s"] = summarize(times)
    out["peak_rss_added_per_weight_bytes"] = out["peak_rss_added_by_prune_mib"] * 2**20 / size
    return out


def bench_prune(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    devices = ["cpu"] + (["cuda"] if device.type == "cuda" else [])
    results = []
    for dev in devices:
        for size in args.prune_sizes:
            log(f"prune: {size:,} weights on {dev}")
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
            cmd = [sys.executable, str(Path(__file__).resolve()), "--prune-worker", str(size), "--threads",
                   str(args.threads), "--prune-repeats", str(args.prune_repeats), "--device", dev]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
            if proc.returncode != 0:
                raise RuntimeError(f"prune worker ({size}, {dev}) failed:\n{proc.stderr[-4000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            results.append(r)
            log(f"  median {r['prune_s']['median']:.3f} s, peak RSS +{r['peak_rss_added_by_prune_mib']:.0f} MiB")
    return results


# ============================================================================================ reporting
def fmt_ms(s: float) -> str:
    return f"{s * 1e3:.3f}" if s < 0.1 else f"{s * 1e3:.1f}"


def verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("yes" if ok else "**no**")


def markdown(res: Mapping[str, Any]) -> str:
    m, s = res["machine"], res["settings"]
    lines = [
        "# lightning-lottery performance",
        "",
        f"`{s['command']}` — {m['date']}, commit `{(m['git_commit'] or 'unknown')[:12]}`",
        "",
        f"Machine: {m['cpu_model']}, {m['cpu_count']} cores ({m['cpu_affinity']} usable), "
        f"{m['memory_total_gib']} GiB; device `{m['device']}`"
        + (f" ({m['cuda_device']})" if m["cuda_device"] else "")
        + f"; torch {m['torch']}, Lightning {m['lightning']}, Python {m['python']}; "
        f"`torch.set_num_threads({m['torch_threads']})`; load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['load_average_at_start'] or [])}, at end "
        f"{', '.join(f'{x:.2f}' for x in m.get('load_average_at_end') or [])}."
        + (" **Quick mode: few steps, small sizes — indicative only.**" if s["quick"] else ""),
        "",
    ]
    if "steps" in res:
        lines += ["## 1. Training step: masked vs dense", "",
                  "Median time of one step (first callback's `on_train_batch_start` → last callback's "
                  "`on_train_batch_end`; forward, backward, optimizer step and every hook), variants interleaved in "
                  "blocks. *Iteration*: end of one step → end of the next (adds data fetch and loop overhead). "
                  "*Per round*: median over rounds of (variant's block median / dense block median), [min, max].",
                  "",
                  "| model | variant | step ms (median) | p10–p90 ms | iteration ms | × dense | per round × dense | "
                  "target | meets |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---|"]
        for r in res["steps"]:
            for v, e in r["variants"].items():
                st, it, pr = e["step_s"], e["iteration_s"], e["per_round_ratio"]
                target = r["target_ratio"] if v == "lottery" else None
                lines.append(
                    f"| {r['model']} | {e['label']} | {fmt_ms(st['median'])} | {fmt_ms(st['p10'])}–{fmt_ms(st['p90'])}"
                    f" | {fmt_ms(it['median']) if it.get('n') else '—'} | {e['ratio_to_dense']:.3f} | "
                    f"{pr['median']:.3f} [{pr['min']:.3f}, {pr['max']:.3f}] | "
                    f"{'≤ %.2f' % target if target else ''} | "
                    f"{verdict(e['ratio_to_dense'] <= target) if target else ''} |")
        lines += [""] + [
            f"{r['model']}: input {tuple(r['input_shape'])}, batch {r['batch']}, {r['prunable_weights']:,} prunable "
            f"weights, {r['warmup_blocks']} warm-up + {r['rounds']} timed blocks of {r['block']} steps per variant "
            f"({r['rounds'] * r['block']} timed steps); checks: "
            + ", ".join(f"{k} = {v}" for k, v in r["checks"].items()) + "." for r in res["steps"]]
        lines.append("")
    if "memory" in res:
        lines += ["## 2. Memory added per prunable weight", "",
                  "Tensors each method keeps besides the dense training state, inspected during training, in bytes "
                  "per prunable weight. *With the weights*: tensors the method places on the weights' device (GPU "
                  "memory when training on a GPU). *On the CPU*: tensors kept in host memory whatever the device "
                  "(our mask copy and rewind point; `ModelPruning`'s layer copies, made before Lightning moves the "
                  "model). When training on the CPU both are host memory; the target is about the device. On CUDA, "
                  "*measured* is the `torch.cuda.memory_allocated` difference to the dense fit at a step boundary "
                  "(resident) and at its peak within one step.", "",
                  "| model | method | with the weights B/weight | on the CPU B/weight | measured CUDA B/weight "
                  "(resident / peak) | target (device) | meets |",
                  "|---|---|---:|---:|---:|---:|---|"]
        for r in res["memory"]:
            for v in ("lottery", "modelpruning"):
                e = r["variants"][v]
                cuda = (f"{e['cuda_added_resident_bytes_per_weight']:.2f} / {e['cuda_added_peak_bytes_per_weight']:.2f}"
                        if "cuda_added_resident_bytes_per_weight" in e else "— (no CUDA)")
                on_dev = e["bytes_per_weight_with_weights"]
                if "cuda_added_resident_bytes_per_weight" in e:
                    on_dev = max(on_dev, e["cuda_added_resident_bytes_per_weight"])
                target = v == "lottery"
                lines.append(f"| {r['model']} | {e['label']} | {e['bytes_per_weight_with_weights']:.2f} | "
                             f"{e['bytes_per_weight_cpu_only']:.2f} | {cuda} | {'≤ 1' if target else ''} | "
                             f"{verdict(on_dev <= TARGETS['bytes_per_weight']) if target else ''} |")
                if v == "modelpruning":
                    lines.append(f"| {r['model']} | torch prune reparam. alone (no ModelPruning copies) | "
                                 f"{e['bytes_per_weight_torch_prune_only']:.2f} | 0.00 | | | |")
        lines += ["", "Breakdown (bytes per prunable weight):", ""]
        for r in res["memory"]:
            for v in ("lottery", "modelpruning"):
                parts = "; ".join(f"{role}: {k['bytes_per_weight']:.2f} on {'/'.join(k['devices']) or '—'}"
                                  for role, k in r["variants"][v]["kept"].items())
                lines.append(f"- {r['model']}, {v}: {parts}")
        lines.append("")
    if "level" in res:
        lv = res["level"]
        bd = {k: statistics.median(x[k] for x in lv["scheduler_levels"]) for k in lv["scheduler_levels"][0]}
        lines += ["## 3. One IMP level vs the plain fit", "",
                  f"LeNet-300-100, random data (6,000 train / 1,000 val / 1,000 test), {lv['steps']} steps, "
                  f"validation every {lv['val_every_n_steps']} steps, medians of {lv['reps']} alternating repetitions. "
                  "Level = level 1 of a `PruningScheduler` run (fit, both tests, next mask, mask/ticket/metrics "
                  "writes, checkpoints); plain = `Trainer.fit` without the plugin (CSV logger, no checkpointing).",
                  "",
                  "| measurement | seconds | × plain fit | target | meets |", "|---|---:|---:|---:|---|",
                  f"| plain fit | {lv['plain_fit_s']:.2f} | 1.000 | | |",
                  f"| plain fit + one test | {lv['plain_fit_and_test_s']:.2f} | "
                  f"{lv['plain_fit_and_test_s'] / lv['plain_fit_s']:.3f} | | |",
                  f"| IMP level (scheduler, level 1) | {lv['level_s']:.2f} | {lv['level_over_plain_fit']:.3f} | "
                  f"≤ {lv['target_ratio']:.2f} | {verdict(lv['level_over_plain_fit'] <= lv['target_ratio'])} |",
                  "",
                  "Level breakdown (s): " + ", ".join(f"{k[:-2].replace('_', ' ')} {v:.2f}" for k, v in bd.items()
                                                      if k.endswith("_s"))
                  + f" ({bd['checkpoint_writes_in_fit']:.0f} checkpoint writes inside the fit)"
                  + f"; fixed cost above the plain fit ≈ {lv['level_overhead_s']:.2f} s per level.", ""]
        lenet = next((r for r in res.get("steps", []) if r["model"] == "lenet300" and "bare" in r["variants"]), None)
        if lenet:
            d, b = lenet["variants"]["dense"]["step_s"]["median"], lenet["variants"]["bare"]["step_s"]["median"]
            di = lenet["variants"]["dense"]["iteration_s"].get("median")
            bi = lenet["variants"]["bare"]["iteration_s"].get("median")
            lines += ["Reference module in Lightning vs a bare PyTorch loop (LeNet-300-100, same steps and data, "
                      "interleaved with section 1):", "",
                      "| measurement | Lightning ms | bare loop ms | ratio | target | meets |",
                      "|---|---:|---:|---:|---:|---|",
                      f"| step | {fmt_ms(d)} | {fmt_ms(b)} | {d / b:.3f} | ≤ {TARGETS['lightning_vs_bare']:.2f} | "
                      f"{verdict(d / b <= TARGETS['lightning_vs_bare'])} |"]
            if di and bi:
                lines.append(f"| iteration (with data fetch and loop) | {fmt_ms(di)} | {fmt_ms(bi)} | {di / bi:.3f} | "
                             f"≤ {TARGETS['lightning_vs_bare']:.2f} | {verdict(di / bi <= TARGETS['lightning_vs_bare'])} |")
            lines.append("")
    if "prune" in res:
        lines += ["## 4. One global magnitude pruning step", "",
                  "`lightning_lottery.pruning.prune(scores, mask, 0.2, scope=\"global\")` over 5 equal layers, every "
                  "weight alive, in a fresh process per size. Criterion = `magnitude` scores (timed apart). Peak "
                  "memory: on CPU the RSS high-water mark (`VmHWM`, reset just before the call) minus the RSS before the "
                  "call; on CUDA the allocator's peak (`max_memory_allocated`) minus the allocation before it.", "",
                  "| device | weights | prune s (median) | first call s | criterion s | peak memory added MiB | "
                  "B/weight | target | meets |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in res["prune"]:
            is_target = r["weights"] >= 100_000_000 and r["device"] == "cpu"
            med = r["prune_s"].get("median", r["first_prune_s"])
            peak = r.get("cuda_peak_added_by_prune_mib", r["peak_rss_added_by_prune_mib"])
            lines.append(f"| {r['device']} | {r['weights']:,} | {med:.3f} | {r['first_prune_s']:.3f} | "
                         f"{r['criterion_s']:.3f} | {peak:.0f} | {peak * 2**20 / r['weights']:.2f} | "
                         f"{'≤ 2 s' if is_target else ''} | "
                         f"{verdict(med <= TARGETS['prune_100m_s']) if is_target else ''} |")
        lines.append("")
    if "level" in res:
        lv = res["level"]
        lines += ["## 5. Level transition", "",
                  "From `trainer.fit` returning at level n to the first `on_train_batch_start` of level n+1 "
                  "(same scheduler runs as section 3; medians). It includes level n's two tests, the next mask and "
                  "the writes; data set-up is the datamodule's `setup` inside the next fit.", "",
                  "| transition | total s | data set-up s | total − data set-up s | target | meets |",
                  "|---|---:|---:|---:|---:|---|"]
        for key in lv["transitions"][0]:
            rows = [t[key] for t in lv["transitions"]]
            med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
            lines.append(f"| {key} | {med['total_s']:.3f} | {med['data_setup_s']:.3f} | "
                         f"{med['total_without_data_setup_s']:.3f} | ≤ {lv['target_transition_s']:.0f} s + data | "
                         f"{verdict(med['total_without_data_setup_s'] <= lv['target_transition_s'])} |")
        rows = [t[k] for t in lv["transitions"] for k in t]
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        lines += ["", "Breakdown (s, median over transitions): " + ", ".join(
            f"{k[:-2].replace('_', ' ')} {v:.3f}" for k, v in med.items()
            if k not in ("total_s", "total_without_data_setup_s")), ""]
    return "\n".join(lines) + "\n"


# ================================================================================================= main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="few steps, sizes up to 10M (about 2 minutes)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="directory for results.json/.md")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA when available")
    p.add_argument("--only", default=",".join(ITEMS), help=f"comma-separated subset of {','.join(ITEMS)}")
    p.add_argument("--models", default="lenet300,conv2", help="models of the step and memory sections")
    p.add_argument("--conv-input", default="28x28x1", choices=["28x28x1", "32x32x3"], help="Conv-2 input shape")
    p.add_argument("--block", type=int, help="steps per turn of a variant (default 50; quick 10)")
    p.add_argument("--rounds", type=int, help="timed turns per variant (default 6: 300 steps; quick 3)")
    p.add_argument("--warmup-blocks", type=int, default=2, help="untimed turns per variant first (default 2)")
    p.add_argument("--level-steps", type=int, help="training steps per level (default 2000; quick 300)")
    p.add_argument("--level-reps", type=int, help="repetitions of plain fit + scheduler run (default 3; quick 1)")
    p.add_argument("--prune-sizes", help="comma-separated weight counts (default 1e6,1e7,1e8; quick 1e6,1e7)")
    p.add_argument("--prune-repeats", type=int, help="timed calls after the first (default 3; quick 2)")
    p.add_argument("--prune-worker", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    q = args.quick
    args.block = args.block or (10 if q else 50)
    args.rounds = args.rounds or (3 if q else 6)
    args.level_steps = args.level_steps or (300 if q else 2000)
    args.level_reps = args.level_reps or (1 if q else 3)
    args.prune_repeats = args.prune_repeats if args.prune_repeats is not None else (2 if q else 3)
    sizes = args.prune_sizes or ("1e6,1e7" if q else "1e6,1e7,1e8")
    args.prune_sizes = [int(float(x)) for x in sizes.split(",") if x]
    args.only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = set(args.only) - set(ITEMS)
    if unknown:
        p.error(f"--only: unknown item(s) {sorted(unknown)}; choose from {ITEMS}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.prune_worker is not None:
        print(json.dumps(prune_worker(args.prune_worker, args.threads, args.prune_repeats, args.device)))
        return 0
    quiet_lightning()
    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    device = torch.device("cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    command = " ".join([".venv/bin/python", "benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)])
    results: dict[str, Any] = {
        "machine": machine_facts(device, args.threads),
        "settings": {"command": command, "quick": args.quick, "threads": args.threads, "device": str(device),
                     "only": args.only, "conv_input": args.conv_input, "block": args.block, "rounds": args.rounds,
                     "warmup_blocks": args.warmup_blocks, "level_steps": args.level_steps,
                     "level_reps": args.level_reps, "prune_sizes": args.prune_sizes,
                     "prune_repeats": args.prune_repeats},
        "targets": TARGETS,
    }
    t0 = time.perf_counter()
    log(f"device {device}, {args.threads} thread(s), items {args.only}{' (quick)' if args.quick else ''}")
    if "steps" in args.only:
        results["steps"] = bench_steps(args, device)
    if "memory" in args.only:
        results["memory"] = bench_memory(args, device)
    if "level" in args.only:
        results["level"] = bench_level(args, device)
    if "prune" in args.only:
        results["prune"] = bench_prune(args, device)
    results["machine"]["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    results["wall_s"] = time.perf_counter() - t0
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out_dir / "results.md").write_text(markdown(results))
    log(f"done in {results['wall_s']:.0f} s: {out_dir / 'results.json'}, {out_dir / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
