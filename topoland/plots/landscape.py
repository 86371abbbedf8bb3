"""Figures of loss surfaces (:class:`topoland.landscape.surfaces.Surface`) and VTK export.

Every ``plot_*`` takes a surface and an optional Axes and returns the Axes; nothing is saved
here except by :func:`export_vtk`, which writes a legacy ASCII VTK file for ParaView. Only the
metrics a surface holds are drawn: a regression surface (``loss="mse"``, float targets) has no
``*_acc`` values, so :func:`quantities` lists no "acc" and nothing draws an accuracy axis.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from topoland.errors import TopolandError

__all__ = ["quantities", "plot_line", "plot_contour", "plot_heatmap", "plot_surface_3d",
           "plot_trajectory", "export_vtk"]

_SPLITS = ("train", "val", "test")
_LABELS = {"acc": "accuracy", "err": "error"}


class PlotError(TopolandError):
    """A surface cannot be drawn as asked (wrong dimension or missing metric)."""


def _ax(ax, projection=None):
    import matplotlib.pyplot as plt

    if ax is None:
        fig = plt.figure(figsize=(5, 4))
        ax = fig.add_subplot(111, projection=projection)
    return ax


def _need(surface, ndim, metric=None):
    if surface.ndim != ndim:
        raise PlotError(f"this plot needs a {ndim}-D surface, got {surface.ndim}-D")
    if metric is not None and metric not in surface.values:
        raise PlotError(f"metric {metric!r} is not in the surface ({sorted(surface.values)})")


def quantities(surface) -> list[str]:
    """The metric suffixes of a surface's ``{split}_{quantity}`` values, in order of appearance:
    e.g. ``["loss", "acc"]`` for a classification, ``["loss"]`` for a regression."""
    out = []
    for k in surface.values:
        split, _, q = k.partition("_")
        q = q if split in _SPLITS and q else k
        if q not in out:
            out.append(q)
    return out


def _label(surface, quantity: str) -> str:
    if quantity == "loss" and surface.meta.get("loss"):
        return f"loss ({surface.meta['loss']})"
    return _LABELS.get(quantity, quantity)


def _axis_labels(surface, ax):
    evr = surface.meta.get("explained_variance_ratio")
    if evr is not None:
        ax.set_xlabel(f"PC1 ({100 * evr[0]:.1f}% var.)")
        ax.set_ylabel(f"PC2 ({100 * evr[1]:.1f}% var.)")
    else:
        ax.set_xlabel("direction 1")
        ax.set_ylabel("direction 2")


def plot_line(surface, ax=None, *, quantity: str = "loss", **kw):
    """1-D curves of ``{split}_{quantity}`` (e.g. train and test loss) against alpha.

    quantity: "loss" | "acc" | any metric suffix (:func:`quantities` lists those present; a
    regression surface has no "acc"). Interpolations mark alpha = 0 and 1."""
    _need(surface, 1)
    keys = [k for k in surface.values if k.endswith(f"_{quantity}")]
    if not keys:
        what = (f"no {_LABELS[quantity]} values (loss {surface.meta.get('loss', '?')!r}: "
                f"{_LABELS[quantity]} is recorded only for class-index targets)"
                if quantity in _LABELS else f"no metric ending in '_{quantity}'")
        raise PlotError(f"the surface has {what}; it holds {sorted(surface.values)}")
    ax = _ax(ax)
    for k in keys:
        ax.plot(surface.xs, surface.values[k], label=k.replace("_", " "), **kw)
    if surface.meta.get("kind") == "interpolate":
        for a in (0.0, 1.0):
            ax.axvline(a, color="0.6", lw=0.8, ls=":")
    ax.set_xlabel("alpha")
    ax.set_ylabel(_label(surface, quantity))
    ax.legend()
    return ax


def plot_contour(surface, ax=None, *, metric: str = "train_loss", levels=20, filled=False,
                 log=False, **kw):
    """Contour (or filled contour with ``filled=True``) of a 2-D surface; log: log10 values."""
    _need(surface, 2, metric)
    ax = _ax(ax)
    v = surface.values[metric]
    v = np.log10(np.maximum(v, 1e-12)) if log else v
    gx, gy = np.meshgrid(surface.xs, surface.ys)
    cs = (ax.contourf if filled else ax.contour)(gx, gy, v, levels=levels, **kw)
    if filled:
        ax.figure.colorbar(cs, ax=ax, label=("log10 " if log else "") + metric)
    else:
        ax.clabel(cs, inline=True, fontsize=7)
    _axis_labels(surface, ax)
    return ax


def plot_heatmap(surface, ax=None, *, metric: str = "train_loss", cmap="viridis", **kw):
    """Heat map of a 2-D surface (cells centred on the grid points)."""
    _need(surface, 2, metric)
    ax = _ax(ax)
    im = ax.pcolormesh(surface.xs, surface.ys, surface.values[metric], shading="nearest",
                       cmap=cmap, **kw)
    ax.figure.colorbar(im, ax=ax, label=metric)
    _axis_labels(surface, ax)
    return ax


def plot_surface_3d(surface, ax=None, *, metric: str = "train_loss", cmap="viridis", **kw):
    """3-D surface plot (creates a 3-D Axes when ax is None)."""
    _need(surface, 2, metric)
    ax = _ax(ax, projection="3d")
    if not hasattr(ax, "plot_surface"):
        raise PlotError("plot_surface_3d needs a 3-D Axes (projection='3d')")
    gx, gy = np.meshgrid(surface.xs, surface.ys)
    ax.plot_surface(gx, gy, surface.values[metric], cmap=cmap, linewidth=0, **kw)
    _axis_labels(surface, ax)
    ax.set_zlabel(metric)
    return ax


def plot_trajectory(surface, ax=None, *, metric: str = "train_loss", levels=20, **kw):
    """Contour of the PCA-plane surface with the training path drawn over it.

    Axes labelled with the explained variance of the two components."""
    _need(surface, 2, metric)
    if surface.path is None:
        raise PlotError("the surface has no trajectory (use trajectory_plane)")
    ax = plot_contour(surface, ax, metric=metric, levels=levels, **kw)
    p = np.asarray(surface.path)
    ax.plot(p[:, 0], p[:, 1], "-o", color="C3", ms=3, lw=1.2, label="trajectory")
    ax.plot([0.0], [0.0], "*", color="k", ms=10, label="final")
    ax.legend()
    return ax


def export_vtk(surface, path, *, metric: str = "train_loss", z_scale: float = 1.0) -> Path:
    """Write a 2-D surface as a legacy ASCII VTK STRUCTURED_GRID for ParaView.

    Points (x, y, z_scale * value) on the nx x ny grid (x fastest), with every metric as
    POINT_DATA scalars. Non-finite values are written as 0 height and NaN scalars.
    Returns the path."""
    _need(surface, 2, metric)
    path = Path(path)
    xs, ys = surface.xs, surface.ys
    nx, ny = len(xs), len(ys)
    gx, gy = np.meshgrid(xs, ys)
    z = surface.values[metric]
    z = np.where(np.isfinite(z), z, 0.0) * z_scale
    lines = ["# vtk DataFile Version 3.0", f"topoland surface {metric}", "ASCII",
             "DATASET STRUCTURED_GRID", f"DIMENSIONS {nx} {ny} 1", f"POINTS {nx * ny} double"]
    lines += [f"{a:.9g} {b:.9g} {c:.9g}" for a, b, c in
              zip(gx.reshape(-1), gy.reshape(-1), z.reshape(-1))]
    lines.append(f"POINT_DATA {nx * ny}")
    for k, v in surface.values.items():
        lines += [f"SCALARS {k} double 1", "LOOKUP_TABLE default"]
        lines += [("nan" if not np.isfinite(a) else f"{a:.9g}") for a in np.asarray(v).reshape(-1)]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path
