"""Benchmark: Hessian curvature of the digits CNN against PyHessian, in one run.

    PYTHONPATH=. python experiments/benchmarks/bench_curvature.py [--probes 50] [--threads 2]
        [--probe-batch 1] [--epochs 10] [--device cpu] [--skip-baseline]

Model: build_model("cnn", (1, 8, 8), 10) trained ``--epochs`` epochs on sklearn digits (SGD, the
same seed every run); the Hessian is that of the mean cross-entropy over all 1,797 images, BN-free,
eval mode, one full batch (as PyHessian's ``data=(x, y)`` mode).

1. Top eigenvalue: topoland's :func:`topoland.landscape.hvp_fn` (forward-over-reverse HVPs) with
   Lanczos (:func:`topoland.landscape.top_eigenvalues`, tol 1e-4) against PyHessian 0.1's power
   iteration (``hessian.eigenvalues(top_n=1, maxIter=100, tol=1e-3)``, its defaults), which
   re-uses one stored gradient graph.
2. Trace at an equal number of Rademacher probes: :func:`topoland.landscape.hessian_trace` with
   ``probe_batch`` probes per batched HVP (one vmap call shares the forward pass) against
   PyHessian's ``hessian.trace(maxIter=probes, tol=-1)`` (a negative tolerance: it never stops
   early, so both use ``probes`` probes).

Prints the seconds, the ratios (PyHessian / topoland: > 1 means topoland is faster), the two
estimates with their standard errors (z = difference / combined standard error) and the peak RSS.
PyHessian is the ``bench`` extra (``pip install -e .[bench]``), imported only here.
"""
from __future__ import annotations

import argparse
import math
import resource
import time

import numpy as np
import torch
import torch.nn as nn


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20   # KiB on Linux


def _model(epochs: int, device):
    from topoland.data import load_dataset
    from topoland.nets.models import build_model
    from topoland.train import TrainRecipe, train_minimum
    data = load_dataset("digits", val_fraction=0.1, seed=0)
    model = build_model("cnn", (1, 8, 8), 10, seed=0)
    if epochs:
        train_minimum(model, data, TrainRecipe(lr=0.05, momentum=0.9, batch_size=64, epochs=epochs,
                                               milestones=()), seed=0, device=device)
    x = torch.cat([data.x_train, data.x_val, data.x_test]).to(device)
    y = torch.cat([data.y_train, data.y_val, data.y_test]).to(device)
    return model.to(device).eval(), x, y


def _topoland(model, x, y, probes: int, probe_batch: int, device):
    from topoland.landscape import hessian_trace, hvp_fn, top_eigenvalues
    hvp = hvp_fn(model, x, y, n_samples=None, batch_size=len(x), device=device)
    hvp(torch.zeros(hvp.dim, device=device))            # warm-up: torch.func's first call
    t = time.perf_counter()
    vals, _ = top_eigenvalues(hvp, k=1, tol=1e-4, seed=0)
    t_eig = time.perf_counter() - t
    t = time.perf_counter()
    tr, se = hessian_trace(hvp, n_probes=probes, probe_batch=probe_batch, seed=0)
    t_tr = time.perf_counter() - t
    return float(vals[0]), t_eig, tr, se, t_tr


def _pyhessian(model, x, y, probes: int, device):
    from pyhessian import hessian
    torch.manual_seed(0)
    t = time.perf_counter()
    h = hessian(model, nn.CrossEntropyLoss(), data=(x, y), cuda=device.type == "cuda")
    t_setup = time.perf_counter() - t
    t = time.perf_counter()
    eig, _ = h.eigenvalues(top_n=1, maxIter=100, tol=1e-3)
    t_eig = time.perf_counter() - t + t_setup
    t = time.perf_counter()
    vhv = np.asarray(h.trace(maxIter=probes, tol=-1.0))
    t_tr = time.perf_counter() - t + t_setup
    return float(eig[0]), t_eig, float(vhv.mean()), float(vhv.std(ddof=1) / math.sqrt(len(vhv))), t_tr, len(vhv)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Hessian curvature of the digits CNN vs PyHessian")
    ap.add_argument("--probes", type=int, default=50)
    ap.add_argument("--probe-batch", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-baseline", action="store_true", help="topoland only (no PyHessian)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, x, y = _model(args.epochs, device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"digits CNN, {n_params} parameters, {len(x)} images, device {device}, {args.threads} threads")
    eig, t_eig, tr, se, t_tr = _topoland(model, x, y, args.probes, args.probe_batch, device)
    print(f"topoland  top eigenvalue {eig:.5f} in {t_eig:.2f} s (Lanczos)")
    print(f"topoland  trace {tr:.3f} ± {se:.3f} in {t_tr:.2f} s ({args.probes} probes, "
          f"{args.probe_batch} per HVP call; {t_tr / args.probes:.3f} s a probe)")
    if not args.skip_baseline:
        try:
            import pyhessian  # noqa: F401
        except ImportError:
            print("PyHessian is not installed (pip install -e .[bench]); no baseline")
            return 1
        p_eig, p_t_eig, p_tr, p_se, p_t_tr, n = _pyhessian(model, x, y, args.probes, device)
        z = (tr - p_tr) / math.hypot(se, p_se)
        print(f"PyHessian top eigenvalue {p_eig:.5f} in {p_t_eig:.2f} s (power iteration, setup included)")
        print(f"PyHessian trace {p_tr:.3f} ± {p_se:.3f} in {p_t_tr:.2f} s ({n} probes)")
        print(f"ratio top eigenvalue: {p_t_eig / t_eig:.2f}x PyHessian (relative difference "
              f"{abs(eig - p_eig) / abs(p_eig):.2e})")
        print(f"ratio trace: {p_t_tr / t_tr:.2f}x PyHessian at {args.probes} probes each (z = {z:+.2f})")
    print(f"peak RSS {_peak_rss_gb():.2f} GB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
