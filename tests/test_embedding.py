"""Cosine distances (blockwise torch vs a plain loop) and PHATE on precomputed distances."""
import logging

import numpy as np
import pytest
import torch

from topoland.topology.embedding import (_sketch_layout, alpha_decay_affinity, cosine_distances,
                                cosine_distances_from_gram, cosine_distances_reference,
                                cosine_sketch, phate_embedding, sketch_cosine_distances)
from topoland.errors import ConfigError, DataError


def _trajectories(n_traj=8, n_pts=11, d=200, seed=0):
    """Small structured snapshots: trajectories relaxing back toward a centre."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=d)
    out = []
    for j in range(n_traj):
        u = rng.normal(size=d)
        u *= np.linalg.norm(c) / np.linalg.norm(u) * (0.25 + 0.25 * (j % 4))
        w = np.cumsum(rng.normal(size=(n_pts, d)), 0) * 0.02
        out.append(c + u * 0.85 ** np.arange(n_pts)[:, None] + w)
    return np.concatenate(out).astype(np.float32)


def test_cosine_distances_match_loop_reference_across_blocks():
    rng = np.random.default_rng(1)
    X = (rng.normal(size=(23, 300)) + 0.5).astype(np.float32)
    ref = cosine_distances_reference(X)
    # float32 products over D = 300 columns: rounding of order sqrt(D) * eps32 * |v|^2 (v: the
    # centred unit rows, |v| <= 2), which depends on the CPU's BLAS kernel (2e-7 on one, 4.5e-7
    # on another); the bound below is that order with a factor 2 of room
    tol = 2 * np.sqrt(X.shape[1]) * np.finfo(np.float32).eps
    for bs, cs in [(1024, 65536), (5, 64), (1, 7)]:
        D = cosine_distances(torch.from_numpy(X), block_size=bs, chunk_size=cs, device="cpu")
        assert D.shape == (23, 23) and D.dtype == np.float64
        np.testing.assert_allclose(D, ref, atol=tol)
        assert np.array_equal(D, D.T) and np.all(np.diag(D) == 0)


def test_cosine_distances_float16_and_numpy_input():
    rng = np.random.default_rng(2)
    X16 = torch.from_numpy(rng.normal(size=(10, 500))).to(torch.float16)
    ref = cosine_distances_reference(X16.double())
    np.testing.assert_allclose(cosine_distances(X16, device="cpu", chunk_size=100), ref, atol=2e-7)
    np.testing.assert_allclose(cosine_distances(X16.double().numpy(), device="cpu"), ref, atol=2e-7)


def test_cosine_distances_accurate_for_close_snapshots():
    # snapshots 1e-3 apart relative to their norm: distances ~1e-6, where a plain float32
    # Gram loses most digits; the centred computation keeps them.
    rng = np.random.default_rng(3)
    c = rng.normal(size=20000)
    X = (c + 1e-3 * rng.normal(size=(6, 20000))).astype(np.float32)
    ref = cosine_distances_reference(X)
    D = cosine_distances(X, device="cpu")
    off = ~np.eye(6, dtype=bool)
    assert np.max(np.abs(D[off] - ref[off]) / ref[off]) < 1e-3
    Xt = torch.from_numpy(X)
    naive = 1 - (Xt @ Xt.T / torch.outer(Xt.norm(dim=1), Xt.norm(dim=1))).double().numpy()
    assert np.max(np.abs(naive[off] - ref[off]) / ref[off]) > 1e-2  # the problem is real


def test_cosine_distances_from_gram_and_scale_invariance():
    X = _trajectories(3, 5, 50).astype(np.float64)
    ref = cosine_distances_reference(X)
    np.testing.assert_allclose(cosine_distances_from_gram(X @ X.T), ref, atol=1e-12)
    scales = np.random.default_rng(4).uniform(0.1, 10, size=(len(X), 1))
    np.testing.assert_allclose(cosine_distances(X * scales, device="cpu"), ref, atol=1e-9)


def test_cosine_distances_errors():
    X = np.ones((3, 4), dtype=np.float32)
    X[1] = 0
    with pytest.raises(DataError, match="rows \\[1\\]"):
        cosine_distances(X, device="cpu")
    with pytest.raises(DataError):
        cosine_distances(np.ones(4), device="cpu")
    with pytest.raises(DataError, match="diagonal"):
        cosine_distances_from_gram(np.zeros((2, 2)))


def test_sparse_affinity_equals_graphtools_dense_kernel():
    import graphtools

    D = cosine_distances(_trajectories(5, 9, 80), device="cpu")
    D[3, 4] = D[4, 3] = 0.0  # a duplicate pair (zero bandwidth path)
    g = graphtools.Graph(D, knn=5, decay=40, precomputed="distance", n_pca=None, thresh=1e-4,
                         verbose=0)
    K = alpha_decay_affinity(D, knn=5, decay=40, block_size=7)
    Ks = ((K + K.T) / 2).toarray()
    np.testing.assert_allclose(Ks, np.asarray(g.kernel.todense() if hasattr(g.kernel, "todense")
                                              else g.kernel), atol=1e-12)


@pytest.mark.parametrize("n_landmark", [None, 30])
def test_precomputed_matches_phate_cosine_path(n_landmark):
    import phate

    X = _trajectories()
    res = phate_embedding(cosine_distances(X, device="cpu"), t=20, n_landmark=n_landmark, seed=0)
    op = phate.PHATE(knn_dist="cosine", n_pca=None, mds_dist="cosine", t=20,
                     n_landmark=n_landmark, random_state=0, verbose=-1)
    Y = op.fit_transform(X.astype(np.float64))
    np.testing.assert_allclose(res.operator.diff_op, op.diff_op, atol=1e-5)
    np.testing.assert_allclose(res.potential, op.diff_potential, atol=1e-4)
    np.testing.assert_allclose(res.coords, Y, atol=1e-4 * np.abs(Y).max())
    assert res.potential.shape == (len(X), len(X) if n_landmark is None else n_landmark)
    assert res.t_used == 20


def test_phate_t_auto_recorded_and_input_checks():
    X = _trajectories(4, 8, 60)
    logging.getLogger("graphtools").setLevel(logging.INFO)
    res = phate_embedding(X=X, t="auto", seed=0, device="cpu")
    assert res.t_used == res.operator.optimal_t and res.t_used >= 1
    assert res.coords.shape == (len(X), 2)
    assert logging.getLogger("graphtools").level == logging.INFO  # global level restored
    with pytest.raises(ConfigError):
        phate_embedding()
    with pytest.raises(ConfigError):
        phate_embedding(np.zeros((20, 20)), t=0)


def _dense_alpha_decay(D, knn, decay, thresh):
    """The kernel as a dense formula over every entry (the reference for the sparse one)."""
    bw = np.partition(D, knn, axis=1)[:, knn]
    with np.errstate(divide="ignore", invalid="ignore"):
        K = np.exp(-np.power(D / bw[:, None], decay))
    K = np.where(np.isnan(K), 1.0, K)
    K[K < thresh] = 0.0
    return K


@pytest.mark.parametrize("thresh", [1e-4, 1e-12, 0.0, 0.5])
@pytest.mark.parametrize("decay", [40, 2])
def test_affinity_evaluates_only_reachable_entries_exactly(thresh, decay):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 4))
    D = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    D[7, :] = D[:, 7] = 0.0  # a point at distance 0 from all: zero bandwidth (0 / 0) in row 7
    D[7, 7] = 0.0
    K = alpha_decay_affinity(D, knn=5, decay=decay, thresh=thresh, block_size=16)
    ref = _dense_alpha_decay(D, 5, decay, thresh)
    np.testing.assert_array_equal(K.toarray(), ref)
    assert K.nnz == np.count_nonzero(ref)


# ---------------------------------------------------------------- count-sketch distances

def _sketch_loop_reference(X, dim, seed):
    """The count sketch as an explicit (dim, D) matrix built slot by slot, applied to the
    float64 unit rows, then centred: the plain reference for :func:`cosine_sketch`."""
    X = np.asarray(X, dtype=np.float64)
    n, d = X.shape
    reps, src, sign = _sketch_layout(d, dim, seed)
    S = np.zeros((dim, d))
    for slot in range(reps * dim):
        if sign[slot] != 0:
            S[slot % dim, int(src[slot])] += float(sign[slot])
    assert np.count_nonzero(S) == d and np.all(np.abs(S).sum(0) == 1)  # one bucket per coordinate
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    Y = U @ S.T
    return Y - Y.mean(0)


@pytest.mark.parametrize("n, d, dim, block", [(13, 300, 64, 5), (9, 257, 256, 256), (6, 40, 97, 2)])
def test_cosine_sketch_matches_explicit_matrix_loop(n, d, dim, block):
    X = np.random.default_rng(4).normal(size=(n, d)).astype(np.float32) + 1
    Y = cosine_sketch(X, dim, seed=3, block_size=block, device="cpu")
    assert Y.shape == (n, dim) and Y.dtype == torch.float32
    np.testing.assert_allclose(Y.numpy(), _sketch_loop_reference(X, dim, 3), atol=2e-6)


def test_sketch_distances_exact_when_every_coordinate_has_its_own_bucket():
    X = _trajectories(4, 6, 150)
    D = sketch_cosine_distances(X, dim=150, device="cpu")
    np.testing.assert_allclose(D, cosine_distances_reference(X), atol=1e-6)
    assert np.array_equal(D, D.T) and np.all(np.diag(D) == 0)
    np.testing.assert_allclose(sketch_cosine_distances(X, dim=4096, device="cpu"), D, atol=1e-6)


def test_sketch_distance_error_is_relative_to_each_pair():
    """Near-parallel snapshots (cosine distances ~1e-4): the estimate's relative error stays
    about sqrt(2 / dim) and unbiased, as for far-apart ones."""
    rng = np.random.default_rng(0)
    d, dim = 20000, 256
    base = rng.normal(size=d)
    for spread in (0.01, 1.0):
        X = base + spread * rng.normal(size=(30, d))
        ref = cosine_distances_reference(X)
        off = ~np.eye(30, dtype=bool)
        rels = []
        for seed in range(4):
            D = sketch_cosine_distances(X.astype(np.float32), dim, seed=seed, device="cpu")
            rels.append(D[off] / ref[off] - 1)
        rel = np.concatenate(rels)
        assert 0.6 * np.sqrt(2 / dim) < rel.std() < 1.3 * np.sqrt(2 / dim)
        assert abs(rel.mean()) < 0.02


def test_sketch_scale_invariant_seeded_and_half_precision():
    X = _trajectories(3, 5, 400)
    scales = np.random.default_rng(1).uniform(0.1, 10, size=(len(X), 1)).astype(np.float32)
    D = sketch_cosine_distances(X, 64, seed=2, device="cpu")
    np.testing.assert_allclose(sketch_cosine_distances(X * scales, 64, seed=2, device="cpu"), D,
                               atol=1e-6)
    np.testing.assert_array_equal(sketch_cosine_distances(X, 64, seed=2, device="cpu"), D)
    assert not np.allclose(sketch_cosine_distances(X, 64, seed=3, device="cpu"), D, atol=1e-6)
    X16 = torch.from_numpy(X).to(torch.float16)
    np.testing.assert_allclose(sketch_cosine_distances(X16, 64, seed=2, device="cpu"),
                               sketch_cosine_distances(X16.float(), 64, seed=2, device="cpu"),
                               atol=1e-7)


def test_sketch_bad_input_names_the_culprit():
    X = np.ones((4, 10), dtype=np.float32)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ConfigError, match="sketch dim"):
            cosine_sketch(X, bad, device="cpu")
    X[2] = 0
    with pytest.raises(DataError, match=r"rows \[2\] are all zeros"):
        sketch_cosine_distances(X, 8, device="cpu")
    X[2] = 1
    X[1, 3] = np.nan
    with pytest.raises(DataError, match=r"rows \[1\] contain non-finite"):
        sketch_cosine_distances(X, 8, device="cpu")
    with pytest.raises(DataError, match="shape"):
        sketch_cosine_distances(np.ones(5, dtype=np.float32), 8, device="cpu")
