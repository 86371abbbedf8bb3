"""Regression end to end: the example's user factories (float targets, an MLP of one output) and
``train.loss = "mse"`` through every stage and the report, with no accuracy anywhere; the loss
factory string; and the bad inputs a regression config can hold, refused before the run directory
exists."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.helpers import ROOT, TINY_SAMPLE, TINY_TOPOLOGY, cli

EXAMPLES = ROOT / "experiments" / "examples"

TINY = """
[run]
name = "reg_tiny"
seed = 0
threads = 1
stages = {stages}

[data]
name = "custom"
factory = "regression_mlp:make_data"
[data.kwargs]
n_train = 96
n_val = 32
n_test = 64

[model]
name = "custom"
factory = "regression_mlp:make_model"
width = 8
depth = 1

[train]
loss = {loss}
lr = 0.05
batch_size = 32
epochs = 3
milestones = []
{train_extra}
[train.metrics]
mae = "regression_mlp:mae"
{metrics_extra}

[grid]
"train.weight_decay" = [0.0, 0.001]
"train.batch_size" = [16, 32]

{sample}{topology}value = "val_mae"

[surface]
kind = "plane"
grid = 3

[curvature]
top_k = 1
n_probes = 2

[paths]
method = "neb"
pairs = "first"
n_images = 3
steps = 3

[analysis]
targets = ["train.weight_decay"]
n_repeats = 1
n_permutations = 9
"""
ALL = '["train", "sample", "topology", "surface", "curvature", "paths", "analysis", "report"]'


def _config(tmp_path: Path, *, stages=ALL, loss='"mse"', train_extra="", name="reg.toml") -> Path:
    """The tiny regression config; a ``train_extra`` starting "metrics:" goes into [train.metrics]."""
    p = tmp_path / name
    metrics_extra = train_extra[len("metrics:"):] if train_extra.startswith("metrics:") else ""
    train_extra = "" if metrics_extra else train_extra
    p.write_text(TINY.format(stages=stages, loss=loss, train_extra=train_extra, metrics_extra=metrics_extra,
                             sample=TINY_SAMPLE, topology=TINY_TOPOLOGY))
    return p


def _run(*args, **kw):
    """The CLI with the example's folder on PYTHONPATH (its factories are importable there)."""
    import os
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(EXAMPLES), old]))
    try:
        return cli(*args, **kw)
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old


def _main(monkeypatch, capsys, *args) -> tuple[int, str]:
    """The CLI in this process (no interpreter start-up), the example's folder on sys.path;
    returns (exit status, stderr)."""
    from topoland.cli.main import main
    monkeypatch.syspath_prepend(str(EXAMPLES))
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


