"""Generalization measures of one minimum against hand computations on tiny networks (float64)."""
import inspect
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from topoland.landscape import flatness_measures as FM
from topoland.landscape import norm_measures as NM
from topoland.landscape.hessian import CurvatureError
from topoland.landscape.measures import generalization_measures
from topoland.nets.params import get_params, param_names
from topoland.utils import make_generator


def _sq(out, y):  # per-sample squared error summed over outputs; y holds integers (evaluate casts to long)
    return ((out - y.reshape(out.shape).to(out.dtype)) ** 2).sum(1)


def _set(layer, w, b=None):
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(w, dtype=torch.float64))
        if b is not None:
            layer.bias.copy_(torch.as_tensor(b, dtype=torch.float64))


# ------------------------------------------------------------------------------------ norms
def test_path_norm_enumerates_the_paths_of_a_2_2_1_relu_mlp():
    W1, b1 = np.array([[1.0, -2.0], [0.5, 3.0]]), np.array([0.3, -0.7])
    W2, b2 = np.array([[-1.5, 2.0]]), np.array([0.4])
    for bias in (False, True):
        net = nn.Sequential(nn.Linear(2, 2, bias=bias), nn.ReLU(), nn.Linear(2, 1, bias=bias)).double()
        _set(net[0], W1, b1 if bias else None)
        _set(net[2], W2, b2 if bias else None)
        paths = sum(W1[j, i] ** 2 * W2[0, j] ** 2 for i, j in itertools.product(range(2), range(2)))
        if bias:  # paths from the constant units: hidden biases through W2, and the output bias
            paths += sum(b1[j] ** 2 * W2[0, j] ** 2 for j in range(2)) + b2[0] ** 2
        assert NM.path_norm(net, (2,)) == pytest.approx(paths, rel=1e-14)
        assert NM.norm_based_measures(net, input_shape=(2,))["path_norm"] == pytest.approx(paths, rel=1e-14)
    assert "path_norm" not in NM.norm_based_measures(net)


def _conv_net(seed=0):
    torch.manual_seed(seed)  # test-only: module init has no generator argument
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 4)).double()


def test_spectral_frobenius_forms_and_distance_from_init_by_hand():
    net, init_net = _conv_net(0), _conv_net(1)
    init = get_params(init_net)
    ws = [net[0].weight.detach().numpy().reshape(3, 18), net[3].weight.detach().numpy()]
    w0 = [init_net[0].weight.detach().numpy().reshape(3, 18), init_net[3].weight.detach().numpy()]
    spec2 = [np.linalg.svd(w, compute_uv=False)[0] ** 2 for w in ws]
    fro2 = [float((w ** 2).sum()) for w in ws]
    assert NM.spectral_norm(net[0].weight) == pytest.approx(math.sqrt(spec2[0]), rel=1e-12)
    out = NM.norm_based_measures(net, init, input_shape=(2, 4, 4))
    allp = np.concatenate([p.detach().numpy().ravel() for p in net.parameters()])
    allp0 = np.concatenate([p.detach().numpy().ravel() for p in init_net.parameters()])
    expect = {
        "n_params": sum(p.numel() for p in net.parameters()), "l2": np.linalg.norm(allp),
        "param_norm": sum(fro2), "log_prod_of_fro": np.log(fro2).sum(),
        "log_sum_of_fro": math.log(2) + np.log(fro2).sum() / 2, "log_prod_of_spec": np.log(spec2).sum(),
        "log_sum_of_spec": math.log(2) + np.log(spec2).sum() / 2,
        "fro_over_spec": sum(f / s for f, s in zip(fro2, spec2)), "dist_init": np.linalg.norm(allp - allp0),
        "fro_dist": sum(float(((a - b) ** 2).sum()) for a, b in zip(ws, w0)),
        "dist_spec_init": sum(np.linalg.svd(a - b, compute_uv=False)[0] ** 2 for a, b in zip(ws, w0)),
    }
    assert out["n_params"] == 3 * 2 * 9 + 3 + 12 * 4 + 4
    for k, v in expect.items():
        assert out[k] == pytest.approx(v, rel=1e-12), k
    bare = NM.norm_based_measures(net)
    assert not {"dist_init", "fro_dist", "dist_spec_init"} & set(bare)
    g = 0.7
    mm = NM.norm_based_measures(net, init, input_shape=(2, 4, 4), margin=g)
    assert mm["inverse_margin"] == pytest.approx(1 / g ** 2)
    assert mm["log_prod_of_spec_over_margin"] == pytest.approx(expect["log_prod_of_spec"] - 2 * math.log(g))
    assert mm["log_sum_of_fro_over_margin"] == pytest.approx(
        math.log(2) + (expect["log_prod_of_fro"] - 2 * math.log(g)) / 2)
    assert mm["log_spec_init_main"] == pytest.approx(mm["log_prod_of_spec_over_margin"] + math.log(
        sum(float(((a - b) ** 2).sum()) / s for a, b, s in zip(ws, w0, spec2))))
    assert mm["path_norm_over_margin"] == pytest.approx(mm["path_norm"] / g ** 2)
    assert math.isnan(NM.norm_based_measures(net, margin=-0.1)["inverse_margin"])
    with pytest.raises(CurvatureError, match="missing"):
        NM.norm_based_measures(net, {"0.weight": init["0.weight"]})


