"""k-NN graphs, vertex alignment, lower-star persistence (hand-computed), summaries, pipeline."""
import math

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from sklearn.base import clone  # noqa: E402

from topoland.topology.embedding import cosine_distances  # noqa: E402
from topoland.errors import ConfigError, DataError  # noqa: E402
from topoland.topology import (LossTopology, TrajectorySet, betti_curve,  # noqa: E402
                               betti_curve_vector, bottleneck_distance, diagram_features,
                               euclidean_distances, extended_diagrams, filtration_graph, knn_graph,
                               knn_graph_reference, lower_star_persistence,
                               persistence_image, persistence_landscape, potential_distances,
                               to_networkx, topology_of_samples, total_persistence,
                               vertex_values, wasserstein_distance)

INF = math.inf

# Small graphs with hand-computed diagrams. Values: v0=0, v1=2, v2=1, v3=3 unless stated.
# path 0-1-2 (values 1,3,2): H0 minima 1 and 2, merge at 3.
# cycle 0-1-2-3-0: minima 0,1 merge at 2 (edges 01, 12); the loop closes at 3.
#   extended: ordinary (1,2); extended+ (0,3) [min->max]; relative (2->1) [the two maxima 2, 3
#   merge at 1 going down]; extended- (3->0) [loop born at 3, dies at its lowest vertex 0].
# two components 0-1 and 2-3: each an essential H0 class; extended: (0,2) and (1,3).
# filled: the cycle plus chord 0-2 -> triangles 012 (at 2) and 023 (at 3) fill both loops
#   (born at 2 and 3); v2 joins v0 at 1 so H0 has no finite bar; extended: (0,3);
#   relative (2->1) as for the cycle; extended- (2->0), (3->0).
GRAPHS = {
    "path": ([(0, 1), (1, 2)], [1.0, 3.0, 2.0]),
    "cycle": ([(0, 1), (1, 2), (2, 3), (3, 0)], [0.0, 2.0, 1.0, 3.0]),
    "two_components": ([(0, 1), (2, 3)], [0.0, 2.0, 1.0, 3.0]),
    "filled_cycle": ([(0, 1), (1, 2), (2, 3), (3, 0), (0, 2)], [0.0, 2.0, 1.0, 3.0]),
}
EXPECTED = {
    ("path", "graph"): {0: [(1, INF), (2, 3)], 1: []},
    ("path", "flag"): {0: [(1, INF), (2, 3)], 1: []},
    ("path", "extended"): {0: [(1, 3), (2, 3)], 1: []},
    ("cycle", "graph"): {0: [(0, INF), (1, 2)], 1: [(3, INF)]},
    ("cycle", "flag"): {0: [(0, INF), (1, 2)], 1: [(3, INF)]},
    ("cycle", "extended"): {0: [(0, 3), (1, 2)], 1: [(0, 3), (1, 2)]},
    ("two_components", "graph"): {0: [(0, INF), (1, INF)], 1: []},
    ("two_components", "flag"): {0: [(0, INF), (1, INF)], 1: []},
    ("two_components", "extended"): {0: [(0, 2), (1, 3)], 1: []},
    ("filled_cycle", "graph"): {0: [(0, INF)], 1: [(2, INF), (3, INF)]},
    ("filled_cycle", "flag"): {0: [(0, INF)], 1: []},
    ("filled_cycle", "extended"): {0: [(0, 3)], 1: [(0, 2), (0, 3), (1, 2)]},
}


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_hand_computed_diagrams(key):
    name, complex_ = key
    edges, values = GRAPHS[name]
    dg = lower_star_persistence(np.array(edges).T, values, complex=complex_)
    assert set(dg) == {0, 1}
    for dim, pts in EXPECTED[key].items():
        np.testing.assert_array_equal(dg[dim], np.array(pts, dtype=float).reshape(-1, 2))


