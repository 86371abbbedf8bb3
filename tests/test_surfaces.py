"""Surfaces: interpolation, planes, resumable HDF5 grids, PCA trajectories, figures, VTK."""
import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch

from topoland.nets import directions as D
from topoland import nets as P
from topoland.landscape import surfaces as S
from topoland.landscape.linear_chain import _Chain
from topoland.landscape.linear_first import _combine_first, _LinearFirst
from topoland.landscape.storage import GridStore, GridStoreError, read_grid
from topoland.landscape.surface_points import Surface, SurfaceError
from topoland.nets.models import build_model
from topoland.plots import landscape as PL


def _data(n=48, seed=0, shape=(1, 8, 8), classes=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)


def _cnn(seed=0, bn=False):
    return build_model("cnn", (1, 8, 8), 3, seed=seed, channels=(4, 6), hidden=8, batchnorm=bn)


def _rel(a, b):
    return np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-8))


def _loop_grid(model, d1, d2, xs, ys, x, y, metrics=("loss", "accuracy")):
    """Reference: explicit points theta* + a d1 + b d2, evaluated by params.evaluate_loop."""
    names = P.param_names(model)
    th = P.flatten(P.get_params(model), names).double()
    v1 = P.flatten({n: d1.get(n, torch.zeros_like(p)) for n, p in P.get_params(model).items()}, names).double()
    v2 = P.flatten({n: d2.get(n, torch.zeros_like(p)) for n, p in P.get_params(model).items()}, names).double()
    pts = torch.stack([th + a * v1 + b * v2 for b in ys for a in xs]).float()
    out = P.evaluate_loop(model, pts, x, y, metrics=metrics, device="cpu")
    return {k: v.reshape(len(ys), len(xs)) for k, v in out.items()}


# --------------------------------------------------------------------------- equal to the loop

@pytest.mark.parametrize("evaluator", ["linear-first", "batched"])
@pytest.mark.parametrize("bn", [False, True])
def test_plane_equals_plain_loop(evaluator, bn):
    x, y = _data()
    m = _cnn(bn=bn)
    if bn:  # non-trivial running statistics
        with torch.no_grad():
            for mod in m.modules():
                if isinstance(mod, torch.nn.BatchNorm2d):
                    mod.running_mean.uniform_(-0.5, 0.5)
                    mod.running_var.uniform_(0.5, 2.0)
    d1, d2 = D.orthogonal_pair(m, 3)
    srf = S.plane(m, d1, d2, x, y, grid=4, range=(-1, 1), chunk_points=5, evaluator=evaluator,
                  device="cpu")
    assert srf.meta["evaluator"] == evaluator
    ref = _loop_grid(m, d1, d2, srf.xs, srf.ys, x, y)
    assert srf.values["train_loss"].shape == (4, 4)
    assert _rel(srf.values["train_loss"], ref["loss"]) < 1e-5
    np.testing.assert_array_equal(srf.values["train_acc"], ref["accuracy"])


def test_auto_picks_linear_first_for_cnn_and_batched_for_mlp():
    x, y = _data(n=24)
    m = _cnn()
    d1, d2 = D.orthogonal_pair(m, 0)
    assert S.plane(m, d1, d2, x, y, grid=2, device="cpu").meta["evaluator"] == "linear-first"
    mlp = build_model("mlp", (1, 8, 8), 3, widths=(8,))
    e1, e2 = D.orthogonal_pair(mlp, 0)
    srf = S.plane(mlp, e1, e2, x, y, grid=3, device="cpu")
    assert srf.meta["evaluator"] == "batched"
    ref = _loop_grid(mlp, e1, e2, srf.xs, srf.ys, x, y)
    assert _rel(srf.values["train_loss"], ref["loss"]) < 1e-5
    with pytest.raises(SurfaceError, match="linear-first"):
        S.plane(mlp, e1, e2, x, y, grid=2, evaluator="linear-first", device="cpu")


def test_train_and_test_values_and_conv1d():
    x, y = _data(n=32, shape=(1, 12))
    xt, yt = _data(n=20, seed=1, shape=(1, 12))
    m = build_model("cnn", (1, 12), 3, channels=(3, 4), hidden=5)
    d = D.random_direction(m, 1)
    srf = S.line(m, d, x, y, alphas=np.linspace(-1, 1, 5), x_test=xt, y_test=yt, device="cpu")
    assert set(srf.values) == {"train_loss", "train_acc", "test_loss", "test_acc"}
    assert srf.meta["evaluator"] == "linear-first"
    ref = _loop_grid(m, d, {}, srf.xs, [0.0], xt, yt)
    assert _rel(srf.values["test_loss"], ref["loss"][0]) < 1e-5


