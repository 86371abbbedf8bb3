"""Statistics: group comparisons, corrections, correlations, diagram permutation test, figures."""
import itertools
import math

import matplotlib

matplotlib.use("Agg")
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from topoland.analysis.features import AnalysisError, feature_table
from topoland.analysis.correlation import _kendall_rows, _spearman_rows, correlations
from topoland.analysis.diagrams import _between_means, diagram_distance, diagram_permutation_test
from topoland.analysis.group_tests import compare
from topoland.analysis.multiple import adjust_p, benjamini_hochberg, holm, permutation_p_min, permutations_for_family
from topoland.analysis.stats import (
    bootstrap_mean_diff_ci,
    cliffs_delta,
    permutation_test_means,
    stratified_permutation_test,
)
from topoland.analysis.comparisons import (
    Design,
    comparison_table,
    extra_comparison,
    extra_kinds,
    flatness_ordering,
    grid_comparison,
    value_sizes,
)
from topoland.errors import NotEnoughSamplesError


def _table(shift=2.0, n=12, seed=0, k=2):
    rng = np.random.default_rng(seed)
    wd = np.repeat([0.0, 1e-4, 5e-4][:k], n)
    y = rng.normal(size=n * k) + shift * np.repeat(np.arange(k), n)
    return pd.DataFrame({"cell_id": range(n * k), "weight_decay": wd, "topology.tp_h1": y})


# ------------------------------------------------------------------ small pieces


def test_cliffs_delta_vs_loop_and_scipy_u():
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 5, 13).astype(float), rng.integers(0, 5, 9).astype(float)  # with ties
    loop = sum(int(x > y) - int(x < y) for x in a for y in b) / (a.size * b.size)
    assert cliffs_delta(a, b) == pytest.approx(loop)
    u = sps.mannwhitneyu(a, b).statistic  # U of a, ties counted 1/2
    assert cliffs_delta(a, b) == pytest.approx(2 * u / (a.size * b.size) - 1)
    assert cliffs_delta([3, 4], [1, 2]) == 1.0 and cliffs_delta([1, 2], [3, 4]) == -1.0


def test_holm_bh_known_values():
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max
    np.testing.assert_allclose(holm(p), [0.03, 0.06, 0.06, 0.02])
    # BH: sorted times 4/i = 0.02, 0.02, 0.04, 0.04 -> running min from the top
    np.testing.assert_allclose(benjamini_hochberg(p), [0.02, 0.04, 0.04, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])
    rng = np.random.default_rng(0)
    q = rng.uniform(0, 0.2, 40)
    np.testing.assert_allclose(benjamini_hochberg(q), sps.false_discovery_control(q, method="bh"))
    try:
        from statsmodels.stats.multitest import multipletests
    except ImportError:
        pass
    else:
        np.testing.assert_allclose(holm(q), multipletests(q, method="holm")[1])
    with pytest.raises(AnalysisError):
        holm([0.1, np.nan])


def test_permutation_exact_matches_scipy():
    a = np.array([1.2, 3.4, 2.2, 5.0, 4.1])
    b = np.array([0.3, 1.1, 2.0, 0.7])
    diff, p, exact = permutation_test_means(a, b, n_permutations=1000)  # C(9, 5) = 126 <= 1000
    assert exact and diff == pytest.approx(a.mean() - b.mean())
    ref = sps.permutation_test((a, b), lambda x, y, axis: np.abs(x.mean(axis) - y.mean(axis)),
                               permutation_type="independent", alternative="greater",
                               n_resamples=np.inf, vectorized=True)
    assert p == pytest.approx(ref.pvalue)
    # a plain loop over all relabellings
    x = np.concatenate([a, b])
    null = [abs(x[list(c)].mean() - np.delete(x, list(c)).mean()) for c in itertools.combinations(range(9), 5)]
    assert p == pytest.approx(np.mean(np.asarray(null) >= abs(diff) - 1e-12))
    # Monte Carlo agrees with the exact value
    _, p_mc, exact_mc = permutation_test_means(a, b, n_permutations=100, seed=1)
    assert not exact_mc and abs(p_mc - p) < 0.08


