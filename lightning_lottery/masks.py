"""Masks: which weights are alive. Pure torch, no Lightning.

A mask is a ``dict[str, torch.BoolTensor]`` keyed by parameter name (as in ``model.named_parameters()``);
``True`` means the weight is alive. Masks are applied in place (``weight.mul_(mask)``): there is no
reparametrization, no forward hook and no float copy of the weights.

Example:
    >>> import torch
    >>> from lightning_lottery.masks import prunable_parameters, ones_mask, remaining
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    >>> sorted(prunable_parameters(net))
    ['0.weight', '2.weight']
    >>> remaining(ones_mask(prunable_parameters(net)))
    1.0
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from lightning_lottery.atomic import atomic_write_bytes

Mask = dict[str, torch.Tensor]

#: Layer types whose ``weight`` is prunable by default.
PRUNABLE_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd)


class MaskError(ValueError):
    """A mask (or ticket) does not fit the model it is applied to, or its file is unreadable."""


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def prunable_parameters(
    model: nn.Module,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
) -> dict[str, nn.Parameter]:
    """The parameters that pruning may touch, by name, in ``named_parameters()`` order.

    By default the ``weight`` of every Linear and Conv layer. ``include`` (fnmatch patterns over parameter
    names, e.g. ``"*.weight"`` or ``"features.*"``) replaces that default selection; ``exclude`` removes
    matching names from it. Raises ``MaskError`` if a pattern matches nothing.

    Shared (tied) parameters: a parameter registered under several names (two modules sharing one weight, an
    output Linear tied to an embedding) is one prunable parameter, named by its first name in
    ``named_parameters()``. It is selected if any of its names is (by ``include``, or by default if any module
    owning it is a Linear or Conv layer) and removed if any of its names matches ``exclude``; its mask applies to
    every ``state_dict`` key it has (see :meth:`lightning_lottery.ticket.Ticket.from_state`).
    """
    names: dict[int, list[str]] = {}  # id(parameter) -> all its names, first one first
    params: dict[str, nn.Parameter] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) not in names:
            names[id(p)] = []
            params[name] = p
        names[id(p)].append(name)
    all_names = [n for aliases in names.values() for n in aliases]
    default = {
        f"{mod_name}.weight" if mod_name else "weight"
        for mod_name, module in model.named_modules(remove_duplicate=False)
        if isinstance(module, PRUNABLE_LAYERS) and isinstance(getattr(module, "weight", None), nn.Parameter)
    }

    def aliases(name: str) -> list[str]:
        return names[id(params[name])]

    if include is not None:
        for pattern in include:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in all_names):
                raise MaskError(f"include pattern {pattern!r} matches no parameter of the model")
        chosen = [n for n in params if any(_matches(a, include) for a in aliases(n))]
    else:
        chosen = [n for n in params if any(a in default for a in aliases(n))]
    for pattern in exclude:
        if not any(fnmatch.fnmatchcase(a, pattern) for n in chosen for a in aliases(n)):
            raise MaskError(f"exclude pattern {pattern!r} matches no prunable parameter")
    return {n: params[n] for n in chosen if not any(_matches(a, exclude) for a in aliases(n))}


def require_prunable(model: nn.Module, include: Sequence[str] | None = None,
                     exclude: Sequence[str] = ()) -> dict[str, nn.Parameter]:
    """:func:`prunable_parameters`, or a ``MaskError`` naming the cause and the fix when there is none or one is
    uninitialized (a Lazy module): a lottery-ticket search cannot run on them."""
    params = prunable_parameters(model, include, exclude)
    lazy = [n for n, p in params.items() if isinstance(p, nn.parameter.UninitializedParameter)]
    if lazy:
        raise MaskError(
            f"parameter {lazy[0]!r} is uninitialized (a Lazy module such as LazyLinear) at fit start, so its mask has "
            "no shape: run one forward pass before fit (e.g. model(example_batch) in the model's __init__), or use "
            "a non-lazy layer"
        )
    if not params:
        what = f"include={list(include)}" if include is not None else "the default (the weight of Linear and Conv layers)"
        minus = f" minus exclude={list(exclude)}" if exclude else ""
        raise MaskError(
            f"no prunable parameter in {type(model).__name__}: {what}{minus} selects nothing (a weight_norm'ed or "
            "otherwise parametrized layer keeps its weight as '...parametrizations.weight.original0/1'). Pass "
            "include=[...] fnmatch patterns of parameter names, e.g. include=['*.weight'] or "
            "include=['*.parametrizations.weight.original1']"
        )
    return params


def ones_mask(params: Mapping[str, torch.Tensor]) -> Mask:
    """A mask with every weight alive, on the parameters' devices."""
    return {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}


