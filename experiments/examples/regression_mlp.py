"""A regression MLP through the whole pipeline, from a config with user factories.

The factories this module holds are named by ``regression_mlp.toml`` beside it:

* ``make_data``: a noisy smooth function of a few inputs, ``y = sin(2 x_1) + 0.5 x_2^2 - x_3 x_4``
  plus Gaussian noise, as float targets ``(N, 1)`` (``DataSplits.task == "regression"``);
* ``make_model``: an MLP ``(N, features) -> (N, 1)``;
* ``mae``: a per-sample metric, recorded by every stage (``[train.metrics]``);
* ``huber``: a per-sample Huber loss ``(output, target) -> (N,)`` (``train.loss =
  "regression_mlp:huber"`` selects it instead of ``"mse"``).

Run it from the repository root (the module must be importable, so its folder goes on
``PYTHONPATH``; importing it runs this file, your own code)::

    PYTHONPATH=experiments/examples topoland run experiments/examples/regression_mlp.toml

or ``python experiments/examples/regression_mlp.py [--out DIR]``, which does the same.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent


def target_function(x: torch.Tensor) -> torch.Tensor:
    """The noiseless regression function of ``x (N, F >= 4)``: ``(N, 1)``."""
    return (torch.sin(2 * x[:, 0]) + 0.5 * x[:, 1] ** 2 - x[:, 2] * x[:, 3])[:, None]


def make_data(n_train: int = 512, n_val: int = 128, n_test: int = 512, features: int = 6,
              noise: float = 0.1, seed: int = 0):
    """``DataSplits`` of ``target_function`` plus Gaussian noise of std ``noise``; inputs standard
    normal ``(N, features)``; float targets ``(N, 1)``. ``seed`` is the run seed."""
    from topoland.data import DataSplits
    if features < 4:
        raise ValueError(f"features must be >= 4 (the function reads 4 inputs), got {features}")
    g = torch.Generator().manual_seed(int(seed))

    def draw(n):
        x = torch.randn(n, features, generator=g)
        return x, target_function(x) + noise * torch.randn(n, 1, generator=g)

    return DataSplits.from_tensors(train=draw(n_train), val=draw(n_val), test=draw(n_test),
                                   name="regression_mlp")


def make_model(input_shape, num_classes, width: int = 32, depth: int = 2):
    """An MLP ``(N, *input_shape) -> (N, num_classes)`` (``num_classes``: the number of target
    values per sample, 1 here) with ``depth`` hidden ReLU layers of ``width``."""
    layers, n_in = [nn.Flatten()], math.prod(input_shape)
    for _ in range(depth):
        layers += [nn.Linear(n_in, width), nn.ReLU()]
        n_in = width
    layers.append(nn.Linear(n_in, num_classes))
    return nn.Sequential(*layers)


def huber(output: torch.Tensor, target: torch.Tensor, delta: float = 1.0) -> torch.Tensor:
    """Per-sample Huber loss, averaged over the output's values: ``(N,)``."""
    err = (output - target).abs()
    quad = torch.clamp(err, max=delta)
    return (0.5 * quad ** 2 + delta * (err - quad)).reshape(len(err), -1).mean(1)


def mae(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample mean absolute error: ``(N,)`` (``[train.metrics] mae = "regression_mlp:mae"``)."""
    return (output - target).abs().reshape(len(output), -1).mean(1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(HERE / "regression_mlp.toml"))
    ap.add_argument("--out", default=None, help="run directory (default: runs/<run.name>)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(HERE))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    from topoland.cli.main import main as cli
    return cli(["run", args.config, *(["--out", args.out] if args.out else [])])


if __name__ == "__main__":
    raise SystemExit(main())
