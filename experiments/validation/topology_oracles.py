"""Every topology setting against landscapes of known topology, in one table.

    python experiments/validation/topology_oracles.py [--seeds 5] [--out reports/topology_oracles.csv]
    python experiments/validation/topology_oracles.py --only-default --seeds 20

For each oracle of ``topoland.landscape.oracles`` (a bowl, an asymmetric double well, three
basins, a ring valley) and each seed, the landscape is sampled by the jump-and-retrain
simulator (``ORACLE_SAMPLING``: 8 directions x 4 steps x 21 records; 16 directions for the
ring) and every supported setting is run on the same samples:

- graph metric (``graph_on``): cosine distances of the snapshots; PHATE potential distances
  (t = 20 and t = "auto"); PHATE's 2-D embedding (t = 20);
- graph: k-NN united with a minimum spanning tree (``knn_mst``), or the bare k-NN graph;
- k: 10, 20, 40;
- complex: planar (H1 filled by the Delaunay triangulation of the principal plane), flag,
  graph, extended (checked on its ordinary H0 points plus one class per component, and its
  extended- H1 points, the graph's cycles).

Each row prints the found and the expected values (bars longer than the automatic noise
threshold), how many seeds passed, and the H0 total persistence with essential classes
dropped and capped at the largest value (with the cap, it is the loss range times the number
of components, squared: the ratio column shows it). The default setting is marked ``*``.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from topoland.topology.embedding import cosine_distances, phate_embedding  # noqa: E402
from topoland.landscape.oracles import ORACLES, check_oracle, simulate_jump_and_retrain  # noqa: E402
from topoland.topology import (DEFAULT_COMPLEX, delaunay_edges, euclidean_distances,  # noqa: E402
                               extended_diagrams, filtration_graph, lower_star_persistence,
                               potential_distances, principal_plane, resolve_min_persistence,
                               total_persistence)

GEOMETRIES = ("cosine", "potential t=20", "potential t=auto", "embedding t=20")
GRAPHS = ("knn_mst", "knn")
KS = (10, 20, 40)
COMPLEXES = ("planar", "flag", "graph", "extended")
DEFAULT = ("cosine", "knn_mst", 20, DEFAULT_COMPLEX)


def _geometries(cos):
    out = {"cosine": cos}
    for t in (20, "auto"):
        ph = phate_embedding(cos, t=t)
        out[f"potential t={t}"] = potential_distances(ph.potential)
        if t == 20:
            out["embedding t=20"] = euclidean_distances(ph.coords)
    return out


def _diagrams(edges, values, complex_, fill):
    if complex_ != "extended":
        return lower_star_persistence(edges, values, complex=complex_, fill_edges=fill)
    # H0: the merges of basins (ordinary), and one class per component (its Extended+ point,
    # counted as essential); H1: the graph's cycles (Extended-)
    parts = extended_diagrams(edges, values)
    comps = parts["extended+"].get(0, np.zeros((0, 2)))
    h0 = np.concatenate([parts["ordinary"].get(0, np.zeros((0, 2))),
                         np.stack([comps.min(axis=1), np.full(len(comps), np.inf)], axis=1)])
    return {0: h0, 1: np.sort(parts["extended-"].get(1, np.zeros((0, 2))), axis=1)}


def evaluate(n_seeds: int, progress=print) -> pd.DataFrame:
    rows = []
    for name, o in ORACLES.items():
        for seed in range(n_seeds):
            t0 = time.time()
            s = simulate_jump_and_retrain(o, seed=seed, **o.sampling_kwargs())
            f = s.table["val_loss"].to_numpy()
            min_pers, _ = resolve_min_persistence("auto", f, s.table["trajectory"], s.table["epoch"])
            cos = cosine_distances(s.params)
            fill = delaunay_edges(principal_plane(cos)[0])[0]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                geoms = _geometries(cos)
            for geom, D in geoms.items():
                for graph in GRAPHS:
                    for k in KS:
                        edges, info = filtration_graph(D, k=k, graph=graph)
                        for cx in COMPLEXES:
                            dg = _diagrams(edges, f, cx, fill)
                            c = check_oracle(o, dg, min_persistence=min_pers)
                            rng = float(f.max() - f.min())
                            tp_cap = total_persistence(dg[0], essential="cap", cap=float(f.max()))
                            rows.append(dict(
                                oracle=name, seed=seed, graph_on=geom, graph=graph, k=k, complex=cx,
                                passed=c["passed"], n_basins=c["n_basins"], h0=c["h0"], h1=c["h1"],
                                unfilled_h1=c["n_essential_h1"], why=c["why"],
                                components=info["components"],
                                tp_h0_drop=total_persistence(dg[0], essential="drop"),
                                tp_h0_cap=tp_cap, cap_over_range2=tp_cap / (info["components"] * rng ** 2)))
            progress(f"  {name} seed {seed}: {time.time() - t0:.1f} s")
    return pd.DataFrame(rows)


def evaluate_default(n_seeds: int) -> pd.DataFrame:
    """The default pipeline (``topology_of_samples`` with its defaults) on every oracle and
    seed: one row each with the found values and the verdict."""
    from topoland.topology import TopologyWarning, topology_of_samples
    rows = []
    for name, o in ORACLES.items():
        for seed in range(n_seeds):
            s = simulate_jump_and_retrain(o, seed=seed, **o.sampling_kwargs())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", TopologyWarning)
                res = topology_of_samples(s.table, params=s.params, picture=False)
            c = check_oracle(o, res.diagrams, min_persistence=res.features["min_persistence"])
            rows.append(dict(oracle=name, seed=seed, passed=c["passed"], n_basins=c["n_basins"],
                             h0=c["h0"], h1=c["h1"], why=c["why"]))
    return pd.DataFrame(rows)


def _expected(name):
    e = ORACLES[name].expected
    return (f"basins {e['n_basins'] if e['n_basins'] is not None else '-'}, "
            f"H0 {e['h0'] if e['h0'] is not None else '-'}, H1 {e['h1']}")


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per oracle and setting: seeds passed, the median found values."""
    keys = ["oracle", "graph_on", "graph", "k", "complex"]
    g = df.groupby(keys, sort=False)
    out = g.agg(passed=("passed", "sum"), seeds=("passed", "size"),
                n_basins=("n_basins", "median"), unfilled_h1=("unfilled_h1", "median"),
                tp_h0_drop=("tp_h0_drop", "median"), tp_h0_cap=("tp_h0_cap", "median"),
                cap_over_range2=("cap_over_range2", "median")).reset_index()
    first = g.first().reset_index()
    out["h0 (seed 0)"] = first["h0"].map(lambda v: v[:3])
    out["h1 (seed 0)"] = first["h1"].map(lambda v: v[:3])
    out["expected"] = out["oracle"].map(_expected)
    out["default"] = [("*" if tuple(r[k] for k in keys[1:]) == DEFAULT else "") for _, r in out.iterrows()]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5, help="samplings per oracle (default 5)")
    ap.add_argument("--out", default="reports/topology_oracles.csv", help="CSV of every run")
    ap.add_argument("--only-default", action="store_true",
                    help="only the default pipeline, seed by seed (fast: use many seeds)")
    args = ap.parse_args(argv)
    if args.only_default:
        df = evaluate_default(args.seeds)
        with pd.option_context("display.width", 250, "display.max_colwidth", 80):
            print(df[~df["passed"]].to_string(index=False) if (~df["passed"]).any() else "every run passed")
            print(df.groupby("oracle", sort=False)["passed"].agg(["sum", "size"]).rename(
                columns={"sum": "passed", "size": "seeds"}).to_string())
        return
    df = evaluate(args.seeds)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    summ = summarize(df)
    with pd.option_context("display.width", 250, "display.max_rows", None, "display.max_colwidth", 40):
        print(summ.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    per_setting = summ.groupby(["graph_on", "graph", "k", "complex"], sort=False).agg(
        passed=("passed", "sum"), runs=("seeds", "sum")).reset_index()
    per_setting["all_oracles"] = per_setting["passed"] / per_setting["runs"]
    print("\nPer setting, over every oracle and seed:")
    print(per_setting.sort_values("all_oracles", ascending=False).to_string(index=False))
    d = summ[summ["default"] == "*"]
    print("\nDefault setting:", dict(zip(["graph_on", "graph", "k", "complex"], DEFAULT)))
    print(d[["oracle", "passed", "seeds", "expected", "h0 (seed 0)", "h1 (seed 0)"]].to_string(index=False))
    print(f"\nEvery run: {args.out}")


if __name__ == "__main__":
    main()
