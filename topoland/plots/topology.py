"""Figures of the topology stage: PHATE embeddings, filtration graphs, persistence diagrams,
Betti curves, feature intervals.

Each ``plot_*`` draws on the given Axes (or a new one) and returns it; nothing is saved.
"""
from __future__ import annotations

import numpy as np

from topoland.errors import DataError

__all__ = ["plot_embedding", "plot_filtration_graph", "plot_diagram", "plot_betti_curves",
           "plot_intervals"]


def _ax(ax):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4))
    return ax


def plot_embedding(coords, color=None, trajectories=None, order=None, ax=None, *,
                   color_label: str | None = None, cmap: str = "viridis",
                   categorical: bool | None = None, s: float = 12, path_alpha: float = 0.35,
                   **kw):
    """Scatter a 2-D embedding ``coords`` ``(N, 2)``.

    ``color``: ``(N,)`` values (a loss, a step size) or labels (a trajectory id);
    ``categorical`` (default: integers with at most 20 distinct values) picks a qualitative
    palette and a legend instead of a colour bar. ``trajectories``: ``(N,)`` trajectory id of
    each point; each trajectory is drawn as a path through its points in ``order``
    (``(N,)``, e.g. the epoch; default: the given order). Returns the Axes.
    """
    import matplotlib.pyplot as plt

    ax = _ax(ax)
    Y = np.asarray(coords, dtype=np.float64)
    if Y.ndim != 2 or Y.shape[1] < 2:
        raise DataError(f"coords must have shape (N, 2), got {Y.shape}.")
    n = len(Y)
    for name, arr in (("color", color), ("trajectories", trajectories), ("order", order)):
        if arr is not None and len(arr) != n:
            raise DataError(f"{name} has {len(arr)} entries for {n} points.")
    if trajectories is not None:
        tr = np.asarray(trajectories)
        od = np.arange(n) if order is None else np.asarray(order, dtype=np.float64)
        for t in np.unique(tr):
            idx = np.flatnonzero(tr == t)
            idx = idx[np.argsort(od[idx], kind="stable")]
            ax.plot(Y[idx, 0], Y[idx, 1], "-", color="0.5", lw=0.7, alpha=path_alpha, zorder=1)
    if color is None:
        ax.scatter(Y[:, 0], Y[:, 1], s=s, zorder=2, **kw)
    else:
        c = np.asarray(color)
        if categorical is None:
            categorical = np.issubdtype(c.dtype, np.integer) and len(np.unique(c)) <= 20
        if categorical:
            cm = plt.get_cmap("tab20" if len(np.unique(c)) > 10 else "tab10")
            for i, lab in enumerate(np.unique(c)):
                m = c == lab
                ax.scatter(Y[m, 0], Y[m, 1], s=s, color=cm(i % cm.N), label=str(lab), zorder=2,
                           **kw)
            ax.legend(title=color_label, fontsize="x-small", markerscale=0.8, ncol=2)
        else:
            sc = ax.scatter(Y[:, 0], Y[:, 1], c=c.astype(np.float64), s=s, cmap=cmap, zorder=2,
                            **kw)
            ax.figure.colorbar(sc, ax=ax, label=color_label)
    ax.set_xlabel("PHATE 1")
    ax.set_ylabel("PHATE 2")
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def plot_diagram(diagrams, ax=None, *, inf_value: float | None = None, s: float = 14, **kw):
    """Persistence diagram(s): ``{dim: (n, 2)}`` (or one ``(n, 2)`` array, taken as H0).

    Essential points (death = inf) are drawn on a dashed "inf" line above the largest finite
    value (``inf_value`` to place it yourself). Returns the Axes.
    """
    ax = _ax(ax)
    if not isinstance(diagrams, dict):
        diagrams = {0: diagrams}
    dg = {d: np.asarray(v, dtype=np.float64).reshape(-1, 2) for d, v in diagrams.items()}
    allv = np.concatenate([v.ravel() for v in dg.values()]) if dg else np.zeros(0)
    fin = allv[np.isfinite(allv)]
    lo, hi = (float(fin.min()), float(fin.max())) if fin.size else (0.0, 1.0)
    span = hi - lo if hi > lo else 1.0
    has_inf = any((~np.isfinite(v[:, 1])).any() for v in dg.values())
    yinf = inf_value if inf_value is not None else hi + 0.1 * span
    markers = "os^Dv"
    for i, (dim, v) in enumerate(sorted(dg.items())):
        if not len(v):
            continue
        y = np.where(np.isfinite(v[:, 1]), v[:, 1], yinf)
        ax.scatter(v[:, 0], y, s=s, marker=markers[i % len(markers)], label=f"H{dim}",
                   alpha=0.8, **kw)
    top = yinf if has_inf else hi
    ax.plot([lo - 0.05 * span, top + 0.05 * span], [lo - 0.05 * span, top + 0.05 * span],
            "k-", lw=0.8)
    if has_inf:
        ax.axhline(yinf, color="k", ls="--", lw=0.8)
        ax.text(lo - 0.05 * span, yinf, "inf", va="bottom", ha="left", fontsize="small")
    ax.set_xlabel("birth")
    ax.set_ylabel("death")
    ax.legend(fontsize="small")
    return ax


