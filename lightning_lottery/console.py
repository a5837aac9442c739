"""The ``lightning-lottery`` console script: answers ``--version`` and ``recipes`` without importing Lightning
(several seconds), starts local workers early (:mod:`lightning_lottery.worker_start`) when the command line asks for
them, hands everything else to :func:`lightning_lottery.cli.main`.

Example:
    >>> from lightning_lottery.console import main
    >>> main(["--version"])
    lightning-lottery 0.1.0
    0
"""

from __future__ import annotations

import contextlib
import gc
import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lightning-lottery`` console script."""
    args = list(argv) if argv is not None else sys.argv[1:]
    if args == ["--version"]:
        from lightning_lottery import __version__

        print(f"lightning-lottery {__version__}")
        return 0
    if args == ["recipes"]:
        from lightning_lottery.recipe_files import recipe_listing

        print(recipe_listing())
        return 0
    from lightning_lottery.recipe_files import resolve_recipes
    from lightning_lottery.worker_start import warm

    with contextlib.suppress(Exception):  # a bad command line is the CLI's to report
        warm(resolve_recipes(args))  # local workers' imports overlap with the CLI's
    gc.disable()  # the imports make objects that live to the end: full collections over them are wasted work
    from lightning_lottery.cli import main as full

    gc.freeze()  # out of the collector's way from now on
    gc.enable()
    return full(args)


if __name__ == "__main__":
    sys.exit(main())
