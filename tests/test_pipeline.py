"""End to end: `topoland run` on the tiny config produces every table and a readable PDF."""
import shutil

import pandas as pd
import pytest

from tests.helpers import ROOT, cli

TINY = ROOT / "tests" / "data" / "tiny_pipeline.toml"

EXPECTED_TABLES = ["features.csv", "features.parquet", "classifiers.csv", "correlations.csv", "comparisons.csv"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("pipeline")
    r = cli("run", TINY, "--out", work / "runs" / "tiny", "--quiet", cwd=work, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    return work, r


def test_run_prints_where_results_are(tiny_run):
    work, r = tiny_run
    assert "run directory:" in r.stdout and "tables:" in r.stdout and "report:" in r.stdout


def test_every_table_is_written(tiny_run):
    work, _ = tiny_run
    run = work / "runs" / "tiny"
    for name in EXPECTED_TABLES:
        assert (run / "run" / "analysis" / name).is_file(), name
    pairs = pd.read_csv(run / "run" / "paths" / "pairs.csv")
    assert {"a", "b", "linear.train_loss.max", "neb.train_loss.max_minus_linear"} <= set(pairs.columns)
    feats = pd.read_csv(run / "run" / "analysis" / "features.csv")
    assert len(feats) == 10
    for group in ("trajectory", "topology", "surface", "curvature"):
        assert any(c.startswith(group + ".") for c in feats.columns), group
    assert {"topology.total_persistence_h0", "topology.activity_h0", "topology.n_basins",
            "topology.loss_range", "topology.graph_components"} <= set(feats)
    clf = pd.read_csv(run / "run" / "analysis" / "classifiers.csv")
    assert set(clf.group) >= {"topology", "trajectory", "all"}
    # the tables also sit beside the PDF
    for name in ("minima.csv", "classifiers.csv", "pairs.csv"):
        assert (work / "reports" / f"tiny_{name}").is_file(), name


def test_pdf_pages_and_headings(tiny_run):
    from pypdf import PdfReader
    work, _ = tiny_run
    pdf = work / "reports" / "tiny.pdf"
    reader = PdfReader(pdf)
    texts = [p.extract_text() for p in reader.pages]
    assert texts[0].startswith("topoland report: tiny") or "topoland report: tiny" in texts[0]
    joined = "\n".join(texts)
    for heading in ("The minima", "Minimum M1", "Topology vs generalization", "Classifier table",
                    "Paths: barrier profiles", "Notes"):
        assert heading in joined, heading
    import re
    assert sum(bool(re.search(r"Minimum M\d+:", t)) for t in texts) == 10  # one page per minimum
    # every page has a title and the footer with its number
    for i, t in enumerate(texts, 1):
        assert f"page {i}" in t


def test_pdf_page_renders_to_png(tiny_run, tmp_path):
    import pymupdf
    from matplotlib.image import imread
    work, _ = tiny_run
    with pymupdf.open(work / "reports" / "tiny.pdf") as doc:
        doc[2].get_pixmap(dpi=50).save(tmp_path / "page3.png")
    img = imread(tmp_path / "page3.png")
    assert img.shape[1] > img.shape[0] and img[..., :3].std() > 0.05


def test_rerun_skips_everything_and_verify_passes(tiny_run):
    work, _ = tiny_run
    run = work / "runs" / "tiny"
    before = (run / "run" / "analysis" / "features.csv").stat().st_mtime_ns
    r = cli("run", TINY, "--out", run, "--quiet", cwd=work)
    assert r.returncode == 0, r.stderr
    assert (run / "run" / "analysis" / "features.csv").stat().st_mtime_ns == before
    assert cli("verify", run).returncode == 0


def test_compare_and_list_on_the_run(tiny_run):
    work, _ = tiny_run
    run = work / "runs" / "tiny"
    r = cli("compare", run, "--by", "train.weight_decay", "--metric", "gap", "--permutations", "99")
    assert r.returncode == 0, r.stderr
    # over the grid cells, stratified on the other axes: 4 matched pairs
    assert "stratified on train.batch_size, train.lr: 4 strata" in r.stdout
    assert "smallest attainable p = 0.125" in r.stdout and "Wilcoxon signed-rank on 4 matched pairs" in r.stdout
    r = cli("compare", run, "--by", "train.nothing", "--metric", "test_acc")
    assert r.returncode == 2 and "train.nothing" in r.stderr
    assert cli("list", run).stdout.count("report") == 0


def _checkpoints(run):
    return sorted((run / "cells").glob("*/train/model.safetensors"))


def test_neb_between_two_checkpoints(tiny_run, tmp_path):
    import json
    work, _ = tiny_run
    a, b = _checkpoints(work / "runs" / "tiny")[:2]
    r = cli("neb", a, b, "--steps", "5", "--images", "5", "--out", tmp_path / "ab")
    assert r.returncode == 0, r.stderr
    bars = json.loads((tmp_path / "ab" / "barriers.json").read_text())
    assert {"linear.train_loss", "neb.train_loss", "neb.test_error"} <= set(bars)
    prof = pd.read_csv(tmp_path / "ab" / "profile_neb.csv")
    assert len(prof) == 61 and {"t", "train_loss", "test_error"} <= set(prof.columns)
    assert (tmp_path / "ab" / "profiles.png").stat().st_size > 0


def test_surface_of_a_checkpoint_and_interpolation(tiny_run, tmp_path):
    from topoland.landscape.storage import read_grid
    work, _ = tiny_run
    a, b = _checkpoints(work / "runs" / "tiny")[:2]
    r = cli("surface", a, "--grid", "5", "--out", tmp_path / "p")
    assert r.returncode == 0, r.stderr
    g = read_grid(tmp_path / "p.h5")
    assert g["values"]["train_loss"].shape == (5, 5) and g["done"].all()
    assert (tmp_path / "p.vtk").read_text().startswith("# vtk DataFile")
    r = cli("surface", a, "--kind", "interpolate", "--other", b, "--grid", "5", "--range", "0:1",
            "--out", tmp_path / "i")
    assert r.returncode == 0, r.stderr
    line = pd.read_csv(tmp_path / "i.csv")
    assert line.alpha.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    r = cli("surface", a, "--kind", "interpolate", "--out", tmp_path / "x")
    assert r.returncode == 2 and "--other" in r.stderr


def test_connect_grows_a_spanning_tree(tiny_run):
    work, _ = tiny_run
    run = work / "runs" / "tiny"
    r = cli("connect", run, "--steps", "3")
    assert r.returncode == 0, r.stderr
    pairs = pd.read_csv(run / "run" / "paths" / "pairs.csv")
    assert pairs["in_mst"].sum() == 9  # a spanning tree of 10 minima
    assert cli("verify", run).returncode == 0


def test_topology_stage_with_sketched_distances(tiny_run, tmp_path):
    """`topoland topology RUN --set distances=sketch` recomputes every minimum's topology from
    a count sketch and records the choice; the default run stays exact."""
    import json
    work, _ = tiny_run
    run = tmp_path / "tiny"
    shutil.copytree(work / "runs" / "tiny", run)
    files = sorted(run.rglob("topology.safetensors"))
    assert files
    r = cli("topology", run, "--set", "distances=sketch", "--set", "sketch_dim=64", "--force",
            "--quiet")
    assert r.returncode == 0, r.stdout + r.stderr
    from safetensors import safe_open
    for f in files:
        with safe_open(str(f), "pt") as fh:
            settings = json.loads(fh.metadata()["settings"])
        assert settings["distances"] == "sketch" and settings["sketch_dim"] == 64
    bad = cli("topology", run, "--set", "distances=pca", "--force", "--quiet")
    assert bad.returncode != 0 and "topology.distances" in bad.stderr


def test_no_feature_from_the_test_split_and_fair_comparisons(tiny_run):
    """On a real run: no feature group of the stored table holds a column of the test split (the
    retrained jumps' test accuracy is left out, with a note); the comparisons keep the extra
    cells apart and carry adjusted and smallest attainable p-values."""
    import json

    from topoland.analysis.features import is_test_derived, load_feature_table
    work, _ = tiny_run
    run = work / "runs" / "tiny"
    d = run / "run" / "analysis"
    meta = json.loads((d / "features.json").read_text())
    assert set(meta["groups"]) >= {"trajectory", "topology", "surface", "curvature"}
    for group, cols in meta["groups"].items():
        assert not [c for c in cols if "test" in c], group
    assert "trajectory.final_test_acc_mean" in meta["excluded"]
    ft = load_feature_table(d)
    assert not [c for c in ft.columns() if is_test_derived(c)]
    assert {"test_acc", "gap"} <= set(ft.metrics)  # still there, as targets
    notes = json.loads((d / "notes.json").read_text())
    assert any("trajectory.final_test_acc_mean left out" in n for n in notes)
    corr = pd.read_csv(d / "correlations.csv")
    assert not corr["feature"].map(is_test_derived).any() and {"spearman_p_adj", "finding"} <= set(corr.columns)
    clf = pd.read_csv(d / "classifiers.csv")
    assert {"se_across_classifiers", "cv_se", "p_min", "p_adjusted"} <= set(clf.columns)
    comps = pd.read_csv(d / "comparisons.csv")
    grid = comps[comps["family"] == "grid"]
    assert set(grid["by"]) == {"train.weight_decay", "train.batch_size", "train.lr"}
    assert ((grid["n_a"] + grid["n_b"]) == 8).all()  # the 8 grid cells, never the 2 extra ones
    assert {"curvature.sharpness", "curvature.top_eigenvalue", "curvature.trace",
            "curvature.log_volume"} <= set(grid["metric"])
    assert set(comps.loc[comps["family"] == "extra", "by"]) == {"train.pretrain_random_epochs=3"}
    assert comps["p_min"].notna().all() and (comps["finding"] == (comps["p_adjusted"] < 0.05)).all()
    assert (d / "flatness.csv").is_file()
    r = cli("compare", run, "--by", "train.pretrain_random_epochs", "--metric", "test_acc")
    assert r.returncode == 0, r.stderr
    assert "_cells" not in r.stdout and "smallest attainable p" in r.stdout and "extra: 2" in r.stdout
    r = cli("compare", run, "--by", "train.augment", "--metric", "test_acc")
    assert r.returncode == 2 and "'train.augment' is not varied by the grid" in r.stderr
    assert "train.weight_decay, train.batch_size, train.lr" in r.stderr and "cells per value of 'train.augment': False: 10" in r.stderr