def test_extended_parts_and_rounding_cleaned():
    # values not representable exactly; GUDHI's rescaling would leave ~1e-16 errors
    edges = np.array([(0, 1), (1, 2), (2, 3), (3, 0)]).T
    values = np.array([0.1, 0.7, 0.3, 0.9])
    parts = extended_diagrams(edges, values)
    np.testing.assert_array_equal(parts["ordinary"][0], [[0.3, 0.7]])
    np.testing.assert_array_equal(parts["extended+"][0], [[0.1, 0.9]])
    np.testing.assert_array_equal(parts["relative"][1], [[0.7, 0.3]])   # birth > death
    np.testing.assert_array_equal(parts["extended-"][1], [[0.9, 0.1]])
    dg = lower_star_persistence(edges, values, complex="extended")
    np.testing.assert_array_equal(dg[1], [[0.1, 0.9], [0.3, 0.7]])
    assert total_persistence(dg[1], p=1) == pytest.approx(0.8 + 0.4)


def test_graph_h1_count_is_cycle_rank():
    rng = np.random.default_rng(0)
    D = euclidean_distances(rng.normal(size=(40, 3)))
    E = knn_graph(D, k=4)
    dg = lower_star_persistence(E, rng.uniform(size=40), complex="graph")
    n_comp = int((~np.isfinite(dg[0][:, 1])).sum())
    assert len(dg[1]) == E.shape[1] - 40 + n_comp
    assert np.all(np.isinf(dg[1][:, 1]))


def test_knn_graph_matches_brute_force_with_ties_and_asymmetry():
    rng = np.random.default_rng(1)
    for n, k, asym in [(30, 3, False), (25, 5, True), (12, 11, False)]:
        D = rng.integers(0, 6, size=(n, n)).astype(float)  # many ties
        if not asym:
            D = np.minimum(D, D.T)
        E = knn_graph(D, k=k, block_size=7)
        np.testing.assert_array_equal(E, knn_graph_reference(D, k=k))
        assert E.dtype == np.int64 and np.all(E[0] < E[1])
        assert len({tuple(e) for e in E.T}) == E.shape[1]


def test_knn_graph_joins_nearest_not_farthest():
    x = np.arange(10.0)[:, None]                      # points on a line
    E = knn_graph(euclidean_distances(x), k=2)
    nbrs = {i: set() for i in range(10)}
    for a, b in E.T:
        nbrs[a].add(b)
        nbrs[b].add(a)
    assert nbrs[0] == {1, 2} and nbrs[2] == {0, 1, 3} and nbrs[5] == {4, 6}
    for i in range(10):  # every point holds its own 2 nearest
        d = np.abs(np.arange(10) - i).astype(float)
        d[i] = np.inf
        assert set(np.argsort(d, kind="stable")[:2]) <= nbrs[i]
    with pytest.raises(ConfigError):
        knn_graph(np.zeros((3, 3)), k=3)


def test_potential_distances_are_row_euclidean():
    P = np.random.default_rng(2).normal(size=(7, 4)) * 10 + 50
    ref = np.array([[np.linalg.norm(P[i] - P[j]) for j in range(7)] for i in range(7)])
    np.testing.assert_allclose(potential_distances(P), ref, atol=1e-10)


def test_vertex_values_aligned_by_sample_id():
    table = pd.DataFrame({"sample_id": np.arange(6), "val_loss": np.arange(6) * 0.1 + 1,
                          "test_loss": np.arange(6) * 2.0})
    shuffled = table.sample(frac=1.0, random_state=3)
    assert not np.array_equal(shuffled["sample_id"], table["sample_id"])
    np.testing.assert_array_equal(vertex_values(shuffled), vertex_values(table))
    np.testing.assert_array_equal(vertex_values(shuffled), np.arange(6) * 0.1 + 1)
    np.testing.assert_array_equal(vertex_values(shuffled, "test_loss", [4, 1]), [8.0, 2.0])
    with pytest.raises(DataError, match="\\[7\\]"):
        vertex_values(table, sample_ids=[0, 7])
    with pytest.raises(DataError, match="no column"):
        vertex_values(table, "train_loss")
    bad = table.copy()
    bad.loc[2, "val_loss"] = np.nan
    with pytest.raises(DataError, match="\\[2\\]"):
        vertex_values(bad)
    with pytest.raises(DataError, match="duplicate"):
        vertex_values(pd.concat([table, table.iloc[:1]]))


