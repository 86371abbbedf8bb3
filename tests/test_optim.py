"""SWA, Entropy-SGD and PAL against known answers, and their use in train_minimum."""
import math

import pytest
import torch
from torch import nn

from topoland.errors import ConfigError
from topoland.nets.models import build_model
from topoland.train.optim import (PAL, EntropySGD, OptimError, SWAAverager, average_snapshots, entropy_gamma,
                            pal_step_size, update_bn)
from topoland.train.training import TrainRecipe, make_optimizer, train_minimum


def _quadratic(seed=0, d=5):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    h = a @ a.T + 0.5 * torch.eye(d, dtype=torch.float64)
    c = torch.randn(d, generator=g, dtype=torch.float64)
    x = nn.Parameter(torch.randn(d, generator=g, dtype=torch.float64))
    return h, c, x


def _f(h, c, x):
    return 0.5 * x @ h @ x - c @ x


# ------------------------------------------------------------------------------------------- PAL

def test_pal_step_size_cases_by_hand():
    # loss(s) = 2 s^2 - 4 s + 1: b = -4, loss(0.5) = 0.5 - 2 + 1 = -0.5 -> a = 2, vertex at 1
    s, a = pal_step_size(1.0, -4.0, -0.5, 0.5, max_step=10.0)
    assert a == pytest.approx(2.0) and s == pytest.approx(1.0)
    assert pal_step_size(1.0, -4.0, -0.5, 0.5, max_step=0.3)[0] == 0.3          # clipped
    assert pal_step_size(1.0, -4.0, -0.5, 0.5, max_step=10, adapt=1.5)[0] == pytest.approx(1.5)
    # concave (a < 0) or linear (a = 0) with descent: the measuring step mu
    assert pal_step_size(1.0, -1.0, 0.0, 0.5, max_step=10.0)[0] == 0.5           # a = (0-1+0.5)/0.25 < 0
    assert pal_step_size(1.0, -1.0, 0.5, 0.5, max_step=10.0) == (0.5, 0.0)       # a = 0
    # not a descent direction: no step
    assert pal_step_size(1.0, 0.5, 2.0, 0.5, max_step=10.0)[0] == 0.0


def test_pal_reaches_the_line_minimum_of_a_quadratic_in_one_step():
    h, c, x = _quadratic()
    x0 = x.detach().clone()
    g0 = h @ x0 - c
    d = -g0 / g0.norm()
    s_star = float(-(g0 @ d) / (d @ h @ d))              # exact minimiser along the line
    opt = PAL([x], mu=0.05, max_step=100.0)

    def closure(backward=True):
        loss = _f(h, c, x)
        if backward:
            loss.backward()
        return loss.detach()

    loss0 = opt.step(closure)
    assert float(loss0) == pytest.approx(float(_f(h, c, x0)))
    assert opt.state["step_size"] == pytest.approx(s_star, rel=1e-10)
    assert torch.allclose(x.detach(), x0 + s_star * d, atol=1e-12)
    # the new gradient is orthogonal to the search direction (exact line search)
    assert float((h @ x.detach() - c) @ d) == pytest.approx(0.0, abs=1e-10)


def test_pal_weight_decay_equals_l2_in_the_loss_and_momentum_direction():
    h, c, x = _quadratic(1)
    x2 = nn.Parameter(x.detach().clone())
    wd = 0.3
    a = PAL([x], mu=0.1, max_step=5.0, weight_decay=wd, momentum=0.5)
    b = PAL([x2], mu=0.1, max_step=5.0, momentum=0.5)

    def closure_a(backward=True):
        loss = _f(h, c, x)
        if backward:
            loss.backward()
        return loss.detach()

    def closure_b(backward=True):
        loss = _f(h, c, x2) + 0.5 * wd * (x2 ** 2).sum()
        if backward:
            loss.backward()
        return loss.detach()

    for _ in range(3):
        a.step(closure_a)
        b.step(closure_b)
        assert a.state["step_size"] == pytest.approx(b.state["step_size"], rel=1e-9)
        assert torch.allclose(x, x2, atol=1e-10)
    assert a.state["step"] == 3 and a.state["step_size_sum"] > 0


