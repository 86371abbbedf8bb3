"""Benchmark: batched vs sequential jump-and-retrain for one minimum, same data and epochs.

    PYTHONPATH=. python experiments/benchmarks/bench_sampler.py                  # quickstart MLP, CPU
    PYTHONPATH=. python experiments/benchmarks/bench_sampler.py --model cnn
    PYTHONPATH=. python experiments/benchmarks/bench_sampler.py --model wrn16-2 --device cuda

Models: "quickstart" = experiments/quickstart.toml's MLP widths (100, 100) on MNIST-1D;
"mlp128" = MLP widths (128, 128) on MNIST-1D; "cnn" = the default CNN on MNIST-1D;
"wrn16-2" = WRN-16-2 on CIFAR-10-shaped random data (3, 32, 32), 10 classes.
Defaults follow quickstart.toml's [sample] section (lr 0.01, batch 128, 10 epochs).
Both samplers run in this process on the same minimum (the freshly initialized model: the
retraining cost does not depend on where θ* came from), with the same directions, data stream
and epochs. Prints both wall times, the speed ratio, retrain epochs per second (trajectories x
epochs / seconds) and the largest parameter difference between the two results.
Targets (issue 3): >= 4x on 2 CPU cores for the quickstart model; >= 10x for WRN-16-2 on a GPU.
Process CPU time is printed too: on a shared machine, `--threads 1` CPU times are what a
quiet machine would show as wall times.
"""
from __future__ import annotations

import argparse
import time

import torch

from topoland.data import DataSplits, load_dataset
from topoland.nets.models import build_model, count_parameters
from topoland.sampling.sampler import jump_and_retrain
from topoland.utils import resolve_device

MODELS = {
    "quickstart": ("mlp", {"widths": (100, 100)}),
    "mlp128": ("mlp", {"widths": (128, 128)}),
    "cnn": ("cnn", {}),
    "wrn16-2": ("wrn", {"depth": 16, "widen": 2}),
}


def _cifar_shaped(n_train: int, n_eval: int, seed: int = 0) -> DataSplits:
    g = torch.Generator().manual_seed(seed)

    def draw(n):
        return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)

    (xtr, ytr), (xva, yva), (xte, yte) = draw(n_train), draw(n_eval), draw(n_eval)
    return DataSplits("cifar10-shaped-random", xtr, ytr, xva, yva, xte, yte, (3, 32, 32), 10,
                      "image", ytr.clone())


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="quickstart")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--epochs", type=int, default=None,
                    help="retrain epochs (default 10 = quickstart's sample.epochs; wrn 1)")
    ap.add_argument("--directions", type=int, default=4)
    ap.add_argument("--steps", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--augment", action="store_true")
    ap.add_argument("--n-train", type=int, default=None,
                    help="training samples (MNIST-1D: all 3,600; wrn: 10,000 random images)")
    ap.add_argument("--n-eval", type=int, default=1000, help="val/test samples for wrn")
    ap.add_argument("--eval-batch-size", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--repeat", type=int, default=2, help="interleaved repeats (min is reported)")
    ap.add_argument("--skip-sequential", action="store_true", help="batched only (absolute figures)")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    name, kw = MODELS[args.model]
    if args.model == "wrn16-2":
        data = _cifar_shaped(args.n_train or 10_000, args.n_eval)
        epochs = args.epochs or 1
    else:
        data = load_dataset("mnist1d", seed=0, n_train=args.n_train)
        epochs = args.epochs or 10
    model = build_model(name, data.input_shape, data.num_classes, seed=0, **kw)
    J = args.directions * len(args.steps)
    common = dict(directions=args.directions, steps=args.steps, epochs=epochs, lr=args.lr,
                  batch_size=args.batch_size, augment=args.augment, device=device,
                  eval_batch_size=args.eval_batch_size, seed=0)
    print(f"model {args.model} ({count_parameters(model):,} parameters), data {data.name} "
          f"train {len(data.y_train):,} val {len(data.y_val):,} test {len(data.y_test):,}, "
          f"{J} jumps x {epochs} epochs, batch {args.batch_size}, device {device}, "
          f"threads {torch.get_num_threads()}")

    # warm-up (allocator, kernels, lazy imports) on a single-epoch, 2-jump run, for both paths
    warm = dict(common, directions=1, steps=args.steps[:2], epochs=1)
    jump_and_retrain(model, data, batched=True, **warm)
    if not args.skip_sequential:
        jump_and_retrain(model, data, batched=False, **warm)

    # interleaved repeats; the minimum of each is the least disturbed by other load on the machine
    modes = [True] if args.skip_sequential else [True, False]
    times, cpu, results = {b: [] for b in modes}, {b: [] for b in modes}, {}
    for rep in range(args.repeat):
        for batched in modes:
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            results[batched] = jump_and_retrain(model, data, batched=batched, **common)
            _sync(device)
            times[batched].append(time.perf_counter() - t0)
            cpu[batched].append(time.process_time() - c0)
    for batched in modes:
        label = "batched" if batched else "sequential"
        best = min(times[batched])
        runs = ", ".join(f"{t:.2f}" for t in times[batched])
        print(f"{label:>10}: {best:8.2f} s (runs: {runs})  {J * epochs / best:8.2f} retrain epochs/s"
              f"  [process CPU time {min(cpu[batched]):.2f} s]")
    # the evaluation share: epochs=0 runs only the jump-point record (eval of all splits)
    n_rec = 1 + epochs
    for batched in modes:
        t_eval = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            jump_and_retrain(model, data, batched=batched, **dict(common, epochs=0))
            _sync(device)
            t_eval.append(time.perf_counter() - t0)
        per = min(t_eval)
        label = "batched" if batched else "sequential"
        print(f"{label:>10}: one record (eval of train/val/test, all jumps) {per:.3f} s; "
              f"{n_rec} records ~{n_rec * per:.2f} s, training ~{min(times[batched]) - n_rec * per:.2f} s")
    if not args.skip_sequential:
        ratio = min(times[False]) / min(times[True])
        diff = (results[True].params - results[False].params).abs().amax(1)
        print(f"speed ratio (sequential / batched): {ratio:.2f}x  [CPU-time ratio "
              f"{min(cpu[False]) / min(cpu[True]):.2f}x: with --threads 1 it is the wall ratio of "
              f"a quiet machine]")
        print(f"|param difference| batched vs sequential per snapshot: median {float(diff.median()):.1e}, "
              f"max {float(diff.max()):.1e} (float rounding, amplified where a ReLU flips)")
    return times


if __name__ == "__main__":
    main()
