"""Faults and tampering of issue 22, one class at a time: a corrupted index, diverged cells,
bad stage names, byte-identical reruns, unknown files, untrusted checkpoint specs.

Every refusal is one ``error: ...`` line naming the culprit, exit 2, and leaves the run
directory's bytes as they were (hashed before and after); after a fault is repaired, a resume
gives the results of an undisturbed run.
"""
import random
import shutil

import pandas as pd
import pytest

from tests.helpers import TINY_SAMPLE, TINY_TOPOLOGY, tiny_config
from tests.test_hostile import one_error_line, tree_hash
from tests.test_ray import assert_same_results
from topoland.pipeline import driver as run_mod
from topoland.cli.main import main
from topoland.runs.store import RunStore


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny training run (4 cells, 1 epoch) and its config; copy before changing it."""
    d = tmp_path_factory.mktemp("trained")
    cfg = tiny_config(d / "tiny.toml", epochs=1)
    rep = run_mod.run(cfg, out=d / "run", progress=False, reports_dir=d / "reports")
    assert rep.failures == []
    return cfg, d / "run"


def _copy_run(src, dst):
    shutil.copytree(src, dst)
    (dst / ".lock").unlink(missing_ok=True)
    return dst


# ------------------------------------------------------------------- 1. a corrupted index
def _corrupt(raw: bytes, how: str) -> bytes:
    rng = random.Random(22)
    if how == "empty":
        return b""
    if how == "truncated":
        return raw[: len(raw) // 2]
    if how == "garbled":  # every byte random
        return bytes(rng.randrange(256) for _ in raw)
    assert how == "garbled pages"  # the header intact, the pages after it random
    return raw[:100] + bytes(rng.randrange(256) for _ in raw[100:])


def _index_commands(cfg, run_dir):
    r = str(run_dir)
    return {"verify": ["verify", r], "list": ["list", r], "run": ["run", str(cfg), "--out", r, "--quiet"],
            "train": ["train", str(cfg), "--out", r, "--quiet"], "report": ["report", r],
            "sample": ["sample", r, "--quiet"], "topology": ["topology", r, "--quiet"],
            "curvature": ["curvature", r, "--quiet"], "surface": ["surface", r],
            "compare": ["compare", r, "--by", "train.weight_decay", "--metric", "test_acc"],
            "connect": ["connect", r]}


@pytest.mark.parametrize("how", ["empty", "truncated", "garbled", "garbled pages"])
def test_corrupted_index_refused_by_every_command_untouched_then_resumes(trained, tmp_path, capsys, how):
    cfg, ref = trained
    run_dir = _copy_run(ref, tmp_path / "run")
    index = run_dir / "index.sqlite"
    raw = index.read_bytes()
    index.write_bytes(_corrupt(raw, how))
    before = tree_hash(run_dir)
    for name, argv in _index_commands(cfg, run_dir).items():
        err = one_error_line(capsys, main(argv))
        assert f"run index '{index}' " in err, (name, err)
        assert how.split()[0] in err and "restore it from a backup" in err and "fresh --out" in err, (name, err)
        assert tree_hash(run_dir) == before, name  # not even SQLite's side files appeared
    index.write_bytes(raw)  # the backup restored: the run resumes as if nothing happened
    assert main(["run", str(cfg), "--out", str(run_dir), "--quiet"]) == 0
    assert main(["verify", str(run_dir)]) == 0
    assert assert_same_results(ref, run_dir, ["train"]) == 12  # 4 cells x (model, init, history)


def test_index_of_another_program_is_refused(tmp_path, capsys):
    """A valid SQLite file without the run index's tables is named as such, and left alone."""
    import sqlite3
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    con = sqlite3.connect(run_dir / "index.sqlite")
    con.execute("CREATE TABLE stages (x)")
    con.commit()
    con.close()
    before = tree_hash(run_dir)
    err = one_error_line(capsys, main(["verify", str(run_dir)]))
    assert "lacks the table(s) meta, cells, stages, files" in err
    assert tree_hash(run_dir) == before


