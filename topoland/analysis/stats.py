"""Statistical comparison of minima: group tests, rank correlations, diagram-level tests.

Conventions:

- Two groups ``a`` and ``b`` are the first and second label in sorted order (or ``order=``).
  ``mean_diff = mean(a) - mean(b)`` and Cliff's delta ``= P(a > b) - P(a < b)``, so both are
  positive when ``a`` tends to be larger.
- Permutation p-values are two-sided on ``|statistic|`` (diagram test: one-sided, larger
  between-group distance). When the number of distinct relabellings ``C(n, n_a)`` is at most
  ``n_permutations`` every one is enumerated and ``p = #{T >= t} / C(n, n_a)`` (exact, the
  observed labelling included); otherwise ``p = (1 + #{T* >= t}) / (1 + n_permutations)``
  with labellings drawn by a numpy Generator seeded by ``seed``. Ties are counted with a
  relative tolerance of ``100 * eps * |t|``, as scipy does.
- Stratified comparisons (``compare(..., strata=[...])``) permute the labels only within
  strata (rows equal on every strata column): two groups, the statistic is the mean over strata
  of ``mean(a) - mean(b)`` within the stratum; more groups, the sum over strata of the
  between-group sum of squares. Strata lacking a group are dropped (counted). Every distinct
  within-strata relabelling is enumerated when there are at most ``n_permutations``.
- ``p_min`` is the smallest p-value a permutation test could return, whatever the data:
  ``1 / (1 + n_permutations)`` for random relabellings; for an enumeration of ``T`` relabellings
  ``1 / T``, or ``2 / T`` when swapping the groups leaves every stratum's sizes unchanged (a
  labelling and its mirror tie: 2 / 2^k for k matched pairs).
- Families of tests are adjusted by :func:`adjust_p`: Holm (family-wise error) or
  Benjamini-Hochberg (false discovery rate); NaN p-values stay NaN and do not count.
- Bootstrap intervals are percentile intervals.
- Every result has an ``assumptions`` text. Too few samples raise
  :class:`~topoland.errors.NotEnoughSamplesError` naming the given and needed counts.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as sps

from topoland.analysis.features import AnalysisError, FeatureTable, as_frame, check_feature_columns, resolve_column
from topoland.errors import NotEnoughSamplesError

__all__ = [
    "CompareResult",
    "DiagramTestResult",
    "compare",
    "correlations",
    "diagram_permutation_test",
    "diagram_distance",
    "cliffs_delta",
    "holm",
    "benjamini_hochberg",
    "adjust_p",
    "P_ADJUST_METHODS",
    "permutation_p_min",
    "permutations_for_family",
    "stratified_permutation_test",
    "permutation_test_means",
    "bootstrap_mean_diff_ci",
]

_EPS_TIE = 100 * np.finfo(float).eps

ASSUMPTIONS_TWO = (
    "Observations are independent (one per minimum). Mann-Whitney U (two-sided, scipy "
    "method='auto') tests whether one group tends to take larger values; it assumes nothing "
    "about the shape of the distributions. The permutation test on |mean(a) - mean(b)| assumes "
    "the observations are exchangeable between groups under the null (same distribution). "
    "Cliff's delta = P(a > b) - P(a < b). The confidence interval of mean(a) - mean(b) is a "
    "percentile bootstrap, each group resampled independently; it is approximate for small groups."
)
ASSUMPTIONS_MANY = (
    "Observations are independent (one per minimum). Kruskal-Wallis H (tie-corrected, "
    "chi-square approximation, reliable with about 5 or more per group) tests whether any group "
    "tends to take larger values. Pairwise two-sided Mann-Whitney U tests follow, with Holm's "
    "step-down correction, which controls the family-wise error rate under any dependence."
)
ASSUMPTIONS_CORR = (
    "Pairs (feature, target) are independent across minima; only rows complete for the pair "
    "are used. Spearman's rho and Kendall's tau-b measure monotone association (ties handled); "
    "p-values from scipy (asymptotic for large n). Confidence intervals: percentile bootstrap "
    "over rows; resamples in which a variable is constant are discarded (n_boot_valid). "
    "p-values are adjusted over the whole table (every feature and target), separately per "
    "method: Holm (family-wise error, any dependence) by default, or Benjamini-Hochberg (false "
    "discovery rate, independence or positive dependence)."
)
ASSUMPTIONS_DIAGRAM = (
    "Diagrams of different minima are independent. Statistic: the mean distance between a "
    "diagram of group a and one of group b. Under the null, group labels are exchangeable; a "
    "large between-group distance means the groups differ. One-sided permutation p-value. "
    "The default distance sums, over homology dimensions, the 1-Wasserstein distance "
    "(gudhi.hera, internal L-infinity ground metric) between the finite points only: essential "
    "(infinite) classes are ignored."
)


# --------------------------------------------------------------------------- small pieces


def cliffs_delta(a, b) -> float:
    """Cliff's delta ``P(a > b) - P(a < b)`` over all pairs, in [-1, 1]; ``a (n,)``, ``b (m,)``."""
    a = np.asarray(a, dtype=float)
    b = np.sort(np.asarray(b, dtype=float))
    if a.size == 0 or b.size == 0:
        raise NotEnoughSamplesError(f"Cliff's delta needs two non-empty samples, got sizes {a.size} and {b.size}")
    less = np.searchsorted(b, a, side="left")  # #b < a_i
    greater = b.size - np.searchsorted(b, a, side="right")  # #b > a_i
    return float((less.sum() - greater.sum()) / (a.size * b.size))


