"""BN vs no BN: how well random binary masks can be drawn into the loss landscape.

    python experiments/loss_patterns.py experiments/loss_patterns.toml [--quick] [--out DIR]

For each BatchNorm setting and seed: train one minimum, then for each fill probability draw a
random mask (seeded) and fit a loss-pattern plane (topoland.landscape.patterns). Writes a CSV
(one row per fit: accuracy and loss gap between low and high cells) and figures.
--quick shrinks everything (fills 0.3/0.7, 1 seed, 8x8 masks, few steps) for a smoke run.
"""
from __future__ import annotations

import argparse
import sys
import time
import tomllib
from pathlib import Path

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
    ap.add_argument("--out", default=None)
    ap.add_argument("--seeds", type=int, default=None, help="use only the first N seeds of the config")
    args = ap.parse_args(argv)
    cfg = tomllib.loads(Path(args.config).read_text())
    d, m, t, p, o = (cfg[k] for k in ("data", "model", "train", "patterns", "output"))
    if args.quick:
        p = {**p, "fills": [0.3, 0.7], "seeds": [0], "size": [8, 8], "steps": 60}
        t = {**t, "epochs": 3}
        d = {**d, "n_train": min(d.get("n_train", 0) or 1000, 1000), "eval_samples": 256}
    if args.seeds is not None:
        p = {**p, "seeds": p["seeds"][:args.seeds]}
    out = Path(args.out or o["dir"])
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(d["name"], seed=d.get("seed", 0), n_train=d.get("n_train") or None)
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
    print(f"wrote {out / 'loss_patterns.csv'} and figures")
    return 0


if __name__ == "__main__":
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    sys.exit(main())
