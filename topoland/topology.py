"""k-NN graphs on sampled snapshots, loss-valued lower-star filtrations and their persistence.

Conventions (see docs/topology.md):

* A vertex is a recorded sample; vertex ``i`` is ``sample_id`` ``i`` (row ``i`` of the
  snapshots or of the Gram sketch). Its value is its own loss (validation by default).
* Lower-star filtration: a vertex enters at its value, an edge (and a triangle of the flag
  complex) at the max of its vertices' values.
* Diagrams are dicts ``{dim: (n, 2) float64 array of (birth, death)}``, sorted by birth then
  death. Zero-length bars are dropped. For ``complex="graph"`` and ``"flag"`` essential
  classes are explicit rows with ``death = +inf``. For ``"extended"`` every class is finite
  and each point is stored as ``(min, max)`` of its two values (Relative and Extended-
  points, whose birth exceeds their death, are flipped); persistence is ``|death - birth|``.
* Units: births and deaths are in the units of the vertex value (nats for losses).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

from topoland.errors import ConfigError, DataError

__all__ = [
    "COMPLEXES", "DEFAULT_COMPLEX", "DISTANCES", "DEFAULT_ESSENTIAL", "GRAPH_ON", "VALUES",
    "TrajectorySet", "TopologyResult", "LossTopology",
    "knn_graph", "knn_graph_reference", "potential_distances", "euclidean_distances",
    "to_networkx", "vertex_values", "lower_star_persistence", "extended_diagrams",
    "total_persistence", "betti_curve", "bottleneck_distance", "wasserstein_distance",
    "persistence_image", "persistence_landscape", "betti_curve_vector", "diagram_features",
    "topology_of_samples",
]

COMPLEXES = ("graph", "flag", "extended")
DEFAULT_COMPLEX = "flag"
DEFAULT_ESSENTIAL = "cap"
GRAPH_ON = ("potential", "embedding", "cosine")
ESSENTIAL = ("drop", "cap")
VALUES = ("val_loss", "train_loss", "test_loss")
DISTANCES = ("exact", "sketch")


# --------------------------------------------------------------------------- graphs

def knn_graph(distances, k: int = 20, *, block_size: int = 1024) -> np.ndarray:
    """Symmetrized k-nearest-neighbour graph of a distance matrix.

    ``distances``: ``(N, N)`` (only row ``i`` is read for point ``i``; need not be symmetric).
    Each point is joined to its ``k`` nearest other points (ties broken by the lower index),
    then edges are symmetrized (``i~j`` if either chose the other). Returns ``(2, M)`` int64
    edges with ``edges[0] < edges[1]``, no self-loops, no duplicates, sorted.
    """
    D = np.asarray(distances)
    if D.ndim != 2 or D.shape[0] != D.shape[1]:
        raise DataError(f"distances must be a square (N, N) matrix, got shape {D.shape}.")
    n = D.shape[0]
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"knn graph k must be a positive integer, got {k!r}.")
    if k >= n:
        raise ConfigError(f"knn graph k={k} needs more than k points, got N={n}.")
    if np.isnan(D).any():
        raise DataError("distances contain NaN; cannot build a k-NN graph.")
    rows, cols = [], []
    for b0 in range(0, n, block_size):
        b1 = min(b0 + block_size, n)
        blk = np.array(D[b0:b1], dtype=np.float64)
        r = np.arange(b1 - b0)
        blk[r, b0 + r] = np.inf  # no self-loops
        kth = np.partition(blk, k - 1, axis=1)[:, k - 1:k]
        take = blk <= kth
        tied = np.flatnonzero(take.sum(axis=1) > k)  # more than k within the k-th distance
        if tied.size:  # ties at the k-th distance: lowest indices first
            sub, kt = blk[tied], kth[tied]
            lt = sub < kt
            eq = sub == kt
            need = k - lt.sum(axis=1, keepdims=True)
            take[tied] = lt | (eq & (np.cumsum(eq, axis=1) <= need))
        ri, ci = np.nonzero(take)
        rows.append(ri + b0)
        cols.append(ci)
    rows = np.concatenate(rows)
    cols = np.concatenate(cols)
    lo, hi = np.minimum(rows, cols), np.maximum(rows, cols)
    pairs = np.unique(lo.astype(np.int64) * n + hi)
    return np.stack([pairs // n, pairs % n]).astype(np.int64)


def knn_graph_reference(distances, k: int = 20) -> np.ndarray:
    """Plain-loop reference for :func:`knn_graph` (sort each row by (distance, index))."""
    D = np.asarray(distances, dtype=np.float64)
    n = D.shape[0]
    edges = set()
    for i in range(n):
        order = sorted((D[i, j], j) for j in range(n) if j != i)
        for _, j in order[:k]:
            edges.add((min(i, j), max(i, j)))
    e = sorted(edges)
    return np.array(e, dtype=np.int64).T.reshape(2, len(e))


def euclidean_distances(Y) -> np.ndarray:
    """Euclidean distances between the rows of ``Y`` (``(N, F)``); returns ``(N, N)`` float64."""
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim != 2:
        raise DataError(f"points must have shape (N, F), got {Y.shape}.")
    mu = Y.mean(axis=0, keepdims=True)  # centring reduces cancellation; distances unchanged
    Z = Y - mu
    sq = np.einsum("ij,ij->i", Z, Z)
    D = Z @ Z.T  # numpy runs Z @ Z.T as a symmetric rank-k update (half the products)
    n, bs = len(D), 1024
    for a0 in range(0, n, bs):  # in place, row block by row block (no N x N temporaries)
        blk = D[a0:a0 + bs]
        blk *= -2.0
        blk += sq[a0:a0 + bs, None] + sq[None, :]  # (sq_i + sq_j) as one sum: symmetric
        np.maximum(blk, 0.0, out=blk)
        np.sqrt(blk, out=blk)
    np.fill_diagonal(D, 0.0)
    for a0 in range(0, n, bs):  # exact symmetry (BLAS need not give it): mirror the upper part
        d = D[a0:a0 + bs, a0:a0 + bs]
        d[np.tril_indices_from(d, -1)] = d.T[np.tril_indices_from(d, -1)]
        for b0 in range(a0 + bs, n, bs):
            D[b0:b0 + bs, a0:a0 + bs] = D[a0:a0 + bs, b0:b0 + bs].T
    return D


def potential_distances(potential) -> np.ndarray:
    """PHATE potential distances: Euclidean distances between rows of the diffusion potential.

    ``potential``: ``(N, N)`` or ``(N, n_landmark)``; returns ``(N, N)`` float64.
    """
    return euclidean_distances(potential)


def to_networkx(edges, values=None, n_vertices: int | None = None):
    """A ``networkx.Graph`` with vertices ``0..N-1`` (attribute ``value`` when ``values``
    is given) and edges (attribute ``value`` = max of the endpoint values)."""
    import networkx as nx

    E = _check_edges(edges)
    if n_vertices is None:
        n_vertices = len(values) if values is not None else (int(E.max()) + 1 if E.size else 0)
    g = nx.Graph()
    if values is None:
        g.add_nodes_from(range(n_vertices))
        g.add_edges_from(zip(E[0].tolist(), E[1].tolist()))
    else:
        f = np.asarray(values, dtype=np.float64)
        g.add_nodes_from((i, {"value": float(f[i])}) for i in range(n_vertices))
        g.add_edges_from((int(a), int(b), {"value": float(max(f[a], f[b]))})
                         for a, b in zip(E[0], E[1]))
    return g


def _check_edges(edges, n: int | None = None) -> np.ndarray:
    E = np.asarray(edges)
    if E.size == 0:
        return np.zeros((2, 0), dtype=np.int64)
    if E.ndim != 2 or E.shape[0] != 2:
        raise DataError(f"edges must have shape (2, M), got {E.shape}.")
    if not np.issubdtype(E.dtype, np.integer):
        raise DataError(f"edges must be integers, got {E.dtype}.")
    if n is not None and (E.min() < 0 or E.max() >= n):
        raise DataError(f"edges refer to vertices outside 0..{n - 1}.")
    if (E[0] == E[1]).any():
        raise DataError("edges contain self-loops.")
    return E.astype(np.int64)


# --------------------------------------------------------------------------- values

def vertex_values(table: pd.DataFrame, column: str = "val_loss", sample_ids=None) -> np.ndarray:
    """Each vertex's own value, looked up by ``sample_id`` (never by row position).

    ``sample_ids``: the sample id of each vertex, ``(N,)``; default ``0..len(table)-1``
    (vertex ``i`` is snapshot row ``i`` is ``sample_id`` ``i``). Returns ``(N,)`` float64.
    Raises :class:`DataError` for a missing column, duplicate or missing ids, or non-finite
    values (drop diverged samples first).
    """
    if "sample_id" not in table.columns:
        raise DataError("trajectory table has no 'sample_id' column.")
    if column not in table.columns:
        raise DataError(f"trajectory table has no column {column!r} (vertex value).")
    ids = table["sample_id"].to_numpy()
    if len(np.unique(ids)) != len(ids):
        raise DataError("trajectory table has duplicate sample_id values.")
    if sample_ids is None:
        sample_ids = np.arange(len(table))
    sample_ids = np.asarray(sample_ids)
    s = pd.Series(table[column].to_numpy(dtype=np.float64), index=ids)
    missing = ~np.isin(sample_ids, ids)
    if missing.any():
        raise DataError(f"sample ids {sample_ids[missing][:5].tolist()} are not in the "
                        "trajectory table.")
    out = s.loc[sample_ids].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(out)
    if bad.any():
        raise DataError(f"column {column!r} is not finite for sample ids "
                        f"{sample_ids[bad][:5].tolist()}; drop diverged samples first.")
    return out


# --------------------------------------------------------------------------- persistence

def _simplex_tree(edges, values):
    import gudhi

    f = np.asarray(values, dtype=np.float64)
    if f.ndim != 1:
        raise DataError(f"values must have shape (N,), got {f.shape}.")
    if not np.isfinite(f).all():
        raise DataError("vertex values must be finite.")
    E = _check_edges(edges, len(f))
    st = gudhi.SimplexTree()
    st.insert_batch(np.arange(len(f), dtype=np.int64)[None, :], f)
    if E.shape[1]:
        st.insert_batch(E, np.maximum(f[E[0]], f[E[1]]))
    return st, f


def _snap(x: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Snap finite numbers to the nearest value of the sorted ``grid`` (removes rounding)."""
    out = x.copy()
    fin = np.isfinite(x)
    if fin.any() and grid.size:
        i = np.clip(np.searchsorted(grid, x[fin]), 1, max(grid.size - 1, 1))
        lo, hi = grid[i - 1], grid[np.minimum(i, grid.size - 1)]
        out[fin] = np.where(np.abs(x[fin] - lo) <= np.abs(hi - x[fin]), lo, hi)
    return out


