"""The ``wandb:`` section of a recipe: whether, where and how runs are tracked."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Optional

if TYPE_CHECKING:

    pass




@dataclass(frozen=True)
class WandbSettings:
    """The ``wandb:`` section of a recipe.

    Args:
        enabled: log to W&B at all (``false``, or ``WANDB_MODE=disabled``, switches tracking off).
        project: W&B project.
        entity: W&B entity (user or team); ``None`` for the default one.
        mode: ``online``, ``offline`` or ``disabled``; ``None`` follows ``WANDB_MODE`` (W&B's default: online).
        tags: tags of every run.
        log_tickets: log artifacts: each run's ticket (``lottery-ticket``), the main line's masks
            (``lottery-mask``) and rewind points (``lottery-rewind-point``), and the inputs each run uses.
        dir: where W&B writes its files; default: the experiment directory (``<out_dir>/wandb``).
    """

    enabled: bool = True
    project: str = "lightning-lottery"
    entity: Optional[str] = None
    mode: Optional[Literal["online", "offline", "disabled"]] = None
    tags: list[str] = field(default_factory=list)
    log_tickets: bool = True
    dir: Optional[str] = None

    @property
    def active(self) -> bool:
        return self.enabled and self.resolved_mode() != "disabled"

    def resolved_mode(self) -> str:
        """``mode``, else ``WANDB_MODE``, else ``online`` when a W&B login is found and ``offline`` when not."""
        if self.mode:
            return self.mode
        env = os.environ.get("WANDB_MODE", "")
        if env:
            return "offline" if env == "dryrun" else env
        return "online" if _logged_in() else "offline"


def _logged_in() -> bool:
    """Whether W&B credentials exist (environment or ~/.netrc), without asking W&B's servers."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc

    try:
        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


