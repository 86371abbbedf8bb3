"""Curvature checked against the exact Hessian of tiny networks and analytic quadratics (float64)."""
import math

import matplotlib

matplotlib.use("Agg")
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from topoland.landscape import curvature as C
from topoland.landscape.hessian import CurvatureError, _Setup, function_hvp, hvp_fn
from topoland.landscape.spectrum import (eigenvalue_density, hessian_trace, slq_quadrature,
                                         top_eigenvalues)

D_IN, H, K, N = 3, 4, 3, 40


def _mlp(seed=0, bn=False):
    torch.manual_seed(seed)  # test-only: module init has no generator argument
    layers = [nn.Linear(D_IN, H)] + ([nn.BatchNorm1d(H)] if bn else []) + [nn.Tanh(), nn.Linear(H, K)]
    return nn.Sequential(*layers).double()


def _data(n=N, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D_IN, generator=g, dtype=torch.float64), torch.randint(0, K, (n,), generator=g)


def _exact_hessian(model, x, y):
    """Independent reference: torch.func.hessian of the full-batch loss over the flat parameters."""
    named = [(n, p.detach()) for n, p in model.named_parameters()]
    shapes = [p.shape for _, p in named]
    theta = torch.cat([p.reshape(-1) for _, p in named])
    buffers = dict(model.named_buffers())

    def f(flat):
        ps, i = {}, 0
        for (n, _), s in zip(named, shapes):
            ps[n] = flat[i:i + s.numel()].reshape(s)
            i += s.numel()
        return F.cross_entropy(torch.func.functional_call(model, (ps, buffers), (x,)), y)

    return torch.func.hessian(f)(theta)


@pytest.fixture(scope="module")
def mlp_case():
    model, (x, y) = _mlp(), _data()
    Hm = _exact_hessian(model, x, y)
    op = hvp_fn(model, x, y, batch_size=16, n_samples=None)  # 3 uneven batches
    return model, x, y, Hm, np.linalg.eigvalsh(Hm.numpy()), op


def _matrix_op(Hm):
    def op(v):
        return v @ Hm  # symmetric: works for (D,) and (K, D)
    op.dim = Hm.shape[0]
    return op


# ---------------------------------------------------------------- HVPs


def test_hvp_equals_exact_hessian_single_and_batched(mlp_case):
    _, _, _, Hm, _, op = mlp_case
    D = Hm.shape[0]
    assert op.dim == D == D_IN * H + H + H * K + K and op.n_samples == N
    V = torch.randn(4, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    loop = torch.stack([op(v) for v in V])
    torch.testing.assert_close(loop, V @ Hm, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op(V), loop, rtol=1e-10, atol=1e-12)


def test_hvp_subset_and_batch_size_independence():
    model, (x, y) = _mlp(1), _data(60, seed=2)
    op = hvp_fn(model, x, y, batch_size=7, n_samples=25, seed=5)
    idx = torch.randperm(60, generator=torch.Generator().manual_seed(5))[:25]
    Hm = _exact_hessian(model, x[idx], y[idx])
    v = torch.linspace(-1, 1, op.dim, dtype=torch.float64)
    torch.testing.assert_close(op(v), Hm @ v, rtol=1e-10, atol=1e-12)
    assert op.n_samples == 25
    assert hvp_fn(model, x, y, n_samples=4096).n_samples == 60  # whole set when smaller


def test_hvp_batchnorm_eval_mode_and_flags_restored():
    model, (x, y) = _mlp(2, bn=True), _data()
    bn = model[1]
    bn.running_mean.copy_(torch.tensor([0.3, -0.2, 0.1, 0.5]))
    bn.running_var.copy_(torch.tensor([2.0, 0.5, 1.5, 0.8]))
    before = bn.running_mean.clone()
    model.train()
    op = hvp_fn(model, x, y, n_samples=None)
    assert model.training and bn.training
    model.eval()
    Hm = _exact_hessian(model, x, y)
    model.train()
    v = torch.cos(torch.arange(op.dim, dtype=torch.float64))
    torch.testing.assert_close(op(v), Hm @ v, rtol=1e-10, atol=1e-12)
    assert model.training and bn.training
    assert torch.equal(bn.running_mean, before)  # eval mode: running statistics untouched


def test_function_hvp_quadratic_and_shape_check():
    A = torch.tensor([[2.0, 1.0, 0.0], [1.0, 3.0, -1.0], [0.0, -1.0, 4.0]], dtype=torch.float64)
    op = function_hvp(lambda t: 0.5 * t @ A @ t + t.sum() ** 3, torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64))
    V = torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(op(V), A)
    torch.testing.assert_close(op(V[1]), A[1])
    with pytest.raises(CurvatureError, match="v must have shape"):
        op(torch.zeros(4, dtype=torch.float64))


