"""``--format 2:4``: a ticket with 2:4 masks, its Linear weights as ``torch.sparse`` semi-structured tensors (NVIDIA
sparse tensor cores, compute capability ≥ 8.0). Pure torch, no Lightning.

The CPU part: :func:`project_model` projects the ticket's mask to 2:4 (:func:`lightning_lottery.structured.
project_2_4` with the weights' magnitudes as scores: of every block of 4 along a unit's fan-in, the two largest
alive weights stay; a ticket searched with ``lottery.mask_type: 2:4`` is unchanged) and returns the masked network
with the projected mask, which is what the exported model computes. The GPU part: :func:`to_semi_structured` turns
each ``nn.Linear`` whose shape the kernel takes into one whose weight is ``to_sparse_semi_structured`` (float16 on
CUDA); a layer whose shape it does not take stays dense (reported). No compaction: removing an input column would
shift the blocks of 4.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(8, 4))
    >>> projected, mask, report = project_model(net, {"0.weight": torch.ones(4, 8, dtype=torch.bool)})
    >>> report["alive_before"], report["alive_after"]
    (32, 16)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from lightning_lottery.export.chain import masked_copy
from lightning_lottery.export.layers import UnsupportedModelError
from lightning_lottery.masks import Mask
from lightning_lottery.structured import is_2_4, project_2_4

__all__ = ["cuda_2_4_available", "project_model", "require_cuda_2_4", "to_semi_structured"]


def cuda_2_4_available() -> tuple[bool, str]:
    """``(available, why not)``: a CUDA device of compute capability ≥ 8.0 and
    ``torch.sparse.to_sparse_semi_structured``."""
    if not hasattr(torch.sparse, "to_sparse_semi_structured"):
        return False, f"torch {torch.__version__} has no torch.sparse.to_sparse_semi_structured"
    if not torch.cuda.is_available():
        return False, "no CUDA device (2:4 sparse kernels run on NVIDIA GPUs of compute capability >= 8.0)"
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        return False, f"the CUDA device has compute capability {major}.{minor}; 2:4 sparse kernels need >= 8.0"
    return True, ""


def require_cuda_2_4() -> None:
    """Raise :class:`UnsupportedModelError` (one clear message) unless :func:`cuda_2_4_available`."""
    ok, why = cuda_2_4_available()
    if not ok:
        raise UnsupportedModelError(f"--format 2:4 needs a GPU: {why}. On this machine use --format sparse or "
                                    "compact; the 2:4 masks themselves come from lottery.mask_type: 2:4")


@torch.no_grad()
def project_model(model: nn.Module, mask: Mapping[str, Tensor]) -> tuple[nn.Module, Mask, dict[str, Any]]:
    """``(masked copy of model under the 2:4-projected mask, that mask, report)``; scores are ``|w|``."""
    params = dict(model.named_parameters())
    missing = [n for n in mask if n not in params]
    if missing:
        raise UnsupportedModelError(f"mask parameter {missing[0]!r} is not a parameter of {type(model).__name__}")
    already = is_2_4(mask)
    projected = project_2_4(mask, {n: params[n].detach().abs() for n in mask})
    report = {"mask_was_2_4": already, "alive_before": int(sum(int(m.sum()) for m in mask.values())),
              "alive_after": int(sum(int(m.sum()) for m in projected.values()))}
    return masked_copy(model, projected), projected, report


def _fits(linear: nn.Linear) -> bool:
    """Shapes the CUTLASS/cuSPARSELt 2:4 kernels take for float16 (rows and columns multiples of 64)."""
    out_f, in_f = linear.weight.shape
    return out_f % 64 == 0 and in_f % 64 == 0


@torch.no_grad()
def to_semi_structured(model: nn.Module, dtype: torch.dtype = torch.float16) -> tuple[nn.Module, list[dict[str, Any]]]:
    """``model`` on CUDA in ``dtype``, each ``nn.Linear`` of a 2:4 weight and a fitting shape with a semi-structured
    weight; the rows say which layers were converted. Raises :class:`UnsupportedModelError` without a fitting GPU."""
    require_cuda_2_4()
    from torch.sparse import to_sparse_semi_structured

    model = model.to("cuda", dtype).eval()
    rows = []
    for name, m in model.named_modules():
        if type(m) is not nn.Linear:
            continue
        pattern = is_2_4({name: m.weight != 0})
        convert = pattern and _fits(m)
        if convert:
            m.weight = nn.Parameter(to_sparse_semi_structured(m.weight), requires_grad=False)
        rows.append({"layer": name, "shape": list(m.weight.shape), "choice": "2:4" if convert else "dense",
                     "why": "" if convert else ("not 2:4" if not pattern else "rows/columns not multiples of 64")})
    return model, rows
