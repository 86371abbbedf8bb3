"""Training: schedule, recipe checks, CPU determinism, divergence, pretraining, snapshots."""
import math

import pytest
import torch
from torch import nn

from topoland.errors import ConfigError
from topoland.nets.models import build_model
from topoland.train.training import (REFERENCE_RECIPE, TrainRecipe, evaluate_model, lr_at, make_optimizer,
                            train_minimum)


def test_reference_schedule():
    r = REFERENCE_RECIPE
    assert (r.lr, r.momentum, r.epochs, r.batch_size, r.augment) == (0.1, 0.9, 200, 128, True)
    # lr x0.1 at epochs 100, 150, 185 (0-based epoch index of the first epoch at the new rate)
    assert [lr_at(e, r) for e in (0, 99)] == [0.1, 0.1]
    assert lr_at(100, r) == pytest.approx(0.01) and lr_at(149, r) == pytest.approx(0.01)
    assert lr_at(150, r) == pytest.approx(1e-3) and lr_at(184, r) == pytest.approx(1e-3)
    assert lr_at(185, r) == pytest.approx(1e-4) and lr_at(199, r) == pytest.approx(1e-4)
    assert lr_at(50, TrainRecipe(milestones=())) == 0.1


def test_recipe_validation_names_the_field():
    for key, value in [("weight_decay", -1e-4), ("lr", 0.0), ("batch_size", 0), ("epochs", -1),
                       ("momentum", 1.5), ("milestones", (0.75, 0.5)), ("milestones", ["a"]),
                       ("lr", True), ("optimizer", "lbfgs")]:
        with pytest.raises(ConfigError, match=key):
            TrainRecipe(**{key: value})
    opt = make_optimizer(nn.Linear(2, 2).parameters(), TrainRecipe(lr=0.05, weight_decay=1e-3))
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["lr"] == 0.05 and opt.param_groups[0]["weight_decay"] == 1e-3


def _train(data, recipe, seed=0, model_seed=0, **kw):
    model = build_model("cnn", data.input_shape, data.num_classes, channels=(4, 8), hidden=16,
                        batchnorm=True, seed=model_seed)
    return model, train_minimum(model, data, recipe, seed=seed, device="cpu", **kw)


def test_cpu_determinism_bit_for_bit(tiny_image_data):
    recipe = TrainRecipe(lr=0.05, epochs=3, batch_size=16, augment=True, weight_decay=1e-3)
    _, a = _train(tiny_image_data, recipe)
    _, b = _train(tiny_image_data, recipe)
    assert a.params.keys() == b.params.keys() and a.buffers.keys() == b.buffers.keys()
    assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)
    assert all(torch.equal(a.buffers[k], b.buffers[k]) for k in a.buffers)
    assert a.metrics == b.metrics
    assert a.history.equals(b.history)
    _, c = _train(tiny_image_data, recipe, seed=1)              # another minibatch order
    assert not all(torch.equal(a.params[k], c.params[k]) for k in a.params)


def test_training_learns_and_reports(tiny_data):
    model = build_model("mlp", tiny_data.input_shape, tiny_data.num_classes, widths=(16,))
    calls = []
    res = train_minimum(model, tiny_data, TrainRecipe(lr=0.05, epochs=4, batch_size=32), device="cpu",
                        progress=lambda e, n, row: calls.append((e, n, row["phase"])))
    assert calls == [(e, 4, "train") for e in range(1, 5)]
    assert not res.diverged and res.metrics["diverged"] == 0.0
    assert res.metrics["train_acc"] > 0.9 and res.metrics["test_acc"] > 0.9   # separated blobs
    assert list(res.history["lr"]) == pytest.approx([0.05, 0.05, 0.005, 0.0005])  # 0.5, 0.75 -> 2, 3
    assert res.metrics["gap"] == res.metrics["test_loss"] - res.metrics["train_loss"]
    assert res.metrics["acc_gap"] == res.metrics["train_acc"] - res.metrics["test_acc"]
    assert set(res.params) == {k for k, _ in model.named_parameters()}
    assert not model.training


def test_evaluate_model_matches_per_sample_loop(tiny_data):
    model = build_model("mlp", tiny_data.input_shape, tiny_data.num_classes, widths=(8,), batchnorm=True, seed=5)
    model.train()
    with torch.no_grad():                       # non-trivial running stats, so eval mode matters
        model(tiny_data.x_train * 2 + 1)
    out = evaluate_model(model, tiny_data, "cpu")
    assert model.training                        # mode restored
    model.eval()
    torch.set_grad_enabled(False)
    try:
        _check_against_loop(model, tiny_data, out)
    finally:
        torch.set_grad_enabled(True)


