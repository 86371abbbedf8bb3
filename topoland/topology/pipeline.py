"""The topology of the samples around one minimum, end to end, and its sklearn estimator.

snapshots (or their Gram) -> cosine distances -> filtration graph (k-NN united with a minimum
spanning tree, on the cosine distances by default) -> loss-valued lower-star persistence
(H0 on the graph, H1 on the graph filled by the Delaunay triangulation of the principal
plane) -> landscape features, with confidence intervals from resampled trajectories.
PHATE (cosine) gives the 2-D picture and, on request, the potential distances.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin

from topoland import checks
from topoland.declare import Param, declare, none_if_zero
from topoland.errors import ConfigError, DataError
from topoland.topology.graphs import (GRAPHS, delaunay_edges, euclidean_distances,
                                      filtration_graph, potential_distances, principal_plane)
from topoland.topology.persistence import (COMPLEXES, DEFAULT_COMPLEX, extended_diagrams,
                                           lower_star_persistence, vertex_values)
from topoland.topology.summaries import (DEFAULT_ESSENTIAL, ESSENTIAL, diagram_features,
                                         extended_features, landscape_features,
                                         resolve_min_persistence)

__all__ = ["GRAPH_ON", "PLANES", "RESAMPLE", "VALUES", "DISTANCES", "TopologyWarning",
           "TrajectorySet", "TopologyResult", "topology_of_samples", "LossTopology"]

GRAPH_ON = ("cosine", "potential", "embedding")
PLANES = ("pca", "phate")
RESAMPLE = ("trajectory", "direction")
VALUES = ("val_loss", "train_loss", "test_loss")
DISTANCES = ("exact", "sketch")
#: the features that get confidence intervals (those of :func:`landscape_features`)
_CI_FEATURES = ("n_basins", "n_loops", "activity_h0", "activity_h1", "activity_h0_norm",
                "activity_h1_norm", "max_depth_h0", "max_depth_h1", "loss_range")


class TopologyWarning(UserWarning):
    """A topology result that depends on something the reader should know (a disconnected
    graph, a saturated potential)."""


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
    """Topology of one set of samples.

    ``sample_ids`` ``(N,)``: the sample id of each vertex (diverged samples removed);
    ``coords`` ``(N, 2)``: PHATE's picture; ``plane`` ``(N, 2)``: the principal plane of the
    unit snapshots (the Delaunay fill of ``complex="planar"``); ``potential`` ``(N, N)`` or
    ``(N, n_landmark)``; ``edges`` ``(2, M)``: the filtration graph; ``values`` ``(N,)``;
    ``diagrams`` ``{dim: (n, 2)}``; ``features``: scalars; ``intervals``: a DataFrame
    (feature, estimate, low, high, n_resamples) from resampled trajectories (empty without
    resamples); ``notes``: what the reader must know (disconnected graphs...); ``t_used``.
    """
    sample_ids: np.ndarray
    coords: np.ndarray
    potential: np.ndarray
    edges: np.ndarray
    values: np.ndarray
    diagrams: dict
    features: dict
    t_used: int
    settings: dict = field(default_factory=dict)
    plane: np.ndarray | None = None
    intervals: pd.DataFrame = field(default_factory=pd.DataFrame)
    notes: list = field(default_factory=list)


def _choice(name, v, options):
    if v not in options:
        raise ConfigError(f"topology {name} must be one of {options}, got {v!r}.")


def _check_options(k, value, complex, p, essential, graph_on, distances="exact", sketch_dim=4096,
                   graph="knn_mst", plane="pca", min_persistence="auto", n_resamples=0,
                   ci_level=0.9, resample="trajectory"):
    for name, v, options in (("distances", distances, DISTANCES), ("complex", complex, COMPLEXES),
                             ("essential", essential, ESSENTIAL), ("graph_on", graph_on, GRAPH_ON),
                             ("graph", graph, GRAPHS),
                             ("plane", plane, PLANES), ("resample", resample, RESAMPLE)):
        _choice(name, v, options)
    why = _value_check(value)
    if why:   # the column itself is checked against the table (_usable)
        raise ConfigError(f"topology value {why}, got {value!r}.")
    if not isinstance(sketch_dim, (int, np.integer)) or isinstance(sketch_dim, bool) or sketch_dim < 1:
        raise ConfigError(f"topology sketch_dim must be a positive integer, got {sketch_dim!r}.")
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"topology k must be a positive integer, got {k!r}.")
    if not (isinstance(p, (int, float)) and not isinstance(p, bool) and np.isfinite(p) and p > 0):
        raise ConfigError(f"topology p must be a positive number, got {p!r}.")
    if not (min_persistence == "auto" or (isinstance(min_persistence, (int, float))
                                          and not isinstance(min_persistence, bool)
                                          and np.isfinite(min_persistence) and min_persistence >= 0)):
        raise ConfigError("topology min_persistence must be 'auto' or a number >= 0, got "
                          f"{min_persistence!r}.")
    if not isinstance(n_resamples, (int, np.integer)) or isinstance(n_resamples, bool) or n_resamples < 0:
        raise ConfigError(f"topology n_resamples must be an integer >= 0, got {n_resamples!r}.")
    if not (isinstance(ci_level, float) and 0 < ci_level < 1):
        raise ConfigError(f"topology ci_level must be a number in (0, 1), got {ci_level!r}.")


def _usable(table, n, value, drop_diverged):
    """The sample ids that enter the complex, and how many were dropped."""
    if "sample_id" not in table.columns:
        raise DataError("trajectory table has no 'sample_id' column.")
    if value not in table.columns:
        raise DataError(f"trajectory table has no column {value!r} (vertex value).")
    ids = np.sort(table["sample_id"].to_numpy())
    if len(ids) != n or not np.array_equal(ids, np.arange(n)):
        raise DataError(f"trajectory table sample_id values must be exactly 0..{n - 1} to match "
                        f"the {n} snapshot rows.")
    keep = np.arange(n)
    if drop_diverged:
        t = table.set_index("sample_id").loc[keep]
        ok = np.isfinite(t[value].to_numpy(dtype=np.float64))
        if "diverged" in t.columns:
            ok &= ~t["diverged"].to_numpy(dtype=bool)
        keep = keep[ok]
    return keep, n - len(keep)


def _cosines(params, gram, keep, n, distances, sketch_dim, sketch_seed, device):
    from topoland.topology.embedding import (cosine_distances, cosine_distances_from_gram,
                                    sketch_cosine_distances)
    if gram is not None:
        G = np.asarray(gram.detach().cpu().numpy() if hasattr(gram, "detach") else gram,
                       dtype=np.float64)
        return cosine_distances_from_gram(G[np.ix_(keep, keep)])
    X = params if len(keep) == n else params[keep]
    if distances == "sketch":
        return sketch_cosine_distances(X, sketch_dim, seed=sketch_seed, device=device)
    return cosine_distances(X, device=device)


def _complex_diagrams(gd, values, plane_xy, *, k, graph, complex):
    """Filtration graph, diagrams and graph info for one vertex set (also used per resample)."""
    edges, info = filtration_graph(gd, k=k, graph=graph)
    fill = delaunay_edges(plane_xy)[0] if complex == "planar" else None
    diagrams = lower_star_persistence(edges, values, complex=complex, fill_edges=fill)
    return edges, diagrams, info


def _intervals(gd, values, plane_xy, groups, *, k, graph, complex, p, min_pers, n_resamples,
               ci_level, seed, estimate) -> pd.DataFrame:
    """Percentile intervals of the landscape features over resampled trajectories (or
    directions): each resample draws the groups with replacement and keeps each drawn group
    once, then rebuilds graph and diagrams. Persistence does not see multiplicity, so a
    bootstrap draw is its set of distinct trajectories (about 63 % of them); keeping the copies
    instead crowds each point's k nearest neighbours with copies of its own trajectory and cuts
    the trajectories apart (bars of the loss range's size appeared). The intervals therefore
    describe the features on about 63 % of the trajectories: counts and activities sit lower
    than on the full set (docs/topology.md)."""
    rng = np.random.default_rng(seed)
    labels = np.unique(groups)
    rows = []
    for _ in range(n_resamples):
        pick = np.unique(rng.choice(labels, size=len(labels), replace=True))
        idx = np.flatnonzero(np.isin(groups, pick))
        if len(idx) <= k:
            continue
        _, dg, _ = _complex_diagrams(gd[np.ix_(idx, idx)], values[idx], plane_xy[idx], k=k,
                                     graph=graph, complex=complex)
        rows.append(landscape_features(dg, values[idx], p=p, min_persistence=min_pers))
    if not rows:
        return pd.DataFrame(columns=["feature", "estimate", "low", "high", "n_resamples"])
    R = pd.DataFrame(rows)
    a = (1 - ci_level) / 2
    return pd.DataFrame([{"feature": f, "estimate": float(estimate[f]),
                          "low": float(np.nanquantile(R[f], a)), "high": float(np.nanquantile(R[f], 1 - a)),
                          "n_resamples": int(R[f].notna().sum())} for f in _CI_FEATURES])


def _value_check(v) -> str | None:
    import re
    if v in VALUES or re.fullmatch(r"(train|val|test)_[A-Za-z_]\w*", str(v)):
        return None
    return f"must be one of {', '.join(map(repr, VALUES))} or '<split>_<metric>' of a metric in train.metrics"


@declare({
    "k": Param((int,), 20, checks.pos, "neighbours of the k-NN graph"),
    "value": Param((str,), "val_loss", lambda v: _value_check(v), "vertex value: a loss column, or "
                   "<split>_<name> of a metric in train.metrics"),
    "graph": Param((str,), "knn_mst", checks.one_of(*GRAPHS),
                  "filtration graph: k-NN united with a minimum spanning tree (connected), or bare k-NN"),
    "graph_on": Param((str,), "cosine", checks.one_of(*GRAPH_ON),
                     "metric of the filtration graph: the snapshots' cosine distances, PHATE's potential or 2-D embedding"),
    "complex": Param((str,), "planar", checks.one_of(*COMPLEXES),
                    "planar: H0 on the graph, H1 on the graph filled by the Delaunay triangulation of `plane`"),
    "plane": Param((str,), "pca", checks.one_of(*PLANES),
                  "plane whose Delaunay triangulation fills loops: principal plane of the snapshots, or PHATE's"),
    "p": Param((int, float), 2, checks.pos, "exponent of total persistence and activity"),
    "essential": Param((str,), "drop", checks.one_of(*ESSENTIAL),
                      "essential classes in total_persistence: dropped, or capped at the largest value (measures the loss range)"),
    "min_persistence": Param((str, int, float), "auto", checks.auto_or_nonneg,
                            "bars shorter than this are noise in n_basins/n_loops ('auto': 20 noise standard deviations)"),
    "n_resamples": Param((int,), 50, checks.nonneg, "resampled trajectory sets for the features' confidence intervals (0 = none)"),
    "ci_level": Param((float,), 0.9, checks.open_unit, "level of the percentile intervals"),
    "resample": Param((str,), "trajectory", checks.one_of(*RESAMPLE), "unit drawn with replacement for the intervals"),
    "knn": Param((int,), 5, checks.pos, "PHATE kNN", into="phate_kwargs"),
    "decay": Param((int, float), 40, checks.pos, "PHATE alpha decay", into="phate_kwargs"),
    "t": Param((int, str), 20, checks.auto_or_pos_int, "PHATE diffusion time (fixed so pictures compare, or 'auto'; the value used is stored)", into="phate_kwargs"),
    "n_landmark": Param((int,), 0, checks.nonneg, "PHATE landmarks (0 = none)", into="phate_kwargs", arg=none_if_zero),
    "distances": Param((str,), "exact", checks.one_of(*DISTANCES), "cosine distances of the snapshots: exact, or estimated from a count sketch (large N)"),
    "sketch_dim": Param((int,), 4096, checks.pos, "buckets of the count sketch (relative error about sqrt(2 / sketch_dim))"),
})
def topology_of_samples(table: pd.DataFrame, params=None, gram=None, *, k: int = 20,
                        value: str = "val_loss", complex: str = DEFAULT_COMPLEX,
                        graph: str = "knn_mst", p: float = 2, essential: str = DEFAULT_ESSENTIAL,
                        graph_on: str = "cosine", plane: str = "pca", min_persistence="auto",
                        n_resamples: int = 0, ci_level: float = 0.9, resample: str = "trajectory",
                        seed: int = 0, phate_kwargs: dict | None = None, picture: bool = True,
                        drop_diverged: bool = True,
                        distances: str = "exact", sketch_dim: int = 4096, sketch_seed: int = 0,
                        device="auto") -> TopologyResult:
    """Snapshots (or their Gram) -> cosine distances -> filtration graph -> lower-star
    persistence -> features, for the samples around one minimum.

    ``params``: ``(N, D)`` snapshots (row ``i`` = ``sample_id`` ``i``) or ``gram`` ``(N, N)``.
    ``graph_on``: the metric of the filtration graph: ``"cosine"`` (the snapshots' own
    distances), ``"potential"`` (PHATE's potential distances; they saturate between the pieces
    of a disconnected kernel) or ``"embedding"`` (PHATE's 2-D picture). ``graph``:
    ``"knn_mst"`` (k-NN united with a minimum spanning tree: connected) or ``"knn"``.
    ``complex``: ``"planar"`` (H0 on the graph, H1 on the graph filled by the Delaunay
    triangulation of ``plane``: ``"pca"``, the principal plane of the unit snapshots, or
    ``"phate"``), ``"flag"``, ``"graph"`` or ``"extended"`` (features per sub-diagram too).
    ``essential``: how :func:`diagram_features`' ``total_persistence_h{d}`` treats never-dying
    classes (``"drop"``; ``"cap"`` closes them at the largest value). ``min_persistence``:
    bars shorter than this are noise in ``n_basins``/``n_loops`` (``"auto"``: 10 noise
    standard deviations, estimated from second differences along trajectories).
    ``n_resamples``: resamples of trajectories (``resample="direction"``: of directions) for
    ``ci_level`` percentile intervals; ``seed`` seeds them and PHATE.
    ``distances``: ``"exact"`` or ``"sketch"`` (count-sketch estimate, snapshots only).
    ``picture``: run PHATE for the 2-D picture (``coords``; needed by
    ``graph_on="potential"/"embedding"`` and ``plane="phate"``); without it ``coords`` and
    ``potential`` are None and the features are the same.
    ``drop_diverged``: remove samples flagged ``diverged`` or with a non-finite value
    (otherwise they raise).
    """
    from topoland.topology.embedding import phate_embedding

    _check_options(k, value, complex, p, essential, graph_on, distances, sketch_dim, graph, plane,
                   min_persistence, n_resamples, ci_level, resample)
    if (params is None) == (gram is None):
        raise ConfigError("topology_of_samples needs exactly one of params= or gram=.")
    if gram is not None and distances == "sketch":
        raise ConfigError("topology distances='sketch' estimates cosines from snapshots, but these "
                          "samples hold the sampler's Gram (storage='sketch'), whose cosines are "
                          "exact and cheap: use distances='exact'.")
    n = int((params if params is not None else gram).shape[0])
    keep, n_dropped = _usable(table, n, value, drop_diverged)
    values = vertex_values(table, value, keep)
    if len(keep) <= k:
        raise DataError(f"only {len(keep)} usable samples for a {k}-NN graph (of {n}; "
                        f"{n_dropped} diverged or non-finite): lower topology k or sample more.")
    if np.ptp(values) == 0:
        raise DataError(f"every vertex value ({value}) equals {values[0]!r}: the loss filtration "
                        "is trivial; check the sampler's records.")
    t = table.set_index("sample_id").loc[keep]
    min_pers, noise = resolve_min_persistence(min_persistence, values, t["trajectory"].to_numpy()
                                              if "trajectory" in t else np.zeros(len(keep)),
                                              t["epoch"].to_numpy() if "epoch" in t else np.arange(len(keep)))
    cos = _cosines(params, gram, keep, n, distances, sketch_dim, sketch_seed, device)
    if not picture and (graph_on != "cosine" or plane == "phate"):
        raise ConfigError(f"topology graph_on={graph_on!r} / plane={plane!r} need PHATE: "
                          "picture=False is only for graph_on='cosine' with plane='pca'.")
    ph = phate_embedding(cos, **({"seed": seed} | dict(phate_kwargs or {}))) if picture else None
    gd = cos
    if graph_on == "potential":
        gd = potential_distances(ph.potential)
    elif graph_on == "embedding":
        gd = euclidean_distances(ph.coords)
    plane_xy, plane_var = principal_plane(cos) if plane == "pca" else (ph.coords, float("nan"))
    edges, diagrams, info = _complex_diagrams(gd, values, plane_xy, k=k, graph=graph, complex=complex)

    notes = []
    if ph is not None and ph.kernel_components > 1:
        notes.append(f"PHATE's kernel graph has {ph.kernel_components} components: the picture "
                     "places them arbitrarily" + (" and the potential distances saturate between them"
                                                  if graph_on == "potential" else ""))
    if info["knn_components"] > 1:
        notes.append(f"the {k}-NN graph has {info['knn_components']} components" +
                     (f"; the minimum spanning tree joined them with {info['bridges']} edges"
                      if graph == "knn_mst" else ": every component is an essential H0 class, so "
                      "n_basins counts them"))
    for msg in notes:
        warnings.warn(msg, TopologyWarning, stacklevel=2)

    feats = diagram_features(diagrams, p=p, essential=essential, cap=float(values.max()))
    feats |= landscape_features(diagrams, values, p=p, min_persistence=min_pers)
    if complex == "extended":
        feats |= extended_features(extended_diagrams(edges, values), p=p)
    feats |= {"min_persistence": min_pers, "noise_level": noise, "n_vertices": float(len(values)),
              "n_dropped": float(n_dropped), "n_edges": float(edges.shape[1]),
              "kernel_components": float(ph.kernel_components) if ph else float("nan"),
              "knn_components": float(info["knn_components"]),
              "graph_components": float(info["components"]), "graph_bridges": float(info["bridges"]),
              "plane_variance": plane_var, "phate_t": float(ph.t_used) if ph else float("nan")}
    groups = t[resample].to_numpy() if resample in t else None
    if n_resamples and groups is None:
        raise DataError(f"topology resample={resample!r} needs a {resample!r} column in the table.")
    intervals = (_intervals(gd, values, plane_xy, groups, k=k, graph=graph, complex=complex, p=p,
                            min_pers=min_pers, n_resamples=n_resamples, ci_level=ci_level, seed=seed,
                            estimate=feats) if n_resamples else pd.DataFrame())
    settings = dict(k=k, value=value, complex=complex, graph=graph, p=p, essential=essential,
                    graph_on=graph_on, plane=plane, min_persistence=min_persistence,
                    n_resamples=n_resamples, ci_level=ci_level, resample=resample, seed=seed,
                    phate_kwargs=dict(phate_kwargs or {}), picture=picture, drop_diverged=drop_diverged,
                    distances=distances)
    if distances == "sketch":
        settings |= dict(sketch_dim=int(sketch_dim), sketch_seed=int(sketch_seed))
    return TopologyResult(sample_ids=keep, coords=ph.coords if ph else None,
                          potential=ph.potential if ph else None, edges=edges,
                          values=values, diagrams=diagrams, features=feats,
                          t_used=ph.t_used if ph else None,
                          settings=settings, plane=plane_xy, intervals=intervals, notes=notes)


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
    (optional ``name``, used as the row index). The features of a set depend on that set
    alone, so ``fit`` only checks the options and records ``n_features_in_``-style state
    (``options_``); ``transform`` returns a DataFrame of :func:`topology_of_samples` features,
    with ``<feature>.low`` / ``<feature>.high`` interval columns when ``n_resamples`` > 0.
    """

    def __init__(self, k: int = 20, value: str = "val_loss", complex: str = DEFAULT_COMPLEX,
                 graph: str = "knn_mst", p: float = 2, essential: str = DEFAULT_ESSENTIAL,
                 graph_on: str = "cosine", plane: str = "pca", min_persistence="auto",
                 n_resamples: int = 0, ci_level: float = 0.9, resample: str = "trajectory",
                 phate_kwargs: dict | None = None, drop_diverged: bool = True,
                 distances: str = "exact", sketch_dim: int = 4096, sketch_seed: int = 0,
                 seed: int = 0, device="auto"):
        self.k = k
        self.value = value
        self.complex = complex
        self.graph = graph
        self.p = p
        self.essential = essential
        self.graph_on = graph_on
        self.plane = plane
        self.min_persistence = min_persistence
        self.n_resamples = n_resamples
        self.ci_level = ci_level
        self.resample = resample
        self.phate_kwargs = phate_kwargs
        self.drop_diverged = drop_diverged
        self.distances = distances
        self.sketch_dim = sketch_dim
        self.sketch_seed = sketch_seed
        self.seed = seed
        self.device = device

    def fit(self, X, y=None):
        o = self.get_params()
        _check_options(o["k"], o["value"], o["complex"], o["p"], o["essential"], o["graph_on"],
                       o["distances"], o["sketch_dim"], o["graph"], o["plane"], o["min_persistence"])
        self.options_ = o
        return self

    def transform(self, X) -> pd.DataFrame:
        from sklearn.utils.validation import check_is_fitted
        check_is_fitted(self, "options_")
        rows, names = [], []
        for i, s in enumerate(X):
            table, params, gram, name = _unpack_set(s, i)
            res = topology_of_samples(table, params=params, gram=gram, **self.options_)
            row = dict(res.features)
            for r in res.intervals.itertuples():
                row |= {f"{r.feature}.low": r.low, f"{r.feature}.high": r.high}
            rows.append(row)
            names.append(name)
        return pd.DataFrame(rows, index=pd.Index(names, name="set"))
