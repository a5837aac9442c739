"""The instability analysis's files in the experiment directory (a part of :class:`~lightning_lottery.store.ExperimentStore`).

Layout (beside the store's)::

    replicate_0/
      rewind_points/500it.pt        θk for each k of lottery.stability.at (copied during level 0; in its manifest)
      rewind_choice.json            rewind_to: auto: the chosen k and the barriers behind it
      stability/500it/level_01/     the stability run of (level 1, k = 500it); without stability.at: stability/level_01/

Example:
    >>> import tempfile
    >>> from lightning_lottery.store import ExperimentStore
    >>> store = ExperimentStore(tempfile.mkdtemp())
    >>> store.snapshot_file(0, "500it").relative_to(store.root).as_posix()
    'replicate_0/rewind_points/500it.pt'
    >>> store.read_choices()
    {}
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lightning_lottery.atomic import atomic_write_bytes
from lightning_lottery.rewind import RewindState
from lightning_lottery.store_format import json_bytes

__all__ = ["StabilityFiles"]


class StabilityFiles:
    """Paths, writes and reads of the rewind-step copies and of the ``rewind_to: auto`` choice."""

    root: Path
    _produced: list[Path]

    def snapshot_dir(self, replicate: int) -> Path:
        """Where the θk copies of ``replicate`` are (one file per rewind step of ``stability.at``)."""
        return self.root / f"replicate_{replicate}" / "rewind_points"

    def snapshot_file(self, replicate: int, at: str) -> Path:
        """θk of ``replicate`` at the rewind step ``at``."""
        return self.snapshot_dir(replicate) / f"{at}.pt"

    def load_snapshot(self, replicate: int, at: str) -> RewindState:
        return RewindState.load(self.snapshot_file(replicate, at))

    def record_produced(self, paths: Iterable[Path]) -> None:
        """Files written outside the store during the current run (the copies, by the callback): they go into the
        run's manifest."""
        self._produced.extend(Path(p) for p in paths)

    def choice_file(self, replicate: int) -> Path:
        return self.root / f"replicate_{replicate}" / "rewind_choice.json"

    def save_choice(self, replicate: int, choice: Mapping[str, Any]) -> bool:
        """Write the choice of ``replicate`` unless the file already holds it; returns whether it was written (a new
        or a changed choice)."""
        data = json_bytes(dict(choice))
        path = self.choice_file(replicate)
        if path.is_file() and path.read_bytes() == data:
            return False
        atomic_write_bytes(path, data)
        return True

    def read_choices(self) -> dict[int, dict[str, Any]]:
        """Every replicate's choice (``rewind_to: auto``), by replicate; unreadable files are left out."""
        out = {}
        for path in sorted(self.root.glob("replicate_*/rewind_choice.json")):
            try:
                out[int(path.parent.name[10:])] = json.loads(path.read_text())
            except (ValueError, UnicodeDecodeError):
                continue
        return out