def test_margin_quantile_and_weight_statistics_against_numpy():
    torch.manual_seed(0)
    net = nn.Linear(5, 4).double()
    g = make_generator(3)
    x, y = torch.randn(37, 5, generator=g, dtype=torch.float64), torch.randint(0, 4, (37,), generator=g)
    logits = (x @ net.weight.T + net.bias).detach().numpy()
    hand = np.array([logits[i, y[i]] - max(logits[i, j] for j in range(4) if j != y[i]) for i in range(37)])
    assert np.allclose(NM.output_margins(net, x, y, batch_size=10).numpy(), hand, rtol=0, atol=1e-12)
    for q in (0.1, 0.5):
        assert NM.margin_quantile(net, x, y, q, batch_size=10) == pytest.approx(np.quantile(hand, q), abs=1e-12)
    stats = NM.weight_statistics(net)
    # one block per tensor, then all_weights, first_layer, last_layer, all_biases
    assert len(stats) == 7 * (len(param_names(net)) + 4)
    for name, p in net.named_parameters():
        v = p.detach().numpy().ravel()
        assert stats[f"{name}.mean"] == pytest.approx(v.mean()) and stats[f"{name}.var"] == pytest.approx(v.var())
        for q in (0, 25, 50, 75, 100):
            assert stats[f"{name}.q{q}"] == pytest.approx(np.percentile(v, q))


def test_weight_statistics_pool_blocks_shared_across_architectures():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    cnn = nn.Sequential(nn.Conv1d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2))
    a, b = NM.weight_statistics(mlp), NM.weight_statistics(cnn)
    pooled = {k for k in a if k.split(".")[0] in ("all_weights", "all_biases", "first_layer", "last_layer")}
    assert len(pooled) == 28 and pooled <= set(b)
    w = np.concatenate([mlp[0].weight.detach().numpy().ravel(), mlp[2].weight.detach().numpy().ravel()])
    assert a["all_weights.var"] == pytest.approx(w.var())
    assert a["first_layer.q50"] == pytest.approx(np.median(mlp[0].weight.detach().numpy()))
    assert b["last_layer.mean"] == pytest.approx(cnn[3].weight.detach().numpy().mean())
    bias = np.concatenate([mlp[0].bias.detach().numpy(), mlp[2].bias.detach().numpy()])
    assert a["all_biases.q100"] == pytest.approx(bias.max())


