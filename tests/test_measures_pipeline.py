"""A tiny generalization-measure population end to end: the measures stage, the scores of every
measure (and the supervised baselines, and the held-out split) and the report page."""
import json

import pandas as pd
import pytest

from tests.helpers import ROOT, cli

CONFIG = ROOT / "tests" / "data" / "tiny_measures.toml"


@pytest.fixture(scope="module")
def population(tmp_path_factory):
    work = tmp_path_factory.mktemp("measures")
    r = cli("run", CONFIG, "--out", work / "runs" / "tiny_measures", "--quiet", cwd=work, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    return work, work / "runs" / "tiny_measures"


def test_every_minimum_has_its_measures_and_init(population):
    _, run = population
    cells = sorted((run / "cells").iterdir())
    assert len(cells) == 8
    for c in cells:
        assert (c / "train" / "init.safetensors").is_file()
        m = json.loads((c / "measures" / "measures.json").read_text())
        assert m["n_params"] > 0 and m["dist_init"] > 0
        assert json.loads((c / "measures" / "weights.json").read_text())


def test_scores_rank_every_measure_with_baselines_and_held_out(population):
    _, run = population
    scores = pd.read_csv(run / "run" / "analysis" / "scores.csv")
    feats = pd.read_csv(run / "run" / "analysis" / "features.csv")
    measures = [c for c in feats.columns if c.startswith("measures.")]
    assert measures and set(measures) <= set(scores.measure)
    assert "supervised.weights" in set(scores.measure)
    for col in ("kendall_tau", "psi", "pgdl", "robust_sign_error", "psi_ci_low", "psi_ci_high",
                "held_out_psi", "tau_model", "tau_train.weight_decay"):
        assert col in scores.columns, col
    ok = scores.dropna(subset=["psi"])
    assert ((ok.psi_ci_low <= ok.psi + 1e-12) & (ok.psi <= ok.psi_ci_high + 1e-12)).all()
    # the parameter count does not change with weight decay: its tau along that axis is exactly 0
    row = scores.set_index("measure").loc["measures.n_params"]
    assert row["tau_train.weight_decay"] == 0.0 and row["tau_model"] != 0.0


def test_report_has_the_measures_page(population):
    from pypdf import PdfReader
    work, _ = population
    text = "\n".join(p.extract_text() for p in PdfReader(work / "reports" / "tiny_measures.pdf").pages)
    assert "Measures vs generalization" in text
    assert "the top measures against the gap" in text