def _as_diagram(points) -> np.ndarray:
    a = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(a):
        a = a[np.lexsort((a[:, 1], a[:, 0]))]
    return a


def _finite(diagram) -> np.ndarray:
    d = np.asarray(diagram, dtype=np.float64).reshape(-1, 2)
    return d[np.isfinite(d).all(axis=1)]


def extended_diagrams(edges, values) -> dict[str, dict[int, np.ndarray]]:
    """Extended persistence of the lower-star filtration of a graph, by point type.

    Returns ``{"ordinary"|"relative"|"extended+"|"extended-": {0: (n,2), 1: (m,2)}}`` with
    points as GUDHI reports them (relative and extended- have birth > death), values snapped
    to the vertex values to remove GUDHI's ~1e-16 rescaling error, zero-length points dropped.
    """
    st, f = _simplex_tree(edges, values)
    grid = np.unique(f)
    st.extend_filtration()
    parts = st.extended_persistence(min_persistence=-1.0)
    names = ("ordinary", "relative", "extended+", "extended-")
    out = {}
    for name, pts in zip(names, parts):
        per = {0: [], 1: []}
        for dim, (b, d) in pts:
            b, d = _snap(np.array([b, d]), grid)
            if b != d:
                per.setdefault(dim, []).append((b, d))
        out[name] = {dim: _as_diagram(v) for dim, v in per.items()}
    return out


