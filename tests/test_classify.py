"""Classifiers: quantile labels, cross-validation protocol, permutation p-values, the table."""
import matplotlib

matplotlib.use("Agg")
import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import RepeatedStratifiedKFold, cross_val_score

from topoland.analysis.classifiers import (
    CLASSIFIERS,
    classifier_table,
    classify,
    format_classifier_table,
    generalization_label,
    make_pipeline,
    pivot_classifier_table,
)
from topoland.analysis.features import AnalysisError, feature_table
from topoland.errors import NotEnoughSamplesError

FAST = ["lda", "gaussian_nb", "knn", "decision_tree"]


def test_eleven_classifiers_all_scaled():
    assert len(CLASSIFIERS) == 11
    for name in CLASSIFIERS:
        pipe = make_pipeline(name, seed=0)
        assert [s for s, _ in pipe.steps] == ["scale", "clf"]
    assert [s for s, _ in make_pipeline("lda", impute=True).steps] == ["impute", "scale", "clf"]
    with pytest.raises(AnalysisError, match="unknown classifier"):
        make_pipeline("xgboost")


def test_generalization_label_hand_computed():
    np.testing.assert_array_equal(generalization_label([5, 1, 4, 2, 3], 5), [4, 0, 3, 1, 2])
    # n=7, k=3: ranks 0..6 -> floor(3r/7) = 0,0,0,1,1,2,2
    np.testing.assert_array_equal(generalization_label(np.arange(7.0)[::-1], 3), [2, 2, 1, 1, 0, 0, 0])
    # ties are broken by position (stable), so equal values may straddle a boundary
    np.testing.assert_array_equal(generalization_label([1.0, 1.0, 1.0, 1.0], 2), [0, 0, 1, 1])


@pytest.mark.parametrize("n", [5, 10, 11, 23, 50, 101])
def test_generalization_label_balanced_deterministic(n):
    rng = np.random.default_rng(n)
    for v in (rng.normal(size=n), rng.integers(0, 3, size=n).astype(float)):  # continuous and heavy ties
        lab = generalization_label(v, 5)
        sizes = np.bincount(lab, minlength=5)
        assert sizes.max() - sizes.min() <= 1 and sizes.sum() == n
        np.testing.assert_array_equal(lab, generalization_label(v.copy(), 5))
        # monotone: a larger value never gets a smaller class
        order = np.argsort(v, kind="stable")
        assert np.all(np.diff(lab[order]) >= 0)


def test_generalization_label_errors():
    with pytest.raises(NotEnoughSamplesError, match="at least 5 values, got 3"):
        generalization_label([1, 2, 3], 5)
    with pytest.raises(AnalysisError, match="NaN"):
        generalization_label([1, np.nan, 3, 4, 5], 5)


def test_target_kind_auto():
    from topoland.analysis.classifiers import _target_kind

    ft = _synthetic(n=30)
    df = ft.frame
    assert _target_kind(df, "test_acc", "auto") == "quantile"
    assert _target_kind(df, "train.lr", "auto") == "categorical"  # dotted setting
    assert _target_kind(df, "topology.tp_h1", "auto") == "quantile"  # known group prefix
    assert _target_kind(ft, "signal.x", "auto") == "quantile"  # listed in the table's groups
    assert _target_kind(df, "signal.x", "auto") == "categorical"  # unknown prefix, plain frame
    assert _target_kind(ft, "test_acc", "categorical") == "categorical"
    with pytest.raises(AnalysisError, match="must be 'auto'"):
        _target_kind(ft, "test_acc", "ordinal")
    res = classify(df.assign(**{"train.lr": np.repeat([0.1, 0.01], 15)}), "train.lr", ["noise.a"],
                   classifiers=["lda"], n_repeats=1)
    assert res.attrs["target_kind"] == "categorical" and res.attrs["classes"] == ["0.01", "0.1"]