def _check_against_loop(model, tiny_data, out):
    for split in ("train", "val", "test"):
        x, y = tiny_data.split(split)
        losses, correct = [], 0
        for i in range(len(y)):
            logits = model(x[i:i + 1])[0]
            losses.append(float(-torch.log_softmax(logits.double(), 0)[y[i]]))
            correct += int(logits.argmax()) == int(y[i])
        assert out[f"{split}_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-5)
        assert out[f"{split}_acc"] == correct / len(y)


def test_divergence_is_recorded_not_raised(tiny_data):
    model = build_model("mlp", tiny_data.input_shape, tiny_data.num_classes, widths=(16,))
    res = train_minimum(model, tiny_data, TrainRecipe(lr=1e30, momentum=0.0, epochs=3, batch_size=32),
                        device="cpu")
    assert res.diverged and res.metrics["diverged"] == 1.0
    assert not bool(res.history["finite"].iloc[-1])
    assert res.metrics["epochs_run"] <= 3


def test_label_noise_metrics_and_random_label_pretraining(tiny_data):
    from topoland.data import load_dataset
    noisy = load_dataset("synthetic", seed=0, label_noise=0.4)
    recipe = TrainRecipe(lr=0.05, epochs=2, batch_size=32, pretrain_random_epochs=2)
    model = build_model("mlp", noisy.input_shape, noisy.num_classes, widths=(16,))
    res = train_minimum(model, noisy, recipe, device="cpu")
    assert list(res.history["phase"]) == ["random", "random", "train", "train"]
    assert list(res.history["lr"]) == pytest.approx([0.05, 0.05, 0.05, 0.005])
    assert res.metrics["train_clean_acc"] != res.metrics["train_acc"]
    plain = train_minimum(build_model("mlp", noisy.input_shape, noisy.num_classes, widths=(16,)), noisy,
                          recipe.replace(pretrain_random_epochs=0), device="cpu")
    assert not torch.equal(res.params["net.1.weight"], plain.params["net.1.weight"])


def test_checkpoint_snapshots(tiny_data):
    model = build_model("mlp", tiny_data.input_shape, tiny_data.num_classes, widths=(4,))
    init = torch.cat([p.detach().flatten() for p in model.parameters()])
    res = train_minimum(model, tiny_data, TrainRecipe(lr=0.05, epochs=2, batch_size=64, checkpoints_per_epoch=3),
                        device="cpu")
    d = init.numel()
    assert res.checkpoints.shape == (1 + 2 * 3, d)
    assert torch.equal(res.checkpoints[0], init)
    final = torch.cat([res.params[k].flatten() for k, _ in model.named_parameters()])
    assert torch.equal(res.checkpoints[-1], final)
    assert all(not torch.equal(res.checkpoints[i], res.checkpoints[i + 1]) for i in range(6))
    none = train_minimum(model, tiny_data, TrainRecipe(epochs=1), device="cpu")
    assert none.checkpoints is None and math.isfinite(none.metrics["train_loss"])


def test_target_met_needs_every_set_target():
    from topoland.train.training import target_met
    both = TrainRecipe(target_loss=0.1, target_acc=0.9)
    assert target_met(both, 0.05, 0.95) and target_met(both, 0.1, 0.9)
    assert not target_met(both, 0.2, 0.95) and not target_met(both, 0.05, 0.8)
    assert target_met(TrainRecipe(target_loss=0.1), 0.05, 0.0)            # accuracy not asked for
    assert target_met(TrainRecipe(target_acc=0.9), 5.0, 0.95)             # loss not asked for
    assert not target_met(TrainRecipe(target_loss=0.1), float("nan"), 1.0)
    assert not target_met(TrainRecipe(), 0.0, 1.0)                        # no target at all
    for key, value in [("target_loss", -0.1), ("target_acc", 1.5), ("target_acc", True)]:
        with pytest.raises(ConfigError, match=key):
            TrainRecipe(**{key: value})
    with pytest.raises(ConfigError, match="swa"):
        TrainRecipe(optimizer="swa", target_acc=0.9)


def test_training_stops_at_the_first_epoch_meeting_the_target(tiny_data):
    def fit(**kw):
        model = build_model("mlp", tiny_data.input_shape, tiny_data.num_classes, widths=(16,), seed=0)
        return train_minimum(model, tiny_data, TrainRecipe(lr=0.01, epochs=40, batch_size=32, milestones=(), **kw),
                             device="cpu")
    free = fit(target_loss=1e-9)          # never met: the whole budget, with the tested values per epoch
    assert free.reached_target is False and free.metrics["reached_target"] == 0.0
    assert free.metrics["stop_epoch"] == 40 and len(free.history) == 40
    target = float(free.history["train_loss"].iloc[9])      # the eval-mode train loss after epoch 10
    first = int((free.history["train_loss"] <= target).to_numpy().argmax()) + 1
    res = fit(target_loss=target)
    assert res.reached_target is True and res.metrics["reached_target"] == 1.0
    assert res.metrics["stop_epoch"] == first == len(res.history) <= 10
    # the same iterate: the training stopped there, and its final metrics are the tested values
    assert res.metrics["train_loss"] == pytest.approx(float(res.history["train_loss"].iloc[-1]), rel=1e-12)
    assert res.metrics["train_loss"] <= target
    assert res.history["train_loss"].iloc[:-1].gt(target).all()
    plain = fit()                          # no target: no extra columns, no flag, the whole budget
    assert plain.reached_target is None and "reached_target" not in plain.metrics
    assert "train_loss" not in plain.history and plain.metrics["stop_epoch"] == 40


def test_a_minimum_that_misses_its_target_is_flagged(tiny_data):
    model = build_model("mlp", tiny_data.input_shape, tiny_data.num_classes, widths=(16,))
    res = train_minimum(model, tiny_data, TrainRecipe(lr=0.01, epochs=2, batch_size=32, target_acc=1.0,
                                                      target_loss=1e-6, pretrain_random_epochs=1), device="cpu")
    assert res.reached_target is False and res.metrics["reached_target"] == 0.0
    assert res.metrics["stop_epoch"] == 2 and res.metrics["epochs_run"] == 3   # pretraining is not checked
    assert list(res.history["phase"]) == ["random", "train", "train"]
    assert res.history["train_loss"].iloc[1:].gt(1e-6).all()
