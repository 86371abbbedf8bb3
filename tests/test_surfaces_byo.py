"""Surfaces on your own data, losses and metrics: data forms, callable losses, regression (mse)
through every evaluator, custom metrics, refusals, and plots without an accuracy panel."""
import copy

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from topoland.data import DataSplits
from topoland.landscape import surfaces as S
from topoland.landscape.storage import GridStoreError
from topoland.landscape.surface_points import SurfaceError
from topoland.nets import directions as D
from topoland.nets.models import build_model
from topoland.plots import landscape as PL


def _cls_data(n=30, seed=0, f=4, classes=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, f, generator=g), torch.randint(0, classes, (n,), generator=g)


def _reg_data(n=30, seed=0, f=4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, f, generator=g)
    return x, (x[:, :1] * 0.7 - x[:, 1:2] ** 2 + 0.1 * torch.randn(n, 1, generator=g))


def _mlp(seed=0, out=3, act=nn.ReLU):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), act(), nn.Linear(8, out))


def _at(model, direction, alpha):
    """A copy of ``model`` with parameters theta + alpha * d."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n in direction:
                p.add_(alpha * direction[n].to(p.dtype))
    return m.eval()


def _mse(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).double() - y.double()).square().mean())


# --------------------------------------------------------------------------- (a) data forms

def test_every_data_form_gives_the_same_values():
    x, y = _cls_data()
    xt, yt = _cls_data(n=18, seed=1)
    m = build_model("mlp", (4,), 3, widths=(8,), seed=0)
    d = D.random_direction(m, 0)
    kw = dict(alphas=np.linspace(-1, 1, 4), evaluator="batched", device="cpu")
    ref = S.line(m, d, x, y, **kw)
    assert ref.meta["loss"] == "cross_entropy" and sorted(ref.values) == ["train_acc", "train_loss"]
    for form in ((x, y), [x, y], TensorDataset(x, y)):
        srf = S.line(m, d, form, **kw)
        assert sorted(srf.values) == sorted(ref.values)
        for k in ref.values:
            np.testing.assert_array_equal(srf.values[k], ref.values[k])
    ds = DataSplits.from_tensors(train=(x, y), test=(xt, yt))
    by_splits = S.line(m, d, ds, **kw)
    given = S.line(m, d, ds.x_train, ds.y_train, x_test=ds.x_test, y_test=ds.y_test, **kw)
    assert sorted(by_splits.values) == ["test_acc", "test_loss", "train_acc", "train_loss"]
    for k in given.values:
        np.testing.assert_array_equal(by_splits.values[k], given.values[k])
    mapping = S.line(m, d, {"train": (x, y), "test": TensorDataset(xt, yt)}, **kw)
    for k in given.values:
        np.testing.assert_array_equal(mapping.values[k], given.values[k])
    # an explicit x_test wins over the DataSplits' test split
    own = S.line(m, d, ds, x_test=xt[:6], y_test=yt[:6], **kw)
    np.testing.assert_array_equal(own.values["train_loss"], given.values["train_loss"])
    ref6 = S.line(m, d, x, y, x_test=xt[:6], y_test=yt[:6], **kw)
    np.testing.assert_array_equal(own.values["test_loss"], ref6.values["test_loss"])


def test_data_forms_on_planes_and_refusals():
    x, y = _cls_data(n=24)
    xt, yt = _cls_data(n=12, seed=2)
    m = _mlp()
    ds = DataSplits.from_tensors(train=(x, y), test=(xt, yt))
    a = S.random_plane(m, ds, grid=3, device="cpu")
    b = S.random_plane(m, ds.x_train, ds.y_train, x_test=ds.x_test, y_test=ds.y_test, grid=3, device="cpu")
    assert a.meta["evaluator"] == "linear-first"
    for k in b.values:
        np.testing.assert_array_equal(a.values[k], b.values[k])
    lines = S.random_lines(m, TensorDataset(x, y), n_directions=2, alphas=np.linspace(-1, 1, 3), device="cpu")
    assert len(lines) == 2 and lines[0].values["train_loss"].shape == (3,)
    with pytest.raises(SurfaceError, match="y is missing"):
        S.line(m, D.random_direction(m, 0), x)
    with pytest.raises(SurfaceError, match="alphas"):  # alphas passed where y goes
        S.line(m, D.random_direction(m, 0), ds, np.linspace(-1, 1, 3))
    with pytest.raises(SurfaceError, match="both x_test and y_test"):
        S.line(m, D.random_direction(m, 0), x, y, x_test=xt)


# --------------------------------------------------------------------------- (b) callable loss

def test_callable_cross_entropy_equals_the_named_loss():
    x, y = _cls_data()
    xt, yt = _cls_data(n=12, seed=3)
    m = _mlp()
    d1, d2 = D.orthogonal_pair(m, 1)

    def ce(output, target):
        return F.cross_entropy(output, target, reduction="none")

    for ev in ("batched", "loop", "linear-first"):
        kw = dict(grid=3, x_test=xt, y_test=yt, evaluator=ev, device="cpu")
        named = S.plane(m, d1, d2, x, y, **kw)
        own = S.plane(m, d1, d2, x, y, loss=ce, **kw)
        assert own.meta["loss"] == "ce" and named.meta["loss"] == "cross_entropy"
        assert sorted(own.values) == sorted(named.values) == ["test_acc", "test_loss", "train_acc", "train_loss"]
        for k in named.values:
            np.testing.assert_allclose(own.values[k], named.values[k], rtol=1e-12, atol=0)


# --------------------------------------------------------------------------- (c) regression

@pytest.mark.parametrize("act", [nn.ReLU, nn.Tanh])  # ReLU: the chain; Tanh: per point
def test_regression_surfaces_agree_across_evaluators_and_by_hand(act):
    x, y = _reg_data()
    xt, yt = _reg_data(n=12, seed=5)
    m = _mlp(out=1, act=act)
    d = D.random_direction(m, 2)
    alphas = np.linspace(-1, 1, 5)
    lines = {ev: S.line(m, d, x, y, alphas=alphas, x_test=xt, y_test=yt, loss="mse", evaluator=ev, device="cpu")
             for ev in ("batched", "loop", "linear-first")}
    for ev, srf in lines.items():
        assert sorted(srf.values) == ["test_loss", "train_loss"], ev
        assert srf.meta["loss"] == "mse" and srf.meta["evaluator"] == ev
        for k in srf.values:
            np.testing.assert_allclose(srf.values[k], lines["loop"].values[k], rtol=1e-5, atol=1e-7)
    at = _at(m, d, alphas[1])
    assert abs(lines["linear-first"].values["train_loss"][1] - _mse(at, x, y)) < 1e-5
    assert abs(lines["batched"].values["test_loss"][1] - _mse(at, xt, yt)) < 1e-5

    planes = {ev: S.random_plane(m, x, y, seed=1, grid=3, loss="mse", evaluator=ev, device="cpu")
              for ev in ("batched", "loop", "linear-first")}
    for ev, srf in planes.items():
        np.testing.assert_allclose(srf.values["train_loss"], planes["loop"].values["train_loss"],
                                   rtol=1e-5, atol=1e-7)
    d1, d2 = planes["batched"].directions
    corner = _at(_at(m, d1, -1.0), d2, 1.0)  # values[i, j] at (xs[j], ys[i]) = (-1, 1)
    assert abs(planes["batched"].values["train_loss"][2, 0] - _mse(corner, x, y)) < 1e-5


def test_regression_interpolation_every_evaluator_and_data_form():
    x, y = _reg_data()
    xt, yt = _reg_data(n=12, seed=6)
    a, b = _mlp(0, out=1), _mlp(1, out=1)
    ds = DataSplits.from_tensors(train=(x, y), test=(xt, yt))
    assert ds.task == "regression"
    alphas = np.linspace(0, 1, 3)
    out = {ev: S.interpolate(a, b, ds, alphas=alphas, loss="mse", evaluator=ev, device="cpu")
           for ev in ("batched", "loop", "linear-first")}
    for ev, srf in out.items():
        assert sorted(srf.values) == ["test_loss", "train_loss"]
        for k in srf.values:
            np.testing.assert_allclose(srf.values[k], out["loop"].values[k], rtol=1e-5, atol=1e-7)
    assert abs(out["linear-first"].values["train_loss"][0] - _mse(a, ds.x_train, ds.y_train)) < 1e-5
    assert abs(out["batched"].values["test_loss"][2] - _mse(b, xt, yt)) < 1e-5
    # float targets stay float (no cast to long): a cast would change the values
    assert out["loop"].values["train_loss"][0] > 0 and not np.isclose(
        out["loop"].values["train_loss"][0], _mse(a, ds.x_train, ds.y_train.long().float()))


# --------------------------------------------------------------------------- (d) custom metrics

def test_custom_metric_dict_is_recorded_by_name():
    x, y = _reg_data()
    m = _mlp(out=1)
    d = D.random_direction(m, 0)

    def mae(output, target):
        return (output - target).abs().reshape(len(output), -1).mean(1)

    for ev in ("batched", "loop", "linear-first"):
        srf = S.line(m, d, (x, y), alphas=np.linspace(-1, 1, 3), loss="mse",
                     metrics={"loss": "loss", "mae": mae}, evaluator=ev, device="cpu")
        assert sorted(srf.values) == ["train_loss", "train_mae"]
        with torch.no_grad():
            want = float((_at(m, d, 1.0)(x) - y).abs().mean())
        assert abs(srf.values["train_mae"][2] - want) < 1e-5
    cls = S.line(_mlp(), D.random_direction(_mlp(), 0), *_cls_data(), alphas=[0.0],
                 metrics=("loss", "error", ("top", lambda o, t: (o.argmax(1) == t).float())), device="cpu")
    assert sorted(cls.values) == ["train_err", "train_loss", "train_top"]
    np.testing.assert_allclose(cls.values["train_top"], 1 - cls.values["train_err"])


# --------------------------------------------------------------------------- (e) refusals

def test_accuracy_on_float_targets_and_misshapen_metrics_are_refused():
    x, y = _reg_data(n=20)
    m = _mlp(out=1)
    d = D.random_direction(m, 0)
    with pytest.raises(SurfaceError, match=r"accuracy.*float32"):
        S.line(m, d, x, y, alphas=[0.0], loss="mse", metrics=("loss", "accuracy"), device="cpu")
    with pytest.raises(SurfaceError, match=r"float32"):
        S.random_plane(m, x, y, grid=2, loss="mse", metrics="error", device="cpu")
    with pytest.raises(SurfaceError, match=r"'bad'.*\(2,\).*\(\).*\(2, 1\)"):
        S.line(m, d, x, y, alphas=[0.0], loss="mse", metrics={"bad": lambda o, t: (o - t).sum()}, device="cpu")
    with pytest.raises(SurfaceError, match=r"\(2, 1\).*\(2,\)"):  # mse needs the output's shape
        S.line(m, d, x, y[:, 0], alphas=[0.0], loss="mse", device="cpu")
    with pytest.raises(SurfaceError, match="unknown loss"):
        S.line(m, d, x, y, alphas=[0.0], loss="hinge", device="cpu")


def test_resuming_a_store_with_another_loss_is_refused(tmp_path):
    x, y = _reg_data(n=20)
    m = _mlp(out=1)
    d = D.random_direction(m, 0)
    h5 = tmp_path / "line.h5"
    S.line(m, d, x, y, alphas=[0.0, 1.0], loss="mse", metrics="loss", store=h5, device="cpu")
    with pytest.raises(GridStoreError, match="'mse', not 'l1'"):
        S.line(m, d, x, y, alphas=[0.0, 1.0], loss="l1", metrics="loss", store=h5, device="cpu")
    again = S.line(m, d, x, y, alphas=[0.0, 1.0], loss="mse", metrics="loss", store=h5, device="cpu")
    assert again.meta["resumed_points"] == 2 and again.meta["loss"] == "mse"


# --------------------------------------------------------------------------- (f) plots

def test_regression_surface_plots_without_an_accuracy_panel(tmp_path):
    import matplotlib.pyplot as plt

    x, y = _reg_data(n=20)
    m = _mlp(out=1)
    plane = S.random_plane(m, x, y, grid=3, loss="mse", device="cpu")
    line = S.random_lines(m, x, y, n_directions=1, alphas=np.linspace(-1, 1, 3), loss="mse", device="cpu")[0]
    assert PL.quantities(plane) == PL.quantities(line) == ["loss"]
    assert PL.quantities(S.line(_mlp(), D.random_direction(_mlp(), 0), *_cls_data(), alphas=[0.0],
                                device="cpu")) == ["loss", "acc"]
    axes = [PL.plot_line(line), PL.plot_contour(plane, filled=True), PL.plot_heatmap(plane),
            PL.plot_surface_3d(plane)]
    assert axes[0].get_ylabel() == "loss (mse)"
    for ax in axes:
        for a in ax.figure.axes:
            assert "acc" not in (a.get_ylabel() + a.get_xlabel() + a.get_title()).lower()
    assert len(axes[0].figure.axes) == 1  # one panel, no empty accuracy panel
    assert PL.export_vtk(plane, tmp_path / "p.vtk").exists()
    with pytest.raises(PL.PlotError, match="no accuracy values"):
        PL.plot_line(line, quantity="acc")
    plt.close("all")


def test_regression_cnn_linear_first_point_chain_equals_loop():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 1, 8, 8, generator=g), torch.randn(16, 1, generator=g)
    m = build_model("cnn", (1, 8, 8), 1, seed=0, channels=(4, 6), hidden=8)
    d1, d2 = D.orthogonal_pair(m, 0)
    lf = S.plane(m, d1, d2, x, y, grid=3, loss="mse", evaluator="linear-first", device="cpu")
    ref = S.plane(m, d1, d2, x, y, grid=3, loss="mse", evaluator="loop", device="cpu")
    assert lf.meta["evaluator"] == "linear-first" and sorted(lf.values) == ["train_loss"]
    np.testing.assert_allclose(lf.values["train_loss"], ref.values["train_loss"], rtol=1e-5)
