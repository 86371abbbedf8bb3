"""The validation scripts run (at tiny size) and agree with the library they check."""
import importlib.util
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / "validation" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_topology_oracles_default_mode_and_summary():
    mod = _script("topology_oracles")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = mod.evaluate_default(1)
    assert list(df["oracle"]) == ["bowl", "double_well", "k_basins", "ring"]
    assert df["passed"].all(), df[["oracle", "why"]]
    rows = df.assign(graph_on="cosine", graph="knn_mst", k=20, complex="planar", unfilled_h1=0,
                     tp_h0_drop=0.0, tp_h0_cap=1.0, cap_over_range2=1.0, components=1)
    summ = mod.summarize(rows)
    assert (summ["default"] == "*").all() and (summ["passed"] == 1).all()


def test_h1_fill_scale_restricts_the_delaunay_fill():
    from topoland.topology.embedding import cosine_distances
    from topoland.landscape.oracles import simulate_jump_and_retrain
    from topoland.topology import delaunay_edges, principal_plane
    mod = _script("h1_fill_scale")
    s = simulate_jump_and_retrain("bowl", directions=3, epochs=5)
    cos = cosine_distances(s.params)
    full = mod.restricted_fill(cos, 5, None)
    np.testing.assert_array_equal(full, delaunay_edges(principal_plane(cos)[0])[0])
    local = mod.restricted_fill(cos, 5, 1.0)
    assert 0 < local.shape[1] < full.shape[1]
    assert set(map(tuple, local.T)) <= set(map(tuple, full.T))
