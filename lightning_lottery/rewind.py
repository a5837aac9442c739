"""The rewind point: when it is (``"0it"``, ``"500it"``, ``"2ep"``) and what it holds (a copy of the training state).

Pure torch, no Lightning.

Example:
    >>> from lightning_lottery.rewind import RewindStep
    >>> RewindStep.parse("500it")
    RewindStep(amount=500, unit='it')
    >>> str(RewindStep.parse(0))
    '0it'
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from lightning_lottery.atomic import atomic_write

_STEP_RE = re.compile(r"^\s*(\d+)\s*(it|ep)\s*$")


@dataclass(frozen=True)
class RewindStep:
    """A point in training: ``amount`` iterations (optimizer steps, ``"it"``) or epochs (``"ep"``)."""

    amount: int
    unit: Literal["it", "ep"] = "it"

    @classmethod
    def parse(cls, value: str | int | RewindStep) -> RewindStep:
        """Parse ``"500it"``, ``"2ep"`` or a plain number of iterations; raise ``ValueError`` naming bad input."""
        if isinstance(value, RewindStep):
            return value
        if isinstance(value, bool):
            raise ValueError(f"rewind point {value!r}: expected e.g. '0it', '500it' or '2ep'")
        if isinstance(value, int):
            if value < 0:
                raise ValueError(f"rewind point {value!r}: must be >= 0")
            return cls(value, "it")
        match = _STEP_RE.match(str(value))
        if not match:
            raise ValueError(f"rewind point {value!r}: expected a number followed by 'it' or 'ep', e.g. '0it', '500it' or '2ep'")
        return cls(int(match.group(1)), match.group(2))  # type: ignore[arg-type]

    def __str__(self) -> str:
        return f"{self.amount}{self.unit}"


def cpu_copy(obj: Any) -> Any:
    """A deep copy of ``obj`` with every tensor detached and copied to CPU (never an alias of a live tensor).

    Tensors that alias each other in ``obj`` (tied weights: one parameter under two ``state_dict`` keys) are copied
    once and stay one tensor in the copy, so that a mask applied under one name applies under all of them.
    """
    return _cpu_copy(obj, {})


def alias_key(t: torch.Tensor) -> tuple[Any, ...] | None:
    """What two tensors that are the same memory share (storage, offset, shape, strides, dtype); ``None`` for
    tensors that cannot alias (empty ones) or whose storage cannot be inspected (sparse, ...)."""
    if t.numel() == 0 or t.layout != torch.strided:
        return None
    try:
        ptr = t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None
    return (t.device, ptr, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


def _cpu_copy(obj: Any, memo: dict[tuple[Any, ...], torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = alias_key(obj)
        if key is not None and key in memo:
            return memo[key]
        out = obj.detach().to("cpu", copy=True)
        if key is not None:
            memo[key] = out
        return out
    if isinstance(obj, dict):
        out_dict = copy.copy(obj)  # keeps OrderedDict/Counter types
        for k, v in obj.items():
            out_dict[k] = _cpu_copy(v, memo)
        return out_dict
    if isinstance(obj, list):
        return [_cpu_copy(v, memo) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_cpu_copy(v, memo) for v in obj)
    return copy.deepcopy(obj)


@dataclass
class RewindState:
    """A copy, kept on CPU, of the training state at the rewind point.

    ``model`` is the module's ``state_dict`` (parameters and buffers, e.g. BatchNorm statistics, and the non-tensor
    entries of modules with ``get_extra_state``); ``optimizers`` and ``lr_schedulers`` hold their ``state_dict()``
    in the trainer's order. ``step``/``epoch`` say where training was, ``batch`` how many training batches of that
    epoch were done (a mid-epoch rewind point; files written before it was recorded read as 0) and ``batches`` how
    many batches in all (``None``: unknown, taken as ``step`` × the accumulation). Saved with ``torch.save`` and read
    back with ``weights_only=True`` (plain containers of tensors and numbers).
    """

    step: int
    epoch: int
    model: dict[str, Any]
    optimizers: list[dict[str, Any]] = field(default_factory=list)
    lr_schedulers: list[dict[str, Any]] = field(default_factory=list)
    batch: int = 0
    batches: int | None = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "batch": self.batch,
            "batches": self.batches,
            "model": self.model,
            "optimizers": self.optimizers,
            "lr_schedulers": self.lr_schedulers,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> RewindState:
        batches = state.get("batches")
        return cls(
            step=int(state["step"]),
            epoch=int(state["epoch"]),
            model=dict(state["model"]),
            optimizers=list(state.get("optimizers", [])),
            lr_schedulers=list(state.get("lr_schedulers", [])),
            batch=int(state.get("batch", 0)),
            batches=int(batches) if batches is not None else None,
        )

    def with_model(self, model: dict[str, Any]) -> RewindState:
        """The same training position with other weights (e.g. the trained ones, for LR rewinding)."""
        return dataclasses.replace(self, model=model)

    def without_optimizer_state(self) -> RewindState:
        """The same state with fresh optimizer moments (hyperparameters such as the LR at this step kept)."""
        return dataclasses.replace(self, optimizers=[{**opt, "state": {}} for opt in self.optimizers])

    def at_position(self, step: int, epoch: int, batch: int = 0, batches: int | None = None) -> RewindState:
        """The same state, resumed at another loop position (``batch`` training batches into ``epoch``)."""
        return dataclasses.replace(self, step=step, epoch=epoch, batch=batch, batches=batches)

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically to ``path``."""
        state = self.state_dict()
        atomic_write(path, lambda f: torch.save(state, f))

    @classmethod
    def load(cls, path: str | os.PathLike) -> RewindState:
        """Read a file written by :meth:`save` (``weights_only=True``: no arbitrary code is unpickled)."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as err:
            raise ValueError(f"{path}: not a readable rewind-point file ({err})") from err
        return cls.from_state_dict(state)


def fresh_initialization(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """The ``state_dict`` that ``model``'s own initializer gives under ``seed`` (its ``reset_parameters()`` when it
    has one, else each submodule's); the live model and the global random state are left as they were."""
    saved = copy.deepcopy(model.state_dict())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        reset = getattr(model, "reset_parameters", None)
        if callable(reset):
            reset()
        else:
            for module in model.modules():
                if module is not model and callable(getattr(module, "reset_parameters", None)):
                    module.reset_parameters()
        fresh = cpu_copy(model.state_dict())
    model.load_state_dict(saved)
    return fresh
