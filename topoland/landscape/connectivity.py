"""The connectivity of many minima: pairwise connection (all pairs or the AutoNEB minimum
spanning tree strategy), the barrier matrix, and the disconnectivity (merge) tree.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
from torch import Tensor

from topoland.errors import ConfigError
from topoland.landscape.path_losses import PathError

__all__ = ["connect_all", "barrier_matrix", "DisconnectivityTree", "disconnectivity_tree"]


# --------------------------------------------------------------------------------------
# Many minima
# --------------------------------------------------------------------------------------

def connect_all(minima: dict[str, Tensor], pair_fn: Callable, *, strategy: str = "all",
                column: str = "max", values: dict[str, float] | None = None,
                rounds: int | None = None, max_attempts: int = 3) -> pd.DataFrame:
    """Connect minima pairwise and tabulate the barriers.

    minima: name -> flat vector ``(D,)``. ``pair_fn(theta_a, theta_b, attempt) -> dict``
    returns at least ``column`` (e.g. ``barriers(...)`` of its path); ``attempt`` counts
    from 0 and a retry should use more images/cycles.

    strategy ``"all"``: every pair once. ``"mst"`` (the AutoNEB strategy): first connect
    every minimum to the lowest one (by ``values``, else the first name): a spanning tree
    of n - 1 pairs; then for ``rounds`` rounds (default n - 1) take the minimum spanning tree by
    barrier, remove its highest edge and connect an untried pair across the cut (lowest
    minima first); when every such pair is tried, retry the highest edge itself with
    ``attempt + 1`` (up to ``max_attempts`` attempts per pair). Returns one row per call
    (columns ``a``, ``b``, ``attempt``, the dict's keys) and ``in_mst`` marking the best
    attempt of each pair that lies on the final minimum spanning tree.
    """
    import networkx as nx

    names = list(minima)
    if len(names) < 2:
        raise PathError("connect_all needs at least two minima")
    if strategy not in ("all", "mst"):
        raise ConfigError(f"strategy must be 'all' or 'mst', got {strategy!r}")
    vals = values or {}
    order = sorted(names, key=lambda n: (vals.get(n, 0.0), names.index(n)))
    rows: list[dict] = []
    best: dict[tuple[str, str], float] = {}
    attempts: dict[tuple[str, str], int] = {}

    def _key(a, b):
        return (a, b) if names.index(a) < names.index(b) else (b, a)

    def _run(a, b):
        k = _key(a, b)
        att = attempts.get(k, -1) + 1
        res = dict(pair_fn(minima[k[0]], minima[k[1]], att))
        if column not in res:
            raise PathError(f"pair_fn returned no {column!r} (keys: {sorted(res)})")
        attempts[k] = att
        best[k] = min(best.get(k, np.inf), float(res[column]))
        rows.append({"a": k[0], "b": k[1], "attempt": att, **res})

    if strategy == "all":
        for a, b in itertools.combinations(names, 2):
            _run(a, b)
    else:
        for i in range(1, len(order)):
            _run(order[0], order[i])  # a star around the lowest minimum spans all
        n_rounds = len(names) - 1 if rounds is None else rounds
        for _ in range(n_rounds):
            g = nx.Graph()
            g.add_nodes_from(names)
            for (a, b), w in best.items():
                g.add_edge(a, b, weight=w)
            mst = nx.minimum_spanning_tree(g, weight="weight")
            edges = sorted(mst.edges, key=lambda e: g[e[0]][e[1]]["weight"], reverse=True)
            suggestion = None
            for e in edges:
                mst.remove_edge(*e)
                c1, c2 = list(nx.connected_components(mst))
                mst.add_edge(*e)
                for s in (x for x in order if x in c1):
                    for tt in (x for x in order if x in c2):
                        if _key(s, tt) not in best:
                            suggestion = (s, tt)
                            break
                    if suggestion:
                        break
                if suggestion:
                    break
            if suggestion is None:
                for e in edges:
                    if attempts[_key(*e)] + 1 < max_attempts:
                        suggestion = e
                        break
            if suggestion is None:
                break
            _run(*suggestion)
    df = pd.DataFrame(rows)
    g = nx.Graph()
    for (a, b), w in best.items():
        g.add_edge(a, b, weight=w)
    mst_edges = {_key(a, b) for a, b in nx.minimum_spanning_tree(g, weight="weight").edges}
    best_rows = df.loc[df.groupby(["a", "b"])[column].idxmin()].index
    df["in_mst"] = [(i in best_rows) and ((r.a, r.b) in mst_edges) for i, r in df.iterrows()]
    return df


def barrier_matrix(pairs: pd.DataFrame, names: list[str], *, column: str = "max") -> np.ndarray:
    """Symmetric ``(n, n)`` matrix of the lowest ``column`` found per pair (columns ``a``,
    ``b``); ``inf`` where a pair was never connected, 0 on the diagonal."""
    idx = {n: i for i, n in enumerate(names)}
    m = np.full((len(names), len(names)), np.inf)
    np.fill_diagonal(m, 0.0)
    for r in pairs.itertuples():
        i, j = idx[r.a], idx[r.b]
        v = min(m[i, j], float(getattr(r, column)))
        m[i, j] = m[j, i] = v
    return m


@dataclass
class DisconnectivityTree:
    """Merge tree of minima by barrier.

    ``mst``: edges ``(a, b, barrier)`` of the minimum spanning tree; ``linkage``: SciPy
    linkage matrix ``(n - 1, 4)`` (single linkage = merge heights along the MST, usable with
    ``scipy.cluster.hierarchy.dendrogram``); ``minimax``: ``(n, n)`` lowest achievable
    barrier between each pair through the graph (the cophenetic matrix); ``energies``:
    optional loss of each minimum.
    """
    names: list[str]
    mst: list[tuple[str, str, float]]
    linkage: np.ndarray
    minimax: np.ndarray
    energies: np.ndarray | None = None


def disconnectivity_tree(names: list[str], barrier_matrix: np.ndarray,
                         energies=None) -> DisconnectivityTree:
    """Minimum spanning tree and merge tree (dendrogram) of minima by barrier.

    barrier_matrix: symmetric ``(n, n)``; ``inf``/NaN where no path is known. Raises
    :class:`PathError` when the known paths do not connect all minima.
    """
    import networkx as nx

    m = np.asarray(barrier_matrix, dtype=float)
    n = len(names)
    if m.shape != (n, n):
        raise PathError(f"barrier_matrix has shape {m.shape}, expected ({n}, {n})")
    g = nx.Graph()
    g.add_nodes_from(range(n))
    for i in range(n):
        for j in range(i + 1, n):
            w = m[i, j] if np.isfinite(m[i, j]) else m[j, i]
            if np.isfinite(w):
                g.add_edge(i, j, weight=float(w))
    comps = list(nx.connected_components(g))
    if len(comps) > 1:
        lone = [names[i] for c in comps[1:] for i in sorted(c)]
        raise PathError(f"barrier_matrix does not connect all minima: {lone} are cut off")
    tree = nx.minimum_spanning_tree(g, weight="weight")
    edges = sorted(tree.edges(data="weight"), key=lambda e: (e[2], e[0], e[1]))
    # Kruskal merge order over the MST edges gives the single-linkage tree.
    cluster = list(range(n))
    size = {i: 1 for i in range(n)}
    members = {i: [i] for i in range(n)}
    rep = list(range(n))
    z = []
    minimax = np.zeros((n, n))
    for k, (i, j, w) in enumerate(edges):
        ri, rj = _find(rep, i), _find(rep, j)
        ci, cj = cluster[ri], cluster[rj]
        for p in members[ri]:
            for q in members[rj]:
                minimax[p, q] = minimax[q, p] = w
        new = n + k
        z.append([min(ci, cj), max(ci, cj), w, size[ci] + size[cj]])
        size[new] = size[ci] + size[cj]
        rep[rj] = ri
        members[ri] = members[ri] + members.pop(rj)
        cluster[ri] = new
    return DisconnectivityTree(
        names=list(names), mst=[(names[i], names[j], float(w)) for i, j, w in edges],
        linkage=np.asarray(z, dtype=float).reshape(-1, 4), minimax=minimax,
        energies=None if energies is None else np.asarray(energies, dtype=float))


def _find(rep: list[int], i: int) -> int:
    while rep[i] != i:
        rep[i] = rep[rep[i]]
        i = rep[i]
    return i