# --------------------------------------------------------------------------- interpolation

@pytest.mark.parametrize("kind", ["weights", "states"])
def test_interpolation_hits_both_models(kind):
    x, y = _data()
    a, b = _cnn(seed=0, bn=True), _cnn(seed=1, bn=True)
    with torch.no_grad():
        for mod in b.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    srf = S.interpolate(a, b, x, y, kind=kind, device="cpu")
    assert len(srf.xs) == 41
    i0, i1 = np.argmin(np.abs(srf.xs)), np.argmin(np.abs(srf.xs - 1))
    own = lambda mm: P.evaluate_loop(mm, P.flatten(P.get_params(mm))[None], x, y, device="cpu")
    la, lb = own(a), own(b)
    assert abs(srf.values["train_loss"][i0] - la["loss"][0]) < 1e-5 * la["loss"][0]
    hit_b = abs(srf.values["train_loss"][i1] - lb["loss"][0]) < 1e-5 * lb["loss"][0]
    # "weights" keeps a's BN statistics, so it reaches b's loss only with "states"
    assert hit_b == (kind == "states")
    if kind == "weights":
        # b's parameters with a's buffers
        sd = dict(b.state_dict())
        sd.update({k: v for k, v in a.state_dict().items() if "running" in k})
        bb = _cnn(seed=1, bn=True)
        bb.load_state_dict(sd)
        lbb = own(bb)
        assert abs(srf.values["train_loss"][i1] - lbb["loss"][0]) < 1e-5 * lbb["loss"][0]


# --------------------------------------------------------------------------- plane through 3

def test_plane_through_three_models_hits_each():
    x, y = _data()
    ms = [_cnn(seed=s) for s in (0, 1, 2)]
    probe = S.plane_through(*ms, x, y, grid=3, device="cpu")
    (ax_, ay_), (bx, by), (cx, cy) = probe.meta["anchors"]
    assert ax_ == ay_ == by == 0.0 and bx > 0 and cy > 0
    srf = S.plane_through(*ms, x, y, grid=(np.array([0.0, bx, cx]), np.array([0.0, cy])),
                          device="cpu")
    own = [P.evaluate_loop(m, P.flatten(P.get_params(m))[None], x, y, device="cpu")["loss"][0]
           for m in ms]
    got = [srf.values["train_loss"][0, 0], srf.values["train_loss"][0, 1], srf.values["train_loss"][1, 2]]
    assert _rel(np.array(got), np.array(own)) < 1e-5
    with pytest.raises(SurfaceError, match="collinear"):
        S.plane_through(ms[0], ms[1], ms[0], x, y, grid=2)


# --------------------------------------------------------------------------- resumable grids

def test_interrupted_grid_resumes_to_same_values(tmp_path):
    x, y = _data()
    m = _cnn()
    d1, d2 = D.orthogonal_pair(m, 5)
    full = S.plane(m, d1, d2, x, y, grid=5, chunk_points=4, device="cpu")
    path = tmp_path / "grid.h5"
    calls = []

    def stop_after_two(done, total):
        calls.append(done)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated interruption")

    with pytest.raises(KeyboardInterrupt):
        S.plane(m, d1, d2, x, y, grid=5, chunk_points=4, device="cpu", store=path,
                on_chunk=stop_after_two)
    part = read_grid(path)
    assert part["done"].sum() == 8 and np.isnan(part["values"]["train_loss"]).sum() == 17
    assert not list(tmp_path.glob("*.tmp*"))
    seen = []
    res = S.plane(m, d1, d2, x, y, grid=5, chunk_points=4, device="cpu", store=path,
                  on_chunk=lambda done, total: seen.append((done, total)))
    assert res.meta["resumed_points"] == 8 and seen[-1] == (17, 17)
    for k in full.values:
        np.testing.assert_allclose(res.values[k], full.values[k], rtol=1e-12)
    stored = read_grid(path)
    assert stored["done"].all()
    assert stored["directions"].shape == (2, P.flatten(P.get_params(m)).numel())
    # a different direction must not resume into this file
    e1, _ = D.orthogonal_pair(m, 6)
    with pytest.raises(GridStoreError, match="directions differ"):
        S.plane(m, e1, d2, x, y, grid=5, device="cpu", store=path)
    with pytest.raises(GridStoreError, match="xs"):
        S.plane(m, d1, d2, x, y, grid=4, device="cpu", store=path)