def test_garbled_row_in_index_names_it(trained, tmp_path):
    """A garbled JSON value inside an intact index (structure fine, content not) is a StoreError
    naming the index and the row, not a JSONDecodeError."""
    import sqlite3

    from topoland.errors import StoreError
    run_dir = _copy_run(trained[1], tmp_path / "run")
    st = RunStore.open(run_dir)
    cid = st.cells().cell_id[0]
    con = sqlite3.connect(run_dir / "index.sqlite")
    con.execute("UPDATE stages SET summary = '{\"loss\": 0.' WHERE cell_id = ?", (cid,))
    con.commit()
    con.close()
    with pytest.raises(StoreError, match=f"summary of stage 'train' of cell '{cid}' is garbled"):
        st.summary(cid, "train")


# ------------------------------------------------------------------- 2. diverged cells
def _diverge_config(path):
    """Two of four cells diverge (lr 1e8); every stage runs, surface and curvature off."""
    from tests.test_hostile import DIVERGE
    text = DIVERGE.replace('"curvature", "analysis"]', '"curvature", "paths", "analysis", "report"]')
    text = text.replace('kind = "line"\ngrid = 3', 'kind = "none"').replace("[curvature]\n", "[curvature]\nenabled = false\n")
    path.write_text(text + '\n[paths]\npairs = "all"\nsteps = 5\nn_images = 3\n')
    return path


def test_diverged_cells_skipped_downstream_report_included(tmp_path, monkeypatch, capsys):
    """A run with diverged cells exits 0 with a report whose notes page gives the reason; the
    paths leave the diverged minima out; a run whose report stage failed on them resumes to the
    results of an undisturbed run."""
    from tests.test_report import _page_texts
    from topoland.runs.store import RUN_LEVEL
    monkeypatch.chdir(tmp_path)
    cfg = _diverge_config(tmp_path / "div.toml")
    assert main(["run", str(cfg), "--out", "run", "--quiet"]) == 0, capsys.readouterr().err
    st = RunStore.open("run")
    names = {r.cell_id: f"M{r.position + 1}" for r in st.cells().itertuples()}
    div = [c for c in names if st.summary(c, "train")["diverged"]]
    assert len(div) == 2 and st.is_done(RUN_LEVEL, "report") and st.failures().empty
    pairs = pd.read_csv(st.stage_dir(RUN_LEVEL, "paths") / "pairs.csv")
    assert len(pairs) == 1 and not set(pairs.a) & set(div) and not set(pairs.b) & set(div)
    pages = _page_texts(tmp_path / "reports" / "run.pdf")
    notes = " ".join(t for t in pages if t.startswith("Notes"))
    for c in div:
        assert f"{names[c]}: training diverged; the minimum is left out" in notes, notes
        assert f"{names[c]} topology: skipped (training diverged (non-finite loss" in notes, notes
    # one per-minimum page (PHATE picture) for each minimum that did not diverge, none for the others
    assert sum("PHATE, colour: val_loss" in t for t in pages) == len(names) - len(div)

    # `topoland report` on it exits 0 too
    assert main(["report", "run", "--dir", "reports"]) == 0
    # a run left by the old failure (report stage failed on the diverged cell) resumes cleanly
    shutil.copytree("run", "broken", ignore=shutil.ignore_patterns(".lock"))
    broken = RunStore.open("broken")
    broken.invalidate(RUN_LEVEL, "report")
    broken.record_failure(RUN_LEVEL, "report", "StoreError: tensor file 'topology.safetensors' does not exist")
    assert main(["run", str(cfg), "--out", "broken", "--quiet"]) == 0
    assert broken.is_done(RUN_LEVEL, "report") and broken.failures().empty
    assert main(["verify", "broken"]) == 0
    stages = ["train", "sample", "topology", "surface", "curvature"]
    assert assert_same_results("run", "broken", stages, ["paths", "analysis"]) > 0



