"""Small pieces every report page uses: cell formatting and blank panels."""
from __future__ import annotations

import textwrap

import numpy as np

__all__ = ["fmt", "blank"]


def fmt(v) -> str:
    """A table cell: floats to 4 significant digits, booleans as yes/no, missing as '–'."""
    if v is None:
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            return "–" if np.isnan(v) else str(v)
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(fmt(x) for x in v)
    return str(v)


def blank(ax, message: str) -> None:
    ax.set_axis_off()
    ax.text(0.5, 0.5, textwrap.fill(message, 40), ha="center", va="center", fontsize=9,
            color="0.35", transform=ax.transAxes)
