"""The Ray executor on a local 2-CPU Ray instance gives the very files of a local run.

`topoland run --executor ray` starts (and stops) a private local Ray instance: no dashboard,
no usage reporting, a 256 MiB object store. Cells run as Ray tasks; their new stage folders
come back to the driver as bytes and are written there. A cell that fails inside a task is
recorded in the index with its traceback, like in a local run.
"""
import json
import os
import time

import pytest
import torch
from safetensors import safe_open

from tests.helpers import TINY_SAMPLE, cli, tiny_config
from topoland.runs.store import RUN_LEVEL, RunStore

pytest.importorskip("ray")

SAMPLE = """
[[cells]]
"sample.records_per_epoch" = 1000   # more records than minibatches: fails at run time
""" + TINY_SAMPLE
STAGES = '["train", "sample"]'


def _tensors(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def assert_same_file(a, b):
    if a.suffix == ".safetensors":
        (ta, ma), (tb, mb) = _tensors(a), _tensors(b)
        assert ma == mb and ta.keys() == tb.keys(), a
        for k in ta:
            assert ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]), (a, k)
    elif a.suffix == ".h5":
        import h5py
        import numpy as np
        with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
            na, nb = [], []
            fa.visit(na.append)
            fb.visit(nb.append)
            assert na == nb, a
            for name in na:
                if isinstance(fa[name], h5py.Dataset):
                    assert np.array_equal(fa[name][()], fb[name][()], equal_nan=True), (a, name)
    elif a.suffix == ".parquet":
        import pandas as pd
        pd.testing.assert_frame_equal(pd.read_parquet(a), pd.read_parquet(b))
    else:
        assert a.read_bytes() == b.read_bytes(), a


def assert_same_results(ref_dir, run_dir, stages, run_stages=()):
    """Every finished stage of ``ref_dir`` (per cell, and the run-level ``run_stages``) exists
    in ``run_dir`` with equal files and summary.

    safetensors files are compared tensor by tensor (dtype, shape and every bit) plus their
    metadata, HDF5 and Parquet files by content, every other file byte for byte. Wall times
    are not results and are not compared. Returns the number of files compared.
    """
    a, b = RunStore.open(ref_dir), RunStore.open(run_dir)
    assert list(a.cells().cell_id) == list(b.cells().cell_id)
    n = 0
    units = [(cid, s) for cid in a.cells().cell_id for s in stages] + [(RUN_LEVEL, s) for s in run_stages]
    for cid, stage in units:
        assert a.is_done(cid, stage) == b.is_done(cid, stage), (cid, stage)
        if not a.is_done(cid, stage):
            continue
        assert a.summary(cid, stage) == b.summary(cid, stage), (cid, stage)
        da, db = a.stage_dir(cid, stage), b.stage_dir(cid, stage)
        files = sorted(p.relative_to(da) for p in da.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(db) for p in db.rglob("*") if p.is_file()), (cid, stage)
        for rel in files:
            assert_same_file(da / rel, db / rel)
            n += 1
    return n


def test_ray_executor_matches_local_run(tmp_path):
    cfg = tiny_config(tmp_path / "tiny.toml", stages=STAGES, epochs=3, extra=SAMPLE)
    local, ray_dir = tmp_path / "local", tmp_path / "ray"
    ray_before = _ray_processes()
    r_local = cli("run", cfg, "--out", local, "--quiet", cwd=tmp_path, timeout=400)
    r_ray = cli("run", cfg, "--out", ray_dir, "--quiet", "--executor", "ray", cwd=tmp_path, timeout=400)

    # the extra cell's sample stage gets an impossible option at run time: it fails there,
    # after its training; the other cells go on
    for r in (r_local, r_ray):
        assert r.returncode == 1, r.stderr
        assert "1 failed stage(s)" in r.stderr and "records_per_epoch=1000" in r.stderr
    st = RunStore.open(ray_dir)
    fails = st.failures()
    assert len(fails) == 1 and fails.stage[0] == "sample"
    assert "Traceback" in fails.error[0] and "_check_args" in fails.error[0]
    assert fails.cell_id[0] == RunStore.open(local).failures().cell_id[0]

    n = assert_same_results(local, ray_dir, ["train", "sample"])
    assert n >= 4 * 4  # 4 cells x (model, history, samples, arrays, ...)
    assert cli("verify", ray_dir).returncode == 0
    # the resolved config and the stored summaries of the ray run are those of the local run
    assert st.config_text() == RunStore.open(local).config_text()
    assert json.loads(json.dumps(st.summary(st.cells().cell_id[0], "train")))["diverged"] is False
    # no Ray daemon started by the command outlives it
    deadline = time.time() + 15
    while set(_ray_processes()) - set(ray_before) and time.time() < deadline:
        time.sleep(0.5)
    assert not set(_ray_processes()) - set(ray_before)


def _ray_processes():
    """Command lines of running Ray daemons (raylet, gcs_server) started by this user."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "raylet" in cmd.split(" ")[0] or "gcs_server" in cmd.split(" ")[0]:
            out.append(pid)
    return out


def test_cell_data_cache_is_keyed_by_the_run_seed():
    """A local run caches each cell's dataset in the process; a Ray task loads its own. Both
    must give a cell the data of its own seed (run.seed generates synthetic sets and draws
    the splits), or a grid over run.seed would differ between executors."""
    from topoland.runs.config import expand_grid, validate
    from topoland.data import load_dataset
    from topoland.pipeline.context import DataCache
    cfg = validate({"data": {"name": "synthetic"}, "grid": {"run.seed": [0, 1]}})
    for cell in expand_grid(cfg):
        seed = cell.config["run"]["seed"]
        got = DataCache().load(cell.config)
        assert torch.equal(got.x_train, load_dataset("synthetic", seed=seed, val_seed=0).x_train), seed
