"""The report's pages across minima, from the analysis stage: topology vs generalization, rank
correlations, metrics by grid setting, the classifier table (both standard errors, adjusted p,
smallest attainable p), the statistical comparisons, the flatness ordering by batch size, and the
generalization-measure scores (:mod:`~topoland.report.measure_pages`)."""
from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd

from topoland.report.common import fmt
from topoland.report.document import MIN_FONT_PT, Writer
from topoland.report.facts import RunFacts
from topoland.report.measure_pages import measure_pages
from topoland.runs import layout
from topoland.runs.store import RUN_LEVEL

__all__ = ["analysis_pages"]

_SETTINGS_PER_PAGE = 3      # grid settings on one "metrics by grid setting" page
_CELLS_PER_PAGE = 6         # classifier-table cells on one per-classifier page


def _classifier_heatmap(clf: pd.DataFrame, ax) -> None:
    from topoland.analysis import pivot_classifier_table
    from topoland.plots.analysis import plot_classifier_table
    plot_classifier_table(clf, ax=ax)
    ax.grid(False)
    ax.tick_params(axis="y", labelrotation=0)
    mean = pivot_classifier_table(clf, "mean")
    for i in range(mean.shape[0]):
        for j in range(mean.shape[1]):
            if pd.isna(mean.iat[i, j]):
                ax.text(j + 0.5, i + 0.5, "n/a (see notes)", ha="center", va="center", color="0.4")


def _adjust_name(table: pd.DataFrame) -> str:
    method = str(table["p_adjust"].iloc[0]) if "p_adjust" in table and len(table) else "holm"
    return {"holm": "Holm", "bh": "Benjamini–Hochberg"}.get(method, method)


def _classifier_footer(clf: pd.DataFrame) -> str:
    """Chance rates, the permutations and the smallest attainable p of the classifier table."""
    parts = []
    if "chance_majority" in clf:
        chance = clf.groupby("target")["chance_majority"].max()
        parts.append("majority-class chance: " + ", ".join(f"{k} {fmt(v)}" for k, v in chance.items()))
    if "p_min" in clf and clf["p_min"].notna().any():
        m = int(clf["p_value"].notna().sum())
        p_min = float(clf["p_min"].min())
        n_perm = int(clf["n_permutations"].max())
        verdict = ("no cell can be a finding" if p_min * m >= 0.05 else "a cell can be a finding")
        parts.append(f"{n_perm} permutations per cell: smallest attainable p = 1/({n_perm}+1) = {p_min:.3g}; "
                     f"{m} cells in the family, so {verdict} after {_adjust_name(clf)} "
                     f"(p_min × {m} = {p_min * m:.3g})")
    return "; ".join(parts)


def _classifier_se_pages(w: Writer, clf: pd.DataFrame) -> None:
    """Per cell: the mean with both standard errors and the p-values; then, per classifier, its
    accuracy ± cross-validation SE (rows = classifiers, columns = cells, a few cells a page)."""
    need = {"se_across_classifiers", "cv_se", "p_min", "p_adjusted", "finding"}
    if not need <= set(clf.columns):
        w.note("Analysis", f"classifier table written by an older analysis (no {', '.join(sorted(need - set(clf.columns)))}): "
                           "rerun it with --force analysis for both standard errors and adjusted p")
        return
    ok = clf[clf["mean"].notna()]
    if ok.empty:
        return
    summary = pd.DataFrame({
        "group": ok["group"], "target": ok["target"], "mean": ok["mean"].map(fmt),
        "SE across classifiers": ok["se_across_classifiers"].map(fmt), "CV SE of the mean": ok["cv_se"].map(fmt),
        "p": ok["p_value"].map(fmt), "p_min": ok["p_min"].map(fmt), "p_adjusted": ok["p_adjusted"].map(fmt),
        "finding": ok["finding"].map(fmt)})
    w.table_pages("Classifier table: both standard errors and adjusted p", summary, col_width=16,
                  footer="SE across classifiers: std of the classifiers' accuracies / √(number of classifiers), "
                         "the source study's statistic (agreement between classifiers). CV SE: standard error of "
                         "the repeated-CV estimate (Nadeau–Bengio corrected for overlapping folds). "
                         + _classifier_footer(clf))
    names = [c[len("acc_"):] for c in ok.columns if c.startswith("acc_")]
    cols = {f"{r.group} → {r.target}": [f"{fmt(getattr(r, f'acc_{n}'))} ± {fmt(getattr(r, f'cv_se_{n}', np.nan))}"
                                         for n in names] + [f"{fmt(r.mean)} ± {fmt(r.cv_se)}"]
            for r in ok.itertuples(index=False)}
    keys = list(cols)
    chunks = [keys[i:i + _CELLS_PER_PAGE] for i in range(0, len(keys), _CELLS_PER_PAGE)]
    for k, chunk in enumerate(chunks):
        t = "Accuracy ± cross-validation SE per classifier" + (f" ({k + 1}/{len(chunks)})" if len(chunks) > 1 else "")
        df = pd.DataFrame({"classifier": names + ["mean of classifiers"]} | {c: cols[c] for c in chunk})
        w.table_pages(t, df, col_width=18, footer="Each cell: accuracy ± cross-validation standard error of "
                      "that classifier (repeated stratified k-fold, Nadeau–Bengio corrected); last row: the mean "
                      "over the classifiers ± its cross-validation SE.")


