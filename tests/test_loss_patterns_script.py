"""experiments/loss_patterns.py end to end with tiny settings: CSV, figures and the PDF report."""
import importlib.util

import numpy as np
import pandas as pd
import pytest

from tests.helpers import ROOT

CONFIG = """
[data]
name = "synthetic"
seed = 0
n_train = 120
eval_samples = 64
synthetic = { n_train = 160, n_test = 80, num_classes = 3, separation = 0.8, noise = 1.0 }

[model]
name = "mlp"
widths = [8]

[train]
lr = 0.1
momentum = 0.9
epochs = 2
batch_size = 32
weight_decay = 0.0

[patterns]
size = [6, 6]
fills = [0.3, 0.5, 0.7]
seeds = [0, 1, 2]
batchnorm = [false, true]
steps = 15
lr = 0.01
cells_per_step = 4
batch_size = 32
clip = 2.5
init_scale = 0.5

[output]
dir = "unused"
device = "cpu"
"""


def _script():
    spec = importlib.util.spec_from_file_location("loss_patterns_script", ROOT / "experiments" / "loss_patterns.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_run_writes_csv_and_pdf(tmp_path):
    from pypdf import PdfReader
    cfg = tmp_path / "lp.toml"
    cfg.write_text(CONFIG)
    pdf = tmp_path / "reports" / "loss_patterns.pdf"
    assert _script().main([str(cfg), "--quick", "--out", str(tmp_path / "out"), "--pdf", str(pdf)]) == 0
    table = pd.read_csv(tmp_path / "out" / "loss_patterns.csv")
    # --quick: three seeds, fills 0.3 and 0.7, both BN settings; grids on the first 64 of the 80 test samples
    assert sorted(table["fill"].unique()) == [0.3, 0.7]
    assert table["seed"].unique().tolist() == [0, 1, 2]
    assert sorted(table["batchnorm"].unique()) == [False, True]
    assert (table["loss_gap"] == table["high_loss"] - table["low_loss"]).all()
    assert (table["eval_split"] == "test").all() and (table["eval_n"] == 64).all()
    comp = pd.read_csv(tmp_path / "out" / "loss_patterns_bn_test.csv")
    assert comp["metric"].tolist() == ["acc_gap", "loss_gap"] and (comp["n_seeds"] == 3).all()
    assert (comp["ci_low"] <= comp["diff"]).all() and (comp["diff"] <= comp["ci_high"]).all()
    assert (comp["p_signflip_min"] == 0.25).all()
    assert (tmp_path / "out" / "loss_patterns.png").is_file()
    pages = [p.extract_text() for p in PdfReader(pdf).pages]
    text = "\n".join(pages)
    for heading in ("Loss patterns: BN vs no BN", "Pattern gap vs fill probability", "BN vs no BN over seeds",
                    "Mean gaps per setting", "Example patterns", "torch", "--quick", "held-out test samples",
                    "paired t-test"):
        assert heading in text, heading
    assert "batchnorm=True" in text and "batchnorm=False" in text
    assert not list(pdf.parent.glob(".*tmp*")), "the PDF is written through a temporary name"


def test_grids_are_evaluated_on_the_test_split(tmp_path, monkeypatch):
    """The fitted plane is evaluated on held-out test inputs, never on the training inputs it was fitted on."""
    import torch

    from topoland.landscape.patterns import LossPatternFitter
    mod = _script()
    seen = []
    real = LossPatternFitter.evaluate

    def spy(self, model, x, y, **kw):
        seen.append((x.clone(), y.clone()))
        return real(self, model, x, y, **kw)

    monkeypatch.setattr(LossPatternFitter, "evaluate", spy)
    cfg = tmp_path / "lp.toml"
    cfg.write_text(CONFIG.replace("seeds = [0, 1, 2]", "seeds = [0]").replace("fills = [0.3, 0.5, 0.7]", "fills = [0.5]")
                   .replace("steps = 15", "steps = 2"))
    assert mod.main([str(cfg), "--seeds", "1", "--out", str(tmp_path / "o"), "--pdf", str(tmp_path / "r.pdf")]) == 2
    assert mod.main([str(cfg), "--quick", "--seeds", "1", "--out", str(tmp_path / "o"),
                     "--pdf", str(tmp_path / "r.pdf")]) == 0
    from topoland.data import load_dataset
    data = load_dataset("synthetic", seed=0, n_train=120,
                        synthetic={"n_train": 160, "n_test": 80, "num_classes": 3, "separation": 0.8, "noise": 1.0})
    assert seen and all(torch.equal(x, data.x_test[:64]) and torch.equal(y, data.y_test[:64]) for x, y in seen)


def test_bn_comparison_pairs_seeds_and_matches_scipy():
    from scipy import stats
    mod = _script()
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(5):
        for fill in (0.3, 0.7):
            for bn in (False, True):
                acc = 0.5 + 0.1 * seed + (-0.2 if bn else 0.0) + rng.normal(0, 0.02)
                rows.append({"batchnorm": bn, "seed": seed, "fill": fill, "acc_gap": acc, "loss_gap": rng.normal()})
    rows.append({"batchnorm": False, "seed": 0, "fill": 0.5, "acc_gap": 9.0, "loss_gap": 9.0})  # unpaired: left out
    table = pd.DataFrame(rows)
    comp = mod.bn_comparison(table).set_index("metric")
    per_seed = table[table.fill != 0.5].groupby(["batchnorm", "seed"])["acc_gap"].mean()
    d = (per_seed[True] - per_seed[False]).to_numpy()
    row = comp.loc["acc_gap"]
    assert row["n_seeds"] == 5 and row["diff"] == pytest.approx(d.mean()) and row["diff"] < -0.15
    ref = stats.ttest_rel(per_seed[True], per_seed[False])
    assert row["p"] == pytest.approx(ref.pvalue) and row["t"] == pytest.approx(ref.statistic)
    ci = stats.t.interval(0.95, 4, loc=d.mean(), scale=stats.sem(d))
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(ci)
    # every per-seed difference is negative: only the identity and the all-flip reach |mean|
    assert row["p_signflip"] == pytest.approx(2 / 32) and row["p_signflip_min"] == pytest.approx(2 / 32)
    # Holm over the two gaps: the smaller p times 2, the larger not below it
    p = comp["p"].to_numpy()
    lo, hi = np.argmin(p), np.argmax(p)
    assert comp["p_holm"].iloc[lo] == pytest.approx(min(1, 2 * p[lo]))
    assert comp["p_holm"].iloc[hi] == pytest.approx(max(min(1, 2 * p[lo]), p[hi]))
    one = mod.bn_comparison(table[table.seed == 0])
    assert (one["n_seeds"] == 1).all() and one["p"].isna().all() and one["ci_low"].isna().all()
