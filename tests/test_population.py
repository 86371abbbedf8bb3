"""score_population: measures and supervised baselines scored together, with the held-out split."""
import itertools

import numpy as np
import pandas as pd
import pytest

from topoland.analysis import AnalysisError, score_population


def _population(seeds=(0, 1, 2, 3)):
    rng = np.random.default_rng(0)
    rows = []
    for wd, bs, seed in itertools.product([0.0, 1e-3, 1e-2], [32, 128], seeds):
        gap = 0.1 + 5 * wd + 0.0005 * bs + 0.01 * rng.normal()
        rows.append({"train.weight_decay": wd, "train.batch_size": bs, "run.seed": seed, "gap": gap,
                     "m.tracks": gap + 0.001 * rng.normal(), "m.backwards": -gap, "m.noise": rng.normal(),
                     "model": [32] if seed % 2 == 0 else [64, 64]})
    frame = pd.DataFrame(rows, index=[f"c{i}" for i in range(len(rows))])
    weights = pd.DataFrame({"w1": frame["gap"] * 3 + 0.002 * rng.normal(size=len(frame)),
                            "w2": rng.normal(size=len(frame))}, index=frame.index)
    return frame, weights


def test_scores_baselines_and_held_out():
    frame, weights = _population()
    table, pred, notes = score_population(frame, ["m.tracks", "m.backwards", "m.noise"], gap="gap",
                                          hyperparameters=["train.weight_decay", "train.batch_size"],
                                          seed_column="run.seed", baselines={"weights": weights}, n_boot=30,
                                          n_permutations=99)
    t = table.set_index("measure")
    assert t.loc["m.tracks", "psi"] > 0.9 and t.loc["m.backwards", "psi"] < -0.9
    assert abs(t.loc["m.noise", "psi"]) < 0.5
    assert t.loc["supervised.weights", "kind"] == "supervised" and t.loc["m.tracks", "kind"] == "measure"
    assert t.loc["supervised.weights", "psi"] > 0.8
    # the orientation is chosen on the discovery seeds (0, 1) and scored on the others (2, 3)
    assert t.loc["m.backwards", "orientation"] == -1.0 and t.loc["m.backwards", "held_out_psi"] > 0.9
    assert t.loc["m.tracks", "held_out_n"] == 12
    assert t.loc["supervised.weights", "held_out_psi"] > 0.8
    assert list(pred.columns) == ["supervised.weights"] and len(pred) == len(frame)
    assert any("discovery seeds 0, 1" in n for n in notes)


def test_one_valued_axis_is_noted_and_list_settings_group():
    frame, _ = _population(seeds=(0, 1))
    frame["train.lr"] = 0.1
    table, _, notes = score_population(frame, ["m.tracks"], gap="gap", n_boot=10, n_permutations=9,
                                       hyperparameters=["train.weight_decay", "train.lr", "model"])
    assert any("train.lr takes one value" in n for n in notes)
    assert any("no held-out split" in n for n in notes)
    assert "tau_model" in table.columns and "tau_train.lr" not in table.columns


def test_bad_population():
    frame, _ = _population()
    with pytest.raises(AnalysisError, match="no gap column 'acc_gap'"):
        score_population(frame, ["m.tracks"], gap="acc_gap", hyperparameters=["train.batch_size"])
    with pytest.raises(AnalysisError, match="'train.nosuch' is not in the population"):
        score_population(frame, ["m.tracks"], gap="gap", hyperparameters=["train.nosuch"])
    one = frame[frame["train.batch_size"] == 32]
    with pytest.raises(AnalysisError, match="no hyperparameter takes two or more values"):
        score_population(one, ["m.tracks"], gap="gap", hyperparameters=["train.batch_size"])


def test_an_axis_determined_by_another_is_dropped_with_a_note():
    frame, _ = _population()
    frame["model.name"] = np.where(frame["model"].map(len) == 1, "small", "large")   # the same partition
    frame["decayed"] = frame["train.weight_decay"] > 0                               # coarser: a function of it
    table, _, notes = score_population(frame, ["m.tracks"], gap="gap", n_boot=10, n_permutations=9,
                                       hyperparameters=["decayed", "model", "model.name", "train.weight_decay"])
    # a coarser axis goes wherever it is listed; of two equal partitions the first listed stays
    assert "decayed is determined by train.weight_decay over the scored models: not a separate axis" in notes
    assert "model.name is determined by model over the scored models: not a separate axis" in notes
    assert "tau_model.name" not in table and "tau_decayed" not in table
    assert "tau_model" in table and "tau_train.weight_decay" in table


def test_held_out_p_values_are_adjusted_over_the_measures():
    frame, weights = _population()
    table, _, _ = score_population(frame, ["m.tracks", "m.noise"], gap="gap", n_boot=10, n_permutations=199,
                                   hyperparameters=["train.weight_decay", "train.batch_size"],
                                   seed_column="run.seed", baselines={"weights": weights})
    t = table.set_index("measure")
    assert t.loc["m.tracks", "held_out_p"] == pytest.approx(1 / 200)       # no relabelling does as well
    assert t.loc["m.noise", "held_out_p"] > 0.05
    # Holm over the three held-out rows: the smallest p is multiplied by 3
    assert t.loc["m.tracks", "held_out_p_adjusted"] == pytest.approx(3 / 200)
    assert (t["held_out_p_adjusted"] >= t["held_out_p"]).all()