def test_total_persistence_known_diagram():
    dg = np.array([[0.0, 1.0], [0.5, 2.5], [1.0, INF]])
    assert total_persistence(dg, p=1, essential="drop") == pytest.approx(3.0)
    assert total_persistence(dg, p=2, essential="drop") == pytest.approx(5.0)
    assert total_persistence(dg, p=1, essential="cap", cap=4.0) == pytest.approx(6.0)
    assert total_persistence(dg, p=2, essential="cap", cap=4.0) == pytest.approx(14.0)
    with pytest.raises(ConfigError, match="cap"):
        total_persistence(dg, essential="cap")
    assert total_persistence(dg[:2], essential="cap") == pytest.approx(5.0)  # no cap needed
    assert total_persistence(np.array([[3.0, 1.0]]), p=2) == pytest.approx(4.0)  # |d - b|
    with pytest.raises(ConfigError):
        total_persistence(dg, essential="keep")


def test_betti_curve_and_features():
    dgs = {0: np.array([[0.0, INF], [1.0, 2.0]]), 1: np.array([[1.5, 3.0]])}
    bc = betti_curve(dgs, [-1.0, 0.0, 1.0, 1.5, 2.0, 3.0])
    np.testing.assert_array_equal(bc[0], [0, 1, 2, 2, 1, 1])
    np.testing.assert_array_equal(bc[1], [0, 0, 0, 1, 1, 0])
    f = diagram_features(dgs, p=2, essential="cap", cap=3.0)
    assert f["total_persistence_h0"] == pytest.approx(9.0 + 1.0)
    assert f["total_persistence_h1"] == pytest.approx(2.25)
    assert f["total_persistence"] == pytest.approx(12.25)
    assert (f["n_bars_h0"], f["n_essential_h0"], f["max_persistence_h0"]) == (2, 1, 1.0)
    assert f["entropy_h0"] == 0.0 and f["entropy_h1"] == 0.0
    f2 = diagram_features({0: np.array([[0.0, 1.0], [0.0, 1.0]])})
    assert f2["entropy_h0"] == pytest.approx(math.log(2))


def test_diagram_distances_and_vectorizations():
    a, b = np.array([[0.0, 4.0]]), np.array([[0.0, 1.0]])
    # match (0,4)-(0,1) costs 3; both to the diagonal cost 2 and 0.5 (L-inf ground metric)
    assert bottleneck_distance(a, b) == pytest.approx(2.0)
    assert wasserstein_distance(a, b, order=1) == pytest.approx(2.5)
    ai, bi = np.array([[0.0, 4.0], [1.0, INF]]), np.array([[0.0, 4.0], [3.0, INF]])
    assert bottleneck_distance(ai, bi) == pytest.approx(2.0)
    ls = persistence_landscape(np.array([[0.0, 2.0], [5.0, INF]]), num_landscapes=1,
                               resolution=5, sample_range=[0.0, 2.0])
    np.testing.assert_allclose(ls, [0.0, 0.5, 1.0, 0.5, 0.0])  # tent peak (d - b) / 2
    bv = betti_curve_vector(np.array([[0.0, 2.0], [1.0, 3.0], [0.0, INF]]), resolution=4,
                            sample_range=[0.5, 2.5])
    np.testing.assert_array_equal(bv, [1, 2, 2, 1])  # grid 0.5, 1.17, 1.83, 2.5
    ref = betti_curve({0: np.array([[0.0, 2.0], [1.0, 3.0]])}, np.linspace(0.5, 2.5, 4))[0]
    np.testing.assert_array_equal(bv, ref)
    im = persistence_image(np.array([[0.0, 1.0], [0.0, INF]]), resolution=(4, 4),
                           im_range=[-1, 1, 0, 2], bandwidth=0.5)
    assert im.shape == (16,) and np.isfinite(im).all() and im.sum() > 0
    assert np.all(persistence_image(np.array([[0.0, INF]]), resolution=(3, 3)) == 0)


def test_to_networkx():
    E = np.array([[0, 1], [1, 2]])
    g = to_networkx(E, values=[0.0, 3.0, 1.0])
    assert g.number_of_nodes() == 3 and g.number_of_edges() == 2
    assert g.edges[0, 1]["value"] == 3.0 and g.nodes[2]["value"] == 1.0


