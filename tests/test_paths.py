"""Minimum-energy paths: NEB / AutoNEB, curves, barriers, many minima, figures.

Known answers: saddles of analytic 2-D potentials (Newton-refined, and analytic for the
curved double well), a flat ring valley (zero barrier), hand-computed insertion scores,
hand-built barrier matrices, and plain-loop references for every batched evaluation.
"""
import math

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from topoland.data import load_dataset
from topoland.errors import TopolandError
from topoland.landscape import paths as P
from topoland.landscape.path_losses import _loss_and_grad, _TensorOptimizer
from topoland.landscape.potentials import (MULLER_BROWN_MINIMA, MULLER_BROWN_SADDLES,
                                           critical_point, curved_double_well, muller_brown,
                                           ring_valley)
from topoland.plots import paths as PP

D64 = torch.float64


def _t(*v):
    return torch.tensor(v, dtype=D64)


@pytest.fixture(scope="module")
def mb():
    """Newton-refined Müller-Brown minima and saddles."""
    pts = {k: critical_point(muller_brown, p)
           for k, (p, _) in {**MULLER_BROWN_MINIMA, **MULLER_BROWN_SADDLES}.items()}
    return pts


# ---------------------------------------------------------------------------------------
# analytic potentials: saddles, bending paths, flat valleys
# ---------------------------------------------------------------------------------------

def test_muller_brown_critical_points_match_literature(mb):
    for name, (p, e) in {**MULLER_BROWN_MINIMA, **MULLER_BROWN_SADDLES}.items():
        x, eig = mb[name]
        assert torch.allclose(x, _t(*p), atol=1e-3)
        assert float(muller_brown(x[None])) == pytest.approx(e, abs=0.01)
        n_neg = int((eig < 0).sum())
        assert n_neg == (1 if name in MULLER_BROWN_SADDLES else 0)


@pytest.mark.parametrize("pair,saddle", [(("A", "C"), "AC"), (("C", "B"), "CB")])
def test_climbing_neb_finds_muller_brown_saddles(mb, pair, saddle):
    a, b = mb[pair[0]][0], mb[pair[1]][0]
    s = mb[saddle][0]
    path = P.neb(muller_brown, a, b, n_images=9, steps=3000, lr=2e-4, momentum=0.5,
                 climbing=True, tol=1e-8)
    assert path.info["converged"]
    c = path.info["climbing_index"]
    assert torch.allclose(path.images[c], s, atol=1e-7)
    assert float(path.losses[c]) == pytest.approx(float(muller_brown(s[None])), abs=1e-8)
    assert torch.equal(path.images[0], a) and torch.equal(path.images[-1], b)
    # the NEB barrier equals the saddle energy
    prof = P.path_profile(muller_brown, path, n=401)
    assert P.barriers(prof)["max"] == pytest.approx(float(muller_brown(s[None])), abs=1e-2)


def test_straight_line_barrier_is_higher_where_the_path_bends(mb):
    a, b = mb["A"][0], mb["C"][0]
    saddle_e = float(muller_brown(mb["AC"][0][None]))
    lin = P.barriers(P.path_profile(muller_brown, P.linear_path(a, b), n=201))
    assert lin["max"] > saddle_e + 40  # the straight line climbs to about +3.4

    # curved double well: exact saddle (0, -b) with V = 1; straight line peaks at 1 + a b^2
    a2, b2 = _t(-1.0, 0.0), _t(1.0, 0.0)
    path = P.neb(curved_double_well, a2, b2, n_images=7, steps=3000, lr=0.02, momentum=0.5,
                 climbing=True, tol=1e-9)
    c = path.info["climbing_index"]
    assert torch.allclose(path.images[c], _t(0.0, -1.0), atol=1e-8)
    assert float(path.losses[c]) == pytest.approx(1.0, abs=1e-12)
    lin2 = P.barriers(P.path_profile(curved_double_well, P.linear_path(a2, b2)))
    assert lin2["max"] == pytest.approx(6.0, abs=1e-12)  # n=61 hits t=0.5 exactly
    assert lin2["max"] > float(path.losses.max()) + 4.9