@pytest.fixture(scope="module")
def reg_run(tmp_path_factory):
    """The example script itself (it puts its folder on PYTHONPATH and calls ``topoland run``) on
    the tiny config."""
    import os
    import subprocess
    d = tmp_path_factory.mktemp("regression")
    r = subprocess.run([sys.executable, str(EXAMPLES / "regression_mlp.py"), "--config", str(_config(d)),
                        "--out", str(d / "run")], capture_output=True, text=True, cwd=d, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    return d / "run", r


def _cells(out: Path) -> list[Path]:
    return sorted((out / "cells").iterdir())


def test_every_stage_runs_without_accuracy(reg_run):
    from topoland.runs.store import RunStore
    out, r = reg_run
    assert r.returncode == 0, r.stdout + r.stderr
    store = RunStore.open(out)
    cells = _cells(out)
    assert len(cells) == 4
    for c in cells:
        train = store.summary(c.name, "train")
        assert "test_acc" not in train and "train_acc" not in train
        assert math.isfinite(train["train_loss"]) and train["test_loss"] > 0
        assert train["train_mae"] > 0 and train["test_mae"] > 0   # the user metric, every split
        samples = pd.read_csv(c / "sample" / "samples.csv")
        assert samples["train_acc"].isna().all() and samples["train_loss"].notna().all()
        assert samples[["train_mae", "val_mae", "test_mae"]].notna().all().all()
        # the topology's vertex values are the user metric on the validation split
        from topoland.runs import layout
        arrays, _ = layout.read_topology(c / "topology")
        by_id = samples.set_index("sample_id")["val_mae"]
        np.testing.assert_allclose(arrays["values"], by_id.loc[arrays["sample_ids"].astype(int)].to_numpy(), rtol=1e-6)
        lines = pd.read_csv(sorted((c / "surface").glob("line_*.csv"))[0])
        assert {"train_loss", "test_loss", "train_mae", "test_mae"} <= set(lines.columns)
        assert not any("acc" in k for k in lines.columns)
        curv = store.summary(c.name, "curvature")
        assert all(math.isfinite(v) for k, v in curv.items() if isinstance(v, float)), curv
        topo = json.loads((c / "topology" / "features.json").read_text())
        assert np.isfinite(topo["loss_range"]) and topo["loss_range"] > 0
    pairs = pd.read_csv(out / "run" / "paths" / "pairs.csv")
    assert len(pairs) and np.isfinite(pairs["neb.train_loss.max"]).all() and "neb.train_mae.max" in pairs


def test_the_train_loss_is_the_mean_squared_error(reg_run):
    """The stored minimum's train loss equals the MSE computed by hand from its checkpoint."""
    import sys

    import torch
    out, _ = reg_run
    sys.path.insert(0, str(EXAMPLES))
    try:
        import regression_mlp as ex
    finally:
        sys.path.remove(str(EXAMPLES))
    from topoland.nets import load_checkpoint
    from topoland.runs.store import RunStore
    c = _cells(out)[0]
    model, _ = load_checkpoint(c / "train" / "model.safetensors", model=ex.make_model((6,), 1, width=8, depth=1))
    data = ex.make_data(n_train=96, n_val=32, n_test=64, seed=0)
    with torch.no_grad():
        mse = float((model.eval()(data.x_train) - data.y_train).square().mean())
    train = RunStore.open(out).summary(c.name, "train")
    assert math.isclose(train["train_loss"], mse, rel_tol=1e-5)


def test_analysis_scores_the_loss_gap_and_the_report_has_no_accuracy(reg_run):
    out, _ = reg_run
    ana = out / "run" / "analysis"
    notes = json.loads((ana / "notes.json").read_text())
    assert not any("acc_gap" in n for n in notes), notes
    if (ana / "scores.csv").is_file():
        scores = pd.read_csv(ana / "scores.csv")
        assert len(scores)
    from pypdf import PdfReader
    text = "\n".join(p.extract_text() for p in PdfReader(out / "run" / "report" / "report.pdf").pages)
    assert "1-D accuracy" not in text and "test_acc" not in text
    assert "units of mse" in text and "train mae" in text


def test_loss_factory_string_and_its_cell_id(tmp_path, monkeypatch, capsys):
    """``train.loss = "regression_mlp:huber"`` trains with the user's loss; the string is in the cell id."""
    monkeypatch.chdir(tmp_path)
    rc_a, _ = _main(monkeypatch, capsys, "run", _config(tmp_path, stages='["train"]', name="a.toml"),
                    "--out", tmp_path / "a", "--quiet")
    rc_b, err = _main(monkeypatch, capsys, "run", _config(tmp_path, stages='["train"]', loss='"regression_mlp:huber"',
                                                          name="b.toml"), "--out", tmp_path / "b", "--quiet")
    assert rc_a == 0 and rc_b == 0, err
    ids_a = {p.name for p in _cells(tmp_path / "a")}
    ids_b = {p.name for p in _cells(tmp_path / "b")}
    assert len(ids_a) == len(ids_b) == 4 and not ids_a & ids_b


@pytest.mark.parametrize("loss,extra,stages,message", [
    ('"regression_mlp:nope"', "", '["train"]', r"config key 'train.loss' = 'regression_mlp:nope': module "
                                               r"'regression_mlp' has no attribute 'nope'"),
    ('"no_such_module_x:f"', "", '["train"]', r"config key 'train.loss' = 'no_such_module_x:f': importing module"),
    ('"hinge"', "", '["train"]', r"config key 'train.loss'.*must be one of"),
    ('"cross_entropy"', "", '["train"]', r"train.loss.*'cross_entropy'"),
    ('"mse"', "target_acc = 0.5", '["train"]', r"config key 'train.target_acc' = 0.5 stops on an accuracy, but "
                                                r"train.loss = 'mse' on regression targets tracks no accuracy"),
    ('"mse"', "", '["train", "measures"]', r"config key 'run.stages' names 'measures'"),
    ('"mse"', "metrics:bad = \"regression_mlp:huber_nope\"", '["train"]',
     r"config key 'train.metrics.bad' = 'regression_mlp:huber_nope': module 'regression_mlp' has no attribute"),
    ('"mse"', "metrics:bad = \"regression_mlp:make_model\"", '["train"]',
     r"config key 'train.metrics.bad' = 'regression_mlp:make_model': "),
])
def test_bad_regression_configs_get_one_error_and_no_run_directory(tmp_path, monkeypatch, capsys, loss, extra,
                                                                   stages, message):
    monkeypatch.chdir(tmp_path)
    rc, stderr = _main(monkeypatch, capsys, "run", _config(tmp_path, loss=loss, train_extra=extra, stages=stages),
                       "--out", tmp_path / "run")
    assert rc != 0
    err = stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), stderr
    import re
    assert re.search(message, err[0]), err[0]
    assert not (tmp_path / "run").exists()


def test_mse_on_class_labels_names_the_shapes(tmp_path, monkeypatch, capsys):
    from tests.helpers import tiny_config
    monkeypatch.chdir(tmp_path)
    p = tiny_config(tmp_path / "c.toml")
    p.write_text(p.read_text().replace("batch_size = 32\n", 'batch_size = 32\nloss = "mse"\n', 1))
    rc, err = _main(monkeypatch, capsys, "run", p, "--out", tmp_path / "run")
    assert rc != 0 and err.startswith("error:")
    assert "output (2, " in err and "target (2,)" in err, err
    assert not (tmp_path / "run").exists()


def test_the_example_config_checks(monkeypatch, capsys):
    """The shipped example config is valid with its factories importable (and refused without)."""
    from topoland.cli.main import main
    monkeypatch.delitem(sys.modules, "regression_mlp", raising=False)
    rc = main(["config", str(EXAMPLES / "regression_mlp.toml")])
    err = capsys.readouterr().err
    assert rc != 0 and "regression_mlp" in err and "PYTHONPATH" in err
    rc, err = _main(monkeypatch, capsys, "config", EXAMPLES / "regression_mlp.toml")
    assert rc == 0, err
