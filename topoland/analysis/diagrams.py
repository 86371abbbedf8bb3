"""Diagram-level tests: the distance between two persistence diagrams and the permutation test
of two groups of diagrams (one per minimum).

Conventions: see :mod:`topoland.analysis.stats`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from topoland.analysis.features import AnalysisError
from topoland.analysis.multiple import permutation_p_min
from topoland.analysis.stats import _memberships, _perm_p
from topoland.errors import NotEnoughSamplesError

__all__ = ["DiagramTestResult", "diagram_distance", "diagram_permutation_test"]

ASSUMPTIONS_DIAGRAM = (
    "Diagrams of different minima are independent. Statistic: the mean distance between a "
    "diagram of group a and one of group b. Under the null, group labels are exchangeable; a "
    "large between-group distance means the groups differ. One-sided permutation p-value. "
    "The default distance sums, over homology dimensions, the 1-Wasserstein distance "
    "(gudhi.hera, internal L-infinity ground metric) between the finite points only: essential "
    "(infinite) classes are ignored."
)


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