def check_fits(mask: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor]) -> None:
    """Raise ``MaskError`` naming the first parameter whose name, shape or dtype does not fit."""
    missing = [n for n in params if n not in mask]
    extra = [n for n in mask if n not in params]
    if extra:
        raise MaskError(f"mask has parameter {extra[0]!r} that the model does not prune (prunable: {list(params)})")
    if missing:
        raise MaskError(f"mask lacks prunable parameter {missing[0]!r} of the model")
    for name, p in params.items():
        m = mask[name]
        if m.dtype != torch.bool:
            raise MaskError(f"mask for {name!r} has dtype {m.dtype}, expected torch.bool")
        if tuple(m.shape) != tuple(p.shape):
            raise MaskError(
                f"mask for {name!r} has shape {tuple(m.shape)} but the model's parameter has shape {tuple(p.shape)}"
            )


@torch.no_grad()
def apply_mask_(params: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor]) -> None:
    """Zero the pruned entries of ``params`` in place (weights, gradients or optimizer state alike)."""
    names = [n for n in mask if n in params]
    if not names:
        return
    tensors = [params[n] for n in names]
    masks = [mask[n] for n in names]
    if all(t.dtype == tensors[0].dtype and t.device == masks[i].device for i, t in enumerate(tensors)):
        torch._foreach_mul_(tensors, masks)
    else:
        for t, m in zip(tensors, masks):
            t.mul_(m.to(t.device))


def count_alive(mask: Mapping[str, torch.Tensor]) -> int:
    """Number of alive weights over all masked parameters."""
    return int(sum(int(torch.count_nonzero(m)) for m in mask.values()))  # bool .sum() would make an int64 copy


def count_total(mask: Mapping[str, torch.Tensor]) -> int:
    """Number of weights (alive or pruned) over all masked parameters."""
    return int(sum(m.numel() for m in mask.values()))


def remaining(mask: Mapping[str, torch.Tensor]) -> float:
    """Fraction in (0, 1] of masked weights still alive (1.0 for an empty mask)."""
    total = count_total(mask)
    return count_alive(mask) / total if total else 1.0