def lower_star_persistence(edges, values, complex: str = DEFAULT_COMPLEX,
                           max_dim: int = 1) -> dict[int, np.ndarray]:
    """Persistence diagrams of the lower-star filtration of a graph, via GUDHI.

    ``edges``: ``(2, M)`` int; ``values``: ``(N,)`` vertex values.
    ``complex``: ``"graph"`` (the bare graph: each independent cycle an essential H1 class),
    ``"flag"`` (clique complex up to dimension ``max_dim + 1``: triangles fill cycles),
    ``"extended"`` (extended persistence of the bare graph: all classes finite).
    Returns ``{dim: (n, 2)}`` for ``dim = 0..max_dim`` (see the module docstring).
    """
    if complex not in COMPLEXES:
        raise ConfigError(f"topology complex must be one of {COMPLEXES}, got {complex!r}.")
    if not isinstance(max_dim, (int, np.integer)) or max_dim < 0:
        raise ConfigError(f"max_dim must be a non-negative integer, got {max_dim!r}.")
    if complex == "extended":
        parts = extended_diagrams(edges, values)
        out = {}
        for dim in range(max_dim + 1):
            pts = [p[dim] for p in parts.values() if dim in p and len(p[dim])]
            pts = np.concatenate(pts) if pts else np.zeros((0, 2))
            out[dim] = _as_diagram(np.sort(pts, axis=1))
        return out
    st, f = _simplex_tree(edges, values)
    if complex == "flag":
        st.expansion(max_dim + 1)
    # persistence_dim_max=True: GUDHI otherwise drops the top dimension present, which is
    # H1 for a bare graph or for a flag complex without triangles.
    st.compute_persistence(persistence_dim_max=True)
    return {dim: _as_diagram(st.persistence_intervals_in_dimension(dim))
            for dim in range(max_dim + 1)}


