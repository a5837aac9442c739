"""Compaction: the smaller dense network that computes what a masked chain computes. Pure torch, no Lightning.

On the chain of a model (:func:`~lightning_lottery.export.chain.model_chain`) with its weights multiplied by the
mask, in eval mode (BatchNorm with its running statistics), repeat until nothing changes:

* a unit (a Linear row, a Conv filter) whose fan-in is all pruned outputs a constant: the bias (0 without one)
  through the per-channel layers that follow (BatchNorm, activation, pool). Its effect on the next layer is added
  to that layer's bias and the unit is removed. For a next Conv the constant must be the same at every position
  and either 0 or not zero-padded (zero padding makes the borders differ); otherwise the unit stays;
* a unit whose fan-out is all pruned (its column in the next layer; after a Flatten all its columns) is removed;
* an input (feature or channel) that no alive weight of the first layer reads is left out by an index selection.

A removed unit takes its bias, its BatchNorm channel and the next layer's input columns with it. Every layer keeps at
least one unit; the last layer keeps all (the outputs). The result is a plain ``nn.Sequential`` in eval mode.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> mask = {"0.weight": torch.ones(3, 4, dtype=torch.bool), "2.weight": torch.ones(2, 3, dtype=torch.bool)}
    >>> mask["2.weight"][:, 1] = False  # nothing reads hidden unit 1
    >>> small, report = compact(net, mask, (4,))
    >>> small[0].out_features, report["units_removed"]
    (2, 1)
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

from lightning_lottery.export.chain import check_chain_is_forward, default_input_shape, masked_copy, model_chain
from lightning_lottery.export.layers import ELEMENTWISE, POOLS, Select, UnsupportedModelError

__all__ = ["compact"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class _Layer:
    """A Linear or Conv layer of the chain while it is being compacted (full-size tensors, keep flags)."""

    def __init__(self, index: int, name: str, module: nn.Module, mask: Tensor | None) -> None:
        self.index, self.name, self.module = index, name, module
        w = module.weight.detach()
        self.mask = mask.to(torch.bool) if mask is not None else torch.ones_like(w, dtype=torch.bool)
        self.weight = w * self.mask
        self.has_bias = module.bias is not None
        self.bias = module.bias.detach().clone() if self.has_bias else torch.zeros(w.shape[0], dtype=w.dtype)
        self.keep = torch.ones(w.shape[0], dtype=torch.bool)
        self.folded = 0
        self.dropped = 0
        self.conv = isinstance(module, _ConvNd)

    def column_any(self, groups: int) -> Tensor:
        """Per upstream unit: does an alive weight of a kept row read it? (``groups`` columns per unit)."""
        m = self.mask[self.keep]
        if self.conv:
            return m.transpose(0, 1).reshape(m.shape[1], -1).any(1)
        return m.any(0).reshape(-1, groups).any(1)

    def row_any(self, inputs: Tensor) -> Tensor:
        """Per unit: does it have an alive weight on a kept input?"""
        return self.mask[:, inputs].reshape(self.mask.shape[0], -1).any(1)

    def zero_padded(self) -> bool:
        m = self.module
        if m.padding_mode != "zeros":
            return False
        if isinstance(m.padding, str):
            return m.padding == "same" and any(k > 1 for k in m.kernel_size)
        return any(p > 0 for p in m.padding)


def _check_ops(layers: Sequence[tuple[str, nn.Module]], a: int, b: int, shapes: list[tuple[int, ...]],
               nxt: _Layer) -> int:
    """Check the layers strictly between weighted layers ``a`` and ``b``; return the Flatten factor (1 if none)."""
    factor, flat = 1, False
    for k in range(a + 1, b):
        name, op = layers[k]
        if isinstance(op, nn.Flatten):
            if flat or op.start_dim != 1 or op.end_dim != -1 or nxt.conv:
                raise UnsupportedModelError(f"module {name!r} (Flatten): compaction supports one Flatten(1, -1) "
                                            "between a Conv and a Linear layer")
            factor, flat = math.prod(shapes[k][2:]), True
        elif isinstance(op, _BN):
            if not op.track_running_stats or op.running_mean is None:
                raise UnsupportedModelError(f"module {name!r} ({type(op).__name__}) has no running statistics: "
                                            "compaction folds BatchNorm in eval mode only")
        elif isinstance(op, POOLS):
            if flat:
                raise UnsupportedModelError(f"module {name!r} ({type(op).__name__}) after a Flatten is not supported")
        elif not isinstance(op, ELEMENTWISE):
            raise UnsupportedModelError(f"module {name!r} ({type(op).__name__}) between {layers[a][0]!r} and "
                                        f"{layers[b][0]!r} does not act on each channel alone: compaction cannot "
                                        "remove channels through it")
    return factor


@torch.no_grad()
def _unit_outputs(layer: _Layer, ops: Sequence[nn.Module], out_shape: tuple[int, ...]) -> Tensor:
    """What each unit of ``layer`` feeds the next layer if its input were cut: bias through ``ops``, as
    ``[units, values per unit]`` (per position for a next Conv, per column after a Flatten)."""
    units = layer.bias.numel()
    spatial = tuple(out_shape[2:])
    x = layer.bias.reshape(1, units, *([1] * len(spatial))).expand(1, units, *spatial).contiguous()
    for op in ops:
        x = op(x)
    return x.reshape(units, -1)


@torch.no_grad()
def compact(model: nn.Module, mask: Mapping[str, Tensor], input_shape: Sequence[int] | None = None,
            ) -> tuple[nn.Sequential, dict[str, Any]]:
    """The compacted chain of ``model`` under ``mask`` and a report of what was removed.

    ``input_shape`` is one sample's shape (default: from a reference model's hyperparameters). Raises
    :class:`UnsupportedModelError` naming the module that cannot be compacted.
    """
    ref = masked_copy(model, mask)
    prefix, layers = model_chain(ref)
    shape = tuple(input_shape) if input_shape is not None else default_input_shape(model)
    if shape is None:
        raise UnsupportedModelError(f"pass input_shape: the shape of one input of {type(model).__name__} is unknown")
    example = torch.randn(2, *shape)
    check_chain_is_forward(ref, layers, example)
    shapes: list[tuple[int, ...]] = []
    x = example
    for _, layer in layers:
        shapes.append(tuple(x.shape))
        x = layer(x)
    shapes.append(tuple(x.shape))

    weighted: list[_Layer] = []
    for k, (name, module) in enumerate(layers):
        if isinstance(module, (nn.Linear, _ConvNd)):
            if isinstance(module, _ConvNd) and (module.groups != 1 or module.transposed):
                raise UnsupportedModelError(f"module {name!r} ({type(module).__name__}): grouped and transposed "
                                            "convolutions are not supported by compaction")
            if isinstance(module, nn.Linear) and len(shapes[k]) != 2:
                raise UnsupportedModelError(f"module {name!r} (Linear) gets {len(shapes[k])}-d inputs: compaction "
                                            "supports Linear layers on [batch, features]")
            weighted.append(_Layer(k, name, module, mask.get(f"{name}.weight")))
    if not weighted:
        raise UnsupportedModelError(f"{type(model).__name__} has no Linear or Conv layer to compact")
    factors = [_check_ops(layers, a.index, b.index, shapes, b) for a, b in zip(weighted, weighted[1:])]
    for k in range(weighted[0].index):
        if not isinstance(layers[k][1], (nn.Flatten, *ELEMENTWISE)):
            raise UnsupportedModelError(f"module {layers[k][0]!r} ({type(layers[k][1]).__name__}) before the first "
                                        "weighted layer: compaction supports only Flatten and activations there")
    ops = [[layers[k][1] for k in range(a.index + 1, b.index)] for a, b in zip(weighted, weighted[1:])]
    n_inputs = weighted[0].mask.shape[1]
    inputs = torch.ones(n_inputs, dtype=torch.bool)

    def inputs_of(t: int) -> Tensor:
        return inputs if t == 0 else weighted[t - 1].keep.repeat_interleave(factors[t - 1])

    changed = True
    while changed:
        changed = False
        used = weighted[0].column_any(1)
        if used.any() and not torch.equal(used, inputs):
            changed |= bool((inputs & ~used).any())
            inputs &= used
        for t, (layer, nxt) in enumerate(zip(weighted, weighted[1:])):
            alive = layer.keep.clone()
            fan_out_dead = alive & ~nxt.column_any(factors[t])
            fan_in_dead = alive & ~layer.row_any(inputs_of(t)) & ~fan_out_dead
            fold = torch.zeros_like(alive)
            if fan_in_dead.any():
                values = _unit_outputs(layer, ops[t], shapes[layer.index + 1])
                for c in fan_in_dead.nonzero().flatten().tolist():
                    v = values[c]
                    if nxt.conv and (not torch.all(v == v[0]) or (nxt.zero_padded() and float(v[0]) != 0.0)):
                        continue  # not the same at every position, or zero padding makes the borders differ
                    fold[c] = True
            remove = fan_out_dead | fold
            if remove.any() and not (alive & ~remove).any():  # keep one unit: prefer one that is folded into nothing
                keep_one = int((fan_out_dead if fan_out_dead.any() else remove).nonzero()[0])
                remove[keep_one] = fold[keep_one] = fan_out_dead[keep_one] = False
            if not remove.any():
                continue
            for c in fold.nonzero().flatten().tolist():
                _fold(nxt, c, values[c], factors[t])
            layer.keep &= ~remove
            layer.folded += int(fold.sum())
            layer.dropped += int((remove & ~fold).sum())
            changed = True
    small = _build(layers, prefix, weighted, factors, inputs)
    return small.eval(), _report(model, mask, weighted, factors, inputs, small)


def _fold(nxt: _Layer, unit: int, value: Tensor, factor: int) -> None:
    """Add the constant output ``value`` of upstream ``unit`` to ``nxt``'s bias (through ``nxt``'s weights)."""
    if nxt.conv:
        contribution = nxt.weight[:, unit].reshape(nxt.weight.shape[0], -1).sum(1) * value[0]
    else:
        contribution = nxt.weight[:, unit * factor:(unit + 1) * factor] @ value.to(nxt.weight.dtype)
    if torch.count_nonzero(contribution):
        nxt.bias += contribution
        nxt.has_bias = True


def _new_weighted(layer: _Layer, inputs: Tensor) -> nn.Module:
    m = layer.module
    w = layer.weight[layer.keep][:, inputs]
    if layer.conv:
        new: nn.Module = type(m)(int(inputs.sum()), int(layer.keep.sum()), m.kernel_size, stride=m.stride,
                                 padding=m.padding, dilation=m.dilation, groups=1, bias=layer.has_bias,
                                 padding_mode=m.padding_mode)
    else:
        new = nn.Linear(int(inputs.sum()), int(layer.keep.sum()), bias=layer.has_bias)
    new = new.to(w.dtype)
    new.weight.data = w.clone().contiguous()
    if layer.has_bias:
        new.bias.data = layer.bias[layer.keep].clone()
    return new


def _sliced(op: nn.Module, keep: Tensor) -> nn.Module:
    if not isinstance(op, _BN):
        return copy.deepcopy(op)
    new = type(op)(int(keep.sum()), eps=op.eps, momentum=op.momentum, affine=op.affine, track_running_stats=True)
    state = {k: (v[keep].clone() if v.dim() == 1 and v.numel() == keep.numel() else v.clone())
             for k, v in op.state_dict().items()}
    new.load_state_dict(state)
    return new.to(op.running_mean.dtype)


def _build(layers: Sequence[tuple[str, nn.Module]], prefix: str, weighted: list[_Layer], factors: list[int],
           inputs: Tensor) -> nn.Sequential:
    by_index = {w.index: t for t, w in enumerate(weighted)}
    out: OrderedDict[str, nn.Module] = OrderedDict()
    current: Tensor | None = None  # channel keep flags of the running segment (None: nothing sliced)
    for k, (name, op) in enumerate(layers):
        short = name[len(prefix):].replace(".", "_")
        if k in by_index:
            t = by_index[k]
            if t == 0 and not bool(inputs.all()):
                out["select"] = Select(1, inputs.nonzero().flatten())
            in_keep = inputs if t == 0 else weighted[t - 1].keep.repeat_interleave(factors[t - 1])
            out[short] = _new_weighted(weighted[t], in_keep)
            current = weighted[t].keep if t < len(weighted) - 1 else None
        elif current is not None and isinstance(op, nn.Flatten):
            t = max(i for i in by_index if i < k)
            current = current.repeat_interleave(factors[by_index[t]])
            out[short] = copy.deepcopy(op)
        else:
            out[short] = _sliced(op, current) if current is not None else copy.deepcopy(op)
    return nn.Sequential(out)


def _report(model: nn.Module, mask: Mapping[str, Tensor], weighted: list[_Layer], factors: list[int], inputs: Tensor,
            small: nn.Module) -> dict[str, Any]:
    rows = []
    for t, layer in enumerate(weighted):
        rows.append({"layer": layer.name, "type": type(layer.module).__name__, "units": int(layer.keep.numel()),
                     "units_kept": int(layer.keep.sum()), "fan_out_pruned": layer.dropped,
                     "fan_in_pruned_folded": layer.folded,
                     "alive_weights": int(torch.count_nonzero(layer.mask)), "weights": int(layer.mask.numel())})
    before = sum(p.numel() for p in model.parameters())
    after = sum(p.numel() for p in small.parameters())
    return {"layers": rows, "inputs": int(inputs.numel()), "inputs_kept": int(inputs.sum()),
            "units_removed": sum(r["units"] - r["units_kept"] for r in rows),
            "parameters_before": before, "parameters_after": after}