def test_bootstrap_ci_vs_loop_and_scipy():
    rng = np.random.default_rng(2)
    a, b = rng.normal(1.0, 1.0, 30), rng.normal(0.0, 1.0, 25)
    lo, hi = bootstrap_mean_diff_ci(a, b, n_boot=500, seed=7)
    g = np.random.default_rng(7)
    ia = g.integers(0, a.size, size=(500, a.size))
    ib = g.integers(0, b.size, size=(500, b.size))
    diffs = [a[ia[i]].mean() - b[ib[i]].mean() for i in range(500)]
    assert (lo, hi) == pytest.approx(tuple(np.quantile(diffs, [0.025, 0.975])))
    lo, hi = bootstrap_mean_diff_ci(a, b, n_boot=4000, seed=0)
    ref = sps.bootstrap((a, b), lambda x, y, axis: x.mean(axis) - y.mean(axis), method="percentile",
                        n_resamples=4000, rng=np.random.default_rng(0)).confidence_interval
    assert lo == pytest.approx(ref.low, abs=0.06) and hi == pytest.approx(ref.high, abs=0.06)


# ------------------------------------------------------------------ compare


def test_compare_two_groups_shifted_vs_identical():
    shifted = compare(_table(shift=2.0), "weight_decay", "tp_h1", n_permutations=999, n_boot=500)
    assert shifted.metric == "topology.tp_h1" and shifted.groups == [0.0, 1e-4]
    assert shifted.p_value < 1e-3 and shifted.perm_p_value <= 0.002
    assert shifted.cliffs_delta < -0.8 and shifted.ci_high < 0 and shifted.ci_low < shifted.mean_diff < shifted.ci_high
    assert "exchangeable" in shifted.assumptions
    same = compare(_table(shift=0.0, seed=3), "weight_decay", "tp_h1", n_permutations=999, n_boot=500)
    assert same.p_value > 0.2 and same.perm_p_value > 0.2 and same.ci_low < 0 < same.ci_high
    # literally identical groups
    df = pd.DataFrame({"g": ["a"] * 5 + ["b"] * 5, "m": [1.0, 2, 3, 4, 5] * 2})
    ident = compare(df, "g", "m", n_permutations=999, n_boot=200)
    assert ident.p_value == pytest.approx(1.0) and ident.perm_p_value == pytest.approx(1.0)
    assert ident.cliffs_delta == 0.0 and ident.mean_diff == 0.0


def test_compare_matches_scipy():
    df = _table(shift=0.7, n=9, seed=5, k=2)
    res = compare(df, "weight_decay", "topology.tp_h1", n_permutations=200, n_boot=200)
    a = df.loc[df.weight_decay == 0.0, "topology.tp_h1"].to_numpy()
    b = df.loc[df.weight_decay == 1e-4, "topology.tp_h1"].to_numpy()
    ref = sps.mannwhitneyu(a, b, alternative="two-sided")
    assert res.statistic == pytest.approx(ref.statistic) and res.p_value == pytest.approx(ref.pvalue)
    frame = res.to_frame()
    assert frame.loc[0, "n_a"] == 9 and frame.loc[0, "p_value"] == pytest.approx(ref.pvalue)

    df3 = _table(shift=1.0, n=8, seed=6, k=3)
    res3 = compare(df3, "weight_decay", "tp_h1")
    groups = [df3.loc[df3.weight_decay == w, "topology.tp_h1"].to_numpy() for w in (0.0, 1e-4, 5e-4)]
    kw = sps.kruskal(*groups)
    assert res3.test == "kruskal-wallis" and res3.p_value == pytest.approx(kw.pvalue)
    assert res3.statistic == pytest.approx(kw.statistic)
    raw = [sps.mannwhitneyu(groups[i], groups[j]).pvalue for i, j in [(0, 1), (0, 2), (1, 2)]]
    np.testing.assert_allclose(res3.pairwise["p_value"], raw)
    np.testing.assert_allclose(res3.pairwise["p_holm"], holm(raw))
    assert res3.pairwise.loc[1, "p_holm"] < 0.05  # 0 vs 5e-4: shifted by 2
    frame3 = res3.to_frame()
    assert len(frame3) == 4 and frame3.loc[0, "test"] == "kruskal-wallis" and "Holm" in res3.assumptions


