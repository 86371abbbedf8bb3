"""The report's "Measures vs generalization" pages, from the analysis stage's ``scores`` table:
every measure ranked by Ψ with its Kendall tau, per-axis taus, PGDL score and robust sign error
(bootstrap intervals), the supervised baselines in the same table, the held-out scores, and
each top measure against the gap."""
from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd

from topoland.report.common import fmt
from topoland.report.document import MIN_FONT_PT, Writer

__all__ = ["measure_pages"]

_TOP = 6   # measures drawn against the gap


def _ci(t: pd.DataFrame, col: str, scale: float = 1.0, digits: int = 2) -> pd.Series:
    """``"0.41 [0.05, 0.68]"``: the score and its bootstrap interval, ``digits`` decimals."""
    def f(v):
        return "–" if not np.isfinite(v) else f"{v * scale:.{digits}f}"
    lo, hi = t.get(f"{col}_ci_low"), t.get(f"{col}_ci_high")
    if lo is None or hi is None:
        return t[col].map(f)
    return pd.Series([f"{f(v)} [{f(a)}, {f(b)}]" for v, a, b in zip(t[col], lo, hi)], index=t.index)


def _two(v) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{v:.2f}"


def _axes(t: pd.DataFrame) -> list[str]:
    return [c for c in t.columns if c.startswith("tau_") and c not in ("tau_p_value", "tau_p_adjusted")
            and not c.endswith(("_ci_low", "_ci_high", "_boot_discarded"))]


def _ranked(scores: pd.DataFrame) -> pd.DataFrame:
    """Ranked by |Ψ| (a measure may rank the gap backwards: its sign is in the table, and the
    held-out column says whether an orientation chosen on other seeds holds)."""
    return (scores.assign(_a=scores["psi"].abs()).sort_values("_a", ascending=False, na_position="last")
            .drop(columns="_a").reset_index(drop=True))


def score_summary(scores: pd.DataFrame) -> pd.DataFrame:
    """The printed score table: one row per measure ranked by |Ψ| (intervals in brackets; PGDL x 100)."""
    t = _ranked(scores)
    show = pd.DataFrame({"rank": np.arange(1, len(t) + 1), "measure": t["measure"], "kind": t.get("kind", "")})
    show["tau"] = _ci(t, "kendall_tau")
    show["psi"] = _ci(t, "psi")
    show["pgdl x100"] = _ci(t, "pgdl", 100.0, 1)
    show["sign err worst"] = t["robust_sign_error"].map(_two)
    if "mean_sign_error" in t:
        show["sign err mean"] = t["mean_sign_error"].map(_two)
    if "tau_p_adjusted" in t:
        show["tau p_adj"] = t["tau_p_adjusted"].map(fmt)
    if "held_out_psi" in t:
        show["held-out psi"] = t["held_out_psi"].map(_two)
    if "held_out_p_adjusted" in t:   # (held-out tau: in scores.csv; the page has no room for it)
        show["held-out p_adj"] = t["held_out_p_adjusted"].map(fmt)
    return show


def axis_summary(scores: pd.DataFrame) -> pd.DataFrame:
    """Every measure's tau along each axis (the terms of Ψ), in the order of :func:`score_summary`."""
    t = _ranked(scores)
    show = pd.DataFrame({"rank": np.arange(1, len(t) + 1), "measure": t["measure"], "psi": t["psi"].map(_two)})
    for ax in _axes(t):
        show[ax] = t[ax].map(_two)
    return show


def measure_pages(w: Writer, scores: pd.DataFrame | None, frame: pd.DataFrame,
                  predictions: pd.DataFrame | None, gap: str, names: dict) -> None:
    """The score table pages and the top measures against ``gap`` (``frame``: the feature table's
    rows; ``predictions``: the supervised baselines' out-of-fold predictions, by cell_id)."""
    title = "Measures vs generalization"
    if scores is None or scores.empty:
        w.note("Analysis", f"{title}: no measure scores (see the analysis notes)")
        return
    n = int(scores["n_models"].max()) if "n_models" in scores else len(frame)
    w.table_pages(title, score_summary(scores), col_width=8, footer=textwrap.fill(
        f"{n} models, gap = {gap}; ranked by |psi|. tau: Kendall tau-a; psi: Jiang et al.'s granulated tau "
        "(per-axis terms on the next pages); pgdl: the NeurIPS 2020 competition's conditional mutual "
        "information (ignores the sign); sign err: share of pairs differing in one setting ordered wrongly, "
        "worst and mean environment. [ ]: bootstrap interval over models. p_adj: permutation p of tau, "
        "adjusted over the measures. supervised.<block>: out-of-fold ridge prediction of the gap. held-out: "
        "orientation and fits from the discovery seeds, scored on the others, with Ψ's permutation p adjusted over "
        "the measures: the column that survives a split and a correction. kind validation: uses the "
        "validation split (held-out data). Definitions: docs/analysis.md.", 200))
    w.table_pages(f"{title}: tau along each axis", axis_summary(scores), col_width=16, footer=textwrap.fill(
        "tau along an axis: the Kendall tau within groups of models that agree on every other setting (seeds "
        "pooled), averaged over the groups; psi is their mean.", 200))
    top = _ranked(scores).head(_TOP)["measure"].tolist()
    data = frame.copy()
    if predictions is not None and not predictions.empty:
        data = data.join(predictions.set_index("cell_id"), how="left")
    top = [m for m in top if m in data.columns]
    if not top or gap not in data:
        return
    fig = w.figure(f"{title}: the top measures against the gap")
    cols = 3
    rows = int(np.ceil(len(top) / cols))
    axes = fig.subplots(rows, cols, squeeze=False,
                        gridspec_kw=dict(left=0.07, right=0.98, top=0.88, bottom=0.09, wspace=0.3, hspace=0.5))
    psi = scores.set_index("measure")["psi"]
    for k, m in enumerate(top):
        ax = axes[k // cols, k % cols]

        def draw(ax, m=m):
            ok = data[[m, gap]].dropna()
            hue = data.loc[ok.index, "model"].astype(str) if "model" in data else None
            if hue is not None and hue.nunique() > 1:  # an architecture axis: one colour each
                for k, (label, idx) in enumerate(ok.groupby(hue).groups.items()):
                    ax.scatter(ok.loc[idx, m], ok.loc[idx, gap], s=14, color=f"C{k}", label=label)
                ax.legend(fontsize=MIN_FONT_PT, loc="best")
            else:
                ax.scatter(ok[m], ok[gap], s=14, color="C0")
            for cid, x, y in zip(ok.index, ok[m], ok[gap]):
                ax.annotate(names.get(cid, str(cid)), (x, y), fontsize=MIN_FONT_PT, xytext=(2, 2),
                            textcoords="offset points", color="0.45")
            ax.set_xlabel(textwrap.shorten(m, 45))
            ax.set_ylabel(gap)
            ax.set_title(f"psi = {fmt(psi.get(m, np.nan))}")
        w.panel(ax, f"{m} vs {gap}", draw)
    for k in range(len(top), rows * cols):
        axes[k // cols, k % cols].set_axis_off()
    w.save(fig, f"{title}: the top measures against the gap")