def test_grid_store_roundtrip(tmp_path):
    p = tmp_path / "g.h5"
    with GridStore.open(p, xs=[0, 1, 2], ys=[0, 1], directions=np.ones((2, 4)), metrics=["a"]) as st:
        assert list(st.pending()) == list(range(6))
        st.write([1, 5], {"a": np.array([3.0, 4.0])})
    g = read_grid(p)
    assert g["values"]["a"][0, 1] == 3.0 and g["values"]["a"][1, 2] == 4.0
    assert g["done"].sum() == 2 and np.isnan(g["values"]["a"]).sum() == 4
    with pytest.raises(GridStoreError, match="metrics"):
        GridStore.open(p, xs=[0, 1, 2], ys=[0, 1], directions=np.ones((2, 4)), metrics=["b"])


# --------------------------------------------------------------------------- PCA

def test_pca_recovers_a_planar_trajectory():
    g = np.random.default_rng(0)
    dim, t = 60, 25
    basis, _ = np.linalg.qr(g.standard_normal((dim, 2)))
    s = np.linspace(0, 3 * np.pi, t)
    coords = np.stack([3 * np.exp(-0.2 * s) * np.cos(s), 1.5 * np.exp(-0.2 * s) * np.sin(s)], 1)
    final = g.standard_normal(dim)
    ckpts = final + coords @ basis.T
    d1, d2, evr, got = S.pca_directions(torch.tensor(ckpts), torch.tensor(final))
    assert abs(evr.sum() - 1) < 1e-10 and evr[0] >= evr[1] > 0
    dd = torch.stack([d1, d2]).numpy()
    np.testing.assert_allclose(dd @ dd.T, np.eye(2), atol=1e-10)
    # the recovered axes span the known plane
    np.testing.assert_allclose(np.linalg.norm(dd @ basis, axis=1), [1, 1], atol=1e-10)
    # coordinates equal the true ones up to an orthogonal 2x2 map (rotation/reflection)
    r, *_ = np.linalg.lstsq(coords, got, rcond=None)
    np.testing.assert_allclose(coords @ r, got, atol=1e-9)
    np.testing.assert_allclose(r.T @ r, np.eye(2), atol=1e-9)
    # a non-planar trajectory keeps less than all of the variance
    noisy = ckpts + 0.3 * g.standard_normal(ckpts.shape)
    assert S.pca_directions(torch.tensor(noisy), torch.tensor(final))[2].sum() < 0.99


def test_trajectory_plane_draws_path(tmp_path):
    x, y = _data(n=24)
    m = _cnn()
    th = P.flatten(P.get_params(m)).double()
    g = torch.Generator().manual_seed(0)
    ck = th + 0.05 * torch.randn(6, th.numel(), generator=g, dtype=torch.float64)
    srf = S.trajectory_plane(m, ck, x, y, grid=4, device="cpu")
    assert srf.path.shape == (6, 2) and srf.values["train_loss"].shape == (4, 4)
    assert srf.xs.min() < srf.path[:, 0].min() and srf.xs.max() > srf.path[:, 0].max()
    ax = PL.plot_trajectory(srf)
    assert ax.get_xlabel().startswith("PC1 (") and "% var." in ax.get_ylabel()


# --------------------------------------------------------------------------- features

def _analytic_plane():
    xs = ys = np.linspace(-1, 1, 41)
    gx, gy = np.meshgrid(xs, ys)
    return Surface(xs=xs, ys=ys, values={"train_loss": 1 + gx ** 2 + gy ** 2}, meta={"kind": "plane"})


