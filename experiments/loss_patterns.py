"""BN vs no BN: how well random binary masks can be drawn into the loss landscape.

    python experiments/loss_patterns.py experiments/loss_patterns.toml [--quick] [--out DIR] [--pdf PATH]

For each BatchNorm setting and seed: train one minimum, then for each fill probability draw a
random mask (seeded) and fit a loss-pattern plane (topoland.landscape.patterns) on the training
split. The fitted grids are evaluated on the test split (``data.eval_samples`` test samples;
the source paper's choice): a pattern is an optimization target, so what it shows on data it
was not fitted to is the measurement. BN vs no BN is compared over seeds, paired by seed (same
data and masks): per seed the mean over fills of each gap, BN minus no BN; a paired t-test with
its t confidence interval of the mean difference, an exact sign-flip test, and Holm's
adjustment over the two gaps (:func:`bn_comparison`).

Writes ``loss_patterns.csv`` (one row per fit: accuracy and loss gap between low and high
cells), ``loss_patterns_bn_test.csv`` (the comparison), figures (PNG) and a PDF report (default
``reports/loss_patterns.pdf``, or ``[output] pdf``): settings and versions, the BN-vs-no-BN gaps
against fill probability (mean +- std over seeds), the comparison, a table of the means and
example patterns. A full run needs at least 5 seeds.
--quick shrinks everything (fills 0.3/0.7, 3 seeds, at most 8x8 masks, 60 steps, 3 epochs,
1000 training samples, 256 test samples) for a smoke run.
"""
from __future__ import annotations

import argparse
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats

from topoland.data import load_dataset
from topoland.landscape.patterns import LossPatternFitter, pattern_gap, random_mask
from topoland.nets.models import build_model
from topoland.train.training import TrainRecipe, train_minimum


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None, help="folder of the CSV and PNG files (default: [output] dir)")
    ap.add_argument("--pdf", default=None, help="PDF report (default: [output] pdf or reports/loss_patterns.pdf)")
    ap.add_argument("--seeds", type=int, default=None, help="use only the first N seeds of the config")
    args = ap.parse_args(argv)
    cfg = tomllib.loads(Path(args.config).read_text())
    d, m, t, p, o = (cfg[k] for k in ("data", "model", "train", "patterns", "output"))
    if args.quick:
        p = {**p, "fills": [0.3, 0.7], "seeds": p["seeds"][:3], "size": [min(8, s) for s in p["size"]],
             "steps": min(60, p["steps"])}
        t = {**t, "epochs": min(3, t["epochs"])}
        d = {**d, "n_train": min(d.get("n_train", 0) or 1000, 1000),
             "eval_samples": min(256, d.get("eval_samples", 256))}
    if args.seeds is not None:
        p = {**p, "seeds": p["seeds"][:args.seeds]}
    if not args.quick and len(p["seeds"]) < MIN_SEEDS:
        print(f"error: patterns.seeds has {len(p['seeds'])} seed(s); the BN vs no BN comparison needs at "
              f"least {MIN_SEEDS} (or pass --quick for a smoke run)", file=sys.stderr)
        return 2
    out = Path(args.out or o["dir"])
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    data = load_dataset(d["name"], seed=d.get("seed", 0), n_train=d.get("n_train") or None,
                        synthetic=d.get("synthetic") or None)
    n_eval = min(d.get("eval_samples", 512) or len(data.y_test), len(data.y_test))
    x_ev, y_ev = data.x_test[:n_eval], data.y_test[:n_eval]      # held out: the fit sees x_train only
    recipe = TrainRecipe(optimizer="sgd", lr=t["lr"], momentum=t["momentum"], epochs=t["epochs"],
                         batch_size=t["batch_size"], weight_decay=t["weight_decay"])
    rows, examples = [], {}
    for bn in p["batchnorm"]:
        for seed in p["seeds"]:
            model = build_model(m["name"], data.input_shape, data.num_classes, seed=seed, batchnorm=bn,
                                **{k: v for k, v in m.items() if k != "name"})
            tr = train_minimum(model, data, recipe, seed=seed, device=o["device"])
            for fill in p["fills"]:
                mask = random_mask(tuple(p["size"]), fill, seed=1000 * seed + int(round(100 * fill)))
                if mask.all() or not mask.any():
                    continue
                t0 = time.perf_counter()
                fit = LossPatternFitter(steps=p["steps"], lr=p["lr"], cells_per_step=p["cells_per_step"],
                                        batch_size=p["batch_size"], clip=p["clip"], init_scale=p["init_scale"],
                                        seed=seed, device=o["device"]).fit(model, data.x_train, data.y_train, mask)
                grids = fit.evaluate(model, x_ev, y_ev, device=o["device"])
                gap = pattern_gap(grids, mask)
                rows.append({"batchnorm": bn, "seed": seed, "fill": fill, "eval_split": "test", "eval_n": n_eval,
                             "cells_high": float(mask.mean()),
                             "minimum_test_acc": tr.metrics["test_acc"], "scale": fit.scale_,
                             "seconds": time.perf_counter() - t0, **gap})
                print(f"bn={bn} seed={seed} fill={fill:.1f}: acc gap {gap['acc_gap']:.3f} "
                      f"loss gap {gap['loss_gap']:.3f}", flush=True)
                if seed == p["seeds"][0] and abs(fill - 0.5) < 0.21 and bn not in examples:
                    examples[bn] = (mask, grids["loss"])
    table = pd.DataFrame(rows)
    table.to_csv(out / "loss_patterns.csv", index=False)
    comparison = bn_comparison(table)
    comparison.to_csv(out / "loss_patterns_bn_test.csv", index=False)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from topoland.plots.patterns import plot_mask, plot_pattern, plot_pattern_gap

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    plot_pattern_gap(table, ax=axes[0], y="acc_gap")
    plot_pattern_gap(table, ax=axes[1], y="loss_gap")
    fig.tight_layout()
    fig.savefig(out / "loss_patterns.png", dpi=120)
    plt.close(fig)
    if examples:
        fig, axes = plt.subplots(len(examples), 2, figsize=(8, 4 * len(examples)), squeeze=False)
        for row, (bn, (mask, loss)) in zip(axes, examples.items()):
            plot_mask(mask, ax=row[0])
            plot_pattern(loss, mask, ax=row[1], clip=p["clip"])
            row[1].set_title(f"loss, batchnorm={bn}")
        fig.tight_layout()
        fig.savefig(out / "example_patterns.png", dpi=120)
        plt.close(fig)
    print(table.groupby(["batchnorm", "fill"])[["acc_gap", "loss_gap"]].mean().to_string())
    print(comparison.to_string(index=False))
    pdf = Path(args.pdf or o.get("pdf") or "reports/loss_patterns.pdf")
    settings = {"config": str(args.config), "quick": args.quick, "data": d, "model": m, "train": t,
                "patterns": p, "device": o["device"], "seconds": time.perf_counter() - t_start, "eval_n": n_eval}
    write_pdf(pdf, table, examples, settings, comparison)
    print(f"wrote {out / 'loss_patterns.csv'}, {out / 'loss_patterns_bn_test.csv'}, figures and {pdf}")
    return 0