def test_pal_closure_is_required_and_options_checked():
    x = nn.Parameter(torch.zeros(2))
    with pytest.raises(OptimError, match="closure"):
        PAL([x]).step(None)
    with pytest.raises(OptimError, match="mu"):
        PAL([x], mu=0.0)


# ------------------------------------------------------------------------------------------- SWA

def test_swa_average_equals_mean_of_snapshots():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    swa = SWAAverager(model)
    g = torch.Generator().manual_seed(1)
    snaps = []
    for _ in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        snaps.append({n: p.detach().clone() for n, p in model.named_parameters()})
        swa.update(model)
    assert swa.n_averaged == 4
    avg, ref = swa.average(), average_snapshots(snaps)
    for n in ref:
        assert torch.allclose(avg[n], ref[n], atol=1e-6)
        assert torch.allclose(ref[n], sum(s[n] for s in snaps) / 4, atol=1e-6)
    flat = torch.stack([torch.cat([s[n].reshape(-1) for n in s]) for s in snaps])
    assert torch.allclose(average_snapshots(flat), flat.mean(0), atol=1e-6)


def test_swa_apply_to_recomputes_batchnorm_statistics():
    model = nn.Sequential(nn.BatchNorm1d(3), nn.Linear(3, 2))
    swa = SWAAverager(model)
    swa.update(model)
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(0)) * 2 + 1
    swa.apply_to(model, x, batch_size=50)
    bn = model[0]
    assert torch.allclose(bn.running_mean, x.mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, x.var(0, unbiased=True), atol=1e-4)
    # no BN: update_bn is a no-op; too few samples is an error
    update_bn(nn.Linear(3, 2), x)
    with pytest.raises(OptimError, match="2 samples"):
        update_bn(nn.Sequential(nn.BatchNorm1d(3)), x[:1])


# ------------------------------------------------------------------------------------ Entropy-SGD

def _entropy_reference_step(x, grad_fn, t, *, lr, L, gamma0, gamma1, sgld_lr, alpha):
    """One noise-free Entropy-SGD outer step written out plainly."""
    gamma = gamma0 * (1 + gamma1) ** t
    xp, mu = x.clone(), x.clone()
    for _ in range(L):
        xp = xp - sgld_lr * (grad_fn(xp) - gamma * (x - xp))
        mu = (1 - alpha) * mu + alpha * xp
    return x - lr * (x - mu)


def test_entropy_sgd_step_matches_the_written_out_update_and_gamma_grows():
    h, c, x = _quadratic(2)
    kw = dict(lr=0.7, L=4, gamma0=0.5, gamma1=0.2, sgld_lr=0.05, alpha=0.75)
    opt = EntropySGD([x], noise=0.0, **kw)
    ref = x.detach().clone()

    def closure():
        loss = _f(h, c, x)
        loss.backward()
        return loss

    gammas = []
    for t in range(5):
        ref = _entropy_reference_step(ref, lambda z: h @ z - c, t, **kw)
        opt.step(closure)
        gammas.append(opt.state["gamma"])
        assert torch.allclose(x.detach(), ref, atol=1e-12)
    assert opt.state["step"] == 5
    assert gammas == pytest.approx([0.5 * 1.2 ** t for t in range(5)])
    assert all(b > a for a, b in zip(gammas, gammas[1:]))
    assert entropy_gamma(10, 0.03, 0.001) == pytest.approx(0.03 * 1.001 ** 10)


