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


@dataclass
class Ticket:
    """A mask and the (masked) model state it starts from."""

    mask: Mask
    state: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_state(cls, state: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor], **metadata: Any) -> Ticket:
        """Build a ticket from a model ``state_dict`` (e.g. θk) and a mask; pruned entries are zeroed in the copy."""
        out = {k: v.detach().to("cpu", copy=True) for k, v in state.items()}
        for name, m in mask.items():
            if name not in out:
                raise MaskError(f"mask parameter {name!r} is not in the model state")
            if tuple(out[name].shape) != tuple(m.shape):
                raise MaskError(f"mask for {name!r} has shape {tuple(m.shape)}, state has {tuple(out[name].shape)}")
            out[name].mul_(m.to("cpu"))
        return cls({n: m.detach().to("cpu", torch.bool) for n, m in mask.items()}, out, {k: str(v) for k, v in metadata.items()})

    @classmethod
    def from_model(cls, model: nn.Module, mask: Mapping[str, torch.Tensor], **metadata: Any) -> Ticket:
        """Ticket of ``model``'s current state under ``mask``."""
        return cls.from_state(model.state_dict(), mask, **metadata)

    def save(self, path: str | os.PathLike) -> None:
        """Write the ticket atomically as safetensors."""
        from safetensors.torch import save

        tensors = {f"mask/{n}": m.contiguous() for n, m in self.mask.items()}
        tensors.update({f"state/{k}": v.contiguous() for k, v in self.state.items()})
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
        """Raise ``MaskError`` naming the first mask entry or state key that does not fit ``model``."""
        check_fits(self.mask, params)
        own = model.state_dict()
        for key, value in self.state.items():
            if key not in own:
                raise MaskError(f"ticket has state {key!r} that the model does not have")
            if tuple(own[key].shape) != tuple(value.shape):
                raise MaskError(
                    f"ticket state {key!r} has shape {tuple(value.shape)} but the model's has {tuple(own[key].shape)}"
                )
        missing = [k for k in own if k not in self.state]
        if missing:
            raise MaskError(f"ticket lacks state {missing[0]!r} of the model")


def resolve_ticket(ref: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local ticket file for ``ref``: a path, or a W&B artifact reference downloaded to ``cache_dir``.

    W&B references look like ``wandb:ENTITY/PROJECT/NAME:ALIAS`` (the ``wandb:`` prefix may be left out when the
    reference is not an existing path). Fetching needs a W&B login and network; without them one ``RuntimeError``
    says so.

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
        artifact = wandb.Api(timeout=30).artifact(text, type="lottery-ticket")
        directory = Path(artifact.download(root=str(cache_dir) if cache_dir else None))
    except Exception as err:  # no login, no network, no such artifact: one line
        raise RuntimeError(f"cannot fetch W&B artifact {text!r}: {err}".splitlines()[0]) from err
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise MaskError(f"W&B artifact {text!r} holds no .safetensors ticket")
    return files[0]
