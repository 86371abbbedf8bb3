"""Benchmark: snapshots -> cosine distances -> PHATE -> k-NN graph -> persistence.

Compares topoland's path (blockwise torch cosine distances, or their count-sketch estimate,
PHATE on the precomputed distances, landmarks for large N) with PHATE's own cosine path on
the raw snapshots (``knn_dist="cosine", n_pca=None``, no landmarks; optionally with
landmarks or with PHATE's defaults), timing each stage. With both kinds of distances, it
also prints how far the sketch moves the graph and total persistence, next to how far
PHATE's landmark seed alone moves them.

    python experiments/benchmarks/bench_topology.py --case both          # N=640,D=1.1M; N=10k,D=100k
    python experiments/benchmarks/bench_topology.py --quick --case both  # small sizes
    python experiments/benchmarks/bench_topology.py --complexes          # what each complex gives

Targets (issue 4): paper case < 30 s on 2 CPU cores; large case >= 3x faster than plain PHATE.
The snapshots are simulated jump-and-retrain trajectories (see ``simulate_snapshots``).
"""
from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import time
import warnings

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from topoland.topology.embedding import (cosine_distances, phate_embedding,  # noqa: E402
                                sketch_cosine_distances)
from topoland.topology import (COMPLEXES, delaunay_edges, diagram_features,  # noqa: E402
                               filtration_graph, landscape_features, lower_star_persistence,
                               principal_plane, total_persistence)

STEPS = (0.25, 0.5, 0.75, 1.0)


def simulate_snapshots(n_traj: int, n_points: int, d: int, seed: int = 0,
                       dtype=torch.float32, rate: float = 0.88, walk: float = 0.004,
                       noise: float = 0.002):
    """Simulated jump-and-retrain trajectories around a minimum ``theta*`` (``(d,)``).

    Trajectories come in groups of 4 step sizes (0.25, 0.5, 0.75, 1) sharing one Gaussian
    direction; trajectory ``j`` jumps by ``step * |theta*|`` and relaxes back geometrically
    (``rate`` per epoch) while drifting by a random walk in the flat directions (``walk``
    of ``|theta*|`` per epoch, per sqrt(d)) plus per-snapshot noise. Losses rise with the
    squared remaining jump plus a little noise. Returns ``(X (N, d) dtype, table)``.
    """
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(d, generator=g)
    norm = theta.norm()
    X = torch.empty((n_traj * n_points, d), dtype=dtype)
    e = torch.arange(n_points, dtype=torch.float32)
    rows = []
    rng = np.random.default_rng(seed)
    for j in range(n_traj):
        if j % len(STEPS) == 0:
            u = torch.randn(d, generator=g)
            u = u / u.norm()
        step = STEPS[j % len(STEPS)]
        amp = step * rate ** e                                             # (P,)
        w = torch.cumsum(torch.randn(n_points, d, generator=g), 0) * (walk * norm / d ** 0.5)
        w[0] = 0
        eps = torch.randn(n_points, d, generator=g) * (noise * norm / d ** 0.5)
        X[j * n_points:(j + 1) * n_points] = (theta + amp[:, None] * norm * u + w + eps).to(dtype)
        base = 0.05 + 2.0 * amp.numpy() ** 2
        for r in range(n_points):
            vl = base[r] + 0.01 * rng.normal()
            rows.append(dict(sample_id=j * n_points + r, trajectory=j, direction=j // len(STEPS),
                             step=step, epoch=float(r), train_loss=base[r] * 0.8,
                             train_acc=0.9, val_loss=vl, val_acc=0.85,
                             test_loss=vl + 0.01 * rng.normal(), test_acc=0.85, diverged=False))
    return X, pd.DataFrame(rows)


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def _quiet_phate():
    logging.getLogger("graphtools").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")