def test_compare_too_few_and_degenerate():
    df = _table(n=12)
    df.loc[df.index[:10], "topology.tp_h1"] = np.nan
    with pytest.raises(NotEnoughSamplesError, match=r"fewer than 3 samples.*0\.0: 2, 0\.0001: 12; 10 rows dropped"):
        compare(df, "weight_decay", "tp_h1")
    with pytest.raises(NotEnoughSamplesError, match="1 group"):
        compare(_table(k=1), "weight_decay", "tp_h1")
    const = _table().assign(**{"topology.tp_h1": 1.0})
    with pytest.raises(AnalysisError, match="constant"):
        compare(const, "weight_decay", "tp_h1")
    with pytest.raises(AnalysisError, match="grouping column"):
        compare(const, "batch_size", "tp_h1")


# ------------------------------------------------------------------ correlations


def test_batched_rank_correlations_vs_scipy_loop():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, size=(30, 15)).astype(float)  # many ties
    y = rng.normal(size=(30, 15)) + x
    sp = _spearman_rows(x, y)
    kd = _kendall_rows(x, y, chunk_elems=1000)  # forces several chunks
    for i in range(30):
        assert sp[i] == pytest.approx(sps.spearmanr(x[i], y[i]).statistic)
        assert kd[i] == pytest.approx(sps.kendalltau(x[i], y[i]).statistic)
    const = _spearman_rows(np.ones((1, 5)), y[:1, :5])
    assert np.isnan(const).all() and np.isnan(_kendall_rows(np.ones((1, 5)), y[:1, :5])).all()


def mono_finding(res):
    return res.set_index(["feature", "target"]).loc[("topology.mono", "gap"), "finding"]


def test_correlations_table():
    rng = np.random.default_rng(4)
    n = 40
    test_loss = rng.uniform(0.5, 1.0, n)
    cells = pd.DataFrame({"cell_id": range(n), "train_loss": 0.1 * np.ones(n), "test_loss": test_loss,
                          "train_acc": np.ones(n), "test_acc": 1 - test_loss / 2})
    groups = {"topology": pd.DataFrame({"mono": np.exp(test_loss), "noise": rng.normal(size=n),
                                        "flat": np.ones(n)}, index=pd.Index(range(n), name="cell_id"))}
    ft = feature_table(cells, groups)
    res = correlations(ft, n_boot=200, seed=0)
    assert len(res) == 6 and set(res["target"]) == {"gap", "test_acc"}
    r = res.set_index(["feature", "target"])
    mono = r.loc[("topology.mono", "gap")]
    assert mono["spearman_rho"] == pytest.approx(1.0) and mono["kendall_tau"] == pytest.approx(1.0)
    assert r.loc[("topology.mono", "test_acc"), "spearman_rho"] == pytest.approx(-1.0)
    assert mono["spearman_ci_low"] == pytest.approx(1.0) and mono["n_boot_valid"] == 200
    noise = r.loc[("topology.noise", "gap")]
    ref = sps.spearmanr(ft.frame["topology.noise"], ft.frame["gap"])
    assert noise["spearman_rho"] == pytest.approx(ref.statistic) and noise["spearman_p"] == pytest.approx(ref.pvalue)
    kref = sps.kendalltau(ft.frame["topology.noise"], ft.frame["gap"])
    assert noise["kendall_p"] == pytest.approx(kref.pvalue)
    assert noise["spearman_ci_low"] < noise["spearman_rho"] < noise["spearman_ci_high"]
    flat = r.loc[("topology.flat", "gap")]
    assert np.isnan(flat["spearman_rho"]) and "constant" in flat["note"] and np.isnan(flat["spearman_p_adj"])
    # one family over every feature and target: Holm by default, BH on request
    sel = res[res.spearman_p.notna()]
    assert len(sel) == 4 and (res["p_adjust"] == "holm").all()
    np.testing.assert_allclose(sel["spearman_p_adj"], holm(sel["spearman_p"]))
    np.testing.assert_allclose(sel["kendall_p_adj"], holm(sel["kendall_p"]))
    assert (res["finding"] == (res["spearman_p_adj"] < 0.05)).all() and bool(mono_finding(res))
    bh = correlations(ft, n_boot=20, seed=0, p_adjust="bh")
    sel = bh[bh.spearman_p.notna()]
    np.testing.assert_allclose(sel["spearman_p_adj"], sps.false_discovery_control(sel["spearman_p"], method="bh"))
    assert "Benjamini-Hochberg" in res.attrs["assumptions"] and "Holm" in res.attrs["assumptions"]
    with pytest.raises(AnalysisError, match="'sidak' is unknown"):
        correlations(ft, n_boot=10, p_adjust="sidak")
    with pytest.raises(AnalysisError, match=r"\['test_loss'\] come from the test split"):
        correlations(ft.frame, ["topology.mono", "test_loss"], targets="gap", n_boot=10)
    with pytest.raises(NotEnoughSamplesError, match="3 complete rows; needs at least 5"):
        correlations(ft.frame.iloc[:3], ["topology.mono"], n_boot=10)


