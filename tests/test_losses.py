"""Any loss: named losses, user callables (checked once), regression without accuracy, and the
same callable in both jump-and-retrain engines."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from topoland.data import DataSplits
from topoland.errors import ConfigError
from topoland.nets.losses import LOSSES, config_loss_check, is_classification, resolve_loss, tracks_accuracy
from topoland.nets.models import build_model
from topoland.sampling.engines import _Loss
from topoland.sampling.sampler import jump_and_retrain
from topoland.sampling.storage import TABLE_COLUMNS
from topoland.train.training import TrainRecipe, train_minimum


pytestmark = pytest.mark.usefixtures("one_thread")


def _classes(n_train=60, n_val=16, n_test=20, features=8, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = 2.0 * torch.randn(classes, features, generator=g)

    def draw(n):
        y = torch.randint(0, classes, (n,), generator=g)
        return centres[y] + torch.randn(n, features, generator=g), y

    (xtr, ytr), (xva, yva), (xte, yte) = draw(n_train), draw(n_val), draw(n_test)
    return DataSplits("toy", xtr, ytr, xva, yva, xte, yte, (features,), classes, "vector", ytr.clone())


def _regression(n_train=64, n_val=16, n_test=16, features=6, outputs=2, seed=0):
    """y = x W + noise, float targets (N, outputs): a DataSplits built directly."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(features, outputs, generator=g)

    def draw(n):
        x = torch.randn(n, features, generator=g)
        return x, x @ w + 0.05 * torch.randn(n, outputs, generator=g)

    (xtr, ytr), (xva, yva), (xte, yte) = draw(n_train), draw(n_val), draw(n_test)
    return DataSplits("reg", xtr, ytr, xva, yva, xte, yte, (features,), outputs, "vector", ytr.clone())


def my_cross_entropy(output, target):
    return F.cross_entropy(output, target, reduction="none")


RECIPE = TrainRecipe(lr=0.05, momentum=0.9, weight_decay=0.0, batch_size=16, epochs=3, milestones=())


def _train(data, loss, recipe=RECIPE, seed=0):
    model = build_model("mlp", data.input_shape, data.num_classes, seed=1, widths=(12,))
    return train_minimum(model, data, recipe, seed=seed, device="cpu", loss=loss)


def test_named_losses_are_per_sample():
    out, y = torch.randn(5, 3), torch.tensor([0, 2, 1, 1, 0])
    for name in ("cross_entropy", "nll"):
        assert LOSSES[name](out.log_softmax(1), y).shape == (5,)
    torch.testing.assert_close(LOSSES["cross_entropy"](out, y), LOSSES["nll"](out.log_softmax(1), y))
    t = torch.randn(5, 3)
    torch.testing.assert_close(LOSSES["mse"](out, t), ((out - t) ** 2).mean(1))
    torch.testing.assert_close(LOSSES["l1"](out, t), (out - t).abs().mean(1))
    assert is_classification("nll") and not is_classification("mse")
    assert tracks_accuracy("custom", y) and not tracks_accuracy("custom", t)


def test_callable_equal_to_named_gives_the_same_train_tables():
    data = _classes()
    a, b = _train(data, "cross_entropy"), _train(data, my_cross_entropy)
    # the named loss keeps torch's fused mean (results of the cross-entropy-only code); the
    # callable's mean of per-sample values agrees to float rounding
    pd.testing.assert_frame_equal(a.history, b.history, rtol=1e-5)
    pd.testing.assert_frame_equal(pd.DataFrame([a.metrics]), pd.DataFrame([b.metrics]), rtol=1e-5)
    assert "train_acc" in b.metrics and "acc" in b.history


def test_recipe_loss_and_nll():
    data = _classes()
    a = _train(data, None, recipe=RECIPE.replace(loss="cross_entropy"))
    ref = _train(data, "cross_entropy")
    pd.testing.assert_frame_equal(a.history, ref.history, check_exact=True)
    log_softmax_mlp = build_model("mlp", data.input_shape, data.num_classes, seed=1, widths=(12,))
    model = torch.nn.Sequential(log_softmax_mlp, torch.nn.LogSoftmax(1))
    res = train_minimum(model, data, RECIPE, seed=0, device="cpu", loss="nll")
    np.testing.assert_allclose(res.history["loss"], ref.history["loss"], rtol=1e-5)


def test_mse_regression_records_loss_without_accuracy():
    data = _regression()
    res = _train(data, "mse", recipe=RECIPE.replace(epochs=8, lr=0.02))
    assert not any(k.endswith("acc") or k == "acc_gap" for k in res.metrics)
    assert list(res.history.columns) == ["epoch", "phase", "lr", "loss", "val_loss", "finite"]
    assert res.history["loss"].iloc[-1] < res.history["loss"].iloc[0]
    assert math.isfinite(res.metrics["test_loss"]) and res.metrics["gap"] == pytest.approx(
        res.metrics["test_loss"] - res.metrics["train_loss"])
    l1 = _train(data, "l1", recipe=RECIPE.replace(epochs=2, target_loss=1e-9))
    assert "train_acc" not in l1.history and "train_loss" in l1.history
    with pytest.raises(ConfigError, match="target_acc"):
        _train(data, "mse", recipe=RECIPE.replace(target_acc=0.5))