def _flatness_page(w: Writer, flat: pd.DataFrame | None) -> None:
    """The small- vs large-batch ordering of the curvature measures, with sign and adjusted p."""
    title = "Flatness by batch size"
    if flat is None or flat.empty:
        w.note("Analysis", f"{title}: no batch-size grid axis with curvature measures compared")
        return
    show = flat.map(fmt) if hasattr(flat, "map") else flat.applymap(fmt)
    w.table_pages(title, show, col_width=16,
                  footer="mean_diff = small-batch minus large-batch mean, over strata of the other grid axes; "
                         "sharpness, top eigenvalue and trace: larger = sharper; log-volume: larger = flatter. "
                         "A reading is a finding only at adjusted p < 0.05; otherwise it is the direction of "
                         "the sample means, not a result.")


def analysis_pages(w: Writer, run: RunFacts) -> dict[str, pd.DataFrame]:
    """Across-minima pages; returns the analysis tables to copy beside the PDF."""
    from topoland.plots.analysis import plot_feature_vs_target, plot_grouped

    d = run.store.stage_dir(RUN_LEVEL, "analysis")
    tables = layout.read_analysis_tables(d)
    ft = layout.read_feature_table(d)
    names = {c: run.names.get(c, c) for c in ft.frame.index}
    frame = ft.frame
    # the headline topology features, each its own column (the loss range beside the activity,
    # so a reader sees whether a relation is the range's)
    tp = [c for c in ("topology.activity_h0", "topology.n_basins", "topology.activity_h0_norm",
                      "topology.loss_range") if c in frame.columns and frame[c].notna().any()]
    targets = [t for t in ("gap", "test_acc") if t in frame.columns]

    # topology vs generalization
    title = "Topology vs generalization"
    if tp and targets:
        fig = w.figure(title)
        axes = fig.subplots(len(tp), len(targets), squeeze=False,
                            gridspec_kw=dict(left=0.07, right=0.98, top=0.88, bottom=0.09, wspace=0.2,
                                             hspace=0.45))
        for i, f in enumerate(tp):
            for j, t in enumerate(targets):
                def draw(ax, f=f, t=t):
                    plot_feature_vs_target(ft, f, t, ax=ax)
                    ax.set_title(textwrap.fill(ax.get_title(), 70))
                    for cid, x, y in zip(frame.index, frame[f], frame[t]):
                        if np.isfinite(x) and np.isfinite(y):
                            ax.annotate(names[cid], (x, y), fontsize=MIN_FONT_PT, xytext=(3, 2),
                                        textcoords="offset points", color="0.3")
                w.panel(axes[i, j], f"{f} vs {t}", draw)
        w.save(fig, title)
    else:
        w.note("Stages not run", f"{title}: no topology feature column or no gap/test_acc target in the "
                                 "feature table (topology stage missing?)")
    corr = tables.get(layout.CORRELATIONS)
    if corr is not None and not corr.empty:
        c = corr.assign(_order=-corr["spearman_rho"].abs().fillna(-1)).sort_values("_order")
        cols = [x for x in ("feature", "target", "n", "spearman_rho", "spearman_p", "spearman_p_adj",
                            "kendall_tau", "kendall_p", "kendall_p_adj", "finding", "note") if x in c.columns]
        show = c[cols].map(fmt) if hasattr(c, "map") else c[cols].applymap(fmt)
        w.table_pages("Rank correlations with generalization", show, col_width=18,
                      footer="Spearman ρ and Kendall τ-b of every feature with each target, sorted by |ρ|; "
                             f"p_adj: {_adjust_name(c)} over every feature and target, per method; "
                             "finding: Spearman p_adj < 0.05 (no feature is computed on the test split).")

    # grouped by each grid setting
    settings = [s for s in ft.settings if s != "run.seed" and frame[s].astype(str).nunique() > 1]
    metrics = ([m for m in ("test_acc", "gap") if m in frame.columns] + tp[:1]
               + [m for m in ("curvature.sharpness", "curvature.top_eigenvalue")
                  if m in frame.columns and frame[m].notna().any()])
    if settings and metrics:
        chunks = [settings[i:i + _SETTINGS_PER_PAGE] for i in range(0, len(settings), _SETTINGS_PER_PAGE)]
        for k, chunk in enumerate(chunks):
            t = "Metrics by grid setting" + (f" ({k + 1}/{len(chunks)})" if len(chunks) > 1 else "")
            fig = w.figure(t)
            axes = fig.subplots(len(chunk), len(metrics), squeeze=False,
                                gridspec_kw=dict(left=0.07, right=0.98, top=0.92, bottom=0.1, wspace=0.3,
                                                 hspace=0.55))
            for i, by in enumerate(chunk):
                for j, m in enumerate(metrics):
                    w.panel(axes[i, j], f"{m} by {by}", lambda ax, by=by, m=m: plot_grouped(ft, by, m, ax=ax))
            w.save(fig, t)
    else:
        w.note("Analysis", "no grid setting varies across the analysed minima: no grouped plots")

    # classifier table
    clf = tables.get(layout.CLASSIFIERS)
    if clf is not None and not clf.empty:
        n_clf = sum(c.startswith("acc_") for c in clf.columns)
        t = "Classifier table"
        fig = w.figure(t)
        ax = fig.add_axes((0.16, 0.1, 0.8, 0.78))
        w.panel(ax, "classifier table", lambda ax: _classifier_heatmap(clf, ax))
        ax.set_title(textwrap.fill(
            f"cross-validated accuracy, mean over {n_clf} classifiers per feature group and target; "
            "± clf: standard error across the classifiers (their agreement, not sampling error); "
            "± cv: cross-validation standard error of the mean (repeated CV, Nadeau–Bengio corrected); "
            f"* finding: permutation p adjusted ({_adjust_name(clf)}) < 0.05", 150))
        fig.text(0.01, 0.005, textwrap.fill(_classifier_footer(clf), 190), fontsize=MIN_FONT_PT,
                 ha="left", va="bottom")
        w.save(fig, t)
        _classifier_se_pages(w, clf)
        for r in clf.itertuples():
            notes = getattr(r, "notes", "")
            if isinstance(notes, str) and notes.startswith("not computed"):
                w.note("Analysis", f"classifier {r.group} → {r.target}: {notes}")
    else:
        w.note("Analysis", "no classifier table (no feature groups or no varying target)")

    comp = tables.get(layout.COMPARISONS)
    if comp is not None and not comp.empty:
        cols = [c for c in ("family", "by", "metric", "group_a", "group_b", "n_a", "n_b", "n_strata", "p_value",
                            "p_min", "p_adjusted", "finding", "wilcoxon_p", "mean_diff", "ci_low", "ci_high",
                            "cliffs_delta") if c in comp.columns]
        show = comp[cols].map(fmt) if hasattr(comp, "map") else comp[cols].applymap(fmt)
        w.table_pages("Statistical comparisons by grid setting", show,
                      footer="Grid axes: grid cells only, labels permuted within strata of the other grid axes "
                             "(mean_diff: mean over strata of mean(a) − mean(b); Wilcoxon signed-rank for matched "
                             "pairs). Extra cells vs grid: matched on the grid axes they share. p_min: the smallest "
                             f"p the test can give. p_adjusted: {_adjust_name(comp)} over all rows; finding: "
                             "p_adjusted < 0.05.")
        if "notes" in comp:
            for (by, note) in comp[["by", "notes"]].dropna().drop_duplicates().itertuples(index=False):
                if note:
                    w.note("Analysis", f"comparisons by {by}: {note}")
        _flatness_page(w, tables.get(layout.FLATNESS))
    else:
        w.note("Analysis", "no statistical comparisons (no grid setting with two or more groups of enough minima)")

    if layout.SCORES in tables:
        from topoland.analysis.population import resolve_gap
        gap = resolve_gap(run.cfg.get("analysis", {}).get("score_gap", "acc_gap"), frame)
        measure_pages(w, tables[layout.SCORES], frame, tables.get(layout.PREDICTIONS), gap, names)

    for g, cells in ft.missing.items():
        if cells:
            w.note("Analysis", f"feature group '{g}' incomplete for " + ", ".join(names.get(c, str(c)) for c in cells))
    for n in layout.read_notes(d):
        w.note("Analysis", str(n))
    tables["features"] = ft.frame.reset_index()
    return tables