# ------------------------------------------------------------------ diagrams


def test_diagram_distance_hand_computed():
    d1 = {0: np.array([[0.0, 1.0], [0.0, np.inf]]), 1: np.array([[1.0, 3.0]])}
    d2 = {0: np.array([[0.0, 2.0]])}
    # H0: match (0,1)-(0,2) costs max(0, 1) = 1 (diagonal: 0.5 + 1 = 1.5); infinite point ignored
    # H1: (1,3) to the diagonal costs (3 - 1) / 2 = 1 in the L-infinity ground metric
    assert diagram_distance(d1, d2) == pytest.approx(2.0)
    assert diagram_distance(d1, d2, dims=[0]) == pytest.approx(1.0)
    assert diagram_distance(d1, d1) == 0.0


def _diagrams(rng, n, death_mean):
    return [{0: np.column_stack([np.zeros(6), rng.normal(death_mean, 0.2, 6).clip(0.05)]),
             1: np.column_stack([np.ones(3), 1 + rng.uniform(0.1, 0.5, 3)])} for _ in range(n)]


def test_diagram_permutation_test():
    rng = np.random.default_rng(0)
    a, b, c = _diagrams(rng, 6, 1.0), _diagrams(rng, 6, 2.0), _diagrams(rng, 6, 1.0)
    shifted = diagram_permutation_test(a, b, n_permutations=499, seed=0)
    same = diagram_permutation_test(a, c, n_permutations=499, seed=0)
    assert not shifted.exact and shifted.n_permutations == 499
    # with equal sizes the swapped labelling gives the same statistic, so p can exceed 1/500
    assert shifted.p_value <= 0.01 and same.p_value > 0.1
    assert "finite points" in shifted.assumptions
    D = shifted.distances
    assert D[0, 6] == pytest.approx(diagram_distance(a[0], b[0]))
    assert shifted.statistic == pytest.approx(D[:6, 6:].mean())
    # exact enumeration for small groups, against a plain loop
    res = diagram_permutation_test(a[:3], b[:3], n_permutations=1000)
    assert res.exact and res.n_permutations == math.comb(6, 3)
    assert res.p_min == pytest.approx(2 / 20) and res.to_frame().loc[0, "p_min"] == pytest.approx(0.1)
    assert shifted.p_min == pytest.approx(1 / 500)
    loop = [np.mean([res.distances[i, j] for i in comb for j in range(6) if j not in comb])
            for comb in itertools.combinations(range(6), 3)]
    np.testing.assert_allclose(np.sort(res.null), np.sort(loop))
    assert res.p_value == pytest.approx(np.mean(np.asarray(loop) >= res.statistic - 1e-12))
    # a custom distance is used as given
    res2 = diagram_permutation_test([1.0, 1.1, 0.9], [5.0, 5.2], distance=lambda x, y: abs(x - y), n_permutations=100)
    assert res2.statistic == pytest.approx(np.mean([abs(x - y) for x in (1.0, 1.1, 0.9) for y in (5.0, 5.2)]))
    with pytest.raises(NotEnoughSamplesError, match="got 1 and 6 diagrams; each group needs at least 2"):
        diagram_permutation_test(a[:1], b)


