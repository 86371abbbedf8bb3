"""Hash every file of a tiny run directory, to check that a code move leaves the results alone.

Runs a tiny config through every stage (train, sample, topology, surface, curvature, ensemble,
paths, analysis, report) and prints one line per file: its SHA-256 and its path. Files that
record wall-clock times, dates or the code layout are listed but marked as not compared.

    python experiments/validation/run_hashes.py --out /tmp/before > before.txt
    # ... move the code ...
    python experiments/validation/run_hashes.py --out /tmp/after > after.txt
    python experiments/validation/run_hashes.py --compare before.txt after.txt

Floating-point results differ between machines: compare two runs made on the same machine.
"""
import argparse
import hashlib
import subprocess
import sys
from pathlib import Path

CONFIG = """
[run]
name = "hashes"
seed = 0
threads = 1
stages = ["train", "sample", "topology", "surface", "curvature", "ensemble", "paths", "analysis", "report"]

[data]
name = "synthetic"

[model]
name = "mlp"
widths = [16]

[train]
lr = 0.1
epochs = 3
batch_size = 32

[grid]
"train.weight_decay" = [0.0, 0.001]
"train.batch_size" = [16, 32]

[sample]
directions = 2
steps = [0.5, 1.0]
epochs = 2
lr = 0.01
batch_size = 32

[topology]
k = 3
knn = 3
t = 5
n_resamples = 5

[surface]
kind = "line"
grid = 5

[curvature]
top_k = 1
n_probes = 2
n_samples = 64

[ensemble]
cycles = 2
cycle_epochs = 1

[paths]
method = "neb"
pairs = "first"
n_images = 5
steps = 5
n_samples = 64

[analysis]
n_permutations = 3
n_repeats = 1
"""

#: files whose bytes hold times, dates or process ids, not results
NOT_COMPARED = {"index.sqlite", "index.sqlite-shm", "index.sqlite-wal", "report.pdf", ".lock"}


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _index_rows(db_path):
    """The index's results without its clock: cells, stage statuses and summaries, file
    checksums and the recorded stage inputs, one sorted text line each."""
    import sqlite3
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        rows = [("cells",) + r for r in con.execute("SELECT * FROM cells ORDER BY cell_id")]
        rows += [("stages",) + r for r in con.execute(
            "SELECT cell_id, stage, status, summary FROM stages ORDER BY cell_id, stage")]
        rows += [("files",) + r for r in con.execute("SELECT * FROM files ORDER BY cell_id, stage, relpath")
                 if Path(r[2]).name not in NOT_COMPARED]  # a PDF's bytes hold its date
        rows += [("meta",) + r for r in con.execute(
            "SELECT key, value FROM meta WHERE key LIKE 'inputs/%' ORDER BY key")]
    finally:
        con.close()
    return [repr(r) for r in rows]


def hash_run(out):
    """Run the tiny config into ``out`` and return ``[(sha256, relative path, compared)]``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    out = out.resolve()
    if (out / "run").exists():
        raise SystemExit(f"{out / 'run'} exists: give a new --out (a resumed run would recompute nothing)")
    cfg = out.parent / (out.name + ".toml")
    cfg.write_text(CONFIG)
    subprocess.run([sys.executable, "-m", "topoland.cli", "run", str(cfg), "--out", str(out / "run"),
                    "--quiet"], check=True, stdout=sys.stderr, cwd=out)
    rows = []
    for p in sorted((out / "run").rglob("*")):
        if p.is_file():
            rel = p.relative_to(out / "run").as_posix()
            rows.append((_digest(p), rel, p.name not in NOT_COMPARED))
    for line in _index_rows(out / "run" / "index.sqlite"):  # what the index says, minus its clock
        rows.append((hashlib.sha256(line.encode()).hexdigest(), f"index.sqlite[{line[:60]}]", True))
    return rows


def _read(path):
    rows = {}
    for line in Path(path).read_text().splitlines():
        digest, flag, rel = line.split(maxsplit=2)
        rows[rel] = (digest, flag == "=")
    return rows


def compare(before, after):
    """Print the files that differ; return the number of compared files that differ."""
    a, b = _read(before), _read(after)
    bad = 0
    for rel in sorted(set(a) | set(b)):
        if rel not in a or rel not in b:
            print(f"only in {'after' if rel in b else 'before'}: {rel}")
            bad += 1
        elif a[rel][0] != b[rel][0]:
            compared = a[rel][1] and b[rel][1]
            print(f"{'DIFFERS' if compared else 'differs (not compared)'}: {rel}")
            bad += compared
    n = sum(1 for rel in a if a[rel][1])
    print(f"{n} compared files, {bad} differ")
    return bad


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="folder for the run (it gets out/run and out.toml)")
    ap.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="compare two hash lists")
    args = ap.parse_args(argv)
    if args.compare:
        return 1 if compare(*args.compare) else 0
    if not args.out:
        ap.error("give --out or --compare")
    for digest, rel, compared in hash_run(args.out):
        print(digest, "=" if compared else "~", rel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
