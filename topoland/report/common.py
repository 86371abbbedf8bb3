"""Small pieces every report page uses: cell formatting, blank panels, stored topology."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np

from topoland.io import load_tensors

__all__ = ["fmt", "blank", "read_topology"]


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



def read_topology(path: Path) -> tuple[dict, dict]:
    """A topology stage's arrays and metadata (settings, t_used, notes)."""
    tensors, raw = load_tensors(path)
    return {k: v.numpy() for k, v in tensors.items()}, {k: json.loads(v) for k, v in raw.items()}
