"""Jump-and-retrain sampler: batched == sequential, jump points, divergence, storage, I/O."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from topoland.data import DataSplits
from topoland.nets.directions import as_flat, filter_normalized_direction
from topoland.topology.embedding import cosine_distances_from_gram
from topoland.errors import ConfigError, StoreError
from topoland.nets.models import build_model
from topoland.nets.params import param_names
from topoland.sampling.features import trajectory_features
from topoland.sampling.sampler import jump_and_retrain
from topoland.sampling.seeds import data_seed, direction_seeds, random_projection
from topoland.sampling.storage import TABLE_COLUMNS, load_samples, save_samples


def _data(shape=(1, 16), n_train=70, n_val=20, n_test=24, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = 2.0 * torch.randn(classes, math.prod(shape), generator=g)

    def draw(n):
        y = torch.randint(0, classes, (n,), generator=g)
        return (centres[y] + torch.randn(n, math.prod(shape), generator=g)).reshape(n, *shape), y

    (xtr, ytr), (xva, yva), (xte, yte) = draw(n_train), draw(n_val), draw(n_test)
    kind = {1: "vector", 2: "signal", 3: "image"}[len(shape)]
    return DataSplits("toy", xtr, ytr, xva, yva, xte, yte, tuple(shape), classes, kind, ytr.clone())


def _trained_bn_model(data, name="mlp", **kw):
    """A small model with BN whose running statistics differ from the defaults (as after training)."""
    model = build_model(name, data.input_shape, data.num_classes, seed=1, batchnorm=True, **kw)
    model.train()
    with torch.no_grad():
        model(data.x_train[:32])
        model(data.x_train[32:64])
    return model.eval()


pytestmark = pytest.mark.usefixtures("one_thread")


SMALL = dict(directions=2, steps=(0.5, 1.0), epochs=2, batch_size=16, lr=0.05,
             records_per_epoch=2, eval_batch_size=32, device="cpu")


@pytest.mark.parametrize("name,kw,augment", [("mlp", {"widths": (12,)}, True),
                                             ("cnn", {"channels": (3, 4), "hidden": 8}, False)])
def test_batched_equals_sequential_with_bn(name, kw, augment):
    data = _data()
    model = _trained_bn_model(data, name, **kw)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = jump_and_retrain(model, data, augment=augment, batched=True, **SMALL)
    b = jump_and_retrain(model, data, augment=augment, batched=False, **SMALL)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # not modified
    assert list(a.table.columns) == list(TABLE_COLUMNS)
    assert len(a.table) == 4 * (1 + 2 * 2) and a.params.shape == (20, a.theta_star.numel())
    assert np.allclose(a.table.epoch[:5], [0, 0.5, 1, 1.5, 2])
    for col in ("train_loss", "val_loss", "test_loss", "train_acc", "val_acc", "test_acc"):
        np.testing.assert_allclose(a.table[col], b.table[col], rtol=1e-4, atol=1e-5, err_msg=col)
    torch.testing.assert_close(a.params, b.params, rtol=1e-4, atol=1e-5)
    # retraining moved the parameters
    assert not torch.equal(a.params[0], a.params[4])
    assert not a.table.diverged.any()


def test_batched_matches_hand_written_sgd_with_bn_statistics():
    """One step, one jump, against a hand-computed torch SGD update (incl. BN running stats)."""
    data = _data(shape=(6,), n_train=16)
    model = _trained_bn_model(data, "mlp", widths=(5,))
    d = torch.randn(1, sum(p.numel() for p in model.parameters()), generator=torch.Generator().manual_seed(3))
    res = jump_and_retrain(model, data, directions=d, steps=(0.5,), epochs=1, batch_size=16,
                           lr=0.1, momentum=0.9, weight_decay=0.01, device="cpu")
    names = param_names(model)
    ref = build_model("mlp", (6,), 3, seed=1, batchnorm=True, widths=(5,))
    ref.load_state_dict(model.state_dict())
    theta0 = res.theta_star + torch.tensor(0.5) * d[0]
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(theta0, ref.parameters())
    ref.train()
    gen = torch.Generator().manual_seed(data_seed(0))
    idx = torch.randperm(16, generator=gen)
    loss = torch.nn.functional.cross_entropy(ref(data.x_train[idx]), data.y_train[idx])
    grads = torch.autograd.grad(loss, [ref.get_parameter(k) for k in names])
    g = torch.cat([x.reshape(-1) for x in grads])
    expected = theta0 - 0.1 * (g + 0.01 * theta0)  # first step: momentum buffer = d_p
    torch.testing.assert_close(res.params[1], expected, rtol=1e-5, atol=1e-6)
    ref.eval()
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(res.params[1], ref.parameters())
        val = torch.nn.functional.cross_entropy(ref(data.x_val), data.y_val)
    assert res.table.val_loss[1] == pytest.approx(float(val), rel=1e-5)


def test_jump_point_is_theta_plus_step_direction_exactly():
    data = _data()
    model = _trained_bn_model(data, "mlp", widths=(12,))
    steps = (0.25, 0.5, 0.75, 1.0, 0.1)
    res = jump_and_retrain(model, data, directions=2, steps=steps, epochs=1, batch_size=32,
                           device="cpu")
    names = param_names(model)
    theta = torch.cat([model.get_parameter(k).detach().reshape(-1) for k in names])
    assert torch.equal(res.theta_star, theta)
    for k, s in enumerate(direction_seeds(0, 2)):
        d = as_flat(filter_normalized_direction(model, s), model)
        assert torch.equal(res.directions[k], d)
        for i, step in enumerate(steps):
            row = res.table[(res.table.direction == k) & (res.table.step == np.float32(step))
                            & (res.table.epoch == 0)]
            assert len(row) == 1
            jump = res.params[int(row.sample_id.iloc[0])]
            assert torch.equal(jump, theta + torch.tensor(step, dtype=torch.float32) * d)
    # bias / BN entries of a filter-normalized direction are zero: those coordinates stay at θ*
    assert (res.directions[:, -3:] == 0).all()


def test_divergent_jump_is_marked_and_frozen_others_go_on():
    data = _data(shape=(8,))
    model = build_model("mlp", (8,), 3, seed=0, widths=(16,))
    # a 2-layer ReLU net's logits scale with step^2: 1e19 overflows float32 during the first epoch
    kw = dict(directions=1, epochs=3, batch_size=16, lr=0.5, device="cpu")
    a = jump_and_retrain(model, data, steps=(0.25, 1e19), batched=True, **kw)
    b = jump_and_retrain(model, data, steps=(0.25, 1e19), batched=False, **kw)
    alone = jump_and_retrain(model, data, steps=(0.25,), **kw)
    for res in (a, b):
        t = res.table
        good, bad = t[t.trajectory == 0], t[t.trajectory == 1]
        assert not good.diverged.any()
        assert bad.diverged.tolist() == [False, True, True, True]
        assert np.isfinite(bad.train_loss.iloc[0]) and not np.isfinite(bad.train_loss.iloc[-1])
        # frozen: after divergence the parameters never change
        p = torch.nan_to_num(res.params[torch.tensor(bad.sample_id.to_numpy()[1:])])
        assert all(torch.equal(p[i], p[0]) for i in range(len(p)))
        # the other trajectory is exactly what it would be without the diverging one
        torch.testing.assert_close(res.params[torch.tensor(good.sample_id.to_numpy())],
                                   alone.params, rtol=1e-3, atol=1e-4)  # lr 0.5 amplifies rounding
        np.testing.assert_allclose(good.val_loss, alone.table.val_loss, rtol=1e-4)
    assert a.table.diverged.tolist() == b.table.diverged.tolist()
    f = trajectory_features(a.table, a.theta_star, a.params)
    assert f["frac_diverged"] == 0.5 and math.isfinite(f["final_loss_mean"])
    assert f["final_loss_mean"] == pytest.approx(float(alone.table.val_loss.iloc[-1]), rel=1e-4)


def test_sketch_gram_and_projection_match_full_snapshots(tmp_path):
    data = _data()
    model = _trained_bn_model(data, "mlp", widths=(12,))
    kw = dict(directions=2, steps=(0.5, 1.0), epochs=2, batch_size=16, lr=0.05, device="cpu")
    full = jump_and_retrain(model, data, storage="full", **kw)
    half = jump_and_retrain(model, data, storage="half", **kw)
    sk = jump_and_retrain(model, data, storage="sketch", sketch_dim=7, **kw)
    assert sk.params is None and half.params.dtype == torch.float16
    torch.testing.assert_close(half.params.float(), full.params, rtol=1e-3, atol=1e-3)
    pd.testing.assert_frame_equal(sk.table, full.table)
    s = full.params.double()
    nrm = s.norm(dim=1)
    cos_full = 1 - (s @ s.T) / (nrm[:, None] * nrm[None, :])
    np.testing.assert_allclose(cosine_distances_from_gram(sk.gram), cos_full.clamp(0, 2).fill_diagonal_(0).numpy(),
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(sk.gram, s @ s.T, rtol=1e-12, atol=1e-9)
    r = random_projection(s.shape[1], 7, sk.config["sketch_seed"])
    assert r.shape == (s.shape[1], 7)
    torch.testing.assert_close(sk.projection, (s @ r.double()).float(), rtol=1e-5, atol=1e-5)
    # feature values from the Gram matrix equal those from the snapshots
    ff, fs = trajectory_features(full.table, params=full.params), trajectory_features(sk.table, gram=sk.gram)
    for key in ("path_length_mean", "displacement_mean", "straightness_mean"):
        assert fs[key] == pytest.approx(ff[key], rel=1e-6)
    # save / load round trip, sketch stores no snapshots
    save_samples(sk, tmp_path / "sk")
    back = load_samples(tmp_path / "sk")
    assert back.params is None and torch.equal(back.gram, sk.gram)
    assert torch.equal(back.projection, sk.projection) and back.config == sk.config


def test_random_projection_rows_are_consistent():
    full = random_projection(70_000, 3, seed=5)
    part = random_projection(70_000, 3, seed=5, rows=slice(65_000, 66_000))
    assert torch.equal(full[65_000:66_000], part)
    assert not torch.equal(full, random_projection(70_000, 3, seed=6))
    assert abs(float(full.pow(2).sum(0).mean()) / 70_000 - 1 / 3) < 0.01


def test_save_load_roundtrip_and_incomplete_dir(tmp_path):
    data = _data(shape=(8,))
    model = build_model("mlp", (8,), 3, seed=0, widths=(6,))
    res = jump_and_retrain(model, data, directions=1, steps=(1.0,), epochs=1, batch_size=32,
                           device="cpu")
    save_samples(res, tmp_path / "s")
    back = load_samples(tmp_path / "s")
    pd.testing.assert_frame_equal(back.table, res.table)
    assert torch.equal(back.params, res.params) and torch.equal(back.directions, res.directions)
    assert back.gram is None and back.config == res.config
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == \
        ["arrays.safetensors", "config.json", "samples.csv"]
    (tmp_path / "s" / "config.json").unlink()
    with pytest.raises(StoreError, match="config.json"):
        load_samples(tmp_path / "s")


def test_trajectory_features_known_values():
    table = pd.DataFrame({
        "sample_id": range(6), "trajectory": [0, 0, 0, 1, 1, 1], "direction": 0,
        "step": [1.0] * 3 + [2.0] * 3, "epoch": [0.0, 1.0, 2.0] * 2,
        "train_loss": 1.0, "train_acc": 0.5, "val_loss": [4.0, 2.0, 1.0, 8.0, 8.0, 2.0],
        "val_acc": 0.5, "test_loss": 1.0, "test_acc": 0.25, "diverged": False})
    params = torch.tensor([[3.0, 0], [3, 4], [0, 4], [10, 0], [10, 0], [10, 0]])
    f = trajectory_features(table, theta_star=torch.zeros(2), params=params)
    assert f["final_loss_mean"] == 1.5 and f["final_loss_max"] == 2.0 and f["jump_loss_mean"] == 6.0
    assert f["recovery_ratio_mean"] == pytest.approx((0.25 + 0.25) / 2)
    assert f["path_length_mean"] == pytest.approx((4 + 3 + 0) / 2)
    assert f["displacement_mean"] == pytest.approx(5 / 2)
    assert f["return_ratio_mean"] == pytest.approx((4 / 3 + 1) / 2)
    assert f["frac_diverged"] == 0 and f["final_test_acc_mean"] == 0.25


def test_bad_arguments_raise():
    data = _data(shape=(8,))
    model = build_model("mlp", (8,), 3, seed=0, widths=(6,))
    with pytest.raises(ConfigError, match="storage"):
        jump_and_retrain(model, data, storage="zip", device="cpu")
    with pytest.raises(ConfigError, match="records_per_epoch"):
        jump_and_retrain(model, data, records_per_epoch=10, batch_size=64, device="cpu")
    with pytest.raises(ConfigError, match="directions"):
        jump_and_retrain(model, data, directions=torch.zeros(2, 5), device="cpu")
    drop = build_model("wrn", (3, 8, 8), 3, depth=10, dropout=0.3)
    with pytest.raises(ConfigError, match="dropout"):
        jump_and_retrain(drop, _data(shape=(3, 8, 8)), device="cpu")


def test_fast_mlp_path_equals_vmap_path_and_sequential(monkeypatch):
    """The hand-batched MLP forward (one GEMM for the shared first layer, baddbmm after) and the
    foreach SGD give the vmap path's and the sequential reference's trajectories."""
    import topoland.sampling.engines as sampling

    data = _data(shape=(1, 16))
    mlp = build_model("mlp", data.input_shape, data.num_classes, seed=2, widths=(12, 9))
    seq = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 10, bias=False),
                              torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(10, 7)),
                              torch.nn.ReLU(), torch.nn.Identity(), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    assert sampling._mlp_chain(mlp) is not None
    assert [op for op, _ in sampling._mlp_chain(seq)] == ["flatten", "linear", "relu", "linear",
                                                          "relu", "linear"]
    # BN, convolutions, a Flatten after a Linear, or an unknown container keep the vmap path
    assert sampling._mlp_chain(_trained_bn_model(data, "mlp", widths=(4,))) is None
    assert sampling._mlp_chain(build_model("cnn", data.input_shape, 3, channels=(2, 2), hidden=4)) is None
    assert sampling._mlp_chain(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Flatten())) is None

    class Custom(torch.nn.Sequential):
        pass

    assert sampling._mlp_chain(Custom(torch.nn.Linear(4, 4))) is None
    built = []
    real_forward = sampling._mlp_forward
    monkeypatch.setattr(sampling, "_mlp_forward", lambda chain: built.append(chain) or real_forward(chain))
    kw = dict(SMALL, weight_decay=0.01)
    for model in (mlp, seq):
        fast = jump_and_retrain(model, data, batched=True, **kw)
        assert len(built) == 1 and built.pop() == sampling._mlp_chain(model)  # the fast path ran
        ref = jump_and_retrain(model, data, batched=False, **kw)
        monkeypatch.setattr(sampling, "_FAST_MLP", False)
        slow = jump_and_retrain(model, data, batched=True, **kw)
        monkeypatch.setattr(sampling, "_FAST_MLP", True)
        assert not torch.equal(fast.params[0], fast.params[-1])
        for other in (slow, ref):
            torch.testing.assert_close(fast.params, other.params, rtol=1e-4, atol=1e-5)
            for col in ("train_loss", "val_loss", "test_loss", "train_acc", "val_acc", "test_acc"):
                np.testing.assert_allclose(fast.table[col], other.table[col], rtol=1e-4, atol=1e-5,
                                           err_msg=col)
    # plain SGD (no momentum buffers, no weight decay)
    kw = dict(SMALL, momentum=0.0, weight_decay=0.0)
    a, b = (jump_and_retrain(mlp, data, batched=x, **kw) for x in (True, False))
    torch.testing.assert_close(a.params, b.params, rtol=1e-4, atol=1e-5)