# ------------------------------------------------------------------- 8. bad stage names
@pytest.mark.parametrize("flag, names", [("--only", "bogus"), ("--only", "train,bogus"),
                                         ("--force", "bogus"), ("--force", "train,bogus")])
def test_unknown_stage_refused_before_any_write(trained, tmp_path, capsys, flag, names):
    """Neither a new run folder nor an existing run (its index included, and the train stage
    named before the bogus one) is touched; the corrected command then resumes as usual."""
    cfg, ref = trained
    err = one_error_line(capsys, main(["run", str(cfg), "--out", str(tmp_path / "new"), flag, names, "--quiet"]))
    assert f"unknown stage 'bogus' given to {flag} (stages: train, sample," in err
    assert not (tmp_path / "new").exists()
    run_dir = _copy_run(ref, tmp_path / "run")
    before = tree_hash(run_dir)
    err2 = one_error_line(capsys, main(["run", str(cfg), "--out", str(run_dir), flag, names, "--quiet"]))
    assert err2 == err and tree_hash(run_dir) == before
    assert main(["run", str(cfg), "--out", str(run_dir), flag, "train", "--quiet"]) == 0
    assert assert_same_results(ref, run_dir, ["train"]) == 12  # 4 cells x (model, init, history)


# ------------------------------------------------------------------- 7. identical bytes
#: files of a run directory that record time or a process, never results: the lock (the pid of
#: the last process), the index (start and finish times of every stage), the PDF (its creation
#: date; the test below leaves the report stage out to stay fast, its tables are pandas CSV)
TIME_OR_PROCESS_FILES = {".lock", "index.sqlite", "run/report/report.pdf"}

_DETERMINISM = TINY_SAMPLE + TINY_TOPOLOGY + '''
[surface]
kind = "none"
[curvature]
enabled = false
[analysis]
targets = ["train.weight_decay"]
n_splits = 2
n_repeats = 1
n_permutations = 2
n_boot = 20
'''


def test_safetensors_bytes_fixed_order():
    """Equal tensors and metadata give equal bytes whatever the insertion order, and the file
    reads back with the safetensors library."""
    import torch
    from safetensors.torch import load

    from topoland.io import safetensors_bytes
    tensors = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(3, dtype=torch.float64)}
    keys = [f"key{i}" for i in range(12)]
    blobs = {safetensors_bytes(dict(reversed(tensors.items())) if i % 2 else tensors,
                               {k: f"v{k}" for k in random.Random(i).sample(keys, len(keys))})
             for i in range(10)}
    assert len(blobs) == 1
    blob = blobs.pop()
    assert int.from_bytes(blob[:8], "little") % 8 == 0
    back = load(blob)
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], tensors[k]) for k in tensors)


def test_identical_runs_write_identical_bytes(tmp_path):
    """Two uninterrupted runs of one tiny config: every file equal byte for byte but
    :data:`TIME_OR_PROCESS_FILES`."""
    cfg = tiny_config(tmp_path / "t.toml", epochs=2, extra=_DETERMINISM,
                      stages='["train", "sample", "topology", "surface", "curvature", "analysis"]')
    trees = []
    for name in ("a", "b"):
        rep = run_mod.run(cfg, out=tmp_path / name, progress=False, reports_dir=tmp_path / "reports")
        assert rep.failures == [], rep.failures
        root = tmp_path / name
        trees.append({p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()})
    a, b = trees
    assert a.keys() == b.keys()
    assert {".lock", "index.sqlite"} <= a.keys() and "run/analysis/features.parquet" in a
    assert sum(k.endswith(".safetensors") for k in a) >= 4 * 3  # model, samples, topology per cell
    differ = sorted(k for k in a if a[k] != b[k] and k not in TIME_OR_PROCESS_FILES)
    assert differ == []


