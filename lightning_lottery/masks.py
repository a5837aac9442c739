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

import torch
from torch import nn

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
    """
    default = {
        f"{mod_name}.weight" if mod_name else "weight"
        for mod_name, module in model.named_modules()
        if isinstance(module, PRUNABLE_LAYERS) and isinstance(getattr(module, "weight", None), nn.Parameter)
    }
    params = dict(model.named_parameters())
    if include is not None:
        for pattern in include:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in params):
                raise MaskError(f"include pattern {pattern!r} matches no parameter of the model")
        chosen = [n for n in params if _matches(n, include)]
    else:
        chosen = [n for n in params if n in default]
    for pattern in exclude:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in chosen):
            raise MaskError(f"exclude pattern {pattern!r} matches no prunable parameter")
    return {n: params[n] for n in chosen if not _matches(n, exclude)}


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