def plot_betti_curves(curves, thresholds, ax=None, **kw):
    """Betti curves ``{dim: (T,)}`` (from :func:`topoland.topology.betti_curve`) against the
    value ``thresholds`` ``(T,)``, as step functions. Returns the Axes."""
    ax = _ax(ax)
    t = np.asarray(thresholds, dtype=np.float64)
    for dim, b in sorted(curves.items()):
        b = np.asarray(b)
        if b.shape != t.shape:
            raise DataError(f"Betti curve H{dim} has shape {b.shape}, thresholds {t.shape}.")
        ax.step(t, b, where="post", label=f"β{dim}", **kw)
    ax.set_xlabel("loss threshold")
    ax.set_ylabel("Betti number")
    ax.legend(fontsize="small")
    return ax


def plot_filtration_graph(coords, edges, values, ax=None, *, cmap: str = "viridis",
                          color_label: str | None = None, s: float = 8, edge_alpha: float = 0.15):
    """The filtration graph drawn on 2-D coordinates ``(N, 2)`` (e.g. the principal plane):
    ``edges`` ``(2, M)`` as thin lines, vertices coloured by ``values`` ``(N,)`` (colour bar).
    Returns the Axes."""
    from matplotlib.collections import LineCollection

    ax = _ax(ax)
    Y = np.asarray(coords, dtype=np.float64)
    E = np.asarray(edges, dtype=np.int64).reshape(2, -1)
    v = np.asarray(values, dtype=np.float64)
    if Y.ndim != 2 or Y.shape[1] != 2 or len(v) != len(Y):
        raise DataError(f"coords must be (N, 2) with one value each, got {Y.shape} and {v.shape}.")
    if E.size and (E.min() < 0 or E.max() >= len(Y)):
        raise DataError(f"edges refer to vertices outside 0..{len(Y) - 1}.")
    ax.add_collection(LineCollection(np.stack([Y[E[0]], Y[E[1]]], axis=1), colors="0.3",
                                     linewidths=0.3, alpha=edge_alpha))
    sc = ax.scatter(Y[:, 0], Y[:, 1], c=v, cmap=cmap, s=s, zorder=3)
    ax.figure.colorbar(sc, ax=ax, label=color_label)
    ax.autoscale_view()
    return ax


def plot_intervals(intervals, ax=None, *, features=None):
    """A table of features with their resampling intervals: ``intervals`` is a DataFrame with
    ``feature``, ``estimate``, ``low``, ``high`` and ``n_resamples`` (as
    :func:`topoland.topology.topology_of_samples` returns it). Returns the Axes."""
    ax = _ax(ax)
    df = intervals if features is None else intervals[intervals["feature"].isin(features)]
    missing = {"feature", "estimate", "low", "high"} - set(df.columns)
    if missing:
        raise DataError(f"intervals lack the columns {sorted(missing)}.")
    cells = [[r.feature, f"{r.estimate:.3g}", f"[{r.low:.3g}, {r.high:.3g}]"] for r in df.itertuples()]
    ax.set_axis_off()
    if cells:
        tab = ax.table(cellText=cells, colLabels=["feature", "estimate", "interval"],
                       cellLoc="left", colLoc="left", bbox=[-0.3, 0.0, 1.45, 1.0])
        tab.auto_set_font_size(False)
        tab.set_fontsize(8)
        for (_, col), cell in tab.get_celld().items():   # room for the names and intervals
            cell.set_width((0.5, 0.22, 0.73)[col])
    return ax
