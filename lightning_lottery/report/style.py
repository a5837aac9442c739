"""The look of the report's figures: branch colours, matplotlib style, figure size and PNG / SVG output."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["BRANCH_COLORS", "DPI", "RC_STYLE", "branch_colors", "figure_bytes", "new_figure", "png_bytes", "svg_bytes",
           "tick_label"]

#: Fixed colours of the known branches (others get the next free ones).
BRANCH_COLORS: dict[str, str] = {
    "ticket": "#1f77b4", "random_reinit": "#ff7f0e", "random_mask": "#2ca02c", "lr_rewind": "#d62728",
    "finetune": "#9467bd", "oneshot": "#8c564b", "weights_rewind": "#17becf",
}
_SPARE_COLORS = ("#e377c2", "#7f7f7f", "#bcbd22", "#393b79", "#637939", "#8c6d31", "#843c39")

DPI = 110
#: matplotlib rc settings of every figure.
RC_STYLE = {
    "svg.hashsalt": "lightning-lottery",  # deterministic SVG ids (clip paths, markers)
    "svg.fonttype": "none",  # text stays text: small, searchable, deterministic
    "font.size": 9.5,
    "axes.titlesize": 10.5,
    "axes.labelsize": 9.5,
    "legend.fontsize": 8.5,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
_PNG_METADATA = {"Software": None}  # no version string; matplotlib writes no date into PNGs
_SVG_METADATA = {"Date": None, "Creator": None}  # no date, no version string


def branch_colors(branches: Sequence[str]) -> dict[str, str]:
    """A colour per branch: its fixed one, else the next spare one.

    Example:
        >>> branch_colors(["weights_rewind", "random_mask", "mystery"])
        {'weights_rewind': '#17becf', 'random_mask': '#2ca02c', 'mystery': '#e377c2'}
    """
    colors, spare = {}, iter(_SPARE_COLORS * 4)
    for branch in branches:
        colors[branch] = BRANCH_COLORS.get(branch) or next(spare)
    return colors


def tick_label(pct: float) -> str:
    """A percentage as a short tick label (3 significant digits, 2 below 1%)."""
    return f"{pct:.3g}" if pct >= 1 else f"{pct:.2g}"


def new_figure(width: float, height: float) -> Figure:
    """A figure of ``width`` × ``height`` inches at :data:`DPI`, constrained layout."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def png_bytes(fig: Figure) -> bytes:
    """``fig`` as PNG bytes, without a version string (deterministic)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata=_PNG_METADATA, facecolor="white")
    return buf.getvalue()


def svg_bytes(fig: Figure) -> bytes:
    """``fig`` as SVG bytes, without a date or a version string, under :data:`RC_STYLE`'s SVG settings
    (deterministic ids, text as text); save under :data:`RC_STYLE` as a whole for the same layout."""
    import matplotlib

    buf = io.BytesIO()
    with matplotlib.rc_context({k: v for k, v in RC_STYLE.items() if k.startswith("svg.")}):
        fig.savefig(buf, format="svg", metadata=_SVG_METADATA, facecolor="white")
    return buf.getvalue()


def figure_bytes(fig: Figure, formats: Sequence[str] = ("png", "svg")) -> dict[str, bytes]:
    """``fig`` in each of ``formats`` (``"png"``, ``"svg"``).

    Example:
        >>> import matplotlib
        >>> def render():
        ...     with matplotlib.rc_context(RC_STYLE):
        ...         fig = new_figure(2, 1)
        ...         _ = fig.subplots().plot([0, 1], [1, 0])
        ...         return figure_bytes(fig)
        >>> out = render()
        >>> out["png"][1:4], out["svg"][:5], b"<dc:date>" in out["svg"], out == render()
        (b'PNG', b'<?xml', False, True)
    """
    writers = {"png": png_bytes, "svg": svg_bytes}
    out = {}
    for fmt in formats:
        out[fmt] = writers[fmt](fig)
        fig.set_layout_engine("none")  # laid out by the first format's draw: the others reuse it (issue 18)
    return out