def test_surface_features_known_answers():
    a = np.linspace(-1, 1, 41)
    l1 = Surface(xs=a, ys=None, values={"train_loss": 2 + a ** 2}, meta={"kind": "line"})
    l2 = Surface(xs=a, ys=None, values={"train_loss": 2 + 3 * a ** 2}, meta={"kind": "line"})
    f = S.surface_features([l1, l2])
    assert f["surface_rise_r0.5"] == pytest.approx(0.5 * (0.25 + 0.75), abs=1e-12)
    assert f["surface_rise_r1"] == pytest.approx(2.0, abs=1e-12)
    al = np.linspace(-0.5, 1.5, 41)
    curve = 1 + 0.5 * al + 4 * al * (1 - al) * (al >= 0) * (al <= 1)   # barrier 1 at alpha 0.5
    fi = S.surface_features(Surface(xs=al, ys=None, values={"train_loss": curve},
                                    meta={"kind": "interpolate"}))
    assert fi["surface_barrier"] == pytest.approx(1.0, abs=1e-12)
    fp = S.surface_features(_analytic_plane())
    assert fp["surface_plane_rise_r0.5"] == pytest.approx(0.25, abs=2e-3)
    assert fp["surface_plane_rise_r1"] == pytest.approx(1.0, abs=2e-3)
    assert fp["surface_plane_max_r1"] == pytest.approx(1.0, abs=1e-12)


def test_random_lines_features_run():
    x, y = _data(n=24)
    m = _cnn()
    lines = S.random_lines(m, x, y, n_directions=2, seed=0, alphas=np.linspace(-1, 1, 5), device="cpu")
    assert len(lines) == 2 and lines[0].meta["direction_seed"] != lines[1].meta["direction_seed"]
    f = S.surface_features(lines)
    assert np.isfinite(f["surface_rise_r0.5"])


# --------------------------------------------------------------------------- figures and VTK

def test_plots_and_vtk(tmp_path):
    srf = _analytic_plane()
    for fn in (PL.plot_contour, PL.plot_heatmap, PL.plot_surface_3d):
        assert fn(srf) is not None
    assert PL.plot_contour(srf, filled=True, log=True) is not None
    a = np.linspace(-0.5, 1.5, 9)
    line = Surface(xs=a, ys=None, values={"train_loss": a ** 2, "test_loss": a ** 2 + 1,
                                          "train_acc": 1 - a ** 2 / 4}, meta={"kind": "interpolate"})
    assert len(PL.plot_line(line).get_lines()) == 4  # two curves + two markers
    assert PL.plot_line(line, quantity="acc") is not None
    with pytest.raises(PL.PlotError):
        PL.plot_contour(line)
    p = PL.export_vtk(srf, tmp_path / "s.vtk")
    text = p.read_text().splitlines()
    assert text[0] == "# vtk DataFile Version 3.0" and text[2] == "ASCII"
    assert text[3] == "DATASET STRUCTURED_GRID" and text[4] == "DIMENSIONS 41 41 1"
    assert text[5] == "POINTS 1681 double"
    pts = np.array([[float(v) for v in r.split()] for r in text[6:6 + 1681]])
    assert pts.shape == (1681, 3)
    np.testing.assert_allclose(pts[:, 2], srf.values["train_loss"].reshape(-1), rtol=1e-8)
    i = text.index("POINT_DATA 1681")
    assert text[i + 1] == "SCALARS train_loss double 1" and len(text) == i + 3 + 1681


