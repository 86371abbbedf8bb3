"""Wall time of the generalization-measure study against its budget, from a fresh run directory.

    python experiments/benchmarks/bench_study.py                       # the _small variant, 20 min
    python experiments/benchmarks/bench_study.py --config experiments/generalization_measures.toml --budget 90

Runs ``topoland run CONFIG --out OUT`` in a subprocess from OUT's parent folder (OUT must not
exist: the run starts from nothing; the PDF goes to that folder's ``reports/``), then prints the total wall time, its ratio to the budget, and the seconds each stage took
summed over the cells (from the run's index). A benchmark, not a test: it prints what it measured.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "experiments" / "generalization_measures_small.toml"))
    p.add_argument("--out", required=True, help="a new run directory")
    p.add_argument("--budget", type=float, default=20.0, help="minutes")
    a = p.parse_args(argv)
    out = Path(a.out).resolve()
    if out.exists():
        print(f"error: --out '{out}' exists; the benchmark times a run from nothing", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    # from the run directory's parent, so the report lands in its reports/ folder
    r = subprocess.run([sys.executable, "-m", "topoland.cli", "run", str(Path(a.config).resolve()), "--out", str(out),
                        "--quiet"], cwd=out.parent)
    wall = time.perf_counter() - t0
    if not (out / "index.sqlite").is_file():
        print(f"error: the run wrote no run directory at '{out}' (exit status {r.returncode})", file=sys.stderr)
        return r.returncode or 1
    from topoland.runs.store import RunStore
    stages = RunStore.open(out).stages()
    per = stages.groupby("stage", sort=False)["seconds"].agg(["sum", "count"])
    print(f"config: {a.config}")
    print(f"exit status: {r.returncode}")
    print(f"wall time: {wall / 60:.1f} min; budget {a.budget:.0f} min; ratio {wall / 60 / a.budget:.2f}")
    print("stage seconds (summed over cells; several workers overlap them):")
    for stage, row in per.iterrows():
        print(f"  {stage:<10} {row['sum']:8.1f} s over {int(row['count'])}")
    return r.returncode


if __name__ == "__main__":
    raise SystemExit(main())