def test_entropy_sgd_converges_on_a_convex_problem():
    h, c, x = _quadratic(3)
    x_star = torch.linalg.solve(h, c)
    opt = EntropySGD([x], lr=1.0, L=5, gamma0=0.1, gamma1=1e-3, sgld_lr=0.02, noise=0.0, momentum=0.5)

    def closure():
        loss = _f(h, c, x)
        loss.backward()
        return loss

    for _ in range(400):
        opt.step(closure)
    assert torch.allclose(x.detach(), x_star, atol=1e-6)


def test_entropy_sgd_noise_is_seeded():
    def run(seed):
        x = nn.Parameter(torch.zeros(4))
        opt = EntropySGD([x], lr=1.0, L=3, noise=0.5, seed=seed)
        for _ in range(3):
            opt.step(lambda: (x ** 2).sum().backward() or (x ** 2).sum().detach())
        return x.detach().clone()

    assert torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))


# ------------------------------------------------------------------------------- train_minimum

def _mlp(data, **kw):
    return build_model("mlp", data.input_shape, data.num_classes, widths=(16,), seed=0, **kw)


def test_recipe_checks_new_fields():
    for key, value in [("swa_start", 1.0), ("swa_lr", 0.0), ("entropy_L", 0), ("entropy_gamma0", 0.0),
                       ("entropy_alpha", 1.5), ("pal_mu", -1.0), ("pal_momentum", 1.0)]:
        with pytest.raises(ConfigError, match=key):
            TrainRecipe(**{key: value})
    assert isinstance(make_optimizer(nn.Linear(2, 2).parameters(), TrainRecipe(optimizer="swa")),
                      torch.optim.SGD)


def test_swa_training_returns_the_average_of_epoch_end_weights(tiny_data):
    model = _mlp(tiny_data)
    recipe = TrainRecipe(optimizer="swa", lr=0.05, epochs=6, batch_size=32, swa_start=0.5, swa_lr=0.02)
    ends = []
    res = train_minimum(model, tiny_data, recipe, seed=0, device="cpu",
                        progress=lambda e, n, row: ends.append(
                            {k: v.detach().clone() for k, v in model.named_parameters()}))
    assert res.metrics["swa_n_averaged"] == 3.0
    ref = average_snapshots(ends[3:])
    for k in ref:
        assert torch.allclose(res.params[k], ref[k], atol=1e-6)
    assert res.history["lr"].iloc[-1] == pytest.approx(0.02)  # SWALR reached swa_lr
    assert res.metrics["test_acc"] > 0.6


def test_entropy_sgd_and_pal_train_a_tiny_model(tiny_data):
    for opt, kw in [("entropy_sgd", dict(lr=1.0, entropy_L=3, entropy_sgld_lr=0.1)),
                    ("pal", dict(pal_mu=0.1, pal_max_step=1.0))]:
        model = _mlp(tiny_data)
        res = train_minimum(model, tiny_data, TrainRecipe(optimizer=opt, epochs=4, batch_size=32,
                                                          momentum=0.0, **kw), seed=0, device="cpu")
        assert not res.diverged, opt
        assert res.metrics["test_acc"] > 0.6, (opt, res.metrics)
        assert res.history["loss"].iloc[-1] < res.history["loss"].iloc[0], opt
        if opt == "pal":
            assert (res.history["lr"] > 0).all()  # mean PAL step sizes


def test_pal_training_updates_bn_statistics_once_per_step_and_refuses_dropout(tiny_data):
    model = _mlp(tiny_data, batchnorm=True)
    train_minimum(model, tiny_data, TrainRecipe(optimizer="pal", epochs=1, batch_size=64), device="cpu")
    n_batches = math.ceil(len(tiny_data.y_train) / 64)
    nbt = [b for n, b in model.named_buffers() if n.endswith("num_batches_tracked")]
    assert nbt and all(int(b) == n_batches for b in nbt)
    drop = nn.Sequential(nn.Flatten(), nn.Linear(8, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    with pytest.raises(ConfigError, match="dropout"):
        train_minimum(drop, tiny_data, TrainRecipe(optimizer="pal", epochs=1), device="cpu")
