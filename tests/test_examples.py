"""The runnable examples under experiments/examples/ run at tiny size and print what they measure."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "experiments" / "examples"


def _load(name: str):
    path = EXAMPLES / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"topoland_example_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_resnet18_tensors_runs_tiny(capsys):
    mod = _load("resnet18_tensors")
    out = mod.main(["--n-train", "16", "--n-eval", "8", "--image-size", "16", "--directions", "1",
                    "--batch-size", "8", "--grid", "3", "--lanczos-iters", "2",
                    "--hessian-samples", "8"])
    printed = capsys.readouterr().out
    assert "sample table shape" in printed and "train_loss range" in printed
    assert "top Hessian eigenvalue" in printed
    # 1 direction x 1 step, records at the jump and after the one epoch
    assert out["table_shape"][0] == 2
    assert out["plane_shape"] == (3, 3)
    assert math.isfinite(out["plane_loss_min"]) and out["plane_loss_min"] <= out["plane_loss_max"]
    assert math.isfinite(out["top_eigenvalue"])
    assert out["n_params"] > 10_000_000


def test_custom_loss_runs_tiny(capsys):
    mod = _load("custom_loss")
    out = mod.main(["--n-train", "64", "--epochs", "2", "--directions", "1", "--sample-epochs", "1"])
    printed = capsys.readouterr().out
    assert "train_minimum with loss 'smoothed_ce'" in printed
    assert "jump_and_retrain with the same loss: 4 records" in printed
    assert out["n_records"] == 4
    assert math.isfinite(out["metrics"]["train_loss"]) and 0.0 <= out["metrics"]["train_acc"] <= 1.0
    # the wrong-shape loss is refused with the message naming the loss and the expected shape
    assert out["error"] is not None and "mean_ce" in out["error"] and "one value per sample" in out["error"]
    assert "wrong-shape loss refused" in printed


def test_smoothed_ce_matches_torch():
    import torch
    import torch.nn.functional as F

    mod = _load("custom_loss")
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(5, 4, generator=g), torch.randint(0, 4, (5,), generator=g)
    ref = F.cross_entropy(logits, target, reduction="none", label_smoothing=0.1)
    torch.testing.assert_close(mod.make_smoothed_ce(0.1)(logits, target), ref)
