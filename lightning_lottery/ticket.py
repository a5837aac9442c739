"""Tickets: a mask together with the weights it starts from (θk ⊙ m), in one safetensors file.

Layout: ``mask/<param>`` (bool) for every prunable parameter and ``state/<key>`` for every entry of the model's
``state_dict`` at the rewind point, pruned entries zero; string metadata (level, remaining, rewind point, ...).

Example:
    >>> import torch, tempfile, os
    >>> from lightning_lottery.ticket import Ticket
    >>> net = torch.nn.Linear(3, 2)
    >>> mask = {"weight": torch.tensor([[True, False, True], [False, True, True]])}
    >>> path = os.path.join(tempfile.mkdtemp(), "ticket.safetensors")
    >>> Ticket.from_model(net, mask, level=1).save(path)
    >>> t = Ticket.load(path)
    >>> int(t.mask["weight"].sum()), float(t.state["weight"][0, 1])
    (4, 0.0)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_lottery.atomic import atomic_write_bytes
from lightning_lottery.masks import Mask, MaskError, check_fits, read_safetensors
from lightning_lottery.rewind import alias_key


@dataclass
class Ticket:
    """A mask and the (masked) model state it starts from."""

    mask: Mask
    state: dict[str, Any]
    metadata: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_state(cls, state: Mapping[str, Any], mask: Mapping[str, torch.Tensor], **metadata: Any) -> Ticket:
        """Build a ticket from a model ``state_dict`` (e.g. θk) and a mask; pruned entries are zeroed in the copy.

        Tickets hold tensors only: non-tensor entries (the ``get_extra_state`` of a module) are left out, and a fit
        started from the ticket keeps the model's own. A key that aliases a masked one in ``state`` (a tied weight:
        the same memory under another name, as in a live ``state_dict`` or a rewind point) is masked too.
        """
        tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
        groups: dict[tuple[Any, ...], list[str]] = {}
        for k, v in tensors.items():
            key = alias_key(v)
            if key is not None:
                groups.setdefault(key, []).append(k)
        out = {k: v.detach().to("cpu", copy=True) for k, v in tensors.items()}
        for name, m in mask.items():
            if name not in out:
                raise MaskError(f"mask parameter {name!r} is not in the model state")
            if tuple(out[name].shape) != tuple(m.shape):
                raise MaskError(f"mask for {name!r} has shape {tuple(m.shape)}, state has {tuple(out[name].shape)}")
            key = alias_key(tensors[name])
            for alias in groups.get(key, [name]) if key is not None else [name]:
                out[alias].masked_fill_(~m.to("cpu", torch.bool), 0)  # +0.0, whatever the sign of the weight
        return cls({n: m.detach().to("cpu", torch.bool) for n, m in mask.items()}, out, {k: str(v) for k, v in metadata.items()})

    @classmethod
    def from_model(cls, model: nn.Module, mask: Mapping[str, torch.Tensor], **metadata: Any) -> Ticket:
        """Ticket of ``model``'s current state under ``mask``."""
        return cls.from_state(model.state_dict(), mask, **metadata)

    def save(self, path: str | os.PathLike) -> None:
        """Write the ticket atomically as safetensors (its tensors: non-tensor state entries are not stored)."""
        from safetensors.torch import save

        tensors = {f"mask/{n}": m.contiguous() for n, m in self.mask.items()}
        tensors.update({f"state/{k}": v.contiguous() for k, v in self.state.items() if isinstance(v, torch.Tensor)})
        atomic_write_bytes(path, save(tensors, metadata={"format": "lightning-lottery-ticket", **self.metadata}))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Ticket:
        """Read a ticket file; ``MaskError`` names the file if it is missing, corrupt or not a ticket."""
        tensors, meta = read_safetensors(path)
        mask = {k[5:]: v for k, v in tensors.items() if k.startswith("mask/")}
        state = {k[6:]: v for k, v in tensors.items() if k.startswith("state/")}
        if not mask or not state:
            raise MaskError(f"{path}: not a lottery ticket (expected 'mask/...' and 'state/...' tensors)")
        return cls(mask, state, meta)

    def check_fits(self, model: nn.Module, params: Mapping[str, torch.Tensor]) -> None:
        """Raise ``MaskError`` naming the first mask entry or state key that does not fit ``model``.

        Non-tensor entries (``get_extra_state``) are not compared: only their keys must exist in the model, and a
        ticket may lack them (tickets hold tensors only)."""
        check_fits(self.mask, params)
        own = model.state_dict()
        for key, value in self.state.items():
            if key not in own:
                raise MaskError(f"ticket has state {key!r} that the model does not have")
            mine = own[key]
            if isinstance(mine, torch.Tensor) != isinstance(value, torch.Tensor):
                raise MaskError(f"ticket state {key!r} is a {type(value).__name__} but the model's is a "
                                f"{type(mine).__name__}")
            if isinstance(mine, torch.Tensor) and tuple(mine.shape) != tuple(value.shape):
                raise MaskError(
                    f"ticket state {key!r} has shape {tuple(value.shape)} but the model's has {tuple(mine.shape)}"
                )
        missing = [k for k, v in own.items() if k not in self.state and isinstance(v, torch.Tensor)]
        if missing:
            raise MaskError(f"ticket lacks state {missing[0]!r} of the model")


def resolve_ticket(ref: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local ticket file for ``ref``: a path, or a W&B artifact reference downloaded to ``cache_dir``.

    W&B references look like ``wandb:ENTITY/PROJECT/NAME:ALIAS`` (the ``wandb:`` prefix may be left out when the
    reference is not an existing path). Fetching needs a W&B login and network; without them one ``RuntimeError``
    says so. With an active W&B run (``wandb.run``) the artifact is fetched through ``wandb.run.use_artifact``, so
    W&B's lineage shows that run using the ticket; without one (``lightning-lottery retrain`` starts none) through
    ``wandb.Api().artifact``: downloaded, but no run records the use.

    Example:
        >>> resolve_ticket("no/such/file.safetensors")
        Traceback (most recent call last):
        ...
        lightning_lottery.masks.MaskError: no/such/file.safetensors: no such ticket file
    """
    path = Path(ref)
    if path.is_file():
        return path
    text = str(ref)
    if text.startswith("wandb:"):
        text = text[len("wandb:"):]
    elif text.endswith(".safetensors") or ":" not in text:
        raise MaskError(f"{ref}: no such ticket file")
    mode = os.environ.get("WANDB_MODE", "")
    if mode in ("offline", "disabled", "dryrun"):
        raise RuntimeError(f"cannot fetch W&B artifact {text!r} with WANDB_MODE={mode}: fetch it online, or pass a file")
    import wandb

    try:
        run = wandb.run
        artifact = (run.use_artifact(text, type="lottery-ticket") if run is not None and not run.offline
                    else wandb.Api(timeout=30).artifact(text, type="lottery-ticket"))
        directory = Path(artifact.download(root=str(cache_dir) if cache_dir else None))
    except Exception as err:  # no login, no network, no such artifact: one line
        raise RuntimeError(f"cannot fetch W&B artifact {text!r}: {err}".splitlines()[0]) from err
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise MaskError(f"W&B artifact {text!r} holds no .safetensors ticket")
    return files[0]
