"""The per-cell stage bodies. Each is ``stage_x(ctx, out_dir) -> summary dict``: it reads what
earlier stages stored (through ``ctx``), writes its own results into ``out_dir`` and returns
scalars for the index; the store renames ``out_dir`` into place only when the function returns."""
from __future__ import annotations

import json
from pathlib import Path

from topoland.declare import arguments
from topoland.pipeline.context import CellContext, model_spec
from topoland.runs import layout


def stage_train(ctx: CellContext, out: Path) -> dict:
    from topoland.io import save_tensors
    from topoland.nets import build_model, get_params, save_checkpoint
    from topoland.train import TrainRecipe, train_minimum

    cfg, data = ctx.config, ctx.data
    name, kwargs = model_spec(cfg)
    seed = cfg["run"]["seed"]
    model = build_model(name, data.input_shape, data.num_classes, seed=seed, **kwargs)
    # theta_0, before any (random-label) pretraining: the distance-from-initialization measures
    save_tensors(out / layout.INIT, {k: v.detach().clone() for k, v in get_params(model).items()})
    recipe = TrainRecipe(**arguments(TrainRecipe, cfg["train"]))
    res = train_minimum(model, data, recipe, seed=seed, device=ctx.device)
    spec = {"name": name, "kwargs": kwargs, "input_shape": list(data.input_shape),
            "num_classes": data.num_classes, "data": cfg["data"], "seed": seed}
    save_checkpoint(out / layout.MODEL, model, spec=spec, metrics=res.metrics)
    res.history.to_csv(out / layout.HISTORY, index=False)
    if res.checkpoints is not None:
        save_tensors(out / layout.CHECKPOINTS, {"checkpoints": res.checkpoints})
    return train_summary(res.metrics, recipe)


def train_summary(metrics: dict, recipe) -> dict:
    """The train stage's index summary: the metrics, ``diverged`` as a bool and, when the recipe
    has a stopping criterion, ``target_loss``, ``target_acc``, ``reached_target`` (bool) and
    ``stop_epoch`` (main-phase epochs trained; int)."""
    out = dict(metrics) | {"diverged": bool(metrics.get("diverged", 0.0))}
    out["stop_epoch"] = int(metrics["stop_epoch"])
    if recipe.has_target:
        out |= {"target_loss": float(recipe.target_loss), "target_acc": float(recipe.target_acc),
                "reached_target": bool(metrics["reached_target"])}
    return out


def sample_options(ctx: CellContext) -> dict:
    """The sample stage's options for this cell with every "inherit" resolved to the minimum's
    own ``train.*`` value (weight decay, batch size, momentum, augmentation)."""
    from topoland.errors import ConfigError
    from topoland.runs.config import resolve_inherited
    try:
        return resolve_inherited(ctx.options("sample"), ctx.config["train"])
    except ConfigError as e:
        raise ConfigError(f"cell {ctx.cell_id}: {e}") from None


def stage_sample(ctx: CellContext, out: Path) -> dict:
    from topoland.sampling import jump_and_retrain, save_samples, trajectory_features

    opts = sample_options(ctx)
    inherited = [k for k, v in ctx.options("sample").items() if v == "inherit"]
    model = ctx.model()
    # the retraining minimises the minimum's own training loss (train.loss)
    res = jump_and_retrain(model, ctx.data, **arguments(jump_and_retrain, opts, seed=ctx.seed, device=ctx.device,
                                                        loss=ctx.loss, metrics=ctx.metrics or None))
    save_samples(res, out)
    feats = trajectory_features(res.table, theta_star=res.theta_star, params=res.params, gram=res.gram)
    n_div = int(res.table.groupby("trajectory")["diverged"].any().sum())
    return feats | {"n_samples": len(res.table), "n_trajectories_diverged": n_div, "options": opts,
                    "inherited": inherited}


#: the topology features compared between minima (each its own feature: the loss range beside
#: the finite-bar activity and the number of basins, so no comparison is the range's in disguise)
TOPOLOGY_HEADLINE = ("topology.activity_h0", "topology.n_basins", "topology.loss_range")


