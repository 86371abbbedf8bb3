"""``topoland score``: a table of models scored, the CSV written, bad input in one error line."""
import numpy as np
import pandas as pd
import pytest

from tests.helpers import cli
from topoland.cli.main import main


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    rng = np.random.default_rng(0)
    df = pd.DataFrame([dict(lr=lr, width=w, seed=s) for lr in (0.1, 0.2, 0.3) for w in (8, 16) for s in range(3)])
    df["gap"] = 3 * df.lr + 0.05 * df.width + rng.normal(0, 0.05, len(df))
    df["sharpness"] = df.gap + rng.normal(0, 0.1, len(df))
    df["norm"] = df.width + rng.normal(0, 1, len(df))
    df["test_acc"] = 1 - df.gap
    df.loc[2, "norm"] = np.nan
    path = tmp_path_factory.mktemp("score") / "models.csv"
    df.to_csv(path, index=False)
    return path


def test_score_a_csv_through_the_command(models, tmp_path):
    out = tmp_path / "out" / "scores.csv"
    r = cli("score", models, "--measure", "sharpness,norm", "--gap", "gap", "--hp", "lr,width",
            "--n-boot", "20", "--permutations", "19", "--out", out, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "sharpness" in r.stdout and "pgdl x100" in r.stdout and "tau_lr" in r.stdout
    assert "norm: 1 model without a value left out" in r.stdout
    table = pd.read_csv(out)
    assert set(table.measure) == {"sharpness", "norm"} and "psi_ci_low" in table
    assert table.psi.is_monotonic_decreasing
    assert not list(out.parent.glob(".*tmp*"))  # written through a temporary name


def test_measure_all_leaves_out_the_gap_axes_seed_and_test_columns(models, tmp_path, capsys):
    out = tmp_path / "all.csv"
    assert main(["score", str(models), "--measure", "all", "--hp", "lr,width", "--n-boot", "5",
                 "--permutations", "5", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "leaves out seed, test_acc" in text
    assert sorted(pd.read_csv(out).measure) == ["norm", "sharpness"]


@pytest.mark.parametrize("args, culprit", [
    (["--measure", "sharp", "--hp", "lr,width"], "measure column 'sharp' is not in the table (columns: lr, width"),
    (["--measure", "norm", "--hp", "lr,depth"], "hyperparameter column 'depth' is not in the table"),
    (["--measure", "norm", "--gap", "gen_gap", "--hp", "lr"], "no gap column 'gen_gap'"),
])
def test_bad_columns_one_error_line(models, capsys, args, culprit):
    assert main(["score", str(models), *args, "--n-boot", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and culprit in err and err.count("\n") == 1, err


def test_a_missing_table_one_error_line(tmp_path, capsys):
    assert main(["score", str(tmp_path / "none.csv"), "--measure", "m", "--hp", "a"]) == 2
    assert capsys.readouterr().err == f"error: table {tmp_path / 'none.csv'} does not exist\n"