def _ours(X, values, method, n_landmark, t, k, complex, device, sketch_dim, seed=0, keep=None,
          cos=None):
    """topoland's stage on snapshots ``X`` (or from given distances ``cos``): returns (wall
    times, cpu times, features, edges); the cosine distances are left in ``keep["cos"]`` when
    ``keep`` is a dict."""
    times, cpu = {}, {}
    # wall time, and CPU seconds of this process (on a shared machine CPU / threads is the
    # better estimate of the wall time on 2 dedicated cores)
    t0, c0 = time.perf_counter(), time.process_time()
    if cos is None:
        if device != "cpu":  # snapshots live on the device, as the sampler leaves them there
            X = X.to(device)
            torch.cuda.synchronize()
        if method == "sketch":
            cos = sketch_cosine_distances(X, sketch_dim, seed=seed, device=device)
        else:
            cos = cosine_distances(X, device=device)
    times["distances"], cpu["distances"] = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    phate_embedding(cos, t=t, n_landmark=n_landmark, seed=seed)  # the picture
    times["phate"], cpu["phate"] = time.perf_counter() - t0, time.process_time() - c0
    if keep is not None:
        keep["cos"] = cos
    # the default filtration: k-NN + spanning tree on the cosine distances, H1 filled on the
    # principal plane (PHATE above draws the picture)
    t0, c0 = time.perf_counter(), time.process_time()
    edges, _ = filtration_graph(cos, k=k)
    fill = delaunay_edges(principal_plane(cos)[0])[0] if complex == "planar" else None
    del cos
    times["graph"], cpu["graph"] = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    dg = lower_star_persistence(edges, values, complex=complex, fill_edges=fill)
    feats = diagram_features(dg, p=2, cap=values.max()) | landscape_features(dg, values)
    times["persistence"], cpu["persistence"] = time.perf_counter() - t0, time.process_time() - c0
    return times, cpu, feats, edges


def _agreement(name, feats, edges, ref_feats, ref_edges):
    a, b = set(map(tuple, edges.T.tolist())), set(map(tuple, ref_edges.T.tolist()))
    tp = [abs(feats[f"total_persistence_h{d}"] - ref_feats[f"total_persistence_h{d}"])
          / max(abs(ref_feats[f"total_persistence_h{d}"]), 1e-300) for d in (0, 1)]
    print(f"  {name:34s} vs exact distances (landmark seed 0): edge Jaccard {len(a & b) / len(a | b):.3f}, "
          f"|TP_H0 rel diff| {tp[0]:.4f}, |TP_H1 rel diff| {tp[1]:.4f}", flush=True)


def _distance_agreement(approx, exact, sketch_dim, k=20, k_recall=5):
    """Relative error of the sketched distances over each point's k nearest (exact)
    neighbours, and how many of its k_recall nearest neighbours the sketch keeps."""
    n = len(exact)
    big = np.diag(np.full(n, np.inf))
    nn = np.argpartition(exact + big, k, axis=1)[:, :k]
    rel = np.take_along_axis(approx, nn, 1) / np.take_along_axis(exact, nn, 1) - 1
    a = np.argpartition(exact + big, k_recall, axis=1)[:, :k_recall]
    b = np.argpartition(approx + big, k_recall, axis=1)[:, :k_recall]
    recall = np.mean([len(np.intersect1d(x, y)) / k_recall for x, y in zip(a, b)])
    print(f"  sketched distances to each point's {k} nearest: relative error std {rel.std():.4f} "
          f"(sqrt(2/dim) = {np.sqrt(2 / sketch_dim):.4f}), mean {rel.mean():+.4f}; "
          f"{k_recall}-NN kept {recall:.3f}", flush=True)