# --------------------------------------------------------------------------- summaries

def _resolve_essential(diagram, essential: str, cap) -> np.ndarray:
    d = np.asarray(diagram, dtype=np.float64).reshape(-1, 2)
    if essential not in ESSENTIAL:
        raise ConfigError(f"essential must be one of {ESSENTIAL}, got {essential!r}.")
    inf = ~np.isfinite(d[:, 1])
    if not inf.any():
        return d
    if essential == "drop":
        return d[~inf]
    if cap is None:
        raise ConfigError("essential='cap' needs cap= (the largest filtration value) when the "
                          "diagram has essential classes.")
    d = d.copy()
    d[inf, 1] = float(cap)
    return d


def total_persistence(diagram, p: float = 2, essential: str = DEFAULT_ESSENTIAL,
                      cap: float | None = None) -> float:
    """``sum |death - birth|^p`` over the points of one diagram (``(n, 2)``).

    Essential points (death = inf) are dropped (``essential="drop"``) or given death
    ``cap`` (``"cap"``; pass the largest filtration value, e.g. ``values.max()``).
    ``p = 2`` is the reference study's quantity. Units: value units to the power ``p``.
    """
    if p <= 0:
        raise ConfigError(f"total persistence p must be positive, got {p!r}.")
    d = _resolve_essential(diagram, essential, cap)
    return float(np.sum(np.abs(d[:, 1] - d[:, 0]) ** p))