def test_flat_valley_has_zero_barrier_by_every_definition():
    a = _t(1.0, 0.0)
    b = _t(-0.5, math.sqrt(3) / 2)  # 120 degrees along the ring of minima
    path = P.neb(ring_valley, a, b, n_images=15, steps=1000, lr=0.05, momentum=0.5, tol=1e-9)
    assert path.info["converged"]
    assert float(path.losses.max()) < 1e-12  # every image lies in the valley
    bar = P.barriers(P.path_profile(ring_valley, path))
    # between images the chord leaves the circle: sin^4(dphi / 4) ~ 3e-5 for 14 gaps
    for k in ("max", "max_minus_linear", "max_minus_mean"):
        assert 0 <= bar[k] < 1e-4
    lin = P.barriers(P.path_profile(ring_valley, P.linear_path(a, b)))
    assert lin["max"] == pytest.approx(0.5625, abs=1e-12)  # chord midpoint radius 1/2
    curve = P.fit_curve(ring_valley, a, b, steps=300, lr=0.05, batch_t=8, seed=0)
    cb = P.barriers(P.path_profile(ring_valley, curve))
    assert cb["max"] < 0.01


def test_respacing_and_spring_keep_images_evenly_spaced():
    a, b = _t(-1.0, 0.0), _t(1.0, 0.0)
    for spring in (None, 5.0):
        path = P.neb(curved_double_well, a, b, n_images=9, steps=400, lr=0.02,
                     momentum=0.5, spring=spring)
        d = (path.images[1:] - path.images[:-1]).norm(dim=1)
        assert float(d.max() / d.min()) < (1 + 1e-9 if spring is None else 1.05)
        assert float(path.losses.max()) == pytest.approx(1.0, abs=0.02)


# ---------------------------------------------------------------------------------------
# batched = one by one
# ---------------------------------------------------------------------------------------

def test_neb_forces_batched_equal_loop():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(8, 5, generator=g, dtype=D64)
    grads = torch.randn(8, 5, generator=g, dtype=D64)
    losses = torch.tensor([0.0, 1.0, 3.0, 2.0, 2.0, 2.0, 5.0, 1.0], dtype=D64)  # all cases
    for kw in ({}, {"spring": 2.0}, {"climbing_index": 2}, {"tangent": "bisection"},
               {"spring": 1.0, "climbing_index": 6}):
        fb = P.neb_forces(images, losses, grads, **kw)
        fl = P.neb_forces_loop(images, losses, grads, **kw)
        assert torch.allclose(fb, fl, atol=1e-12), kw


def test_improved_tangent_by_hand():
    images = _t(0, 0, 1, 0, 1, 1, 2, 1).view(4, 2)
    g = _t(0, 0, 3, 4, 3, 4, 0, 0).view(4, 2)
    # image 1: losses rise (0 < 1 < 2) -> tangent = R2 - R1 = (0, 1): force keeps x-part
    # image 2: maximum (1 < 2 > 0.5): weighted dVmax=1.5 on tm=(0,1), dVmin=1 on tp=(1,0)
    f = P.neb_forces(images, _t(0, 1, 2, 0.5), g)
    assert torch.allclose(f[0], _t(3, 0))
    tau = _t(1.0, 1.5) / math.sqrt(1 + 2.25)
    assert torch.allclose(f[1], g[2] - (g[2] @ tau) * tau)


