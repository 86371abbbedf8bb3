"""BN vs no BN: how well random binary masks can be drawn into the loss landscape.

    python experiments/loss_patterns.py experiments/loss_patterns.toml [--quick] [--out DIR] [--pdf PATH]

For each BatchNorm setting and seed: train one minimum, then for each fill probability draw a
random mask (seeded) and fit a loss-pattern plane (topoland.landscape.patterns). Writes a CSV
(one row per fit: accuracy and loss gap between low and high cells), figures (PNG) and a PDF
report (default ``reports/loss_patterns.pdf``, or ``[output] pdf``): settings and versions, the
BN-vs-no-BN gaps against fill probability (mean +- std over seeds), a table of the means and
example patterns.
--quick shrinks everything (fills 0.3/0.7, 1 seed, at most 8x8 masks, 60 steps, 3 epochs,
1000 training samples) for a smoke run.
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

from topoland.data import load_dataset
from topoland.landscape.patterns import LossPatternFitter, pattern_gap, random_mask
from topoland.models import build_model
from topoland.train import TrainRecipe, train_minimum


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
        p = {**p, "fills": [0.3, 0.7], "seeds": p["seeds"][:1], "size": [min(8, s) for s in p["size"]],
             "steps": min(60, p["steps"])}
        t = {**t, "epochs": min(3, t["epochs"])}
        d = {**d, "n_train": min(d.get("n_train", 0) or 1000, 1000),
             "eval_samples": min(256, d.get("eval_samples", 256))}
    if args.seeds is not None:
        p = {**p, "seeds": p["seeds"][:args.seeds]}
    out = Path(args.out or o["dir"])
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    data = load_dataset(d["name"], seed=d.get("seed", 0), n_train=d.get("n_train") or None,
                        synthetic=d.get("synthetic") or None)
    n_eval = min(d.get("eval_samples", 512), len(data.y_train))
    x_ev, y_ev = data.x_train[:n_eval], data.y_train[:n_eval]
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
                rows.append({"batchnorm": bn, "seed": seed, "fill": fill, "cells_high": float(mask.mean()),
                             "minimum_test_acc": tr.metrics["test_acc"], "scale": fit.scale_,
                             "seconds": time.perf_counter() - t0, **gap})
                print(f"bn={bn} seed={seed} fill={fill:.1f}: acc gap {gap['acc_gap']:.3f} "
                      f"loss gap {gap['loss_gap']:.3f}", flush=True)
                if seed == p["seeds"][0] and abs(fill - 0.5) < 0.21 and bn not in examples:
                    examples[bn] = (mask, grids["loss"])
    table = pd.DataFrame(rows)
    table.to_csv(out / "loss_patterns.csv", index=False)

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
    pdf = Path(args.pdf or o.get("pdf") or "reports/loss_patterns.pdf")
    settings = {"config": str(args.config), "quick": args.quick, "data": d, "model": m, "train": t,
                "patterns": p, "device": o["device"], "seconds": time.perf_counter() - t_start}
    write_pdf(pdf, table, examples, settings)
    print(f"wrote {out / 'loss_patterns.csv'}, figures and {pdf}")
    return 0


def _summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of the gaps per (batchnorm, fill)."""
    g = table.groupby(["batchnorm", "fill"])
    out = g[["acc_gap", "loss_gap", "low_acc", "high_acc"]].mean()
    out["acc_gap_std"] = g["acc_gap"].std()
    out["loss_gap_std"] = g["loss_gap"].std()
    out["seeds"] = g["seed"].nunique()
    return out.reset_index()


def write_pdf(path, table: pd.DataFrame, examples: dict, settings: dict) -> list[str]:
    """The study's PDF report: settings/versions, the BN-vs-no-BN gap figure, a table of means,
    example patterns. Returns the page headings."""
    from topoland.plots.patterns import plot_mask, plot_pattern, plot_pattern_gap
    from topoland.report.pdf import MIN_FONT_PT, pdf_pages, report_figure, save_page, versions_table

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
