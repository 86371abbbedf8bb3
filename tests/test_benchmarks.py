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


def test_bench_sampler_runs():
    out = _bench("bench_sampler.py", "--model", "quickstart", "--directions", "1", "--steps", "0.5", "1.0",
                 "--epochs", "1", "--n-train", "256", "--repeat", "1", "--threads", "1")
    assert "speed ratio" in out and "retrain epochs/s" in out