def test_batched_loss_adapters_match_loop():
    def f(theta):
        return (theta ** 2).sum() + torch.sin(theta[0])
    th = torch.randn(6, 3, dtype=D64, generator=torch.Generator().manual_seed(1))
    lv, gv = _loss_and_grad(P.batched_loss(f, method="vmap"), th)
    ll, gl = _loss_and_grad(P.batched_loss(f, method="loop"), th)
    assert torch.allclose(lv, ll) and torch.allclose(gv, gl)
    assert torch.allclose(gl[:, 0], 2 * th[:, 0] + torch.cos(th[:, 0]))
    with pytest.raises(TopolandError):
        P.neb(lambda t: t.sum(), _t(0, 0), _t(1, 1), n_images=3, steps=1)  # returns scalar


def _bn_mlp():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double()


@pytest.mark.parametrize("bn", ["eval", "train", "recompute"])
def test_network_loss_batched_equals_one_by_one(bn):
    model = _bn_mlp()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 4, generator=g, dtype=D64)
    y = torch.randint(0, 3, (30,), generator=g)
    with torch.no_grad():  # non-trivial stored statistics for "eval"
        model[1].running_mean.fill_(0.3)
        model[1].running_var.fill_(2.0)
    theta0 = P.model_vector(model)
    thetas = theta0 + 0.3 * torch.randn(5, theta0.numel(), generator=g, dtype=D64)
    kw = {"bn_batch_size": 10} if bn == "recompute" else {}
    fast = P.network_loss(model, x, y, bn=bn, **kw)(thetas)
    slow = P.network_loss_loop(model, x, y, bn=bn, **kw)(thetas)
    assert torch.allclose(fast, slow, atol=1e-12)
    assert float(model[1].running_mean[0]) == 0.3  # the model is not modified
    # per-point gradients from one batched call = gradients from one point at a time
    L = P.network_loss(model, x, y, bn=bn, **kw)
    _, gb = _loss_and_grad(L, thetas)
    for i in range(5):
        _, gi = _loss_and_grad(L, thetas[i:i + 1])
        assert torch.allclose(gb[i], gi[0], atol=1e-12)


def test_network_metrics_recompute_match_loop():
    model = _bn_mlp()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 4, generator=g, dtype=D64)
    y = torch.randint(0, 3, (40,), generator=g)
    thetas = P.model_vector(model) + 0.2 * torch.randn(3, P.model_vector(model).numel(),
                                                        generator=g, dtype=D64)
    m = P.network_metrics(model, {"train": (x, y), "test": (x[:20], y[:20])},
                          batch_size=20, device="cpu")(thetas)
    ref = P.network_loss_loop(model, x, y, bn="recompute", bn_batch_size=20)(thetas)
    assert torch.allclose(m["train_loss"].to(D64), ref, atol=1e-10)
    ref_t = P.network_loss_loop(model, x[:20], y[:20], bn="recompute", bn_x=x,
                                bn_batch_size=20)(thetas)
    assert torch.allclose(m["test_loss"].to(D64), ref_t, atol=1e-10)
    assert set(m) == {"train_loss", "train_error", "test_loss", "test_error"}


# ---------------------------------------------------------------------------------------
# AutoNEB
# ---------------------------------------------------------------------------------------

def test_insertion_rule_by_hand():
    # images at x = 0, 1, 2 on a 1-D "loss" |x - 0.5| ... use a bump in gap 1 only
    def loss(th):
        x = th[:, 0]
        return torch.exp(-((x - 1.3) ** 2) / 0.01)
    images = _t(0, 1, 2).view(3, 1)
    new, table = P.insert_images(loss, images, n_insert_eval=9, insert_threshold=0.1,
                                 max_insert=2)
    # image losses ~ (0, 1.2e-4, 0); gap 1's worst point at alpha = 0.3 (x = 1.3) scores
    # (1 - line) / range
    l = loss(images)
    rng = float(l.max() - l.min())
    assert table.loc[1, "alpha"] == pytest.approx(0.3)
    line = 0.7 * float(l[1]) + 0.3 * float(l[2])
    assert table.loc[1, "score"] == pytest.approx((1 - line) / (rng + 1e-12), rel=1e-9)
    assert list(table["inserted"]) == [False, True]
    assert torch.allclose(new, _t(0, 1, 1.3, 2).view(4, 1))
    # max_images caps insertions
    same, _ = P.insert_images(loss, images, max_images=3)
    assert same.shape[0] == 3


