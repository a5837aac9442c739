"""The mask of a pruning level's next level: IMP's pruning of the trained weights, pruning at initialization's
scoring at the rewind point, or a transferred ticket's — what the scheduler writes after a main-line run.

Example:
    >>> LevelMasks.__name__
    'LevelMasks'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_lottery import distributed, pruning, saliency
from lightning_lottery.config import LotteryConfig
from lightning_lottery.criteria import criterion_info, get_criterion
from lightning_lottery.masks import Mask, prunable_parameters
from lightning_lottery.plan import Run, Seeds
from lightning_lottery.store import ExperimentStore
from lightning_lottery.transfer import TransferSource

__all__ = ["LevelMasks"]


@dataclass
class LevelMasks:
    """Makes the next level's mask for one experiment (the scheduler's model, data, settings, seeds and store)."""

    model: pl.LightningModule
    datamodule: pl.LightningDataModule
    config: LotteryConfig
    seeds: Seeds
    store: ExperimentStore
    source: TransferSource | None = None

    def next(self, mask: Mask, run: Run) -> Mask:
        """The mask of ``run``'s next level: pruned from the model's weights now (IMP), scored at the rewind point
        (pruning at initialization) or the source experiment's (transfer)."""
        cfg = self.config
        if cfg.prune_at_init is not None:  # scored at the rewind point on rank 0, whatever was trained
            return distributed.on_main(lambda: self.pai(run.next_level()))
        if self.source is not None:  # the source's next ticket, whatever was trained
            source = self.source
            return distributed.on_main(lambda: source.mask(run.replicate, run.level + 1, mask))
        weights = {n: p.detach() for n, p in prunable_parameters(self.model, cfg.include, cfg.exclude).items()}
        generator = torch.Generator().manual_seed(self.seeds.criterion(run))
        scores = get_criterion(cfg.criterion)(weights, generator=generator)
        device_mask = {n: m.to(weights[n].device) for n, m in mask.items()}
        pruned = pruning.prune(scores, device_mask, cfg.rate, scope=cfg.scope, rates=cfg.rates,
                               structure=cfg.structure, unit_norm=cfg.unit_norm, mask_type=cfg.mask_type)
        return {n: m.cpu() for n, m in pruned.items()}

    def pai(self, run: Run) -> Mask:
        """Pruning at initialization: the mask of ``run``'s level, scored at the rewind point (θ0) with the data."""
        cfg, pai = self.config, self.config.prune_at_init
        assert pai is not None
        info, criterion = criterion_info(cfg.criterion), get_criterion(cfg.criterion)
        generator = torch.Generator().manual_seed(self.seeds.criterion(run))
        batches = self.prune_set(run) if info.data else []
        score = (lambda w: criterion(w, generator, model=self.model, batches=batches)) if info.data else (
            lambda w: criterion({n: p.detach() for n, p in w.items()}, generator=generator))
        names = list(prunable_parameters(self.model, cfg.include, cfg.exclude))
        return saliency.mask_at_init(self.model, self.store.load_rewind_point(run.replicate).model, names, score,
                                     pai.remaining[run.level - 1], scope=pai.scope, min_density=pai.min_density,
                                     rounds=pai.rounds or info.rounds)

    def prune_set(self, run: Run) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The prune set: the first samples of a fresh ``train_dataloader()`` at epoch 0 (whatever was trained before;
        a loader shuffled by torch's global RNG draws under ``run``'s criterion seed)."""
        pai = self.config.prune_at_init
        assert pai is not None

        def loader() -> Any:
            fresh = self.datamodule.train_dataloader()
            if callable(getattr(fresh, "set_epoch", None)):
                fresh.set_epoch(0)
            return fresh

        samples = pai.samples or 10 * saliency.num_classes(self.model, saliency.prune_set(loader(), 1, 1, 0)[0])
        return saliency.prune_set(loader(), samples, pai.batch_size, self.seeds.criterion(run))
