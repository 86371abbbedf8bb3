"""Distances between persistence diagrams and their vectorizations (GUDHI).

Only finite points enter the vectorizations (``gudhi.representations`` mishandles infinite
ones). Conventions are stated per function: they differ between libraries by factors of 2 and
sqrt(2).
"""
from __future__ import annotations

import math

import numpy as np

from topoland.topology.persistence import _finite

__all__ = ["bottleneck_distance", "wasserstein_distance", "persistence_image",
           "persistence_landscape", "betti_curve_vector"]


def bottleneck_distance(diagram_a, diagram_b, e: float | None = None) -> float:
    """Bottleneck distance between two ``(n, 2)`` diagrams (GUDHI; essential points are
    matched to essential points, inf if their counts differ). ``e``: allowed error (None: exact)."""
    import gudhi

    a = np.asarray(diagram_a, dtype=np.float64).reshape(-1, 2)
    b = np.asarray(diagram_b, dtype=np.float64).reshape(-1, 2)
    return float(gudhi.bottleneck_distance(a, b) if e is None else gudhi.bottleneck_distance(a, b, e))


def wasserstein_distance(diagram_a, diagram_b, order: float = 1.0,
                         internal_p: float = math.inf) -> float:
    """Wasserstein distance ``W_order`` with ground metric ``L^internal_p`` (GUDHI hera)."""
    from gudhi.hera import wasserstein_distance as _w

    a = np.asarray(diagram_a, dtype=np.float64).reshape(-1, 2)
    b = np.asarray(diagram_b, dtype=np.float64).reshape(-1, 2)
    return float(_w(a, b, order=order, internal_p=internal_p))


def persistence_image(diagram, *, bandwidth: float = 1.0, resolution=(20, 20),
                      im_range=None, weight=None) -> np.ndarray:
    """Persistence image of the finite points (GUDHI's PersistenceImage, birth-persistence
    coordinates, Gaussian of std ``bandwidth``, weight default 1). Returns a flat
    ``(resolution[0] * resolution[1],)`` vector. Give ``im_range`` (xmin, xmax, ymin, ymax)
    to compare diagrams on one grid. An empty diagram gives zeros."""
    from gudhi.representations import PersistenceImage

    d = _finite(diagram)
    size = int(resolution[0]) * int(resolution[1])
    if len(d) == 0:
        return np.zeros(size)
    kw = {} if weight is None else {"weight": weight}
    rng = [np.nan] * 4 if im_range is None else list(im_range)
    pi = PersistenceImage(bandwidth=bandwidth, resolution=list(resolution), im_range=rng, **kw)
    return np.asarray(pi.fit_transform([d])[0], dtype=np.float64)


def persistence_landscape(diagram, *, num_landscapes: int = 5, resolution: int = 100,
                          sample_range=None) -> np.ndarray:
    """Persistence landscapes of the finite points in Bubenik's convention (tent peaks at
    ``(d - b) / 2``; GUDHI's ``Landscape`` is larger by sqrt(2), undone here).
    Returns ``(num_landscapes * resolution,)``. Empty diagram: zeros."""
    from gudhi.representations import Landscape

    d = _finite(diagram)
    if len(d) == 0:
        return np.zeros(num_landscapes * resolution)
    rng = [np.nan, np.nan] if sample_range is None else list(sample_range)
    ls = Landscape(num_landscapes=num_landscapes, resolution=resolution, sample_range=rng)
    return np.asarray(ls.fit_transform([d])[0], dtype=np.float64) / math.sqrt(2.0)


def betti_curve_vector(diagram, *, resolution: int = 100, sample_range=None) -> np.ndarray:
    """Betti curve of the finite points on a regular grid (GUDHI's BettiCurve).
    Returns ``(resolution,)``. Empty diagram: zeros."""
    from gudhi.representations import BettiCurve

    d = _finite(diagram)
    if len(d) == 0:
        return np.zeros(resolution)
    rng = [np.nan, np.nan] if sample_range is None else list(sample_range)
    bc = BettiCurve(resolution=resolution, sample_range=rng)
    return np.asarray(bc.fit_transform([d])[0], dtype=np.float64)


