"""Loss patterns: masks, plane geometry, batched cell losses vs loop, and a learned half-plane mask."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
import torch

from topoland.landscape.patterns import (LossPatternFitter, PatternError, _cell_losses, _cell_losses_loop,
                                         cell_coordinates, gram_schmidt_, load_mask, pattern_gap, plane_points,
                                         random_mask)
from topoland.nets.models import build_model
from topoland.plots.patterns import plot_mask, plot_pattern, plot_pattern_gap
from topoland.train.training import TrainRecipe, train_minimum


@pytest.fixture(scope="module")
def trained(tiny_data):
    out = {}
    for bn in (False, True):
        m = build_model("mlp", tiny_data.input_shape, tiny_data.num_classes, widths=(16,), batchnorm=bn, seed=0)
        train_minimum(m, tiny_data, TrainRecipe(lr=0.05, epochs=3, batch_size=32), device="cpu")
        out[bn] = m
    return out


def test_load_mask_downsamples_by_area_and_reads_png(tmp_path):
    pic = np.zeros((6, 6))
    pic[:, 3:] = 1.0            # right half bright
    pic[0:3, 0:3] = 0.6         # top-left block averages to 0.6 -> high at threshold 0.5
    m = load_mask(pic, (2, 2))
    assert m.tolist() == [[True, True], [False, True]]
    assert load_mask(pic, (2, 2), invert=True).tolist() == [[False, False], [True, False]]
    path = tmp_path / "pic.png"
    mpimg.imsave(path, np.stack([pic] * 3, -1))
    assert load_mask(path, (2, 2)).tolist() == m.tolist()
    with pytest.raises(PatternError, match="does not exist"):
        load_mask(tmp_path / "missing.png")
    r = random_mask((40, 40), 0.3, seed=0)
    assert r.dtype == bool and abs(r.mean() - 0.3) < 0.05 and np.array_equal(r, random_mask((40, 40), 0.3, 0))


def test_plane_geometry():
    c = cell_coordinates((2, 3))
    assert c.tolist() == [[-1, 1], [0, 1], [1, 1], [-1, -1], [0, -1], [1, -1]]
    o, r, u = torch.tensor([1.0, 0, 0]), torch.tensor([0, 2.0, 0]), torch.tensor([0, 0, 3.0])
    p = plane_points(o, r, u, 0.5, c)
    assert torch.allclose(p[0], torch.tensor([1.0, -1.0, 1.5])) and torch.allclose(p[5], torch.tensor([1.0, 1.0, -1.5]))
    r, u = torch.tensor([3.0, 4.0, 0.0]), torch.tensor([1.0, 1.0, 1.0])
    gram_schmidt_(r, u)
    assert float(r @ u) == pytest.approx(0.0, abs=1e-6) and float(u.norm()) == pytest.approx(5.0)
    # by hand: u - (7/25) r = (0.16, -0.12, 1), rescaled to norm 5
    v = torch.tensor([0.16, -0.12, 1.0])
    assert torch.allclose(u, v * 5 / v.norm(), atol=1e-6)


@pytest.mark.parametrize("bn", [False, True])
def test_batched_cell_losses_match_the_loop(trained, tiny_data, bn):
    m = trained[bn]
    g = torch.Generator().manual_seed(0)
    d = sum(p.numel() for p in m.parameters())
    pts = torch.cat([p.detach().reshape(-1) for p in m.parameters()]) + 0.3 * torch.randn(5, d, generator=g)
    xb, yb = tiny_data.x_train[:40], tiny_data.y_train[:40]
    a = _cell_losses(m, pts, xb, yb, train=bn)
    b = _cell_losses_loop(m, pts, xb, yb, train=bn)
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("bn", [False, True])
def test_half_plane_mask_is_learned(trained, tiny_data, bn):
    m = trained[bn]
    before = {k: v.clone() for k, v in m.state_dict().items()}
    mask = np.zeros((4, 6), bool)
    mask[:, 3:] = True          # right half high
    f = LossPatternFitter(steps=120, lr=0.02, cells_per_step=8, batch_size=64, init_scale=0.5, seed=0,
                          device="cpu").fit(m, tiny_data.x_train, tiny_data.y_train, mask)
    h = f.history_
    assert len(h) == 120
    assert h["cos"].abs().max() < 1e-6 and (h["norm_ratio"] - 1).abs().max() < 1e-6
    r, u = f.right_.double(), f.up_.double()
    assert abs(float(r @ u / (r.norm() * u.norm()))) < 1e-6
    grids = f.evaluate(m, tiny_data.x_train, tiny_data.y_train, device="cpu")
    assert grids["loss"].shape == (4, 6)
    gap = pattern_gap(grids, mask)
    assert gap["high_loss"] > gap["low_loss"] + 2.0
    assert gap["acc_gap"] > 0.3 and gap["low_acc"] > 0.8
    # the model's own weights are not touched
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2)
    plot_mask(mask, ax=axes[0])
    assert plot_pattern(grids["loss"], mask, ax=axes[1]) is axes[1]
    plt.close(fig)


def test_pattern_gap_by_hand_and_errors():
    mask = np.array([[True, False], [False, False]])
    grids = {"loss": np.array([[3.0, 1.0], [0.5, 0.0]]), "accuracy": np.array([[0.1, 0.9], [0.8, 1.0]])}
    g = pattern_gap(grids, mask)
    assert g["high_loss"] == 3.0 and g["low_loss"] == pytest.approx(0.5)
    assert g["acc_gap"] == pytest.approx(0.9 - 0.1)
    with pytest.raises(PatternError, match="both"):
        LossPatternFitter()._check(np.ones((2, 2), bool))
    table = pd.DataFrame({"fill": [0.1, 0.1, 0.5, 0.5], "batchnorm": [False, True, False, True],
                          "acc_gap": [0.5, 0.2, 0.4, 0.1]})
    ax = plot_pattern_gap(table)
    assert ax.get_xlabel() == "mask fill probability"