def betti_curve(diagrams: dict[int, np.ndarray], thresholds) -> dict[int, np.ndarray]:
    """Betti numbers as functions of the value threshold ``t``: ``#{(b, d): b <= t < d}``.

    ``thresholds``: ``(T,)``; returns ``{dim: (T,) int64}``. For graph/flag diagrams this
    is the Betti number of the sublevel complex ``{value <= t}`` (zero-length bars aside).
    """
    t = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    out = {}
    for dim, dg in diagrams.items():
        d = np.asarray(dg, dtype=np.float64).reshape(-1, 2)
        out[dim] = ((d[:, 0][None, :] <= t[:, None]) & (t[:, None] < d[:, 1][None, :])
                    ).sum(axis=1).astype(np.int64)
    return out


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


def diagram_features(diagrams: dict[int, np.ndarray], *, p: float = 2,
                     essential: str = DEFAULT_ESSENTIAL, cap: float | None = None
                     ) -> dict[str, float]:
    """Scalar features of diagrams ``{dim: (n, 2)}``, per dimension ``d``:

    ``total_persistence_h{d}`` (:func:`total_persistence` with ``p``, ``essential``, ``cap``),
    ``n_bars_h{d}`` (all points), ``n_essential_h{d}`` (death = inf),
    ``max_persistence_h{d}`` and ``mean_persistence_h{d}`` (finite points, 0 if none),
    ``entropy_h{d}`` (persistent entropy of the finite bars, natural log, 0 if none);
    plus ``total_persistence`` summed over dimensions.
    """
    out: dict[str, float] = {}
    total = 0.0
    for dim in sorted(diagrams):
        d = np.asarray(diagrams[dim], dtype=np.float64).reshape(-1, 2)
        fin = _finite(d)
        pers = np.abs(fin[:, 1] - fin[:, 0])
        tp = total_persistence(d, p=p, essential=essential, cap=cap)
        total += tp
        out[f"total_persistence_h{dim}"] = tp
        out[f"n_bars_h{dim}"] = float(len(d))
        out[f"n_essential_h{dim}"] = float((~np.isfinite(d[:, 1])).sum())
        out[f"max_persistence_h{dim}"] = float(pers.max()) if len(pers) else 0.0
        out[f"mean_persistence_h{dim}"] = float(pers.mean()) if len(pers) else 0.0
        s = pers.sum()
        if len(pers) and s > 0:
            q = pers[pers > 0] / s
            out[f"entropy_h{dim}"] = float(-(q * np.log(q)).sum())
        else:
            out[f"entropy_h{dim}"] = 0.0
    out["total_persistence"] = total
    return out


# --------------------------------------------------------------------------- pipeline

@dataclass
class TrajectorySet:
    """The samples around one minimum: the trajectory table and either the snapshots
    ``params`` (``(N, D)``, row ``i`` is ``sample_id`` ``i``) or their Gram ``gram`` (``(N, N)``)."""
    table: pd.DataFrame
    params: Any = None
    gram: Any = None
    name: str | None = None


@dataclass
class TopologyResult:
    """Topology of one set of samples. ``sample_ids`` (``(N,)``): the sample id of each vertex
    (diverged samples removed); ``coords`` ``(N, 2)``; ``potential`` ``(N, N)`` or
    ``(N, n_landmark)``; ``edges`` ``(2, M)``; ``values`` ``(N,)``; ``diagrams`` ``{dim: (n, 2)}``;
    ``features`` from :func:`diagram_features` plus graph sizes; ``t_used``: PHATE's t."""
    sample_ids: np.ndarray
    coords: np.ndarray
    potential: np.ndarray
    edges: np.ndarray
    values: np.ndarray
    diagrams: dict
    features: dict
    t_used: int
    settings: dict = field(default_factory=dict)


