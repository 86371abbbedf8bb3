"""Shared helpers of the test suite: tiny configs and running the CLI in a subprocess."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TINY = """
[run]
name = "tiny"
seed = 0
stages = {stages}

[data]
name = "synthetic"

[model]
name = "mlp"
widths = [16]

[train]
lr = 0.1
epochs = {epochs}
batch_size = 32

[grid]
"train.weight_decay" = [0.0, 0.001]
"train.batch_size" = [16, 32]
{extra}
"""


#: the tiny retraining every multi-stage test config uses (2 directions x 2 steps, 2 epochs)
TINY_SAMPLE = """
[sample]
directions = 2
steps = [0.5, 1.0]
epochs = 2
lr = 0.01
batch_size = 32
"""
#: a topology small enough for those samples (k-NN and PHATE kNN 3, t = 5)
TINY_TOPOLOGY = """
[topology]
k = 3
knn = 3
t = 5
"""


def tiny_config(path, *, stages='["train"]', epochs=3, extra=""):
    path = Path(path)
    path.write_text(TINY.format(stages=stages, epochs=epochs, extra=extra))
    return path


def cli(*args, check=False, timeout=300, **kw):
    """Run ``python -m topoland.cli ARGS`` and return the CompletedProcess."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-m", "topoland.cli", *map(str, args)], capture_output=True,
                       text=True, env=env, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"topoland {' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def popen_cli(*args, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "topoland.cli", *map(str, args)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
