"""Fast geometric ensembling: schedule, snapshots, batched member outputs, ensemble curve."""
import matplotlib

matplotlib.use("Agg")
import numpy as np
import pytest
import torch

from topoland.train.ensembles import (EnsembleError, _member_probabilities_loop, cyclic_lr, ensemble_curve,
                                fast_geometric_ensemble, member_probabilities)
from topoland.nets.models import build_model
from topoland.nets.params import flatten, get_params
from topoland.plots.ensembles import plot_cyclic_lr, plot_ensemble_curve
from topoland.train.training import TrainRecipe, train_minimum


def test_cyclic_lr_by_hand():
    assert cyclic_lr(0.0, 0.1, 0.01) == pytest.approx(0.1)
    assert cyclic_lr(0.25, 0.1, 0.01) == pytest.approx(0.055)
    assert cyclic_lr(0.5, 0.1, 0.01) == pytest.approx(0.01)
    assert cyclic_lr(0.75, 0.1, 0.01) == pytest.approx(0.055)
    assert cyclic_lr(0.5, 0.1, 0.01, "cosine") == pytest.approx(0.01)
    assert cyclic_lr(0.25, 0.1, 0.01, "cosine") == pytest.approx(0.055)
    assert cyclic_lr(0.0, 0.1, 0.01, "cosine") == pytest.approx(0.1)
    with pytest.raises(EnsembleError, match="schedule"):
        cyclic_lr(0.1, 0.1, 0.01, "step")


def test_ensemble_curve_by_hand():
    # 2 members, 3 samples, 2 classes
    probs = torch.tensor([[[0.9, 0.1], [0.4, 0.6], [0.3, 0.7]],
                          [[0.6, 0.4], [0.8, 0.2], [0.45, 0.55]]])
    y = torch.tensor([0, 0, 0])
    df = ensemble_curve(probs, y)
    assert list(df["members"]) == [1, 2]
    assert df["member_acc"].tolist() == pytest.approx([1 / 3, 2 / 3])
    # average: [0.75, 0.25], [0.6, 0.4], [0.375, 0.625] -> 2 of 3 right
    assert df["ensemble_acc"].tolist() == pytest.approx([1 / 3, 2 / 3])
    assert df["ensemble_nll"].iloc[1] == pytest.approx(-np.mean(np.log([0.75, 0.6, 0.375])))
    assert df["mean_member_acc"].tolist() == pytest.approx([1 / 3, 0.5])


def test_fge_snapshots_at_lowest_rate_and_batched_probs_match_loop(tiny_data):
    model = build_model("mlp", tiny_data.input_shape, tiny_data.num_classes, widths=(16,), batchnorm=True, seed=0)
    train_minimum(model, tiny_data, TrainRecipe(lr=0.05, epochs=3, batch_size=32), device="cpu")
    start = flatten(get_params(model))
    res = fast_geometric_ensemble(model, tiny_data, cycles=3, cycle_epochs=2, lr1=0.05, lr2=0.001,
                                  batch_size=32, seed=0, device="cpu")
    h = res.history
    assert res.snapshots.shape == (3, start.numel())
    assert h["snapshot"].sum() == 3
    for c in range(3):
        cyc = h[h["cycle"] == c]
        assert cyc.loc[cyc["snapshot"], "lr"].iloc[0] == pytest.approx(cyc["lr"].min())
        assert cyc["lr"].iloc[0] == pytest.approx(0.05)
    assert not torch.equal(res.snapshots[0], res.snapshots[1])
    assert (res.snapshots - start).norm(dim=1).max() > 0
    assert set(res.buffers) and res.buffers[next(iter(res.buffers))].shape[0] == 3
    x, y = tiny_data.x_test, tiny_data.y_test
    probs = member_probabilities(model, res.snapshots, x, buffers=res.buffers, batch_size=50, device="cpu")
    ref = _member_probabilities_loop(model, res.snapshots, x, buffers=res.buffers)
    assert probs.shape == (3, len(y), tiny_data.num_classes)
    assert torch.allclose(probs, ref, atol=1e-5)
    curve = ensemble_curve(probs, y)
    assert curve["ensemble_acc"].iloc[-1] > 0.7
    ax = plot_ensemble_curve(curve)
    plot_cyclic_lr(h)
    assert ax.get_xlabel() == "members"
    with pytest.raises(EnsembleError, match="lr2"):
        fast_geometric_ensemble(model, tiny_data, lr1=0.01, lr2=0.1)