def _check_options(k, value, complex, p, essential, graph_on, distances="exact", sketch_dim=4096):
    if distances not in DISTANCES:
        raise ConfigError(f"topology distances must be one of {DISTANCES}, got {distances!r}.")
    if not isinstance(sketch_dim, (int, np.integer)) or isinstance(sketch_dim, bool) or sketch_dim < 1:
        raise ConfigError(f"topology sketch_dim must be a positive integer, got {sketch_dim!r}.")
    if complex not in COMPLEXES:
        raise ConfigError(f"topology complex must be one of {COMPLEXES}, got {complex!r}.")
    if essential not in ESSENTIAL:
        raise ConfigError(f"topology essential must be one of {ESSENTIAL}, got {essential!r}.")
    if graph_on not in GRAPH_ON:
        raise ConfigError(f"topology graph_on must be one of {GRAPH_ON}, got {graph_on!r}.")
    if value not in VALUES:
        raise ConfigError(f"topology value must be one of {VALUES}, got {value!r}.")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"topology k must be a positive integer, got {k!r}.")
    if not (isinstance(p, (int, float)) and p > 0):
        raise ConfigError(f"topology p must be a positive number, got {p!r}.")


def topology_of_samples(table: pd.DataFrame, params=None, gram=None, *, k: int = 20,
                        value: str = "val_loss", complex: str = DEFAULT_COMPLEX, p: float = 2,
                        essential: str = DEFAULT_ESSENTIAL, graph_on: str = "potential",
                        phate_kwargs: dict | None = None, drop_diverged: bool = True,
                        distances: str = "exact", sketch_dim: int = 4096, sketch_seed: int = 0,
                        device="auto") -> TopologyResult:
    """Snapshots (or their Gram) -> cosine distances -> PHATE -> k-NN graph -> lower-star
    persistence -> features, for the samples around one minimum.

    ``params``: ``(N, D)`` snapshots (row ``i`` = ``sample_id`` ``i``) or ``gram`` ``(N, N)``.
    ``distances``: ``"exact"`` (:func:`~topoland.embedding.cosine_distances`, ``N^2 D / 2``
    products) or ``"sketch"`` (:func:`~topoland.embedding.sketch_cosine_distances`: one
    ``O(N D)`` pass and ``N^2 sketch_dim`` products; each distance within a relative
    ``sqrt(2 / sketch_dim)`` standard deviation), for snapshots only: a Gram's cosines are exact.
    ``drop_diverged``: remove samples flagged ``diverged`` or with a non-finite value
    (otherwise they raise). The essential cap is the largest vertex value.
    """
    from topoland.embedding import (cosine_distances, cosine_distances_from_gram,
                                    phate_embedding, sketch_cosine_distances)

    _check_options(k, value, complex, p, essential, graph_on, distances, sketch_dim)
    if (params is None) == (gram is None):
        raise ConfigError("topology_of_samples needs exactly one of params= or gram=.")
    if gram is not None and distances == "sketch":
        raise ConfigError("topology distances='sketch' estimates cosines from snapshots, but these "
                          "samples hold the sampler's Gram (storage='sketch'), whose cosines are "
                          "exact and cheap: use distances='exact'.")
    n = int((params if params is not None else gram).shape[0])
    if "sample_id" not in table.columns:
        raise DataError("trajectory table has no 'sample_id' column.")
    if value not in table.columns:
        raise DataError(f"trajectory table has no column {value!r} (vertex value).")
    ids_in_table = np.sort(table["sample_id"].to_numpy())
    if len(ids_in_table) != n or not np.array_equal(ids_in_table, np.arange(n)):
        raise DataError(f"trajectory table sample_id values must be exactly 0..{n - 1} to match "
                        f"the {n} snapshot rows.")
    keep = np.arange(n)
    if drop_diverged:
        t = table.set_index("sample_id").loc[keep]
        ok = np.isfinite(t[value].to_numpy(dtype=np.float64))
        if "diverged" in t.columns:
            ok &= ~t["diverged"].to_numpy(dtype=bool)
        keep = keep[ok]
    values = vertex_values(table, value, keep)
    if gram is not None:
        G = np.asarray(gram.detach().cpu().numpy() if hasattr(gram, "detach") else gram,
                       dtype=np.float64)
        cos = cosine_distances_from_gram(G[np.ix_(keep, keep)])
    else:
        X = params if len(keep) == n else params[keep]
        if distances == "sketch":
            cos = sketch_cosine_distances(X, sketch_dim, seed=sketch_seed, device=device)
        else:
            cos = cosine_distances(X, device=device)
    if len(keep) <= k:
        raise DataError(f"only {len(keep)} usable samples for a {k}-NN graph.")
    ph = phate_embedding(cos, **(phate_kwargs or {}))
    if graph_on == "potential":
        gd = potential_distances(ph.potential)
    elif graph_on == "embedding":
        gd = euclidean_distances(ph.coords)
    else:
        gd = cos
    del cos
    edges = knn_graph(gd, k=k)
    del gd
    diagrams = lower_star_persistence(edges, values, complex=complex)
    cap = float(values.max())
    feats = diagram_features(diagrams, p=p, essential=essential, cap=cap)
    feats["n_vertices"] = float(len(values))
    feats["n_edges"] = float(edges.shape[1])
    feats["phate_t"] = float(ph.t_used)
    settings = dict(k=k, value=value, complex=complex, p=p, essential=essential,
                    graph_on=graph_on, phate_kwargs=dict(phate_kwargs or {}),
                    drop_diverged=drop_diverged, distances=distances)
    if distances == "sketch":
        settings |= dict(sketch_dim=int(sketch_dim), sketch_seed=int(sketch_seed))
    return TopologyResult(sample_ids=keep, coords=ph.coords, potential=ph.potential,
                          edges=edges, values=values, diagrams=diagrams, features=feats,
                          t_used=ph.t_used, settings=settings)