def run_case(name, n_traj, n_points, d, n_landmark, t, k, complex, dtype, baseline=True,
             device="cpu", baselines=("exact",), methods=("exact",), sketch_dim=4096):
    print(f"\n== case {name}: N={n_traj * n_points}, D={d:,}, snapshots {dtype}, distances on {device}, "
          f"landmarks={n_landmark}, t={t}, k={k}, complex={complex}", flush=True)
    t0 = time.perf_counter()
    X, table = simulate_snapshots(n_traj, n_points, d, dtype=dtype)
    print(f"simulate      {time.perf_counter() - t0:8.2f} s  (not timed below)", flush=True)
    values = table.sort_values("sample_id")["val_loss"].to_numpy()
    runs, totals, kept = {}, {}, {}
    for method in methods:
        if method not in ("exact", "sketch"):
            raise SystemExit(f"unknown distances {method!r}: use exact or sketch")
        label = "exact" if method == "exact" else f"sketch (dim {sketch_dim})"
        keep = kept.setdefault(method, {})
        times, cpu, feats, edges = _ours(X, values, method, n_landmark, t, k, complex, device,
                                         sketch_dim, keep=keep)
        runs[method] = (times, cpu, feats, edges)
        totals[method] = sum(times.values())
        print(f"-- ours, {label} cosine distances", flush=True)
        for s, v in times.items():
            print(f"{s:13s} {v:8.2f} s wall {cpu[s]:8.2f} s cpu", flush=True)
        print(f"ours total    {totals[method]:8.2f} s wall {sum(cpu.values()):8.2f} s cpu  (edges "
              f"{edges.shape[1]}, TP_H0={feats['total_persistence_h0']:.4g}, "
              f"TP_H1={feats['total_persistence_h1']:.4g}, peak RSS {_rss_gb():.2f} GB)", flush=True)
    if "exact" in runs and "sketch" in runs:
        # how far the sketch moves the result, next to how far PHATE's landmark seed alone does
        ref = runs["exact"]
        print("-- agreement", flush=True)
        _distance_agreement(kept["sketch"].pop("cos"), kept["exact"]["cos"], sketch_dim)
        _agreement(f"sketch distances (dim {sketch_dim})", runs["sketch"][2], runs["sketch"][3],
                   ref[2], ref[3])
        if n_landmark is not None:
            cos = kept["exact"].pop("cos")
            for seed in (1, 2):
                _, _, f2, e2 = _ours(None, values, "exact", n_landmark, t, k, complex, device,
                                     sketch_dim, seed=seed, cos=cos)
                _agreement(f"exact distances, landmark seed {seed}", f2, e2, ref[2], ref[3])
            del cos
    kept.clear()
    if not baseline:
        return totals, None
    import phate

    _quiet_phate()
    Xb = X.float().cpu().numpy()
    del X
    times = runs[methods[0]][0]
    cpu = runs[methods[0]][1]
    base_total = {}
    for which in baselines:
        # "exact": PHATE's cosine path on the raw snapshots, no landmarks; "landmarks": the same
        # with topoland's landmark count (PHATE's own default is 2000), for a like-for-like ratio
        # "defaults": PHATE's own defaults as the reference study ran them (PCA to 100
        # dimensions before the cosine kNN, 2000 landmarks): faster, but not cosine on the
        # snapshots (docs/topology.md, difference 6)
        if which not in ("exact", "landmarks", "defaults"):
            raise SystemExit(f"unknown baseline {which!r}: use exact, landmarks or defaults")
        nl = None if which == "exact" or n_landmark is None else n_landmark
        extra = dict(n_pca=None, n_landmark=nl)
        if which == "defaults":
            extra, nl = {}, "2000 (default), n_pca=100 (default)"
        t0, c0 = time.perf_counter(), time.process_time()
        op = phate.PHATE(n_components=2, knn=5, decay=40, t=t, knn_dist="cosine",
                         mds_dist="cosine", random_state=0, verbose=0, **extra)
        op.fit_transform(Xb)
        tb, cb = time.perf_counter() - t0, time.process_time() - c0
        total = tb + times["graph"] + times["persistence"]
        base_total[which] = total
        label = f"n_landmark={nl}" if which == "defaults" else f"n_pca=None, n_landmark={nl}"
        print(f"baseline {which}: PHATE(knn_dist='cosine', {label}) {tb:8.2f} s wall "
              f"{cb:8.2f} s cpu (peak RSS {_rss_gb():.2f} GB); with the graph and persistence "
              f"steps {total:.2f} s", flush=True)
        for method, (tm, cp, _, _) in runs.items():
            print(f"  ours ({method}) whole stage {total / sum(tm.values()):.2f}x wall, "
                  f"{(cb + cpu['graph'] + cpu['persistence']) / sum(cp.values()):.2f}x cpu seconds; "
                  f"PHATE step alone {tb / (tm['distances'] + tm['phate']):.2f}x", flush=True)
        del op
    return totals, base_total


