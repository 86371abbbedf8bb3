"""Scores of generalization measures: tau-a, Psi, PGDL, robust sign error, their bootstrap table
and the out-of-fold baseline, on hand-computed examples, limits and bad input."""
import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from topoland.analysis import (
    AnalysisError,
    adjust_p,
    granulated_kendall,
    kendall_tau,
    oof_prediction,
    pgdl_score,
    robust_sign_error,
    score_measures,
)

HP = ["a", "b", "c"]


def _h(p):
    return -sum(q * math.log2(q) for q in (p, 1 - p) if q > 0)


@pytest.fixture(scope="module")
def grid():
    """3 x 4 x 2 grid, 2 seeds per cell (48 models); the gap grows along every axis."""
    rng = np.random.default_rng(0)
    df = pd.DataFrame([dict(a=a, b=b, c=c, seed=s) for a in (0.1, 0.2, 0.3) for b in (1, 2, 3, 4)
                       for c in ("x", "y") for s in (0, 1)])
    df["gap"] = 3 * df.a + 0.5 * df.b + (df.c == "y") + rng.normal(0, 0.05, len(df))
    df["good"] = df.gap + rng.normal(0, 0.1, len(df))
    df["noise"] = rng.normal(size=len(df))
    df["const"] = 1.0
    return df


# the hand example: a, b in {0, 1}; two seeds in cell (0, 0)
HAND = pd.DataFrame({"a": [0, 0, 1, 0, 1], "b": [0, 0, 0, 1, 1], "seed": [0, 1, 0, 0, 0],
                     "gap": [1.0, 2, 3, 4, 5], "m": [1.0, 3, 2, 5, 4]})


# ---------------------------------------------------------------------------------- tau-a
def test_kendall_tau_by_hand():
    # pairs: (0,1) dm<0 dg<0 +1; (0,2) +1; (1,2) dm<0 dg>0 -1 -> 2 * 1 / (3 * 2) = 1/3
    t = pd.DataFrame({"m": [1.0, 2, 3], "gap": [1.0, 3, 2]})
    assert kendall_tau(t, "m") == pytest.approx(1 / 3)
    # a measure tie counts 0 in tau-a: (0,1) 0, (0,2) +1, (1,2) +1 -> 2 * 2 / 6 = 2/3 (tau-b: 0.816)
    t = pd.DataFrame({"m": [1.0, 1, 2], "gap": [1.0, 2, 3]})
    assert kendall_tau(t, "m") == pytest.approx(2 / 3)


def test_kendall_tau_is_scipy_tau_b_without_ties():
    rng = np.random.default_rng(1)
    t = pd.DataFrame({"m": rng.normal(size=40), "gap": rng.normal(size=40)})
    t["m"] += t.gap
    assert kendall_tau(t, "m") == pytest.approx(sps.kendalltau(t.m, t.gap).statistic, abs=1e-12)


# ------------------------------------------------------------------------------------ Psi
def test_granulated_kendall_by_hand_pools_seeds():
    # axis a, groups by b: b=0 rows 0,1,2 (seeds pooled): (0,1) +1, (0,2) +1, (1,2) -1 -> 1/3;
    #   b=1 rows 3,4: dg=-1, dm=+1 -> -1;  tau_a = (1/3 - 1) / 2 = -1/3
    # axis b, groups by a: a=0 rows 0,1,3: +1 +1 +1 -> 1; a=1 rows 2,4: +1 -> 1;  tau_b = 1
    # psi = (-1/3 + 1) / 2 = 1/3
    r = granulated_kendall(HAND, "m", hyperparameters=["a", "b"])
    assert r == pytest.approx({"psi": 1 / 3, "tau_a": -1 / 3, "tau_b": 1.0})


def test_psi_of_a_measure_that_tracks_one_axis():
    df = pd.DataFrame([dict(a=a, b=b, c=c) for a in range(3) for b in range(4) for c in range(3)])
    df["gap"] = df.a + 0.7 * df.b + 0.4 * df.c + np.random.default_rng(2).uniform(0, 0.1, len(df))
    df["m"] = df.a ** 2
    r = granulated_kendall(df, "m", hyperparameters=["a", "b", "c"])
    assert r["tau_a"] == 1.0
    assert abs(r["tau_b"]) < 0.1 and abs(r["tau_c"]) < 0.1
    assert r["psi"] == pytest.approx(1 / 3)
    assert granulated_kendall(df, "gap", hyperparameters=["a", "b", "c"])["psi"] == 1.0