def _unpack_set(s, i):
    if isinstance(s, TrajectorySet):
        return s.table, s.params, s.gram, s.name if s.name is not None else i
    if isinstance(s, dict):
        if "table" not in s:
            raise DataError(f"trajectory set {i} has no 'table'.")
        return s["table"], s.get("params"), s.get("gram"), s.get("name", i)
    raise DataError(f"trajectory set {i} must be a dict or TrajectorySet, got {type(s).__name__}.")


class LossTopology(TransformerMixin, BaseEstimator):
    """sklearn-style feature extractor: a list of trajectory sets -> one feature row each.

    Each set is a :class:`TrajectorySet` or a dict with ``table`` and ``params`` or ``gram``
    (optional ``name``, used as the row index). ``fit`` learns nothing (the features of a
    set depend on that set only); ``transform`` returns a DataFrame of
    :func:`topology_of_samples` features.
    """

    def __init__(self, k: int = 20, value: str = "val_loss", complex: str = DEFAULT_COMPLEX,
                 p: float = 2, essential: str = DEFAULT_ESSENTIAL, graph_on: str = "potential",
                 phate_kwargs: dict | None = None, drop_diverged: bool = True,
                 distances: str = "exact", sketch_dim: int = 4096, device="auto"):
        self.k = k
        self.value = value
        self.complex = complex
        self.p = p
        self.essential = essential
        self.graph_on = graph_on
        self.phate_kwargs = phate_kwargs
        self.drop_diverged = drop_diverged
        self.distances = distances
        self.sketch_dim = sketch_dim
        self.device = device

    def fit(self, X, y=None):
        _check_options(self.k, self.value, self.complex, self.p, self.essential, self.graph_on,
                       self.distances, self.sketch_dim)
        return self

    def transform(self, X) -> pd.DataFrame:
        rows, names = [], []
        for i, s in enumerate(X):
            table, params, gram, name = _unpack_set(s, i)
            res = topology_of_samples(table, params=params, gram=gram, k=self.k,
                                      value=self.value, complex=self.complex, p=self.p,
                                      essential=self.essential, graph_on=self.graph_on,
                                      phate_kwargs=self.phate_kwargs,
                                      drop_diverged=self.drop_diverged,
                                      distances=self.distances, sketch_dim=self.sketch_dim,
                                      device=self.device)
            rows.append(res.features)
            names.append(name)
        return pd.DataFrame(rows, index=pd.Index(names, name="set"))
