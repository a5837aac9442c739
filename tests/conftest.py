"""Shared test helpers: tiny user-written modules and data (no downloads, a few steps each)."""

from __future__ import annotations

import os
import warnings

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

os.environ.setdefault("WANDB_MODE", "offline")
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*The number of training batches.*")


class TinyMLP(pl.LightningModule):
    """A user's own module: nothing from lightning_lottery."""

    def __init__(self, optimizer: str = "sgd", lr: float = 0.1, weight_decay: float = 0.0, scheduler: bool = False):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def test_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("test_loss", nn.functional.cross_entropy(logits, y))
        self.log("test_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        hp = self.hparams
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=0.9, weight_decay=hp.weight_decay)
        elif hp.optimizer == "adam":
            opt = torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if not hp.scheduler:
            return opt
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[2, 4, 6], gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class TinyConvBN(pl.LightningModule):
    """A user's own conv net with BatchNorm (buffers must rewind too)."""

    def __init__(self, lr: float = 0.05):
        super().__init__()
        self.save_hyperparameters()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
            nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.features(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def test_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("test_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9, weight_decay=1e-4)


class TinyData(pl.LightningDataModule):
    """Random, learnable 3-class data; ``image=True`` gives 1×6×6 inputs."""

    def __init__(self, n: int = 96, batch_size: int = 8, image: bool = False, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        shape = (n, 1, 6, 6) if image else (n, 8)
        self.x = torch.randn(*shape, generator=g)
        flat = self.x.reshape(n, -1)
        self.y = (flat[:, 0] > 0).long() + (flat[:, 1] > 0.5).long()
        self.batch_size = batch_size

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.x, self.y), batch_size=self.batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(1))

    def val_dataloader(self):
        return DataLoader(TensorDataset(self.x[:32], self.y[:32]), batch_size=32)

    def test_dataloader(self):
        return DataLoader(TensorDataset(self.x[:32], self.y[:32]), batch_size=32)


def make_trainer(callbacks, max_steps: int = 10, **kwargs) -> pl.Trainer:
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_checkpointing", False)
    kwargs.setdefault("accelerator", "cpu")
    return pl.Trainer(
        devices=1, max_steps=max_steps, callbacks=callbacks, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, **kwargs,
    )


def random_mask(model: nn.Module, keep: float = 0.5, seed: int = 0) -> dict[str, torch.Tensor]:
    from lightning_lottery.masks import prunable_parameters

    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=g) < keep for n, p in prunable_parameters(model).items()}


@pytest.fixture
def tiny_data() -> TinyData:
    return TinyData()


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path, monkeypatch):
    """Tests write nothing into the checkout (Lightning's default checkpoints, logs, wandb/ go to tmp_path)."""
    monkeypatch.chdir(tmp_path)


def ticket_run_and_export_parser(root, model: nn.Module, mask: dict, class_path: str, init_args: dict):
    """A run directory under ``root`` holding ``model``'s ticket under ``mask`` (``root/experiment.json`` names the
    model's class), and a parser of the export commands: what ``lightning-lottery export RUN`` reads."""
    import json

    from jsonargparse import ArgumentParser

    from lightning_lottery.export.commands import add_export_commands
    from lightning_lottery.ticket import Ticket

    run = root / "replicate_0" / "ticket" / "level_01"
    run.mkdir(parents=True)
    Ticket.from_model(model, mask).save(run / "ticket.safetensors")
    (root / "experiment.json").write_text(json.dumps({"config": {"model": {"class_path": class_path,
                                                                           "init_args": init_args}}}))
    parser = ArgumentParser(exit_on_error=False)
    add_export_commands(parser.add_subcommands(required=True, dest="command"))
    return run, parser
