"""What the commands print when a run or a stage ends."""
from __future__ import annotations

import sys


def finish(rep) -> int:
    """Print a run's notes, folders and failures; return the exit code (1 when a stage failed)."""
    for note in getattr(rep, "notes", ()):
        print(f"note: {note}")
    print(f"run directory: {rep.run_dir}")
    tables = rep.run_dir / "run" / "analysis"
    if tables.is_dir():
        print(f"tables:        {tables}")
    if rep.report_path:
        print(f"report:        {rep.report_path}")
    if rep.failures:
        print(f"\n{len(rep.failures)} failed stage(s); rerun the same command to retry them:", file=sys.stderr)
        for cid, stage, msg in rep.failures:
            print(f"  cell {cid} · {stage}: {msg.splitlines()[0] if msg else ''}", file=sys.stderr)
        return 1
    return 0
