"""Run store: atomic stages, checksums, lock, path safety."""
import os
import subprocess
import sys

import pytest
import torch

from topoland.runs.config import expand_grid, to_toml, validate
from topoland.errors import StoreError
from topoland.io import load_tensors, save_tensors
from topoland.runs.store import RunStore


@pytest.fixture
def store(tmp_path):
    cfg = validate({"data": {"name": "synthetic"}, "grid": {"train.weight_decay": [0.0, 0.1]}})
    cells = expand_grid(cfg)
    return RunStore.create(tmp_path / "run", to_toml(cfg), cells), cells


def test_stage_is_atomic_and_checksummed(store):
    st, cells = store
    cid = cells[0].cell_id
    with st.stage(cid, "train") as box:
        save_tensors(box["dir"] / "t.safetensors", {"w": torch.arange(4.0)})
        box["summary"] = {"loss": 0.5}
        assert not st.stage_dir(cid, "train").exists()  # nothing visible until the end
    assert st.is_done(cid, "train") and st.summary(cid, "train") == {"loss": 0.5}
    assert torch.equal(load_tensors(st.stage_dir(cid, "train") / "t.safetensors")[0]["w"], torch.arange(4.0))
    assert st.verify() == []
    (st.stage_dir(cid, "train") / "t.safetensors").write_bytes(b"garbage")
    assert any("checksum" in p for p in st.verify())


def test_failed_stage_leaves_nothing(store):
    st, cells = store
    cid = cells[1].cell_id
    with pytest.raises(RuntimeError):
        with st.stage(cid, "sample") as box:
            (box["dir"] / "half.csv").write_text("a,b\n")
            raise RuntimeError("boom")
    assert st.status(cid, "sample") == "failed"
    assert not st.stage_dir(cid, "sample").exists()
    assert "boom" in st.failures().error.iloc[0]
    assert st.verify() == []


def test_reopen_with_other_grid_refused(store, tmp_path):
    st, _ = store
    cfg = validate({"data": {"name": "synthetic"}, "grid": {"train.weight_decay": [0.0, 0.5]}})
    with pytest.raises(StoreError, match="different grid"):
        RunStore.create(st.path, to_toml(cfg), expand_grid(cfg))


def test_second_process_refused_by_lock(store):
    st, _ = store
    with st:
        code = ("import sys; from topoland.runs.store import RunStore\n"
                "try:\n    RunStore.open(sys.argv[1]).lock()\nexcept Exception as e:\n    print(e); sys.exit(3)")
        r = subprocess.run([sys.executable, "-c", code, str(st.path)], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": os.getcwd()})
        assert r.returncode == 3 and "in use by process" in r.stdout
    st.lock()
    st.unlock()


def test_paths_outside_run_refused(store):
    st, _ = store
    assert st.inside("reports/a.pdf").is_relative_to(st.path)
    with pytest.raises(StoreError, match="outside the run directory"):
        st.inside("../../etc/passwd")
    with pytest.raises(StoreError, match="outside"):
        st.inside("/tmp/x")


def test_stale_temporaries_cleaned(store):
    st, cells = store
    d = st.stage_dir(cells[0].cell_id, "train")
    tmp = d.with_name("train.tmp-99999")
    tmp.mkdir(parents=True)
    (tmp / "x").write_text("half")
    st.clean_stale()
    assert not tmp.exists()
    assert st.verify() == []
