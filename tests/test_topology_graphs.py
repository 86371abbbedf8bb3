"""Filtration graphs (k-NN + MST), the principal plane, the planar complex, landscape features."""
import numpy as np
import pytest

from topoland.topology.embedding import cosine_distances
from topoland.errors import ConfigError, DataError
from topoland.topology import (delaunay_edges, extended_diagrams, extended_features,
                               filtration_graph, knn_graph, landscape_features,
                               lower_star_persistence, mst_edges, mst_edges_reference,
                               n_components, noise_level, principal_plane,
                               resolve_min_persistence, union_edges)

INF = np.inf


def _random_distances(n, seed=0, dim=5):
    X = np.random.default_rng(seed).normal(size=(n, dim))
    return np.sqrt(((X[:, None] - X[None]) ** 2).sum(-1))


def test_mst_equals_kruskal_reference():
    for seed in range(3):
        D = _random_distances(40, seed)
        np.testing.assert_array_equal(mst_edges(D), mst_edges_reference(D))


def test_mst_with_duplicates_is_a_minimal_spanning_tree():
    D = _random_distances(12, 1)
    D = D[np.ix_([0, 1, 2, 2, 3, 4, 5, 5, 5, 6, 7, 8], [0, 1, 2, 2, 3, 4, 5, 5, 5, 6, 7, 8])]
    E = mst_edges(D)
    assert E.shape == (2, 11) and n_components(E, 12) == 1
    ref = mst_edges_reference(D)
    assert D[E[0], E[1]].sum() == pytest.approx(D[ref[0], ref[1]].sum(), abs=1e-12)
    assert mst_edges(np.zeros((1, 1))).shape == (2, 0)
    with pytest.raises(DataError, match="NaN"):
        mst_edges(np.full((3, 3), np.nan))


def test_filtration_graph_joins_the_pieces_of_a_knn_graph():
    # three tight clusters far apart: a 3-NN graph falls into 3 pieces, the tree joins them
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(10, 2)) * 0.1 + c for c in ((0, 0), (5, 0), (0, 9))])
    D = np.sqrt(((X[:, None] - X[None]) ** 2).sum(-1))
    knn = knn_graph(D, 3)
    E, info = filtration_graph(D, 3)
    assert info == {"knn_components": 3, "bridges": 2, "components": 1}
    assert set(map(tuple, knn.T)) <= set(map(tuple, E.T)) and E.shape[1] == knn.shape[1] + 2
    bare, info_bare = filtration_graph(D, 3, graph="knn")
    np.testing.assert_array_equal(bare, knn)
    assert info_bare["components"] == 3 and info_bare["bridges"] == 0
    with pytest.raises(ConfigError, match="graph"):
        filtration_graph(D, 3, graph="rips")


def test_union_edges():
    a = np.array([[0, 1], [1, 2]])
    b = np.array([[2, 0], [1, 1]])      # (2, 1) is (1, 2) reversed; (0, 1) repeats
    np.testing.assert_array_equal(union_edges(a, b, n=3), [[0, 1], [1, 2]])


def test_principal_plane_is_the_pca_of_the_unit_snapshots():
    X = np.random.default_rng(0).normal(size=(60, 30)) + 3.0
    Y, var = principal_plane(cosine_distances(X))
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    U -= U.mean(0)
    u, s, _ = np.linalg.svd(U, full_matrices=False)
    np.testing.assert_allclose(np.abs(Y), np.abs(u[:, :2] * s[:2]), atol=1e-9)
    assert var == pytest.approx((s[:2] ** 2).sum() / (s ** 2).sum(), rel=1e-9)
    # the Lanczos path for large N gives the same plane
    X2 = np.random.default_rng(1).normal(size=(700, 20)) + 3.0
    Y2, var2 = principal_plane(cosine_distances(X2))
    U2 = X2 / np.linalg.norm(X2, axis=1, keepdims=True)
    u2, s2, _ = np.linalg.svd(U2 - U2.mean(0), full_matrices=False)
    np.testing.assert_allclose(np.abs(Y2), np.abs(u2[:, :2] * s2[:2]), atol=1e-7)
    with pytest.raises(DataError, match="3 samples"):
        principal_plane(np.zeros((2, 2)))


def test_delaunay_of_a_square_with_its_centre():
    Y = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [0.5, 0.5]])
    E, T = delaunay_edges(Y)
    assert {tuple(e) for e in E.T} == {(0, 1), (1, 2), (2, 3), (0, 3), (0, 4), (1, 4), (2, 4), (3, 4)}
    assert len(T) == 4 and (T == 4).any(axis=1).all()
    E2, T2 = delaunay_edges(np.array([[0, 0], [1, 1], [2, 2]]))   # collinear: nothing
    assert E2.shape == (2, 0) and T2.shape == (0, 3)
    with pytest.raises(DataError, match=r"\(N, 2\)"):
        delaunay_edges(np.zeros((4, 3)))