class _Odd(torch.nn.Module):
    """A first conv, then a rest that is not a plain chain (tanh, skip connection)."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(1, 3, 3, padding=1)
        self.c2 = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.fc = torch.nn.Linear(3 * 64, 3)

    def forward(self, x):
        h = torch.tanh(self.c1(x))
        return self.fc(torch.flatten(h + self.c2(h), 1))


class _Lin(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(10, 7), torch.nn.BatchNorm1d(7),
                                       torch.nn.ReLU(), torch.nn.Linear(7, 3))

    def forward(self, x):
        return self.net(x)


def _with_stats(net):
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
    return net


def _chain1d():
    """Conv1d chain: stride, no bias, BN, MaxPool1d, BN after flatten."""
    nn = torch.nn
    return _with_stats(nn.Sequential(
        nn.Conv1d(1, 4, 5, padding=2), nn.ReLU(), nn.Conv1d(4, 6, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm1d(6), nn.ReLU(), nn.MaxPool1d(2), nn.Flatten(), nn.Linear(30, 8),
        nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)))


def _chain1d_same():
    """Conv1d chain with padding="same" after the first layer."""
    nn = torch.nn
    return nn.Sequential(nn.Conv1d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv1d(3, 4, 5, padding="same"),
                         nn.ReLU(), nn.Flatten(), nn.Linear(80, 3))


def _chain2d():
    """Conv2d chain: groups, stride, BN, padded max pool."""
    nn = torch.nn
    return _with_stats(nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2),
        nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2, padding=1), nn.Flatten(), nn.Linear(54, 3)))


@pytest.mark.parametrize("maker,shape", [(_Odd, (1, 8, 8)), (_Lin, (10,)), (_chain1d, (1, 20)),
                                         (_chain1d_same, (1, 20)), (_chain2d, (1, 8, 8))])
def test_linear_first_other_models_equal_loop(maker, shape):
    torch.manual_seed(0)
    m = maker().eval()
    x, y = _data(n=30, shape=shape)
    d1, d2 = D.orthogonal_pair(m, 2)
    srf = S.plane(m, d1, d2, x, y, grid=3, evaluator="linear-first", chunk_points=4,
                  batch_size=16, device="cpu")
    ref = _loop_grid(m, d1, d2, srf.xs, srf.ys, x, y)
    assert _rel(srf.values["train_loss"], ref["loss"]) < 1e-5
    np.testing.assert_array_equal(srf.values["train_acc"], ref["accuracy"])
    if maker in (_chain1d, _chain1d_same, _chain2d):  # the point-by-point chain, not the fallback
        assert _LinearFirst(m).chain is not None


@pytest.mark.parametrize("mod", [torch.nn.MaxPool2d(2), torch.nn.MaxPool2d(3), torch.nn.MaxPool2d(3, ceil_mode=True),
                                 torch.nn.MaxPool2d((2, 3)), torch.nn.MaxPool2d(2, padding=1),
                                 torch.nn.MaxPool2d(3, stride=2), torch.nn.MaxPool1d(2),
                                 torch.nn.MaxPool1d(3, ceil_mode=True), torch.nn.MaxPool1d(3, stride=1, padding=1)])
def test_channels_last_pool_equals_torch(mod):
    g = torch.Generator().manual_seed(0)
    if isinstance(mod, torch.nn.MaxPool2d):
        x = torch.randn(5, 4, 8, 7, generator=g)
        h = x.permute(0, 2, 3, 1).contiguous()                 # (M, H, W, C)
        ref = mod(x).permute(0, 2, 3, 1)
    else:
        x = torch.randn(5, 4, 11, generator=g)
        h = x.permute(0, 2, 1).contiguous().unsqueeze(1)      # (M, 1, L, C)
        ref = mod(x).permute(0, 2, 1).unsqueeze(1)
    out = _Chain._pool_nhwc(h, mod)
    assert out.is_contiguous()
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_two_threads_and_sample_blocks_equal_loop():
    """With two torch threads and more samples than one CPU block (_CPU_ROWS)."""
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x, y = _data(n=300)
        m = _cnn()
        d1, d2 = D.orthogonal_pair(m, 5)
        srf = S.plane(m, d1, d2, x, y, grid=3, chunk_points=9, evaluator="linear-first", device="cpu")
    finally:
        torch.set_num_threads(n)
    ref = _loop_grid(m, d1, d2, srf.xs, srf.ys, x, y)
    assert _rel(srf.values["train_loss"], ref["loss"]) < 1e-5
    np.testing.assert_array_equal(srf.values["train_acc"], ref["accuracy"])


@pytest.mark.parametrize("maker,shape", [(_chain1d, (1, 20)), (_chain2d, (1, 8, 8)),
                                         (lambda: _cnn(bn=True), (1, 8, 8))])
def test_grouped_chain_equals_point_chain(maker, shape):
    """The GPU layout (all points as one grouped convolution) equals the CPU point-by-point path."""
    torch.manual_seed(0)
    m = maker().eval()
    lf = _LinearFirst(m)
    assert lf.chain is not None
    x, _ = _data(n=20, shape=shape)
    g = torch.Generator().manual_seed(1)
    first = {n: p for n, p in P.get_params(m).items() if n.startswith(lf.prefix + ".")}
    dirs = [{n: torch.randn(p.shape, generator=g) for n, p in first.items()} for _ in range(2)]
    zs = [lf.first_out(first, x)] + [lf.first_out(d, x) for d in dirs]
    ct = torch.randn(5, 2, generator=g, dtype=torch.float32)
    rest = {n: t.detach().unsqueeze(0).repeat(5, *[1] * t.dim()) + 0.01 * torch.randn(5, *t.shape, generator=g)
            for n, t in lf.rest.named_parameters()}
    shared = dict(lf.rest.named_buffers())
    a = lf.chain.run(_combine_first([z.clone() for z in zs], ct, 5), 5, rest, shared, flat=False)
    b = lf.chain.run_points(zs, ct, rest, shared)
    assert a.shape == b.shape == (5, 20, 3)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
