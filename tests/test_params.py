"""Flat parameter views and batched functional evaluation (topoland.nets: params, functional,
evaluation) against plain loops and known answers."""
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from topoland import nets as tp
from topoland.errors import TopolandError


def _mlp(bn=False, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    layers = [nn.Linear(6, 16)]
    if bn:
        layers.append(nn.BatchNorm1d(16))
    layers += [nn.ReLU(), nn.Linear(16, 3)]
    m = nn.Sequential(*layers).to(dtype)
    if bn:  # non-trivial running statistics, as after training
        with torch.no_grad():
            m[1].running_mean.uniform_(-0.5, 0.5)
            m[1].running_var.uniform_(0.5, 2.0)
            m[1].num_batches_tracked.fill_(7)
    return m


class _TinyConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 3 * 3, 5)

    def forward(self, x):
        h = F.relu(self.bn(self.conv(x)))
        h = F.avg_pool2d(h, 2)
        return self.fc(h.flatten(1))


def _conv():
    torch.manual_seed(1)
    m = _TinyConv()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.3, 0.3)
        m.bn.running_var.uniform_(0.5, 1.5)
    return m


def _data(n=37, shape=(6,), classes=3, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g, dtype=dtype)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def _points(model, p=7, scale=0.3, seed=3):
    g = torch.Generator().manual_seed(seed)
    base = tp.flatten(tp.get_params(model))
    return base + scale * torch.randn(p, base.numel(), generator=g, dtype=base.dtype)


def _assert_close(a, b, rtol=1e-5, atol=1e-7):
    assert set(a) == set(b)
    for k in a:
        assert a[k].shape == b[k].shape
        np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=atol, err_msg=k)


# ------------------------------------------------------------------ flat views

def test_flatten_unflatten_roundtrip_and_stack():
    m = _conv()
    p = tp.get_params(m)
    assert list(p) == tp.param_names(m) == [n for n, _ in m.named_parameters()]
    assert tp.buffer_names(m) == ["bn.running_mean", "bn.running_var", "bn.num_batches_tracked"]
    v = tp.flatten(p)
    assert v.shape == (sum(t.numel() for t in p.values()),)
    back = tp.unflatten(v, m)
    for k in p:
        assert torch.equal(back[k], p[k])
    s = tp.stack([p, tp.unflatten(2 * v, m), tp.unflatten(3 * v, m)])
    assert s["conv.weight"].shape == (3, 4, 1, 3, 3)
    flat = tp.flatten(s, stacked=True)
    assert torch.equal(flat, torch.stack([v, 2 * v, 3 * v]))
    back2 = tp.unflatten(flat, m)
    for k in s:
        assert torch.equal(back2[k], s[k])
    # get_params copies
    p["fc.bias"].add_(1.0)
    assert not torch.equal(p["fc.bias"], m.fc.bias)


def test_flat_views_reject_mismatches():
    m = _mlp()
    v = tp.flatten(tp.get_params(m))
    with pytest.raises(TopolandError, match="does not match"):
        tp.unflatten(v[:-1], m)
    with pytest.raises(TopolandError, match="nope"):
        tp.unflatten(v, m, names=["nope"])
    with pytest.raises(TopolandError, match="key"):
        tp.stack([{"a": torch.zeros(2)}, {"b": torch.zeros(2)}])
    with pytest.raises(TopolandError, match="leading dim"):
        tp.flatten({"a": torch.zeros(2, 3), "b": torch.zeros(3, 3)}, stacked=True)


# ------------------------------------------------------------------ functional forward