def test_auto_neb_inserts_and_finds_the_saddle(mb):
    a, b = mb["A"][0], mb["C"][0]
    path = P.auto_neb(muller_brown, a, b, cycles=3, steps=(100, 100, 250),
                      lr_schedule=(2e-4,) * 3, momentum=0.5, n_initial=3, max_images=9,
                      climbing=True)
    assert 3 < path.images.shape[0] <= 9
    assert set(path.history["cycle"]) == {0, 1, 2}
    c = path.info["climbing_index"]
    assert torch.allclose(path.images[c], mb["AC"][0], atol=1e-5)
    assert P.AUTONEB_REFERENCE["cycles"] == 14 and P.AUTONEB_REFERENCE["max_images"] == 31
    assert len(P.AUTONEB_REFERENCE["lr_schedule"]) == 14
    with pytest.raises(TopolandError):
        P.auto_neb(muller_brown, a, b, cycles=2, steps=1, batch_size=512)


# ---------------------------------------------------------------------------------------
# curves and barrier definitions
# ---------------------------------------------------------------------------------------

def test_curve_points_and_weights():
    a, m, b = _t(0, 0), _t(1, 2), _t(2, 0)
    cb = P.Curve(a, b, m, "bezier")
    assert torch.allclose(cb.point([0, 0.5, 1]), _t(0, 0, 1, 1, 2, 0).view(3, 2))
    cp = P.Curve(a, b, m, "polychain")
    assert torch.allclose(cp.point([0.25, 0.5, 0.75]), _t(0.5, 1, 1, 2, 1.5, 1).view(3, 2))
    assert torch.allclose(P.curve_weights(torch.rand(7, dtype=D64), "bezier").sum(1),
                          torch.ones(7, dtype=D64))


def test_barrier_definitions_by_hand():
    prof = pd.DataFrame({"t": [0, 0.25, 0.5, 0.75, 1.0], "loss": [1.0, 2.0, 4.0, 3.5, 3.0]})
    bar = P.barriers(prof)
    assert bar["max"] == 4.0
    assert bar["max_minus_mean"] == pytest.approx(2.0)
    assert bar["max_minus_linear"] == pytest.approx(2.0)  # at t=0.5: 4 - 2
    assert P.barriers(prof, loss_a=0.0, loss_b=0.0)["max_minus_linear"] == pytest.approx(4.0)
    # a straight path on a linear function has no barrier above the line
    f = P.batched_loss(lambda th: 3 * th[0] - th[1])
    pr = P.path_profile(f, P.linear_path(_t(0, 0), _t(1, 1)), n=11)
    assert P.barriers(pr)["max_minus_linear"] == pytest.approx(0.0, abs=1e-12)
    assert np.allclose(pr["t"], np.linspace(0, 1, 11))


def test_curve_profile_is_evenly_spaced_by_arc_length():
    curve = P.Curve(_t(0, 0), _t(2, 0), _t(0.2, 3.0), "bezier")
    prof = P.path_profile(lambda th: th[:, 0], curve, n=21)
    tp = prof["t_param"].to_numpy()
    arcs = []
    for t0, t1 in zip(tp[:-1], tp[1:]):  # arc length of each piece, by a fine polyline
        pts = curve.point(torch.linspace(float(t0), float(t1), 400, dtype=D64))
        arcs.append(float((pts[1:] - pts[:-1]).norm(dim=1).sum()))
    assert max(arcs) / min(arcs) == pytest.approx(1.0, abs=1e-4)
    assert np.allclose(prof["t"], np.linspace(0, 1, 21)) and tp[0] == 0 and tp[-1] == 1


# ---------------------------------------------------------------------------------------
# networks: NEB and Bezier lower the straight-line barrier
# ---------------------------------------------------------------------------------------

