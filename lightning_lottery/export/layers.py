"""The layers an exported model is made of, and their JSON descriptions (no pickle). Pure torch, no Lightning.

An exported chain is an ``nn.Sequential`` whose layers are described by ``{"name", "type", "args"}``: the type is
one of :data:`LAYER_ARGS` (plus :class:`Select` and :class:`SparseLinear`, defined here) and ``args`` its
constructor's arguments, read back from the module's attributes. Tensors travel separately, in safetensors.

Example:
    >>> from torch import nn
    >>> describe(nn.Linear(3, 2))
    {'type': 'Linear', 'args': {'in_features': 3, 'out_features': 2, 'bias': True}}
    >>> build(describe(nn.MaxPool2d(2)))
    MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from lightning_lottery.masks import MaskError

__all__ = ["LAYER_ARGS", "FeatureMajorLinear", "FromFeatureMajor", "LinearStack", "Select", "SparseLinear",
           "ToFeatureMajor", "UnsupportedModelError", "build", "describe", "fuse_linear_relu"]


class UnsupportedModelError(MaskError):
    """The model (or one of its modules, named in the message) cannot be exported in the requested format."""


class Select(nn.Module):
    """Keep the entries ``index`` of dimension ``dim`` (the inputs a compacted first layer still reads).

    Example:
        >>> Select(1, torch.tensor([0, 2]))(torch.tensor([[1.0, 2.0, 3.0]]))
        tensor([[1., 3.]])
    """

    def __init__(self, dim: int = 1, index: Tensor | None = None, size: int | None = None) -> None:
        super().__init__()
        self.dim = int(dim)
        if index is None:
            index = torch.zeros(int(size or 0), dtype=torch.long)
        self.register_buffer("index", index.to(torch.long).clone())

    @property
    def size(self) -> int:
        return int(self.index.numel())

    def forward(self, x: Tensor) -> Tensor:
        return x.index_select(self.dim, self.index)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, size={self.size}"


#: CSR index dtype: int32, MKL's LP64 index type. torch hands int64 indices to MKL as an int32 copy made at every
#: call, which cost fc1 of the default ticket more than half its sparse time (docs/performance.md, "Export").
_INDEX = torch.int32


class SparseLinear(nn.Module):
    """A Linear layer whose weight is a ``torch.sparse_csr`` matrix: ``y = x Wᵀ + b`` as ``addmm(b, W, xᵀ)ᵀ``.

    The CSR components are buffers (``crow_indices``, ``col_indices``, ``values``), so ``state_dict`` holds plain
    dense tensors that safetensors can store. Inputs may have extra leading dimensions, as with ``nn.Linear``.

    Example:
        >>> dense = nn.Linear(4, 3)
        >>> with torch.no_grad():
        ...     _ = dense.weight.mul_(torch.rand(3, 4) < 0.5)
        >>> x = torch.randn(5, 4)
        >>> bool(torch.allclose(SparseLinear.from_linear(dense)(x), dense(x), atol=1e-6))
        True
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, nnz: int = 0,
                 feature_major: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.feature_major = bool(feature_major)  # inputs [features, batch] (see ToFeatureMajor), outputs too
        self.register_buffer("crow_indices", torch.zeros(self.out_features + 1, dtype=_INDEX))
        self.register_buffer("col_indices", torch.zeros(int(nnz), dtype=_INDEX))
        self.register_buffer("values", torch.zeros(int(nnz)))
        self.bias = nn.Parameter(torch.zeros(self.out_features)) if bias else None
        self._csr: Tensor | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, feature_major: bool = False) -> SparseLinear:
        """The CSR form of ``linear`` (its exact zeros are left out)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
            csr = linear.weight.detach().to_sparse_csr()
        out = cls(linear.in_features, linear.out_features, linear.bias is not None, int(csr.values().numel()),
                  feature_major)
        index = _INDEX if csr.values().numel() < 2 ** 31 else torch.long
        out.crow_indices = csr.crow_indices().to(index)
        out.col_indices = csr.col_indices().to(index)
        out.values = csr.values().clone().to(linear.weight.dtype)
        if linear.bias is not None:
            assert out.bias is not None
            out.bias.data = linear.bias.detach().clone()
        return out

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any, **kwargs: Any) -> None:
        for key in ("crow_indices", "col_indices", "values"):  # the stored length (nnz) and index dtype
            if prefix + key in state_dict:
                setattr(self, key, torch.empty_like(state_dict[prefix + key]))
        self._csr = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def weight_csr(self) -> Tensor:
        """The weight as a ``torch.sparse_csr`` tensor (built once; it shares the buffers' memory)."""
        if self._csr is None or self._csr.device != self.values.device:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
                self._csr = torch.sparse_csr_tensor(self.crow_indices, self.col_indices, self.values,
                                                    (self.out_features, self.in_features))
        return self._csr

    def forward(self, x: Tensor) -> Tensor:
        if self.feature_major:
            if self.bias is not None:
                return torch.addmm(self.bias.unsqueeze(1), self.weight_csr(), x)
            return torch.mm(self.weight_csr(), x)
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_features)
        if self.bias is not None:
            y = torch.addmm(self.bias.unsqueeze(1), self.weight_csr(), flat.t())
        else:
            y = torch.mm(self.weight_csr(), flat.t())
        return y.t().reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, " \
               f"nnz={self.nnz}" + (", feature_major=True" if self.feature_major else "")


