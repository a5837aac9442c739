"""Pruning at initialization: SNIP, GraSP and SynFlow scores, and pruning to a target fraction. Pure torch.

The scores are those of ganguli-lab/Synaptic-Flow (Tanaka et al. 2020), which computes all three the same way:
the model in eval mode, the loss cross-entropy on the model's output, the prune set ``10 × num_classes`` training
samples in batches of 256 (:func:`prune_set`). A higher score means more important (pruning removes the smallest):

- **SNIP** (Lee et al. 2019): ``|θ ⊙ Σ_b ∂L_b/∂θ|``, the gradients of the batches' mean losses summed, *then* the
  absolute value (Synaptic-Flow accumulates ``∂L/∂mask`` over the batches and takes its ``abs``).
- **GraSP** (Wang et al. 2020): ``θ ⊙ Hg``, signed, with the logits divided by ``temperature`` (200), ``g = Σ_b ∇L_b``
  (no graph) and ``Hg = Σ_b ∇(g · ∇L_b)``. The paper removes the weights with the *largest* ``S(−θ) = −θ ⊙ Hg``
  (removing them reduces the gradient norm the least, or raises it); keeping the highest ``θ ⊙ Hg`` is the same
  choice, and it is what Synaptic-Flow keeps. Synaptic-Flow divides by ``|Σ scores|``: a positive factor, omitted.
- **SynFlow** (Tanaka et al. 2020): ``|θ ⊙ ∂R/∂θ|`` with every parameter and buffer made positive, the input all
  ones (one sample of the data's shape), ``R`` the sum of the output; no labels. Used iteratively: ``rounds`` = 100,
  the density at round ``r`` (1-based) ``target ** (r / rounds)`` (:func:`density_schedule`), the masked positive
  network scored again each round.

Every scoring leaves the model as it was: parameters, buffers, gradients, ``requires_grad`` and train/eval modes
are restored exactly (:func:`preserved`).

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    >>> weights = {"0.weight": net[0].weight, "2.weight": net[2].weight}
    >>> scores = synflow_scores(net, weights, [(torch.zeros(3, 2), None)])
    >>> bool((scores["2.weight"] >= 0).all()), density_schedule(0.01, 2)
    (True, [0.1, 0.01])
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lightning_lottery.criteria import register_criterion
from lightning_lottery.masks import Mask
from lightning_lottery.pruning import PruningError, Scope, prune_to

__all__ = ["GRASP_TEMPERATURE", "Batches", "density_schedule", "grasp_scores", "mask_at_init", "preserved",
           "protect", "prune_at_init", "prune_set", "snip_scores", "synflow_scores"]

#: The temperature GraSP divides the logits by (Wang et al. 2020; Synaptic-Flow's default).
GRASP_TEMPERATURE = 200.0

#: The prune set: ``(inputs, labels)`` pairs (labels unused by SynFlow).
Batches = Sequence[tuple[torch.Tensor, Any]]

#: ``score(weights) -> {name: float32 score}`` for the weights of the model being pruned.
Scorer = Callable[[Mapping[str, torch.Tensor]], Mapping[str, torch.Tensor]]


@contextlib.contextmanager
def preserved(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode inside; afterwards its state, gradients, ``requires_grad`` and modes exactly as before."""
    state = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items() if isinstance(v, torch.Tensor)}
    live = {k: v for k, v in model.state_dict(keep_vars=True).items() if isinstance(v, torch.Tensor)}
    modes = {m: m.training for m in model.modules()}
    params = list(model.parameters())
    flags, grads = [p.requires_grad for p in params], [p.grad for p in params]
    try:
        model.eval()
        yield model
    finally:
        with torch.no_grad():
            for key, saved in state.items():
                live[key].copy_(saved)
        for p, flag, grad in zip(params, flags, grads):
            p.requires_grad_(flag)
            p.grad = grad
        for m, training in modes.items():
            m.training = training


def _device(model: nn.Module) -> torch.device:
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def _grad(output: torch.Tensor, weights: Sequence[torch.Tensor], **kwargs: Any) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(output, list(weights), allow_unused=True, **kwargs)


def _zeros_if_none(grads: Sequence[torch.Tensor | None], weights: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.zeros_like(w) if g is None else g for g, w in zip(grads, weights)]


def _loss(model: nn.Module, batch: tuple[torch.Tensor, Any], device: torch.device, temperature: float = 1.0
          ) -> torch.Tensor:
    x, y = batch
    logits = model(x.to(device))
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise PruningError(f"pruning at init needs the model's forward to return (batch, classes) logits; got "
                           f"{getattr(logits, 'shape', type(logits).__name__)}")
    return nn.functional.cross_entropy(logits / temperature, y.to(device))


