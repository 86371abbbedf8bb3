"""experiments/loss_patterns.py end to end with tiny settings: CSV, figures and the PDF report."""
import importlib.util

import pandas as pd

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
    # --quick: one seed, fills 0.3 and 0.7, both BN settings
    assert sorted(table["fill"].unique()) == [0.3, 0.7]
    assert table["seed"].unique().tolist() == [0]
    assert sorted(table["batchnorm"].unique()) == [False, True]
    assert (table["loss_gap"] == table["high_loss"] - table["low_loss"]).all()
    assert (tmp_path / "out" / "loss_patterns.png").is_file()
    pages = [p.extract_text() for p in PdfReader(pdf).pages]
    text = "\n".join(pages)
    for heading in ("Loss patterns: BN vs no BN", "Pattern gap vs fill probability", "Mean gaps per setting",
                    "Example patterns", "torch", "--quick"):
        assert heading in text, heading
    assert "batchnorm=True" in text and "batchnorm=False" in text
    assert not list(pdf.parent.glob(".*tmp*")), "the PDF is written through a temporary name"