class ToFeatureMajor(nn.Module):
    """``[batch, features]`` → a contiguous ``[features, batch]``: the layout in which ``torch.sparse_csr`` products
    need no transposed operand (faster here, docs/performance.md). :class:`FromFeatureMajor` turns it back."""

    def forward(self, x: Tensor) -> Tensor:
        return x.t().contiguous()


class FromFeatureMajor(nn.Module):
    """``[features, batch]`` → ``[batch, features]`` (a view)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.t()


class FeatureMajorLinear(nn.Linear):
    """``nn.Linear`` on ``[features, batch]`` inputs: ``W x + b`` (a dense layer between sparse ones)."""

    def forward(self, x: Tensor) -> Tensor:
        if self.bias is not None:
            return torch.addmm(self.bias.unsqueeze(1), self.weight, x)
        return torch.mm(self.weight, x)


class LinearStack(nn.Module):
    """A run of Linear layers, each optionally followed by ReLU, as one module: ``addmm(b, x, Wᵀ)`` on weights
    stored transposed (``[in, out]``, contiguous) and ReLU in place. It computes what the run computes, without a
    module call, ``F.linear``'s transposition and a ReLU allocation per layer: at batch 1 that overhead is most of
    a small compacted network's time (docs/performance.md, "Export").

    Example:
        >>> run = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> x = torch.randn(5, 4)
        >>> bool(torch.allclose(fuse_linear_relu(run)(x), run(x), atol=1e-6))
        True
    """

    def __init__(self, sizes: list[int] | tuple[int, ...] = (1, 1), relu: list[bool] | tuple[bool, ...] = (False,)):
        super().__init__()
        self.sizes, self.relu = [int(n) for n in sizes], [bool(r) for r in relu]
        for i, (a, b) in enumerate(zip(self.sizes, self.sizes[1:])):
            self.register_buffer(f"weight_t{i}", torch.zeros(a, b))
            self.register_buffer(f"bias{i}", torch.zeros(b))
        self._steps = [(f"weight_t{i}", f"bias{i}", r) for i, r in enumerate(self.relu)]  # names, looked up per call

    @classmethod
    def from_layers(cls, layers: list[tuple[nn.Linear, bool]]) -> LinearStack:
        out = cls([layers[0][0].in_features] + [m.out_features for m, _ in layers], [r for _, r in layers])
        for i, (m, _) in enumerate(layers):
            getattr(out, f"weight_t{i}").copy_(m.weight.detach().t())
            if m.bias is not None:
                getattr(out, f"bias{i}").copy_(m.bias.detach())
        return out.to(layers[0][0].weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        buffers = self._buffers  # not nn.Module.__getattr__: this forward is per-call overhead and little else
        h = x if x.dim() == 2 else x.reshape(-1, self.sizes[0])
        for weight, bias, relu in self._steps:
            h = torch.addmm(buffers[bias], h, buffers[weight])  # type: ignore[arg-type]
            if relu:
                h = h.relu_()
        return h if x.dim() == 2 else h.reshape(*x.shape[:-1], self.sizes[-1])

    def extra_repr(self) -> str:
        return f"sizes={self.sizes}, relu={self.relu}"


def fuse_linear_relu(seq: nn.Sequential) -> nn.Sequential:
    """``seq`` with every run of ``nn.Linear`` (each optionally followed by ``nn.ReLU``) as one :class:`LinearStack`
    (named after the run's first layer); other layers unchanged (the same modules)."""
    from collections import OrderedDict

    children = list(seq.named_children())
    out: OrderedDict[str, nn.Module] = OrderedDict()
    i = 0
    while i < len(children):
        run, first = [], children[i][0]
        while i < len(children) and type(children[i][1]) is nn.Linear:
            relu = i + 1 < len(children) and type(children[i + 1][1]) is nn.ReLU
            run.append((children[i][1], relu))
            i += 2 if relu else 1
        if run:
            out[first] = LinearStack.from_layers(run)  # type: ignore[arg-type]
        else:
            out[children[i][0]] = children[i][1]
            i += 1
    return nn.Sequential(out).eval()


#: Layer types an exported chain may contain, with the attributes that rebuild them (the constructor's arguments).
_CONV = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias", "padding_mode")
_BN = ("num_features", "eps", "momentum", "affine", "track_running_stats")
_MAXPOOL = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")
_AVGPOOL = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad")
LAYER_ARGS: dict[str, tuple[type[nn.Module], tuple[str, ...]]] = {
    "Linear": (nn.Linear, ("in_features", "out_features", "bias")),
    "Conv1d": (nn.Conv1d, _CONV), "Conv2d": (nn.Conv2d, _CONV), "Conv3d": (nn.Conv3d, _CONV),
    "BatchNorm1d": (nn.BatchNorm1d, _BN), "BatchNorm2d": (nn.BatchNorm2d, _BN), "BatchNorm3d": (nn.BatchNorm3d, _BN),
    "ReLU": (nn.ReLU, ()), "ReLU6": (nn.ReLU6, ()), "LeakyReLU": (nn.LeakyReLU, ("negative_slope",)),
    "ELU": (nn.ELU, ("alpha",)), "GELU": (nn.GELU, ("approximate",)), "SiLU": (nn.SiLU, ()), "Tanh": (nn.Tanh, ()),
    "Sigmoid": (nn.Sigmoid, ()), "Hardtanh": (nn.Hardtanh, ("min_val", "max_val")), "Identity": (nn.Identity, ()),
    "Dropout": (nn.Dropout, ("p",)), "Dropout1d": (nn.Dropout1d, ("p",)), "Dropout2d": (nn.Dropout2d, ("p",)),
    "Flatten": (nn.Flatten, ("start_dim", "end_dim")),
    "MaxPool1d": (nn.MaxPool1d, _MAXPOOL), "MaxPool2d": (nn.MaxPool2d, _MAXPOOL), "MaxPool3d": (nn.MaxPool3d, _MAXPOOL),
    "AvgPool1d": (nn.AvgPool1d, _AVGPOOL), "AvgPool2d": (nn.AvgPool2d, _AVGPOOL),
    "AdaptiveAvgPool1d": (nn.AdaptiveAvgPool1d, ("output_size",)),
    "AdaptiveAvgPool2d": (nn.AdaptiveAvgPool2d, ("output_size",)),
    "AdaptiveMaxPool2d": (nn.AdaptiveMaxPool2d, ("output_size",)),
}
#: Types that act on each channel (or feature) alone and keep a constant channel constant.
ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Hardtanh,
               nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d)
POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
         nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Tensor):
        return value.tolist()
    return value


def describe(module: nn.Module, name: str = "") -> dict[str, Any]:
    """``{"type", "args"}`` of a supported layer; :class:`UnsupportedModelError` naming it otherwise."""
    if isinstance(module, Select):
        return {"type": "Select", "args": {"dim": module.dim, "size": module.size}}
    if isinstance(module, SparseLinear):
        return {"type": "SparseLinear", "args": {"in_features": module.in_features, "out_features": module.out_features,
                                                 "bias": module.bias is not None, "nnz": module.nnz,
                                                 "feature_major": module.feature_major}}
    if type(module) is LinearStack:
        return {"type": "LinearStack", "args": {"sizes": module.sizes, "relu": module.relu}}
    if type(module) in (ToFeatureMajor, FromFeatureMajor):
        return {"type": type(module).__name__, "args": {}}
    if type(module) is FeatureMajorLinear:
        return {"type": "FeatureMajorLinear", "args": {"in_features": module.in_features,
                                                       "out_features": module.out_features,
                                                       "bias": module.bias is not None}}
    kind = type(module).__name__
    if kind not in LAYER_ARGS or type(module) is not LAYER_ARGS[kind][0]:
        raise UnsupportedModelError(
            f"module {name or kind!r} ({type(module).__module__}.{type(module).__qualname__}) is not a layer an "
            f"exported chain can hold (supported: {', '.join(sorted(LAYER_ARGS))})")
    args = {}
    for attr in LAYER_ARGS[kind][1]:
        value = getattr(module, attr)
        if attr == "bias":
            value = value is not None
        args[attr] = _jsonable(value)
    return {"type": kind, "args": args}


def build(spec: dict[str, Any]) -> nn.Module:
    """The layer a :func:`describe` entry stands for (freshly initialized; load its tensors after)."""
    kind, args = spec["type"], dict(spec.get("args") or {})
    if kind == "Select":
        return Select(args.get("dim", 1), size=args.get("size", 0))
    if kind == "SparseLinear":
        return SparseLinear(**args)
    extra = {"LinearStack": LinearStack, "ToFeatureMajor": ToFeatureMajor, "FromFeatureMajor": FromFeatureMajor,
             "FeatureMajorLinear": FeatureMajorLinear}
    if kind in extra:
        return extra[kind](**args)
    if kind not in LAYER_ARGS:
        raise UnsupportedModelError(f"exported layer type {kind!r} is unknown (known: {', '.join(sorted(LAYER_ARGS))})")
    cls = LAYER_ARGS[kind][0]
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}
    return cls(**args)
