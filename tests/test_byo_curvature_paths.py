"""loss= and data forms in curvature, paths, patterns and ensembles (regression and custom losses)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from topoland.errors import ConfigError
from topoland.landscape import curvature as C
from topoland.landscape import paths as P
from topoland.landscape.hessian import CurvatureError, hvp_fn, loss_fn_flat
from topoland.landscape.patterns import LossPatternFitter, pattern_gap
from topoland.landscape.spectrum import top_eigenvalues
from topoland.splits import DataSplits
from topoland.train.ensembles import fast_geometric_ensemble


def _mlp(seed=0, dtype=torch.float64, out=1):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, out)).to(dtype)


def _reg(n=16, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=dtype)
    y = (x[:, :1] * 0.7 - x[:, 1:2] ** 2 + 0.1 * torch.randn(n, 1, generator=g, dtype=dtype))
    return x, y


def _fit(model, x, y, steps=60, lr=0.05):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
    return model


def _cls(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    return x, (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()


# (a) the exact Hessian of a tiny MSE regression ---------------------------------------------


def test_mse_hvp_equals_exact_hessian_and_spectrum():
    model, (x, y) = _mlp(), _reg()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(t):
        ps, i = {}, 0
        for n, s in zip(names, shapes):
            k = int(np.prod(s))
            ps[n] = t[i:i + k].view(s)
            i += k
        out = torch.func.functional_call(model, ps, (x,))
        return ((out - y) ** 2).mean()

    h = torch.autograd.functional.hessian(f, theta)
    op = hvp_fn(model, x, y, loss="mse", n_samples=None, batch_size=5)
    d = theta.numel()
    hv = op(torch.eye(d, dtype=torch.float64))
    torch.testing.assert_close(hv, h, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(op(torch.eye(d, dtype=torch.float64)[3]), h[3], rtol=1e-9, atol=1e-11)
    ev = np.linalg.eigh(h.numpy())[0]
    vals, _ = top_eigenvalues(op, k=1, method="lanczos", iters=d, tol=1e-10, seed=0)
    assert float(vals[0]) == pytest.approx(ev[-1], rel=1e-7)
    assert float(torch.diagonal(hv).sum()) == pytest.approx(float(np.trace(h.numpy())), rel=1e-10)
    # loss_fn_flat is the same function
    g, th = loss_fn_flat(model, x, y, loss="mse", n_samples=None)
    torch.testing.assert_close(torch.func.hessian(g)(th), h, rtol=1e-9, atol=1e-11)
    assert op.loss_name == "mse"


# (b) a callable equal to cross-entropy -------------------------------------------------------


def my_ce(output, target):
    return F.cross_entropy(output, target, reduction="none")


def test_callable_cross_entropy_equals_the_name():
    model, (x, y) = _mlp(out=3), _cls()
    kw = dict(n_samples=None, n_probes=3, n_directions=2, lanczos_iters=15, sharpness_radius=0.2,
              max_radius=2.0, device="cpu")
    a = C.curvature_features(model, x, y, loss="cross_entropy", **kw)
    b = C.curvature_features(model, x, y, loss=my_ce, **kw)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-12, abs=1e-14), k
    th = P.model_vector(model)[None] + 0.01 * torch.randn(3, P.model_vector(model).numel(), dtype=torch.float64)
    torch.testing.assert_close(P.network_loss(model, x, y, loss=my_ce)(th),
                               P.network_loss(model, x, y)(th), rtol=1e-13, atol=0)


# (c) paths with loss="mse" -------------------------------------------------------------------


def test_neb_between_regression_minima_and_loop():
    x, y = _reg(32)
    ma, mb = _fit(_mlp(1), x, y), _fit(_mlp(2), x, y)
    ta, tb = P.model_vector(ma), P.model_vector(mb)
    L = P.network_loss(ma, x, y, loss="mse")
    path = P.neb(L, ta, tb, n_images=5, steps=4, lr=0.01)
    direct_a = float(((ma(x) - y) ** 2).mean())
    direct_b = float(((mb(x) - y) ** 2).mean())
    assert float(path.losses[0]) == pytest.approx(direct_a, rel=1e-10)
    assert float(path.losses[-1]) == pytest.approx(direct_b, rel=1e-10)
    pts = torch.stack([ta, tb, 0.5 * (ta + tb)])
    torch.testing.assert_close(L(pts), P.network_loss_loop(ma, x, y, loss="mse")(pts), rtol=1e-10, atol=1e-12)
    m = P.network_metrics(ma, {"train": (x, y), "test": (x[:8], y[:8])}, loss="mse", bn="eval")(pts)
    assert set(m) == {"train_loss", "test_loss"}  # no error column for a regression
    torch.testing.assert_close(m["train_loss"], L(pts).detach(), rtol=1e-10, atol=1e-12)


def test_network_metrics_classification_columns_stay():
    model, (x, y) = _mlp(out=3), _cls()
    m = P.network_metrics(model, {"train": (x, y)}, bn="eval")(P.model_vector(model)[None])
    assert set(m) == {"train_loss", "train_error"}


# (d) data forms ------------------------------------------------------------------------------


def test_data_forms_give_identical_curvature():
    x, y = _reg(16, dtype=torch.float32)
    model = _mlp(dtype=torch.float32)
    forms = [(x, y), ((x, y), None), (DataSplits.from_tensors((x, y), val=(x[:4], y[:4]), test=(x, y)), None),
             (TensorDataset(x, y), None)]
    v = torch.randn(2, sum(p.numel() for p in model.parameters()), generator=torch.Generator().manual_seed(0))
    ref = hvp_fn(model, x, y, loss="mse", n_samples=None)(v)
    ref_sh = C.sharpness(model, x, y, loss="mse", radius=0.2, n_directions=2, n_alphas=5)
    for a, b in forms:
        torch.testing.assert_close(hvp_fn(model, a, b, loss="mse", n_samples=None)(v), ref, rtol=0, atol=0)
        assert C.sharpness(model, a, b, loss="mse", radius=0.2, n_directions=2, n_alphas=5) == ref_sh
        torch.testing.assert_close(P.network_loss(model, a, b, loss="mse")(P.model_vector(model)[None]),
                                   P.network_loss(model, x, y, loss="mse")(P.model_vector(model)[None]))


# (e) errors ----------------------------------------------------------------------------------


def test_misshapen_output_names_both_shapes():
    model, (x, y) = _mlp(), _reg()
    with pytest.raises(ConfigError, match=r"output \(2, 1\) and target \(2,\)"):
        hvp_fn(model, x, y[:, 0], loss="mse")
    with pytest.raises(ConfigError, match=r"output \(2, 1\) and target \(2,\)"):
        C.curvature_features(model, x, y[:, 0], loss="mse")
    with pytest.raises(ConfigError, match=r"output \(2, 1\) and target \(2,\)"):
        P.network_loss(model, x, y[:, 0], loss="mse")


def item_loss(output, target):
    return ((output - target) ** 2).mean(1) * (1.0 if output.sum().item() > 0 else 2.0)


def branchy_loss(output, target):
    if (output > target).all():
        return ((output - target) ** 2).mean(1)
    return (output - target).abs().mean(1)


@pytest.mark.parametrize("fn", [item_loss, branchy_loss])
def test_non_vmappable_loss_names_the_loss(fn):
    model, (x, y) = _mlp(), _reg()
    with pytest.raises(CurvatureError, match=fn.__name__) as e:
        hvp_fn(model, x, y, loss=fn)
    assert "torch.func" in str(e.value)
    with pytest.raises(CurvatureError, match=fn.__name__):
        C.sharpness(model, x, y, loss=fn, n_directions=1, n_alphas=3)
    # paths apply the loss outside vmap: a plain per-sample function is fine there
    assert P.network_loss(model, x, y, loss=fn)(P.model_vector(model)[None]).shape == (1,)


# (f) ensembles and patterns with a regression loss --------------------------------------------


def test_fge_with_mse():
    x, y = _reg(16, dtype=torch.float32)
    model = _fit(_mlp(dtype=torch.float32), x, y, steps=20)
    res = fast_geometric_ensemble(model, (x, y), loss="mse", cycles=2, cycle_epochs=1, batch_size=8,
                                  lr1=0.01, lr2=0.001, device="cpu")
    assert res.snapshots.shape[0] == 2 and np.isfinite(res.history["loss"]).all()
    with pytest.raises(ConfigError, match=r"\(2, 1\).*\(2,\)"):
        fast_geometric_ensemble(model, (x, y[:, 0]), loss="mse", cycles=1, cycle_epochs=1, batch_size=8)


def test_loss_pattern_with_mse_has_no_accuracy():
    x, y = _reg(16, dtype=torch.float32)
    model = _mlp(dtype=torch.float32)
    mask = np.zeros((3, 3), bool)
    mask[:, 2] = True
    fit = LossPatternFitter(steps=2, batch_size=8, cells_per_step=4, loss="mse", device="cpu").fit(model, (x, y), mask=mask)
    grids = fit.evaluate(model, x, y)
    assert set(grids) == {"loss"} and grids["loss"].shape == (3, 3)
    gap = pattern_gap(grids, mask)
    assert set(gap) == {"low_loss", "high_loss", "loss_gap"}


def test_connect_models_with_mse_records_loss_barriers_only():
    from topoland.landscape.connect import connect_models
    x, y = _reg(24, dtype=torch.float32)
    data = DataSplits.from_tensors((x[:16], y[:16]), val=(x[16:20], y[16:20]), test=(x[16:], y[16:]))
    ma = _fit(_mlp(1, dtype=torch.float32), x[:16], y[:16], steps=20)
    mb = _fit(_mlp(2, dtype=torch.float32), x[:16], y[:16], steps=20)
    res = connect_models(ma, mb, data, method="neb", n_images=3, steps=2, lr=0.01, loss="mse", device="cpu")
    assert set(res["barriers"]) == {f"{p}.{s}_loss" for p in ("linear", "neb") for s in ("train", "test")}
    prof = res["profiles"]["linear"]
    assert float(prof["train_loss"].iloc[0]) == pytest.approx(float(((ma(x[:16]) - y[:16]) ** 2).mean()), rel=1e-5)
