"""Figures of loss patterns (:mod:`topoland.landscape.patterns`)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from topoland.errors import TopolandError

__all__ = ["plot_mask", "plot_pattern", "plot_pattern_gap"]


def _ax(ax):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    return ax


def plot_mask(mask, ax=None, **kw):
    """The target mask ``(H, W)`` bool (True = high loss, drawn dark). Returns the Axes."""
    ax = _ax(ax)
    ax.imshow(np.asarray(mask, float), cmap=kw.pop("cmap", "Greys"), vmin=0, vmax=1, **kw)
    ax.set_title("target (dark = high loss)")
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def plot_pattern(grid, mask=None, ax=None, *, clip: float | None = 2.5, colorbar: bool = True, **kw):
    """Loss on the grid of cells ``(H, W)`` (nats; values above ``clip`` shown at ``clip``), with
    the mask's outline when given. Row 0 at the top, as in the picture. Returns the Axes."""
    g = np.asarray(grid, float)
    if g.ndim != 2:
        raise TopolandError(f"plot_pattern needs an (H, W) grid, got shape {g.shape}")
    ax = _ax(ax)
    shown = np.minimum(g, clip) if clip is not None else g
    im = ax.imshow(shown, cmap=kw.pop("cmap", "viridis"), **kw)
    if mask is not None:
        m = np.asarray(mask, float)
        if m.shape != g.shape:
            raise TopolandError(f"mask shape {m.shape} differs from the grid's {g.shape}")
        ax.contour(m, levels=[0.5], colors="white", linewidths=1.0)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, label="loss (nats)")
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def plot_pattern_gap(table: pd.DataFrame, ax=None, *, y: str = "acc_gap", hue: str = "batchnorm", **kw):
    """Mean +- std of ``y`` against mask fill probability, one line per ``hue`` value (e.g. BN
    vs no BN). table: one row per fit with columns ``fill``, ``hue`` and ``y``. Returns the Axes."""
    need = {"fill", y, hue}
    if not need <= set(table.columns):
        raise TopolandError(f"plot_pattern_gap needs columns {sorted(need)}, got {list(table.columns)}")
    ax = _ax(ax)
    for key, part in table.groupby(hue):
        stats = part.groupby("fill")[y].agg(["mean", "std"]).reset_index()
        ax.errorbar(stats["fill"], stats["mean"], yerr=stats["std"].fillna(0), marker="o", capsize=3,
                    label=f"{hue}={key}", **kw)
    ax.set_xlabel("mask fill probability")
    ax.set_ylabel(y.replace("_", " "))
    ax.legend(fontsize=8)
    return ax