def holm(pvalues) -> np.ndarray:
    """Holm step-down adjusted p-values ``(k,)`` (family-wise error rate), same order as given."""
    p = _check_p(pvalues)
    k = p.size
    order = np.argsort(p, kind="stable")
    adj = np.maximum.accumulate((k - np.arange(k)) * p[order])
    out = np.empty(k)
    out[order] = np.minimum(adj, 1.0)
    return out


def benjamini_hochberg(pvalues) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values ``(k,)`` (false discovery rate), same order as given."""
    p = _check_p(pvalues)
    k = p.size
    order = np.argsort(p, kind="stable")
    scaled = p[order] * k / np.arange(1, k + 1)
    adj = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(k)
    out[order] = np.minimum(adj, 1.0)
    return out


P_ADJUST_METHODS: tuple[str, ...] = ("holm", "bh")


def adjust_p(pvalues, method: str = "holm") -> np.ndarray:
    """Adjusted p-values ``(k,)`` of one family: ``"holm"`` (:func:`holm`) or ``"bh"``
    (:func:`benjamini_hochberg`). NaN entries (tests not run) stay NaN and are not counted."""
    if method not in P_ADJUST_METHODS:
        raise AnalysisError(f"p-value adjustment {method!r} is unknown; choose from {P_ADJUST_METHODS}")
    p = np.asarray(pvalues, dtype=float).ravel()
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = (holm if method == "holm" else benjamini_hochberg)(p[ok])
    return out


def permutation_p_min(n_permutations: int) -> float:
    """Smallest p of a test by ``n_permutations`` random relabellings: ``1 / (1 + n_permutations)``."""
    if n_permutations < 1:
        raise AnalysisError(f"a permutation test needs n_permutations >= 1, got {n_permutations}")
    return 1.0 / (1 + n_permutations)


def permutations_for_family(family_size: int, alpha: float = 0.05) -> int:
    """Fewest random relabellings ``n`` with ``family_size / (1 + n) < alpha``: enough for the
    smallest p to stay below ``alpha`` after Holm over ``family_size`` tests."""
    if family_size < 1 or not 0 < alpha < 1:
        raise AnalysisError(f"need family_size >= 1 and 0 < alpha < 1, got {family_size}, {alpha}")
    return int(math.floor(family_size / alpha))


def _check_p(pvalues) -> np.ndarray:
    p = np.asarray(pvalues, dtype=float).ravel()
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise AnalysisError(f"p-values must lie in [0, 1] without NaN, got {p.tolist()}")
    return p


def _memberships(n: int, n_a: int, n_permutations: int, rng: np.random.Generator):
    """Boolean masks ``(P, n)`` of group-a membership; exact enumeration when affordable."""
    total = math.comb(n, n_a)
    if total <= n_permutations:
        masks = np.zeros((total, n), dtype=bool)
        for r, comb in enumerate(itertools.combinations(range(n), n_a)):
            masks[r, list(comb)] = True
        return masks, True
    perms = rng.permuted(np.tile(np.arange(n), (n_permutations, 1)), axis=1)
    masks = np.zeros((n_permutations, n), dtype=bool)
    masks[np.arange(n_permutations)[:, None], perms[:, :n_a]] = True
    return masks, False


def _perm_p(observed: float, null: np.ndarray, exact: bool) -> float:
    hits = int(np.sum(null >= observed - _EPS_TIE * abs(observed)))
    return hits / null.size if exact else (1 + hits) / (1 + null.size)


def permutation_test_means(a, b, *, n_permutations: int = 9999, seed: int = 0):
    """Two-sided permutation test of ``|mean(a) - mean(b)|``.

    Returns ``(mean_diff, p_value, exact)``; exact enumeration when ``C(n, n_a) <= n_permutations``.
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    x = np.concatenate([a, b])
    masks, exact = _memberships(x.size, a.size, n_permutations, np.random.default_rng(seed))
    sa = masks.astype(float) @ x
    null = np.abs(sa / a.size - (x.sum() - sa) / b.size)
    diff = float(a.mean() - b.mean())
    return diff, _perm_p(abs(diff), null, exact), exact


