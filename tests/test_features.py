"""Feature table: assembly, naming, missing groups, derived metrics, CSV/Parquet round trip."""
import json

import numpy as np
import pandas as pd
import pytest

from topoland.analysis.features import (
    AnalysisError,
    feature_table,
    load_feature_table,
    resolve_column,
    save_feature_table,
)
from topoland.errors import TopolandError


def _cells():
    return pd.DataFrame({
        "cell_id": ["c0", "c1", "c2", "c3"],
        "train.weight_decay": [0.0, 0.0, 5e-4, 5e-4],  # the runner's dotted setting names
        "augment": [False, True, False, True],
        "seed": [0, 1, 2, 3],
        "train_loss": [0.1, 0.2, 0.3, 0.4],
        "test_loss": [0.5, 0.4, 0.6, 0.45],
        "train_acc": [1.0, 0.99, 0.98, 0.97],
        "test_acc": [0.8, 0.85, 0.82, 0.9],
    })


def _groups():
    topo = pd.DataFrame({"total_persistence_h0": [1.0, 2.0, 3.0, 4.0],
                         "total_persistence_h1": [0.5, 0.1, 0.2, 0.3]},
                        index=pd.Index(["c0", "c1", "c2", "c3"], name="cell_id"))
    curv = pd.DataFrame({"top_eigenvalue": [10.0, 20.0]}, index=pd.Index(["c2", "c0"], name="cell_id"))
    return {"topology": topo, "curvature": curv, "surface": None}


def test_assembly_naming_and_missing():
    ft = feature_table(_cells(), _groups())
    df = ft.frame
    assert df.index.name == "cell_id" and list(df.index) == ["c0", "c1", "c2", "c3"]
    assert ft.groups == {"topology": ["topology.total_persistence_h0", "topology.total_persistence_h1"],
                         "curvature": ["curvature.top_eigenvalue"]}
    assert "surface" not in ft.groups and not any(c.startswith("surface.") for c in df.columns)
    assert ft.settings == ["train.weight_decay", "augment", "seed"]
    assert ft.metrics == ["train_loss", "train_acc", "test_loss", "test_acc", "gap", "acc_gap"]
    # derived metrics: gap = test_loss - train_loss, acc_gap = train_acc - test_acc
    np.testing.assert_allclose(df["gap"], [0.4, 0.2, 0.3, 0.05])
    np.testing.assert_allclose(df["acc_gap"], [0.2, 0.14, 0.16, 0.07])
    # curvature aligned by cell_id, not by position; absent cells are NaN and reported
    assert df.loc["c2", "curvature.top_eigenvalue"] == 10.0 and df.loc["c0", "curvature.top_eigenvalue"] == 20.0
    assert df.loc[["c1", "c3"], "curvature.top_eigenvalue"].isna().all()
    assert ft.missing == {"curvature": ["c1", "c3"]}
    assert ft.columns() == ft.groups["topology"] + ft.groups["curvature"]
    assert ft.columns("curvature") == ["curvature.top_eigenvalue"]
    with pytest.raises(AnalysisError, match="surface"):
        ft.columns("surface")


def test_given_gap_is_kept_and_index_input():
    cells = _cells().set_index("cell_id")
    cells["gap"] = 9.0
    ft = feature_table(cells)
    assert (ft.frame["gap"] == 9.0).all() and ft.groups == {}


@pytest.mark.parametrize("mutate, match", [
    (lambda c, g: (pd.concat([c, c.iloc[[0]]]), g), "duplicated cell_id"),
    (lambda c, g: (c.drop(columns="cell_id"), g), "cell_id"),
    (lambda c, g: (c, {**g, "topology": g["topology"].rename(index={"c3": "zz"})}), "unknown cell_id.*zz"),
    (lambda c, g: (c, {**g, "topology": g["topology"].assign(kind="a")}), "non-numeric"),
    (lambda c, g: (c, {"bad.name": g["topology"]}), "bad.name"),
    (lambda c, g: (c.assign(**{"topology.x": 1.0}), g), "look like features"),
])
def test_bad_input_raises_topoland_error(mutate, match):
    c, g = mutate(_cells(), _groups())
    with pytest.raises(TopolandError, match=match):
        feature_table(c, g)


def test_csv_parquet_round_trip(tmp_path):
    ft = feature_table(_cells(), _groups())
    paths = save_feature_table(ft, tmp_path / "tables")
    assert all(p.exists() for p in paths.values())
    meta = json.loads(paths["json"].read_text())
    assert meta["groups"] == ft.groups and meta["missing"] == {"curvature": ["c1", "c3"]}
    for prefer in ("parquet", "csv"):
        back = load_feature_table(tmp_path / "tables", prefer=prefer)
        pd.testing.assert_frame_equal(back.frame, ft.frame, check_dtype=(prefer == "parquet"))
        assert back.groups == ft.groups and back.settings == ft.settings and back.metrics == ft.metrics
        assert back.missing == ft.missing
    # no temporary files left behind
    assert sorted(p.name for p in (tmp_path / "tables").iterdir()) == ["features.csv", "features.json", "features.parquet"]


