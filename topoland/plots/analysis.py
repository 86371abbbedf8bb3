"""Figures of the generalization analysis. Each returns the matplotlib Axes it drew on."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from scipy import stats as sps

from topoland.analysis.classifiers import pivot_classifier_table
from topoland.analysis.features import AnalysisError, as_frame, resolve_column
from topoland.errors import NotEnoughSamplesError

__all__ = ["plot_feature_vs_target", "plot_grouped", "plot_classifier_table"]


def _ax(ax):
    return ax if ax is not None else plt.subplots()[1]


def plot_feature_vs_target(table, feature: str, target: str = "gap", *, hue: str | None = None,
                           ax=None, **kw):
    """Scatter of ``feature`` (x) against ``target`` (y), one point per minimum, with
    Spearman's rho (and its unadjusted p: the family's adjusted p is in the correlations table)
    and Kendall's tau (on complete rows) in the title. ``hue``: optional
    setting column colouring the points. ``kw`` goes to ``seaborn.scatterplot``."""
    df = as_frame(table)
    feature, target = resolve_column(df, feature), resolve_column(df, target)
    cols = [feature, target] + ([hue] if hue else [])
    sub = df[cols].dropna()
    if len(sub) < 3:
        raise NotEnoughSamplesError(f"plot_feature_vs_target: {len(sub)} complete rows of {feature!r} vs {target!r}; needs 3")
    ax = _ax(ax)
    sns.scatterplot(data=sub, x=feature, y=target, hue=hue, ax=ax, **kw)
    x, y = sub[feature].to_numpy(float), sub[target].to_numpy(float)
    if np.all(x == x[0]) or np.all(y == y[0]):
        ax.set_title(f"{feature} vs {target} (n={len(sub)}; constant: no rank correlation)")
    else:
        rho = sps.spearmanr(x, y)
        tau = sps.kendalltau(x, y)
        ax.set_title(f"Spearman ρ = {rho.statistic:.2f} (unadjusted p={rho.pvalue:.2g}), "
                     f"Kendall τ = {tau.statistic:.2f}, n = {len(sub)}")
    ax.set_xlabel(feature)
    ax.set_ylabel(target)
    return ax


def plot_grouped(table, by: str, metric: str, *, ax=None, strip: bool = True, **kw):
    """Box plot of ``metric`` per value of the setting ``by``, with the points overlaid
    (strip plot) and the group sizes in the tick labels."""
    df = as_frame(table)
    if by not in df.columns:
        raise AnalysisError(f"plot_grouped: column {by!r} is not in the table")
    metric = resolve_column(df, metric)
    sub = df[[by, metric]].dropna()
    if sub.empty:
        raise NotEnoughSamplesError(f"plot_grouped: no complete rows of {by!r} and {metric!r}")
    order = sorted(pd.unique(sub[by]), key=lambda v: (str(type(v)), v))
    sub = sub.assign(**{by: sub[by].astype(str)})
    labels = [str(o) for o in order]
    ax = _ax(ax)
    sns.boxplot(data=sub, x=by, y=metric, order=labels, ax=ax, color="0.85", showfliers=not strip, **kw)
    if strip:
        sns.stripplot(data=sub, x=by, y=metric, order=labels, ax=ax, color="0.2", size=3, jitter=0.2)
    counts = sub[by].value_counts()
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels([f"{lab}\n(n={counts[lab]})" for lab in labels])
    ax.set_xlabel(by)
    ax.set_ylabel(metric)
    return ax


def plot_classifier_table(result: pd.DataFrame, *, ax=None, cmap: str = "viridis", digits: int = 2, **kw):
    """Heat map of mean accuracy, rows = feature groups, columns = targets, each cell
    annotated with the mean, "± <se> clf" (standard error across the classifiers), "± <se> cv"
    (cross-validation standard error of the mean) and "*" when the adjusted permutation
    p-value is < 0.05 (a finding). ``result``: the tidy frame of
    :func:`topoland.analysis.classifier_table`."""
    need = {"group", "target", "mean", "se_across_classifiers", "cv_se"}
    if not need <= set(result.columns):
        raise AnalysisError(f"plot_classifier_table needs columns {sorted(need)}, got {list(result.columns)}")
    mean = pivot_classifier_table(result, "mean")
    se = pivot_classifier_table(result, "se_across_classifiers")
    cv = pivot_classifier_table(result, "cv_se")
    p = pivot_classifier_table(result, "p_adjusted") if "p_adjusted" in result.columns else None
    annot = np.empty(mean.shape, dtype=object)
    for i in range(mean.shape[0]):
        for j in range(mean.shape[1]):
            m = mean.iat[i, j]
            if pd.isna(m):
                annot[i, j] = "n/a"
                continue
            star = "*" if p is not None and pd.notna(p.iat[i, j]) and p.iat[i, j] < 0.05 else ""
            annot[i, j] = (f"{m:.{digits}f}{star}\n± {se.iat[i, j]:.{digits}f} clf\n"
                           f"± {cv.iat[i, j]:.{digits}f} cv")
    ax = _ax(ax)
    sns.heatmap(mean.astype(float), annot=annot, fmt="", vmin=0.0, vmax=1.0, cmap=cmap, ax=ax,
                cbar_kws={"label": "mean CV accuracy"}, **kw)
    ax.set_xlabel("target")
    ax.set_ylabel("feature group")
    return ax
