"""The PDF report of a run directory.

The run directories here are built WITHOUT training: every stage folder is written through
``RunStore.stage`` with the project's own writers (``save_samples``, ``save_tensors`` in the
layout of the topology stage, ``GridStore`` for ``plane.h5``, the real persistence and feature
functions, and the real analysis stage on the resulting summaries). The numbers are
well-formed inputs of the right shapes and formats, not results of any experiment.
"""
import json
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch

from topoland.runs.config import expand_grid, to_toml, validate
from topoland.landscape import GridStore, Surface, barriers, surface_features
from topoland.report import ReportError, build_report
from topoland.sampling import TABLE_COLUMNS, SampleResult, save_samples, trajectory_features
from topoland.io import save_tensors
from topoland.runs import layout
from topoland.runs.store import RUN_LEVEL, RunStore
from topoland.topology import (diagram_features, euclidean_distances, knn_graph, landscape_features,
                               lower_star_persistence, vertex_values)

D = 12                      # parameters of the fake network
STEPS = [0.5, 1.0]
N_DIR = 2
EPOCHS = 6                  # records per trajectory (epoch 0 = the jump point)
K = 4                       # k-NN graph


def _config(name, grid, **sections):
    raw = {"run": {"name": name, "seed": 0}, "data": {"name": "synthetic"},
           "model": {"name": "mlp", "widths": [4]}, "train": {"epochs": 2},
           "sample": {"directions": N_DIR, "steps": STEPS, "epochs": EPOCHS - 1},
           "topology": {"k": K}, "surface": {"grid": 7},
           "paths": {"pairs": "all", "method": "neb"},
           "analysis": {"targets": ["gen_label", "train.batch_size"], "n_splits": 2, "n_repeats": 1,
                        "n_permutations": 1, "compare_permutations": 99, "n_boot": 50},
           "grid": grid} | sections
    cfg = validate(raw)
    return cfg, expand_grid(cfg)


def _train(store, cid, i):
    with store.stage(cid, "train") as box:
        pd.DataFrame({"epoch": [1, 2], "train_loss": [0.9, 0.5]}).to_csv(box["dir"] / layout.HISTORY, index=False)
        train_loss, test_loss = 0.05 + 0.02 * i, 0.3 + 0.04 * i + 0.01 * (i % 2)
        box["summary"] = {"train_loss": train_loss, "train_acc": 0.99 - 0.01 * i, "val_loss": test_loss,
                          "val_acc": 0.9 - 0.015 * i, "test_loss": test_loss, "test_acc": 0.9 - 0.02 * i,
                          "gap": test_loss - train_loss, "acc_gap": 0.09 + 0.01 * i, "diverged": False}


def _samples(i, n_diverged=0):
    rng = np.random.default_rng(i)
    theta = rng.normal(size=D).astype(np.float32)
    dirs = rng.normal(size=(N_DIR, D)).astype(np.float32)
    rows, params = [], []
    for t in range(N_DIR * len(STEPS)):
        d, s = divmod(t, len(STEPS))
        diverged = t >= N_DIR * len(STEPS) - n_diverged
        for e in range(EPOCHS):
            decay = np.exp(-0.5 * e)
            params.append(theta + STEPS[s] * decay * dirs[d] + 0.05 * rng.normal(size=D).astype(np.float32))
            loss = np.nan if diverged and e > 2 else 0.1 + i * 0.02 + STEPS[s] * decay + 0.01 * rng.random()
            rows.append({"sample_id": len(rows), "trajectory": t, "direction": d, "step": STEPS[s], "epoch": e,
                         "train_loss": loss, "train_acc": 0.9, "val_loss": loss, "val_acc": 0.85,
                         "test_loss": loss, "test_acc": 0.84, "diverged": bool(diverged and e > 2)})
    table = pd.DataFrame(rows)[list(TABLE_COLUMNS)]
    return SampleResult(table=table, params=torch.tensor(np.array(params)), gram=None, projection=None,
                        theta_star=torch.tensor(theta), directions=torch.tensor(dirs),
                        config={"steps": STEPS, "n_directions": N_DIR})