def test_planar_complex_fills_a_sampled_loop_at_its_centre_value():
    # a square loop of low corners (0, .1, .2, .3) around a high centre (1): on the bare
    # graph or its flag complex the loop never dies; filled by the Delaunay triangles through
    # the centre it dies when the centre enters
    values = np.array([0.0, 0.1, 0.2, 0.3, 1.0])
    cycle = np.array([[0, 1, 2, 0], [1, 2, 3, 3]])
    fill = delaunay_edges(np.array([[0, 0], [1, 0], [1, 1], [0, 1], [0.5, 0.5]]))[0]
    cycle_and_centre = union_edges(cycle, np.array([[0], [4]]), n=5)
    flag = lower_star_persistence(cycle_and_centre, values, complex="flag")
    np.testing.assert_array_equal(flag[1], [[0.3, INF]])
    planar = lower_star_persistence(cycle_and_centre, values, complex="planar", fill_edges=fill)
    np.testing.assert_array_equal(planar[0], [[0.0, INF]])
    np.testing.assert_array_equal(planar[1], [[0.3, 1.0]])
    with pytest.raises(ConfigError, match="fill_edges"):
        lower_star_persistence(cycle, values, complex="planar")


def test_landscape_features_by_hand():
    dg = {0: np.array([[0.0, INF], [1.0, 3.0], [2.0, 2.05]]),
          1: np.array([[1.5, 2.5], [2.0, INF]])}
    values = np.array([0.0, 4.0, 1.0, 2.0])
    f = landscape_features(dg, values, p=2, min_persistence=0.1)
    assert f["loss_min"] == 0 and f["loss_max"] == 4 and f["loss_range"] == 4
    assert f["n_basins"] == 2                      # the essential class + the bar of 2
    assert f["activity_h0"] == pytest.approx(4 + 0.05 ** 2)
    assert f["activity_h0_norm"] == pytest.approx((4 + 0.05 ** 2) / 16)
    assert f["max_depth_h0"] == 2 and f["max_depth_h1"] == 1
    assert f["n_loops"] == 1 and f["n_unfilled_loops"] == 1 and f["activity_h1"] == 1
    flat = landscape_features({0: np.array([[1.0, INF]]), 1: np.zeros((0, 2))}, np.ones(3))
    assert np.isnan(flat["activity_h0_norm"]) and flat["n_basins"] == 1 and flat["activity_h1"] == 0


def test_essential_classes_capped_measure_only_the_range():
    # the audit's finding in miniature: with the cap, H0 total persistence is
    # components x range^2 whatever the finite bars are
    from topoland.topology import total_persistence
    dg = np.array([[0.0, INF], [0.5, INF], [1.0, 1.2]])
    cap = 3.0
    assert total_persistence(dg, essential="cap", cap=cap) == pytest.approx(9 + 2.5 ** 2 + 0.04)
    assert total_persistence(dg) == pytest.approx(0.04)      # default: essential dropped


def test_noise_level_recovers_the_noise_std():
    rng = np.random.default_rng(0)
    n_traj, n_rec, sigma = 40, 30, 0.05
    t = np.tile(np.arange(n_rec), n_traj).astype(float)
    traj = np.repeat(np.arange(n_traj), n_rec)
    v = 3.0 - 0.01 * t + 0.5 * traj + sigma * rng.standard_normal(len(t))
    order = rng.permutation(len(v))           # any row order
    assert noise_level(v[order], traj[order], t[order]) == pytest.approx(sigma, rel=0.1)
    m, noise = resolve_min_persistence("auto", v, traj, t)
    assert m == pytest.approx(20 * noise)
    assert resolve_min_persistence(0.3, v, traj, t)[0] == 0.3
    with pytest.raises(DataError, match="3 records"):
        noise_level([1.0, 2.0], [0, 1], [0, 0])
    with pytest.raises(ConfigError, match="min_persistence"):
        resolve_min_persistence(-1, v, traj, t)


def test_extended_features_per_part():
    # the cycle 0-1-2-3 with values 0, 2, 1, 3 (see test_topology's hand diagrams)
    parts = extended_diagrams(np.array([[0, 1, 2, 0], [1, 2, 3, 3]]), np.array([0.0, 2.0, 1.0, 3.0]))
    f = extended_features(parts, p=1)
    assert f["ext_ordinary_h0_n"] == 1 and f["ext_ordinary_h0_activity"] == 1
    assert f["ext_extended_plus_h0_activity"] == 3 and f["ext_extended_minus_h1_activity"] == 3
    assert f["ext_relative_h1_activity"] == 1