def _synthetic(n=60, seed=0):
    """`signal.x` determines test_acc and augment; `noise.*` are independent of both."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, n)
    cells = pd.DataFrame({
        "cell_id": [f"c{i}" for i in range(n)],
        "augment": x > 0.5,
        "weight_decay": np.repeat([0.0, 1e-4, 5e-4], n // 3),
        "train_acc": np.ones(n),
        "test_acc": 0.7 + 0.2 * x,
    })
    idx = pd.Index(cells["cell_id"], name="cell_id")
    groups = {
        "signal": pd.DataFrame({"x": x + 0.001 * rng.normal(size=n)}, index=idx),
        "noise": pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n)}, index=idx),
    }
    return feature_table(cells, groups)


def test_signal_near_perfect_noise_near_chance_all_eleven():
    ft = _synthetic()
    sig = classify(ft, "augment", "signal", n_splits=3, n_repeats=1)
    noise = classify(ft, "augment", "noise", n_splits=3, n_repeats=1)
    assert list(sig.index) == list(CLASSIFIERS)
    assert sig.attrs["mean"] >= 0.95 and sig["accuracy"].min() >= 0.85
    assert sig.attrs["chance_uniform"] == 0.5 and "independent" in sig.attrs["assumptions"]
    assert abs(noise.attrs["mean"] - noise.attrs["chance_majority"]) < 0.15
    se = sig["accuracy"].std(ddof=1) / np.sqrt(11)
    assert sig.attrs["se_across_classifiers"] == pytest.approx(se)


def test_permutation_p_values_match():
    ft = _synthetic()
    kw = dict(n_splits=3, n_repeats=1, n_permutations=19, classifiers=FAST)
    sig = classify(ft, "test_acc", ["signal.x"], **kw)
    noise = classify(ft, "test_acc", ft.groups["noise"], **kw)
    assert sig.attrs["target_kind"] == "quantile" and sig.attrs["n_classes"] == 5
    assert sig.attrs["chance_majority"] == pytest.approx(0.2)
    assert sig.attrs["mean"] >= 0.85
    assert sig.attrs["p_value"] == pytest.approx(1 / 20)  # smallest attainable
    assert noise.attrs["mean"] < 0.4 and noise.attrs["p_value"] > 0.2
    for res in (sig, noise):
        null = np.asarray(res.attrs["null"])
        assert null.size == 19
        assert res.attrs["p_value"] == pytest.approx((1 + np.sum(null >= res.attrs["mean"] - 1e-12)) / 20)
    # the null is centred near chance
    assert abs(np.mean(sig.attrs["null"]) - 0.2) < 0.1


def test_matches_sklearn_cross_val_score():
    ft = _synthetic()
    res = classify(ft, "weight_decay", ft.columns(), n_splits=4, n_repeats=2, seed=3, classifiers=["lda", "rbf_svm"])
    X = ft.frame[ft.columns()].to_numpy()
    y = np.searchsorted([0.0, 1e-4, 5e-4], ft.frame["weight_decay"].to_numpy())
    cv = RepeatedStratifiedKFold(n_splits=4, n_repeats=2, random_state=3)
    for name in ("lda", "rbf_svm"):
        ref = cross_val_score(make_pipeline(name, 3), X, y, cv=cv, scoring="accuracy")
        assert res.loc[name, "accuracy"] == pytest.approx(ref.mean())
        assert res.loc[name, "n_folds"] == 8
    assert res.attrs["classes"] == ["0.0", "0.0001", "0.0005"] and res.attrs["target_kind"] == "categorical"


def test_nan_rows_dropped_and_counted_and_split_reduction():
    ft = _synthetic(n=30)
    df = ft.frame.copy()
    df.iloc[:3, df.columns.get_loc("noise.a")] = np.nan
    res = classify(df, "weight_decay", ["noise.a", "noise.b"], classifiers=FAST, n_repeats=1)
    assert res.attrs["n_used"] == 27 and res.attrs["n_dropped"] == 3
    # classes of 10, 10, 7 rows: 5 splits stay
    assert res.attrs["n_splits"] == 5 and res.attrs["notes"] == ""
    small = df.iloc[:14]  # weight_decay 0.0 x10, 1e-4 x4
    res = classify(small.iloc[3:], "weight_decay", ["noise.b"], classifiers=FAST, n_repeats=1)
    assert res.attrs["n_splits"] == 4 and "reduced from 5 to 4" in res.attrs["notes"]
    with pytest.raises(NotEnoughSamplesError, match="has 1 member"):
        classify(df.iloc[:21], "weight_decay", ["noise.b"], classifiers=FAST)
    with pytest.raises(NotEnoughSamplesError, match="7 complete rows.*3 dropped.*at least 10"):
        classify(df.iloc[:10], "weight_decay", ["noise.a"], classifiers=FAST)
    with pytest.raises(NotEnoughSamplesError, match="single class"):
        classify(df.iloc[:10], "weight_decay", ["noise.b"], classifiers=FAST)
    with pytest.raises(AnalysisError, match="also among the features"):
        classify(df, "noise.a", ["noise.a"])
    # a test-split value is a target only, never a feature
    with pytest.raises(AnalysisError, match=r"\['test_acc'\] come from the test split"):
        classify(df, "weight_decay", ["noise.a", "test_acc"])


def test_classifier_table_and_heatmap():
    import matplotlib.pyplot as plt

    from topoland.plots.analysis import plot_classifier_table

    ft = _synthetic()
    res = classifier_table(ft, ["test_acc", "augment"], n_splits=3, n_repeats=1,
                           n_permutations=4, classifiers=["lda", "gaussian_nb"])
    assert list(res["group"]) == ["signal", "signal", "noise", "noise", "all", "all"]
    assert list(res["target"]) == ["test_acc", "augment"] * 3
    assert {"acc_lda", "acc_gaussian_nb"} <= set(res.columns)
    sig = res.set_index(["group", "target"])
    assert sig.loc[("signal", "augment"), "mean"] > 0.9 and sig.loc[("all", "augment"), "mean"] > 0.9
    assert sig.loc[("signal", "test_acc"), "p_value"] == pytest.approx(0.2)  # 1 / (1 + 4)
    wide = pivot_classifier_table(res)
    assert list(wide.index) == ["signal", "noise", "all"] and list(wide.columns) == ["test_acc", "augment"]
    text = format_classifier_table(res)
    assert "±" in text.loc["signal", "augment"] and text.index[-1] == "chance (majority)"
    ax = plot_classifier_table(res)
    assert len(ax.texts) == 6 and "±" in ax.texts[0].get_text()
    plt.close("all")
    with pytest.raises(AnalysisError, match="needs groups"):
        classifier_table(ft.frame, ["augment"])


def test_classifier_table_on_error_record():
    ft = _synthetic(n=30)
    df = ft.frame.copy()
    df.iloc[:25, df.columns.get_loc("noise.a")] = np.nan
    groups = {"noise": ["noise.a"], "signal": ["signal.x"]}
    with pytest.raises(NotEnoughSamplesError):
        classifier_table(df, ["augment"], groups, classifiers=FAST, n_permutations=0, n_repeats=1)
    res = classifier_table(df, ["augment"], groups, classifiers=FAST, n_permutations=0, n_repeats=1,
                           on_error="record", include_all=False)
    assert np.isnan(res.loc[0, "mean"]) and res.loc[0, "notes"].startswith("not computed")
    assert res.loc[1, "mean"] > 0.8


# ------------------------------------------------------------------ named uncertainty, adjusted p


def test_cv_standard_error_by_hand():
    from topoland.analysis.classifiers import cv_standard_error
    acc = np.array([[0.8, 0.6, 0.7, 0.9], [0.5, 0.5, 0.5, 0.5]])
    # Nadeau-Bengio: sqrt((1/J + n_test/n_train) * s^2); s^2 of 0.8, 0.6, 0.7, 0.9 = 0.016667
    np.testing.assert_allclose(cv_standard_error(acc, 0.25), [np.sqrt((0.25 + 0.25) * 0.05 / 3), 0.0])
    assert cv_standard_error(np.array([0.7]), 0.25) == 0.0


def test_classify_reports_both_standard_errors():
    from topoland.analysis.classifiers import _cv_accuracy, cv_standard_error
    ft = _synthetic(n=30)
    res = classify(ft, "augment", ["noise.a", "noise.b"], classifiers=FAST, n_splits=3, n_repeats=2)
    acc = _cv_accuracy(ft.frame[["noise.a", "noise.b"]].to_numpy(), ft.frame["augment"].to_numpy().astype(int),
                       FAST, 3, 2, 0, False)
    np.testing.assert_allclose(res["accuracy"], acc.mean(axis=1))
    np.testing.assert_allclose(res["cv_se"], cv_standard_error(acc, 10 / 20))
    assert res.attrs["cv_se"] == pytest.approx(float(cv_standard_error(acc.mean(axis=0), 10 / 20)))
    assert res.attrs["se_across_classifiers"] == pytest.approx(acc.mean(axis=1).std(ddof=1) / 2)
    assert res.attrs["cv_se"] > 0 and "across the classifiers" in res.attrs["assumptions"]
    assert np.isnan(res.attrs["p_min"])  # no permutation test asked
    perm = classify(ft, "augment", "signal", classifiers=["lda"], n_splits=3, n_repeats=1, n_permutations=9)
    assert perm.attrs["p_min"] == pytest.approx(0.1) and perm.attrs["p_value"] == pytest.approx(0.1)


def test_classifier_table_adjusts_its_cells_and_sizes_the_permutations():
    ft = _synthetic(n=30)
    kw = dict(n_splits=3, n_repeats=1, classifiers=["lda", "gaussian_nb"])
    res = classifier_table(ft, ["augment", "test_acc"], n_permutations=9, **kw)
    assert len(res) == 6 and np.allclose(res["p_min"], 0.1)
    np.testing.assert_allclose(res["p_adjusted"], np.minimum(1, _holm_by_hand(res["p_value"].to_numpy())))
    assert (res["finding"] == (res["p_adjusted"] < 0.05)).all() and not res["finding"].any()  # 6 x 0.1 >= 0.05
    assert {"se_across_classifiers", "cv_se", "cv_se_lda", "cv_se_gaussian_nb"} <= set(res.columns)
    bh = classifier_table(ft, ["augment", "test_acc"], n_permutations=9, p_adjust="bh", **kw)
    from scipy.stats import false_discovery_control
    np.testing.assert_allclose(bh["p_adjusted"], false_discovery_control(bh["p_value"], method="bh"))
    # "auto": the fewest permutations with p_min x cells < 0.05 (1 cell: 20), so the signal is a finding
    auto = classifier_table(ft, ["augment"], {"signal": ["signal.x"]}, **kw)
    assert auto.loc[0, "n_permutations"] == 20 and auto.loc[0, "p_min"] == pytest.approx(1 / 21)
    assert auto.loc[0, "finding"] and auto.loc[0, "p_adjusted"] == pytest.approx(1 / 21)
    with pytest.raises(AnalysisError, match="n_permutations must be"):
        classifier_table(ft, ["augment"], n_permutations="many", **kw)
    text = format_classifier_table(res)
    assert "clf" in text.loc["signal", "augment"] and "cv" in text.loc["signal", "augment"]
    assert "p_min=0.1" in text.loc["signal", "augment"]


def _holm_by_hand(p):
    order = np.argsort(p, kind="stable")
    out, running = np.empty(len(p)), 0.0
    for rank, i in enumerate(order):
        running = max(running, (len(p) - rank) * p[i])
        out[i] = running
    return out


def test_classifier_table_cells_equal_classify_whatever_the_workers():
    # the table sends every cell's fits to the workers at once: each cell must still be exactly
    # the classify call it stands for, with one worker or two
    ft = _synthetic(n=30)
    kw = dict(n_splits=3, n_repeats=1, classifiers=["lda", "gaussian_nb", "decision_tree"], seed=3)
    one = classifier_table(ft, ["augment", "test_acc"], n_permutations=4, n_jobs=1, **kw)
    two = classifier_table(ft, ["augment", "test_acc"], n_permutations=4, n_jobs=2, **kw)
    pd.testing.assert_frame_equal(one, two)
    for _, row in one.iterrows():
        cols = ft.groups[row["group"]] if row["group"] != "all" else [c for g in ft.groups.values() for c in g]
        ref = classify(ft, row["target"], cols, n_permutations=4, **kw)
        assert row["mean"] == ref.attrs["mean"] and row["p_value"] == ref.attrs["p_value"]
        assert row["cv_se"] == ref.attrs["cv_se"]
        assert [row[f"acc_{c}"] for c in kw["classifiers"]] == ref["accuracy"].tolist()
