"""Hostile and wrong inputs: configs, data, checkpoints, paths; failed cells; diverging training.

Every user mistake ends in one ``error: ...`` line and a non-zero exit, and leaves an existing
run directory exactly as it was (its whole tree is hashed before and after). Cases already
covered elsewhere: config keys one by one (tests/test_config.py), bad configs at the CLI
without a run directory (tests/test_cli.py::test_bad_config_one_message_exit_2), a missing
CIFAR-10 folder (tests/test_cli.py::test_missing_dataset_folder_message), checkpoints of another
architecture / truncated / pickled (tests/test_checkpoint.py), paths escaping the run
directory (tests/test_store.py::test_paths_outside_run_refused).
"""
import hashlib
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.helpers import TINY, TINY_SAMPLE, TINY_TOPOLOGY, tiny_config
from topoland.pipeline import driver as run_mod
from topoland.pipeline.cell_stages import CELL_STAGE_FUNCS
from topoland.cli.main import main
from topoland.runs.store import RUN_LEVEL, RunStore


def tree_hash(root: Path) -> str:
    """SHA-256 over every path (files and folders) and file content under ``root``."""
    h = hashlib.sha256()
    for p in sorted(Path(root).rglob("*")):
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def one_error_line(capsys, code):
    out = capsys.readouterr()
    assert code == 2, (code, out.err)
    assert out.err.startswith("error: ") and out.err.count("\n") == 1, out.err
    return out.err


@pytest.fixture(scope="module")
def existing_run(tmp_path_factory):
    """A finished tiny training run (4 cells, 1 epoch) and its config."""
    d = tmp_path_factory.mktemp("existing")
    cfg = tiny_config(d / "tiny.toml", epochs=1)
    run_mod.run(cfg, out=d / "run", progress=False, reports_dir=d / "reports")
    return cfg, d / "run"


def _tiny_text(**fmt):
    return TINY.format(**({"stages": '["train"]', "epochs": 1, "extra": ""} | fmt))


# ------------------------------------------------------------------------------------ configs
BAD_CONFIGS = [
    ("unknown key", _tiny_text().replace("lr = 0.1", "lr = 0.1\nlearnin_rate = 0.1"),
     "unknown config key 'train.learnin_rate'"),
    ("wrong type", _tiny_text().replace("epochs = 1", 'epochs = "ten"'), "config key 'train.epochs' must be"),
    ("out of range", _tiny_text().replace("lr = 0.1", "lr = 0.0"), "config key 'train.lr' = 0.0"),
    ("not finite", _tiny_text().replace("lr = 0.1", "lr = nan"), "config key 'train.lr'"),
    ("empty grid", _tiny_text().replace('"train.batch_size" = [16, 32]', '"train.batch_size" = []'),
     "empty list"),
    ("duplicate grid value", _tiny_text().replace("[16, 32]", "[16, 16]"), "duplicate cells"),
    ("duplicate cell", _tiny_text(extra='[[cells]]\n"train.weight_decay" = 0.0\n"train.batch_size" = 16\n'),
     "duplicate cells"),
    ("toml syntax", _tiny_text().replace("lr = 0.1", "lr = 0.1 0.2"), "line 15"),
    ("grid key unknown", _tiny_text().replace('"train.batch_size"', '"train.batchsize"'), "grid.train.batchsize"),
    ("other grid", _tiny_text().replace("[16, 32]", "[16, 64]"), "different grid"),
]


