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
    assert "topology.total_persistence_h0" in feats
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
    for heading in ("The minima", "Minimum M1", "Total persistence vs generalization", "Classifier table",
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
    r = cli("compare", run, "--by", "train.weight_decay", "--metric", "test_acc", "--permutations", "99")
    assert r.returncode == 0, r.stderr
    assert "Mann-Whitney" in r.stdout or "mann" in r.stdout.lower()
    r = cli("compare", run, "--by", "train.nothing", "--metric", "test_acc")
    assert r.returncode == 2 and "train.nothing" in r.stderr
    assert cli("list", run).stdout.count("report") == 0
