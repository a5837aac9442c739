"""Errors shared by the reference datamodules."""

from __future__ import annotations

__all__ = ["DataNotFoundError"]


class DataNotFoundError(FileNotFoundError):
    """A dataset's files are not where they were looked for (and were not downloaded).

    The message names the directories searched and says how to get the data.

    Example:
        >>> try:
        ...     raise DataNotFoundError("no data in /nowhere")
        ... except FileNotFoundError as err:
        ...     print(err)
        no data in /nowhere
    """