# ------------------------------------------------------------------- 6. unknown files
def _plant(run_dir, what):
    """Put one thing a run never writes into ``run_dir``; return the line verify must print."""
    st = RunStore.open(run_dir)
    cid = st.cells().cell_id[0]
    cell = run_dir / "cells" / cid
    if what == "file at root":
        (run_dir / "notes.txt").write_text("mine")
        return "notes.txt: not part of a run directory (unknown file at its root)"
    if what == "folder at root":
        (run_dir / "old").mkdir()
        return "old/: not part of a run directory (unknown file at its root)"
    if what == "file in cell folder":
        (cell / "README").write_text("mine")
        return f"{cid}/README: file not in the index (neither a stage's results nor its resume data)"
    if what == "train.bak":
        shutil.copytree(cell / "train", cell / "train.bak")
        return f"{cid}/train.bak/: folder not in the index (neither a stage's results nor its resume data)"
    if what == "file in cells":
        (run_dir / "cells" / "x.csv").write_text("a\n")
        return "cells/x.csv: file not in the index"
    if what == "unknown cell":
        (run_dir / "cells" / "0123456789").mkdir()
        return "cells/0123456789/: folder of no cell in the index"
    if what == "file in run":
        (run_dir / "run").mkdir(exist_ok=True)
        (run_dir / "run" / "table.csv").write_text("a\n")
        return "_run/table.csv: file not in the index (neither a stage's results nor its resume data)"
    assert what == "folder in stage"
    (cell / "train" / "extra").mkdir()
    return f"{cid}/train/extra/: folder not in the index"


PLANTS = ["file at root", "folder at root", "file in cell folder", "train.bak", "file in cells", "unknown cell",
          "file in run", "folder in stage"]


@pytest.mark.parametrize("what", PLANTS)
def test_verify_flags_what_a_run_never_writes(trained, tmp_path, capsys, what):
    cfg, ref = trained
    run_dir = _copy_run(ref, tmp_path / "run")
    line = _plant(run_dir, what)
    before = tree_hash(run_dir)
    assert main(["verify", str(run_dir)]) == 1
    out = capsys.readouterr().out
    assert out.splitlines() == [f"1 problem(s) in {run_dir}:", f"  {line}"], out
    assert tree_hash(run_dir) == before
    # --force leaves a user's train.bak/ alone (it is not the train stage's resume data)
    assert main(["run", str(cfg), "--out", str(run_dir), "--force", "train", "--quiet"]) == 0
    assert assert_same_results(ref, run_dir, ["train"]) == 12  # 4 cells x (model, init, history)
    if what == "train.bak":
        (bak,) = run_dir.glob("cells/*/train.bak")
        assert main(["verify", str(run_dir)]) == 1
        shutil.rmtree(bak)
        assert main(["verify", str(run_dir)]) == 0


def test_verify_accepts_what_a_run_may_hold(trained, tmp_path):
    """Resume data, temporaries of a killed process and the index's SQLite side files are known."""
    from topoland.runs.store import RUN_LEVEL
    run_dir = _copy_run(trained[1], tmp_path / "run")
    st = RunStore.open(run_dir)
    cid = st.cells().cell_id[0]
    (run_dir / "cells" / cid / "surface.partial.h5").write_bytes(b"half a grid")
    (run_dir / "cells" / cid / "surface.pca.partial.h5.tmp-123").write_bytes(b"")
    (run_dir / "cells" / cid / "sample.tmp-4567").mkdir()
    (st.stage_dir(RUN_LEVEL, "paths").with_name("paths.pairs") / "a__b").mkdir(parents=True)
    (run_dir / ".config.toml.tmp-99").write_text("")
    (run_dir / "index.sqlite-wal").write_bytes(b"")
    assert st.verify() == []
    st.invalidate(cid, "surface")
    assert sorted(p.name for p in (run_dir / "cells" / cid).iterdir()) == ["sample.tmp-4567", "train"]