# ----------------------------------------------------------------------------- pipeline

def _samples(n_traj=6, n_pts=11, d=300, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=d)
    X, rows = [], []
    for j in range(n_traj):
        u = rng.normal(size=d)
        step = 0.25 * (1 + j % 4)
        u *= np.linalg.norm(c) / np.linalg.norm(u) * step
        amp = step * 0.85 ** np.arange(n_pts)
        X.append(c + (amp / step)[:, None] * u + np.cumsum(rng.normal(size=(n_pts, d)), 0) * 0.03)
        for r in range(n_pts):
            rows.append(dict(sample_id=j * n_pts + r, trajectory=j, direction=j // 4, step=step,
                             epoch=float(r), val_loss=0.1 + amp[r] ** 2 + 0.02 * rng.normal(),
                             train_loss=0.1 + amp[r] ** 2, test_loss=0.2 + amp[r] ** 2,
                             diverged=False))
    return np.concatenate(X).astype(np.float32), pd.DataFrame(rows)


OPTS = dict(k=6, phate_kwargs={"t": 10}, device="cpu")


def _assert_same_diagrams(a, b):
    assert set(a) == set(b)
    for dim in a:
        np.testing.assert_allclose(a[dim], b[dim], rtol=0, atol=1e-12)


@pytest.mark.parametrize("complex_", ["planar", "graph", "flag", "extended"])
def test_pipeline_invariant_to_permutation_and_per_snapshot_scaling(complex_):
    X, table = _samples()
    base = topology_of_samples(table, params=X, complex=complex_, **OPTS)
    perm = np.random.default_rng(5).permutation(len(X))   # new row r holds old sample perm[r]
    t2 = table.copy()
    t2["sample_id"] = np.argsort(perm)[table["sample_id"].to_numpy()]
    t2 = t2.sample(frac=1.0, random_state=1)
    res_p = topology_of_samples(t2, params=X[perm], complex=complex_, **OPTS)
    _assert_same_diagrams(base.diagrams, res_p.diagrams)
    np.testing.assert_array_equal(res_p.values, base.values[perm])
    scales = np.random.default_rng(6).uniform(0.2, 5.0, size=(len(X), 1)).astype(np.float32)
    res_s = topology_of_samples(table, params=X * scales, complex=complex_, **OPTS)
    _assert_same_diagrams(base.diagrams, res_s.diagrams)
    assert base.features["n_edges"] == res_s.features["n_edges"]


def test_pipeline_outputs_gram_path_and_diverged_samples():
    X, table = _samples()
    res = topology_of_samples(table, params=X, **OPTS)
    n = len(X)
    assert res.coords.shape == (n, 2) and res.potential.shape == (n, n)
    assert res.values.shape == (n,) and res.t_used == 10
    np.testing.assert_array_equal(res.values, table["val_loss"].to_numpy())
    # the filtration graph: 6-NN united with a minimum spanning tree, on the cosine distances
    np.testing.assert_array_equal(res.edges, filtration_graph(cosine_distances(X), 6)[0])
    res_pot = topology_of_samples(table, params=X, graph_on="potential", graph="knn", **OPTS)
    np.testing.assert_array_equal(res_pot.edges, knn_graph(potential_distances(res_pot.potential), 6))
    G = X.astype(np.float64) @ X.astype(np.float64).T
    res_g = topology_of_samples(table, gram=G, **OPTS)
    _assert_same_diagrams(res.diagrams, res_g.diagrams)
    t2 = table.copy()
    t2.loc[t2.sample_id == 7, "diverged"] = True
    t2.loc[t2.sample_id == 9, "val_loss"] = np.inf
    res_d = topology_of_samples(t2, params=X, **OPTS)
    assert 7 not in res_d.sample_ids and 9 not in res_d.sample_ids and len(res_d.values) == n - 2
    with pytest.raises(DataError, match="not finite"):
        topology_of_samples(t2, params=X, drop_diverged=False, **OPTS)
    with pytest.raises(DataError, match="0..65"):
        topology_of_samples(table.iloc[1:], params=X, **OPTS)
    with pytest.raises(ConfigError):
        topology_of_samples(table, params=X, complex="alpha", **OPTS)


