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

from topoland.analysis.features import AnalysisError, FeatureTable, as_frame, resolve_column
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
    "Benjamini-Hochberg adjusts p-values across features, separately per target and method; "
    "it controls the false discovery rate under independence or positive dependence."
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


# --------------------------------------------------------------------------- compare


@dataclass
class CompareResult:
    """Result of :func:`compare`.

    ``test`` is "mann-whitney" (two groups) or "kruskal-wallis" (more); ``statistic`` and
    ``p_value`` belong to it. Two-group fields (``mean_diff``, ``ci_low``, ``ci_high``,
    ``cliffs_delta``, ``perm_p_value``...) are None for more groups, where ``pairwise`` holds
    one row per pair with Holm-adjusted p-values (``p_holm``).
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

    def to_frame(self) -> pd.DataFrame:
        """One row per comparison: the two-group test, or the omnibus row then the pairs."""
        if self.pairwise is None:
            a, b = self.groups
            return pd.DataFrame([{
                "by": self.by, "metric": self.metric, "group_a": a, "group_b": b,
                "n_a": self.n[a], "n_b": self.n[b], "test": self.test,
                "statistic": self.statistic, "p_value": self.p_value,
                "perm_p_value": self.perm_p_value, "mean_diff": self.mean_diff,
                "ci_low": self.ci_low, "ci_high": self.ci_high, "cliffs_delta": self.cliffs_delta,
            }])
        head = pd.DataFrame([{
            "by": self.by, "metric": self.metric, "group_a": "all", "group_b": "",
            "n_a": sum(self.n.values()), "n_b": np.nan, "test": self.test,
            "statistic": self.statistic, "p_value": self.p_value,
        }])
        pw = self.pairwise.assign(by=self.by, metric=self.metric, test="mann-whitney")
        return pd.concat([head, pw], ignore_index=True)


def _groups(table, by: str, metric: str, order, min_samples: int):
    df = as_frame(table)
    if by not in df.columns:
        raise AnalysisError(f"compare: grouping column {by!r} is not in the table")
    metric = resolve_column(df, metric)
    sub = df[[by, metric]]
    ok = sub.notna().all(axis=1)
    n_dropped = int((~ok).sum())
    sub = sub[ok]
    labels = list(order) if order is not None else sorted(pd.unique(sub[by]), key=lambda v: (str(type(v)), v))
    groups = {lab: sub.loc[sub[by] == lab, metric].to_numpy(dtype=float) for lab in labels}
    where = f"compare(by={by!r}, metric={metric!r})"
    if len(groups) < 2:
        raise NotEnoughSamplesError(f"{where}: {len(groups)} group(s) {labels} given; needs at least 2")
    small = [k for k, v in groups.items() if v.size < min_samples]
    if small:
        sizes = ", ".join(f"{k}: {v.size}" for k, v in groups.items())
        raise NotEnoughSamplesError(
            f"{where}: group(s) {', '.join(map(str, small))} have fewer than {min_samples} samples, "
            f"the least each group needs (sizes given: {sizes}; {n_dropped} rows dropped for NaN)"
        )
    allv = np.concatenate(list(groups.values()))
    if np.all(allv == allv[0]):
        raise AnalysisError(f"{where}: the metric is constant ({allv[0]}) over all {allv.size} rows; rank tests are undefined")
    return metric, groups, n_dropped


def compare(
    table,
    by: str,
    metric: str,
    *,
    order=None,
    n_permutations: int = 9999,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    min_samples: int = 3,
) -> CompareResult:
    """Compare ``metric`` between the minima grouped by the setting ``by``.

    Args:
        table: :class:`FeatureTable` or DataFrame; rows with NaN in ``by`` or ``metric`` are
            dropped (counted in ``n_dropped``). ``metric`` may be a bare feature name that
            matches one ``<group>.<name>`` column.
        order: group labels in order (default: sorted); also restricts the groups.
        min_samples: fewest samples per group.

    Two groups: Mann-Whitney U, permutation test on the difference of means, Cliff's delta and
    a bootstrap CI. More groups: Kruskal-Wallis and pairwise Mann-Whitney with Holm correction.
    """
    metric, groups, n_dropped = _groups(table, by, metric, order, min_samples)
    labels = list(groups)
    n = {k: int(v.size) for k, v in groups.items()}
    if len(groups) == 2:
        a, b = groups[labels[0]], groups[labels[1]]
        mw = sps.mannwhitneyu(a, b, alternative="two-sided")
        diff, perm_p, exact = permutation_test_means(a, b, n_permutations=n_permutations, seed=seed)
        lo, hi = bootstrap_mean_diff_ci(a, b, n_boot=n_boot, level=level, seed=seed)
        notes = [] if exact else [f"permutation p from {n_permutations} random relabellings"]
        return CompareResult(
            by=by, metric=metric, test="mann-whitney", groups=labels, n=n,
            statistic=float(mw.statistic), p_value=float(mw.pvalue), assumptions=ASSUMPTIONS_TWO,
            n_dropped=n_dropped, mean_diff=diff, ci_low=lo, ci_high=hi, ci_level=level,
            cliffs_delta=cliffs_delta(a, b), perm_p_value=perm_p, n_permutations=n_permutations,
            perm_exact=exact, n_boot=n_boot, notes=notes,
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
) -> pd.DataFrame:
    """Spearman and Kendall correlation of every feature with every target.

    Args:
        table: :class:`FeatureTable` or DataFrame.
        features: columns (default: every group column of a FeatureTable).
        targets: target columns (default ``("gap", "test_acc")``; ``gap`` in nats).
        min_samples: fewest complete rows per (feature, target) pair.

    Returns:
        One row per (feature, target): ``n``, ``spearman_rho``, ``spearman_p``,
        ``spearman_ci_low/high``, ``spearman_p_bh``, the same for ``kendall_*`` (tau-b),
        ``n_boot_valid`` and ``note``. A constant feature gets NaN statistics with the note
        "constant ..." and is left out of the BH adjustment. ``.attrs["assumptions"]`` states
        the assumptions.
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
        out[f"{method}_p_bh"] = np.nan
        for t in targets:
            sel = (out["target"] == t) & out[f"{method}_p"].notna()
            if sel.any():
                out.loc[sel, f"{method}_p_bh"] = benjamini_hochberg(out.loc[sel, f"{method}_p"].to_numpy())
    cols = ["feature", "target", "n",
            "spearman_rho", "spearman_p", "spearman_p_bh", "spearman_ci_low", "spearman_ci_high",
            "kendall_tau", "kendall_p", "kendall_p_bh", "kendall_ci_low", "kendall_ci_high",
            "n_boot_valid", "note"]
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

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([{"test": "diagram-permutation", "n_a": self.n_a, "n_b": self.n_b,
                              "statistic": self.statistic, "p_value": self.p_value,
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