def test_between_means_vs_loop():
    rng = np.random.default_rng(3)
    M = rng.uniform(size=(7, 7))
    D = M + M.T
    masks = np.zeros((5, 7), dtype=bool)
    for r in range(5):
        masks[r, rng.choice(7, 3, replace=False)] = True
    ref = [np.mean([D[i, j] for i in np.flatnonzero(m) for j in np.flatnonzero(~m)]) for m in masks]
    np.testing.assert_allclose(_between_means(D, masks), ref)


# ------------------------------------------------------------------ figures


def test_figures():
    import matplotlib.pyplot as plt

    from topoland.plots.analysis import plot_feature_vs_target, plot_grouped

    df = _table(shift=1.0).assign(gap=lambda d: d["topology.tp_h1"] * 2 + 1)
    ax = plot_feature_vs_target(df, "tp_h1", "gap", hue="weight_decay")
    assert "Spearman ρ = 1.00" in ax.get_title() and ax.get_xlabel() == "topology.tp_h1"
    ax = plot_grouped(df, "weight_decay", "tp_h1")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.0\n(n=12)", "0.0001\n(n=12)"]
    plt.close("all")


# ------------------------------------------------------------------ multiple comparisons


def test_adjust_p_holm_by_hand_and_bh_against_scipy():
    # Holm by hand: sorted 0.01, 0.02, 0.03, 0.04 times 4, 3, 2, 1 -> 0.04, 0.06, 0.06, 0.04 -> monotone
    p = [0.03, 0.01, 0.04, 0.02]
    np.testing.assert_allclose(adjust_p(p, "holm"), [0.06, 0.04, 0.06, 0.06])
    rng = np.random.default_rng(0)
    q = np.concatenate([rng.uniform(0, 0.05, 5), rng.uniform(size=15)])
    np.testing.assert_allclose(adjust_p(q, "bh"), sps.false_discovery_control(q, method="bh"))
    # NaN (a test not run) stays NaN and does not count in the family
    with_nan = adjust_p([0.01, np.nan, 0.02], "holm")
    assert np.isnan(with_nan[1])
    np.testing.assert_allclose(with_nan[[0, 2]], [0.02, 0.02])
    with pytest.raises(AnalysisError, match="'bonferroni' is unknown"):
        adjust_p(p, "bonferroni")


def test_smallest_p_and_permutations_for_the_family():
    assert permutation_p_min(9) == pytest.approx(0.1)
    for m in (1, 8, 15, 33):
        n = permutations_for_family(m)
        assert m * permutation_p_min(n) < 0.05 <= m * permutation_p_min(n - 1)
    assert permutations_for_family(15) == 300
    with pytest.raises(AnalysisError):
        permutation_p_min(0)