def test_neb_and_bezier_lower_the_barrier_between_two_network_minima():
    ds = load_dataset("synthetic", seed=0, synthetic={
        "input_shape": (1, 40), "num_classes": 10, "n_train": 300, "n_test": 100,
        "separation": 0.3})  # MNIST-1D-shaped signals, 10 classes, hard enough to overfit
    x, y = ds.x_train, ds.y_train

    def make(seed):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(40, 16), nn.ReLU(), nn.Linear(16, 10))

    model = make(0)
    L = P.network_loss(model, x, y)
    thetas = torch.stack([P.model_vector(make(s)) for s in (1, 2)])
    opt = _TensorOptimizer("adam", 0.02)
    for _ in range(200):  # two independent minima, trained side by side in one batched call
        _, g = _loss_and_grad(L, thetas)
        opt.step(thetas, g)
    a, b = thetas
    lin = P.barriers(P.path_profile(L, P.linear_path(a, b)))
    path = P.neb(L, a, b, n_images=7, steps=100, lr=0.05, momentum=0.9)
    curve = P.fit_curve(L, a, b, kind="bezier", steps=120, lr=0.05, batch_t=4, seed=0)
    nb = P.barriers(P.path_profile(L, path))
    cb = P.barriers(P.path_profile(L, curve))
    assert lin["max_minus_mean"] > 0.5
    for bar in (nb, cb):
        for k in ("max", "max_minus_linear", "max_minus_mean"):
            assert bar[k] < 0.6 * lin[k], (k, bar, lin)
    # profiles with metrics per split, then the figures
    metrics = P.network_metrics(model, {"train": (x, y), "test": (ds.x_test, ds.y_test)},
                                device="cpu")
    prof = P.path_profile(metrics, path, n=11)
    assert {"train_loss", "train_error", "test_loss", "test_error"} <= set(prof.columns)
    assert P.barriers(prof, column="train_loss")["max"] < lin["max"]
    ax = PP.plot_profiles({"linear": P.path_profile(L, P.linear_path(a, b), n=21),
                           "NEB": P.path_profile(L, path, n=21),
                           "Bezier": P.path_profile(L, curve, n=21)})
    assert len(ax.lines) == 3
    ax = PP.plot_path_plane({"NEB": path, "Bezier": curve, "linear": P.linear_path(a, b)},
                            a, b, loss_fn=L, grid=9)
    xy = ax.lines[0].get_xydata()
    assert np.allclose(xy[0], 0)  # theta_a at the origin, theta_b on the first axis (float32)
    assert xy[-1][0] == pytest.approx(float((b - a).norm()), rel=1e-5)
    assert xy[-1][1] == pytest.approx(0, abs=1e-4)


# ---------------------------------------------------------------------------------------
# many minima
# ---------------------------------------------------------------------------------------

def _four_minima():
    # barrier(i, j) = known matrix; pair_fn looks it up by position
    names = ["w", "x", "y", "z"]
    pos = {n: _t(float(i), 0.0) for i, n in enumerate(names)}
    m = np.array([[0, 1, 5, 6], [1, 0, 4, 7], [5, 4, 0, 2], [6, 7, 2, 0]], dtype=float)
    calls = []

    def pair_fn(ta, tb, attempt):
        i, j = int(ta[0]), int(tb[0])
        calls.append((i, j, attempt))
        return {"max": m[i, j] - 0.5 * attempt, "max_minus_mean": m[i, j] / 2}
    return names, pos, m, pair_fn, calls