# ------------------------------------------------------------------- 5. untrusted checkpoint specs
def _tampered(src, dst, *, spec=None, tensors=None):
    """A copy of checkpoint ``src`` with its spec changed by ``spec(dict)`` / tensors by ``tensors(dict)``."""
    import json

    from topoland.io import load_tensors, save_tensors
    ts, meta = load_tensors(src)
    s = json.loads(meta["spec"])
    if spec:
        spec(s)
    if tensors:
        tensors(ts)
    save_tensors(dst, ts, meta | {"spec": json.dumps(s)})
    return dst


def _set(d, path, value):
    *keys, last = path
    for k in keys:
        d = d[k]
    d[last] = value


BAD_SPECS = [
    ("giant model", ("kwargs", "widths"), [10 ** 6, 10 ** 6],
     "its spec asks for a 'mlp' model of 1,000,013,000,003 parameters, above the budget of 200,000,000; "
     "raise it (--max-params)"),
    ("unknown model argument", ("kwargs", "evil"), 1, "its spec is refused: unknown config key 'model.evil'"),
    ("unknown model", ("name",), "gpt", "its spec is refused: config key 'model.name'"),
    ("bad data key", ("data", "val_fraction"), 5.0, "its spec is refused: config key 'data.val_fraction' = 5.0"),
    ("bad seed", ("seed",), -3, "its spec is refused: config key 'run.seed' = -3"),
    ("bad input shape", ("input_shape",), [0], "spec input_shape must be a list of 1 to 3 positive integers"),
    ("bad classes", ("num_classes",), "3", "spec num_classes must be a positive integer, got '3'"),
]