# ----------------------------------------------------------------------------------- PGDL
def _pgdl_reference(df, m, hps):
    """The definition, by loops: every combination of values of (h1, h2) is a slice."""
    best, n = np.inf, len(df)
    g, x = df.gap.to_numpy(), df[m].to_numpy()
    for hs in list(itertools.permutations(hps, 2)) or [(hps[0],)]:
        cols = [df[h].to_numpy() for h in hs]
        tables = {}
        for i, j in itertools.product(range(n), repeat=2):
            key = tuple(v for c in cols for v in (c[i], c[j]))
            tables.setdefault(key, np.zeros((2, 2)))[int(g[i] > g[j]), int(x[i] > x[j])] += 1
        mis, ents = [], []
        for key in itertools.product(*[sorted(set(c)) for c in cols for _ in (0, 1)]):
            if key not in tables:  # an empty slice: skipped
                continue
            p = tables[key] / tables[key].sum()
            pa, pb = p.sum(1), p.sum(0)
            mis.append(sum(p[u, v] * math.log2(p[u, v] / pa[u] / pb[v]) for u in (0, 1) for v in (0, 1) if p[u, v]))
            ents.append(_h(pa[1]))
        best = min(best, np.mean(mis) / np.mean(ents))
    return best


def test_pgdl_by_hand_one_hyperparameter():
    # slices (h_i, h_j); 4 ordered pairs each.
    # (0,0): rows 0,1: (1,0) is (g>, m>), the rest (no, no)    -> H = h(1/4), MI = H
    # (1,1): rows 2,3: (2,3) (no, m>), (3,2) (g>, no), 2 x (no, no): p = [[1/2, 1/4], [1/4, 0]]
    #        -> H = h(1/4), MI = 1/2 log2((1/2)/(3/4)^2) + 2 * 1/4 log2((1/4)/(3/4 * 1/4))
    # (0,1), (1,0): the gap indicator is constant -> H = MI = 0
    # score = mean MI / mean H = (h(1/4) + MI_11) / (2 h(1/4))
    t = pd.DataFrame({"h": [0, 0, 1, 1], "gap": [1.0, 2, 3, 4], "m": [1.0, 2, 1, 0]})
    mi11 = 0.5 * math.log2(0.5 / 0.75 ** 2) + 0.5 * math.log2(0.25 / (0.75 * 0.25))
    want = (_h(0.25) + mi11) / (2 * _h(0.25))
    assert pgdl_score(t, "m", hyperparameters=["h"]) == pytest.approx(want, abs=1e-12)
    assert want == pytest.approx(0.5755, abs=1e-4)


def test_pgdl_matches_the_definition_by_loops(grid):
    sub = grid[grid.b.isin([1, 3])]
    for m in ("good", "noise"):
        assert pgdl_score(sub, m, hyperparameters=HP) == pytest.approx(_pgdl_reference(sub, m, HP), abs=1e-12)


def test_pgdl_limits(grid):
    assert pgdl_score(grid, "const", hyperparameters=HP) == 0.0
    g = grid.assign(up=np.exp(grid.gap) + grid.gap ** 3)
    assert pgdl_score(g, "up", hyperparameters=HP) == pytest.approx(1.0, abs=1e-12)
    assert 0 < pgdl_score(grid, "good", hyperparameters=HP) < 1


def test_pgdl_empty_slices_raise_or_are_skipped(grid):
    holey = grid[~((grid.a == 0.3) & (grid.b == 4))]
    with pytest.raises(AnalysisError, match=r"slice \(a_i, a_j, b_i, b_j\) = \(0\.1, 0\.3, 1, 4\) has no pairs"):
        pgdl_score(holey, "good", hyperparameters=HP)
    got = pgdl_score(holey, "good", hyperparameters=HP, on_empty="skip")
    sub = holey[holey.b.isin([1, 4])]
    assert pgdl_score(sub, "good", hyperparameters=HP, on_empty="skip") == pytest.approx(
        _pgdl_reference(sub, "good", HP), abs=1e-12)
    assert 0 < got < 1
    with pytest.raises(AnalysisError, match="on_empty='maybe' is unknown"):
        pgdl_score(grid, "good", hyperparameters=HP, on_empty="maybe")


def test_pgdl_undefined_with_one_model_per_slice():
    t = pd.DataFrame([dict(a=a, b=b) for a in range(2) for b in range(2)]).assign(gap=[1.0, 2, 3, 4], m=[1.0, 2, 3, 4])
    with pytest.raises(AnalysisError, match="constant within every slice of a x b"):
        pgdl_score(t, "m", hyperparameters=["a", "b"])


