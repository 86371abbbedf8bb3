"""A tiny run: retraining takes each minimum's own settings, training stops at its target, and a
minimum that misses the target is flagged in the train summary, the minima table and `topoland list`."""
import json

import pytest

CONFIG = """
[run]
name = "comparable"
seed = 0
threads = 1
stages = ["train", "sample"]

[data]
name = "synthetic"
synthetic = { n_train = 200, n_test = 60, num_classes = 3, separation = 2.0, noise = 1.0 }

[model]
name = "mlp"
widths = [8]

[train]
lr = 0.05
momentum = 0.8
epochs = 40
batch_size = 16
milestones = []
target_acc = 0.9

[grid]
"train.weight_decay" = [0.0, 0.001]
"train.augment" = [false, true]

[[cells]]   # cannot reach 90% train accuracy in one epoch at this rate
"train.epochs" = 1
"train.lr" = 1e-5

[sample]
directions = 1
steps = [0.5]
epochs = 1
lr = 0.01
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from topoland.pipeline.driver import run
    work = tmp_path_factory.mktemp("comparable")
    cfg = work / "c.toml"
    cfg.write_text(CONFIG)
    rep = run(cfg, out=work / "run", progress=False, reports_dir=work / "reports")
    assert not rep.failures, rep.failures
    return work, rep.run_dir


def test_retraining_inherits_each_minimums_settings(tiny):
    from topoland.runs.store import RunStore
    _, run_dir = tiny
    store = RunStore.open(run_dir)
    for cid in store.cells().cell_id:
        train = store.cell_config(cid)["train"]
        stored = json.loads((store.stage_dir(cid, "sample") / "config.json").read_text())
        summ = store.summary(cid, "sample")
        for key in ("weight_decay", "batch_size", "momentum", "augment"):
            assert stored[key] == train[key], (cid, key)
            assert summ["options"][key] == train[key], (cid, key)
        assert sorted(summ["inherited"]) == ["augment", "batch_size", "momentum", "weight_decay"]
        assert stored["lr"] == 0.01 and stored["epochs"] == 1           # set explicitly: not inherited
    assert {json.loads((store.stage_dir(c, "sample") / "config.json").read_text())["weight_decay"]
            for c in store.cells().cell_id} == {0.0, 0.001}


def test_explicit_retraining_value_overrides(tiny, tmp_path):
    from topoland.pipeline.driver import run_stage_in_dir
    from topoland.runs.store import RunStore
    _, run_dir = tiny
    copy = tmp_path / "run"
    import shutil
    shutil.copytree(run_dir, copy)
    rep = run_stage_in_dir(copy, "sample", overrides={"weight_decay": 0.5, "augment": False}, force=True,
                           progress=False)
    assert not rep.failures
    store = RunStore.open(copy)
    for cid in store.cells().cell_id:
        stored = json.loads((store.stage_dir(cid, "sample") / "config.json").read_text())
        assert (stored["weight_decay"], stored["augment"]) == (0.5, False)
        assert stored["batch_size"] == store.cell_config(cid)["train"]["batch_size"]
        assert sorted(store.summary(cid, "sample")["inherited"]) == ["batch_size", "momentum"]


def test_training_stops_at_the_target_and_a_miss_is_flagged(tiny, capsys, tmp_path):
    import pandas as pd

    from topoland.runs.tables import analysis_table, minima_table, missed_target
    from topoland.runs.store import RunStore
    _, run_dir = tiny
    store = RunStore.open(run_dir)
    table = minima_table(run_dir).set_index("cell_id")
    missed = table.index[table["train.lr"] == 1e-5].tolist()
    assert missed_target(store) == missed and len(missed) == 1
    for cid, row in table.iterrows():
        summ = store.summary(cid, "train")
        history = pd.read_csv(store.stage_dir(cid, "train") / "history.csv")
        assert summ["target_acc"] == 0.9 and summ["target_loss"] == 0.0
        assert row["stop_epoch"] == summ["stop_epoch"] == len(history)
        if cid in missed:
            assert not row["reached_target"]
            assert summ["stop_epoch"] == 1 and history["train_acc"].iloc[-1] < 0.9
        else:
            assert bool(row["reached_target"]) and summ["train_acc"] >= 0.9
            assert summ["stop_epoch"] < 40                       # stopped at the target, not the budget
            assert history["train_acc"].iloc[-1] >= 0.9 and (history["train_acc"].iloc[:-1] < 0.9).all()
    ft = analysis_table(store)
    assert ft.frame.loc[missed, "reached_target"].eq(False).all()
    assert ft.frame["reached_target"].sum() == len(table) - 1
    from topoland.pipeline.run_stages import stage_analysis
    from topoland.runs.tables import stored_config
    cfg = stored_config(store)
    cfg["analysis"]["n_permutations"] = 0
    (tmp_path / "analysis").mkdir()
    notes = stage_analysis(store, cfg, tmp_path / "analysis")["notes"]
    assert [n for n in notes if "missed the training target" in n and n.endswith(missed[0])]
    from topoland.cli.main import main
    assert main(["list", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "reached_target" in out and "stop_epoch" in out
    assert f"training target missed by 1 of {len(table)} minima: {missed[0]}" in out
