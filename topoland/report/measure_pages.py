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


def _ci(t: pd.DataFrame, col: str, scale: float = 1.0) -> pd.Series:
    lo, hi = t.get(f"{col}_ci_low"), t.get(f"{col}_ci_high")
    if lo is None or hi is None:
        return (t[col] * scale).map(fmt)
    return pd.Series([f"{fmt(v * scale)} [{fmt(a * scale)}, {fmt(b * scale)}]"
                      for v, a, b in zip(t[col], lo, hi)], index=t.index)


def _axes(t: pd.DataFrame) -> list[str]:
    return [c for c in t.columns if c.startswith("tau_") and c not in ("tau_p_value", "tau_p_adjusted")
            and not c.endswith(("_ci_low", "_ci_high"))]


def score_summary(scores: pd.DataFrame) -> pd.DataFrame:
    """The printed score table: one row per measure, ranked by Ψ (intervals in brackets; PGDL x 100)."""
    t = scores.sort_values("psi", ascending=False, na_position="last").reset_index(drop=True)
    show = pd.DataFrame({"rank": np.arange(1, len(t) + 1), "measure": t["measure"], "kind": t.get("kind", "")})
    show["tau"] = _ci(t, "kendall_tau")
    show["psi"] = _ci(t, "psi")
    for ax in _axes(t):
        show[ax] = t[ax].map(fmt)
    show["pgdl x100"] = _ci(t, "pgdl", 100.0)
    show["robust sign error"] = t["robust_sign_error"].map(fmt)
    if "tau_p_adjusted" in t:
        show["tau p_adj"] = t["tau_p_adjusted"].map(fmt)
    if "held_out_psi" in t:
        show["held-out psi"] = t["held_out_psi"].map(fmt)
        show["held-out tau"] = t["held_out_tau"].map(fmt)
    return show


def measure_pages(w: Writer, scores: pd.DataFrame | None, frame: pd.DataFrame,
                  predictions: pd.DataFrame | None, gap: str, names: dict) -> None:
    """The score table pages and the top measures against ``gap`` (``frame``: the feature table's
    rows; ``predictions``: the supervised baselines' out-of-fold predictions, by cell_id)."""
    title = "Measures vs generalization"
    if scores is None or scores.empty:
        w.note("Analysis", f"{title}: no measure scores (see the analysis notes)")
        return
    show = score_summary(scores)
    n = int(scores["n_models"].max()) if "n_models" in scores else len(frame)
    w.table_pages(title, show, col_width=13, footer=textwrap.fill(
        f"{n} models; gap = {gap}. tau: Kendall tau-a of measure and gap over all pairs; psi: Jiang et al.'s "
        "granulated tau, the mean over axes of the tau within groups that agree on every other axis (one "
        "column per axis); pgdl x100: conditional mutual information of the pair orderings given two "
        "hyperparameters, minimum over pairs (the NeurIPS 2020 competition's score); robust sign error: "
        "the worst share of pairs differing in one hyperparameter that the measure orders wrongly. "
        "Brackets: percentile bootstrap over models. tau p_adj: permutation p, adjusted over the measures. "
        "supervised.<block>: out-of-fold ridge prediction of the gap from that block (each model's "
        "prediction never saw its row); held-out: orientation and fits chosen on the discovery seeds, "
        "scored on the others. Larger tau/psi/pgdl = better predictor; a negative psi means the measure "
        "ranks the gap backwards.", 230))
    top = scores.assign(_a=scores["psi"].abs()).sort_values("_a", ascending=False).head(_TOP)["measure"].tolist()
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