# ------------------------------------------------------------------------------ worst case
def test_projection_onto_the_filter_ball_and_the_box_is_exact():
    torch.manual_seed(0)
    net = nn.Linear(3, 2).double()
    W, b = net.weight.detach().numpy(), net.bias.detach().numpy()
    g = make_generator(1)
    delta = torch.randn(5, 8, generator=g, dtype=torch.float64)
    d = delta.numpy()
    r = 0.3
    out = FM.project_perturbation(net, delta, radius=r).numpy()
    for k in range(2):
        row = d[:, 3 * k:3 * k + 3]
        lim = r * np.linalg.norm(W[k])
        f = np.minimum(1, lim / np.linalg.norm(row, axis=1))[:, None]
        assert np.allclose(out[:, 3 * k:3 * k + 3], row * f, rtol=0, atol=1e-15)
    assert (out[:, 6:] == 0).all()  # ignore="biasbn": the bias does not move
    full = FM.project_perturbation(net, delta, radius=r, ignore=None).numpy()
    fb = np.minimum(1, r * np.linalg.norm(b) / np.linalg.norm(d[:, 6:], axis=1))[:, None]
    assert np.allclose(full[:, 6:], d[:, 6:] * fb, rtol=0, atol=1e-15)
    assert np.allclose(FM.project_perturbation(net, torch.as_tensor(out), radius=r).numpy(), out, atol=1e-15)
    inside = FM.project_perturbation(net, delta * 1e-3, radius=r).numpy()  # points inside stay put
    assert np.array_equal(inside[:, :6], d[:, :6] * 1e-3) and (inside[:, 6:] == 0).all()
    theta = np.concatenate([W.ravel(), b])
    box = FM.project_perturbation(net, delta, radius=r, kind="adaptive", eps=0.01).numpy()
    bound = r * (np.abs(theta) + 0.01)
    assert np.array_equal(box, np.clip(d, -bound, bound))
    assert FM.project_perturbation(net, delta[0], radius=r).shape == (8,)
    with pytest.raises(CurvatureError, match="kind"):
        FM.project_perturbation(net, delta, radius=r, kind="ball")


def _linear_case(bias, k=3, d=4):
    torch.manual_seed(2)
    net = nn.Linear(d, k, bias=bias).double()
    g = make_generator(5)
    x = torch.randn(1, d, generator=g, dtype=torch.float64)
    y = torch.full((1, k), 3)
    e = (net(x) - y).detach().numpy()[0]  # residuals, all negative: no stationary point inside
    return net, x, y, e


def test_ascent_finds_the_maximum_over_the_filter_balls():
    """Loss sum_k (W_k x - y_k)^2: within ||delta_k|| <= r ||W_k|| the rise is maximal at
    delta_k = sign(e_k) r ||W_k|| x / ||x||: sum_k (|e_k| + r ||W_k|| ||x||)^2 - e_k^2."""
    net, x, y, e = _linear_case(False)
    W, xn = net.weight.detach().numpy(), float(x.norm())
    a = np.linalg.norm(W, axis=1) * xn
    for r in (0.05, 0.5):
        rise, delta = FM.worst_case_sharpness(net, x, y, radius=r, loss=_sq, steps=10, return_delta=True)
        assert rise == pytest.approx(float(((np.abs(e) + r * a) ** 2 - e ** 2).sum()), rel=1e-9)
        norms = delta.reshape(3, 4).norm(dim=1).numpy()
        assert (norms <= r * np.linalg.norm(W, axis=1) * (1 + 1e-12)).all()
    # alpha': the positive root of sum_k (a_k^2 r^2 + 2 |e_k| a_k r) = threshold
    A, B, thr = (a ** 2).sum(), 2 * (np.abs(e) * a).sum(), 0.1
    root = (-B + math.sqrt(B ** 2 + 4 * A * thr)) / (2 * A)
    alpha = FM.worst_case_alpha(net, x, y, threshold=thr, loss=_sq, rtol=0.01)
    assert root / 1.01 * (1 - 1e-9) <= alpha <= root * (1 + 1e-9)