#: seeds a full run needs for the BN vs no BN comparison
MIN_SEEDS = 5


def _holm(p) -> np.ndarray:
    """Holm's step-down adjusted p-values of one family ``(m,)`` (NaN entries left out)."""
    p = np.asarray(p, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m, running = len(order), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def _sign_flip_p(d: np.ndarray) -> float:
    """Exact two-sided sign-flip test of mean(d) = 0 over every one of the 2^n sign vectors."""
    n = len(d)
    signs = 1 - 2 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)       # (2^n, n) of +-1
    null = np.abs((signs * d).mean(1))
    return float(np.mean(null >= abs(d.mean()) - 1e-12 * max(1.0, abs(d.mean()))))


def _per_seed(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per seed (index), the mean of ``metric`` over the fills fitted under both BN settings:
    columns False (no BN) and True (BN)."""
    wide = table.pivot_table(index=["seed", "fill"], columns="batchnorm", values=metric).dropna()
    if not {False, True} <= set(wide.columns):
        wide = pd.DataFrame(columns=[False, True], dtype=float)
    return wide.groupby(level="seed").mean()


def bn_comparison(table: pd.DataFrame, metrics=("acc_gap", "loss_gap"), confidence: float = 0.95) -> pd.DataFrame:
    """BN vs no BN over seeds, paired by seed (the same data and masks for both settings).

    table: one row per fit with ``batchnorm`` (bool), ``seed``, ``fill`` and the ``metrics``. Per
    seed, the mean over the fills fitted under both settings gives ``d = BN - no BN``. One row
    per metric: ``n_seeds``, ``mean_no_bn``, ``mean_bn``, ``diff`` (mean d), ``ci_low``/``ci_high``
    (t interval of mean d at ``confidence``), ``t``, ``p`` (paired t-test, two-sided),
    ``p_holm`` (Holm over ``metrics``), ``p_signflip`` (exact sign-flip test, two-sided) and
    ``p_signflip_min`` (its smallest attainable p, 2 / 2^n). Fewer than 2 seeds: NaN statistics.
    """
    rows = []
    for metric in metrics:
        per_seed = _per_seed(table, metric)
        d = (per_seed[True] - per_seed[False]).to_numpy(dtype=float)
        n = len(d)
        row = {"metric": metric, "n_seeds": n, "mean_no_bn": float(per_seed[False].mean()) if n else np.nan,
               "mean_bn": float(per_seed[True].mean()) if n else np.nan, "diff": float(d.mean()) if n else np.nan,
               "ci_low": np.nan, "ci_high": np.nan, "confidence": confidence, "t": np.nan, "p": np.nan,
               "p_signflip": np.nan, "p_signflip_min": np.nan}
        if n >= 2:
            se = float(d.std(ddof=1) / np.sqrt(n))
            half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * se)
            res = stats.ttest_rel(per_seed[True], per_seed[False])
            row |= {"ci_low": row["diff"] - half, "ci_high": row["diff"] + half, "t": float(res.statistic),
                    "p": float(res.pvalue), "p_signflip": _sign_flip_p(d), "p_signflip_min": 2.0 / 2 ** n}
        rows.append(row)
    out = pd.DataFrame(rows)
    out.insert(out.columns.get_loc("p") + 1, "p_holm", _holm(out["p"]))
    return out


def _summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of the gaps per (batchnorm, fill)."""
    g = table.groupby(["batchnorm", "fill"])
    out = g[["acc_gap", "loss_gap", "low_acc", "high_acc"]].mean()
    out["acc_gap_std"] = g["acc_gap"].std()
    out["loss_gap_std"] = g["loss_gap"].std()
    out["seeds"] = g["seed"].nunique()
    return out.reset_index()


def write_pdf(path, table: pd.DataFrame, examples: dict, settings: dict,
              comparison: pd.DataFrame | None = None) -> list[str]:
    """The study's PDF report: settings/versions, the BN-vs-no-BN gap figure, the paired
    comparison over seeds (:func:`bn_comparison`), a table of means, example patterns.
    Returns the page headings."""
    from topoland.plots.patterns import plot_mask, plot_pattern, plot_pattern_gap
    from topoland.report.document import MIN_FONT_PT, pdf_pages, report_figure, save_page, versions_table

    headings = []

    def save(fig, title):
        headings.append(title)
        save_page(pdf, fig, f"loss patterns · page {len(headings)}")

    with pdf_pages(path, title="topoland: loss patterns, BN vs no BN") as pdf:
        title = "Loss patterns: BN vs no BN"
        fig = report_figure(title)
        p = settings["patterns"]
        lines = [f"config: {settings['config']}" + ("  (--quick: smoke settings)" if settings["quick"] else ""),
                 "",
                 "Multi-point optimization (Skorokhodov & Burtsev): a plane origin + s (x right + y up) in",
                 "parameter space (right, up orthogonal and of equal norm) is fitted so that a random binary",
                 "mask shows in the loss: cross-entropy minimized at low cells, maximized (clipped) at high cells.",
                 "acc gap = mean accuracy of low cells - of high cells; loss gap = high - low mean loss (nats).",
                 f"The plane is fitted on the training split; every grid is evaluated on {settings.get('eval_n', '?')} "
                 "held-out test samples (the source paper's choice): a pattern is an optimization target, so "
                 "only its showing on data it was not fitted to measures the landscape.",
                 ""]
        for key in ("data", "model", "train"):
            lines.append(f"[{key}] " + ", ".join(f"{k}={v}" for k, v in settings[key].items()))
        lines.append("[patterns] " + ", ".join(f"{k}={v}" for k, v in p.items()))
        lines += ["", f"device: {settings['device']}", f"fits: {len(table)}; minima: "
                  f"{table[['batchnorm', 'seed']].drop_duplicates().shape[0] if len(table) else 0}",
                  f"wall time: {settings['seconds']:.1f} s"]
        wrapped = []
        for ln in lines:
            wrapped += textwrap.wrap(ln, 95, subsequent_indent="      ") or [""]
        fig.text(0.03, 0.9, "\n".join(wrapped), ha="left", va="top", fontsize=9, linespacing=1.4)
        ax = fig.add_axes((0.68, 0.45, 0.3, 0.43))
        ax.set_axis_off()
        ax.set_title("software", fontsize=10, fontweight="bold")
        tab = ax.table(cellText=[list(r) for r in versions_table()], colLabels=["package", "version"],
                       loc="upper center", cellLoc="left")
        tab.auto_set_font_size(False)
        tab.set_fontsize(MIN_FONT_PT)
        save(fig, title)

        title = "Pattern gap vs fill probability"
        fig = report_figure(title)
        axes = fig.subplots(1, 2, gridspec_kw=dict(left=0.07, right=0.98, top=0.86, bottom=0.14, wspace=0.25))
        if len(table):
            plot_pattern_gap(table, ax=axes[0], y="acc_gap")
            plot_pattern_gap(table, ax=axes[1], y="loss_gap")
            axes[0].set_title("accuracy gap (low - high cells)")
            axes[1].set_title("loss gap (high - low cells, nats)")
        n_seeds = int(table["seed"].nunique()) if len(table) else 0
        fig.text(0.07, 0.03, f"Points: mean over {n_seeds} seed(s) (one minimum and one random mask per seed); "
                 "error bars: standard deviation over seeds (0 with one seed).", fontsize=MIN_FONT_PT)
        save(fig, title)

        if comparison is not None:
            title = "BN vs no BN over seeds"
            fig = report_figure(title)
            ax = fig.add_axes((0.03, 0.76, 0.94, 0.12))
            ax.set_axis_off()
            cols = ["metric", "n_seeds", "mean_no_bn", "mean_bn", "diff", "ci_low", "ci_high", "t", "p", "p_holm",
                    "p_signflip", "p_signflip_min"]
            cells = [[f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v) for v in row]
                     for row in comparison[cols].itertuples(index=False)]
            tab = ax.table(cellText=cells, colLabels=cols, loc="upper center", cellLoc="center")
            tab.auto_set_font_size(False)
            tab.set_fontsize(MIN_FONT_PT)
            conf = float(comparison["confidence"].iloc[0]) if len(comparison) else 0.95
            n = int(comparison["n_seeds"].max()) if len(comparison) else 0
            text = (f"Paired by seed (one minimum per BN setting and seed; the same data and masks): per seed the "
                    f"mean over fills of each gap, diff = BN - no BN, averaged over {n} seed(s). [ci_low, ci_high]: "
                    f"{conf:.0%} t interval of the mean difference. p: paired t-test (two-sided); p_holm: Holm's "
                    "adjustment over the two gaps; p_signflip: exact sign-flip permutation test (two-sided), whose "
                    f"smallest attainable value with n seeds is 2 / 2^n = {2.0 / 2 ** n if n else float('nan'):.3g}. "
                    "A difference is called a finding only at p_holm < 0.05.")
            verdicts = [f"{r.metric}: BN - no BN = {r.diff:.3g}, {conf:.0%} CI [{r.ci_low:.3g}, {r.ci_high:.3g}], "
                        f"Holm p = {r.p_holm:.3g}: " + ("a finding" if r.p_holm < 0.05 else "not a finding")
                        for r in comparison.itertuples() if np.isfinite(r.p_holm)]
            fig.text(0.05, 0.74, "\n".join(textwrap.wrap(text, 120) + [""] + verdicts), ha="left", va="top",
                     fontsize=MIN_FONT_PT + 1, linespacing=1.4)
            axes = fig.subplots(1, len(comparison), squeeze=False,
                                gridspec_kw=dict(left=0.08, right=0.97, top=0.44, bottom=0.08, wspace=0.3))[0]
            for ax, r in zip(axes, comparison.itertuples()):
                per_seed = _per_seed(table, r.metric)
                d = per_seed[True] - per_seed[False]
                ax.axhline(0, color="0.6", lw=0.8)
                ax.plot(d.index, d.to_numpy(), "o", label="one seed")
                if np.isfinite(r.ci_low):
                    ax.errorbar([d.index.max() + 1], [r.diff], yerr=[[r.diff - r.ci_low], [r.ci_high - r.diff]],
                                fmt="s", color="k", capsize=4, label=f"mean, {conf:.0%} CI")
                ticks = list(d.index) + [d.index.max() + 1]
                ax.set_xticks(ticks, [str(int(t)) for t in ticks[:-1]] + ["mean"])
                ax.set_xlabel("seed")
                ax.set_ylabel(f"{r.metric}: BN - no BN")
                ax.legend(fontsize=MIN_FONT_PT)
            save(fig, title)

        if len(table):
            title = "Mean gaps per setting"
            fig = report_figure(title)
            ax = fig.add_axes((0.03, 0.08, 0.94, 0.82))
            ax.set_axis_off()
            summ = _summary(table)
            cells = [[f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v) for v in row]
                     for row in summ.itertuples(index=False)]
            tab = ax.table(cellText=cells, colLabels=list(summ.columns), loc="upper center", cellLoc="center")
            tab.auto_set_font_size(False)
            tab.set_fontsize(MIN_FONT_PT)
            save(fig, title)

        title = "Example patterns"
        fig = report_figure(title)
        if examples:
            axes = fig.subplots(len(examples), 2, squeeze=False,
                                gridspec_kw=dict(left=0.2, right=0.8, top=0.9, bottom=0.05, hspace=0.3))
            for row, (bn, (mask, loss)) in zip(axes, examples.items()):
                plot_mask(mask, ax=row[0])
                row[0].set_title(f"target mask, batchnorm={bn}")
                plot_pattern(loss, mask, ax=row[1], clip=p["clip"])
                row[1].set_title(f"fitted loss, batchnorm={bn}")
        else:
            fig.text(0.5, 0.5, "no example (no fit with a fill probability within 0.21 of 0.5)", ha="center")
        save(fig, title)
    return headings


if __name__ == "__main__":
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    sys.exit(main())
