"""``LotteryTicket``: the callback that owns the mask and the rewind point inside one ``Trainer.fit``."""

from __future__ import annotations

import copy
import os
import tempfile
import uuid
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.hooks import RemovableHandle

from lightning_lottery import _compat, criteria, distributed, pruning
from lightning_lottery._compat import override
from lightning_lottery.masks import (ZERO_PRESERVING_OPTIMIZERS, Mask, MaskError, check_fits, load_mask, ones_mask,
                                     mask_after_every_step, mask_gradients_, remaining, require_prunable, zero_pruned_)
from lightning_lottery.rewind import RewindState, RewindStep, cpu_copy
from lightning_lottery.ticket import Ticket, resolve_ticket


class LotteryTicket(Callback):
    r"""Train a masked network and keep the rewind point of a lottery-ticket search.

    During ``fit``: gradients of pruned weights are zeroed before every optimizer step and the weights are masked
    in place after every ``step()`` (skipped for the optimizers known to keep zeros), so pruned weights stay exactly
    ``0.0``. The training state at ``rewind_to`` (weights and buffers, optimizer and LR-scheduler state, the position
    in the epoch) is copied to CPU. After :meth:`prune`, the next ``fit`` of a **fresh** ``Trainer`` (the same one is
    an error) starts at the rewind point with the new mask: surviving weights equal θk, pruned weights and their
    optimizer state are zero, and the step/epoch/batch counters continue from k, so the fit ends where the previous
    one ended. Resuming a checkpoint needs the same ``rewind_to``/``include``/``exclude`` (else an error naming both).

    Args:
        mask: starting mask (``{name: BoolTensor}``) or a mask/ticket file; all weights alive when ``None``.
        rewind_to: the rewind point: ``"0it"`` (θ0, the original hypothesis), ``"500it"`` or ``"2ep"``.
        include: fnmatch patterns of parameter names to prune (default: weights of Linear and Conv layers).
        exclude: patterns of parameter names never to prune.
        rewind_point: a rewind point captured earlier (e.g. by the scheduler); the next fit starts from it.
        ticket: a ticket (mask + masked starting weights) to train again from step 0: a file, or a W&B artifact
            reference ``wandb:ENTITY/PROJECT/NAME:ALIAS`` (downloaded; needs a login).

    Example:
        >>> import lightning.pytorch as pl
        >>> from lightning_lottery import LotteryTicket
        >>> from lightning_lottery.data import DigitsDataModule
        >>> from lightning_lottery.models import LeNet300100
        >>> model, data = LeNet300100(in_features=64), DigitsDataModule()
        >>> lottery = LotteryTicket(rewind_to="0it")
        >>> def trainer():
        ...     return pl.Trainer(max_steps=5, callbacks=[lottery], logger=False, enable_checkpointing=False,
        ...                       enable_progress_bar=False, enable_model_summary=False)
        >>> trainer().fit(model, data)
        >>> _ = lottery.prune(model, rate=0.2)    # 20% of the weights by magnitude
        >>> trainer().fit(model, data)             # rewound to θ0 with the new mask, trained again
        >>> round(lottery.remaining, 3)
        0.8
    """

    def __init__(
        self,
        mask: Mapping[str, torch.Tensor] | str | os.PathLike | None = None,
        *,
        rewind_to: str | int = "0it",
        include: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        rewind_point: RewindState | None = None,
        ticket: str | os.PathLike | Ticket | None = None,
    ) -> None:
        self.rewind_step = RewindStep.parse(rewind_to)
        self.include = list(include) if include is not None else None
        self.exclude = list(exclude)
        self.mask: Mask | None = _load_mask_arg(mask)
        self._rewind_point = rewind_point
        self.level = 0
        if ticket is not None:
            t = ticket if isinstance(ticket, Ticket) else Ticket.load(resolve_ticket(ticket))
            self.mask = t.mask
            self._rewind_point = RewindState(step=0, epoch=0, model=t.state)
        self._pending_rewind = self._rewind_point is not None
        self._masked_params: list[torch.Tensor] = []  # the prunable parameters with pruned entries...
        self._masked_masks: list[torch.Tensor] = []  # ...and their device masks (the same tensors, no copies)
        self._mask_after_step: bool | None = None  # decided at on_train_start of a fit with pruned weights
        self._dense = True
        self._step_hooks: list[RemovableHandle] = []  # optimizer step post-hooks of this fit (unknown optimizers)
        self._trainers: weakref.WeakSet[pl.Trainer] = weakref.WeakSet()  # trainers that ran a fit with this callback
        # under ddp_spawn each fit runs in worker processes: rank 0 hands the state back through this file
        self._handoff = Path(tempfile.gettempdir()) / f"lightning-lottery-handoff-{uuid.uuid4().hex}.pt"
        self._owner_pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        self._take_handoff()  # pickled for the next spawned fit: carry what the last one learned
        state = self.__dict__.copy()
        state["_step_hooks"] = []  # live handles and weak references stay in this process
        state["_trainers"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._trainers = weakref.WeakSet()

    @property
    def rewind_point(self) -> RewindState | None:
        """The training state the next level starts from (``None`` until the rewind step is reached)."""
        self._take_handoff()
        return self._rewind_point

    @rewind_point.setter
    def rewind_point(self, value: RewindState | None) -> None:
        self._rewind_point = value

    # ------------------------------------------------------------------------------------------- Lightning API
    @property
    @override
    def state_key(self) -> str:
        """The class name: the same whatever the settings, so that a checkpoint's state is always found (the
        settings it was written with are checked by :meth:`load_state_dict`)."""
        return type(self).__qualname__

    @override
    def state_dict(self) -> dict[str, Any]:
        self._take_handoff()
        return self._state()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Adopt a checkpoint's state; ``ValueError`` naming both values if it was written with other settings."""
        self._check_settings(state_dict)
        self.mask = state_dict["mask"]
        self.rewind_step = RewindStep.parse(state_dict["rewind_to"])
        rp = state_dict["rewind_point"]
        self._rewind_point = RewindState.from_state_dict(rp) if rp is not None else None
        self.level = int(state_dict["level"])
        self._pending_rewind = bool(state_dict["pending_rewind"])

    @override
    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        """Read the state of checkpoints written before :attr:`state_key` stopped depending on ``rewind_to``."""
        states = checkpoint.get("callbacks") or {}
        legacy = [k for k in states if isinstance(k, str) and k.startswith(f"{self.state_key}{{")]
        if self.state_key in states:
            return
        if len(legacy) > 1:
            raise ValueError(f"the checkpoint holds {len(legacy)} {type(self).__name__} states ({legacy}): "
                             "cannot tell which one to resume")
        if legacy:
            self.load_state_dict(copy.deepcopy(states[legacy[0]]))

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if sum(isinstance(cb, LotteryTicket) for cb in trainer.callbacks) > 1:
            raise RuntimeError("the Trainer has several LotteryTicket callbacks: use one LotteryTicket per Trainer")
        if self._pending_rewind and trainer in self._trainers:
            raise RuntimeError(
                "this Trainer already ran a fit with this LotteryTicket: its loops are finished, so the next level "
                "would train 0 batches from the trained weights. Create a fresh Trainer for each fit (level)."
            )
        self._trainers.add(trainer)
        self._remove_step_hooks()
        self._attach(pl_module)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size > 1:
            assert self.mask is not None
            distributed.check_same_mask(self.mask)
        if self._pending_rewind:
            self._rewind(trainer, pl_module)
        if not self._dense:  # the optimizers' state is loaded by now (checkpoint restore, rewind)
            self._mask_after_step = self._needs_weight_mask(trainer.optimizers)
            if self._mask_after_step:  # after every step(): also between the steps of one batch
                self._step_hooks = mask_after_every_step(trainer.optimizers, self._masked_params, self._masked_masks)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.rewind_step.unit == "ep":
            self._maybe_capture(trainer, pl_module, trainer.current_epoch)

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.rewind_step.unit == "it":
            self._maybe_capture(trainer, pl_module, trainer.global_step, batch_idx)

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if not self._dense:
            mask_gradients_(self._masked_params, self._masked_masks)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_step_hooks()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._remove_step_hooks()

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._rewind_point is None and not trainer.interrupted:
            raise RuntimeError(
                f"rewind point {self.rewind_step} was never reached: training stopped at step {trainer.global_step}, "
                f"epoch {trainer.current_epoch}. Choose an earlier `rewind_to` or train longer."
            )
        if _compat.is_spawn_launcher(trainer.strategy.launcher) and trainer.is_global_zero:
            torch.save(self._state(), self._handoff)  # the main process reads it back (_take_handoff)

    # ----------------------------------------------------------------------------------------------- public
    @property
    def device_masks(self) -> list[torch.Tensor]:
        """During a fit: the masks of the parameters with pruned entries, on the weights' device (the only tensors
        the callback keeps there; empty for a dense network)."""
        return list(self._masked_masks)

    @property
    def remaining(self) -> float:
        """Fraction of prunable weights alive under the current mask (1.0 before the first fit)."""
        self._take_handoff()
        return remaining(self.mask) if self.mask is not None else 1.0

    def prune(
        self,
        model: torch.nn.Module,
        rate: float = 0.2,
        *,
        scope: Literal["global", "layerwise"] = "layerwise",
        rates: Mapping[str, float] | None = None,
        criterion: str = "magnitude",
        generator: torch.Generator | None = None,
        structure: str = "unstructured", unit_norm: str = "l1", mask_type: str = "any",
    ) -> Mask:
        """Prune a fraction ``rate`` of the alive weights of ``model`` (its current, trained weights) by ``criterion``.

        ``structure="units"`` removes whole units, ``mask_type="2:4"`` projects to 2:4 (:func:`pruning.prune_weights`).
        The new mask becomes this callback's mask and the next fit starts from the rewind point. Returns the mask.
        """
        self._take_handoff()
        if self._rewind_point is None:
            raise RuntimeError("no rewind point yet: fit the model with this callback before pruning")
        params = require_prunable(model, self.include, self.exclude)
        current = self.mask if self.mask is not None else ones_mask(params)
        options = dict(scope=scope, rates=rates or {}, structure=structure, unit_norm=unit_norm, mask_type=mask_type)
        self.set_mask(pruning.prune_weights(params, current, rate, criteria.get_criterion(criterion), generator, **options))
        return self.mask  # type: ignore[return-value]

    def set_mask(self, mask: Mapping[str, torch.Tensor]) -> None:
        """Use ``mask`` from now on; the next fit starts from the rewind point (a new level)."""
        self.mask = {n: m.detach().to("cpu", torch.bool) for n, m in mask.items()}
        self.level += 1
        self._pending_rewind = True

    def ticket(self, **metadata: Any) -> Ticket:
        """The current ticket: the mask and the rewind-point state it starts from (θk ⊙ m)."""
        self._take_handoff()
        if self._rewind_point is None or self.mask is None:
            raise RuntimeError("no ticket yet: fit the model with this callback first")
        return Ticket.from_state(self._rewind_point.model, self.mask, rewind_to=str(self.rewind_step), **metadata)

    # ---------------------------------------------------------------------------------------------- private
    def _state(self) -> dict[str, Any]:
        return {
            "mask": self.mask,
            "rewind_to": str(self.rewind_step),
            "include": self.include,
            "exclude": self.exclude,
            "rewind_point": self._rewind_point.state_dict() if self._rewind_point is not None else None,
            "level": self.level,
            "pending_rewind": self._pending_rewind,
        }

    def _check_settings(self, state: Mapping[str, Any]) -> None:
        """``ValueError`` if ``state`` was written by a callback with other settings (``include``/``exclude`` are
        only compared when the state records them: older checkpoints do not)."""
        ours = {"rewind_to": str(self.rewind_step), "include": self.include, "exclude": self.exclude}
        theirs = {k: state[k] for k in ("include", "exclude") if k in state}
        theirs["rewind_to"] = str(RewindStep.parse(state["rewind_to"]))
        for key, value in theirs.items():
            if value != ours[key]:
                raise ValueError(
                    f"the checkpoint's LotteryTicket state was written with {key}={value!r} but this callback has "
                    f"{key}={ours[key]!r}: create the callback with {key}={value!r} to resume it (its mask and "
                    "rewind point belong to that setting), or start without ckpt_path"
                )

    def _take_handoff(self) -> None:
        """Adopt the state a spawned fit's rank 0 left behind (ddp_spawn); nothing to do otherwise."""
        path = self.__dict__.get("_handoff")
        if path is not None and os.getpid() == self.__dict__.get("_owner_pid") and path.is_file():
            self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            path.unlink()

    def _attach(self, pl_module: pl.LightningModule) -> None:
        params = require_prunable(pl_module, self.include, self.exclude)
        if self.mask is None:
            self.mask = {n: m.cpu() for n, m in ones_mask(params).items()}
        check_fits(self.mask, params)
        if self._rewind_point is not None:
            Ticket(self.mask, self._rewind_point.model).check_fits(pl_module, params)
        pruned = [n for n in params if not bool(self.mask[n].all())]
        self._masked_params = [params[n] for n in pruned]
        self._masked_masks = [self.mask[n].to(params[n].device, torch.bool) for n in pruned]
        self._dense = not self._masked_params
        self._mask_after_step = None
        self._mask_weights()

    def _remove_step_hooks(self) -> None:
        while self._step_hooks:
            self._step_hooks.pop().remove()

    def _mask_weights(self) -> None:
        if not self._dense:
            self._multiply_masks(self._masked_params)

    def _needs_weight_mask(self, optimizers: Sequence[torch.optim.Optimizer]) -> bool:
        """Whether the weights must be masked again after every step (not for the optimizers we know).

        ``ZERO_PRESERVING_OPTIMIZERS`` leave a weight at exactly ``0.0`` when its gradient and state entries are
        ``0.0``. Gradients are masked before every step; here the pruned entries of their state are zeroed once (it
        matters when a fit resumes a checkpoint of dense training), so the post-step multiply is skipped. Any other
        optimizer (a subclass too: it may override ``step``) gets it, after every ``step()``.
        """
        if not optimizers or any(type(opt) not in ZERO_PRESERVING_OPTIMIZERS for opt in optimizers):
            return True
        if any(p.dtype == torch.float16 for p in self._masked_params):
            return True  # float16 weights: Adam's eps (1e-8) underflows to 0 and 0/0 makes pruned weights NaN
        self._zero_pruned_state(optimizers)
        return False

    def _zero_pruned_state(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        """Zero the pruned entries of the optimizers' per-weight state (momenta, moments), in place."""
        for opt in optimizers:
            for p, m in zip(self._masked_params, self._masked_masks):
                values = [v for v in opt.state.get(p, {}).values()
                          if isinstance(v, torch.Tensor) and v.shape == p.shape]
                zero_pruned_(values, [m.to(v.device) for v in values])

    def _multiply_masks(self, tensors: Sequence[torch.Tensor | None]) -> None:
        """Zero the pruned entries of tensors shaped like ``self._masked_params``, in place (``None`` skipped)."""
        zero_pruned_(tensors, self._masked_masks)

    def _maybe_capture(self, trainer: pl.Trainer, pl_module: pl.LightningModule, position: int, batch: int = 0) -> None:
        if self._rewind_point is not None or position < self.rewind_step.amount:
            return
        if position > self.rewind_step.amount:
            raise RuntimeError(f"rewind point {self.rewind_step} was passed before it could be captured (at {position})")
        self._rewind_point = capture_state(trainer, pl_module, batch=batch)

    def _rewind(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        rp = self._rewind_point
        assert rp is not None and self.mask is not None
        own = pl_module.state_dict()
        # tensors are copied into the live ones; non-tensor entries (get_extra_state) are copied so that rp stays
        # untouched, and a ticket (tensors only) keeps the model's own
        weights = {k: v for k, v in own.items() if not isinstance(v, torch.Tensor) and k not in rp.model}
        weights.update({k: v if isinstance(v, torch.Tensor) else copy.deepcopy(v) for k, v in rp.model.items()})
        pl_module.load_state_dict(weights)
        if rp.optimizers:
            if len(rp.optimizers) != len(trainer.optimizers):
                raise MaskError(
                    f"rewind point has {len(rp.optimizers)} optimizer state(s) but the model configures "
                    f"{len(trainer.optimizers)} optimizer(s)"
                )
            for opt, state in zip(trainer.optimizers, rp.optimizers):
                opt.load_state_dict(cpu_copy(state))  # a copy: the optimizer updates its state in place
            for cfg, state in zip(trainer.lr_scheduler_configs, rp.lr_schedulers):
                cfg.scheduler.load_state_dict(cpu_copy(state))
        self._mask_weights()
        self._zero_pruned_state(trainer.optimizers)  # pruned entries of momenta / moments start at zero
        _compat.set_loop_position(trainer, rp.step, rp.epoch, rp.batch, rp.batches)
        self._pending_rewind = False


_zero_pruned = zero_pruned_  # the names tests/test_performance_invariants.py imports from here


def capture_state(trainer: pl.Trainer, pl_module: pl.LightningModule, *, batch: int = 0) -> RewindState:
    """A CPU copy of the training state now: weights and buffers, optimizer and LR-scheduler state, step, epoch,
    and ``batch``, the number of training batches of the current epoch done (pass it when capturing mid-epoch)."""
    return RewindState(
        step=trainer.global_step,
        epoch=trainer.current_epoch,
        model=cpu_copy(pl_module.state_dict()),
        optimizers=[cpu_copy(opt.state_dict()) for opt in trainer.optimizers],
        lr_schedulers=[cpu_copy(cfg.scheduler.state_dict()) for cfg in trainer.lr_scheduler_configs],
        batch=batch,
        batches=_compat.batches_done(trainer),
    )


def _load_mask_arg(mask: Mapping[str, torch.Tensor] | str | os.PathLike | None) -> Mask | None:
    if mask is None:
        return None
    if isinstance(mask, (str, os.PathLike)):
        return load_mask(mask)
    return {n: m.detach().to("cpu", torch.bool) for n, m in mask.items()}