def remaining_per_layer(mask: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Fraction of weights alive, per parameter name."""
    return {n: stats["remaining"] for n, stats in layer_counts(mask).items()}


def layer_counts(mask: Mapping[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """``{name: {"alive", "total", "remaining"}}`` per masked parameter (the per-layer columns of the results)."""
    out: dict[str, dict[str, float]] = {}
    for n, m in mask.items():
        alive, total = int(torch.count_nonzero(m)), m.numel()
        out[n] = {"alive": alive, "total": total, "remaining": alive / total if total else 1.0}
    return out


def checksum(mask: Mapping[str, torch.Tensor]) -> str:
    """A SHA-256 over names, shapes and bits: equal masks have equal checksums on every machine."""
    h = hashlib.sha256()
    for name in sorted(mask):
        m = mask[name].detach().to("cpu", torch.bool).contiguous()
        h.update(name.encode())
        h.update(repr(tuple(m.shape)).encode())
        h.update(m.numpy().tobytes())
    return h.hexdigest()


def to_device(mask: Mapping[str, torch.Tensor], device: torch.device | str) -> Mask:
    """A copy of ``mask`` on ``device`` (no copy when already there)."""
    return {n: m.to(device) for n, m in mask.items()}


#: Optimizers whose step leaves an entry at exactly 0.0 when the weight, its gradient and its state entries are
#: 0.0 (with any of their options: momentum, Nesterov, dampening, weight decay, decoupled weight decay, amsgrad,
#: maximize, centered, foreach/fused). Exact types: a subclass may change ``step``.
#: tests/test_performance_invariants.py proves it for each.
ZERO_PRESERVING_OPTIMIZERS: frozenset[type] = frozenset({
    torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.NAdam, torch.optim.RAdam, torch.optim.Adamax,
    torch.optim.Adagrad, torch.optim.RMSprop,
})


def mask_after_every_step(optimizers: Sequence[torch.optim.Optimizer], params: Sequence[torch.Tensor],
                          masks: Sequence[torch.Tensor]) -> list[RemovableHandle]:
    """Register a step post-hook on each optimizer that zeroes the pruned entries of the ``params`` it owns after
    every ``step()`` (several per batch in manual optimization included). Returns the handles to remove."""
    index = {id(p): i for i, p in enumerate(params)}
    handles = []
    for opt in optimizers:
        owned = sorted({index[id(p)] for g in opt.param_groups for p in g["params"] if id(p) in index})
        if owned:
            mine, my_masks = [params[i] for i in owned], [masks[i] for i in owned]

            def after_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any,
                           mine: list[torch.Tensor] = mine, my_masks: list[torch.Tensor] = my_masks) -> None:
                zero_pruned_(mine, my_masks)

            handles.append(opt.register_step_post_hook(after_step))
    return handles


# Same-size integer views of floating dtypes: multiplying the bit pattern by a bool mask (promoted to the integer
# dtype: 0 or 1) keeps or clears every bit, which is exactly the masked float (+0.0 where pruned, even for NaN or
# -0.0). Several times faster on CPU than a float multiply by a bool mask, which promotes the mask element by element.
_INT_VIEWS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@torch.no_grad()
def zero_pruned_(tensors: Sequence[torch.Tensor | None], masks: Sequence[torch.Tensor]) -> None:
    """Set the entries of each tensor where its bool mask is False to 0, in place, with foreach multiplies."""
    ints: list[torch.Tensor] = []
    int_masks: list[torch.Tensor] = []
    others: list[torch.Tensor] = []
    other_masks: list[torch.Tensor] = []
    for t, m in zip(tensors, masks):
        if t is None:
            continue
        if t.is_floating_point() and t.layout == torch.strided and t.element_size() in _INT_VIEWS:
            ints.append(t.view(_INT_VIEWS[t.element_size()]))
            int_masks.append(m)
        else:
            others.append(t)
            other_masks.append(m)
    if ints:
        torch._foreach_mul_(ints, int_masks)
    if others:
        torch._foreach_mul_(others, other_masks)


#: The integer view of each floating dtype: the per-step path picks it by dtype, without the checks above.
_FLOAT_VIEWS = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16,
                torch.bfloat16: torch.int16}


def mask_gradients_(params: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> None:
    """``zero_pruned_`` of the parameters' gradients: the per-step path of ``LotteryTicket``, one
    ``_foreach_mul_`` of integer views without an autograd context when every gradient is a plain strided float
    tensor that does not require grad (the usual case), :func:`zero_pruned_` otherwise. The same result bit for bit.

    Example:
        >>> w = torch.nn.Parameter(torch.ones(2, 2)); w.grad = torch.full((2, 2), 3.0)
        >>> mask_gradients_([w], [torch.tensor([[True, False], [False, True]])]); w.grad
        tensor([[3., 0.],
                [0., 3.]])
    """
    grads = [p.grad for p in params]
    if all(g is not None and g.dtype in _FLOAT_VIEWS and g.layout == torch.strided and not g.requires_grad
           for g in grads):
        torch._foreach_mul_([g.view(_FLOAT_VIEWS[g.dtype]) for g in grads], list(masks))  # type: ignore[union-attr]
    else:
        zero_pruned_(grads, masks)


# ----------------------------------------------------------------------------------------------- files


def save_mask(mask: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> None:
    """Save a mask as safetensors (one bool tensor per parameter name), atomically."""
    from safetensors.torch import save

    tensors = {n: m.detach().to("cpu", torch.bool).contiguous() for n, m in mask.items()}
    meta = {**{str(k): str(v) for k, v in (metadata or {}).items()}, "format": "lightning-lottery-mask"}
    atomic_write_bytes(path, save(tensors, metadata=meta))


def load_mask(path: str | os.PathLike) -> Mask:
    """Load a mask written by :func:`save_mask` (or the mask of a ticket). Raises ``MaskError`` on a bad file."""
    tensors, _ = read_safetensors(path)
    if any(k.startswith("mask/") for k in tensors):
        tensors = {k[len("mask/") :]: v for k, v in tensors.items() if k.startswith("mask/")}
    bad = [n for n, t in tensors.items() if t.dtype != torch.bool]
    if bad:
        raise MaskError(f"{path}: tensor {bad[0]!r} is not a bool mask")
    return tensors


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read all tensors and the metadata of a safetensors file, with one clear error if it is missing or corrupt."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise MaskError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for truncated/garbled files
        raise MaskError(f"{path}: not a readable safetensors file ({err})") from err
    return tensors, meta