@pytest.mark.parametrize("what, key, value, message", BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
def test_checkpoint_spec_is_untrusted_input(trained, tmp_path, capsys, what, key, value, message):
    st = RunStore.open(trained[1])
    src = st.stage_dir(st.cells().cell_id[0], "train") / "model.safetensors"
    bad = _tampered(src, tmp_path / "in" / "bad.safetensors", spec=lambda s: _set(s, key, value))
    before = tree_hash(tmp_path)
    err = one_error_line(capsys, main(["surface", str(bad), "--grid", "3", "--out", str(tmp_path / "o" / "s")]))
    assert f"checkpoint {bad}: " in err and message in err, err
    assert tree_hash(tmp_path) == before


def test_checkpoint_parameter_budget_flag(trained, tmp_path, capsys):
    """The budget is a flag: a model above a lowered budget is refused, the default lets it in."""
    from topoland.nets.checkpoint import MAX_PARAMS
    from topoland.cli.tools import _MAX_PARAMS_TEXT
    assert f"{MAX_PARAMS:,}" == _MAX_PARAMS_TEXT
    st = RunStore.open(trained[1])
    src = st.stage_dir(st.cells().cell_id[0], "train") / "model.safetensors"
    out = tmp_path / "s"
    err = one_error_line(capsys, main(["surface", str(src), "--grid", "3", "--out", str(out), "--max-params", "100"]))
    assert "model of 195 parameters, above the budget of 100" in err and not list(tmp_path.iterdir())
    assert main(["surface", str(src), "--kind", "line", "--grid", "3", "--out", str(out), "--max-params", "195"]) == 0
    assert out.with_suffix(".csv").is_file()


def test_checkpoint_never_downloads(trained, tmp_path, capsys, monkeypatch):
    """A spec whose data section asks for a download into a chosen folder: no download is
    tried, no folder created; the message says where the files should be."""
    from topoland import data as data_mod
    tried = []
    monkeypatch.setattr(data_mod, "_download", lambda *a, **k: tried.append(a))
    st = RunStore.open(trained[1])
    src = st.stage_dir(st.cells().cell_id[0], "train") / "model.safetensors"
    chosen = tmp_path / "chosen"

    def spec(s):
        s["data"] = s["data"] | {"name": "mnist", "root": str(chosen), "download": True}
    bad = _tampered(src, tmp_path / "bad.safetensors", spec=spec)
    before = tree_hash(tmp_path)
    err = one_error_line(capsys, main(["surface", str(bad), "--grid", "3", "--out", str(tmp_path / "o" / "s")]))
    assert "mnist" in err.lower() and str(chosen) in err, err
    assert tried == [] and not chosen.exists() and tree_hash(tmp_path) == before


def test_nonfinite_weights_are_named(trained, tmp_path, capsys):
    """NaN/inf weights are named (tensor and count), from a checkpoint command and inside a run,
    where restoring the file resumes to the results of an undisturbed run."""
    def poison(ts):
        ts["net.1.weight"][0, :3] = float("nan")
        ts["net.3.bias"][1] = float("inf")
    st = RunStore.open(trained[1])
    cid = st.cells().cell_id[0]
    src = st.stage_dir(cid, "train") / "model.safetensors"
    bad = _tampered(src, tmp_path / "bad.safetensors", tensors=poison)
    err = one_error_line(capsys, main(["surface", str(bad), "--grid", "3", "--out", str(tmp_path / "o" / "s")]))
    assert ("tensor 'net.1.weight' has 3 non-finite values (NaN or inf); "
            "tensor 'net.3.bias' has 1 non-finite value (NaN or inf)") in err, err
    assert "directions differ" not in err and not (tmp_path / "o").exists()

    opts = {"n_probes": 1, "n_samples": 16, "n_directions": 1}
    ref = _copy_run(trained[1], tmp_path / "ref")
    assert run_mod.run_stage_in_dir(ref, "curvature", overrides=opts, progress=False).failures == []
    run_dir = _copy_run(trained[1], tmp_path / "run")
    target = RunStore.open(run_dir).stage_dir(cid, "train") / "model.safetensors"
    good = target.read_bytes()
    shutil.copyfile(bad, target)
    rep = run_mod.run_stage_in_dir(run_dir, "curvature", overrides=opts, progress=False)
    assert [(c, s) for c, s, _ in rep.failures] == [(cid, "curvature")]
    assert "tensor 'net.1.weight' has 3 non-finite values" in rep.failures[0][2]
    target.write_bytes(good)
    assert run_mod.run_stage_in_dir(run_dir, "curvature", overrides=opts, progress=False).failures == []
    assert assert_same_results(ref, run_dir, ["train", "curvature"]) > 0


# ------------------------------------------------------------------- 3. resume checks the disk
@pytest.mark.parametrize("fault", ["cell folder deleted", "stage folder deleted", "file altered", "file added"])
def test_resume_recomputes_what_changed_on_disk(trained, tmp_path, capsys, fault):
    cfg, ref = trained
    run_dir = _copy_run(ref, tmp_path / "run")
    st = RunStore.open(run_dir)
    cid = st.cells().cell_id[1]
    train = st.stage_dir(cid, "train")
    if fault == "cell folder deleted":
        shutil.rmtree(train.parent)
    elif fault == "stage folder deleted":
        shutil.rmtree(train)
    elif fault == "file altered":
        (train / "history.csv").write_text("epoch\n0\n")
    else:
        (train / "extra.txt").write_text("x")
    assert main(["verify", str(run_dir)]) == 1
    capsys.readouterr()
    assert main(["run", str(cfg), "--out", str(run_dir), "--quiet"]) == 0
    assert f"note: {cid}/train: recomputed, its results changed on disk" in capsys.readouterr().out
    assert main(["verify", str(run_dir)]) == 0
    assert assert_same_results(ref, run_dir, ["train"]) == 12  # 4 cells x (model, init, history)


def test_stage_dependencies_and_changed_config(tmp_path, capsys):
    """Recomputing a stage invalidates what read it (topology reads sample, the analysis every
    cell's features); a changed config section reruns the stages that read it; and going back
    to the config gives the bytes of an undisturbed run."""
    from topoland.runs.stages import dependents
    from topoland.runs.store import RUN_LEVEL
    assert dependents("sample") == ["topology", "analysis", "report"]
    assert dependents("paths") == ["report"] and dependents("report") == []
    stages = '["train", "sample", "topology", "surface", "curvature", "analysis"]'
    cfg = tiny_config(tmp_path / "t.toml", epochs=2, extra=_DETERMINISM, stages=stages)
    ref, run_dir = tmp_path / "ref", tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(ref), "--quiet"]) == 0
    shutil.copytree(ref, run_dir)
    st = RunStore.open(run_dir)
    cells = list(st.cells().cell_id)

    # sample recomputed with another value: its dependents are no longer marked done
    assert main(["sample", str(run_dir), "--set", "epochs=3", "--force", "--quiet"]) == 0
    assert all(st.is_done(c, "sample") and st.summary(c, "sample")["options"]["epochs"] == 3 for c in cells)
    assert not any(st.is_done(c, "topology") for c in cells) and not st.is_done(RUN_LEVEL, "analysis")
    assert all(st.is_done(c, "train") and st.is_done(c, "curvature") for c in cells)  # not readers of sample
    assert main(["verify", str(run_dir)]) == 0
    # a --set without --force that changes what a finished stage read recomputes it too
    capsys.readouterr()
    assert main(["sample", str(run_dir), "--set", "epochs=4", "--quiet"]) == 0
    assert capsys.readouterr().out.count("sample: recomputed, the config it read changed") == len(cells)
    assert all(st.summary(c, "sample")["options"]["epochs"] == 4 for c in cells)

    # a changed [analysis] section reruns the analysis, and the stored config says so
    changed = tmp_path / "changed.toml"
    changed.write_text(cfg.read_text().replace("n_boot = 20", "n_boot = 30"))
    assert main(["run", str(changed), "--out", str(run_dir), "--quiet"]) == 0
    assert st.inputs(RUN_LEVEL, "analysis")["analysis"]["n_boot"] == 30
    assert "n_boot = 30" in (run_dir / "config.toml").read_text()
    # the sample stage went back to the config's value; back to the config: an undisturbed run's bytes
    assert all(st.summary(c, "sample")["options"]["epochs"] == 2 for c in cells)
    assert main(["run", str(cfg), "--out", str(run_dir), "--quiet"]) == 0
    assert st.inputs(RUN_LEVEL, "analysis")["analysis"]["n_boot"] == 20
    files = {p.relative_to(ref).as_posix() for p in ref.rglob("*") if p.is_file()}
    assert files == {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()}
    differ = [f for f in sorted(files - TIME_OR_PROCESS_FILES) if (ref / f).read_bytes() != (run_dir / f).read_bytes()]
    assert differ == []


def test_ray_cells_bring_back_their_recorded_inputs(trained, tmp_path):
    """A cell run elsewhere (a Ray task's body) returns the config values its stages read, and
    the driver records them as a local run does."""
    from topoland.pipeline.executors import _unpack_into, run_packed_cell
    from topoland.runs.freshness import stage_inputs
    st = RunStore.open(_copy_run(trained[1], tmp_path / "run"))
    cid = st.cells().cell_id[0]
    cfg = st.cell_config(cid)
    st.invalidate(cid, "train")
    new, failures, _ = run_packed_cell(cfg, cid, {}, ["train"])
    assert failures == [] and new["train"]["inputs"] == stage_inputs(cfg, "train")
    _unpack_into(st, cid, "train", new["train"])
    assert st.inputs(cid, "train") == stage_inputs(cfg, "train") == RunStore.open(trained[1]).inputs(cid, "train")