# ---------------------------------------------------------------------------- sign error
def test_robust_sign_error_by_hand():
    # environments (axis; others) and their pairs (value of the axis differs):
    #   a; b=0: (0,2) right 0, (1,2) wrong 1 -> 0.5     a; b=1: (3,4) wrong -> 1
    #   b; a=0: (0,3) 0, (1,3) 0 -> 0                   b; a=1: (2,4) 0 -> 0
    r = robust_sign_error(HAND, "m", hyperparameters=["a", "b"])
    assert r == {"robust_sign_error": 1.0, "mean_sign_error": 0.375, "n_environments": 4,
                 "worst_environment": "a varies, b=1"}
    # |dg| <= 1 drops (1,2) and (3,4): the environment a; b=1 has no pair left
    r = robust_sign_error(HAND, "m", hyperparameters=["a", "b"], min_gap_difference=1.0)
    assert (r["robust_sign_error"], r["n_environments"]) == (0.0, 3)
    # a measure tie is half an error
    r = robust_sign_error(HAND.assign(m=1.0), "m", hyperparameters=["a", "b"])
    assert r["robust_sign_error"] == r["mean_sign_error"] == 0.5


def test_robust_sign_error_limits(grid):
    g = grid.assign(minus=-grid.gap)
    assert robust_sign_error(g, "gap", hyperparameters=HP)["robust_sign_error"] == 0.0
    r = robust_sign_error(g, "minus", hyperparameters=HP)
    assert r["robust_sign_error"] == r["mean_sign_error"] == 1.0
    assert r["n_environments"] == 4 * 2 + 3 * 2 + 3 * 4


# ---------------------------------------------------------------------------- the table
def test_score_measures_agrees_with_the_single_scores(grid):
    g = grid.copy()
    g.loc[[0, 5, 7], "noise"] = np.nan
    out = score_measures(g, ["noise", "good", "const"], hyperparameters=HP, n_boot=20, n_permutations=99)
    assert out.psi.is_monotonic_decreasing
    row = out.set_index("measure").loc["good"]
    assert row.kendall_tau == pytest.approx(kendall_tau(g, "good"))
    assert row.psi == pytest.approx(granulated_kendall(g, "good", hyperparameters=HP)["psi"])
    assert row.tau_b == pytest.approx(granulated_kendall(g, "good", hyperparameters=HP)["tau_b"])
    assert row.pgdl == pytest.approx(pgdl_score(g, "good", hyperparameters=HP))
    assert row.robust_sign_error == robust_sign_error(g, "good", hyperparameters=HP)["robust_sign_error"]
    noisy = out.set_index("measure").loc["noise"]
    assert (noisy.n_models, noisy.n_dropped) == (45, 3)
    assert noisy.kendall_tau == pytest.approx(kendall_tau(g.dropna(), "noise"))
    assert row.tau_p_value == pytest.approx(0.01)  # 1 / (1 + 99): no relabelling reaches tau ~ 0.93
    np.testing.assert_allclose(out.tau_p_adjusted, adjust_p(out.tau_p_value, "holm"))
    assert out.attrs["assumptions"]


def test_bootstrap_intervals_contain_the_estimate_and_are_seeded(grid):
    kw = dict(hyperparameters=HP, n_boot=100, n_permutations=49)
    out = score_measures(grid, ["good", "noise"], seed=3, **kw)
    for s in ("kendall_tau", "psi", "tau_a", "tau_b", "tau_c", "pgdl", "robust_sign_error", "mean_sign_error"):
        # the plug-in mutual information of a measure unrelated to the gap is biased upward in
        # resamples (as documented): PGDL's interval of "noise" may lie just above its estimate
        r = out.iloc[:1] if s == "pgdl" else out
        assert (r[f"{s}_ci_low"] <= r[s] + 1e-12).all() and (r[s] <= r[f"{s}_ci_high"] + 1e-12).all(), s
        assert (out[f"{s}_boot_discarded"] == 0).all()
    assert list(out.measure) == ["good", "noise"]
    pd.testing.assert_frame_equal(out, score_measures(grid, ["good", "noise"], seed=3, **kw))
    other = score_measures(grid, ["good", "noise"], seed=4, **kw)
    assert not np.allclose(other.psi_ci_low, out.psi_ci_low)
    # a measure's resamples do not depend on the other measures asked for
    alone = score_measures(grid, ["noise"], seed=3, **kw)
    assert alone.psi_ci_low.iat[0] == out.set_index("measure").loc["noise", "psi_ci_low"]


