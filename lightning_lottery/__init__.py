"""lightning-lottery: find lottery tickets with PyTorch Lightning.

``LotteryTicket`` is the callback (mask + rewind point inside one fit); ``PruningScheduler`` runs the levels.
The tensor logic (``masks``, ``criteria``, ``pruning``) imports no Lightning; the names below load lazily.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning_lottery.callback import LotteryTicket
    from lightning_lottery.config import LotteryConfig
    from lightning_lottery.scheduler import PruningScheduler
    from lightning_lottery.ticket import Ticket
    from lightning_lottery.tracking import WandbSettings

__all__ = ["LotteryConfig", "LotteryTicket", "PruningScheduler", "Ticket", "WandbSettings"]
__version__ = "0.1.0"

_HOMES = {
    "LotteryTicket": "lightning_lottery.callback",
    "LotteryConfig": "lightning_lottery.config",
    "PruningScheduler": "lightning_lottery.scheduler",
    "Ticket": "lightning_lottery.ticket",
    "WandbSettings": "lightning_lottery.tracking",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'lightning_lottery' has no attribute {name!r}")
