"""The local executor with worker processes writes the same results as the inline one."""
import torch
from safetensors.torch import load_file

from tests.helpers import cli, tiny_config
from topoland.runs.store import RunStore


def _weights(run_dir):
    st = RunStore.open(run_dir)
    return {cid: load_file(str(st.stage_dir(cid, "train") / "model.safetensors")) for cid in st.cells().cell_id}


def test_worker_processes_match_inline_run(tmp_path):
    inline = tiny_config(tmp_path / "inline.toml", epochs=2)
    workers = tmp_path / "workers.toml"
    workers.write_text(inline.read_text().replace("seed = 0\n", "seed = 0\nworkers = 2\n", 1))
    cli("train", inline, "--out", tmp_path / "a", "--quiet", check=True)
    cli("train", workers, "--out", tmp_path / "b", "--quiet", check=True)
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys() and len(a) == 4
    for cid in a:
        for name in a[cid]:
            assert torch.equal(a[cid][name], b[cid][name]), (cid, name)
    assert cli("verify", tmp_path / "b").returncode == 0


def test_worker_processes_inherit_the_parents_warning_filters():
    import multiprocessing as mp
    import warnings

    from topoland.pipeline.executors import _init_worker
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="a marker of this test")
        with mp.get_context("spawn").Pool(1, _init_worker, (list(warnings.filters),)) as pool:
            patterns = pool.apply(eval, ("[f[1].pattern for f in __import__('warnings').filters if f[1]]",))
    assert "a marker of this test" in patterns