def bootstrap_mean_diff_ci(a, b, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0):
    """Percentile bootstrap interval ``(low, high)`` of ``mean(a) - mean(b)``, groups resampled
    independently: ``a`` by ``rng.integers(0, n_a, (n_boot, n_a))`` first, then ``b``."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, a.size, size=(n_boot, a.size))
    ib = rng.integers(0, b.size, size=(n_boot, b.size))
    diffs = a[ia].mean(axis=1) - b[ib].mean(axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(diffs, [alpha, 1 - alpha])
    return float(lo), float(hi)


# --------------------------------------------------------------------------- stratified test


def _arrangements(labels: np.ndarray) -> np.ndarray:
    """Every distinct ordering ``(A, n)`` of the multiset ``labels`` (ints)."""
    values, counts = np.unique(labels, return_counts=True)
    out: list[list[int]] = []

    def grow(prefix, left):
        if len(prefix) == labels.size:
            out.append(list(prefix))
            return
        for i, v in enumerate(values):
            if left[i]:
                left[i] -= 1
                prefix.append(int(v))
                grow(prefix, left)
                prefix.pop()
                left[i] += 1

    grow([], list(counts))
    return np.asarray(out, dtype=np.int64)


def _n_arrangements(labels: np.ndarray) -> int:
    _, counts = np.unique(labels, return_counts=True)
    total = math.factorial(labels.size)
    for c in counts:
        total //= math.factorial(int(c))
    return total


def _relabellings(labels, strata_idx, n_permutations, rng):
    """Label matrices ``(P, n)`` permuted within strata; exact when affordable."""
    n = labels.size
    sizes = [_n_arrangements(labels[idx]) for idx in strata_idx]
    total = math.prod(sizes)
    if total <= n_permutations:
        per = [_arrangements(labels[idx]) for idx in strata_idx]
        out = np.empty((total, n), dtype=np.int64)
        for r, combo in enumerate(itertools.product(*(range(len(a)) for a in per))):
            for idx, arr, j in zip(strata_idx, per, combo):
                out[r, idx] = arr[j]
        return out, True
    out = np.empty((n_permutations, n), dtype=np.int64)
    for idx in strata_idx:
        out[:, idx] = rng.permuted(np.tile(labels[idx], (n_permutations, 1)), axis=1)
    return out, False


def _stratified_stat(x, L, strata_idx, k):
    """Statistic of each label row of ``L (P, n)``: two groups (codes 0, 1), the mean over
    strata of mean(x | 0) - mean(x | 1); more, the summed within-stratum between-group SS."""
    out = np.zeros(L.shape[0])
    for idx in strata_idx:
        xs, Ls = x[idx], L[:, idx]
        if k == 2:
            a = (Ls == 0).astype(float)
            out += (a @ xs) / a.sum(axis=1) - ((1 - a) @ xs) / (1 - a).sum(axis=1)
        else:
            grand = xs.mean()
            for g in range(k):
                m = (Ls == g).astype(float)
                cnt = m.sum(axis=1)
                out += cnt * ((m @ xs) / cnt - grand) ** 2
    return out / len(strata_idx) if k == 2 else out


def _design_floor(labels, strata_idx, k, total) -> float:
    """Smallest p of an exact within-strata test whatever the data: relabellings that swap
    whole groups of equal size in every stratum tie with the observed one (2 / 2^m for m pairs)."""
    counts = [np.bincount(labels[idx], minlength=k) for idx in strata_idx]
    ties = sum(all((c[list(perm)] == c).all() for c in counts) for perm in itertools.permutations(range(k)))
    return ties / total


def stratified_permutation_test(values, labels, strata, *, n_permutations: int = 9999, seed: int = 0) -> dict:
    """Permutation test of a group effect with labels permuted only within strata.

    Args:
        values: ``(n,)`` floats. labels: ``(n,)`` group codes ``0..k-1`` (every code present).
        strata: ``(n,)`` stratum codes; every stratum must hold at least two groups.

    Returns ``{"statistic", "p_value", "p_min", "exact", "n_relabellings"}``: for two groups
    the mean within-stratum ``mean(0) - mean(1)``, tested two-sided on its absolute value; for
    more, the summed between-group sum of squares (one-sided).
    """
    x = np.asarray(values, dtype=float)
    lab = np.asarray(labels, dtype=np.int64)
    st = np.asarray(strata)
    if not (x.shape == lab.shape == st.shape) or x.ndim != 1:
        raise AnalysisError(f"values, labels and strata must be 1-D of one length, got {x.shape}, {lab.shape}, {st.shape}")
    k = int(lab.max()) + 1 if lab.size else 0
    if k < 2 or lab.min() < 0 or np.unique(lab).size != k:
        raise AnalysisError(f"labels must be the codes 0..k-1 of at least 2 groups, each present; got {np.unique(lab).tolist()}")
    strata_idx = [np.flatnonzero(st == s) for s in pd.unique(st)]
    thin = [str(st[idx[0]]) for idx in strata_idx if np.unique(lab[idx]).size < 2]
    if thin:
        raise NotEnoughSamplesError(f"strata {thin} hold a single group; drop them before the test")
    L, exact = _relabellings(lab, strata_idx, n_permutations, np.random.default_rng(seed))
    obs = float(_stratified_stat(x, lab[None, :], strata_idx, k)[0])
    null = _stratified_stat(x, L, strata_idx, k)
    if k == 2:
        t, null_t = abs(obs), np.abs(null)
    else:
        t, null_t = obs, null
    p = _perm_p(t, null_t, exact)
    p_min = _design_floor(lab, strata_idx, k, null.size) if exact else permutation_p_min(n_permutations)
    return {"statistic": obs, "p_value": p, "p_min": p_min, "exact": exact, "n_relabellings": int(null.size)}


# --------------------------------------------------------------------------- compare


ASSUMPTIONS_STRATIFIED = (
    "Observations are independent (one per minimum). Strata are the rows that agree on every "
    "other setting ({strata}); group labels are exchangeable within a stratum under the null, so "
    "a setting's effect is never confused with another's. Two groups: the statistic is the mean "
    "over strata of the within-stratum difference of means, tested two-sided by permuting labels "
    "within strata; with exactly one minimum of each group per stratum the Wilcoxon signed-rank "
    "test on the matched differences is given too. More groups: the summed within-stratum "
    "between-group sum of squares, then pairwise stratified tests with Holm's correction. The "
    "confidence interval is a percentile bootstrap over strata. Cliff's delta is averaged over strata."
)


@dataclass
class CompareResult:
    """Result of :func:`compare`.

    ``test`` is "stratified-permutation" (strata given or found), else "mann-whitney" (two
    groups) or "kruskal-wallis" (more); ``statistic`` and ``p_value`` belong to it. ``p_min``
    is the smallest p the permutation test in the row could give (``perm_p_value`` unstratified,
    ``p_value`` stratified). Two-group fields (``mean_diff``, ``ci_low``, ``ci_high``,
    ``cliffs_delta``...) are None for more groups, where ``pairwise`` holds one row per pair with
    Holm-adjusted p-values (``p_holm``). ``strata``: the columns stratified on; ``n_strata``:
    strata used; ``n_strata_dropped``: strata lacking a group.
    """

    by: str
    metric: str
    test: str
    groups: list
    n: dict
    statistic: float
    p_value: float
    assumptions: str
    n_dropped: int = 0
    mean_diff: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    ci_level: float | None = None
    cliffs_delta: float | None = None
    perm_p_value: float | None = None
    n_permutations: int | None = None
    perm_exact: bool | None = None
    n_boot: int | None = None
    pairwise: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)
    strata: list[str] = field(default_factory=list)
    n_strata: int = 1
    n_strata_dropped: int = 0
    p_min: float | None = None
    wilcoxon_statistic: float | None = None
    wilcoxon_p: float | None = None

    def to_frame(self) -> pd.DataFrame:
        """One row per comparison: the two-group test, or the omnibus row then the pairs."""
        common = {"strata": ", ".join(self.strata), "n_strata": self.n_strata,
                  "n_strata_dropped": self.n_strata_dropped}
        if self.pairwise is None:
            a, b = self.groups
            return pd.DataFrame([{
                "by": self.by, "metric": self.metric, "group_a": a, "group_b": b,
                "n_a": self.n[a], "n_b": self.n[b], "test": self.test,
                "statistic": self.statistic, "p_value": self.p_value, "p_min": self.p_min,
                "perm_p_value": self.perm_p_value, "n_permutations": self.n_permutations,
                "exact": self.perm_exact, "wilcoxon_p": self.wilcoxon_p, "mean_diff": self.mean_diff,
                "ci_low": self.ci_low, "ci_high": self.ci_high, "cliffs_delta": self.cliffs_delta,
            } | common])
        head = pd.DataFrame([{
            "by": self.by, "metric": self.metric, "group_a": "all", "group_b": "",
            "n_a": sum(self.n.values()), "n_b": np.nan, "test": self.test,
            "statistic": self.statistic, "p_value": self.p_value, "p_min": self.p_min,
            "n_permutations": self.n_permutations, "exact": self.perm_exact,
        } | common])
        pw = self.pairwise.assign(by=self.by, metric=self.metric)
        if "test" not in pw:
            pw = pw.assign(test="mann-whitney")
        return pd.concat([head, pw], ignore_index=True)


def _sort_labels(values):
    return sorted(pd.unique(values), key=lambda v: (str(type(v)), v))


def _size_message(where, groups, min_samples, n_dropped, extra=""):
    sizes = ", ".join(f"{k}: {v.size}" for k, v in groups.items())
    small = [str(k) for k, v in groups.items() if v.size < min_samples]
    return (f"{where}: group(s) {', '.join(small)} have fewer than {min_samples} samples, "
            f"the least each group needs (sizes given: {sizes}; {n_dropped} rows dropped for NaN{extra})")


def _groups(table, by: str, metric: str, order, min_samples: int, strata=()):
    df = as_frame(table)
    if by not in df.columns:
        raise AnalysisError(f"compare: grouping column {by!r} is not in the table")
    metric = resolve_column(df, metric)
    absent = [c for c in strata if c not in df.columns]
    if absent:
        raise AnalysisError(f"compare(by={by!r}): strata columns {absent} are not in the table")
    sub = df[[by, metric, *strata]]
    ok = sub.notna().all(axis=1)
    n_dropped = int((~ok).sum())
    sub = sub[ok]
    labels = list(order) if order is not None else _sort_labels(sub[by])
    sub = sub[sub[by].isin(labels)]
    groups = {lab: sub.loc[sub[by] == lab, metric].to_numpy(dtype=float) for lab in labels}
    where = f"compare(by={by!r}, metric={metric!r})"
    if len(groups) < 2:
        raise NotEnoughSamplesError(f"{where}: {len(groups)} group(s) {labels} given; needs at least 2")
    if any(v.size < min_samples for v in groups.values()):
        raise NotEnoughSamplesError(_size_message(where, groups, min_samples, n_dropped))
    allv = np.concatenate(list(groups.values()))
    if np.all(allv == allv[0]):
        raise AnalysisError(f"{where}: the metric is constant ({allv[0]}) over all {allv.size} rows; rank tests are undefined")
    return metric, groups, n_dropped, sub, labels


def _auto_strata(table, by: str) -> list[str]:
    """Other config settings (``section.key``) of a FeatureTable that vary; ``run.seed``
    replicates and stage outcomes (``stop_epoch``) are not strata."""
    if not isinstance(table, FeatureTable):
        return []
    df = table.frame
    return [c for c in table.settings
            if "." in c and c not in (by, "run.seed") and df[c].nunique(dropna=True) > 1]


def compare(
    table,
    by: str,
    metric: str,
    *,
    order=None,
    strata=None,
    n_permutations: int = 9999,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    min_samples: int | None = None,
) -> CompareResult:
    """Compare ``metric`` between the minima grouped by the setting ``by``.

    Args:
        table: :class:`FeatureTable` or DataFrame; rows with NaN in ``by``, ``metric`` or a
            strata column are dropped (counted in ``n_dropped``). ``metric`` may be a bare
            feature name that matches one ``<group>.<name>`` column.
        order: group labels in order (default: sorted); also restricts the groups.
        strata: columns to stratify on (the other grid axes). ``None``: every other config
            setting (``section.key``) of a FeatureTable that varies, ``run.seed`` excepted; none
            for a DataFrame (noted in ``notes``); ``()``: unstratified. To keep extra cells out,
            use :func:`topoland.analysis.comparisons.grid_comparison`.
        min_samples: fewest samples per group (default 2 stratified, 3 unstratified).

    Stratified: :func:`stratified_permutation_test`, Wilcoxon signed-rank when the strata are
    matched pairs, stratum bootstrap CI. Unstratified, two groups: Mann-Whitney U, permutation
    test on the difference of means, Cliff's delta and a bootstrap CI; more groups:
    Kruskal-Wallis and pairwise Mann-Whitney with Holm correction.
    """
    unstratified_note = strata is None and not isinstance(table, FeatureTable)
    strata = _auto_strata(table, by) if strata is None else [strata] if isinstance(strata, str) else list(strata)
    if by in strata:
        raise AnalysisError(f"compare: {by!r} cannot be both the grouping column and a stratum")
    if strata:
        return _compare_stratified(table, by, metric, order, strata, n_permutations, n_boot, level, seed,
                                   2 if min_samples is None else min_samples)
    metric, groups, n_dropped, _, _ = _groups(table, by, metric, order, 3 if min_samples is None else min_samples)
    labels = list(groups)
    n = {k: int(v.size) for k, v in groups.items()}
    if len(groups) == 2:
        a, b = groups[labels[0]], groups[labels[1]]
        mw = sps.mannwhitneyu(a, b, alternative="two-sided")
        diff, perm_p, exact = permutation_test_means(a, b, n_permutations=n_permutations, seed=seed)
        lo, hi = bootstrap_mean_diff_ci(a, b, n_boot=n_boot, level=level, seed=seed)
        notes = [] if exact else [f"permutation p from {n_permutations} random relabellings"]
        if unstratified_note:
            notes.append("unstratified: a plain DataFrame names no other settings (give strata=[...])")
        total = math.comb(a.size + b.size, a.size)
        return CompareResult(
            by=by, metric=metric, test="mann-whitney", groups=labels, n=n,
            statistic=float(mw.statistic), p_value=float(mw.pvalue), assumptions=ASSUMPTIONS_TWO,
            n_dropped=n_dropped, mean_diff=diff, ci_low=lo, ci_high=hi, ci_level=level,
            cliffs_delta=cliffs_delta(a, b), perm_p_value=perm_p, n_permutations=n_permutations,
            perm_exact=exact, n_boot=n_boot, notes=notes,
            p_min=(2 if a.size == b.size else 1) / total if exact else permutation_p_min(n_permutations),
        )
    kw = sps.kruskal(*groups.values())
    rows = []
    for la, lb in itertools.combinations(labels, 2):
        a, b = groups[la], groups[lb]
        mw = sps.mannwhitneyu(a, b, alternative="two-sided")
        rows.append({"group_a": la, "group_b": lb, "n_a": a.size, "n_b": b.size,
                     "statistic": float(mw.statistic), "p_value": float(mw.pvalue),
                     "mean_diff": float(a.mean() - b.mean()), "cliffs_delta": cliffs_delta(a, b)})
    pw = pd.DataFrame(rows)
    pw["p_holm"] = holm(pw["p_value"].to_numpy())
    return CompareResult(
        by=by, metric=metric, test="kruskal-wallis", groups=labels, n=n,
        statistic=float(kw.statistic), p_value=float(kw.pvalue), assumptions=ASSUMPTIONS_MANY,
        n_dropped=n_dropped, pairwise=pw,
    )


def _stratum_codes(sub: pd.DataFrame, strata: list[str]) -> np.ndarray:
    keys = sub[strata].astype(str).agg("\x1f".join, axis=1)
    return pd.factorize(keys)[0]


def _compare_stratified(table, by, metric, order, strata, n_permutations, n_boot, level, seed, min_samples):
    metric, groups, n_dropped, sub, labels = _groups(table, by, metric, order, min_samples, strata)
    where = f"compare(by={by!r}, metric={metric!r}, strata={strata})"
    codes = _stratum_codes(sub, strata)
    lab = pd.Categorical(sub[by], categories=labels).codes.astype(np.int64)
    keep = np.zeros(codes.size, dtype=bool)
    for c in np.unique(codes):
        m = codes == c
        keep[m] = np.unique(lab[m]).size == len(labels)
    n_strata_all = int(np.unique(codes).size)
    x, lab, codes = sub[metric].to_numpy(dtype=float)[keep], lab[keep], codes[keep]
    used = {la: x[lab == i] for i, la in enumerate(labels)}
    n_used_strata = int(np.unique(codes).size)
    if n_used_strata == 0:
        sizes = ", ".join(f"{k}: {v.size}" for k, v in groups.items())
        raise NotEnoughSamplesError(
            f"{where}: no stratum of {strata} holds every group {labels} (group sizes: {sizes}); "
            "the groups differ in the other settings too and cannot be compared fairly")
    if any(v.size < min_samples for v in used.values()):
        raise NotEnoughSamplesError(_size_message(
            where, used, min_samples, n_dropped, f"; {n_strata_all - n_used_strata} strata lacking a group dropped"))
    if np.all(x == x[0]):
        raise AnalysisError(f"{where}: the metric is constant ({x[0]}) over the {x.size} rows used")
    res = stratified_permutation_test(x, lab, codes, n_permutations=n_permutations, seed=seed)
    n = {k: int(v.size) for k, v in used.items()}
    notes = [] if res["exact"] else [f"permutation p from {n_permutations} random within-strata relabellings"]
    if n_strata_all > n_used_strata:
        notes.append(f"{n_strata_all - n_used_strata} of {n_strata_all} strata lack a group and are left out")
    common = dict(by=by, metric=metric, test="stratified-permutation", groups=labels, n=n,
                  statistic=res["statistic"], p_value=res["p_value"], n_dropped=n_dropped,
                  assumptions=ASSUMPTIONS_STRATIFIED.format(strata=", ".join(strata)), n_permutations=n_permutations,
                  perm_exact=res["exact"], notes=notes, strata=list(strata), n_strata=n_used_strata,
                  n_strata_dropped=n_strata_all - n_used_strata, p_min=res["p_min"])
    if len(labels) > 2:
        rows = []
        for la, lb in itertools.combinations(labels, 2):
            r = _compare_stratified(sub, by, metric, [la, lb], strata, n_permutations, n_boot, level, seed, min_samples)
            rows.append({"group_a": la, "group_b": lb, "n_a": r.n[la], "n_b": r.n[lb], "test": r.test,
                         "statistic": r.statistic, "p_value": r.p_value, "p_min": r.p_min,
                         "mean_diff": r.mean_diff, "cliffs_delta": r.cliffs_delta, "wilcoxon_p": r.wilcoxon_p,
                         "n_strata": r.n_strata})
        pw = pd.DataFrame(rows)
        pw["p_holm"] = holm(pw["p_value"].to_numpy())
        return CompareResult(**common, pairwise=pw)
    strata_idx = [np.flatnonzero(codes == c) for c in np.unique(codes)]
    diffs = np.array([x[i][lab[i] == 0].mean() - x[i][lab[i] == 1].mean() for i in strata_idx])
    deltas = np.array([cliffs_delta(x[i][lab[i] == 0], x[i][lab[i] == 1]) for i in strata_idx])
    rng = np.random.default_rng(seed)
    boot = diffs[rng.integers(0, diffs.size, size=(n_boot, diffs.size))].mean(axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    w_stat = w_p = None
    if all(i.size == 2 for i in strata_idx) and np.any(diffs != 0):
        w = sps.wilcoxon(diffs, alternative="two-sided")
        w_stat, w_p = float(w.statistic), float(w.pvalue)
    return CompareResult(**common, mean_diff=float(diffs.mean()), ci_low=float(lo), ci_high=float(hi),
                         ci_level=level, cliffs_delta=float(deltas.mean()), n_boot=n_boot,
                         wilcoxon_statistic=w_stat, wilcoxon_p=w_p)


# --------------------------------------------------------------------------- correlations


def _rank_rows(m: np.ndarray) -> np.ndarray:
    return sps.rankdata(m, axis=1)


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    den = np.sqrt((xc * xc).sum(axis=1) * (yc * yc).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (xc * yc).sum(axis=1) / np.where(den > 0, den, 1.0), np.nan)


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rho of each row pair of ``x, y (B, n)``; NaN where a row is constant."""
    return _pearson_rows(_rank_rows(x), _rank_rows(y))


