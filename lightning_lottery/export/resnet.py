"""Compaction of CIFAR ResNets (ResNet-20, any ``CifarResNet``): the internal channels of each basic block.

Pure torch, no Lightning (the model classes are recognised by name, not imported). On the masked network in eval
mode (BatchNorm with its running statistics), for each :class:`~lightning_lottery.models.resnet.BasicBlock`
``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``, a channel ``c`` of ``conv1``'s output (its filter, its
``bn1`` channel, ``conv2``'s input channel ``c``) is, by the mask:

* dropped when its fan-out is all pruned (``conv2.weight[:, c]`` all pruned): nothing reads it;
* dropped when its fan-in is all pruned (``conv1.weight[c]``) and its constant ``v = relu(bn1(0)) =
  relu(beta - gamma * mean / sqrt(var + eps))`` is 0: it feeds zeros, and zero padding feeds zeros too;
* folded when its fan-in is all pruned and ``v != 0``. Zero padding makes such a channel *not* spatially constant
  at ``conv2``'s borders, so it cannot go into a bias. By linearity, its effect is ``conv2`` applied to an image of
  ones: ``v * conv(1, conv2.weight[:, c])``, borders included. All folded channels of a block are summed into one
  ``[out, 1, 3, 3]`` kernel (``constant``) applied to a one-channel image of ones at batch 1 and broadcast: exact at
  every input size, for the cost of one small convolution.

The residual stream stays as it is: the stem, every block's output channels (``conv2`` filters, ``bn2``), the
shortcuts and ``fc``'s inputs, which the identity shortcuts tie together across blocks. A block left without
internal channels computes ``relu(bn2(constant term) + shortcut(x))``. The result is a :class:`CompactResNet`,
saved by :func:`~lightning_lottery.export.io.save_export` as safetensors + its JSON :meth:`~CompactResNet.architecture`.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from lightning_lottery.models.resnet import CifarResNet
    >>> net = CifarResNet(blocks=1, width=4).eval()
    >>> mask = {n: torch.ones_like(p, dtype=torch.bool) for n, p in net.named_parameters() if p.dim() > 1}
    >>> mask["stage1.block1.conv2.weight"][:, :3] = False  # conv1 filters 0..2 of block 1: nobody reads them
    >>> small, report = compact_resnet(net, mask, (3, 8, 8))
    >>> small.blocks.stage1_block1.mid_channels, report["channels_removed"]
    (1, 3)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_lottery.export.chain import default_input_shape, masked_copy, plain_network
from lightning_lottery.export.layers import UnsupportedModelError

__all__ = ["CompactBlock", "CompactResNet", "compact_resnet", "describe_resnet_report", "is_cifar_resnet"]

_MODELS = "lightning_lottery.models.resnet"
_STAGES = ("stage1", "stage2", "stage3")  # what CifarResNet.forward runs, in order


def _is(module: nn.Module, qualname: str) -> bool:
    """``module`` is exactly ``lightning_lottery.models.resnet.<qualname>`` (a subclass may change the forward)."""
    return type(module).__module__ == _MODELS and type(module).__qualname__ == qualname


def is_cifar_resnet(model: nn.Module) -> bool:
    """Whether ``model`` is a ``CifarResNet`` or a reference model whose network is one (ResNet-20)."""
    return _is(plain_network(model), "CifarResNet")


class CompactBlock(nn.Module):
    """A basic block with ``mid_channels`` internal channels and, with ``constant``, the folded constant channels'
    kernel: ``relu(bn2(conv2(relu(bn1(conv1(x)))) + conv(ones, constant)) + shortcut(x))``.

    Example:
        >>> CompactBlock(4, 2, 8, stride=2, projection=True)(torch.zeros(3, 4, 8, 8)).shape
        torch.Size([3, 8, 4, 4])
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, stride: int = 1,
                 projection: bool = False, constant: bool = False) -> None:
        super().__init__()
        self.in_channels, self.mid_channels, self.out_channels = int(in_channels), int(mid_channels), int(out_channels)
        self.stride, self.projection = int(stride), bool(projection)
        if self.mid_channels:
            self.conv1 = nn.Conv2d(self.in_channels, self.mid_channels, 3, stride=self.stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(self.mid_channels)
            self.conv2 = nn.Conv2d(self.mid_channels, self.out_channels, 3, padding=1, bias=False)
        self.has_constant = bool(constant) or not self.mid_channels
        if self.has_constant:
            self.register_buffer("constant", torch.zeros(self.out_channels, 1, 3, 3))
        self.bn2 = nn.BatchNorm2d(self.out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if self.projection:
            self.shortcut = nn.Sequential(OrderedDict(
                conv=nn.Conv2d(self.in_channels, self.out_channels, 1, stride=self.stride, bias=False),
                bn=nn.BatchNorm2d(self.out_channels)))

    def arguments(self) -> dict[str, Any]:
        """The constructor's arguments (JSON)."""
        return {"in_channels": self.in_channels, "mid_channels": self.mid_channels, "out_channels": self.out_channels,
                "stride": self.stride, "projection": self.projection, "constant": self.has_constant}

    def forward(self, x: Tensor) -> Tensor:
        pre: Tensor | None = None
        if self.mid_channels:
            pre = self.conv2(F.relu(self.bn1(self.conv1(x))))
        if self.has_constant:  # conv1's output size: ceil(size / stride), as the strided slice has
            ones = torch.ones_like(x[:1, :1, ::self.stride, ::self.stride])
            border = F.conv2d(ones, self.constant, padding=1)
            pre = border if pre is None else pre + border
        assert pre is not None
        return F.relu(self.bn2(pre) + self.shortcut(x))

    def extra_repr(self) -> str:
        return f"mid_channels={self.mid_channels}, constant={self.has_constant}"


class CompactResNet(nn.Module):
    """A CIFAR ResNet with per-block internal widths: conv-BN-ReLU stem (``width`` channels), the
    :class:`CompactBlock` ``blocks`` (their :meth:`CompactBlock.arguments` plus a ``name``), average pool, ``fc``.

    Example:
        >>> arch = {"in_channels": 3, "width": 4, "num_classes": 10, "blocks": [
        ...     {"name": "stage1_block1", "in_channels": 4, "mid_channels": 1, "out_channels": 4}]}
        >>> net = CompactResNet(**arch)
        >>> net(torch.zeros(2, 3, 8, 8)).shape, CompactResNet(**net.architecture()).architecture() == net.architecture()
        (torch.Size([2, 10]), True)
    """

    def __init__(self, in_channels: int = 3, width: int = 16, num_classes: int = 10,
                 blocks: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__()
        self.conv = nn.Conv2d(int(in_channels), int(width), 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(int(width))
        self.blocks = nn.Sequential(OrderedDict(
            (str(b["name"]), CompactBlock(**{k: v for k, v in b.items() if k != "name"})) for b in blocks))
        channels = int(blocks[-1]["out_channels"]) if blocks else int(width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, int(num_classes))

    def architecture(self) -> dict[str, Any]:
        """The constructor's arguments (what ``model.json`` records)."""
        return {"in_channels": self.conv.in_channels, "width": self.conv.out_channels,
                "num_classes": self.fc.out_features,
                "blocks": [{"name": n, **b.arguments()} for n, b in self.blocks.named_children()]}  # type: ignore

    def forward(self, x: Tensor) -> Tensor:
        out = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(self.pool(out).flatten(1))


def _check_bn(bn: nn.Module, name: str) -> None:
    if not isinstance(bn, nn.BatchNorm2d) or bn.running_mean is None or bn.running_var is None:
        raise UnsupportedModelError(f"module {name!r} ({type(bn).__name__}) has no running statistics: compaction "
                                    "folds BatchNorm in eval mode only")


@torch.no_grad()
def _block(block: nn.Module, name: str, mask: Mapping[str, Tensor]) -> tuple[CompactBlock, dict[str, Any]]:
    """The compacted ``block`` (weights already masked) and its report row."""
    if not _is(block, "BasicBlock"):
        raise UnsupportedModelError(f"module {name!r} ({type(block).__module__}.{type(block).__qualname__}) is not a "
                                    "BasicBlock: ResNet compaction rewrites BasicBlocks only")
    conv1, conv2 = block.conv1, block.conv2
    if conv1.bias is not None or conv2.bias is not None:
        raise UnsupportedModelError(f"module {name!r}: convolutions with a bias are not supported by compaction")
    for part in ("bn1", "bn2"):
        _check_bn(getattr(block, part), f"{name}.{part}")
    channels = conv1.out_channels
    ones = torch.ones(channels, dtype=torch.bool)
    m1, m2 = mask.get(f"{name}.conv1.weight"), mask.get(f"{name}.conv2.weight")
    fan_in = m1.to(torch.bool).reshape(channels, -1).any(1) if m1 is not None else ones
    fan_out = m2.to(torch.bool).transpose(0, 1).reshape(channels, -1).any(1) if m2 is not None else ones
    value = F.relu(block.bn1(torch.zeros(1, channels, 1, 1, dtype=conv1.weight.dtype))).flatten()
    dead_in = fan_out & ~fan_in
    zero, folded = dead_in & (value == 0), dead_in & (value != 0)
    keep = fan_in & fan_out
    projection = not isinstance(block.shortcut, nn.Identity)
    if projection:
        _check_bn(block.shortcut.bn, f"{name}.shortcut.bn")
    small = CompactBlock(conv1.in_channels, int(keep.sum()), conv2.out_channels, conv1.stride[0], projection,
                         bool(folded.any())).to(conv1.weight.dtype)
    state: dict[str, Tensor] = {}
    for key, t in block.state_dict().items():
        part = key.split(".")[0]
        if part == "conv1" or (part == "bn1" and t.dim() == 1):
            t = t[keep]
        elif part == "conv2":
            t = t[:, keep]
        if part in ("conv1", "bn1", "conv2") and not small.mid_channels:
            continue
        state[key] = t.clone()
    if small.has_constant:
        w = conv2.weight[:, folded] * value[folded].view(1, -1, 1, 1)
        state["constant"] = w.sum(1, keepdim=True)
    small.load_state_dict(state, strict=True)
    row = {"block": name, "channels": channels, "channels_kept": int(keep.sum()),
           "fan_out_pruned": int((~fan_out).sum()), "fan_in_pruned_zero": int(zero.sum()),
           "fan_in_pruned_folded": int(folded.sum())}
    return small.eval(), row


@torch.no_grad()
def compact_resnet(model: nn.Module, mask: Mapping[str, Tensor], input_shape: Sequence[int] | None = None,
                   ) -> tuple[CompactResNet, dict[str, Any]]:
    """The :class:`CompactResNet` computing what ``model`` (a ``CifarResNet`` or ResNet-20) computes under ``mask``,
    and a report of the internal channels removed per block. Raises :class:`UnsupportedModelError` naming the
    module that cannot be compacted."""
    ref = masked_copy(model, mask)
    net = plain_network(ref)
    prefix = "net." if net is not ref else ""
    if not _is(net, "CifarResNet"):
        raise UnsupportedModelError(f"module {prefix[:-1] or type(model).__name__!r} ({type(net).__qualname__}) is "
                                    "not a lightning_lottery.models.resnet.CifarResNet")
    shape = tuple(input_shape) if input_shape is not None else default_input_shape(model)
    if shape is None:
        raise UnsupportedModelError(f"pass input_shape: the shape of one input of {type(model).__name__} is unknown")
    _check_bn(net.bn, f"{prefix}bn")
    blocks: OrderedDict[str, CompactBlock] = OrderedDict()
    rows = []
    for stage in _STAGES:
        for bname, block in getattr(net, stage).named_children():
            blocks[f"{stage}_{bname}"], row = _block(block, f"{prefix}{stage}.{bname}", mask)
            rows.append(row)
    arch = [{"name": n, **b.arguments()} for n, b in blocks.items()]
    small = CompactResNet(net.conv.in_channels, net.conv.out_channels, net.fc.out_features, arch)
    small = small.to(net.conv.weight.dtype)
    state = {f"{part}.{k}": v for part in ("conv", "bn", "fc") for k, v in getattr(net, part).state_dict().items()}
    state.update({f"blocks.{n}.{k}": v for n, b in blocks.items() for k, v in b.state_dict().items()})
    small.load_state_dict(state, strict=True)
    small.eval()
    example = torch.randn(2, *shape, dtype=net.conv.weight.dtype)
    want, got = ref(example), small(example)
    if not torch.allclose(got, want, rtol=1e-4, atol=1e-5):  # a model whose forward is not CifarResNet's
        raise UnsupportedModelError(f"{type(model).__name__}: the compacted network does not reproduce the masked "
                                    f"one (max difference {float((got - want).abs().max()):.3g})")
    before = sum(p.numel() for p in model.parameters())
    after = sum(p.numel() for p in small.parameters()) + sum(b.constant.numel() for b in blocks.values()
                                                             if b.has_constant)
    removed = sum(r["channels"] - r["channels_kept"] for r in rows)
    return small, {"kind": "resnet", "blocks": rows, "channels_removed": removed, "units_removed": removed,
                   "residual_channels": "kept (stem, block outputs, shortcuts and fc inputs)",
                   "parameters_before": before, "parameters_after": after}


def describe_resnet_report(comp: Mapping[str, Any]) -> list[str]:
    """The lines of ``lightning-lottery export``'s output for a ResNet compaction report."""
    lines = [(f"internal block channels removed {comp['channels_removed']}; residual channels "
              f"{comp['residual_channels']}; parameters {comp['parameters_before']:,} -> "
              f"{comp['parameters_after']:,}")]
    for r in comp["blocks"]:
        lines.append(f"  {r['block']}: {r['channels_kept']}/{r['channels']} internal channels kept "
                     f"({r['fan_out_pruned']} with all fan-out pruned, {r['fan_in_pruned_zero']} with all fan-in "
                     f"pruned and constant 0, {r['fan_in_pruned_folded']} constant, folded into the block's "
                     "constant term)")
    return lines