def test_load_rejects_mismatched_json(tmp_path):
    ft = feature_table(_cells(), _groups())
    save_feature_table(ft, tmp_path)
    meta = json.loads((tmp_path / "features.json").read_text())
    meta["groups"]["topology"].append("topology.nope")
    (tmp_path / "features.json").write_text(json.dumps(meta))
    with pytest.raises(AnalysisError, match="topology.nope"):
        load_feature_table(tmp_path)
    with pytest.raises(AnalysisError, match="features.json"):
        load_feature_table(tmp_path / "empty")


def test_resolve_column():
    ft = feature_table(_cells(), _groups())
    assert resolve_column(ft, "total_persistence_h1") == "topology.total_persistence_h1"
    assert resolve_column(ft, "test_acc") == "test_acc"
    df = ft.frame.assign(**{"surface.total_persistence_h1": 1.0})
    with pytest.raises(AnalysisError, match="ambiguous"):
        resolve_column(df, "total_persistence_h1")
    with pytest.raises(AnalysisError, match="not in the feature table"):
        resolve_column(ft, "nope")


# ------------------------------------------------------------------ no feature from the test split


def test_test_split_name_rule():
    from topoland.analysis.features import TEST_TARGETS, is_test_derived
    for name in ("trajectory.final_test_acc_mean", "paths.linear.test_loss.max", "surface.test_rise",
                 "ensemble.test_acc", "test_acc", "gen_label", "x.test"):
        assert is_test_derived(name), name
    for name in ("trajectory.final_val_acc_mean", "topology.total_persistence_h0", "surface.contest_score",
                 "curvature.latest", "train_acc"):
        assert not is_test_derived(name), name
    assert set(TEST_TARGETS) == {"test_loss", "test_acc", "gap", "acc_gap", "gen_label"}


def test_feature_table_leaves_out_test_split_features_with_a_note(tmp_path):
    traj = pd.DataFrame({"final_val_acc_mean": [0.8, 0.7, 0.9, 0.6], "final_test_acc_mean": [0.7, 0.6, 0.8, 0.5]},
                        index=pd.Index(["c0", "c1", "c2", "c3"], name="cell_id"))
    ft = feature_table(_cells(), _groups() | {"trajectory": traj})
    assert ft.groups["trajectory"] == ["trajectory.final_val_acc_mean"]
    assert "trajectory.final_test_acc_mean" not in ft.frame.columns
    assert ft.excluded == {"trajectory.final_test_acc_mean": "name marks the test split"}
    # the test metrics stay, as targets
    assert {"test_acc", "test_loss", "gap", "acc_gap"} <= set(ft.metrics)
    paths = save_feature_table(ft, tmp_path)
    meta = json.loads(paths["json"].read_text())
    assert meta["excluded"] == ft.excluded and "targets only" in meta["test_split_rule"]
    assert load_feature_table(tmp_path).excluded == ft.excluded
    with pytest.raises(AnalysisError, match=r"'trajectory'.*trajectory.final_test_acc_mean.*test split"):
        feature_table(_cells(), {"trajectory": traj}, on_test="raise")


def test_declared_test_groups_and_no_table_holds_a_test_feature(tmp_path):
    # a topology filtered by test loss carries no 'test' in its names: the caller declares it
    ft = feature_table(_cells(), _groups(), test_derived={"topology": "all"})
    assert "topology" not in ft.groups and set(ft.excluded) == {"topology.total_persistence_h0",
                                                                "topology.total_persistence_h1"}
    ft = feature_table(_cells(), _groups(), test_derived={"topology": ["total_persistence_h1"]})
    assert ft.groups["topology"] == ["topology.total_persistence_h0"]
    assert ft.excluded == {"topology.total_persistence_h1": "declared computed from the test split"}
    with pytest.raises(AnalysisError, match="does not have"):
        feature_table(_cells(), _groups(), test_derived={"topology": ["nope"]})
    # a FeatureTable refuses a test-derived feature, however it is made
    from topoland.analysis.features import FeatureTable
    good = feature_table(_cells(), _groups())
    with pytest.raises(AnalysisError, match="test_acc.*test split"):
        FeatureTable(frame=good.frame, groups={"leak": ["test_acc"]}, settings=good.settings, metrics=good.metrics)
    # a table stored before the rule: the leaking column is left out when it is read
    save_feature_table(good, tmp_path)
    frame = good.frame.assign(**{"topology.final_test_acc_mean": 0.5})
    frame.to_csv(tmp_path / "features.csv")
    frame.to_parquet(tmp_path / "features.parquet")
    meta = json.loads((tmp_path / "features.json").read_text())
    meta["groups"]["topology"].append("topology.final_test_acc_mean")
    del meta["excluded"]
    (tmp_path / "features.json").write_text(json.dumps(meta))
    back = load_feature_table(tmp_path)
    assert "topology.final_test_acc_mean" not in back.frame and back.groups == good.groups
    assert "topology.final_test_acc_mean" in back.excluded