def _summed_grads(model: nn.Module, params: list[torch.Tensor], batches: Batches, device: torch.device,
                  temperature: float = 1.0) -> list[torch.Tensor]:
    """``Σ_b ∂L_b/∂θ`` over the batches (zeros for parameters the loss does not reach)."""
    total = [torch.zeros_like(p) for p in params]
    for batch in batches:
        for t, g in zip(total, _zeros_if_none(_grad(_loss(model, batch, device, temperature), params), params)):
            t.add_(g)
    return total


def snip_scores(model: nn.Module, weights: Mapping[str, torch.Tensor], batches: Batches) -> dict[str, torch.Tensor]:
    """SNIP: ``|θ ⊙ Σ_b ∂L_b/∂θ|`` (the sum over the batches before the ``abs``), model in eval mode."""
    names, params = list(weights), list(weights.values())
    device = _device(model)
    with preserved(model), torch.enable_grad():
        for p in params:
            p.requires_grad_(True)
        total = _summed_grads(model, params, batches, device)
        return {n: (p.detach() * t).abs().float() for n, p, t in zip(names, params, total)}


def grasp_scores(model: nn.Module, weights: Mapping[str, torch.Tensor], batches: Batches,
                 temperature: float = GRASP_TEMPERATURE) -> dict[str, torch.Tensor]:
    """GraSP: ``θ ⊙ Hg``, signed (keep the highest), logits divided by ``temperature``, model in eval mode."""
    names, params = list(weights), list(weights.values())
    device = _device(model)
    with preserved(model), torch.enable_grad():
        for p in params:
            p.requires_grad_(True)
        g = _summed_grads(model, params, batches, device, temperature)
        hg = [torch.zeros_like(p) for p in params]
        for batch in batches:
            grads = _zeros_if_none(_grad(_loss(model, batch, device, temperature), params, create_graph=True), params)
            z = sum((a * b).sum() for a, b in zip(g, grads))
            if isinstance(z, torch.Tensor) and z.requires_grad:
                for acc, h in zip(hg, _zeros_if_none(_grad(z, params), params)):
                    acc.add_(h)
        return {n: (p.detach() * h).float() for n, p, h in zip(names, params, hg)}


def synflow_scores(model: nn.Module, weights: Mapping[str, torch.Tensor], batches: Batches) -> dict[str, torch.Tensor]:
    """SynFlow: ``|θ ⊙ ∂R/∂θ|`` of the network with every parameter and buffer made positive (model in eval mode),
    ``R = Σ model(ones)`` on one all-ones sample shaped like the first batch's inputs. Only the shape of the data
    is used."""
    names, params = list(weights), list(weights.values())
    device = _device(model)
    first = batches[0][0]
    with preserved(model), torch.enable_grad():
        with torch.no_grad():
            for value in model.state_dict(keep_vars=True).values():
                if isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex()):
                    value.abs_()
        for p in params:
            p.requires_grad_(True)
        ones = torch.ones((1, *first.shape[1:]), dtype=first.dtype if first.is_floating_point() else torch.float32,
                          device=device)
        grads = _zeros_if_none(_grad(model(ones).sum(), params), params)
        return {n: (p.detach() * g).abs().float() for n, p, g in zip(names, params, grads)}


# ------------------------------------------------------------------------------------------------ pruning


def density_schedule(target: float, rounds: int) -> list[float]:
    """The density after each of ``rounds`` rounds: ``target ** (r / rounds)``, r = 1..rounds (exponential; the
    last is ``target`` exactly)."""
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise PruningError(f"rounds must be a positive integer, got {rounds!r}")
    return [float(target) if r == rounds else float(target) ** (r / rounds) for r in range(1, rounds + 1)]


def protect(scores: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor], min_density: float
            ) -> dict[str, torch.Tensor]:
    """Scores in float64 in which, per parameter, the ``ceil(min_density × numel)`` highest-scoring alive weights
    score above every other weight, so that no pruning to a fraction of at least that leaves a layer below
    ``min_density`` (SynFlow can empty a 1×1 shortcut convolution). The total pruned is unchanged."""
    out = {n: s.detach().to(torch.float64, copy=True) for n, s in scores.items()}
    if min_density <= 0:
        return out
    top = torch.finfo(torch.float64).max
    for name, s in out.items():
        keep = min(math.ceil(min_density * s.numel()), int(mask[name].sum()))
        if keep > 0:
            alive = torch.where(mask[name].to(s.device), s, torch.full_like(s, -math.inf)).flatten()
            s.view(-1)[torch.topk(alive, keep, sorted=False).indices] = top
    return out


