"""The benchmark scripts run (tiny sizes, no timing claims): they must not rot between runs."""
import os
import subprocess
import sys

from tests.helpers import ROOT


def _bench(script, *args, timeout=240):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "benchmarks" / script), *args],
                       capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_bench_surface_runs():
    out = _bench("bench_surface.py", "--steps", "3", "--threads", "1", "--skip-baselines")
    assert "points/s" in out and "of the matmul rate" in out


def test_bench_topology_runs():
    out = _bench("bench_topology.py", "--quick", "--case", "paper", "--no-baseline")
    assert "ours total" in out and "paper-scale target" in out


def test_bench_topology_large_case_paths(capsys):
    """Both kinds of distances, the agreement lines and two baselines, at a tiny size."""
    import importlib.util

    import torch
    spec = importlib.util.spec_from_file_location(
        "bench_topology", ROOT / "experiments" / "benchmarks" / "bench_topology.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    totals, base = mod.run_case("tiny", 8, 10, 400, 30, 10, 6, "flag", torch.float16,
                                baselines=("exact", "landmarks"), methods=("exact", "sketch"),
                                sketch_dim=64)
    out = capsys.readouterr().out
    assert set(totals) == {"exact", "sketch"} and set(base) == {"exact", "landmarks"}
    assert out.count("edge Jaccard") == 3 and "ours (sketch) whole stage" in out
    assert "5-NN kept" in out


def test_bench_sampler_runs():
    out = _bench("bench_sampler.py", "--model", "quickstart", "--directions", "1", "--steps", "0.5", "1.0",
                 "--epochs", "1", "--n-train", "256", "--repeat", "1", "--threads", "1")
    assert "speed ratio" in out and "retrain epochs/s" in out


def test_bench_study_runs(tmp_path):
    # the suite's measure population (tests/test_measures_pipeline.py) cut to 4 models: one
    # architecture, the script is what is under test here
    text = (ROOT / "tests" / "data" / "tiny_measures.toml").read_text()
    grid = 'model = [{ name = "mlp", widths = [8] }, { name = "mlp", widths = [24] }]\n'
    assert grid in text
    cfg = tmp_path / "tiny_study.toml"
    cfg.write_text(text.replace(grid, "").replace("epochs = 40", "epochs = 20"))
    out = _bench("bench_study.py", "--config", str(cfg),
                 "--out", str(tmp_path / "study"), "--budget", "1", timeout=600)
    assert "exit status: 0" in out and "ratio" in out and "measures" in out
    assert (tmp_path / "reports" / "study.pdf").is_file()
    again = subprocess.run([sys.executable, str(ROOT / "experiments" / "benchmarks" / "bench_study.py"),
                            "--out", str(tmp_path / "study")], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert again.returncode == 2 and "exists" in again.stderr


def test_bench_curvature_runs():
    out = _bench("bench_curvature.py", "--epochs", "0", "--probes", "4", "--probe-batch", "2",
                 "--threads", "1", "--skip-baseline")
    assert "top eigenvalue" in out and "4 probes" in out and "peak RSS" in out