def test_ascent_finds_the_maximum_over_the_box():
    """Loss (w.x + b - y)^2 with residual e: the rise over |delta_i| <= r (|theta_i| + eps) is
    maximal at the vertex sign(e) sign(c_i), c = (x, 1): (|e| + r sum_i (|theta_i| + eps) |c_i|)^2 - e^2."""
    net, x, y, e = _linear_case(True, k=1)
    theta = np.concatenate([net.weight.detach().numpy().ravel(), net.bias.detach().numpy()])
    c = np.concatenate([x.numpy().ravel(), [1.0]])
    r, eps = 0.2, 0.01
    rise, delta = FM.worst_case_sharpness(net, x, y, radius=r, kind="adaptive", eps=eps, loss=_sq,
                                          return_delta=True)
    S = r * ((np.abs(theta) + eps) * np.abs(c)).sum()
    assert rise == pytest.approx((abs(e[0]) + S) ** 2 - e[0] ** 2, rel=1e-9)
    assert (np.abs(delta.numpy()) <= r * (np.abs(theta) + eps) * (1 + 1e-12)).all()


# ------------------------------------------------------------------------------- PAC-Bayes
@pytest.fixture(scope="module")
def least_squares():
    """A linear model at its least-squares minimum: the rise under u is exactly u^T A u,
    A = X^T X / N (the gradient vanishes)."""
    g = make_generator(7)
    x = torch.randn(50, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    y = torch.randint(-3, 4, (50,), generator=g)
    net = nn.Linear(3, 1, bias=False).double()
    w = torch.linalg.lstsq(x, y.double()[:, None]).solution
    _set(net, w.T)
    return net, x, y, (x.T @ x / 50).numpy()


def _brute_rise(net, x, y, u):
    """Mean over draws of the mean squared-error rise, by a plain loop."""
    w = net.weight.detach().numpy()[0]
    X, Y = x.numpy(), y.numpy().astype(float)
    base = ((X @ w - Y) ** 2).mean()
    return float(np.mean([((X @ (w + uk) - Y) ** 2).mean() - base for uk in u]))


def test_pac_bayes_sigma_brackets_the_threshold_with_fixed_draws(least_squares):
    net, x, y, A = least_squares
    thr, n_draws = 0.1, 8
    z = torch.randn((n_draws, 3), generator=make_generator(0), dtype=torch.float64).numpy()
    sigma = FM.pac_bayes_sigma(net, x, y, threshold=thr, n_draws=n_draws, loss=_sq, seed=0)
    exact = math.sqrt(thr / np.mean([zk @ A @ zk for zk in z]))  # the rise is sigma^2 mean z^T A z
    assert exact / 1.01 * (1 - 1e-9) <= sigma <= exact * (1 + 1e-9)
    assert _brute_rise(net, x, y, sigma * z) <= thr * (1 + 1e-9)
    assert _brute_rise(net, x, y, 1.1 * sigma * z) >= thr
    assert FM.pac_bayes_rise(net, x, y, sigma, n_draws=n_draws, loss=_sq) == pytest.approx(
        _brute_rise(net, x, y, sigma * z), rel=1e-9)
    assert FM.pac_bayes_sigma(net, x, y, threshold=thr, n_draws=n_draws, loss=_sq, seed=0) == sigma
    assert FM.pac_bayes_sigma(net, x, y, threshold=thr, n_draws=n_draws, loss=_sq, seed=1) != sigma
    # many draws: E[u^T A u] = sigma^2 tr(A)
    many = FM.pac_bayes_sigma(net, x, y, threshold=thr, n_draws=2000, loss=_sq)
    assert many == pytest.approx(math.sqrt(thr / np.trace(A)), rel=0.05)


def test_magnitude_aware_sigma_uses_the_magnitude_variance(least_squares):
    net, x, y, A = least_squares
    thr, eps = 0.05, 1e-3
    theta = net.weight.detach().numpy()[0]
    z = torch.randn((16, 3), generator=make_generator(4), dtype=torch.float64).numpy()
    s = FM.pac_bayes_sigma(net, x, y, kind="magnitude", threshold=thr, n_draws=16, eps=eps, loss=_sq, seed=4)
    std = lambda sg: np.sqrt(sg ** 2 * theta ** 2 + eps ** 2)  # noqa: E731
    assert _brute_rise(net, x, y, z * std(s)) <= thr * (1 + 1e-9)
    assert _brute_rise(net, x, y, z * std(1.1 * s)) >= thr
    assert FM.pac_bayes_rise(net, x, y, 0.3, kind="magnitude", n_draws=16, eps=0.2, loss=_sq, seed=4) == \
        pytest.approx(_brute_rise(net, x, y, z * np.sqrt(0.09 * theta ** 2 + 0.04)), rel=1e-9)
    many = FM.pac_bayes_sigma(net, x, y, kind="magnitude", threshold=thr, n_draws=2000, eps=eps, loss=_sq)
    assert float((np.diag(A) * std(many) ** 2).sum()) == pytest.approx(thr, rel=0.1)


# --------------------------------------------------------------------------- feature group
ALWAYS = {"n_params", "l2", "param_norm", "log_prod_of_fro", "log_sum_of_fro", "log_prod_of_spec",
          "log_sum_of_spec", "fro_over_spec", "path_norm", "margin", "inverse_margin",
          "log_prod_of_fro_over_margin", "log_sum_of_fro_over_margin", "log_prod_of_spec_over_margin",
          "log_sum_of_spec_over_margin", "log_spec_orig_main", "path_norm_over_margin", "cross_entropy",
          "worst_case_sharpness", "adaptive_sharpness", "sharpness_flatness", "sharpness_orig",
          "sharpness_mag_flatness", "sharpness_mag_orig", "pacbayes_flatness", "pacbayes_orig",
          "pacbayes_mag_flatness", "pacbayes_mag_orig", "n_samples"}
INIT = {"dist_init", "fro_dist", "dist_spec_init", "log_spec_init_main", "sharpness_init", "sharpness_mag_init",
        "pacbayes_init", "pacbayes_mag_init"}
FAST = dict(n_samples=128, steps=3, n_draws=4, device="cpu")


@pytest.fixture(scope="module")
def trained(tiny_data):
    out = {}
    for bn in (False, True):
        torch.manual_seed(0)  # test-only: module init has no generator argument
        layers = [nn.Linear(8, 16)] + ([nn.BatchNorm1d(16)] if bn else []) + [nn.ReLU(), nn.Linear(16, 3)]
        net = nn.Sequential(*layers)
        init = get_params(net)
        opt = torch.optim.Adam(net.parameters(), 0.02)
        for _ in range(150):
            opt.zero_grad()
            F.cross_entropy(net(tiny_data.x_train), tiny_data.y_train).backward()
            opt.step()
        out[bn] = net.eval(), init
    return out


def test_generalization_measures_on_a_tiny_mlp(trained, tiny_data):
    x, y = tiny_data.x_train, tiny_data.y_train
    for bn in (True, False):  # the plain MLP last: its results are checked below
        net, init = trained[bn]
        with_init = generalization_measures(net, x, y, init_params=init, **FAST)
        assert set(with_init) == ALWAYS | INIT, bn
        assert all(isinstance(v, float) and math.isfinite(v) for v in with_init.values()), with_init
        assert with_init["margin"] > 0 and with_init["n_samples"] == 128
    without = generalization_measures(net, x, y, **FAST)
    assert set(without) == ALWAYS
    assert all(without[k] == with_init[k] for k in ALWAYS)
    # the group's searches are the public ones on the same subset and draws
    sigma = FM.pac_bayes_sigma(net, x, y, n_samples=128, n_draws=4, device="cpu")
    assert without["pacbayes_flatness"] == pytest.approx(1 / sigma ** 2, rel=1e-12)
    alpha = FM.worst_case_alpha(net, x, y, steps=3, alpha_start=0.01, n_samples=128, device="cpu")
    assert with_init["sharpness_flatness"] == pytest.approx(1 / alpha ** 2, rel=1e-12)


def test_the_declaration_matches_the_function_defaults():
    sig = inspect.signature(generalization_measures).parameters
    for name, p in generalization_measures.parameters.items():
        assert p.check is not None and p.help and p.types, name
        assert sig[name].default == p.default, name
        assert p.check(p.default) is None, name
