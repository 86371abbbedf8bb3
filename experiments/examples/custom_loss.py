"""A custom per-sample loss in training and in jump-and-retrain sampling.

Shows how to pass your own objective as ``loss=``: a callable ``(logits, target) -> (N,)``
returning one loss value per sample (here label-smoothed cross-entropy written by hand). The
same callable trains a minimum with ``tl.train_minimum`` (the recorded losses are this
objective; accuracy is still tracked because the targets are class indices) and retrains the
jumps of ``tl.jump_and_retrain``. A loss returning the wrong shape (here the batch mean, a
scalar) is refused up front with a clear error, which the script catches and prints.

Data: the built-in synthetic set (``tl.load_dataset("synthetic")``, generated, nothing
downloaded); model: a small MLP from ``tl.build_model``.

Run::

    python experiments/examples/custom_loss.py
    python experiments/examples/custom_loss.py --epochs 2 --directions 1 --sample-epochs 1
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import topoland as tl
from topoland.errors import ConfigError


def make_smoothed_ce(smoothing: float):
    """Label-smoothed cross-entropy, per sample: (logits (N, C), target (N,) int) -> (N,)."""

    def smoothed_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits, dim=-1)
        nll = -logp.gather(-1, target.long().unsqueeze(-1)).squeeze(-1)
        uniform = -logp.mean(dim=-1)
        return (1.0 - smoothing) * nll + smoothing * uniform

    return smoothed_ce


def mean_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Wrong on purpose: returns the batch mean (a scalar), not one value per sample."""
    return F.cross_entropy(logits, target)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoothing", type=float, default=0.1)
    p.add_argument("--n-train", type=int, default=256)
    p.add_argument("--epochs", type=int, default=10, help="training epochs of the minimum")
    p.add_argument("--directions", type=int, default=2)
    p.add_argument("--sample-epochs", type=int, default=3, help="retraining epochs per jump")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    data = tl.load_dataset("synthetic", seed=args.seed,
                           synthetic={"n_train": args.n_train, "n_test": max(16, args.n_train // 2)})
    loss = make_smoothed_ce(args.smoothing)
    model = _model(data)

    recipe = tl.TrainRecipe(lr=0.05, epochs=args.epochs, batch_size=32, milestones=())
    res = tl.train_minimum(model, data, recipe, seed=args.seed, device="cpu", loss=loss)
    m = res.metrics
    print(f"train_minimum with loss {loss.__name__!r} (smoothing {args.smoothing}): "
          + ", ".join(f"{k}={m[k]:.4f}" for k in ("train_loss", "train_acc", "test_loss", "test_acc")
                      if k in m))

    samples = tl.jump_and_retrain(model, data, directions=args.directions, steps=(0.5, 1.0),
                                  epochs=args.sample_epochs, batch_size=32, lr=0.01,
                                  seed=args.seed, device="cpu", loss=loss)
    n_records = len(samples.table)
    print(f"jump_and_retrain with the same loss: {n_records} records "
          f"({args.directions} directions x 2 steps x {1 + args.sample_epochs} records); "
          f"config loss = {samples.config.get('loss')!r}")

    error = None
    try:
        tl.train_minimum(_model(data), data, recipe.replace(epochs=1), device="cpu", loss=mean_ce)
    except ConfigError as e:
        error = str(e)
        print(f"wrong-shape loss refused: {error}")
    return {"metrics": dict(m), "n_records": n_records, "table": samples.table, "error": error}


def _model(data):
    return tl.build_model("mlp", input_shape=tuple(data.x_train.shape[1:]),
                          num_classes=data.num_classes)


if __name__ == "__main__":
    main()