def test_wrong_shape_callable_gets_one_message_naming_shapes():
    with pytest.raises(ConfigError, match=r"loss 'custom' returned shape \(2, 3\) for output \(2, 3\) and "
                                          r"target \(2,\): it must return one value per sample, shape \(2,\)"):
        _train(_classes(), lambda out, y: F.cross_entropy(out, y, reduction="none")[:, None].expand(-1, 3))
    with pytest.raises(ConfigError, match=r"returned shape \(\)"):
        resolve_loss(lambda out, y: F.cross_entropy(out, y), output=torch.randn(2, 3),
                     target=torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match=r"'mse' needs a target of the output's shape"):
        _train(_classes(), "mse")


def test_unknown_loss_name_lists_the_known_ones():
    for bad in (lambda: TrainRecipe(loss="hinge"), lambda: resolve_loss("hinge"),
                lambda: _train(_classes(), "hinge")):
        with pytest.raises(ConfigError, match="unknown loss 'hinge'; known losses: cross_entropy, nll, mse, l1"):
            bad()
    assert config_loss_check("nll") is None and config_loss_check("mse") is None
    assert config_loss_check("my_pkg.losses:huber") is None
    assert "'cross_entropy'" in config_loss_check("hinge") and "package.module:function" in config_loss_check("a:b:c")


SMALL = dict(directions=2, steps=(0.5, 1.0), epochs=1, batch_size=16, lr=0.05,
             records_per_epoch=2, eval_batch_size=32, device="cpu")


def test_jump_and_retrain_callable_equals_named():
    data = _classes()
    model = build_model("mlp", data.input_shape, data.num_classes, seed=1, widths=(10,))
    a = jump_and_retrain(model, data, batched=True, **SMALL)
    b = jump_and_retrain(model, data, batched=True, loss=my_cross_entropy, **SMALL)
    pd.testing.assert_frame_equal(a.table, b.table)
    c = jump_and_retrain(model, data, batched=False, loss=my_cross_entropy, **SMALL)
    pd.testing.assert_frame_equal(b.table, c.table, rtol=1e-4, atol=1e-5)
    assert "loss" not in a.config and b.config["loss"] == "my_cross_entropy"


def test_jump_and_retrain_regression_and_vmap_error():
    data = _regression()
    model = build_model("mlp", data.input_shape, data.num_classes, seed=1, widths=(10,))
    a = jump_and_retrain(model, data, batched=True, loss="mse", **SMALL)
    b = jump_and_retrain(model, data, batched=False, loss="mse", **SMALL)
    assert list(a.table.columns) == list(TABLE_COLUMNS) and a.table["train_acc"].isna().all()
    pd.testing.assert_frame_equal(a.table, b.table, rtol=1e-4, atol=1e-5)

    def not_vmappable(out, y):  # .item() cannot run under vmap
        return (out - y).square().mean(1) * float((out - y).abs().max().item() > -1)

    with pytest.raises(ConfigError, match="vmap-compatible loss.*batched=False"):
        jump_and_retrain(model, data, batched=True, loss=not_vmappable, **SMALL)
    c = jump_and_retrain(model, data, batched=False, loss=not_vmappable, **SMALL)
    pd.testing.assert_frame_equal(b.table, c.table, rtol=1e-5)
    assert _Loss("mse", LOSSES["mse"], False).single(torch.zeros(3, 2), torch.ones(3, 2)).tolist() == [1, 1, 1]


def abs_error(out, y):
    return (out - y).abs().mean(1)


def test_jump_and_retrain_records_user_metrics_in_both_engines(tmp_path):
    from topoland.sampling.storage import load_samples, save_samples
    data = _regression()
    model = build_model("mlp", data.input_shape, data.num_classes, seed=1, widths=(10,))
    a = jump_and_retrain(model, data, batched=True, loss="mse", metrics={"mae": abs_error}, **SMALL)
    b = jump_and_retrain(model, data, batched=False, loss="mse", metrics=[abs_error], **SMALL)
    extra = [f"{s}_{m}" for s in ("train", "val", "test") for m in ("mae",)]
    assert list(a.table.columns) == [*TABLE_COLUMNS, *extra] and a.config["metrics"] == ["mae"]
    assert list(b.table.columns) == [*TABLE_COLUMNS, "train_abs_error", "val_abs_error", "test_abs_error"]
    np.testing.assert_allclose(a.table["train_mae"], b.table["train_abs_error"], rtol=1e-4, atol=1e-5)
    # the jump point (epoch 0) of trajectory 0, by hand
    from topoland.nets.params import param_names, unflatten
    m = build_model("mlp", data.input_shape, data.num_classes, seed=1, widths=(10,))
    with torch.no_grad():
        for k, v in unflatten(torch.as_tensor(a.params[0]).float(), m, param_names(m)).items():
            m.get_parameter(k).copy_(v)
        m.eval()
        want = float((m(data.x_test) - data.y_test).abs().mean())
    assert math.isclose(a.table["test_mae"].iloc[0], want, rel_tol=1e-5)
    save_samples(a, tmp_path / "s")
    pd.testing.assert_frame_equal(load_samples(tmp_path / "s").table, a.table)
    with pytest.raises(ConfigError, match="metric 'accuracy' needs integer class-index targets"):
        jump_and_retrain(model, data, loss="mse", metrics=["accuracy"], **SMALL)
    with pytest.raises(ConfigError, match="would overwrite"):
        jump_and_retrain(model, data, loss="mse", metrics={"acc": abs_error}, **SMALL)
