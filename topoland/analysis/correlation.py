"""Rank correlations of features with targets over minima (:func:`correlations`): Spearman and
Kendall, bootstrap intervals, p-values adjusted over the table.

Conventions: see :mod:`topoland.analysis.stats`.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps

from topoland.analysis.features import AnalysisError, FeatureTable, as_frame, check_feature_columns, resolve_column
from topoland.analysis.multiple import P_ADJUST_METHODS, adjust_p
from topoland.errors import NotEnoughSamplesError

__all__ = ["correlations"]

ASSUMPTIONS_CORR = (
    "Pairs (feature, target) are independent across minima; only rows complete for the pair "
    "are used. Spearman's rho and Kendall's tau-b measure monotone association (ties handled); "
    "p-values from scipy (asymptotic for large n). Confidence intervals: percentile bootstrap "
    "over rows; resamples in which a variable is constant are discarded (n_boot_valid). "
    "p-values are adjusted over the whole table (every feature and target), separately per "
    "method: Holm (family-wise error, any dependence) by default, or Benjamini-Hochberg (false "
    "discovery rate, independence or positive dependence)."
)


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