def _sample_and_topology(store, cid, i, n_diverged=0, topology=True):
    res = _samples(i, n_diverged)
    with store.stage(cid, "sample") as box:
        save_samples(res, box["dir"])
        feats = trajectory_features(res.table, theta_star=res.theta_star, params=res.params)
        box["summary"] = feats | {"n_samples": len(res.table), "n_trajectories_diverged": n_diverged,
                                  "options": {"directions": N_DIR, "steps": STEPS}}
    if not topology:
        return
    # the topology stage's layout, with a PCA plane standing in for PHATE
    t = res.table
    keep = t.sample_id[~t.diverged & np.isfinite(t.val_loss)].to_numpy()
    x = res.params.numpy()[keep].astype(np.float64)
    x -= x.mean(0)
    coords = np.linalg.svd(x, full_matrices=False)[0][:, :2]
    edges = knn_graph(euclidean_distances(coords), k=K)
    values = vertex_values(t, "val_loss", keep)
    dg = lower_star_persistence(edges, values, complex="flag")
    feats = diagram_features(dg, p=2, essential="drop", cap=float(values.max()))
    feats |= landscape_features(dg, values, min_persistence=0.01)
    with store.stage(cid, "topology") as box:
        arrays = {"sample_ids": keep, "coords": coords, "plane": coords, "edges": edges, "values": values}
        arrays |= {f"diagram_h{d}": np.asarray(v, dtype=np.float64).reshape(-1, 2) for d, v in dg.items()}
        save_tensors(box["dir"] / layout.TOPOLOGY, {k: torch.as_tensor(np.array(v)) for k, v in arrays.items()},
                     metadata={"t_used": 20, "settings": {"k": K, "value": "val_loss"}})
        (box["dir"] / layout.TOPOLOGY_FEATURES).write_text(json.dumps(feats))
        pd.DataFrame([{"feature": f, "estimate": feats[f], "low": 0.9 * feats[f], "high": 1.1 * feats[f],
                       "n_resamples": 5} for f in ("n_basins", "activity_h0", "loss_range")]
                     ).to_csv(box["dir"] / layout.INTERVALS, index=False)
        box["summary"] = feats | {"t_used": 20}


def _surface(store, cid, i):
    xs = ys = np.linspace(-1, 1, 7)
    gx, gy = np.meshgrid(xs, ys)
    bowl = 0.05 + (1 + 0.3 * i) * gx ** 2 + 0.5 * gy ** 2
    vals = {"train_loss": bowl, "train_acc": 1 - bowl / 4, "test_loss": bowl + 0.2, "test_acc": 0.9 - bowl / 4}
    alphas = np.linspace(-1, 1, 9)
    with store.stage(cid, "surface") as box:
        with GridStore.open(box["dir"] / layout.PLANE, xs=xs, ys=ys, directions=np.eye(2, D),
                            metrics=list(vals), kind="plane") as g:
            g.write(np.arange(49), {k: v.reshape(-1) for k, v in vals.items()})
        lines = []
        for j in range(2):
            c = 0.05 + (1 + j + 0.2 * i) * alphas ** 2
            df = pd.DataFrame({"alpha": alphas, "train_loss": c, "train_acc": 1 - c / 4,
                               "test_loss": c + 0.2, "test_acc": 0.9 - c / 4})
            df.to_csv(box["dir"] / layout.line_csv(j), index=False)
            lines.append(Surface(xs=alphas, ys=None, values={k: df[k].to_numpy() for k in df if k != "alpha"},
                                 meta={"kind": "random_line"}))
        plane = Surface(xs=xs, ys=ys, values=vals, meta={"kind": "plane"})
        box["summary"] = surface_features([plane] + lines)


def _curvature(store, cid, i):
    with store.stage(cid, "curvature") as box:
        feats = {"top_eigenvalue": 2.0 + i, "trace": 10.0 + 2 * i, "sharpness": 0.5 + 0.1 * (i % 3),
                 "log_volume": -3.0 - 0.2 * i}
        (box["dir"] / layout.CURVATURE).write_text(json.dumps(feats))
        grid = np.linspace(-1, 5 + i, 50)
        pd.DataFrame({"eigenvalue": grid, "density": np.exp(-grid ** 2) + 1e-3}).to_csv(
            box["dir"] / layout.DENSITY, index=False)
        box["summary"] = feats