@pytest.mark.parametrize("what, text, culprit", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_leaves_existing_run_untouched(existing_run, tmp_path, capsys, what, text, culprit):
    _, run_dir = existing_run
    before = tree_hash(run_dir)
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    err = one_error_line(capsys, main(["run", str(bad), "--out", str(run_dir), "--quiet"]))
    assert culprit in err
    assert tree_hash(run_dir) == before


@pytest.mark.parametrize("name", ["../../evil", "a/b", "/tmp/evil", ".hidden", "..", "x/../../y"])
def test_run_name_cannot_leave_the_runs_folder(tmp_path, monkeypatch, capsys, name):
    """run.name becomes runs/<name> and reports/<name>.pdf: anything but a plain name is refused."""
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    cfg = work / "c.toml"
    cfg.write_text(_tiny_text().replace('name = "tiny"', f"name = {json.dumps(name)}"))
    err = one_error_line(capsys, main(["run", str(cfg), "--quiet"]))
    assert "config key 'run.name'" in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "c.toml"]
    assert not Path("/tmp/evil").exists()


def test_out_path_inside_check_for_config_paths(existing_run):
    """The store refuses any config-derived output path that resolves outside the run."""
    from topoland.errors import StoreError
    st = RunStore.open(existing_run[1])
    for rel in ("../x", "cells/../../x", "/etc/passwd"):
        with pytest.raises(StoreError, match="outside the run directory"):
            st.inside(rel)
    assert st.inside("cells/../tables/x.csv") == st.path / "tables" / "x.csv"


