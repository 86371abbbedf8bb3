"""Loss-valued lower-star filtrations and their persistence (GUDHI).

* A vertex is a recorded sample; its value is its own loss (validation by default).
* Lower-star filtration: a vertex enters at its value, an edge (and a triangle) at the max of
  its vertices' values.
* Diagrams are dicts ``{dim: (n, 2) float64 array of (birth, death)}``, sorted by birth then
  death. Zero-length bars are dropped. For ``complex="graph"``, ``"flag"`` and ``"planar"``
  essential classes are explicit rows with ``death = +inf``. For ``"extended"`` every class is
  finite and each point is stored as ``(min, max)`` of its two values; persistence is
  ``|death - birth|``.
* Units: births and deaths are in the units of the vertex value (nats for losses).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from topoland.errors import ConfigError, DataError
from topoland.topology.graphs import _check_edges, union_edges

__all__ = ["COMPLEXES", "DEFAULT_COMPLEX", "EXTENDED_PARTS", "vertex_values",
           "lower_star_persistence", "extended_diagrams"]

#: ``planar``: H0 of the filtration graph, H1 of the graph filled by the Delaunay triangulation
#: of the samples' principal plane (see docs/topology.md for the oracles that chose it)
COMPLEXES = ("planar", "flag", "graph", "extended")
DEFAULT_COMPLEX = "planar"
#: GUDHI's four kinds of extended-persistence points, in its order
EXTENDED_PARTS = ("ordinary", "relative", "extended+", "extended-")


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
    out = {}
    for name, pts in zip(EXTENDED_PARTS, parts):
        per = {0: [], 1: []}
        for dim, (b, d) in pts:
            b, d = _snap(np.array([b, d]), grid)
            if b != d:
                per.setdefault(dim, []).append((b, d))
        out[name] = {dim: _as_diagram(v) for dim, v in per.items()}
    return out


def lower_star_persistence(edges, values, complex: str = "flag", max_dim: int = 1, *,
                           fill_edges=None) -> dict[int, np.ndarray]:
    """Persistence diagrams of the lower-star filtration of a graph, via GUDHI.

    ``edges``: ``(2, M)`` int; ``values``: ``(N,)`` vertex values.
    ``complex``: ``"graph"`` (the bare graph: each independent cycle an essential H1 class),
    ``"flag"`` (clique complex up to dimension ``max_dim + 1``: triangles fill cycles),
    ``"extended"`` (extended persistence of the bare graph: all classes finite), or
    ``"planar"``: H0 of the graph (no edge but the graph's joins two samples), H1 of the flag
    complex of the graph united with ``fill_edges`` (the Delaunay edges of the samples'
    principal plane, :func:`~topoland.topology.graphs.delaunay_edges`), which fills the loops
    whose inside was sampled. Returns ``{dim: (n, 2)}`` for ``dim = 0..max_dim``.
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
    if complex == "planar":
        if fill_edges is None:
            raise ConfigError("complex='planar' needs fill_edges= (the Delaunay edges of the "
                              "samples' principal plane).")
        h0 = _persistence(edges, values, "graph", 0)
        if max_dim == 0:
            return h0
        filled = union_edges(edges, fill_edges, n=len(np.asarray(values)))
        return h0 | {d: dg for d, dg in _persistence(filled, values, "flag", max_dim).items() if d > 0}
    return _persistence(edges, values, complex, max_dim)


def _persistence(edges, values, complex: str, max_dim: int) -> dict[int, np.ndarray]:
    st, _ = _simplex_tree(edges, values)
    if complex == "flag":
        st.expansion(max_dim + 1)
    # persistence_dim_max=True: GUDHI otherwise drops the top dimension present, which is
    # H1 for a bare graph or for a flag complex without triangles.
    st.compute_persistence(persistence_dim_max=True)
    return {dim: _as_diagram(st.persistence_intervals_in_dimension(dim))
            for dim in range(max_dim + 1)}
