"""Comparison of a metric between groups of minima (:func:`compare`): rank tests, permutation
tests (stratified on the other settings by default), effect sizes and bootstrap intervals.

Conventions: see :mod:`topoland.analysis.stats`.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as sps

from topoland.analysis.features import AnalysisError, FeatureTable, as_frame, resolve_column
from topoland.analysis.multiple import holm, permutation_p_min
from topoland.analysis.stats import (bootstrap_mean_diff_ci, cliffs_delta, permutation_test_means,
                                     stratified_permutation_test)
from topoland.errors import NotEnoughSamplesError

__all__ = ["CompareResult", "compare"]

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
