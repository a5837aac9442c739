"""Theoretical cost of a sparse network: multiply-accumulates (MACs) per weight, measured with one forward pass.

A weight of a ``Linear`` layer is used once per sample (times the extra leading dimensions beyond the batch,
e.g. sequence length); a weight of a ``ConvNd`` layer once per output position; a weight of a
``ConvTransposeNd`` layer once per input position. Pruning a weight removes exactly those MACs, so the
theoretical speedup of a mask is dense MACs / MACs of the alive weights (Blalock et al. 2020 report it next to
the compression ratio). Pure torch, no Lightning.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 5))
    >>> costs = layer_costs(net, torch.zeros(1, 1, 6, 6), ["0.weight", "2.weight"])
    >>> costs
    {'0.weight': {'numel': 18, 'macs_per_weight': 16}, '2.weight': {'numel': 160, 'macs_per_weight': 1}}
    >>> masked_macs(costs, {"0.weight": 9, "2.weight": 16})  # 9 * 16 + 16 * 1
    160
    >>> theoretical_speedup(costs, {"0.weight": 9, "2.weight": 16})  # (288 + 160) / 160
    2.8
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported by layer_costs only: the cost arithmetic is plain Python (used by reports)
    import torch
    from torch import Tensor, nn

__all__ = ["dense_macs", "layer_costs", "masked_macs", "theoretical_speedup"]


def _layer_types() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(Linear, ConvNd, ConvTransposeNd) module classes."""
    from torch import nn

    return ((nn.Linear,), (nn.Conv1d, nn.Conv2d, nn.Conv3d),
            (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d))


def _spatial(shape: torch.Size, nd: int) -> int:
    """Number of positions of the last ``nd`` dimensions (batched or unbatched input)."""
    return math.prod(shape[-nd:]) if nd else 1


def _per_weight_uses(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> int:
    """How many times each weight of ``module`` is multiplied for one sample in this call."""
    _, conv, conv_transpose = _layer_types()
    if isinstance(module, conv_transpose):
        nd = len(module.kernel_size)
        return _spatial(inputs[0].shape, nd)
    if isinstance(module, conv):
        nd = len(module.kernel_size)
        return _spatial(output.shape, nd)
    # Linear: (batch, *extra, out_features); an unbatched (out_features,) vector is one sample.
    return math.prod(output.shape[1:-1]) if output.dim() > 2 else 1


def layer_costs(
    model: nn.Module,
    example_input: Tensor | tuple[Any, ...],
    names: Iterable[str],
) -> dict[str, dict[str, int]]:
    """``{name: {"numel", "macs_per_weight"}}`` for the prunable parameters ``names``, for ONE sample.

    Runs one forward pass of ``model`` on ``example_input`` (a tensor, or a tuple of positional arguments)
    under ``torch.no_grad()`` in eval mode, with temporary forward hooks on the layers owning ``names``; the
    hooks are removed and every module's train/eval mode is restored afterwards, even on error. Weights of
    ``Linear``, ``ConvNd`` and ``ConvTransposeNd`` layers are measured; a layer called several times (weight
    sharing) adds up its calls. Any other selected parameter (bias, norm, embedding) costs no
    multiply-accumulate of its own and gets ``macs_per_weight`` 0, as does a layer the forward pass never calls.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> layer_costs(nn.Linear(4, 3), torch.zeros(8, 10, 4), ["weight"])  # 10 positions per sample
        {'weight': {'numel': 12, 'macs_per_weight': 10}}
    """
    import torch

    linear, conv, conv_transpose = _layer_types()
    names = list(names)
    params = dict(model.named_parameters())
    owners: dict[str, nn.Module] = {}
    for name in names:
        if name not in params:
            raise KeyError(f"{name!r} is not a parameter of {type(model).__name__}")
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        if attr == "weight" and isinstance(module, (*linear, *conv, *conv_transpose)):
            owners[name] = module

    uses: dict[str, int] = {name: 0 for name in names}

    def make_hook(name: str):
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            uses[name] += _per_weight_uses(module, inputs, output)

        return hook

    modes = {module: module.training for module in model.modules()}
    handles = [module.register_forward_hook(make_hook(name)) for name, module in owners.items()]
    try:
        model.eval()
        with torch.no_grad():
            if isinstance(example_input, tuple):
                model(*example_input)
            else:
                model(example_input)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return {name: {"numel": int(params[name].numel()), "macs_per_weight": int(uses[name])} for name in names}


def _alive(value: int | Mapping[str, Any]) -> int:
    return int(value["alive"]) if isinstance(value, Mapping) else int(value)


def dense_macs(costs: Mapping[str, Mapping[str, int]]) -> int:
    """MACs of the prunable layers with every weight alive (one sample).

    Example:
        >>> dense_macs({"a": {"numel": 10, "macs_per_weight": 4}, "b": {"numel": 5, "macs_per_weight": 1}})
        45
    """
    return sum(int(c["numel"]) * int(c["macs_per_weight"]) for c in costs.values())


def masked_macs(costs: Mapping[str, Mapping[str, int]], layers_alive: Mapping[str, Any]) -> int:
    """MACs of the alive weights of the prunable layers (one sample).

    ``layers_alive`` maps a parameter name to its number of alive weights, or to a mapping with an ``alive``
    key (the ``layers`` entry of a results row). A layer of ``costs`` missing from it counts as dense; names
    not in ``costs`` are ignored.

    Example:
        >>> costs = {"a": {"numel": 10, "macs_per_weight": 4}, "b": {"numel": 5, "macs_per_weight": 1}}
        >>> masked_macs(costs, {"a": 5, "b": {"alive": 1, "total": 5, "remaining": 0.2}})
        21
    """
    total = 0
    for name, cost in costs.items():
        alive = _alive(layers_alive[name]) if name in layers_alive else int(cost["numel"])
        total += alive * int(cost["macs_per_weight"])
    return total


def theoretical_speedup(costs: Mapping[str, Mapping[str, int]], layers_alive: Mapping[str, Any]) -> float:
    """Dense MACs / MACs of the alive weights, over the prunable layers (``inf`` when nothing is alive).

    Example:
        >>> costs = {"conv": {"numel": 100, "macs_per_weight": 64}, "fc": {"numel": 1000, "macs_per_weight": 1}}
        >>> round(theoretical_speedup(costs, {"conv": 50, "fc": 100}), 4)  # 7400 / 3300
        2.2424
    """
    dense = dense_macs(costs)
    sparse = masked_macs(costs, layers_alive)
    if sparse == 0:
        return math.inf if dense else 1.0
    return dense / sparse


def costs_on_first_batch(model: nn.Module, datamodule: Any, names: Iterable[str]) -> dict[str, dict[str, int]] | None:
    """:func:`layer_costs` on the first sample of ``datamodule.train_dataloader()``; ``None`` when the datamodule
    cannot give a tensor batch outside a trainer (then the report has no speedup column)."""
    import torch

    try:
        batch = next(iter(datamodule.train_dataloader()))
    except Exception:  # a datamodule that needs a trainer to make its loader
        return None
    example = batch[0] if isinstance(batch, (list, tuple)) else batch
    if not isinstance(example, torch.Tensor):
        return None
    device = next(model.parameters()).device
    return layer_costs(model, example[:1].to(device), names)