def compare_complexes(n_traj=16, n_points=41, d=5000, k=20, t=20, seeds=(0, 1, 2)):
    """What each complex gives on simulated trajectories (documented in docs/topology.md)."""
    print(f"\n== complexes: {n_traj} trajectories x {n_points} points, D={d}, k={k}, t={t}")
    rows = []
    for seed in seeds:
        X, table = simulate_snapshots(n_traj, n_points, d, seed=seed)
        values = table["val_loss"].to_numpy()
        cos = cosine_distances(X, device="cpu")
        auto = phate_embedding(cos, t="auto", seed=seed).t_used
        edges, _ = filtration_graph(cos, k=k)
        fill = delaunay_edges(principal_plane(cos)[0])[0]
        cap = values.max()
        for c in COMPLEXES:
            t0 = time.perf_counter()
            dg = lower_star_persistence(edges, values, complex=c, fill_edges=fill)
            dt = time.perf_counter() - t0
            row = dict(seed=seed, complex=c, t_auto=auto, V=len(values), E=edges.shape[1],
                       seconds=round(dt, 4))
            for dim in (0, 1):
                dd = dg[dim]
                fin = np.isfinite(dd[:, 1])
                row[f"bars_h{dim}"] = len(dd)
                row[f"ess_h{dim}"] = int((~fin).sum())
                row[f"TP2_drop_h{dim}"] = total_persistence(dd, 2, "drop")
                row[f"TP2_cap_h{dim}"] = total_persistence(dd, 2, "cap", cap)
            rows.append(row)
    df = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_columns", 30,
                           "display.float_format", "{:.4g}".format):
        print(df.to_string(index=False))
    return df


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--case", choices=("paper", "large", "both"), default="both")
    ap.add_argument("--quick", action="store_true", help="small sizes (minutes -> seconds)")
    ap.add_argument("--no-baseline", action="store_true", help="time only topoland's path")
    ap.add_argument("--complexes", action="store_true", help="compare graph/flag/extended only")
    ap.add_argument("--t", type=int, default=20)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--complex", default="planar", choices=COMPLEXES)
    ap.add_argument("--device", default="cpu", help="where the cosine distances are computed")
    ap.add_argument("--baselines", default="exact,landmarks",
                    help="comma-separated PHATE baselines on the raw snapshots: exact (no "
                         "landmarks), landmarks (topoland's landmark count), defaults (PHATE's "
                         "defaults: PCA to 100 dimensions first, 2000 landmarks)")
    ap.add_argument("--distances", default="exact,sketch",
                    help="comma-separated ways to get the large case's cosine distances: exact "
                         "(blockwise N^2 D / 2 products), sketch (count sketch, --sketch-dim)")
    ap.add_argument("--sketch-dim", type=int, default=4096)
    a = ap.parse_args(argv)
    import gudhi  # noqa: F401  (imports are not part of the timed stages)
    import phate  # noqa: F401

    _quiet_phate()
    print(f"torch threads {torch.get_num_threads()}, cpu count {os.cpu_count()}, device {a.device}, "
          f"load avg {os.getloadavg()[0]:.2f} (shared machine)")
    if a.complexes:
        compare_complexes(k=a.k, t=a.t)
        return
    if a.case in ("paper", "both"):
        n_traj, n_points, d = (16, 40, 20_000) if a.quick else (16, 40, 1_100_000)
        ours, _ = run_case("paper" + (" (quick)" if a.quick else ""), n_traj, n_points, d, None,
                           a.t, a.k, a.complex, torch.float32, baseline=not a.no_baseline,
                           device=a.device)
        ours = ours["exact"]
        print(f"paper-scale target < 30 s: {'met' if ours < 30 else 'NOT met'} ({ours:.1f} s wall; "
              "see cpu seconds above on a shared machine)")
    if a.case in ("large", "both"):
        n_traj, n_points, d, nl = (100, 40, 10_000, 1000) if a.quick else (250, 40, 100_000, 2000)
        ours, base = run_case("large" + (" (quick)" if a.quick else ""), n_traj, n_points, d, nl,
                              a.t, a.k, a.complex, torch.float16, baseline=not a.no_baseline,
                              device=a.device, baselines=a.baselines.split(","),
                              methods=a.distances.split(","), sketch_dim=a.sketch_dim)
        for which, b in (base or {}).items():
            for method, o in ours.items():
                print(f"large target >= 3x vs the {which} baseline, ours with {method} distances: "
                      f"{'met' if b / o >= 3 else 'NOT met'} ({b / o:.2f}x)")


if __name__ == "__main__":
    main()