def test_pipeline_sketch_distances():
    X, table = _samples()
    exact = topology_of_samples(table, params=X, **OPTS)
    # a sketch with a bucket per coordinate is exact up to float32 rounding
    full = topology_of_samples(table, params=X, distances="sketch", sketch_dim=X.shape[1], **OPTS)
    assert full.settings["distances"] == "sketch" and full.settings["sketch_dim"] == X.shape[1]
    for key in ("total_persistence_h0", "total_persistence_h1", "n_edges"):
        assert full.features[key] == pytest.approx(exact.features[key], rel=1e-6)
    small = topology_of_samples(table, params=X, distances="sketch", sketch_dim=32, **OPTS)
    assert small.edges.shape[1] > 0 and np.isfinite(small.features["total_persistence_h0"])
    G = X.astype(np.float64) @ X.astype(np.float64).T
    with pytest.raises(ConfigError, match="Gram"):
        topology_of_samples(table, gram=G, distances="sketch", **OPTS)
    with pytest.raises(ConfigError, match="distances"):
        topology_of_samples(table, params=X, distances="pca", **OPTS)
    with pytest.raises(ConfigError, match="sketch_dim"):
        LossTopology(distances="sketch", sketch_dim=0).fit([])
    est = LossTopology(k=6, phate_kwargs={"t": 10}, distances="sketch", sketch_dim=X.shape[1],
                       device="cpu")
    row = est.fit_transform([{"table": table, "params": X}]).iloc[0]
    assert row["total_persistence_h1"] == pytest.approx(exact.features["total_persistence_h1"],
                                                        rel=1e-6)


def test_loss_topology_estimator():
    X, table = _samples()
    est = LossTopology(k=6, phate_kwargs={"t": 10}, device="cpu")
    assert est.get_params()["complex"] == "planar"
    est2 = clone(est).set_params(complex="graph", essential="cap")
    assert est2.complex == "graph" and est.complex == "planar"
    sets = [TrajectorySet(table=table, params=X, name="a"),
            {"table": table, "gram": X.astype(np.float64) @ X.astype(np.float64).T, "name": "b"}]
    df = est.fit(sets).transform(sets)
    assert list(df.index) == ["a", "b"]
    assert {"total_persistence_h0", "total_persistence_h1", "n_bars_h1", "n_essential_h1",
            "max_persistence_h0", "entropy_h0", "n_edges"} <= set(df.columns)
    np.testing.assert_allclose(df.loc["a"].to_numpy(), df.loc["b"].to_numpy(), rtol=1e-6)  # float32 vs Gram
    single = topology_of_samples(table, params=X, **OPTS).features
    assert df.loc["a", "total_persistence_h1"] == pytest.approx(single["total_persistence_h1"])
    with pytest.raises(ConfigError):
        LossTopology(graph_on="umap").fit(sets)


def test_plots_draw_on_given_axes():
    import matplotlib.pyplot as plt

    from topoland.plots.topology import plot_betti_curves, plot_diagram, plot_embedding

    X, table = _samples(3, 6, 50)
    fig, axes = plt.subplots(1, 4)
    coords = np.random.default_rng(0).normal(size=(len(X), 2))
    ax = plot_embedding(coords, color=table["val_loss"], trajectories=table["trajectory"],
                        order=table["epoch"], ax=axes[0], color_label="val loss")
    assert ax is axes[0] and len(ax.lines) == 3 and len(ax.collections) == 1
    ax = plot_embedding(coords, color=table["trajectory"].to_numpy(), ax=axes[1])
    assert len(ax.collections) == 3 and ax.get_legend() is not None
    dgs = {0: np.array([[0.0, INF], [1.0, 2.0]]), 1: np.array([[1.5, 3.0]])}
    ax = plot_diagram(dgs, ax=axes[2])
    ys = np.concatenate([c.get_offsets()[:, 1] for c in ax.collections])
    assert np.isfinite(ys).all() and ys.max() > 3.0     # the inf point sits on the inf line
    t = np.linspace(0, 3, 7)
    assert plot_betti_curves(betti_curve(dgs, t), t, ax=axes[3]) is axes[3]
    plt.close(fig)
