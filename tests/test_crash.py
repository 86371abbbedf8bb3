"""Crash safety of `topoland run`: SIGKILL at random moments in different stages, then resume;
and a second `topoland run` on a busy run directory is refused by the lock.

The pipeline is tests/data/tiny_pipeline.toml cut to 4 cells and the stages up to the
analysis (the report stage is a PDF drawn from these tables; it is left out to keep the test
short). The final results (every per-cell file and summary, the paths and analysis tables)
must equal those of an uninterrupted run; wall times legitimately differ and are not compared.
"""
import random
import re
import signal
import sqlite3
import time
from pathlib import Path

from tests.helpers import cli, popen_cli
from tests.test_ray import assert_same_results
from topoland.runs.store import RUN_LEVEL, RunStore

TINY = Path(__file__).parent / "data" / "tiny_pipeline.toml"
CELL_STAGES = ["train", "sample", "topology", "surface", "curvature"]
RUN_STAGES = ["paths", "analysis"]


def crash_config(path: Path) -> Path:
    """The tiny pipeline with a 2 x 2 grid (4 cells, no extra cells) and no report stage."""
    text = TINY.read_text()
    text = text.replace('"train.lr" = [0.05, 0.1]\n', "")
    text = re.sub(r"\[\[cells\]\]\n(\"[^\n]*\n)+\n", "", text)
    text = text.replace('seed = 0\n', 'seed = 0\nstages = ["train", "sample", "topology", "surface", '
                                      '"curvature", "paths", "analysis"]\n', 1)
    assert "[[cells]]" not in text and "train.lr" not in text
    path.write_text(text)
    return path


def _running(run_dir) -> list[str]:
    try:
        con = sqlite3.connect(f"file:{run_dir / 'index.sqlite'}?mode=ro", uri=True, timeout=5)
        try:
            return [r[0] for r in con.execute("SELECT stage FROM stages WHERE status = 'running'")]
        finally:
            con.close()
    except sqlite3.Error:
        return []


def _kill_during(cfg, run_dir, targets, rng, cwd, timeout=240) -> list[str]:
    """Start `topoland run`, wait until one of ``targets`` is running, wait a random moment
    (seeded, under half a second), SIGKILL. Returns the stages running just before the kill."""
    p = popen_cli("run", cfg, "--out", run_dir, "--quiet", cwd=cwd)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and p.poll() is None:
            if set(_running(run_dir)) & set(targets):
                break
            time.sleep(0.02)
        assert p.poll() is None, f"the run finished before any of {targets} was seen running"
        time.sleep(rng.uniform(0.0, 0.5))
        running = _running(run_dir)
        p.send_signal(signal.SIGKILL)
    finally:
        p.kill()
        p.wait()
    return running


def test_sigkill_in_several_stages_then_resume_equals_uninterrupted(tmp_path):
    cfg = crash_config(tmp_path / "crash.toml")
    ref, run = tmp_path / "ref", tmp_path / "run"
    cli("run", cfg, "--out", ref, "--quiet", cwd=tmp_path, check=True, timeout=400)

    rng = random.Random(20240917)
    killed_in = []
    for targets in (["train"], ["sample", "topology"], ["surface", "curvature", "paths", "analysis"]):
        killed_in.append(_kill_during(cfg, run, targets, rng, cwd=tmp_path))
        assert not RunStore.open(run).is_done(RUN_LEVEL, "analysis")
    # the kills landed in at least three different stages
    assert all(killed_in), killed_in
    assert len({s for stages in killed_in for s in stages}) >= 3, killed_in

    r = cli("run", cfg, "--out", run, "--quiet", cwd=tmp_path, timeout=400)
    assert r.returncode == 0, r.stderr
    v = cli("verify", run)
    assert v.returncode == 0, v.stdout
    st = RunStore.open(run)
    assert not st.stages().status.isin(["running", "interrupted", "failed"]).any()
    assert not list(run.rglob("*.tmp-*")) and not list(run.rglob("*.partial*"))

    # every per-cell file (weights bit for bit) and summary, the paths and analysis tables
    n = assert_same_results(ref, run, CELL_STAGES, RUN_STAGES)
    assert n >= 4 * 6
    for name in ("features.csv", "classifiers.csv", "features.parquet"):
        assert (st.stage_dir(RUN_LEVEL, "analysis") / name).is_file(), name


def test_second_run_on_same_directory_is_refused(tmp_path):
    cfg = crash_config(tmp_path / "crash.toml")
    # enough sampling work that the first run is still busy while the second starts up
    text = cfg.read_text().replace('"curvature", "paths", "analysis"]', '"curvature"]')
    text = text.replace("[sample]\ndirections = 2\nsteps = [0.5, 1.0]\nepochs = 4", "[sample]\ndirections = 2\nsteps = [0.5, 1.0]\nepochs = 400")
    assert "epochs = 400" in text
    cfg.write_text(text)
    run = tmp_path / "run"
    first = popen_cli("run", cfg, "--out", run, "--quiet", "--only", "train,sample", cwd=tmp_path)
    try:
        deadline = time.time() + 120
        while not _running(run) and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended before the second could start"
        second = cli("run", cfg, "--out", run, "--quiet", cwd=tmp_path)
        assert first.poll() is None, "the check needs the first run still working"
        assert second.returncode == 2
        assert second.stderr.startswith("error: ") and second.stderr.count("\n") == 1, second.stderr
        assert "in use by process" in second.stderr and str(first.pid) in second.stderr
        assert first.wait(timeout=300) == 0
    finally:
        first.kill()
        first.wait()
    assert cli("verify", run).returncode == 0
    st = RunStore.open(run)
    assert all(st.is_done(c, s) for c in st.cells().cell_id for s in ("train", "sample"))


def test_resume_data_is_not_a_result(tmp_path):
    """Resume data beside a stage (paths.pairs/, surface.partial.h5) is ignored by verify and
    removed with the stage by invalidate (so --force recomputes instead of reusing it)."""
    from topoland.runs.config import expand_grid, to_toml, validate
    cfg = validate({"data": {"name": "synthetic"}})
    cells = expand_grid(cfg)
    st = RunStore.create(tmp_path / "run", to_toml(cfg), cells)
    cid = cells[0].cell_id
    pairs = st.stage_dir(RUN_LEVEL, "paths").with_name("paths.pairs") / "a__b"
    pairs.mkdir(parents=True)
    (pairs / "barriers.json").write_text("{}")
    partial = st.stage_dir(cid, "surface").with_name("surface.partial.h5")
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"half a grid")
    stray = st.stage_dir(cid, "bogus")
    stray.mkdir()
    assert st.verify() == [f"{cid}/bogus: folder without a finished stage in the index"]
    st.invalidate(RUN_LEVEL, "paths")
    st.invalidate(cid, "surface")
    assert not pairs.parent.exists() and not partial.exists()