def stage_topology(ctx: CellContext, out: Path) -> dict:
    """Topology of the cell's samples: ``topology.safetensors`` (sample ids, PHATE picture
    ``coords``, principal ``plane``, filtration graph ``edges``, ``values``, diagrams),
    ``features.json``, ``intervals.csv`` (resampled-trajectory intervals) and the notes."""
    import warnings

    import numpy as np
    import torch

    from topoland.io import save_tensors
    from topoland.sampling import load_samples
    from topoland.topology import TopologyWarning, topology_of_samples

    opts = ctx.options("topology")
    s = load_samples(ctx.stage_dir("sample"))
    with warnings.catch_warnings():  # the notes are stored and shown on the report instead
        warnings.simplefilter("ignore", TopologyWarning)
        res = topology_of_samples(s.table, params=s.params, gram=s.gram, **arguments(
            topology_of_samples, opts, seed=ctx.seed, sketch_seed=ctx.seed, device=ctx.device))
    arrays = {"sample_ids": res.sample_ids, "coords": res.coords, "plane": res.plane,
              "edges": res.edges, "values": res.values}
    arrays |= {f"diagram_h{d}": np.asarray(dg, dtype=np.float64).reshape(-1, 2) for d, dg in res.diagrams.items()}
    save_tensors(out / layout.TOPOLOGY, {k: torch.tensor(np.asarray(v)) for k, v in arrays.items()},
                 metadata={"t_used": int(res.t_used), "settings": res.settings, "notes": res.notes})
    (out / layout.TOPOLOGY_FEATURES).write_text(json.dumps(res.features, indent=1, default=float))
    res.intervals.to_csv(out / layout.INTERVALS, index=False)
    return dict(res.features) | {"t_used": int(res.t_used), "notes": list(res.notes)}


