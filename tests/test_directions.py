"""Random, filter-normalized, orthogonal and between-model directions (topoland.nets.directions)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from topoland.nets import directions as td
from topoland.errors import TopolandError


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 5, 3)
        self.bn = nn.BatchNorm2d(5)
        self.fc = nn.Linear(20, 4)
        self.bn1 = nn.BatchNorm1d(4)
        self.out = nn.Linear(4, 3, bias=False)

    def forward(self, x):
        h = F.relu(self.bn(self.conv(x)))
        h = F.adaptive_avg_pool2d(h, 2).flatten(1)
        return self.out(F.relu(self.bn1(self.fc(h))))


def _net(seed=0):
    torch.manual_seed(seed)
    m = _Net()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-1, 1)
        m.bn.running_var.uniform_(0.5, 2)
        m.conv.weight[2].zero_()  # a dead filter
    return m


def _slice_norms(t):
    return t.reshape(t.shape[0], -1).norm(dim=1)


def test_filter_normalization_slice_norms_and_biasbn_zero():
    m = _net()
    d = td.filter_normalized_direction(m, seed=1)
    params = dict(m.named_parameters())
    assert list(d) == list(params)  # parameters only, model order: no BN buffers
    for n, w in params.items():
        assert d[n].shape == w.shape and d[n].dtype == w.dtype
        if w.dim() >= 2:
            torch.testing.assert_close(_slice_norms(d[n]), _slice_norms(w.detach()), rtol=1e-6, atol=1e-7)
        else:
            assert torch.count_nonzero(d[n]) == 0, n
    assert torch.count_nonzero(d["conv.weight"][2]) == 0  # zero weight slice -> zero direction slice
    assert torch.count_nonzero(d["conv.weight"][0]) == d["conv.weight"][0].numel()


def test_ignore_none_normalizes_1d_as_one_slice_and_same_draws():
    m = _net()
    d0 = td.random_direction(m, 4, norm="filter", ignore="biasbn")
    d1 = td.random_direction(m, 4, norm="filter", ignore=None)
    for n, w in m.named_parameters():
        if w.dim() >= 2:
            assert torch.equal(d0[n], d1[n])  # the seed's draws do not depend on `ignore`
        else:
            torch.testing.assert_close(d1[n].norm(), w.detach().norm(), rtol=1e-6, atol=0)


def test_layer_and_raw_directions():
    m = _net()
    raw = td.random_direction(m, 2, norm=None, ignore=None)
    g = torch.Generator().manual_seed(2)  # raw = plain Gaussian draws in model order
    for n, w in m.named_parameters():
        assert torch.equal(raw[n], torch.randn(w.shape, generator=g))
    lay = td.random_direction(m, 2, norm="layer", ignore=None)
    for n, w in m.named_parameters():
        torch.testing.assert_close(lay[n].norm(), w.detach().norm(), rtol=1e-6, atol=0)
        # layer normalization is one factor per tensor
        torch.testing.assert_close(lay[n], raw[n] * (w.detach().norm() / raw[n].norm()))
    lay_b = td.random_direction(m, 2, norm="layer")
    assert torch.count_nonzero(lay_b["fc.bias"]) == 0


def test_seed_determinism_and_bn_buffers_untouched():
    m = _net()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    a = td.filter_normalized_direction(m, 7)
    b = td.filter_normalized_direction(m, 7)
    c = td.filter_normalized_direction(m, 8)
    for n in a:
        assert torch.equal(a[n], b[n])
    assert not torch.equal(a["conv.weight"], c["conv.weight"])
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k])
    g = torch.Generator().manual_seed(7)
    e = td.random_direction(m, generator=g)
    assert all(torch.equal(a[n], e[n]) for n in a)
    with pytest.raises(TopolandError, match="exactly one"):
        td.random_direction(m, 7, generator=g)


def test_states_direction_covers_float_buffers():
    m = _net()
    w = td.random_direction(m, 3)
    s = td.random_direction(m, 3, kind="states", ignore=None)
    assert list(s) == list(w) + ["bn.running_mean", "bn.running_var", "bn1.running_mean", "bn1.running_var"]
    for n, t in m.named_parameters():
        if t.dim() >= 2:
            assert torch.equal(s[n], w[n])
    torch.testing.assert_close(s["bn.running_var"].norm(), m.bn.running_var.norm(), rtol=1e-6, atol=0)
    s0 = td.random_direction(m, 3, kind="states")  # biasbn zeroes the (1-D) running stats
    assert torch.count_nonzero(s0["bn.running_mean"]) == 0


@pytest.mark.parametrize("exact", [True, False])
def test_orthogonal_pair(exact):
    m = _net()
    d1, d2 = td.orthogonal_pair(m, 11, exact=exact)
    first = td.random_direction(m, 11)
    assert all(torch.equal(d1[n], first[n]) for n in d1)
    v1, v2 = td.as_flat(d1, m).double(), td.as_flat(d2, m).double()
    cos = (v1 @ v2 / (v1.norm() * v2.norm())).item()
    if exact:
        assert abs(cos) < 1e-6
        g = torch.Generator().manual_seed(11)
        td.random_direction(m, generator=g)
        raw2 = td.as_flat(td.random_direction(m, generator=g), m).double()
        torch.testing.assert_close(v2.norm(), raw2.norm(), rtol=1e-6, atol=0)  # norm preserved
        assert torch.count_nonzero(d2["fc.bias"]) == 0
    else:
        assert 1e-6 < abs(cos) < 0.5  # nearly, not exactly, orthogonal
        for n, w in m.named_parameters():
            if w.dim() >= 2:
                torch.testing.assert_close(_slice_norms(d2[n]), _slice_norms(w.detach()), rtol=1e-6, atol=1e-7)


def test_between_exact_modules_and_dicts():
    a, b = _net(0), _net(1)
    d = td.between(a, b)
    assert list(d) == [n for n, _ in a.named_parameters()]
    for n, p in a.named_parameters():
        assert torch.equal(d[n], dict(b.named_parameters())[n].detach() - p.detach())
    s = td.between(a, b, kind="states")
    assert torch.equal(s["bn.running_mean"], b.bn.running_mean - a.bn.running_mean)
    assert "bn.num_batches_tracked" not in s
    # dicts: state dicts (every float tensor) and a mix with a module
    sd = td.between(a.state_dict(), b.state_dict())
    assert set(sd) == set(s) and all(torch.equal(sd[k], s[k]) for k in s)
    mix = td.between(a, b.state_dict())
    assert set(mix) == set(d) and all(torch.equal(mix[k], d[k]) for k in d)
    # float64: a + (b - a) == b exactly for these values
    a64, b64 = _net(0).double(), _net(1).double()
    d64 = td.between(a64, b64)
    for n, p in a64.named_parameters():
        torch.testing.assert_close(p.detach() + d64[n], dict(b64.named_parameters())[n].detach(),
                                   rtol=1e-15, atol=1e-15)
    with pytest.raises(TopolandError, match="only one"):
        td.between({"x": torch.zeros(2)}, {"y": torch.zeros(2)})
    with pytest.raises(TopolandError, match="shape"):
        td.between({"x": torch.zeros(2)}, {"x": torch.zeros(3)})


def test_as_flat_and_combine():
    m = _net()
    d = td.filter_normalized_direction(m, 5)
    flat = td.as_flat(d, m)
    assert flat.shape == (sum(p.numel() for p in m.parameters()),)
    rev = dict(reversed(list(d.items())))
    assert torch.equal(td.as_flat(rev, m), flat)  # model order, not dict order
    origin = {n: p.detach().double() for n, p in m.named_parameters()}
    d2 = td.random_direction(m, 6)
    coords = torch.tensor([[0.0, 0.0], [1.0, -0.5], [2.5, 3.0]], dtype=torch.float64)
    pts = td.combine(origin, [d, d2], coords)
    for n in origin:
        assert pts[n].shape == (3, *origin[n].shape)
        for i in range(3):
            ref = origin[n] + coords[i, 0] * d[n].double() + coords[i, 1] * d2[n].double()
            torch.testing.assert_close(pts[n][i], ref, rtol=1e-15, atol=1e-15)
    with pytest.raises(TopolandError, match="coords"):
        td.combine(origin, [d, d2], coords[:, :1])


def test_bad_options_raise():
    m = _net()
    with pytest.raises(TopolandError, match="norm"):
        td.random_direction(m, 0, norm="filt")
    with pytest.raises(TopolandError, match="ignore"):
        td.random_direction(m, 0, ignore="bias")
    with pytest.raises(TopolandError, match="kind"):
        td.between(m, m, kind="buffers")
