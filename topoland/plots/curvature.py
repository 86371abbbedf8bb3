"""Figures for curvature: the Hessian eigenvalue density and the loss along random directions."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from topoland.landscape.hessian import CurvatureError


def plot_eigenvalue_density(data, ax=None, *, log=True, eigenvalues=None, floor=1e-8, color="C0",
                            label=None, **kw):
    """Eigenvalue density from stochastic Lanczos quadrature.

    data: ``(grid (G,), density (G,))`` as returned by
    :func:`topoland.landscape.spectrum.eigenvalue_density`. ``log``: logarithmic density axis
    (densities below ``floor`` are clipped to it). ``eigenvalues``: optional values (e.g. the
    top eigenvalues) marked by dashed vertical lines. Extra keywords go to ``ax.plot``.
    Returns the Axes.
    """
    grid, density = (np.asarray(a, dtype=np.float64) for a in data)
    if grid.shape != density.shape or grid.ndim != 1:
        raise CurvatureError(f"grid and density must be 1-D of equal length, got {grid.shape}, {density.shape}")
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    y = np.maximum(density, floor) if log else density
    ax.plot(grid, y, color=color, label=label, **kw)
    if not log:
        ax.fill_between(grid, 0, y, color=color, alpha=0.2)
    if log:
        ax.set_yscale("log")
    for ev in np.atleast_1d(eigenvalues) if eigenvalues is not None else []:
        ax.axvline(float(ev), color="C3", ls="--", lw=0.8)
    ax.set_xlabel("Hessian eigenvalue")
    ax.set_ylabel("density" + (" (log scale)" if log else ""))
    if label is not None:
        ax.legend()
    return ax


def plot_loss_along_directions(profile, ax=None, *, volume=None, relative=True, max_lines=50, **kw):
    """Loss along random normalized directions (the data behind sharpness and basin volume).

    profile: dict from :func:`topoland.landscape.curvature.sharpness_profile` with ``alphas``
    (A,), ``losses`` (n, A), ``base_loss`` and ``radius``. ``relative``: plot
    ``loss - base_loss``. ``volume``: optional dict from
    :func:`topoland.landscape.curvature.basin_volume` (same directions): its level is drawn as
    a horizontal line and each radius as a marker on it. At most ``max_lines`` curves are
    drawn. Returns the Axes.
    """
    alphas = np.asarray(profile["alphas"], dtype=np.float64)
    losses = np.atleast_2d(np.asarray(profile["losses"], dtype=np.float64))
    base = float(profile["base_loss"])
    shift = base if relative else 0.0
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    for row in losses[:max_lines]:
        ax.plot(alphas, row - shift, color=kw.get("color", "C0"), alpha=kw.get("alpha", 0.5), lw=1)
    r = profile.get("radius")
    if r is not None:
        ax.axvspan(-r, r, color="0.9", zorder=0)
    ax.axhline(float(losses.max()) - shift, color="C1", ls=":", lw=1,
               label=f"sharpness {losses.max() - base:.3g}")
    if volume is not None:
        level = float(volume["level"]) - shift
        ax.axhline(level, color="C3", ls="--", lw=1, label="basin level")
        radii = np.asarray(volume["radii"], dtype=np.float64)
        cens = np.asarray(volume.get("censored", np.zeros(radii.shape, bool)))
        ax.plot(radii[~cens], np.full((~cens).sum(), level), "v", color="C3", ms=4)
        if cens.any():
            ax.plot(radii[cens], np.full(cens.sum(), level), ">", color="0.4", ms=4, label="censored")
    ax.set_xlabel("alpha (filter-normalized units)")
    ax.set_ylabel("loss - loss*" if relative else "loss")
    ax.legend(fontsize="small")
    return ax
