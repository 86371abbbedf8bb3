"""Graphs on sampled snapshots: k-NN graphs, minimum spanning trees, components, and the
principal plane with its Delaunay triangulation.

Vertex ``i`` is row ``i`` of a distance matrix. Edge lists are ``(2, M)`` int64 arrays with
``edges[0] < edges[1]``, no self-loops, no duplicates, sorted.
"""
from __future__ import annotations

import numpy as np

from topoland.errors import ConfigError, DataError

__all__ = ["GRAPHS", "knn_graph", "knn_graph_reference", "mst_edges", "mst_edges_reference",
           "filtration_graph", "n_components", "union_edges", "euclidean_distances",
           "potential_distances", "to_networkx", "principal_plane", "delaunay_edges"]

#: filtration graphs: the k-NN graph united with a minimum spanning tree of the same distances
#: (connected wherever the samples are), or the bare k-NN graph (may fall apart)
GRAPHS = ("knn_mst", "knn")


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




def _sorted_pairs(lo, hi, n: int) -> np.ndarray:
    lo, hi = np.minimum(lo, hi).astype(np.int64), np.maximum(lo, hi).astype(np.int64)
    pairs = np.unique(lo * n + hi)
    return np.stack([pairs // n, pairs % n]).astype(np.int64)


def union_edges(*edge_sets, n: int) -> np.ndarray:
    """The union of ``(2, M_i)`` edge lists on ``n`` vertices, in the canonical sorted form."""
    sets = [_check_edges(e, n) for e in edge_sets]
    E = np.concatenate(sets, axis=1) if sets else np.zeros((2, 0), dtype=np.int64)
    return _sorted_pairs(E[0], E[1], n) if E.size else np.zeros((2, 0), dtype=np.int64)


def mst_edges(distances) -> np.ndarray:
    """Edges of a minimum spanning tree (forest: never, the complete graph is connected) of a
    dense ``(N, N)`` distance matrix, by Prim's algorithm in ``O(N^2)``.

    Zero distances (duplicate snapshots) are ordinary edges of length 0; ties go to the lower
    index, so the tree is deterministic. Returns ``(2, N - 1)`` int64 edges, sorted.
    """
    D = np.asarray(distances)
    if D.ndim != 2 or D.shape[0] != D.shape[1]:
        raise DataError(f"distances must be a square (N, N) matrix, got shape {D.shape}.")
    n = D.shape[0]
    if n < 2:
        return np.zeros((2, 0), dtype=np.int64)
    if np.isnan(D).any():
        raise DataError("distances contain NaN; cannot build a minimum spanning tree.")
    in_tree = np.zeros(n, dtype=bool)
    in_tree[0] = True
    best = np.array(D[0], dtype=np.float64)
    parent = np.zeros(n, dtype=np.int64)
    best[0] = np.inf
    lo, hi = np.empty(n - 1, dtype=np.int64), np.empty(n - 1, dtype=np.int64)
    for i in range(n - 1):
        j = int(np.argmin(best))  # first index of the minimum: ties to the lower index
        lo[i], hi[i] = parent[j], j
        in_tree[j] = True
        best[j] = np.inf
        row = np.asarray(D[j], dtype=np.float64)
        closer = (row < best) & ~in_tree
        best[closer] = row[closer]
        parent[closer] = j
    return _sorted_pairs(lo, hi, n)


def mst_edges_reference(distances) -> np.ndarray:
    """Plain-loop reference for :func:`mst_edges`: Kruskal's algorithm on all pairs sorted by
    (distance, i, j), with a union-find."""
    D = np.asarray(distances, dtype=np.float64)
    n = D.shape[0]
    parent = list(range(n))

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    edges = []
    for d, i, j in sorted((D[i, j], i, j) for i in range(n) for j in range(i + 1, n)):
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[ri] = rj
            edges.append((i, j))
    e = sorted(edges)
    return np.array(e, dtype=np.int64).T.reshape(2, len(e))


def n_components(edges, n: int) -> int:
    """Number of connected components of the graph on ``n`` vertices with ``edges`` ``(2, M)``."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    E = _check_edges(edges, n)
    A = coo_matrix((np.ones(E.shape[1]), (E[0], E[1])), shape=(n, n))
    return int(connected_components(A, directed=False)[0])


def filtration_graph(distances, k: int = 20, graph: str = "knn_mst") -> tuple[np.ndarray, dict]:
    """The graph a loss filtration runs on: the symmetrized ``k``-NN graph of ``distances``
    ``(N, N)``, united (``graph="knn_mst"``) with a minimum spanning tree of the same distances.

    The tree adds, between the pieces the k-NN graph falls into, only the shortest links
    (a converged trajectory's nearest samples are its own records, so k-NN graphs on
    trajectories fragment); inside a piece it adds nothing new in practice. Returns the edges
    ``(2, M)`` and ``info``: ``knn_components`` (pieces of the k-NN graph), ``components``
    (of the returned graph) and ``bridges`` (tree edges not in the k-NN graph).
    """
    if graph not in GRAPHS:
        raise ConfigError(f"topology graph must be one of {GRAPHS}, got {graph!r}.")
    D = np.asarray(distances)
    n = D.shape[0]
    knn = knn_graph(D, k=k)
    info = {"knn_components": n_components(knn, n)}
    if graph == "knn_mst":
        mst = mst_edges(D)
        edges = union_edges(knn, mst, n=n)
        info["bridges"] = int(edges.shape[1] - knn.shape[1])
    else:
        edges = knn
        info["bridges"] = 0
    info["components"] = n_components(edges, n) if graph == "knn_mst" else info["knn_components"]
    return edges, info


def principal_plane(distances) -> tuple[np.ndarray, float]:
    """The samples' principal plane from their cosine distances ``(N, N)``.

    ``1 - cos(x_i, x_j) = |u_i - u_j|^2 / 2`` for the unit vectors ``u``, so classical MDS of
    ``2 d`` is the PCA of the unit snapshots: no further pass over the snapshots. Returns the
    coordinates on the two leading principal components ``(N, 2)`` and the share of the
    variance of the unit snapshots they explain (in [0, 1]).
    """
    D = np.asarray(distances, dtype=np.float64)
    n = D.shape[0]
    if n < 3:
        raise DataError(f"a principal plane needs at least 3 samples, got {n}.")
    B = -D.copy()                      # -(1/2) * squared distance, with squared distance = 2 d
    B -= B.mean(axis=0, keepdims=True)
    B -= B.mean(axis=1, keepdims=True)
    B = (B + B.T) / 2
    if n <= 600:
        from scipy.linalg import eigh
        w, V = eigh(B, subset_by_index=[n - 2, n - 1])
    else:  # Lanczos for the two leading eigenpairs; a seeded start keeps it deterministic
        from scipy.sparse.linalg import eigsh
        w, V = eigsh(B, k=2, which="LA", v0=np.random.default_rng(0).standard_normal(n))
    order = np.argsort(w)[::-1]
    top, V = np.clip(w[order], 0, None), V[:, order]
    total = float(np.trace(B))  # the total variance of the unit snapshots
    coords = V * np.sqrt(top)[None, :]
    sign = np.sign(coords[np.argmax(np.abs(coords), axis=0), [0, 1]])  # eigenvector signs are
    coords *= np.where(sign == 0, 1.0, sign)[None, :]                  # arbitrary: fix them
    return coords, (min(float(top.sum()) / total, 1.0) if total > 0 else 0.0)


def delaunay_edges(coords) -> tuple[np.ndarray, np.ndarray]:
    """Delaunay triangulation of points in the plane ``(N, 2)``: its edges ``(2, M)`` and
    triangles ``(T, 3)`` (vertex indices, sorted within a row). Duplicate points are left
    out of the triangulation (Qhull's ``coplanar`` points). Fewer than 3 points, or collinear
    points, give no triangles."""
    from scipy.spatial import Delaunay, QhullError

    Y = np.asarray(coords, dtype=np.float64)
    if Y.ndim != 2 or Y.shape[1] != 2:
        raise DataError(f"plane coordinates must have shape (N, 2), got {Y.shape}.")
    if not np.isfinite(Y).all():
        raise DataError("plane coordinates contain NaN or inf.")
    n = len(Y)
    try:
        tri = np.sort(Delaunay(Y).simplices, axis=1).astype(np.int64) if n >= 3 else None
    except QhullError:  # all points collinear (or coincident): nothing to triangulate
        tri = None
    if tri is None or len(tri) == 0:
        return np.zeros((2, 0), dtype=np.int64), np.zeros((0, 3), dtype=np.int64)
    e = np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [0, 2]]])
    return _sorted_pairs(e[:, 0], e[:, 1], n), np.unique(tri, axis=0)
