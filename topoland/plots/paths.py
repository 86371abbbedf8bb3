"""Figures for minimum-energy paths: loss profiles, paths on a plane, disconnectivity graph."""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from topoland.landscape.profiles import Path, path_plane, project_to_plane
from topoland.landscape.connectivity import DisconnectivityTree, disconnectivity_tree
from topoland.landscape.path_losses import PathError

__all__ = ["plot_profiles", "plot_path_plane", "plot_disconnectivity"]


def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt
        _, ax = plt.subplots(figsize=(5, 3.5))
    return ax


def plot_profiles(profiles: dict[str, pd.DataFrame], ax=None, *, column: str = "loss",
                  **kw):
    """Loss along each path against normalised arc length, one line per path.

    profiles: label -> DataFrame from :func:`~topoland.landscape.profiles.path_profile`
    (e.g. ``{"linear": ..., "NEB": ..., "Bezier": ...}``). Returns the Axes.
    """
    ax = _axes(ax)
    for label, df in profiles.items():
        ax.plot(df["t"], df[column], label=label, **kw)
    ax.set_xlabel("position along path (normalised arc length)")
    ax.set_ylabel(column)
    ax.legend()
    return ax


def _points_of(path, n: int = 101) -> Tensor:
    if isinstance(path, Path):
        return path.images
    if isinstance(path, Tensor):
        return path
    fn = path.point if hasattr(path, "point") else path
    return fn(torch.linspace(0, 1, n, dtype=getattr(path, "dtype", torch.float32)))


def plot_path_plane(paths: dict, theta_a: Tensor, theta_b: Tensor, ax=None, *,
                    through: Tensor | None = None, loss_fn: Callable | None = None,
                    grid: int = 41, margin: float = 0.25, **kw):
    """Paths projected on the plane through both endpoints and a path's highest point.

    paths: label -> :class:`Path`, ``(K, D)`` tensor, or curve (``point(t)``/callable).
    through: the third point of the plane (default: the highest image of the first
    :class:`Path` with losses, else its middle point). loss_fn: a batched loss; when given,
    the loss on a ``grid x grid`` patch of the plane is drawn as filled contours (one
    batched call). Axes in parameter-space distance from ``theta_a``. Returns the Axes.
    """
    ax = _axes(ax)
    pts = {k: _points_of(v).detach() for k, v in paths.items()}
    if through is None:
        first_label = next(iter(paths))
        first = paths[first_label]
        if isinstance(first, Path) and first.losses is not None:
            through = first.images[int(first.losses[1:-1].argmax()) + 1]
        else:
            p = pts[first_label]
            through = p[p.shape[0] // 2]
    plane = path_plane(theta_a, theta_b, through)
    xy = {k: project_to_plane(p.to(theta_a), plane).cpu().numpy() for k, p in pts.items()}
    if loss_fn is not None:
        allxy = np.concatenate(list(xy.values()))
        lo, hi = allxy.min(0), allxy.max(0)
        pad = margin * (hi - lo).max()
        u = np.linspace(lo[0] - pad, hi[0] + pad, grid)
        v = np.linspace(lo[1] - pad, hi[1] + pad, grid)
        uu, vv = np.meshgrid(u, v)
        origin, e1, e2 = plane
        coeff = torch.as_tensor(np.stack([uu.ravel(), vv.ravel()], 1), dtype=theta_a.dtype)
        thetas = origin + coeff[:, :1] * e1 + coeff[:, 1:] * e2
        with torch.no_grad():
            z = loss_fn(thetas).detach().cpu().numpy().reshape(grid, grid)
        cs = ax.contourf(uu, vv, z, levels=20, cmap="viridis", alpha=0.8)
        ax.figure.colorbar(cs, ax=ax, label="loss")
    for k, c in xy.items():
        ax.plot(c[:, 0], c[:, 1], marker="o" if pts[k].shape[0] <= 41 else None, ms=3,
                label=k, **kw)
    ends = project_to_plane(torch.stack([theta_a, theta_b]), plane).cpu().numpy()
    ax.scatter(ends[:, 0], ends[:, 1], c="k", marker="*", s=80, zorder=5, label="endpoints")
    ax.set_xlabel("along theta_b - theta_a")
    ax.set_ylabel("towards the highest point")
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend()
    return ax


def plot_disconnectivity(tree, ax=None, *, names: list[str] | None = None, energies=None,
                         **kw):
    """Disconnectivity graph: minima hang from the barrier level at which they merge.

    tree: a :class:`DisconnectivityTree`, or a ``(n, n)`` barrier matrix (then ``names``
    are required). Each minimum is a vertical line from its energy (``energies`` or the
    tree's; else the lowest merge level) up to its first merge; merges are horizontal
    bars at the barrier. Returns the Axes.
    """
    ax = _axes(ax)
    if not isinstance(tree, DisconnectivityTree):
        if names is None:
            raise PathError("plot_disconnectivity: pass names= with a barrier matrix")
        tree = disconnectivity_tree(names, tree, energies=energies)
    n = len(tree.names)
    e = tree.energies if energies is None else np.asarray(energies, float)
    z = tree.linkage
    from scipy.cluster.hierarchy import leaves_list
    order = leaves_list(z) if n > 1 else np.array([0])
    xpos = {int(leaf): i for i, leaf in enumerate(order)}
    base = (z[:, 2].min() if len(z) else 0.0) if e is None else None
    top = {i: (float(e[i]) if e is not None else base) for i in range(n)}
    x = {i: float(xpos[i]) for i in range(n)}
    color = kw.pop("color", "C0")
    for k, (i, j, h, _) in enumerate(z):
        i, j = int(i), int(j)
        for c in (i, j):
            ax.plot([x[c], x[c]], [top[c], h], color=color, **kw)
        ax.plot([x[i], x[j]], [h, h], color=color, **kw)
        x[n + k] = 0.5 * (x[i] + x[j])
        top[n + k] = h
    ax.set_xticks(range(n))
    ax.set_xticklabels([tree.names[int(i)] for i in order], rotation=90)
    ax.set_ylabel("loss (barrier)")
    return ax