# ---------------------------------------------------------------- eigenvalues


def test_lanczos_top_eigenpairs_match_exact(mlp_case):
    _, _, _, Hm, ev, op = mlp_case
    vals, vecs = top_eigenvalues(op, k=3, method="lanczos", iters=100, tol=1e-10, seed=0)
    np.testing.assert_allclose(vals.numpy(), ev[::-1][:3], rtol=1e-8, atol=1e-10)
    for lam, v in zip(vals, vecs):
        assert float(v.norm()) == pytest.approx(1.0)
        assert float((Hm @ v - lam * v).norm()) < 1e-6


def test_power_and_lanczos_agree(mlp_case):
    _, _, _, Hm, ev, op = mlp_case
    top_p, vec_p = top_eigenvalues(op, k=1, method="power", iters=300, tol=1e-7, seed=1)
    top_l, vec_l = top_eigenvalues(op, k=1, method="lanczos", seed=1)
    assert float(top_p[0]) == pytest.approx(ev[-1], rel=1e-8)
    assert float(top_l[0]) == pytest.approx(float(top_p[0]), rel=1e-8)
    assert abs(float(vec_p[0] @ vec_l[0])) == pytest.approx(1.0, abs=1e-6)
    # deflation: top 3 of the exact matrix operator by both methods
    mop = _matrix_op(Hm)
    p3, _ = top_eigenvalues(mop, k=3, method="power", iters=5000, tol=1e-9, seed=2)
    l3, _ = top_eigenvalues(mop, k=3, method="lanczos", seed=2)
    np.testing.assert_allclose(p3.numpy(), ev[::-1][:3], rtol=1e-6)
    np.testing.assert_allclose(l3.numpy(), ev[::-1][:3], rtol=1e-10)


def test_which_largest_algebraic_vs_magnitude():
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    lam = torch.tensor([-5.0, 3.0, 2.0, 1.0, 0.5, -0.2], dtype=torch.float64)
    op = _matrix_op(q @ torch.diag(lam) @ q.T)
    for method in ("lanczos", "power"):
        la, _ = top_eigenvalues(op, k=2, method=method, iters=3000, tol=1e-10, which="LA")
        lm, _ = top_eigenvalues(op, k=2, method=method, iters=3000, tol=1e-10, which="LM")
        np.testing.assert_allclose(la.numpy(), [3.0, 2.0], rtol=1e-6)
        np.testing.assert_allclose(lm.numpy(), [-5.0, 3.0], rtol=1e-6)
    with pytest.raises(CurvatureError, match="k must be"):
        top_eigenvalues(op, k=7)
    with pytest.raises(CurvatureError, match="method"):
        top_eigenvalues(op, method="arnoldi")


def test_lanczos_breakdown_on_low_rank_operator():
    # rank-2 operator: Krylov space of the start vector is at most 3-dimensional
    u = torch.zeros(2, 8, dtype=torch.float64)
    u[0, 0], u[1, 1] = 1.0, 1.0
    op = _matrix_op(u.T @ torch.diag(torch.tensor([4.0, 1.0], dtype=torch.float64)) @ u)
    vals, _ = top_eigenvalues(op, k=4, seed=0)
    np.testing.assert_allclose(vals.numpy(), [4.0, 1.0, 0.0, 0.0], atol=1e-10)