# ------------------------------------------------------------------------------------ data
_MNIST = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _idx(array: np.ndarray) -> bytes:
    """An MNIST idx file (big-endian header: magic 0x0800 | ndim, then the dims)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _mnist_folder(root: Path, n=20) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in _MNIST:
        if "images" in name:
            (raw / name).write_bytes(_idx(rng.integers(0, 256, (n, 28, 28))))
        else:
            (raw / name).write_bytes(_idx(np.arange(n) % 10))
    return raw


def _data_config(path, data_section):
    text = _tiny_text().replace('[data]\nname = "synthetic"\n', data_section)
    path.write_text(text)
    return path


def test_valid_mnist_folder_loads(tmp_path):
    """The hand-written idx files below are read as MNIST: the corruptions are the only fault."""
    from topoland.data import load_dataset
    _mnist_folder(tmp_path)
    d = load_dataset("mnist", root=tmp_path, val_fraction=0.0)
    assert d.x_train.shape == (20, 1, 28, 28) and d.y_train.tolist() == [i % 10 for i in range(20)]


@pytest.mark.parametrize("fault, culprit", [
    ("truncated", "train-images-idx3-ubyte"),
    ("garbled", "train-images-idx3-ubyte"),
    ("labels out of range", "train-labels-idx1-ubyte"),
    ("count mismatch", "has 20 images but"),
    ("missing file", "t10k-labels-idx1-ubyte"),
])
def test_corrupted_dataset_file(tmp_path, monkeypatch, capsys, fault, culprit):
    raw = _mnist_folder(tmp_path / "data")
    img = raw / "train-images-idx3-ubyte"
    if fault == "truncated":
        img.write_bytes(img.read_bytes()[: 16 + 28 * 28 * 5 + 17])
    elif fault == "garbled":
        img.write_bytes(b"\x13\x37" * 500)
    elif fault == "labels out of range":
        (raw / "train-labels-idx1-ubyte").write_bytes(_idx(np.full(20, 200)))
    elif fault == "count mismatch":
        (raw / "train-labels-idx1-ubyte").write_bytes(_idx(np.arange(19) % 10))
    else:
        (raw / "t10k-labels-idx1-ubyte").unlink()
    monkeypatch.chdir(tmp_path)
    cfg = _data_config(tmp_path / "c.toml", f'[data]\nname = "mnist"\nroot = "{tmp_path / "data"}"\n')
    before = tree_hash(tmp_path)
    err = one_error_line(capsys, main(["run", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]))
    assert culprit in err and "mnist" in err
    assert tree_hash(tmp_path) == before  # no run directory was created


def test_missing_dataset_folder_leaves_existing_run(existing_run, tmp_path, capsys):
    cfg, run_dir = existing_run
    before = tree_hash(run_dir)
    bad = _data_config(tmp_path / "c.toml", f'[data]\nname = "mnist"\nroot = "{tmp_path / "nowhere"}"\n')
    err = one_error_line(capsys, main(["run", str(bad), "--out", str(tmp_path / "run"), "--quiet"]))
    assert "MNIST" in err and "nowhere" in err
    assert not (tmp_path / "run").exists() and tree_hash(run_dir) == before


@pytest.mark.parametrize("opts", ["noise = nan", "separation = inf"])
def test_nan_inputs_refused(tmp_path, capsys, opts):
    """Non-finite inputs (here from the synthetic generator's options) never reach training."""
    cfg = _data_config(tmp_path / "c.toml", f'[data]\nname = "synthetic"\nsynthetic = {{ {opts} }}\n')
    err = one_error_line(capsys, main(["run", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]))
    assert "NaN or inf" in err
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------ checkpoints
class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_planted_pickle_in_run_is_never_unpickled(existing_run, tmp_path, capsys):
    """A pickle planted in place of a stored model: verify flags it, later stages refuse it,
    and the code it carries never runs."""
    import shutil
    run_dir = tmp_path / "run"
    shutil.copytree(existing_run[1], run_dir)
    st = RunStore.open(run_dir)
    cid = st.cells().cell_id[0]
    marker = tmp_path / "PWNED"
    (st.stage_dir(cid, "train") / "model.safetensors").write_bytes(pickle.dumps({"w": _Evil(str(marker))}))
    assert main(["verify", str(run_dir)]) == 1
    assert "model.safetensors: checksum mismatch" in capsys.readouterr().out
    rep = run_mod.run_stage_in_dir(run_dir, "curvature", overrides={"n_probes": 1, "n_samples": 16,
                                                                     "n_directions": 1}, progress=False)
    failed = {c: msg for c, stage, msg in rep.failures}
    assert list(failed) == [cid] and "pickle" in failed[cid]
    assert not marker.exists()


# ------------------------------------------------------------------------------ failed cells
def test_failed_cell_recorded_others_go_on_rerun_retries_only_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tiny_config(tmp_path / "t.toml", epochs=1)
    real = CELL_STAGE_FUNCS["train"]
    victim = {}

    def flaky(ctx, out):
        victim.setdefault("cid", ctx.cell_id)  # the first cell trained fails, once
        if ctx.cell_id == victim["cid"] and not victim.get("failed"):
            victim["failed"] = True
            raise RuntimeError("simulated crash of the training code")
        return real(ctx, out)

    monkeypatch.setitem(CELL_STAGE_FUNCS, "train", flaky)
    rep = run_mod.run(cfg, out=tmp_path / "run", progress=False)
    assert [(c, s) for c, s, _ in rep.failures] == [(victim["cid"], "train")]
    assert "simulated crash" in rep.failures[0][2]
    st = RunStore.open(tmp_path / "run")
    err = st.failures().set_index("cell_id").error[victim["cid"]]
    assert "Traceback" in err and "in flaky" in err  # the stored traceback points at the culprit
    others = [c for c in st.cells().cell_id if c != victim["cid"]]
    assert all(st.is_done(c, "train") for c in others)
    before = st.stages().set_index(["cell_id", "stage"])
    mtimes = {c: (st.stage_dir(c, "train") / "model.safetensors").stat().st_mtime_ns for c in others}

    rep = run_mod.run(cfg, out=tmp_path / "run", progress=False)
    assert rep.failures == []
    after = st.stages().set_index(["cell_id", "stage"])
    for c in others:  # finished cells are not recomputed
        assert after.loc[(c, "train"), "finished"] == before.loc[(c, "train"), "finished"]
        assert (st.stage_dir(c, "train") / "model.safetensors").stat().st_mtime_ns == mtimes[c]
    assert after.loc[(victim["cid"], "train"), "status"] == "done"
    assert after.loc[(victim["cid"], "train"), "started"] > before.loc[(victim["cid"], "train"), "finished"]
    assert st.verify() == []


# ---------------------------------------------------------------------------------- numerics
DIVERGE = """
[run]
name = "div"
seed = 0
stages = ["train", "sample", "topology", "surface", "curvature", "analysis"]
[data]
name = "synthetic"
synthetic = { n_train = 120, n_test = 60 }
[model]
name = "mlp"
widths = [8]
[train]
epochs = 2
batch_size = 32
[grid]
"train.lr" = [0.05, 1e8]
"train.weight_decay" = [0.0, 0.001]
""" + TINY_SAMPLE + TINY_TOPOLOGY + """
[surface]
kind = "line"
grid = 3
[curvature]
n_probes = 2
n_samples = 32
n_directions = 1
[analysis]
targets = ["train.weight_decay"]
n_splits = 2
n_repeats = 1
n_permutations = 2
n_boot = 20
"""


def test_diverged_training_is_caught_recorded_and_reported(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "div.toml"
    cfg.write_text(DIVERGE)
    rep = run_mod.run(cfg, out=tmp_path / "run", progress=False)
    st = RunStore.open(tmp_path / "run")
    cells = st.cells()
    div = [c for c, s in zip(cells.cell_id, cells.settings) if s["train"]["lr"] == 1e8]
    ok = [c for c in cells.cell_id if c not in div]
    assert len(div) == 2
    for c in div:
        summ = st.summary(c, "train")
        assert summ["diverged"] is True and summ["train_loss"] is None  # NaN is stored as null
    assert rep.failures == [], rep.failures  # a diverged minimum is a result, not a crash
    # later stages of a diverged cell are skipped with the reason recorded
    for c in div:
        for stage in ("sample", "topology", "surface", "curvature"):
            assert st.is_done(c, stage) and "diverged" in st.summary(c, stage).get("skipped", ""), (c, stage)
            assert not any(st.stage_dir(c, stage).iterdir())
    # `topoland list` reports it
    assert main(["list", str(tmp_path / "run")]) == 0
    listing = capsys.readouterr().out
    rows = {line.split()[0]: line for line in listing.splitlines()[1:]}
    assert all("True" in rows[c] for c in div) and all("True" not in rows[c] for c in ok)
    # the analysis went on without the diverged minima, and says so
    a = st.stage_dir(RUN_LEVEL, "analysis")
    ft = pd.read_csv(a / "features.csv", index_col="cell_id")
    assert sorted(ft.index) == sorted(ok)
    notes = json.loads((a / "notes.json").read_text())
    assert any("diverged" in n and all(c in n for c in div) for n in notes), notes
    assert_no_silent_nan(a)


def assert_no_silent_nan(analysis_dir):
    """Every NaN in a feature column of features.csv is listed in features.json 'missing'."""
    ft = pd.read_csv(analysis_dir / "features.csv", index_col="cell_id")
    meta = json.loads((analysis_dir / "features.json").read_text())
    for group, cols in meta["groups"].items():
        nan_cells = set(ft.index[ft[cols].isna().any(axis=1)])
        assert nan_cells <= set(meta["missing"].get(group, [])), (group, nan_cells)
    for col in (c for cols in meta["groups"].values() for c in cols):
        assert not np.isinf(ft[col]).any(), col


def test_nan_feature_comes_with_a_note(tmp_path):
    """A feature group row with a NaN (a stage that could not compute a value) is listed in
    features.json 'missing' next to the NaN."""
    from topoland.analysis import feature_table, save_feature_table
    cells = pd.DataFrame({"cell_id": ["a", "b", "c"], "train.lr": [0.1, 0.2, 0.3],
                          "test_acc": [0.9, 0.8, 0.7]})
    groups = {"curvature": pd.DataFrame({"trace": [1.0, math.nan, 3.0]}, index=pd.Index(["a", "b", "c"],
                                                                                         name="cell_id"))}
    save_feature_table(feature_table(cells, groups), tmp_path)
    assert_no_silent_nan(tmp_path)
    assert json.loads((tmp_path / "features.json").read_text())["missing"] == {"curvature": ["b"]}
