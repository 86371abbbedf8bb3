"""Permutation tests and effect sizes: Cliff's delta, the permutation test of a difference of
means and its bootstrap interval, and the permutation test within strata.

Conventions (shared by :mod:`~topoland.analysis.group_tests`, :mod:`~topoland.analysis.correlation`
and :mod:`~topoland.analysis.diagrams`):

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
- Families of tests are adjusted by :func:`~topoland.analysis.multiple.adjust_p`: Holm (family-wise
  error) or Benjamini-Hochberg (false discovery rate); NaN p-values stay NaN and do not count.
- Bootstrap intervals are percentile intervals.
- Every result has an ``assumptions`` text. Too few samples raise
  :class:`~topoland.errors.NotEnoughSamplesError` naming the given and needed counts.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd

from topoland.analysis.features import AnalysisError
from topoland.analysis.multiple import permutation_p_min
from topoland.errors import NotEnoughSamplesError

__all__ = [
    "cliffs_delta",
    "permutation_test_means",
    "bootstrap_mean_diff_ci",
    "stratified_permutation_test",
]

_EPS_TIE = 100 * np.finfo(float).eps


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
