"""Why the CPU surface path is point by point and channels-last (docs/surfaces.md).

    python experiments/benchmarks/bench_conv_layouts.py [--threads 2]

Times the second convolution of the digits benchmark CNN (16 -> 32 channels, 3x3, padding 1,
8x8 images, 1,797 images) as oneDNN runs it channels-first (what a plain loop runs) and
channels-last, as ``unfold`` + matmul, and as one grouped convolution over 16 points (the
layout of the batched GPU path). Prints milliseconds per point (1,797 images) and GFLOP/s
(direct-convolution count).
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

N, CIN, COUT, HW = 1797, 16, 32, 8
FLOPS = 2 * N * HW * HW * COUT * CIN * 9


def _best(f, reps=5) -> float:
    f()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    h = torch.randn(N, CIN, HW, HW, generator=g).relu_()
    w = torch.randn(COUT, CIN, 3, 3, generator=g)
    b = torch.randn(COUT, generator=g)
    hc = h.contiguous(memory_format=torch.channels_last)
    P = 16
    hg = torch.randn(N, P * CIN, HW, HW, generator=g).contiguous(memory_format=torch.channels_last)
    wg = torch.randn(P * COUT, CIN, 3, 3, generator=g)
    rows = [
        ("channels-first conv (plain loop)", lambda: F.conv2d(h, w, b, padding=1), 1),
        ("channels-last conv", lambda: F.conv2d(hc, w, b, padding=1), 1),
        ("unfold + matmul", lambda: w.reshape(COUT, -1) @ F.unfold(h, 3, padding=1), 1),
        (f"grouped conv over {P} points, channels-last", lambda: F.conv2d(hg, wg, None, padding=1,
                                                                          groups=P), P),
    ]
    print(f"torch threads {torch.get_num_threads()}; conv {CIN}->{COUT}, 3x3, {HW}x{HW}, {N} images")
    for name, f, per in rows:
        t = _best(f) / per
        print(f"{name:45s} {t * 1e3:8.2f} ms per point  {FLOPS / t / 1e9:6.1f} GFLOP/s")


if __name__ == "__main__":
    main()