def stage_surface(ctx: CellContext, out: Path) -> dict:
    import shutil

    import numpy as np

    from topoland.data import seeded_subset
    from topoland.landscape import plane, random_lines, random_plane, surface_features
    opts = ctx.options("surface")
    if opts["kind"] == "none":
        return {"skipped": "surface.kind = 'none'"}
    model = ctx.model()
    x, y = seeded_subset(ctx.data.x_train, ctx.data.y_train, opts["n_samples"], ctx.seed)
    lo, hi = (float(v) for v in opts["range"])
    common = dict(x_test=ctx.data.x_test, y_test=ctx.data.y_test, device=ctx.device, loss=ctx.loss,
                  metrics=ctx.stage_metrics(y))
    seed = ctx.seed
    # the grid file lives beside the stage while it fills, so a killed run resumes the grid
    partial = ctx.store.stage_dir(ctx.cell_id, "surface").with_name(layout.SURFACE_PARTIAL)
    surfaces = []
    if opts["kind"] == "plane":
        srf = random_plane(model, x, y, seed=seed, store=partial, **arguments(plane, opts), **common)
        shutil.move(str(partial), out / layout.PLANE)
        surfaces.append(srf)
    ckpt = ctx.stage_dir("train") / layout.CHECKPOINTS
    if ckpt.is_file():  # the training trajectory was recorded: PCA plane with the path over it
        from topoland.io import load_tensors
        from topoland.landscape import trajectory_plane
        pca_partial = partial.with_name(layout.SURFACE_PCA_PARTIAL)  # in store.RESUME_DATA
        srf = trajectory_plane(model, load_tensors(ckpt)[0]["checkpoints"], x, y, grid=opts["grid"],
                               store=pca_partial, **common)
        shutil.move(str(pca_partial), out / layout.PCA_PLANE)
        import pandas as pd
        pd.DataFrame(srf.path, columns=["pc1", "pc2"]).to_csv(out / layout.PCA_PATH, index=False)
        (out / layout.PCA_META).write_text(json.dumps({"explained_variance_ratio": srf.meta["explained_variance_ratio"]}))
    lines = random_lines(model, x, y, n_directions=4, seed=seed + 1,
                         alphas=np.linspace(lo, hi, 2 * (opts["grid"] // 2) + 1), **common)
    for i, ln in enumerate(lines):
        _write_line_csv(ln, out / layout.line_csv(i))
    surfaces += lines
    return surface_features(surfaces)


def _write_line_csv(srf, path):
    import pandas as pd
    pd.DataFrame({"alpha": srf.xs, **{k: v for k, v in srf.values.items()}}).to_csv(path, index=False)


def stage_curvature(ctx: CellContext, out: Path) -> dict:
    from topoland.landscape import curvature_features
    opts = ctx.options("curvature")
    if not opts["enabled"]:
        return {"skipped": "curvature.enabled = false"}
    model = ctx.model()
    feats = curvature_features(model, ctx.data.x_train, ctx.data.y_train, loss=ctx.loss,
                               **arguments(curvature_features, opts, seed=ctx.seed, device=ctx.device))
    if opts["density"]:
        import pandas as pd

        from topoland.landscape import eigenvalue_density, hvp_fn
        op = hvp_fn(model, ctx.data.x_train, ctx.data.y_train, n_samples=opts["n_samples"],
                    seed=ctx.seed, device=ctx.device, loss=ctx.loss)
        grid, dens = eigenvalue_density(op, seed=ctx.seed)
        pd.DataFrame({"eigenvalue": grid, "density": dens}).to_csv(out / layout.DENSITY, index=False)
    (out / layout.CURVATURE).write_text(json.dumps(feats, indent=1, default=float))
    return feats


def stage_measures(ctx: CellContext, out: Path) -> dict:
    """Generalization measures of the cell's minimum on its training split (norms, distance from
    initialization, worst-case and PAC-Bayes flatness, margin): ``measures.json``; and the per-tensor
    weight statistics of the supervised baseline: ``weights.json``."""
    from topoland.errors import StoreError
    from topoland.io import load_tensors
    from topoland.landscape import generalization_measures, weight_statistics
    init_path = ctx.stage_dir("train") / layout.INIT
    if not init_path.is_file():
        raise StoreError(f"cell {ctx.cell_id}: its train stage stored no {layout.INIT} (trained before "
                         "theta_0 was kept), so the distance-from-initialization measures cannot be computed; "
                         "retrain it: topoland run CONFIG --force train")
    init = load_tensors(init_path)[0]
    model = ctx.model()
    opts = ctx.options("measures")
    feats = generalization_measures(model, ctx.data.x_train, ctx.data.y_train, init_params=init, **arguments(
        generalization_measures, opts, seed=ctx.seed, device=ctx.device))
    (out / layout.MEASURES).write_text(json.dumps(feats, indent=1, default=float))
    (out / layout.WEIGHTS).write_text(json.dumps(weight_statistics(model), indent=1, default=float))
    return feats


def stage_ensemble(ctx: CellContext, out: Path) -> dict:
    """Fast geometric ensemble from the cell's minimum; its accuracy vs members on the test split."""
    from topoland.io import save_tensors
    from topoland.train import ensemble_curve, fast_geometric_ensemble, member_probabilities
    opts = ctx.options("ensemble")
    model, data = ctx.model(), ctx.data
    res = fast_geometric_ensemble(model, data, **arguments(
        fast_geometric_ensemble, opts, augment=bool(ctx.config["train"]["augment"]), seed=ctx.seed,
        device=ctx.device))
    probs = member_probabilities(model, res.snapshots, data.x_test, buffers=res.buffers, device=ctx.device)
    curve = ensemble_curve(probs, data.y_test)
    curve.to_csv(out / layout.ENSEMBLE_CURVE, index=False)
    res.history.to_csv(out / layout.HISTORY, index=False)
    save_tensors(out / layout.SNAPSHOTS,
                 {"snapshots": res.snapshots} | {f"buffer.{k}": v for k, v in res.buffers.items()},
                 metadata={"options": opts})
    last = curve.iloc[-1]
    base = ctx.store.summary(ctx.cell_id, "train").get("test_acc")
    return {"ensemble_acc": float(last["ensemble_acc"]), "ensemble_nll": float(last["ensemble_nll"]),
            "mean_member_acc": float(last["mean_member_acc"]), "n_members": int(last["members"]),
            "minimum_test_acc": None if base is None else float(base),
            "gain": None if base is None else float(last["ensemble_acc"]) - float(base), "options": opts}


CELL_STAGE_FUNCS = {"train": stage_train, "sample": stage_sample, "topology": stage_topology,
                    "surface": stage_surface, "curvature": stage_curvature, "measures": stage_measures,
                    "ensemble": stage_ensemble}
