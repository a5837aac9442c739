"""Saving and loading exported models: ``model.safetensors`` + ``model.json`` (no pickle), ``model.onnx`` when
``onnx`` is installed. Pure torch, no Lightning.

``model.json`` holds ``{"format": "lightning-lottery-export", "version": 1, "kind", "input_shape", ...}``:

* ``kind: "chain"`` (compact, and sparse over a compacted chain): ``layers`` is the list of
  ``{"name", "type", "args"}`` of :func:`~lightning_lottery.export.layers.describe`; loading builds an
  ``nn.Sequential`` of them and loads the tensors;
* ``kind: "resnet"`` (compact ResNet-20 / ``CifarResNet``): ``architecture``, the arguments of
  :class:`~lightning_lottery.export.resnet.CompactResNet` (per-block internal widths); loading builds it;
* ``kind: "module"`` (sparse over a model that is not a chain, e.g. ResNet-20): ``class_path`` and ``init_args``
  of the original model and ``sparse`` (the names of its SparseLinear modules); loading imports that class,
  instantiates it, swaps those modules and loads the tensors. Only a class is imported; no object is unpickled.

Example:
    >>> import tempfile, torch
    >>> from torch import nn
    >>> d = tempfile.mkdtemp()
    >>> net = nn.Sequential(nn.Linear(3, 2), nn.ReLU())
    >>> _ = save_export(net, d, input_shape=(3,), onnx=False)
    >>> x = torch.randn(4, 3)
    >>> bool(torch.equal(load_export(d)(x), net(x)))
    True
"""

from __future__ import annotations

import importlib
import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_lottery.atomic import atomic_write_bytes
from lightning_lottery.export.chain import set_submodule
from lightning_lottery.export.layers import SparseLinear, UnsupportedModelError, build, describe
from lightning_lottery.export.resnet import CompactResNet
from lightning_lottery.masks import MaskError, read_safetensors

__all__ = ["load_export", "read_export_info", "save_export"]

FORMAT = "lightning-lottery-export"
MODEL_FILE, INFO_FILE, ONNX_FILE = "model.safetensors", "model.json", "model.onnx"


def _class_path(model: nn.Module) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


def _init_args(model: nn.Module) -> dict[str, Any]:
    hp = getattr(model, "hparams", None)
    if hp is None:
        raise UnsupportedModelError(f"{type(model).__name__} records no hyperparameters (hparams): a model that is "
                                    "not a chain is saved as its class + init_args, which need them")
    return json.loads(json.dumps(dict(hp), default=list))


def save_export(model: nn.Module, directory: str | Path, *, input_shape: Sequence[int], source: nn.Module | None = None,
                info: Mapping[str, Any] | None = None, onnx: bool | None = None) -> dict[str, Any]:
    """Write ``model`` to ``directory``; return the JSON written.

    An ``nn.Sequential`` of supported layers is saved as a chain; anything else as ``source``'s class (the original
    model, default ``model``) with its SparseLinear replacements. ``onnx=None`` writes ``model.onnx`` when the
    ``onnx`` package is importable (``True`` requires it, ``False`` skips it); the JSON says whether it was written.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"format": FORMAT, "version": 1, "input_shape": [int(s) for s in input_shape]}
    if isinstance(model, nn.Sequential) and all(not isinstance(m, nn.Sequential) for m in model.children()):
        doc["kind"] = "chain"
        doc["layers"] = [{"name": n, **describe(m, n)} for n, m in model.named_children()]
    elif type(model) is CompactResNet:
        doc.update(kind="resnet", architecture=model.architecture())
    else:
        base = source if source is not None else model
        doc.update(kind="module", class_path=_class_path(base), init_args=_init_args(base),
                   sparse={n: {"in_features": m.in_features, "out_features": m.out_features,
                               "bias": m.bias is not None, "nnz": m.nnz}
                           for n, m in model.named_modules() if isinstance(m, SparseLinear)})
    doc.update(dict(info or {}))
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if isinstance(v, Tensor)}
    atomic_write_bytes(directory / MODEL_FILE, save(tensors, metadata={"format": FORMAT}))
    doc["onnx"] = _write_onnx(model, directory / ONNX_FILE, input_shape, onnx)  # file name, None or why not
    atomic_write_bytes(directory / INFO_FILE, (json.dumps(doc, indent=2, default=str) + "\n").encode())
    return doc


def _write_onnx(model: nn.Module, path: Path, input_shape: Sequence[int], wanted: bool | None) -> str | None:
    if wanted is False:
        return None
    try:
        import onnx  # noqa: F401
    except ImportError:
        if wanted:
            raise UnsupportedModelError("ONNX export needs the onnx package: pip install onnx") from None
        return None
    if any(isinstance(m, SparseLinear) for m in model.modules()):
        return None  # ONNX has no CSR matmul: the sparse model is not exported as ONNX
    try:
        torch.onnx.export(model.eval(), (torch.zeros(2, *input_shape),), str(path), input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                          dynamo=False)
    except Exception as err:  # the exporter's own errors (a missing onnxscript, an unsupported op)
        if wanted:
            raise UnsupportedModelError(f"ONNX export failed: {err}".splitlines()[0]) from err
        return f"not written: {err}".splitlines()[0]
    return path.name


def read_export_info(directory: str | Path) -> dict[str, Any]:
    """The ``model.json`` of an export directory (``MaskError`` naming the path when it is not one)."""
    path = Path(directory) / INFO_FILE
    if not path.is_file():
        raise MaskError(f"{directory}: not an exported model (no {INFO_FILE})")
    doc = json.loads(path.read_text())
    if doc.get("format") != FORMAT:
        raise MaskError(f"{path}: not a lightning-lottery export (format {doc.get('format')!r})")
    return doc


def load_export(directory: str | Path) -> nn.Module:
    """The model saved by :func:`save_export` in ``directory``, in eval mode."""
    doc = read_export_info(directory)
    tensors, _ = read_safetensors(Path(directory) / MODEL_FILE)
    if doc["kind"] == "chain":
        model: nn.Module = nn.Sequential(OrderedDict((spec["name"], build(spec)) for spec in doc["layers"]))
    elif doc["kind"] == "resnet":
        model = CompactResNet(**doc["architecture"])
    else:
        module_name, _, cls_name = doc["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module_name), cls_name)
        model = cls(**doc.get("init_args", {}))
        for name, args in doc.get("sparse", {}).items():
            set_submodule(model, name, SparseLinear(**args))
    model.load_state_dict(tensors, strict=True)
    return model.eval()