def _paths(store, ids):
    t = np.linspace(0, 1, 21)
    rows = []
    with store.stage(RUN_LEVEL, "paths") as box:
        pairs = [(ids[0], ids[1]), (ids[0], ids[2]), (ids[1], ids[2])]
        for k, (a, b) in enumerate(pairs):
            pdir = box["dir"] / layout.pair_dir(a, b)
            pdir.mkdir()
            row = {"a": a, "b": b, "method": "neb"}
            for name, h in (("linear", 1.0 + k), ("neb", 0.1 + 0.05 * k)):
                bump = h * np.sin(np.pi * t)
                prof = pd.DataFrame({"t": t, "train_loss": 0.05 + bump, "train_error": 0.01 + bump / 5,
                                     "test_loss": 0.3 + bump, "test_error": 0.1 + bump / 5})
                prof.to_csv(pdir / layout.profile_csv(name), index=False)
                for col in ("train_loss", "test_loss", "train_error", "test_error"):
                    bar = barriers(prof, column=col)
                    for kind in ("max", "max_minus_linear", "max_minus_mean"):
                        row[f"{name}.{col}.{kind}"] = bar[kind]
            rows.append(row)
        pd.DataFrame(rows).to_csv(box["dir"] / layout.table_csv(layout.PAIRS), index=False)
        box["summary"] = {"n_pairs": len(rows)}


N_FULL = 3  # minima with topology and surface (one report page each)


def make_full_run(path):
    """10 minima (the fewest the classifier table accepts): train, sample and curvature for all,
    topology and surface for the first 3; one cell with a diverged trajectory; paths among the
    first 3 minima."""
    from topoland.pipeline.run_stages import stage_analysis
    cfg, cells = _config("tinyreport", {"train.weight_decay": [0.0, 0.0001, 0.001, 0.003, 0.01],
                                        "train.batch_size": [16, 32]})
    store = RunStore.create(path, to_toml(cfg), cells)
    ids = [c.cell_id for c in cells]
    for i, cid in enumerate(ids):
        _train(store, cid, i)
        _sample_and_topology(store, cid, i, n_diverged=1 if i == 1 else 0, topology=i < N_FULL)
        if i < N_FULL:
            _surface(store, cid, i)
        _curvature(store, cid, i)
    _paths(store, ids)
    with store.stage(RUN_LEVEL, "analysis") as box:
        box["summary"] = stage_analysis(store, cfg, box["dir"])
    store.set_meta("seconds", {"cells": 12.5, "paths": 3.0, "analysis": 1.5})
    return store, cells


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    store, cells = make_full_run(root / "run")
    out = build_report(store.path, root / "out" / "report.pdf")
    return store, cells, out


def _page_texts(path):
    from pypdf import PdfReader
    return [" ".join(p.extract_text().split()) for p in PdfReader(str(path)).pages]


def _base(h):
    return re.sub(r" \(\d+/\d+\)$", "", h)


def test_report_pages_and_headings(full_report):
    store, cells, out = full_report
    minima = [f"Minimum M{c.position + 1}: {c.label}" for c in cells[:N_FULL]]
    # correlations need 5 complete rows per feature: the analysis leaves them out here (3 topologies)
    corr = (store.stage_dir(RUN_LEVEL, "analysis") / "correlations.csv").is_file()
    expected = (["topoland report: tinyreport", "The minima: settings and metrics"] + minima
                + ["Topology features with resampling intervals", "Topology vs generalization"] + ["Rank correlations with generalization"] * corr
                + ["Metrics by grid setting", "Classifier table",
                   "Classifier table: both standard errors and adjusted p",
                   "Accuracy ± cross-validation SE per classifier",
                   "Statistical comparisons by grid setting", "Flatness by batch size"]
                # the topology and curvature features scored as generalization measures
                + ["Measures vs generalization", "Measures vs generalization: tau along each axis",
                   "Measures vs generalization: the top measures against the gap"]
                + ["Paths: barrier profiles", "Paths: disconnectivity graph", "Notes"])
    assert list(dict.fromkeys(_base(h) for h in out["headings"])) == expected
    texts = _page_texts(out["path"])
    assert len(texts) == out["pages"] == len(out["headings"])
    for h, text in zip(out["headings"], texts):
        assert " ".join(h.split()) in text, (h, text[:200])
    # the title page lists versions, the grid and a per-stage time table
    for word in ("torch", "gudhi", "phate", "sklearn", "numpy",
                 "train.weight_decay", "wall time per stage", "curvature"):
        assert word in texts[0], word
    # the diverged trajectory is on the notes page
    notes = " ".join(t for h, t in zip(out["headings"], texts) if _base(h) == "Notes")
    assert "M2: 1 of 4 jump-and-retrain trajectories diverged" in notes
    assert "topology: not run for 7 of 10 minima" in notes
    assert not list(out["path"].parent.glob(".*tmp*"))


