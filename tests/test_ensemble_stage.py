"""The optional per-cell "ensemble" stage (fast geometric ensembles) and its report page."""

import pandas as pd
import pytest
import torch

from topoland.runs.config import ConfigError, expand_grid, validate
from topoland.runs.stages import DEFAULT_STAGES, STAGES

CONFIG = """
[run]
name = "ens"
seed = 0
threads = 1
stages = ["train", "ensemble", "report"]

[data]
name = "synthetic"
synthetic = {{ n_train = 240, n_test = 120, num_classes = 3, separation = 0.8, noise = 1.0 }}

[model]
name = "mlp"
widths = [12]
{bn}

[train]
lr = 0.1
epochs = 3
batch_size = 32

[grid]
"train.weight_decay" = [0.0, 0.001]

[ensemble]
cycles = 3
cycle_epochs = 1
lr1 = 0.05
lr2 = 0.001
batch_size = 32
"""


@pytest.fixture(scope="module")
def ens_run(tmp_path_factory):
    from topoland.pipeline.driver import run
    tmp = tmp_path_factory.mktemp("ens")
    cfg = tmp / "ens.toml"
    cfg.write_text(CONFIG.format(bn="batchnorm = true"))
    rep = run(cfg, out=tmp / "run", progress=False, reports_dir=tmp / "reports")
    assert not rep.failures, rep.failures
    return rep


def _cells(rep):
    from topoland.runs.store import RunStore
    store = RunStore.open(rep.run_dir)
    return store, list(store.cells().cell_id)


def test_ensemble_csv_and_summary(ens_run):
    store, cells = _cells(ens_run)
    assert len(cells) == 2
    for cid in cells:
        d = store.stage_dir(cid, "ensemble")
        curve = pd.read_csv(d / "ensemble.csv")
        assert list(curve.columns) == ["members", "ensemble_acc", "ensemble_nll", "member_acc", "mean_member_acc"]
        assert curve["members"].tolist() == [1, 2, 3]
        # one member: the ensemble is that member
        assert curve["ensemble_acc"].iloc[0] == pytest.approx(curve["member_acc"].iloc[0])
        assert curve["mean_member_acc"].iloc[-1] == pytest.approx(curve["member_acc"].mean())
        assert ((curve[["ensemble_acc", "member_acc"]] >= 0) & (curve[["ensemble_acc", "member_acc"]] <= 1)).all().all()
        s = store.summary(cid, "ensemble")
        base = store.summary(cid, "train")["test_acc"]
        assert s["n_members"] == 3
        assert s["ensemble_acc"] == pytest.approx(curve["ensemble_acc"].iloc[-1])
        assert s["minimum_test_acc"] == pytest.approx(base)
        assert s["gain"] == pytest.approx(s["ensemble_acc"] - base)
        assert s["options"]["cycles"] == 3 and s["options"]["schedule"] == "triangular"
        hist = pd.read_csv(d / "history.csv")
        assert hist["snapshot"].sum() == 3 and hist["cycle"].nunique() == 3


def test_stored_snapshots_reproduce_the_ensemble_accuracy(ens_run):
    """Plain reference: load every stored member (parameters and its BN statistics) into the
    model with load_state_dict, average the softmax outputs on the test split, take argmax."""
    from topoland.nets.params import param_names, unflatten
    from topoland.pipeline.context import CellContext
    from topoland.io import load_tensors
    store, cells = _cells(ens_run)
    cid = cells[0]
    ctx = CellContext(store, cid, store.cell_config(cid))
    model = ctx.model()
    t, _ = load_tensors(store.stage_dir(cid, "ensemble") / "snapshots.safetensors")
    snaps = t["snapshots"]
    bufs = {k[len("buffer."):]: v for k, v in t.items() if k.startswith("buffer.")}
    assert snaps.shape == (3, sum(p.numel() for p in model.parameters()))
    assert bufs, "a BN model stores the recomputed BN statistics of every member"
    names = param_names(model)
    x, y = ctx.data.x_test, ctx.data.y_test
    probs = []
    with torch.no_grad():
        for m in range(len(snaps)):
            sd = model.state_dict()
            sd.update(unflatten(snaps[m], model, names))
            sd.update({k: v[m] for k, v in bufs.items()})
            model.load_state_dict(sd)
            probs.append(torch.softmax(model.eval()(x), -1))
    curve = pd.read_csv(store.stage_dir(cid, "ensemble") / "ensemble.csv")
    for k in range(1, len(probs) + 1):
        mean = torch.stack(probs[:k]).mean(0)
        n_right = int((mean.argmax(-1) == y).sum())
        nll = float(-torch.log(mean[torch.arange(len(y)), y]).mean())
        assert round(curve["ensemble_acc"].iloc[k - 1] * len(y)) == n_right
        assert curve["ensemble_nll"].iloc[k - 1] == pytest.approx(nll, rel=1e-4)


def test_report_has_the_ensemble_page(ens_run):
    from pypdf import PdfReader
    pdf = ens_run.report_path
    text = "\n".join(p.extract_text() for p in PdfReader(pdf).pages)
    assert "Fast geometric ensembles" in text
    assert "M1" in text and "M2" in text
    tab = pd.read_csv(pdf.with_name(f"{ens_run.run_dir.name}_ensembles.csv"))
    assert set(tab["minimum"]) == {"M1", "M2"} and len(tab) == 6
    # the stage is not a feature group (its numbers are test metrics)
    from topoland.runs.tables import FEATURE_STAGES
    assert "ensemble" not in FEATURE_STAGES.values()


def test_ensemble_is_optional_and_keeps_cell_ids():
    assert "ensemble" in STAGES and STAGES.index("ensemble") == STAGES.index("measures") + 1
    assert "ensemble" not in DEFAULT_STAGES
    raw = {"run": {"name": "x"}, "data": {"name": "synthetic"}, "grid": {"train.lr": [0.1, 0.2]}}
    cfg = validate(raw)
    assert "ensemble" not in cfg["run"]["stages"]
    assert cfg["ensemble"]["cycles"] == 4 and cfg["ensemble"]["lr2"] == 5e-4
    ids = [c.cell_id for c in expand_grid(cfg)]
    # listing the section at its defaults leaves the cell ids as they were before the stage existed
    same = [c.cell_id for c in expand_grid(validate(raw | {"ensemble": {"cycles": 4}}))]
    assert same == ids
    other = [c.cell_id for c in expand_grid(validate(raw | {"ensemble": {"cycles": 5}}))]
    assert set(other).isdisjoint(ids)


def test_ensemble_config_errors_name_the_key():
    base = {"run": {"name": "x"}, "data": {"name": "synthetic"}}
    with pytest.raises(ConfigError, match="ensemble.cycle"):
        validate(base | {"ensemble": {"cycle": 3}})
    with pytest.raises(ConfigError, match="ensemble.schedule"):
        validate(base | {"ensemble": {"schedule": "step"}})
    with pytest.raises(ConfigError, match="ensemble.lr1"):
        validate(base | {"ensemble": {"lr1": 0}})


def test_old_cell_config_without_the_section_gets_defaults(tmp_path):
    """A cell stored before the ensemble section existed still runs the stage with defaults."""
    from topoland.pipeline.context import CellContext
    ctx = CellContext(store=None, cell_id="c", config={"run": {"seed": 0}})
    opts = ctx.options("ensemble")
    assert opts == validate({})["ensemble"]