# ---------------------------------------------------------------- trace and density


def test_hutchinson_trace_within_stderr_and_batched_equals_loop(mlp_case):
    _, _, _, Hm, ev, op = mlp_case
    est, se = hessian_trace(_matrix_op(Hm), n_probes=4000, seed=0, probe_batch=4000)
    assert se > 0 and abs(est - ev.sum()) < 4 * se
    # the network operator, batched probes vs one at a time vs the exact matrix: same probes
    a = hessian_trace(op, n_probes=6, seed=3, probe_batch=1)
    b = hessian_trace(op, n_probes=6, seed=3, probe_batch=4)
    m = hessian_trace(_matrix_op(Hm), n_probes=6, seed=3)
    np.testing.assert_allclose(a, b, rtol=1e-10)
    np.testing.assert_allclose(a, m, rtol=1e-10)


def test_hutchinson_exact_for_diagonal():
    d = torch.tensor([1.0, -2.0, 3.5, 0.25], dtype=torch.float64)
    est, se = hessian_trace(_matrix_op(torch.diag(d)), n_probes=5, seed=0)
    assert est == pytest.approx(2.75) and se == pytest.approx(0.0, abs=1e-12)


def test_slq_gauss_quadrature_is_exact_for_low_degree(mlp_case):
    _, _, _, Hm, _, _ = mlp_case
    probes = torch.randn(3, Hm.shape[0], generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    m = 5
    nodes, weights = slq_quadrature(_matrix_op(Hm), n_iter=m, probes=probes)
    np.testing.assert_allclose(weights.sum(1), 1.0, rtol=1e-12)
    for r, v in enumerate(probes):
        for p in range(2 * m):
            exact = float(v @ torch.linalg.matrix_power(Hm, p) @ v / (v @ v))
            assert float((weights[r] * nodes[r] ** p).sum()) == pytest.approx(exact, rel=1e-7, abs=1e-10)


def test_slq_density_moments_match_exact_spectrum(mlp_case):
    _, _, _, Hm, ev, op = mlp_case
    D = Hm.shape[0]
    nodes, weights = slq_quadrature(_matrix_op(Hm), n_runs=200, n_iter=D, seed=0)
    # with m = D each run resolves the whole spectrum: the nodes are the exact eigenvalues
    keep = weights[0] > 1e-10
    assert np.abs(nodes[0][keep][:, None] - ev[None]).min(axis=1).max() < 1e-8
    sigma = 1e-3
    grid, dens = eigenvalue_density(_matrix_op(Hm), n_runs=200, n_iter=D, seed=0, sigma=sigma, grid=4000)
    assert np.trapezoid(dens, grid) == pytest.approx(1.0, abs=1e-6)
    for p in (1, 2):
        per_run = (weights * nodes**p).sum(1)
        est = np.trapezoid(grid**p * dens, grid) - (sigma**2 if p == 2 else 0.0)  # kernel adds sigma^2
        assert est == pytest.approx(per_run.mean(), rel=1e-5, abs=1e-9)
        se = per_run.std(ddof=1) / math.sqrt(len(per_run))
        assert abs(est - np.mean(ev**p)) < 4 * se
    # the network operator gives the same quadrature as the exact matrix (same seeded probes)
    n_net, w_net = slq_quadrature(op, n_runs=2, n_iter=8, seed=7)
    n_mat, w_mat = slq_quadrature(_matrix_op(Hm), n_runs=2, n_iter=8, seed=7)
    np.testing.assert_allclose(n_net, n_mat, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(w_net, w_mat, rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------- flatness


class _Quadratic(nn.Module):
    """Outputs its weight matrix for every sample; with ``_quad_loss`` the loss is
    0.5 sum_ij c_ij (W_ij - W0_ij)^2, minimized at the initial W0."""

    def __init__(self, w0):
        super().__init__()
        self.w = nn.Parameter(w0.clone())
        self.b = nn.Parameter(torch.zeros(2, dtype=torch.float64))  # 1-D: ignored by "biasbn"

    def forward(self, x):
        return torch.cat([self.w.reshape(1, -1), self.b.reshape(1, -1)], 1).expand(x.shape[0], -1)


W0 = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.4, -1.2]], dtype=torch.float64)
CW = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.5, 0.7], dtype=torch.float64)