def test_report_tables_beside_pdf(full_report):
    store, cells, out = full_report
    d = out["path"].parent
    for name in ("minima", "features", "classifiers", "comparisons", "pairs"):
        assert (d / f"{name}.csv").is_file(), name
    # correlations.csv only where the analysis wrote one (it needs 5 complete rows per feature)
    analysis = store.stage_dir(RUN_LEVEL, "analysis")
    assert (d / "correlations.csv").is_file() == (analysis / "correlations.csv").is_file()
    minima = pd.read_csv(d / "minima.csv")
    assert list(minima.cell_id) == [c.cell_id for c in cells]
    pairs = pd.read_csv(d / "pairs.csv")
    # the profiles' sin bump of height h over the chord: max_minus_linear = h
    assert np.allclose(pairs["linear.train_loss.max_minus_linear"], [1.0, 2.0, 3.0])
    assert (pd.read_csv(d / "classifiers.csv").columns.str.startswith("acc_")).sum() == 11


def test_report_pages_render_to_png(full_report, tmp_path):
    import pymupdf  # a PDF renderer from PyPI (the test extra), so CI needs no system package
    from matplotlib.image import imread
    _, _, out = full_report
    with pymupdf.open(out["path"]) as doc:
        for i in range(3):
            doc[i].get_pixmap(dpi=40).save(tmp_path / f"p-{i}.png")
    pngs = sorted(tmp_path.glob("p-*.png"))
    assert len(pngs) == 3
    for p in pngs:
        img = imread(p)
        assert img.shape[1] > img.shape[0]          # landscape
        assert img[..., :3].std() > 0.05            # not a blank page


def test_failed_and_skipped_stages_on_notes_page(tmp_path):
    cfg, cells = _config("tinyfail", {"train.weight_decay": [0.0, 0.001, 0.01]})
    store = RunStore.create(tmp_path / "run", to_toml(cfg), cells)
    ids = [c.cell_id for c in cells]
    for i, cid in enumerate(ids):
        _train(store, cid, i)
    with pytest.raises(RuntimeError):
        with store.stage(ids[1], "sample"):
            raise RuntimeError("fake failure in sampling\nsecond line of the traceback")
    with store.stage(ids[2], "surface") as box:
        box["summary"] = {"skipped": "surface.kind = 'none'"}
    out = build_report(store.path, tmp_path / "r" / "report.pdf")
    assert out["headings"] == ["topoland report: tinyfail", "The minima: settings and metrics", "Notes"]
    notes = _page_texts(out["path"])[-1]
    assert "M2 sample: failed: RuntimeError: fake failure in sampling" in notes
    assert "second line" not in notes
    assert "M3 surface: skipped (surface.kind = 'none')" in notes
    assert "topology: not run for 3 of 3 minima" in notes
    assert "analysis: did not run" in notes
    assert sorted(p.name for p in out["path"].parent.iterdir()) == ["minima.csv", "report.pdf"]


def test_report_refuses_non_pdf_path(tmp_path):
    cfg, cells = _config("tinyname", {"train.weight_decay": [0.0, 0.001]})
    store = RunStore.create(tmp_path / "run", to_toml(cfg), cells)
    with pytest.raises(ReportError, match="must end in .pdf"):
        build_report(store.path, tmp_path / "report.png")


