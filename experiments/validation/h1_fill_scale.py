"""Can a local fill tell a landscape loop from a loop of the projection?

    python experiments/validation/h1_fill_scale.py [--run runs/quickstart] [--seeds 3]

The planar complex fills H1 with the Delaunay triangulation of the samples' principal plane.
This script restricts that fill to Delaunay edges no longer, in the full space, than ``c``
times the larger of their endpoints' 20-NN radii (c = 1, 1.5, 2, and no restriction), and
prints, for the ring oracle (a real loop) and for each minimum of a finished run (whose loops
close around jump points in the projection), the loops found and whether the oracle passes.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from topoland.topology.embedding import cosine_distances  # noqa: E402
from topoland.landscape.oracles import check_oracle, oracle, simulate_jump_and_retrain  # noqa: E402
from topoland.sampling.storage import load_samples  # noqa: E402
from topoland.topology import (delaunay_edges, filtration_graph, landscape_features,  # noqa: E402
                               lower_star_persistence, principal_plane, resolve_min_persistence)

SCALES = (None, 2.0, 1.5, 1.0)


def restricted_fill(cos, k: int, c: float | None) -> np.ndarray:
    """Delaunay edges of the principal plane, kept only where their full-space length (unit
    snapshots) is at most ``c`` x the larger k-NN radius of their endpoints (None: all)."""
    fill = delaunay_edges(principal_plane(cos)[0])[0]
    if c is None:
        return fill
    d = np.sqrt(2 * np.clip(cos, 0, None))
    rk = np.partition(d, k, axis=1)[:, k]
    return fill[:, d[fill[0], fill[1]] <= c * np.maximum(rk[fill[0]], rk[fill[1]])]


def loops(table, params, c, k=20):
    f = table["val_loss"].to_numpy()
    cos = cosine_distances(params)
    edges, _ = filtration_graph(cos, k)
    dg = lower_star_persistence(edges, f, complex="planar", fill_edges=restricted_fill(cos, k, c))
    m, _ = resolve_min_persistence("auto", f, table["trajectory"], table["epoch"])
    feats = landscape_features(dg, f, min_persistence=m)
    return dg, m, feats


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/quickstart", help="a finished run directory")
    ap.add_argument("--seeds", type=int, default=3, help="samplings of the ring oracle")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    label = {None: "unrestricted"} | {c: f"c = {c:g}" for c in SCALES if c}
    ring = oracle("ring")
    print("ring oracle: loops >= threshold, deepest loop, passes")
    for seed in range(args.seeds):
        s = simulate_jump_and_retrain(ring, seed=seed, **ring.sampling_kwargs())
        cells = []
        for c in SCALES:
            dg, m, f = loops(s.table, s.params, c)
            cells.append(f"{label[c]}: {int(f['n_loops'])}, {f['max_depth_h1']:.2f}, "
                         f"{check_oracle(ring, dg, min_persistence=m)['passed']}")
        print(f"  seed {seed}: " + " | ".join(cells))
    samples = sorted(Path(args.run).glob("cells/*/sample"))
    if not samples:
        print(f"no sample stages under {args.run}: run a config first")
        return
    print(f"{args.run}: loops >= threshold, deepest loop (nats)")
    for d in samples:
        s = load_samples(d)
        cells = []
        for c in SCALES:
            _, _, f = loops(s.table, s.params, c)
            cells.append(f"{label[c]}: {int(f['n_loops'])}, {f['max_depth_h1']:.2f}")
        print(f"  {d.parent.name}: " + " | ".join(cells))


if __name__ == "__main__":
    main()