def test_connect_all_and_disconnectivity_tree():
    names, pos, m, pair_fn, calls = _four_minima()
    df = P.connect_all(pos, pair_fn, strategy="all")
    assert len(df) == 6 and set(df["attempt"]) == {0}
    bm = P.barrier_matrix(df, names)
    assert np.allclose(bm, m)
    tree = P.disconnectivity_tree(names, bm, energies=[0, 0.5, 0.2, 0.1])
    assert sorted(tree.mst, key=lambda e: e[2]) == [("w", "x", 1.0), ("y", "z", 2.0),
                                                     ("x", "y", 4.0)]
    assert np.allclose(tree.linkage[:, 2], [1, 2, 4])
    expected = np.array([[0, 1, 4, 4], [1, 0, 4, 4], [4, 4, 0, 2], [4, 4, 2, 0]], float)
    assert np.allclose(tree.minimax, expected)
    from scipy.cluster.hierarchy import cophenet, linkage
    from scipy.spatial.distance import squareform
    assert np.allclose(squareform(cophenet(tree.linkage)), expected)
    assert np.allclose(linkage(squareform(m), "single")[:, 2], tree.linkage[:, 2])
    assert df["in_mst"].sum() == 3
    ax = PP.plot_disconnectivity(tree)
    assert len(ax.get_xticklabels()) == 4
    bm2 = bm.copy()
    bm2[3, :3] = bm2[:3, 3] = np.inf
    with pytest.raises(TopolandError, match="z"):
        P.disconnectivity_tree(names, bm2)


def test_connect_mst_strategy_retries_the_highest_edge():
    names, pos, m, pair_fn, calls = _four_minima()
    df = P.connect_all(pos, pair_fn, strategy="mst", values={"w": 0.0, "x": 1, "y": 2, "z": 3},
                       rounds=6, max_attempts=2)
    # star around w first (w-x, w-y, w-z), then shortcuts across the highest MST edge
    assert [tuple(r) for r in df[["a", "b"]].values[:3]] == [("w", "x"), ("w", "y"),
                                                            ("w", "z")]
    assert len(df) == 3 + 6
    # once all 6 pairs are known, the MST's highest edge (x-y, 4) is retried
    retry = df[df["attempt"] == 1]
    assert len(retry) >= 1 and tuple(retry[["a", "b"]].values[0]) == ("x", "y")
    best = P.barrier_matrix(df, names)
    tree = P.disconnectivity_tree(names, best)
    assert max(e[2] for e in tree.mst) == pytest.approx(3.5)  # improved by the retry


# ---------------------------------------------------------------------------------------
# stochastic losses
# ---------------------------------------------------------------------------------------

def test_minibatch_protocols():
    # loss_fn(thetas, batch): the batch shifts a quadratic bowl; the mean bowl is centred
    # at the batches' mean, and both images of a step see the same batch
    seen = []

    def loss(th, c):
        seen.append(float(c[0]))
        return ((th - c) ** 2).sum(1)
    cs = [_t(0.0, 1.0), _t(0.0, -1.0)]
    path = P.neb(loss, _t(-1.0, 0.0), _t(1.0, 0.0), n_images=5, steps=40, lr=0.05, batches=cs)
    assert len(seen) == 41 and float(path.images[:, 1].abs().max()) < 0.1  # +-0.053 limit cycle
    with pytest.raises(TopolandError, match="ran out"):
        P.neb(loss, _t(-1.0, 0.0), _t(1.0, 0.0), n_images=3, steps=5, batches=iter(cs))
    curve = P.fit_curve(loss, _t(-1.0, 0.0), _t(1.0, 0.0), kind="polychain", steps=5,
                        batches=cs)
    assert curve.kind == "polychain" and len(curve.history) == 5
    # network_loss(batch_size=...) draws one seeded minibatch per call, shared by all points
    model = _bn_mlp()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(30, 4, generator=g, dtype=D64)
    y = torch.randint(0, 3, (30,), generator=g)
    th = P.model_vector(model)[None].repeat(2, 1)
    val = P.network_loss(model, x, y, batch_size=10, seed=5)(th)
    idx = torch.randperm(30, generator=torch.Generator().manual_seed(5))[:10]
    ref = P.network_loss_loop(model, x[idx], y[idx])(th)
    assert torch.allclose(val, ref, atol=1e-12)
