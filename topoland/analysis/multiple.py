"""Multiple testing: adjusted p-values of a family of tests and the permutation counts it needs.

- Families of tests are adjusted by :func:`adjust_p`: Holm (family-wise error) or
  Benjamini-Hochberg (false discovery rate); NaN p-values stay NaN and do not count.
- :func:`permutation_p_min` is the smallest p a test by random relabellings can return;
  :func:`permutations_for_family` the fewest relabellings whose smallest p survives Holm.
"""
from __future__ import annotations

import math

import numpy as np

from topoland.analysis.features import AnalysisError

__all__ = [
    "holm",
    "benjamini_hochberg",
    "adjust_p",
    "P_ADJUST_METHODS",
    "permutation_p_min",
    "permutations_for_family",
]


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