def test_undefined_resamples_are_discarded_and_counted():
    # one model per (a, b) cell: every resample of Psi has a group of 2 distinct models, but PGDL's
    # gap indicator is constant within every slice: undefined, and so in every resample
    t = pd.DataFrame([dict(a=a, b=b) for a in range(3) for b in range(3)])
    t["gap"] = t.a + 0.3 * t.b + np.linspace(0, 0.01, 9)
    t["m"] = t.gap
    out = score_measures(t, "m", hyperparameters=["a", "b"], n_boot=30, n_permutations=9)
    assert np.isnan(out.pgdl.iat[0]) and out.pgdl_boot_discarded.iat[0] == 30
    assert "undefined: pgdl" in out.note.iat[0]
    assert out.kendall_tau.iat[0] == 1.0 and out.kendall_tau_boot_discarded.iat[0] == 0


# ------------------------------------------------------------------------------ baseline
@pytest.mark.parametrize("estimator", ["ridge", "forest"])
def test_oof_prediction_never_sees_its_own_row(grid, estimator):
    df = grid.assign(f1=grid.a * 2 + grid.b, f2=grid.good)[["f1", "f2", "gap"]].iloc[:30]
    kw = dict(n_splits=5, seed=0, estimator=estimator)
    before = oof_prediction(df, ["f1", "f2"], **kw)
    changed = df.copy()
    changed.iloc[4, changed.columns.get_loc("gap")] = 1e3  # row 4's target only
    after = oof_prediction(changed, ["f1", "f2"], **kw)
    # in-sample fitting would move row 4's own prediction; out of fold, only other folds move
    assert after.iat[4] == before.iat[4]
    assert (np.abs(after - before) > 1e-6).sum() >= 30 * 3 // 5
    assert list(before.index) == list(df.index) and before.name == f"oof_{estimator}"
    if estimator == "ridge":
        assert np.corrcoef(before, df.gap)[0, 1] > 0.8


def test_oof_prediction_missing_values(grid):
    df = grid[["a", "b", "gap"]].copy()
    df.loc[[1, 2], "a"] = np.nan
    with pytest.raises(AnalysisError, match="2 of 48 rows have a NaN feature or target; pass dropna=True"):
        oof_prediction(df, ["a", "b"])
    out = oof_prediction(df, ["a", "b"], dropna=True)
    assert len(out) == 46 and 1 not in out.index
    with pytest.raises(AnalysisError, match="test split"):
        oof_prediction(grid.assign(test_acc=1.0), ["test_acc"])
    with pytest.raises(AnalysisError, match="estimator 'svm' is unknown"):
        oof_prediction(grid, ["a"], estimator="svm")


# ----------------------------------------------------------------------------- bad input
SINGLE = [lambda t, m, **k: kendall_tau(t, m, **{x: v for x, v in k.items() if x == "gap"}),
          granulated_kendall, pgdl_score, robust_sign_error,
          lambda t, m, **k: score_measures(t, [m], n_boot=2, n_permutations=2, **k)]


@pytest.mark.parametrize("fn", SINGLE)
def test_missing_columns_and_too_few_models(grid, fn):
    with pytest.raises(AnalysisError, match=r"no gap column 'gen_gap' \(columns: a, b, c, seed, gap"):
        fn(grid, "good", gap="gen_gap", hyperparameters=HP)
    with pytest.raises(AnalysisError, match="measure column 'sharpness' is not in the table"):
        fn(grid, "sharpness", hyperparameters=HP)
    with pytest.raises(AnalysisError, match="at least 2 models"):
        fn(grid.iloc[:1], "good", hyperparameters=HP)


@pytest.mark.parametrize("fn", SINGLE[1:])
def test_bad_hyperparameters(grid, fn):
    with pytest.raises(AnalysisError, match="hyperparameter column 'depth' is not in the table"):
        fn(grid, "good", hyperparameters=["a", "depth"])
    with pytest.raises(AnalysisError, match=r"hyperparameter column 'c' has a single value \('x'\)"):
        fn(grid[grid.c == "x"], "good", hyperparameters=HP)
    with pytest.raises(AnalysisError, match=r"needs hyperparameters=\[columns\]"):
        fn(grid, "good", hyperparameters=[])