@pytest.mark.parametrize("bn", [False, True])
def test_functional_logits_matches_loop(bn):
    m = _mlp(bn=bn)
    x, _ = _data()
    pts = tp.unflatten(_points(m, p=4), m)
    out = tp.functional_logits(m, pts, None, x)
    assert out.shape == (4, 37, 3)
    m.train()  # functional_logits must use eval mode by default and restore the flag
    ref_model = copy.deepcopy(m).eval()
    for i in range(4):
        ref_model.load_state_dict({**m.state_dict(), **{k: v[i] for k, v in pts.items()}})
        torch.testing.assert_close(out[i], ref_model(x), rtol=1e-5, atol=1e-6)
    tp.functional_logits(m, pts, None, x)
    assert m.training
    # per-point inputs
    xs = torch.stack([x + i for i in range(4)])
    out2 = tp.functional_logits(m, pts, None, xs, x_per_point=True)
    for i in range(4):
        ref_model.load_state_dict({**m.state_dict(), **{k: v[i] for k, v in pts.items()}})
        torch.testing.assert_close(out2[i], ref_model(x + i), rtol=1e-5, atol=1e-5)


def test_functional_logits_train_mode_updates_bn_per_point():
    m = _mlp(bn=True)
    x, _ = _data()
    pts = tp.unflatten(_points(m, p=3), m)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    logits, nb = tp.functional_logits(m, pts, None, x, train=True, return_buffers=True)
    for k, v in m.state_dict().items():  # the model is untouched
        assert torch.equal(v, before[k])
    for i in range(3):
        r = copy.deepcopy(m).train()
        r.load_state_dict({**before, **{k: v[i] for k, v in pts.items()}})
        torch.testing.assert_close(logits[i], r(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(nb["1.running_mean"][i], r[1].running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(nb["1.running_var"][i], r[1].running_var, rtol=1e-5, atol=1e-6)
        assert int(nb["1.num_batches_tracked"][i]) == 8


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batched_grad_matches_autograd_loop(momentum):
    m = _mlp(bn=True)
    m[1].momentum = momentum
    x, y = _data()
    pts = tp.unflatten(_points(m, p=3), m)
    losses, grads, nb = tp.batched_grad(m, pts, None, x, y)
    assert losses.shape == (3,)
    assert m[1].momentum == momentum
    for i in range(3):
        r = copy.deepcopy(m).train()
        r.load_state_dict({**m.state_dict(), **{k: v[i] for k, v in pts.items()}})
        loss = F.cross_entropy(r(x), y)
        loss.backward()
        torch.testing.assert_close(losses[i], loss.detach(), rtol=1e-5, atol=1e-6)
        for n, p in r.named_parameters():
            torch.testing.assert_close(grads[n][i], p.grad, rtol=1e-4, atol=1e-6)
        for n, b in r.named_buffers():
            torch.testing.assert_close(nb[n][i], b, rtol=1e-5, atol=1e-6)


def test_batched_grad_per_point_data_eval_mode():
    m = _mlp(bn=False)
    x, y = _data()
    pts = tp.unflatten(_points(m, p=2), m)
    xs = torch.stack([x, -x])
    ys = torch.stack([y, (y + 1) % 3])
    losses, grads, nb = tp.batched_grad(m, pts, None, xs, ys, train=False, x_per_point=True)
    assert nb == {}
    for i in range(2):
        r = copy.deepcopy(m)
        r.load_state_dict({k: v[i] for k, v in pts.items()})
        loss = F.cross_entropy(r(xs[i]), ys[i])
        loss.backward()
        torch.testing.assert_close(losses[i], loss.detach())
        for n, p in r.named_parameters():
            torch.testing.assert_close(grads[n][i], p.grad, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ evaluate vs loop

def test_evaluate_known_answer_zero_weights():
    m = _mlp()
    x, y = _data(n=40)
    zero = torch.zeros(2, tp.flatten(tp.get_params(m)).numel())
    for fn in (tp.evaluate, tp.evaluate_loop):
        r = fn(m, zero, x, y, batch_size=16, device="cpu")
        # zero logits: loss log(C); argmax ties pick class 0
        np.testing.assert_allclose(r["loss"], [math.log(3)] * 2, rtol=1e-7)
        np.testing.assert_allclose(r["accuracy"], [int((y == 0).sum()) / 40] * 2, rtol=1e-15)


@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("batch_size,chunk_size", [(1024, None), (10, 3), (36, 4)])
def test_evaluate_equals_loop_mlp(bn, batch_size, chunk_size):
    m = _mlp(bn=bn)
    x, y = _data()
    pts = _points(m)
    a = tp.evaluate(m, pts, x, y, batch_size=batch_size, chunk_size=chunk_size, device="cpu")
    b = tp.evaluate_loop(m, pts, x, y, batch_size=batch_size, device="cpu")
    _assert_close(a, b)
    assert a["loss"].shape == (7,) and a["loss"].dtype == np.float64
    assert ((a["accuracy"] >= 0) & (a["accuracy"] <= 1)).all()


@pytest.mark.parametrize("batch_size,chunk_size", [(1024, None), (8, 3)])
def test_evaluate_equals_loop_bn_recompute(batch_size, chunk_size):
    m = _mlp(bn=True)
    x, y = _data()
    bn_x, _ = _data(n=50, seed=5)
    pts = _points(m)
    for src in (None, bn_x):
        a = tp.evaluate(m, pts, x, y, batch_size=batch_size, chunk_size=chunk_size, bn="recompute",
                        bn_x=src, device="cpu")
        b = tp.evaluate_loop(m, pts, x, y, batch_size=batch_size, bn="recompute", bn_x=src, device="cpu")
        _assert_close(a, b)
    e = tp.evaluate(m, pts, x, y, batch_size=batch_size, chunk_size=chunk_size, device="cpu")
    assert not np.allclose(a["loss"], e["loss"])  # recomputation changes the answer


def test_loop_bn_recompute_equals_update_bn():
    m = _mlp(bn=True)
    x, y = _data()
    bn_x, _ = _data(n=50, seed=5)
    pts = _points(m, p=2)
    got = tp.evaluate_loop(m, pts, x, y, batch_size=16, bn="recompute", bn_x=bn_x, device="cpu")
    for i in range(2):
        r = copy.deepcopy(m)
        r.load_state_dict({**m.state_dict(), **tp.unflatten(pts[i], m)})
        torch.optim.swa_utils.update_bn([bn_x[s:s + 16] for s in range(0, 50, 16)], r)
        r.eval()
        with torch.no_grad():
            out = r(x)
        np.testing.assert_allclose(got["loss"][i], F.cross_entropy(out, y).item(), rtol=1e-5)


@pytest.mark.parametrize("bn", ["eval", "recompute"])
def test_evaluate_equals_loop_conv_bn2d(bn):
    m = _conv()
    x, y = _data(n=23, shape=(1, 6, 6), classes=5)
    pts = _points(m, p=5, scale=0.2)
    a = tp.evaluate(m, pts, x, y, batch_size=8, chunk_size=2, bn=bn, device="cpu")
    b = tp.evaluate_loop(m, pts, x, y, batch_size=8, bn=bn, device="cpu")
    _assert_close(a, b)


def test_evaluate_float64_exact_and_batch_size_independent():
    m = _mlp(bn=True, dtype=torch.float64)
    x, y = _data(dtype=torch.float64)
    pts = _points(m)
    a = tp.evaluate(m, pts, x, y, batch_size=10, chunk_size=3, device="cpu")
    b = tp.evaluate_loop(m, pts, x, y, batch_size=10, device="cpu")
    _assert_close(a, b, rtol=1e-13, atol=0)
    c = tp.evaluate(m, pts, x, y, batch_size=37, device="cpu")
    d = tp.evaluate(m, pts, x, y, batch_size=1, device="cpu")
    _assert_close(a, c, rtol=1e-13, atol=0)
    _assert_close(a, d, rtol=1e-13, atol=0)
    a = tp.evaluate(m, pts, x, y, batch_size=10, chunk_size=3, bn="recompute", device="cpu")
    b = tp.evaluate_loop(m, pts, x, y, batch_size=10, bn="recompute", device="cpu")
    _assert_close(a, b, rtol=1e-12, atol=0)


def test_evaluate_custom_metrics_and_dict_points_with_buffers():
    m = _mlp(bn=True)
    x, y = _data()
    flat = _points(m, p=4)
    pts = tp.unflatten(flat, m)
    g = torch.Generator().manual_seed(9)
    pts["1.running_mean"] = torch.randn(4, 16, generator=g)  # a "states" point moves buffers too

    def margin(logits, yy):
        return logits.gather(1, yy[:, None])[:, 0] - logits.logsumexp(1)

    metrics = ("loss", "accuracy", "error", margin, ("top2", lambda lg, yy: (lg.topk(2, 1).indices == yy[:, None]).any(1)))
    a = tp.evaluate(m, pts, x, y, metrics=metrics, batch_size=11, chunk_size=3, device="cpu")
    b = tp.evaluate_loop(m, pts, x, y, metrics=metrics, batch_size=11, device="cpu")
    _assert_close(a, b)
    assert set(a) == {"loss", "accuracy", "error", "margin", "top2"}
    np.testing.assert_allclose(a["margin"], -a["loss"], rtol=1e-5)
    np.testing.assert_allclose(a["error"], 1 - a["accuracy"], rtol=1e-12)
    assert (a["top2"] >= a["accuracy"]).all()
    # the buffers matter: without them the result differs
    c = tp.evaluate(m, flat, x, y, batch_size=11, device="cpu")
    assert not np.allclose(c["loss"], a["loss"])


def test_evaluate_leaves_model_untouched_and_auto_chunk():
    m = _conv()
    m.train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x, y = _data(n=12, shape=(1, 6, 6), classes=5)
    pts = _points(m, p=6)
    a = tp.evaluate(m, pts, x, y, batch_size=5, bn="recompute", device="cpu", memory_budget=50_000)
    assert m.training and all(mod.training for mod in m.modules())
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k])
    assert m.bn.momentum == 0.1
    c = tp.estimate_chunk_size(m, x, 5, device="cpu", memory_budget=50_000)
    assert 1 <= c < 6  # the small budget forces several chunks
    b = tp.evaluate_loop(m, pts, x, y, batch_size=5, bn="recompute", device="cpu")
    _assert_close(a, b)


def test_evaluate_errors_name_the_culprit():
    m = _mlp(bn=True)
    x, y = _data()
    pts = _points(m, p=2)
    with pytest.raises(TopolandError, match="unknown metric 'acc'"):
        tp.evaluate(m, pts, x, y, metrics=("acc",), device="cpu")
    with pytest.raises(TopolandError, match="does not match"):
        tp.evaluate(m, pts[:, :-1], x, y, device="cpu")
    with pytest.raises(TopolandError, match="'bogus'"):
        tp.evaluate(m, {"bogus": torch.zeros(2, 3)}, x, y, device="cpu")
    with pytest.raises(TopolandError, match="batch of 1"):
        tp.evaluate(m, pts, x, y, batch_size=12, bn="recompute", device="cpu")  # 37 = 3*12 + 1
    with pytest.raises(TopolandError, match="y has"):
        tp.evaluate(m, pts, x, y[:-1], device="cpu")
    with pytest.raises(TopolandError, match="bn must be"):
        tp.evaluate(m, pts, x, y, bn="train", device="cpu")
    with pytest.raises(TopolandError, match="per-sample"):
        tp.evaluate(m, pts, x, y, metrics=(("bad", lambda lg, yy: lg.sum()),), device="cpu")


def test_frozen_parameters_are_shared_not_points():
    m = _mlp()
    m[0].weight.requires_grad_(False)
    assert tp.param_names(m) == ["0.bias", "2.weight", "2.bias"]
    x, y = _data()
    pts = _points(m, p=3)
    assert pts.shape == (3, 16 + 48 + 3)
    a = tp.evaluate(m, pts, x, y, batch_size=16, device="cpu")
    b = tp.evaluate_loop(m, pts, x, y, batch_size=16, device="cpu")
    _assert_close(a, b)


def test_has_batchnorm():
    import torch.nn as nn

    from topoland.nets.params import has_batchnorm
    assert has_batchnorm(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)))
    assert has_batchnorm(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sequential(nn.BatchNorm2d(2))))
    assert not has_batchnorm(nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4)))