def test_stratified_permutation_exact_against_a_loop():
    rng = np.random.default_rng(1)
    strata = np.repeat([0, 1, 2], [4, 3, 5])
    labels = np.array([0, 0, 1, 1, 0, 1, 1, 0, 0, 1, 1, 1])
    x = rng.normal(size=12) + 0.8 * (labels == 0)
    res = stratified_permutation_test(x, labels, strata, n_permutations=10_000)
    # brute force: every within-stratum arrangement, statistic = mean over strata of mean(0) - mean(1)
    per = [sorted(set(itertools.permutations(labels[strata == s]))) for s in range(3)]
    def stat(lab):
        return np.mean([x[strata == s][np.array(lab[s]) == 0].mean() - x[strata == s][np.array(lab[s]) == 1].mean()
                        for s in range(3)])
    null = np.array([stat(c) for c in itertools.product(*per)])
    assert res["exact"] and res["n_relabellings"] == len(null) == 6 * 3 * 10
    obs = stat([labels[strata == s] for s in range(3)])
    assert res["statistic"] == pytest.approx(obs)
    assert res["p_value"] == pytest.approx(np.mean(np.abs(null) >= abs(obs) - 1e-12))
    # matched pairs: a labelling and its mirror tie, so the floor is 2 / 2^k
    pairs = stratified_permutation_test(np.arange(8.0), np.tile([0, 1], 4), np.repeat(np.arange(4), 2))
    assert pairs["p_min"] == pytest.approx(2 / 16) and pairs["p_value"] == pytest.approx(2 / 16)
    # random relabellings when there are too many: floor 1 / (1 + n)
    big = stratified_permutation_test(x, labels, strata, n_permutations=50, seed=3)
    assert not big["exact"] and big["p_min"] == pytest.approx(1 / 51)
    with pytest.raises(NotEnoughSamplesError, match="single group"):
        stratified_permutation_test(x[:4], [0, 0, 1, 1], [0, 0, 1, 1])


AXES = ("train.weight_decay", "train.batch_size", "train.augment")


def _design_table(n_seeds=3, n_extra=8, seed=0):
    """A 2x2x2 grid with ``n_seeds`` replicates: weight decay adds 1.0, augmentation 0.3, batch
    size nothing. The extra cells (bad minima) all sit at weight decay 1e-3 and batch 32 and
    are far higher, so mixed into the grid they make batch 32 look worse and confound batch
    size with weight decay."""
    rng = np.random.default_rng(seed)
    rows = []
    for wd, bs, aug in itertools.product((0.0, 1e-3), (32, 256), (False, True)):
        for s in range(n_seeds):
            rows.append({"cell_id": f"g{len(rows)}", "train.weight_decay": wd, "train.batch_size": bs,
                         "train.augment": aug, "train.pretrain_random_epochs": 0, "run.seed": s,
                         "m": 1.0 * (wd > 0) + 0.3 * aug + rng.normal(0, 0.2)})
    extra = []
    for s in range(n_extra):
        extra.append(f"x{s}")
        rows.append({"cell_id": f"x{s}", "train.weight_decay": 1e-3, "train.batch_size": 32, "train.augment": False,
                     "train.pretrain_random_epochs": 20, "run.seed": s, "m": 6.0 + rng.normal(0, 0.2)})
    return pd.DataFrame(rows).set_index("cell_id"), Design(axes=AXES, extra=tuple(extra))


SETTINGS = list(AXES) + ["train.pretrain_random_epochs", "run.seed"]


def test_stratified_comparison_finds_the_planted_axis_despite_confounded_extra_cells():
    df, design = _design_table()
    # mixed in, the extra cells fake a batch-size effect: the unfair comparison is fooled
    naive = compare(df, "train.batch_size", "m", strata=())
    assert naive.perm_p_value < 0.05
    wd = grid_comparison(df, design, "train.weight_decay", "m", seed=0)
    bs = grid_comparison(df, design, "train.batch_size", "m", seed=0)
    assert wd.test == bs.test == "stratified-permutation"
    assert wd.strata == ["train.batch_size", "train.augment"] and wd.n_strata == 4
    assert wd.n == {0.0: 12, 1e-3: 12}  # grid cells only: the 8 extra cells are not in
    assert wd.p_value <= 1e-3 and wd.mean_diff == pytest.approx(-1.0, abs=0.15) and wd.ci_high < 0
    assert bs.p_value > 0.05 and bs.ci_low < 0 < bs.ci_high
    assert wd.p_min == pytest.approx(1 / 10_000) and not wd.perm_exact
    # the extra cells are a comparison of their own, matched on every grid axis
    kinds = extra_kinds(df, design, SETTINGS)
    assert kinds == {"train.pretrain_random_epochs=20": [f"x{i}" for i in range(8)]}
    ex = extra_comparison(df, design, "train.pretrain_random_epochs=20", kinds["train.pretrain_random_epochs=20"], "m")
    assert ex.strata == list(AXES) and ex.n == {"extra": 8, "grid": 3} and ex.n_strata == 1
    assert ex.mean_diff == pytest.approx(5.0, abs=0.4) and ex.p_value == pytest.approx(1 / 165)  # C(11, 3)
    # the whole family: adjusted p, finding only at adjusted p < 0.05
    table, notes = comparison_table(df, design, ["m"], settings=SETTINGS, seed=0)
    assert list(table["family"]) == ["grid", "grid", "grid", "extra"]
    np.testing.assert_allclose(table["p_adjusted"], holm(table["p_value"]))
    assert list(table["finding"]) == [True, False, True, True] and (table["p_adjust"] == "holm").all()
    bh, _ = comparison_table(df, design, ["m"], settings=SETTINGS, seed=0, p_adjust="bh")
    np.testing.assert_allclose(bh["p_adjusted"], sps.false_discovery_control(bh["p_value"], method="bh"))