def prune_at_init(model: nn.Module, names: Sequence[str], score: Scorer, target: float, *,
                  mask: Mapping[str, torch.Tensor] | None = None, scope: Scope = "global", min_density: float = 0.0,
                  rounds: int = 1) -> Mask:
    """Prune the parameters ``names`` of ``model`` (as it is: θ0) to a remaining fraction ``target`` in ``rounds``
    rounds of the exponential schedule; each round scores the network with the current mask applied (pruned weights
    zero) and prunes the alive weights to that round's density (:func:`~lightning_lottery.pruning.prune_to`).
    ``min_density`` guards every layer (:func:`protect`). The model is left exactly as it was.

    Returns a bool mask per name on the weights' devices."""
    params = dict(model.named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise PruningError(f"prune_at_init: {missing[0]!r} is not a parameter of the model")
    weights = {n: params[n] for n in names}
    current = {n: (torch.ones_like(w, dtype=torch.bool) if mask is None else mask[n].to(w.device).bool())
               for n, w in weights.items()}
    kept = sum(math.floor(target * w.numel() + 0.5) for w in weights.values())
    guarded = sum(math.ceil(min_density * w.numel()) for w in weights.values())
    if min_density > 0 and guarded > kept:
        raise PruningError(f"min_density {min_density:g} keeps {guarded} weights, more than the {kept} a remaining "
                           f"fraction of {target:g} keeps; lower min_density")
    with preserved(model):
        for density in density_schedule(target, rounds):
            with torch.no_grad():
                for n, w in weights.items():
                    w.mul_(current[n])
            scores = protect(score(weights), current, min_density)
            current = prune_to(scores, current, density, scope=scope)
    return current


def prune_set(loader: Iterable[Any], samples: int, batch_size: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``samples`` training samples of ``loader``'s order under ``seed`` (the global RNG is left as it
    was), re-batched into batches of ``batch_size``. The loader must yield ``(inputs, labels)`` tensors."""
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    have = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for batch in loader:
            if not (isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[0], torch.Tensor)
                    and isinstance(batch[1], torch.Tensor)):
                raise PruningError("pruning at init needs training batches of (inputs, labels) tensors; the "
                                   f"datamodule's train_dataloader() yields {type(batch).__name__}")
            xs.append(batch[0])
            ys.append(batch[1])
            have += len(batch[0])
            if have >= samples:
                break
    if not xs:
        raise PruningError("pruning at init: the datamodule's train_dataloader() yields no batch")
    x, y = torch.cat(xs)[:samples], torch.cat(ys)[:samples]
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]


def num_classes(model: nn.Module, batch: tuple[torch.Tensor, Any]) -> int:
    """The width of the model's output on one sample (eval mode, no gradient; the model is left as it was)."""
    with preserved(model), torch.no_grad():
        out = model(batch[0][:1].to(_device(model)))
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise PruningError(f"pruning at init needs the model's forward to return (batch, classes) logits; got "
                           f"{getattr(out, 'shape', type(out).__name__)}")
    return int(out.shape[1])


def mask_at_init(model: nn.Module, state: Mapping[str, Any], names: Sequence[str], score: Scorer, target: float, *,
                 scope: Scope = "global", min_density: float = 0.0, rounds: int = 1) -> Mask:
    """:func:`prune_at_init` of ``model`` with the weights and buffers of ``state`` (a ``state_dict``, e.g. θ0 of a
    rewind point) loaded for the scoring; the model's own state is restored afterwards. Returns a CPU mask."""
    with preserved(model):
        model.load_state_dict(state)
        mask = prune_at_init(model, names, score, target, scope=scope, min_density=min_density, rounds=rounds)
    return {n: m.cpu() for n, m in mask.items()}


# ------------------------------------------------------------------------------------ the criteria registry


def _register(name: str, rounds: int, score: Callable[..., dict[str, torch.Tensor]]) -> Callable[..., Any]:
    def criterion(weights: Mapping[str, torch.Tensor], generator: torch.Generator | None = None, *,
                  model: nn.Module, batches: Batches) -> dict[str, torch.Tensor]:
        del generator  # deterministic given the prune set
        return score(model, weights, batches)

    criterion.__name__, criterion.__doc__ = f"{name}_criterion", score.__doc__
    return register_criterion(name, data=True, rounds=rounds)(criterion)


snip_criterion = _register("snip", 1, snip_scores)
grasp_criterion = _register("grasp", 1, grasp_scores)
synflow_criterion = _register("synflow", 100, synflow_scores)
