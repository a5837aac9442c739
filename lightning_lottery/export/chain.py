"""A model as a chain of layers: which graphs export can rebuild, the masked reference, the example input.

Pure torch, no Lightning. A chain is the leaves of an ``nn.Sequential`` (nested ones flattened) in order; the
reference models (``ImageClassifier`` subclasses) are their ``net`` when it is one: LeNet-300-100, Conv-2/4/6 and
VGG are; ResNet-20 is not (its blocks add a shortcut), and :func:`model_chain` says so, naming the module.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_lottery.export.layers import UnsupportedModelError, describe

__all__ = ["default_input_shape", "masked_copy", "model_chain", "plain_network", "set_submodule"]


def _forwards_net(model: nn.Module) -> bool:
    """Whether ``model.forward`` is ``self.net(x)`` (the reference models' ``ImageClassifier.forward``)."""
    forward = getattr(type(model), "forward", None)
    return isinstance(getattr(model, "net", None), nn.Module) and \
        getattr(forward, "__qualname__", "") == "ImageClassifier.forward"


def plain_network(model: nn.Module) -> nn.Module:
    """``model.net`` for the reference models (their forward is ``self.net(x)``), else ``model``: the network
    without the LightningModule's call overhead (the fair baseline of a benchmark)."""
    return model.net if _forwards_net(model) else model


def model_chain(model: nn.Module) -> tuple[str, list[tuple[str, nn.Module]]]:
    """``(prefix, [(full name, layer), ...])``: the layers ``model`` applies one after the other.

    ``prefix`` is ``"net."`` for the reference models (their forward is ``self.net(x)``), else ``""``. Raises
    :class:`UnsupportedModelError` naming the first module that is not a supported layer or not a chain.
    """
    root, prefix = model, ""
    if not isinstance(model, nn.Sequential) and _forwards_net(model):
        root, prefix = model.net, "net."
    if not isinstance(root, nn.Sequential):
        where = prefix[:-1] or type(model).__name__
        raise UnsupportedModelError(
            f"module {where!r} ({type(root).__qualname__}) is not an nn.Sequential: its forward is its own code (e.g. "
            "residual adds), which compaction cannot rewrite. Compaction supports nn.Sequential chains of "
            "Linear/Conv/BatchNorm/activation/Flatten/Pool layers, the reference models LeNet300100, ConvNet and "
            "VGG, and ResNet-20 / CifarResNet (export.resnet); --format sparse (Linear layers only) works for any "
            "model")
    out: list[tuple[str, nn.Module]] = []

    def walk(seq: nn.Sequential, base: str) -> None:
        for name, child in seq.named_children():
            full = f"{base}{name}"
            if isinstance(child, nn.Sequential):
                walk(child, full + ".")
            else:
                describe(child, full)  # raises for an unsupported layer, naming it
                out.append((full, child))

    walk(root, prefix)
    if not out:
        raise UnsupportedModelError(f"{type(model).__name__} has no layers to export")
    return prefix, out


def default_input_shape(model: nn.Module) -> tuple[int, ...] | None:
    """One sample's shape for the reference models, from their hyperparameters (``None`` if unknown)."""
    hp: Mapping[str, Any] = getattr(model, "hparams", None) or {}
    kind = type(model).__name__
    if kind == "LeNet300100":
        return (int(hp.get("in_features", 784)),)
    if kind == "ConvNet":
        size = int(hp.get("image_size", 32))
        return (int(hp.get("in_channels", 3)), size, size)
    if kind in ("VGG", "ResNet20"):
        return (int(hp.get("in_channels", 3)), 32, 32)
    if kind == "CifarResNet":
        return (int(model.conv.in_channels), 32, 32)  # type: ignore[union-attr]
    first = next((m for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))), None)
    if isinstance(first, nn.Linear):
        return (first.in_features,)
    return None


@torch.no_grad()
def masked_copy(model: nn.Module, mask: Mapping[str, Tensor]) -> nn.Module:
    """A copy of ``model`` in eval mode with every masked parameter multiplied by its mask (the reference)."""
    out = copy.deepcopy(model).eval()
    params = dict(out.named_parameters())
    for name, m in mask.items():
        if name not in params:
            raise UnsupportedModelError(f"mask parameter {name!r} is not a parameter of {type(model).__name__}")
        params[name].mul_(m.to(params[name].device))
    return out


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule ``name`` (dotted) of ``root`` by ``module``."""
    parent_name, _, leaf = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, module)


def check_chain_is_forward(model: nn.Module, layers: Sequence[tuple[str, nn.Module]], example: Tensor) -> None:
    """Raise if running ``layers`` one after the other does not give ``model(example)`` (a forward that is not its
    chain: a skipped layer, a functional op in between)."""
    x = example
    with torch.no_grad():
        for _, layer in layers:
            x = layer(x)
        ref = model(example)
    if not isinstance(ref, Tensor) or ref.shape != x.shape or not torch.allclose(ref, x, rtol=1e-4, atol=1e-5):
        raise UnsupportedModelError(
            f"{type(model).__name__}.forward is not the chain of its layers (running them in order gives other "
            "outputs): compaction cannot rebuild it; --format sparse works for any model")