def test_matched_pairs_give_wilcoxon_and_unmatched_axes_are_named():
    df, design = _design_table(n_seeds=1, n_extra=2)
    r = grid_comparison(df, design, "train.weight_decay", "m")
    d = [df[(df["train.batch_size"] == b) & (df["train.augment"] == a) & ~df.index.isin(design.extra)]
         .sort_values("train.weight_decay")["m"].to_numpy() for b in (32, 256) for a in (False, True)]
    diffs = [v[0] - v[1] for v in d]
    assert r.perm_exact and r.n_strata == 4 and r.p_min == pytest.approx(2 / 16)
    assert r.wilcoxon_p == pytest.approx(sps.wilcoxon(diffs).pvalue)
    assert r.mean_diff == pytest.approx(np.mean(diffs))
    # extra cells at a batch size the grid lacks: matched on the other axes, the batch named
    df.loc[list(design.extra), "train.batch_size"] = 128
    ex = extra_comparison(df, design, "bad", list(design.extra), "m")
    assert ex.strata == ["train.weight_decay", "train.augment"]
    assert any("train.batch_size (extra: 128; grid: 32, 256)" in n for n in ex.notes)


def test_comparison_bad_input_names_the_setting_and_sizes():
    df, design = _design_table()
    with pytest.raises(AnalysisError, match=r"setting 'train.lr' is not varied by the grid \(grid axes: "
                                            r"train.weight_decay, train.batch_size, train.augment; "
                                            r"cells per value of 'train.lr': 0.1: 32\)"):
        grid_comparison(df.assign(**{"train.lr": 0.1}), design, "train.lr", "m")
    # the extra cells' setting is not a grid axis either
    with pytest.raises(AnalysisError, match="'train.pretrain_random_epochs' is not varied by the grid.*0: 24, 20: 8"):
        grid_comparison(df, design, "train.pretrain_random_epochs", "m")
    assert value_sizes(df, "nope") == "not a column of the table"
    few = df.drop(index=[f"g{i}" for i in range(12) if i % 3])  # weight decay 0: 4 left, one per stratum
    few = few.drop(index=["g12", "g13", "g14"])                 # and one stratum without weight decay 1e-3
    with pytest.raises(NotEnoughSamplesError,
                       match=r"compare\(by='train.weight_decay'.*group\(s\) 0.0 have fewer than 4 samples.*"
                             r"sizes given: 0.0: 3, 0.001: 9.*1 strata lacking a group dropped"):
        grid_comparison(few, design, "train.weight_decay", "m", min_samples=4)
    one = df[df["train.weight_decay"] == 0.0]
    with pytest.raises(NotEnoughSamplesError, match=r"1 group\(s\)"):
        grid_comparison(one, design, "train.weight_decay", "m")
    # groups that never share a stratum cannot be compared fairly
    apart = df[~df.index.isin(design.extra)]
    apart = apart[(apart["train.weight_decay"] == 0.0) == (apart["train.batch_size"] == 32)]
    with pytest.raises(NotEnoughSamplesError, match="no stratum.*holds every group"):
        compare(apart, "train.weight_decay", "m", strata=["train.batch_size"])


