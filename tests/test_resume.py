"""A training run killed with SIGKILL mid-grid resumes to the state of an uninterrupted run."""
import signal
import sqlite3
import time

import torch
from safetensors.torch import load_file

from tests.helpers import cli, popen_cli, tiny_config
from topoland.runs.store import RunStore


def _done(run_dir):
    try:
        con = sqlite3.connect(run_dir / "index.sqlite", timeout=5)
        n = con.execute("SELECT COUNT(*) FROM stages WHERE status = 'done'").fetchone()[0]
        con.close()
        return n
    except sqlite3.Error:
        return 0


def _weights(run_dir):
    st = RunStore.open(run_dir)
    return {cid: load_file(str(st.stage_dir(cid, "train") / "model.safetensors")) for cid in st.cells().cell_id}


def test_sigkill_mid_grid_then_resume(tmp_path):
    cfg = tiny_config(tmp_path / "tiny.toml", epochs=40)
    ref, run = tmp_path / "ref", tmp_path / "run"
    cli("train", cfg, "--out", ref, "--quiet", check=True)

    p = popen_cli("train", cfg, "--out", run, "--quiet")
    deadline = time.time() + 240
    while _done(run) < 1 and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert 1 <= _done(run) < 4, "the kill should land mid-grid"

    cli("train", cfg, "--out", run, "--quiet", check=True)
    a, b = _weights(ref), _weights(run)
    assert a.keys() == b.keys()
    for cid in a:
        for name in a[cid]:
            assert torch.equal(a[cid][name], b[cid][name]), (cid, name)
    assert cli("verify", run).returncode == 0
    ra = RunStore.open(ref)
    rb = RunStore.open(run)
    for cid in a:
        assert ra.summary(cid, "train") == rb.summary(cid, "train")
