"""Benchmark: a filter-normalized 2-D loss plane of the small CNN on sklearn digits, three ways.

    PYTHONPATH=. python experiments/benchmarks/bench_surface.py [--steps 21] [--threads 2] [--device cuda]

Model: build_model("cnn", (1, 8, 8), 10): conv3x3 1->16, ReLU, conv3x3 16->32, ReLU, maxpool 2,
linear 512->64, ReLU, linear 64->10 (38,282 parameters). Data: all 1,797 digits images, one
full-batch forward per grid point (mean cross-entropy).

1. loss-landscapes: ``loss_landscapes.random_plane(model, Loss(CE, x, y), distance, steps,
   normalization="filter", deepcopy_model=True)`` (one point at a time; its own directions).
2. plain loop: :func:`topoland.nets.evaluation.evaluate_loop` (load_state_dict + forward per point) on
   topoland's own grid points.
3. topoland: :func:`topoland.landscape.surfaces.plane` (evaluator "auto" -> "linear-first":
   the first conv is linear in its weights, so conv(x, W0 + a D1 + b D2) =
   conv(x, W0) + a conv(x, D1) + b conv(x, D2) is computed once for all points, exactly).

Prints points per second, the ratios, the max relative difference to the plain loop, and
topoland's rate as a fraction of the measured float32 matrix-multiply FLOP rate (forward
FLOPs per point counted analytically for the full network, first layer included).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(n=1024, reps=10, device=torch.device("cpu")) -> float:
    if device.type == "cuda":
        n = 8192
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def cnn_forward_flops(n, c_in=1, hw=8, c1=16, c2=32, hidden=64, classes=10) -> int:
    """Multiply-adds x 2 of one forward of n images (conv 3x3 pad 1, pool 2, two linears)."""
    conv1 = hw * hw * c1 * c_in * 9
    conv2 = hw * hw * c2 * c1 * 9
    fc1 = (c2 * (hw // 2) ** 2) * hidden
    fc2 = hidden * classes
    return 2 * n * (conv1 + conv2 + fc1 + fc2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=21)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-baselines", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (all three run there)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from topoland.nets import directions as D
    from topoland import nets as P
    from topoland.data import load_dataset
    from topoland.landscape import surfaces as S
    from topoland.nets.models import build_model

    data = load_dataset("digits", val_fraction=0.0)
    x = torch.cat([data.x_train, data.x_val, data.x_test])
    y = torch.cat([data.y_train, data.y_val, data.y_test])
    device = torch.device(args.device)
    model = build_model("cnn", (1, 8, 8), 10, seed=0).eval()
    n_pts = args.steps ** 2
    print(f"data: {tuple(x.shape)}, model params: {sum(p.numel() for p in model.parameters())}, "
          f"grid {args.steps}x{args.steps} = {n_pts} points, torch threads {torch.get_num_threads()}")

    # topoland
    d1, d2 = D.orthogonal_pair(model, 0, exact=False)
    t = time.perf_counter()
    srf = S.plane(model, d1, d2, x, y, grid=args.steps, range=(-1, 1), metrics=("loss",),
                  chunk_points=16, batch_size=x.shape[0], device=device)
    _sync(device)
    t_topo = time.perf_counter() - t
    print(f"topoland ({srf.meta['evaluator']}): {t_topo:.1f} s, {n_pts / t_topo:.2f} points/s")

    gf = matmul_gflops(device=device)
    flops_pt = cnn_forward_flops(x.shape[0])
    achieved = flops_pt * n_pts / t_topo / 1e9
    print(f"matmul float32: {gf:.1f} GFLOP/s; CNN forward {flops_pt / 1e9:.3f} GFLOP per point; "
          f"topoland {achieved:.1f} GFLOP/s = {achieved / gf:.1%} of the matmul rate")
    if args.skip_baselines:
        return

    # plain loop on the same points
    names = P.param_names(model)
    th = P.flatten(P.get_params(model), names).double()
    v1 = P.flatten(d1, names).double()
    v2 = P.flatten(d2, names).double()
    pts = torch.stack([th + a * v1 + b * v2 for b in srf.ys for a in srf.xs]).float()
    t = time.perf_counter()
    ref = P.evaluate_loop(model, pts, x, y, metrics=("loss",), batch_size=x.shape[0], device=device)
    _sync(device)
    t_loop = time.perf_counter() - t
    ref_loss = ref["loss"].reshape(args.steps, args.steps)
    rel = float(np.max(np.abs(srf.values["train_loss"] - ref_loss) / np.abs(ref_loss)))
    print(f"plain loop: {t_loop:.1f} s, {n_pts / t_loop:.2f} points/s; "
          f"max rel diff topoland vs loop {rel:.2e}")

    # loss-landscapes (pip install -e ".[bench]")
    import loss_landscapes
    import loss_landscapes.metrics

    crit = torch.nn.CrossEntropyLoss()
    model = model.to(device)
    metric = loss_landscapes.metrics.Loss(crit, x.to(device), y.to(device))
    t = time.perf_counter()
    with torch.no_grad():
        ll = loss_landscapes.random_plane(model, metric, distance=1, steps=args.steps,
                                          normalization="filter", deepcopy_model=True)
    _sync(device)
    t_ll = time.perf_counter() - t
    assert ll.shape == (args.steps, args.steps) and np.all(np.isfinite(ll))
    print(f"loss-landscapes: {t_ll:.1f} s, {n_pts / t_ll:.2f} points/s")

    print(f"ratio topoland / loss-landscapes: {t_ll / t_topo:.2f}x; "
          f"topoland / plain loop: {t_loop / t_topo:.2f}x; "
          f"plain loop / loss-landscapes: {t_ll / t_loop:.2f}x")
    assert rel < 1e-5, f"topoland differs from the plain loop: max rel diff {rel:.2e}"


if __name__ == "__main__":
    main()
