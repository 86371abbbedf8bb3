"""Figures of fast geometric ensembles (:mod:`topoland.train.ensembles`)."""
from __future__ import annotations

import pandas as pd

from topoland.errors import TopolandError

__all__ = ["plot_ensemble_curve", "plot_cyclic_lr"]


def _ax(ax):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    return ax


def plot_ensemble_curve(curve: pd.DataFrame, ax=None, *, label: str | None = None, **kw):
    """Ensemble accuracy (and mean/individual member accuracy) against the number of members.

    curve: :func:`topoland.train.ensembles.ensemble_curve` output. Returns the Axes.
    """
    need = {"members", "ensemble_acc", "member_acc", "mean_member_acc"}
    if not need <= set(curve.columns):
        raise TopolandError(f"plot_ensemble_curve needs columns {sorted(need)}, got {list(curve.columns)}")
    ax = _ax(ax)
    prefix = f"{label}: " if label else ""
    ax.plot(curve["members"], curve["ensemble_acc"], marker="o", label=prefix + "ensemble", **kw)
    ax.plot(curve["members"], curve["mean_member_acc"], ls="--", label=prefix + "mean member")
    ax.scatter(curve["members"], curve["member_acc"], s=12, alpha=0.6, label=prefix + "member")
    ax.set_xlabel("members")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    return ax


def plot_cyclic_lr(history: pd.DataFrame, ax=None, **kw):
    """Learning rate per iteration with the snapshot iterations marked (FGE history). Returns the Axes."""
    if not {"lr", "snapshot"} <= set(history.columns):
        raise TopolandError("plot_cyclic_lr needs an FGE history with 'lr' and 'snapshot' columns")
    ax = _ax(ax)
    it = range(len(history))
    ax.plot(it, history["lr"], **kw)
    snap = history["snapshot"].to_numpy(bool)
    ax.scatter([i for i, s in zip(it, snap) if s], history["lr"][snap], color="C3", zorder=3, label="snapshot")
    ax.set_xlabel("iteration")
    ax.set_ylabel("learning rate")
    ax.legend(fontsize=8)
    return ax