def _quad_loss(out, y, c=CW):
    """Per-sample loss (N,)."""
    return (0.5 * c * (out[:, :6] - W0.reshape(-1)) ** 2).sum(1) + (out[:, 6:] ** 2).sum(1)


def test_sharpness_on_quadratic_matches_analytic():
    model = _Quadratic(W0)
    x, y = torch.zeros(5, 1, dtype=torch.float64), torch.zeros(5, dtype=torch.int64)
    prof = C.sharpness_profile(model, x, y, radius=0.3, n_directions=4, n_alphas=7, seed=1, loss=_quad_loss)
    d = prof["directions"]
    assert d.shape == (4, 8) and torch.all(d[:, 6:] == 0)  # biases ignored
    # filter normalization: every row of the W-direction has the norm of the matching row of W0
    torch.testing.assert_close(d[:, :6].reshape(4, 2, 3).norm(dim=2), W0.norm(dim=1).expand(4, 2))
    curv = (CW * d[:, :6] ** 2).sum(1)
    np.testing.assert_allclose(prof["losses"], 0.5 * np.outer(curv, prof["alphas"] ** 2), atol=1e-12)
    assert prof["base_loss"] == pytest.approx(0.0, abs=1e-15)
    assert prof["sharpness"] == pytest.approx(0.5 * 0.3**2 * float(curv.max()), rel=1e-12)
    assert C.sharpness(model, x, y, radius=0.3, n_directions=4, n_alphas=7, seed=1, loss=_quad_loss) == prof["sharpness"]
    # the same seed gives the same directions; the first ones do not depend on n_directions
    torch.testing.assert_close(C.random_directions(model, 2, seed=1), d[:2])


def test_batched_point_loss_equals_loop():
    model, (x, y) = _mlp(3, bn=True), _data()
    model[1].running_var.fill_(2.0)
    s = _Setup(model, x, y, params=None, buffers=None, batch_size=16, n_samples=None, seed=0,
               device="cpu")
    pts = s.theta[None] + 0.1 * C.random_directions(model, 5, seed=0)
    torch.testing.assert_close(C._points_loss(s, pts, chunk_size=2), C._points_loss_loop(s, pts), rtol=1e-12, atol=0)


def test_basin_volume_radii_on_quadratic():
    model = _Quadratic(W0)
    x, y = torch.zeros(3, 1, dtype=torch.float64), torch.zeros(3, dtype=torch.int64)
    t = 0.2
    res = C.basin_volume(model, x, y, threshold=t, n_directions=5, seed=2, max_radius=5.0, tol=1e-6,
                         loss=_quad_loss)
    d = C.random_directions(model, 5, seed=2)
    r_exact = torch.sqrt(2 * t / (CW * d[:, :6] ** 2).sum(1)).numpy()
    np.testing.assert_allclose(res["radii"], r_exact, atol=2e-6)
    np.testing.assert_allclose(res["distances"], res["radii"] * d.norm(dim=1).numpy(), rtol=1e-12)
    assert res["dim"] == 6 and res["n_censored"] == 0 and res["level"] == pytest.approx(t)
    assert res["mean_log_radius"] == pytest.approx(np.log(r_exact).mean(), abs=1e-5)
    # absolute level, and censoring when the level is out of reach
    res_abs = C.basin_volume(model, x, y, threshold=t, relative=False, n_directions=5, seed=2, max_radius=5.0,
                             tol=1e-6, loss=_quad_loss)
    np.testing.assert_allclose(res_abs["radii"], res["radii"], atol=1e-9)
    cens = C.basin_volume(model, x, y, threshold=t, n_directions=5, seed=2, max_radius=0.05, loss=_quad_loss)
    assert cens["n_censored"] == 5 and np.all(cens["radii"] == 0.05)
    with pytest.raises(CurvatureError, match="level"):
        C.basin_volume(model, x, y, threshold=-1.0, relative=False, loss=_quad_loss)