def test_small_fonts_are_raised_to_the_minimum():
    from matplotlib.figure import Figure

    from topoland.report.document import MIN_FONT_PT, enforce_min_font
    fig = Figure()
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot([0, 1], label="a")
    ax1.legend(fontsize="x-small", title="t", title_fontsize=5)
    g = np.linspace(-1, 1, 9)
    cs = ax2.contour(g, g, g[:, None] ** 2 + g[None] ** 2)
    ax2.clabel(cs, fontsize=6)
    ax2.text(0, 0, "note", fontsize=5)
    fig.text(0.1, 0.1, "foot", fontsize=4)
    small = [t for t in [*ax1.get_legend().get_texts(), ax1.get_legend().get_title(), *cs.labelTexts,
                         *ax2.texts, *fig.texts] if t.get_fontsize() < MIN_FONT_PT]
    assert len(small) >= 4
    enforce_min_font(fig)
    assert all(t.get_fontsize() >= MIN_FONT_PT for t in small)


def test_metrics_by_setting_include_curvature_and_no_ensemble_noise(full_report):
    """The grouped plots show the curvature columns beside test_acc and the gap; a run that
    did not ask for the optional ensemble stage gets no ensemble page and no note about it."""
    store, cells, out = full_report
    texts = _page_texts(out["path"])
    grouped = " ".join(t for h, t in zip(out["headings"], texts) if _base(h) == "Metrics by grid setting")
    for metric in ("test_acc", "gap", "curvature.top_eigenvalue"):
        assert metric in grouped, metric
    assert "Fast geometric ensembles" not in out["headings"]
    assert "ensemble" not in " ".join(texts).lower()


def test_report_names_uncertainty_adjusted_p_and_flatness(full_report):
    """The classifier pages name both standard errors and the smallest attainable p; the
    comparison pages give adjusted p and call nothing a finding above 0.05; the flatness page
    gives each curvature measure's small-vs-large-batch sign and adjusted p."""
    store, cells, out = full_report
    texts = _page_texts(out["path"])
    page = {_base(h): t for h, t in zip(out["headings"], texts)}
    clf = page["Classifier table"]
    assert "standard error across the classifiers" in clf and "cross-validation standard error" in clf
    assert "smallest attainable p = 1/(1+1) = 0.5" in clf
    se = page["Classifier table: both standard errors and adjusted p"]
    assert "SE across classifiers" in se and "CV SE of the mean" in se and "p_adjusted" in se
    assert "mean of classifiers" in page["Accuracy ± cross-validation SE per classifier"]
    comp = page["Statistical comparisons by grid setting"]
    assert "p_min" in comp and "p_adjusted" in comp and "Holm" in comp
    table = pd.read_csv(store.stage_dir(RUN_LEVEL, "analysis") / "comparisons.csv")
    assert (table["finding"] == (table["p_adjusted"] < 0.05)).all()
    flat = pd.read_csv(store.stage_dir(RUN_LEVEL, "analysis") / "flatness.csv")
    assert list(flat["measure"]) == ["curvature.sharpness", "curvature.top_eigenvalue", "curvature.trace",
                                     "curvature.log_volume"]
    fp = page["Flatness by batch size"]
    for r in flat.itertuples():
        assert r.sign in ("+", "-", "0") and r.reading in fp


def test_stage_files_are_named_in_the_layout_only():
    """The report reads stage folders through topoland.runs.layout: no report module spells a
    stage file's name, and the store's resume data are the layout's names."""
    from pathlib import Path

    import topoland.report
    from topoland.runs.store import RESUME_DATA
    files = [v for k, v in vars(layout).items() if k.isupper() and isinstance(v, str) and "." in v]
    assert layout.MODEL in files and layout.PATHS_PAIRS in files
    for f in sorted(Path(topoland.report.__file__).parent.glob("*.py")):
        text = f.read_text()
        assert not [n for n in files if f'"{n}"' in text], f.name
    assert RESUME_DATA == {"surface": (layout.SURFACE_PARTIAL, layout.SURFACE_PCA_PARTIAL),
                           "paths": (layout.PATHS_PAIRS,)}


def test_layout_readers_of_absent_optional_files(tmp_path):
    """An optional file a stage did not write reads as None (or empty), never as an error."""
    for read in (layout.read_intervals, layout.read_plane, layout.read_density, layout.read_ensemble_curve):
        assert read(tmp_path) is None, read.__name__
    assert layout.read_lines(tmp_path) == [] and layout.read_notes(tmp_path) == []
    assert layout.read_analysis_tables(tmp_path) == {}
    assert layout.pair_attempt_dir(tmp_path / "run" / "paths", "a", "b", 2) == \
        tmp_path / "run" / "paths.pairs" / "a__b" / "attempt2"