def test_flatness_ordering_reads_sign_and_adjusted_p():
    comps = pd.DataFrame({
        "family": ["grid"] * 5, "by": ["train.batch_size"] * 4 + ["train.weight_decay"],
        "metric": ["curvature.sharpness", "curvature.top_eigenvalue", "curvature.log_volume", "test_acc",
                   "curvature.sharpness"],
        "group_a": ["32", "32", "32", "32", "0.0"], "group_b": ["256", "256", "256", "256", "0.001"],
        "mean_diff": [1.2, -5.0, 0.4, 0.1, 9.0], "p_adjusted": [0.01, 0.2, 0.5, 0.03, 0.01],
        "p_value": [0.002, 0.05, 0.25, 0.01, 0.002], "p_min": [1e-4] * 5,
        "finding": [True, False, False, True, True]})
    flat = flatness_ordering(comps)
    assert list(flat["measure"]) == ["curvature.sharpness", "curvature.top_eigenvalue", "curvature.log_volume"]
    assert list(flat["sign"]) == ["+", "-", "+"]
    assert list(flat["reading"]) == ["small batch_size sharper", "small batch_size flatter", "small batch_size flatter"]
    assert list(flat["p_adjusted"]) == [0.01, 0.2, 0.5] and list(flat["finding"]) == [True, False, False]
    assert list(flat["p_value"]) == [0.002, 0.05, 0.25] and (flat["p_min"] == 1e-4).all()
    assert (flat["small"] == 32).all() and (flat["large"] == 256).all()
    assert flatness_ordering(pd.DataFrame()).empty


def test_compare_on_a_feature_table_stratifies_on_the_other_config_settings():
    df, design = _design_table(n_extra=0)
    cells = df.assign(train_loss=0.1, test_loss=0.5, stop_epoch=np.arange(len(df))).drop(columns="m").reset_index()
    ft = feature_table(cells, {"topology": df[["m"]]})
    res = compare(ft, "train.weight_decay", "m")
    # stop_epoch (a stage outcome, one value per cell) and run.seed are not strata
    assert res.strata == ["train.batch_size", "train.augment"] and res.test == "stratified-permutation"
    plain = compare(ft.frame, "train.weight_decay", "topology.m")
    assert plain.test == "mann-whitney" and any("unstratified" in n for n in plain.notes)


def test_stratified_comparison_of_three_groups():
    rng = np.random.default_rng(2)
    rows = [{"train.batch_size": bs, "train.weight_decay": wd, "m": 2.0 * (bs == 512) + 1.0 * wd + rng.normal(0, 0.1)}
            for bs in (32, 128, 512) for wd in (0, 1) for _ in range(3)]
    df = pd.DataFrame(rows)
    res = compare(df, "train.batch_size", "m", strata=["train.weight_decay"], seed=0)
    assert res.test == "stratified-permutation" and res.n == {32: 6, 128: 6, 512: 6}
    assert res.p_value < 0.005 and res.p_min == pytest.approx(1 / 10_000)
    pw = res.pairwise.set_index(["group_a", "group_b"])
    assert pw.loc[(32, 512), "p_value"] < 0.01 and pw.loc[(128, 512), "p_value"] < 0.01
    assert pw.loc[(32, 128), "p_value"] > 0.05 and pw.loc[(32, 512), "mean_diff"] == pytest.approx(-2.0, abs=0.2)
    np.testing.assert_allclose(pw["p_holm"], holm(pw["p_value"]))
    frame = res.to_frame()
    assert len(frame) == 4 and frame.loc[0, "group_a"] == "all" and frame["p_min"].notna().all()
    with pytest.raises(AnalysisError, match="codes 0..k-1"):
        stratified_permutation_test([1.0, 2.0, 3.0], [0, 2, 2], [0, 0, 0])