def test_basin_log_volume_of_a_ball():
    # isotropic quadratic: the sublevel set is a ball of radius sqrt(2 t / c) in the 6 W coordinates
    model = _Quadratic(W0)
    x, y = torch.zeros(2, 1, dtype=torch.float64), torch.zeros(2, dtype=torch.int64)
    c, t = 2.0, 0.5
    dirs = torch.zeros(4, 8, dtype=torch.float64)
    dirs[:, :6] = torch.randn(4, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=1, keepdim=True) * torch.tensor([[1.0], [2.0], [0.5], [3.0]], dtype=torch.float64)
    res = C.basin_volume(model, x, y, threshold=t, directions=dirs, max_radius=10.0, tol=1e-9,
                         loss=lambda o, yy: _quad_loss(o, yy, c=torch.full((6,), c, dtype=torch.float64)))
    rho = math.sqrt(2 * t / c)
    np.testing.assert_allclose(res["distances"], rho, rtol=1e-8)
    ball = 0.5 * 6 * math.log(math.pi) - math.lgamma(4) + 6 * math.log(rho)  # pi^3/6 rho^6
    assert res["log_volume"] == pytest.approx(ball, abs=1e-7)
    assert C.log_ball_volume(2) == pytest.approx(math.log(math.pi))
    assert C.log_ball_volume(3) == pytest.approx(math.log(4 / 3 * math.pi))


def test_curvature_features_and_plots(mlp_case):
    import matplotlib.pyplot as plt

    from topoland.plots.curvature import plot_eigenvalue_density, plot_loss_along_directions

    model, x, y, Hm, ev, op = mlp_case
    feats = C.curvature_features(model, x, y, top_k=2, n_samples=None, n_probes=8, probe_batch=8, n_directions=3,
                                 lanczos_iters=40, tol=1e-8)
    assert feats["top_eigenvalue"] == pytest.approx(ev[-1], rel=1e-6)
    assert feats["eigenvalue_2"] == pytest.approx(ev[-2], rel=1e-6)
    assert (feats["trace"], feats["trace_stderr"]) == pytest.approx(hessian_trace(_matrix_op(Hm), n_probes=8))
    assert feats["top_trace_ratio"] == pytest.approx(feats["top_eigenvalue"] / feats["trace"])
    assert feats["n_samples"] == N and all(np.isfinite(v) for v in feats.values())
    assert feats["sharpness"] > 0
    ax = plot_eigenvalue_density(eigenvalue_density(_matrix_op(Hm), n_runs=3, n_iter=10), eigenvalues=ev[-2:])
    assert ax.get_yscale() == "log" and len(ax.lines) == 3
    prof = C.sharpness_profile(model, x, y, radius=0.5, n_directions=3, n_alphas=5)
    vol = C.basin_volume(model, x, y, n_directions=3, max_radius=2.0, n_grid=4, tol=1e-2)
    ax2 = plot_loss_along_directions(prof, volume=vol)
    assert len(ax2.lines) >= 3
    plt.close("all")


def test_lanczos_stops_early_when_converged():
    q, _ = torch.linalg.qr(torch.randn(120, 120, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    lam = torch.cat([torch.tensor([50.0, 20.0], dtype=torch.float64), torch.linspace(0, 1, 118, dtype=torch.float64)])
    Hm, calls = q @ torch.diag(lam) @ q.T, []

    def op(v):
        calls.append(1)
        return v @ Hm

    op.dim = 120
    vals, vecs = top_eigenvalues(op, k=2, iters=120, tol=1e-10, seed=0)
    np.testing.assert_allclose(vals.numpy(), [50.0, 20.0], rtol=1e-9)
    assert len(calls) < 60
    assert abs(float(vecs[0] @ q[:, 0])) == pytest.approx(1.0, abs=1e-8)