@pytest.mark.parametrize("fn", SINGLE[:4])
def test_a_measure_with_missing_values_is_refused_with_the_count(grid, fn):
    g = grid.copy()
    g.loc[[3, 4, 9], "good"] = np.nan
    with pytest.raises(AnalysisError, match=r"measure column 'good' has 3 missing values \(of 48 models\)"):
        fn(g, "good", hyperparameters=HP)


def test_score_measures_refuses_a_measure_left_with_one_model(grid):
    g = grid.assign(sparse=np.nan)
    g.loc[0, "sparse"] = 1.0
    with pytest.raises(AnalysisError, match="'sparse' has 1 non-missing values"):
        score_measures(g, ["good", "sparse"], hyperparameters=HP, n_boot=2)


def test_psi_undefined_when_no_two_models_differ_in_one_axis_only():
    diagonal = pd.DataFrame({"a": [0, 1, 2], "b": [0, 1, 2], "gap": [1.0, 2, 3], "m": [1.0, 2, 3]})
    with pytest.raises(AnalysisError, match="no two models agree on every axis but 'a'"):
        granulated_kendall(diagonal, "m", hyperparameters=["a", "b"])


def test_a_feature_table_and_group_prefixed_names(grid):
    from topoland.analysis import FeatureTable
    frame = grid.rename(columns={"good": "surface.good"})
    ft = FeatureTable(frame=frame, groups={"surface": ["surface.good"]}, settings=HP, metrics=["gap"])
    assert kendall_tau(ft, "good") == kendall_tau(grid, "good")
    assert score_measures(ft, ["good"], hyperparameters=HP, n_boot=2, n_permutations=2).measure.iat[0] == "surface.good"


def test_psi_permutation_test():
    import itertools

    from topoland.analysis import granulated_kendall, psi_permutation_test
    rng = np.random.default_rng(1)
    rows = [{"a": a, "b": b, "gap": a + 2 * b + 0.1 * rng.normal()} for a, b, _ in itertools.product(range(3), range(3), range(2))]
    df = pd.DataFrame(rows)
    df["m"] = df["gap"] + 0.01 * rng.normal(size=len(df))
    df["noise"] = rng.normal(size=len(df))
    out = psi_permutation_test(df, "m", hyperparameters=["a", "b"], n_permutations=99, seed=0)
    assert out["psi"] == pytest.approx(granulated_kendall(df, "m", hyperparameters=["a", "b"])["psi"])
    assert out["p_value"] == pytest.approx(1 / 100) and out["n_permutations"] == 99
    assert psi_permutation_test(df, "noise", hyperparameters=["a", "b"], n_permutations=99)["p_value"] > 0.05
    # deterministic by seed
    assert psi_permutation_test(df, "noise", hyperparameters=["a", "b"], n_permutations=99, seed=3) == \
        psi_permutation_test(df, "noise", hyperparameters=["a", "b"], n_permutations=99, seed=3)
    with pytest.raises(AnalysisError, match="n_permutations must be >= 1"):
        psi_permutation_test(df, "m", hyperparameters=["a"], n_permutations=0)


def test_psi_permutation_test_equals_the_plain_loop():
    """The blocked permutation test (all permutations of a block scored at once) gives the plain
    loop's Ψ* values exactly, hence its p-value, with the same generator stream."""
    from topoland.analysis import scores as S
    rng = np.random.default_rng(3)
    rows = [dict(a=a, b=b, gap=0.1 * a + b + 0.05 * rng.normal(), m=a + 0.5 * rng.normal())
            for a in (1, 2, 3) for b in (0.1, 0.2) for _ in range(3)]
    table = pd.DataFrame(rows)
    m, _, _, p = S._pairs_of(table, "m", "gap", ["a", "b"], "test")
    i, j = p.iu
    perms = np.stack([rng.permutation(m) for _ in range(40)])
    loop = [np.mean(S._axis_taus(p, (S._signs(v) * p.sg)[i, j])) for v in perms]
    np.testing.assert_array_equal(S._psi_many(p, perms), loop)
    n = 300   # crosses a block boundary
    got = S.psi_permutation_test(table, "m", "gap", ["a", "b"], n_permutations=n, seed=5)
    g = np.random.default_rng(5)
    obs = np.mean(S._axis_taus(p, (S._signs(m) * p.sg)[i, j]))
    hits = sum(abs(np.mean(S._axis_taus(p, (S._signs(g.permutation(m)) * p.sg)[i, j]))) >= abs(obs) - 1e-12
               for _ in range(n))
    assert got["psi"] == obs and got["p_value"] == (1 + hits) / (1 + n)