def _kendall_rows(x: np.ndarray, y: np.ndarray, chunk_elems: int = 4_000_000) -> np.ndarray:
    """Kendall tau-b of each row pair of ``x, y (B, n)`` (O(B n^2)); NaN where a row is constant."""
    B, n = x.shape
    out = np.empty(B)
    step = max(1, chunk_elems // (n * n))
    n0 = n * (n - 1) / 2
    for s in range(0, B, step):
        xs, ys = x[s:s + step], y[s:s + step]
        dx = np.sign(xs[:, :, None] - xs[:, None, :])
        dy = np.sign(ys[:, :, None] - ys[:, None, :])
        S = (dx * dy).sum(axis=(1, 2)) / 2
        tx = ((dx == 0).sum(axis=(1, 2)) - n) / 2
        ty = ((dy == 0).sum(axis=(1, 2)) - n) / 2
        den = np.sqrt((n0 - tx) * (n0 - ty))
        out[s:s + step] = np.where(den > 0, S / np.where(den > 0, den, 1.0), np.nan)
    return out


def correlations(
    table,
    features=None,
    targets=("gap", "test_acc"),
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    min_samples: int = 5,
    p_adjust: str = "holm",
) -> pd.DataFrame:
    """Spearman and Kendall correlation of every feature with every target.

    Args:
        table: :class:`FeatureTable` or DataFrame.
        features: columns (default: every group column of a FeatureTable).
        targets: target columns (default ``("gap", "test_acc")``; ``gap`` in nats).
        min_samples: fewest complete rows per (feature, target) pair.
        p_adjust: "holm" (default) or "bh": the adjustment over the table, per method.

    Returns:
        One row per (feature, target): ``n``, ``spearman_rho``, ``spearman_p``,
        ``spearman_p_adj``, ``spearman_ci_low/high``, the same for ``kendall_*`` (tau-b),
        ``n_boot_valid``, ``note``, ``p_adjust`` and ``finding`` (Spearman adjusted p < 0.05).
        A constant feature gets NaN statistics with the note "constant ..." and is left out of
        the adjustment. ``.attrs["assumptions"]`` states the assumptions.

    Raises :class:`AnalysisError` when a feature comes from the test split.
    """
    df = as_frame(table)
    if features is None:
        if not isinstance(table, FeatureTable):
            raise AnalysisError("correlations needs features=[columns] when given a plain DataFrame")
        features = table.columns()
    features = [resolve_column(df, f) for f in ([features] if isinstance(features, str) else features)]
    targets = [resolve_column(df, t) for t in ([targets] if isinstance(targets, str) else targets)]
    if not features:
        raise AnalysisError("correlations got no feature columns")
    check_feature_columns(features, where="correlations")
    if p_adjust not in P_ADJUST_METHODS:
        raise AnalysisError(f"p-value adjustment {p_adjust!r} is unknown; choose from {P_ADJUST_METHODS}")
    rng = np.random.default_rng(seed)
    alpha = (1 - level) / 2
    rows = []
    for t in targets:
        for f in features:
            if f == t:
                continue
            sub = df[[f, t]].dropna()
            x, y = sub[f].to_numpy(dtype=float), sub[t].to_numpy(dtype=float)
            if x.size < min_samples:
                raise NotEnoughSamplesError(
                    f"correlations: feature {f!r} and target {t!r} have {x.size} complete rows; needs at least {min_samples}"
                )
            row = {"feature": f, "target": t, "n": x.size}
            const = [name for name, v in ((f, x), (t, y)) if np.all(v == v[0])]
            if const:
                row.update({k: np.nan for k in (
                    "spearman_rho", "spearman_p", "spearman_ci_low", "spearman_ci_high",
                    "kendall_tau", "kendall_p", "kendall_ci_low", "kendall_ci_high")},
                    n_boot_valid=0, note=f"constant {const[0]!r}: correlation undefined")
                rows.append(row)
                continue
            sp = sps.spearmanr(x, y)
            kd = sps.kendalltau(x, y)
            idx = rng.integers(0, x.size, size=(n_boot, x.size))
            bs = _spearman_rows(x[idx], y[idx])
            bk = _kendall_rows(x[idx], y[idx])
            valid = ~np.isnan(bs)  # same resamples are degenerate for both
            if valid.sum() < 2:
                raise NotEnoughSamplesError(
                    f"correlations: only {int(valid.sum())} of {n_boot} bootstrap resamples of {f!r} vs {t!r} are non-constant"
                )
            s_lo, s_hi = np.quantile(bs[valid], [alpha, 1 - alpha])
            k_lo, k_hi = np.quantile(bk[valid], [alpha, 1 - alpha])
            row.update(spearman_rho=float(sp.statistic), spearman_p=float(sp.pvalue),
                       spearman_ci_low=float(s_lo), spearman_ci_high=float(s_hi),
                       kendall_tau=float(kd.statistic), kendall_p=float(kd.pvalue),
                       kendall_ci_low=float(k_lo), kendall_ci_high=float(k_hi),
                       n_boot_valid=int(valid.sum()), note="")
            rows.append(row)
    out = pd.DataFrame(rows)
    for method in ("spearman", "kendall"):
        out[f"{method}_p_adj"] = adjust_p(out[f"{method}_p"].to_numpy(dtype=float), p_adjust)
    out["p_adjust"] = p_adjust
    out["finding"] = out["spearman_p_adj"] < 0.05
    cols = ["feature", "target", "n",
            "spearman_rho", "spearman_p", "spearman_p_adj", "spearman_ci_low", "spearman_ci_high",
            "kendall_tau", "kendall_p", "kendall_p_adj", "kendall_ci_low", "kendall_ci_high",
            "n_boot_valid", "note", "p_adjust", "finding"]
    out = out[cols]
    out.attrs["assumptions"] = ASSUMPTIONS_CORR
    out.attrs["level"] = level
    return out


# --------------------------------------------------------------------------- diagrams


def _finite(points) -> np.ndarray:
    p = np.asarray(points, dtype=float).reshape(-1, 2)
    return p[np.isfinite(p).all(axis=1)]


def diagram_distance(d1: dict, d2: dict, *, dims=None, order: float = 1.0) -> float:
    """Sum over ``dims`` (default: all present) of the ``order``-Wasserstein distance between
    the finite points of ``d1[dim]`` and ``d2[dim]`` (``(n, 2)`` birth-death arrays; a missing
    dimension is empty), by ``gudhi.hera.wasserstein_distance`` with L-infinity ground metric."""
    from gudhi.hera import wasserstein_distance

    dims = sorted(set(d1) | set(d2)) if dims is None else dims
    total = 0.0
    for k in dims:
        a = _finite(d1.get(k, np.empty((0, 2))))
        b = _finite(d2.get(k, np.empty((0, 2))))
        total += float(wasserstein_distance(a, b, order=order, internal_p=np.inf))
    return total


@dataclass
class DiagramTestResult:
    """Result of :func:`diagram_permutation_test`: ``statistic`` is the mean between-group
    distance, ``null`` its permutation distribution, ``distances`` the ``(n_a + n_b)``-square
    matrix (group a first)."""

    statistic: float
    p_value: float
    n_a: int
    n_b: int
    n_permutations: int
    exact: bool
    null: np.ndarray
    distances: np.ndarray
    assumptions: str

    @property
    def p_min(self) -> float:
        """Smallest attainable p: enumerated, ``1 / T`` (``2 / T`` for equal groups, whose swap
        gives the same between-group distance); else ``1 / (1 + n_permutations)``."""
        if not self.exact:
            return permutation_p_min(self.n_permutations)
        return (2 if self.n_a == self.n_b else 1) / self.n_permutations

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([{"test": "diagram-permutation", "n_a": self.n_a, "n_b": self.n_b,
                              "statistic": self.statistic, "p_value": self.p_value, "p_min": self.p_min,
                              "n_permutations": self.n_permutations, "exact": self.exact}])


def _between_means(D: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Mean of ``D[i, j]`` over i in a, j not in a, for each mask row ``(P, n)``."""
    m = masks.astype(float)
    n_a = m[0].sum()
    n_b = m.shape[1] - n_a
    return np.einsum("pi,ij,pj->p", m, D, 1.0 - m) / (n_a * n_b)


def diagram_permutation_test(
    diagrams_a,
    diagrams_b,
    *,
    distance: Callable[[dict, dict], float] | None = None,
    n_permutations: int = 999,
    seed: int = 0,
    min_samples: int = 2,
) -> DiagramTestResult:
    """Permutation test of the mean Wasserstein distance between two groups of diagrams.

    Args:
        diagrams_a, diagrams_b: sequences of diagrams ``{dim: (n, 2) array}`` (one per minimum).
        distance: ``f(d1, d2) -> float``, symmetric; default :func:`diagram_distance`.
        n_permutations: random relabellings (exact enumeration when ``C(n, n_a)`` is smaller).

    The pairwise distance matrix is computed once; each relabelling reuses it.
    """
    dist = distance or diagram_distance
    A, B = list(diagrams_a), list(diagrams_b)
    if len(A) < min_samples or len(B) < min_samples:
        raise NotEnoughSamplesError(
            f"diagram_permutation_test got {len(A)} and {len(B)} diagrams; each group needs at least {min_samples}"
        )
    allv = A + B
    n = len(allv)
    D = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            D[i, j] = D[j, i] = float(dist(allv[i], allv[j]))
    if not np.isfinite(D).all():
        raise AnalysisError("diagram_permutation_test: the distance returned a non-finite value")
    observed_mask = np.zeros((1, n), dtype=bool)
    observed_mask[0, : len(A)] = True
    stat = float(_between_means(D, observed_mask)[0])
    masks, exact = _memberships(n, len(A), n_permutations, np.random.default_rng(seed))
    null = _between_means(D, masks)
    return DiagramTestResult(
        statistic=stat, p_value=_perm_p(stat, null, exact), n_a=len(A), n_b=len(B),
        n_permutations=int(null.size), exact=exact, null=null, distances=D,
        assumptions=ASSUMPTIONS_DIAGRAM,
    )
