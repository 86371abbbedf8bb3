"""ResNet-18 (torchvision, random init) on small random tensors: sampling, a plane, curvature.

Shows that a stock torchvision model with BatchNorm goes through the topoland API unchanged:
the tensors are wrapped with ``tl.DataSplits.from_tensors``, then

* ``tl.jump_and_retrain`` jumps away from the (untrained) weights along random directions and
  retrains each jump for a few epochs (the sample table has one row per snapshot);
* ``tl.random_plane`` evaluates the training loss on a small 2-D grid of two random
  filter-normalized directions;
* ``tl.hvp_fn`` + ``tl.top_eigenvalues`` give the top Hessian eigenvalue (a few Lanczos steps on
  a small subset).

No weights or data are downloaded (``weights=None``; the images and labels are random).

Run::

    python experiments/examples/resnet18_tensors.py            # defaults
    python experiments/examples/resnet18_tensors.py --n-train 16 --grid 3 --lanczos-iters 3
"""
from __future__ import annotations

import argparse

import torch
import torchvision

import topoland as tl


def _tensors(n: int, size: int, num_classes: int, g: torch.Generator):
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.randint(0, num_classes, (n,), generator=g)
    return x, y


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-train", type=int, default=48)
    p.add_argument("--n-eval", type=int, default=16, help="samples in each of val and test")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--directions", type=int, default=2)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--grid", type=int, default=3)
    p.add_argument("--lanczos-iters", type=int, default=5)
    p.add_argument("--hessian-samples", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    num_classes = 10
    data = tl.DataSplits.from_tensors(
        train=_tensors(args.n_train, args.image_size, num_classes, g),
        val=_tensors(args.n_eval, args.image_size, num_classes, g),
        test=_tensors(args.n_eval, args.image_size, num_classes, g),
        name="random_tensors", num_classes=num_classes)
    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    n_params = sum(q.numel() for q in model.parameters() if q.requires_grad)
    print(f"ResNet-18: {n_params} trainable parameters; train {tuple(data.x_train.shape)}")

    samples = tl.jump_and_retrain(model, data, directions=args.directions, steps=(0.5,),
                                  epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                                  eval_batch_size=64, device="cpu")
    table = samples.table
    print(f"jump_and_retrain: sample table shape {table.shape}; "
          f"train_loss {table['train_loss'].min():.4f} .. {table['train_loss'].max():.4f}")

    model.eval()
    plane = tl.random_plane(model, data.x_train, data.y_train, grid=args.grid, seed=args.seed,
                            device="cpu")
    loss = plane.values["train_loss"]
    print(f"random_plane: grid {loss.shape}, train_loss range "
          f"{float(loss.min()):.4f} .. {float(loss.max()):.4f}")

    hvp = tl.hvp_fn(model, data.x_train, data.y_train, n_samples=args.hessian_samples,
                    seed=args.seed, device="cpu")
    evals, _ = tl.top_eigenvalues(hvp, k=1, iters=args.lanczos_iters, seed=args.seed)
    top = float(evals[0])
    print(f"top Hessian eigenvalue ({args.lanczos_iters} Lanczos steps, "
          f"{hvp.n_samples} samples): {top:.6g}")
    return {"n_params": n_params, "table_shape": tuple(table.shape),
            "plane_loss_min": float(loss.min()), "plane_loss_max": float(loss.max()),
            "plane_shape": tuple(loss.shape), "top_eigenvalue": top}


if __name__ == "__main__":
    main()
