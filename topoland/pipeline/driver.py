"""The experiment runner: the stages of each grid cell, in order, skipping what is stored.

This is the only module that knows the order of the stages. Each stage is a function
``stage_x(ctx, out_dir) -> summary dict`` that reads what earlier stages stored (through
``ctx``), writes its own results into ``out_dir`` and returns scalars for the index.
The store renames ``out_dir`` into place only when the function returns.

Per-cell stages: train -> sample -> topology -> surface -> curvature -> ensemble (optional:
runs only when ``run.stages`` names it).
Run-level stages (across cells): paths -> analysis -> report.
"""
from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from topoland.runs.config import STAGES, Cell, expand_grid, load_config, to_toml
from topoland.errors import StoreError, TopolandError
from topoland.runs.store import RUN_LEVEL, RunStore
from topoland.utils import resolve_device

CELL_STAGES = ("train", "sample", "topology", "surface", "curvature", "ensemble")
RUN_STAGES = ("paths", "analysis", "report")
assert CELL_STAGES + RUN_STAGES == STAGES

#: what each stage reads of other stages: a per-cell stage the named stages of its own cell, a
#: run-level stage the named stages of every cell and the named run-level stages. Recomputing or
#: forcing a stage invalidates every stage that depends on it (:func:`dependents`).
DEPENDS = {"train": (), "sample": ("train",), "topology": ("sample",), "surface": ("train",),
           "curvature": ("train",), "ensemble": ("train",), "paths": ("train",),
           "analysis": ("train", "sample", "topology", "surface", "curvature"),
           "report": ("train", "sample", "topology", "surface", "curvature", "ensemble", "paths", "analysis")}
#: the config sections each stage reads (and run.seed); recorded with the stage, and a stage
#: whose sections changed since is recomputed (:func:`stage_inputs`)
READS = {"train": ("data", "model", "train"), "sample": ("data", "model", "train", "sample"),
         "topology": ("topology",), "surface": ("data", "surface"), "curvature": ("data", "curvature"),
         "ensemble": ("data", "train", "ensemble"), "paths": ("data", "paths"), "analysis": ("analysis",),
         "report": ()}
assert set(DEPENDS) == set(READS) == set(STAGES)


def dependents(stage: str) -> list[str]:
    """Every stage that reads ``stage``, directly or through others, in pipeline order."""
    out = {stage}
    for s in STAGES:  # pipeline order: a stage's inputs come before it
        if out & set(DEPENDS[s]):
            out.add(s)
    return [s for s in STAGES if s in out and s != stage]


def invalidate_stage(store: RunStore, cell_id: str, stage: str) -> None:
    """Forget a stage of a cell (or of the run) and every stage that depends on it: the same
    cell's per-cell stages and the run-level ones."""
    store.invalidate(cell_id, stage)
    for d in dependents(stage):
        if d in RUN_STAGES:
            store.invalidate(RUN_LEVEL, d)
        elif cell_id != RUN_LEVEL:
            store.invalidate(cell_id, d)


def stage_inputs(cfg: dict, stage: str) -> dict:
    """The config values ``stage`` reads (:data:`READS`, with any command-line overrides),
    keys at their defaults left out, so that a key added later does not count as a change."""
    from topoland.runs.config import defaults
    base = defaults()
    out = {"run.seed": cfg["run"]["seed"]}
    for section in READS[stage]:
        vals = dict(cfg.get(section, {})) | (_OVERRIDES.get(section, {}) if section == stage else {})
        ref = base.get(section, {}) if section != "model" else {}
        out[section] = {k: v for k, v in sorted(vals.items()) if k not in ref or v != ref[k]}
    return json.loads(json.dumps(out, default=str))


def refresh_stages(store: RunStore, cell_cfgs: dict, run_cfg: dict | None = None,
                   stages=CELL_STAGES) -> list[str]:
    """Check the disk and the config against the index before resuming: a finished stage whose
    folder is missing or altered, or whose recorded inputs differ from the config's, is
    invalidated with its dependents so that it is recomputed. ``cell_cfgs``: cell id -> config;
    ``stages``: the per-cell stages to check; ``run_cfg``: the config of the run-level stages
    (None: leave them). Returns one line per stage invalidated, saying why."""
    units = [(cid, s, c) for cid, c in cell_cfgs.items() for s in stages]
    units += [(RUN_LEVEL, s, run_cfg) for s in RUN_STAGES] if run_cfg is not None else []
    why = []
    for cid, stage, cfg in units:
        if not store.is_done(cid, stage):
            continue
        problems = store.stage_problems(cid, stage)
        recorded = store.inputs(cid, stage)
        if problems:
            why.append(f"{cid}/{stage}: recomputed, its results changed on disk ({problems[0]})")
        elif recorded is not None and recorded != stage_inputs(cfg, stage):
            why.append(f"{cid}/{stage}: recomputed, the config it read changed")
        else:
            continue
        invalidate_stage(store, cid, stage)
    return why


# ---------------------------------------------------------------------------------- context
@dataclass
class CellContext:
    """What a stage of one cell may read: its config and the folders of finished stages."""
    store: RunStore
    cell_id: str
    config: dict
    _data: object = None

    def stage_dir(self, stage: str) -> Path:
        if not self.store.is_done(self.cell_id, stage):
            raise StoreError(f"stage '{stage}' of cell '{self.cell_id}' is not finished; run it first")
        return self.store.stage_dir(self.cell_id, stage)

    @property
    def device(self):
        from topoland.utils import resolve_device
        return resolve_device(self.config["run"]["device"])

    @property
    def data(self):
        if self._data is None:
            self._data = load_cell_data(self.config)
        return self._data

    def model(self):
        """The trained minimum of this cell (an ``nn.Module`` in eval mode), built from the cell's
        validated config, not from the spec inside the file (a checkpoint's spec is untrusted)."""
        from topoland.nets import load_checkpoint
        from topoland.nets import build_model
        name, kwargs = model_spec(self.config)
        shell = build_model(name, self.data.input_shape, self.data.num_classes, **kwargs)
        model, _ = load_checkpoint(self.stage_dir("train") / "model.safetensors", model=shell)
        return model.eval()


_DATA_CACHE: dict[str, object] = {}


def load_cell_data(cfg: dict):
    """Load (and cache per process) the dataset a cell's config names."""
    from topoland.data import load_dataset
    d = cfg["data"]
    # the run seed generates synthetic sets and draws the splits: it is part of the key
    key = json.dumps([d, cfg["run"]["seed"]], sort_keys=True)
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = load_dataset(
            d["name"], root=d["root"] or None, seed=cfg["run"]["seed"], val_fraction=d["val_fraction"],
            val_seed=d["val_seed"], label_noise=d["label_noise"], download=d["download"],
            n_train=d["n_train"] or None, n_test=d["n_test"] or None, label_seed=d["label_seed"],
            synthetic=d["synthetic"] or None)
    return _DATA_CACHE[key]


def model_spec(cfg: dict) -> tuple[str, dict]:
    m = dict(cfg["model"])
    return m.pop("name"), m


# ---------------------------------------------------------------------------------- stages
def stage_train(ctx: CellContext, out: Path) -> dict:
    from topoland.nets import save_checkpoint
    from topoland.nets import build_model
    from topoland.runs.store import save_tensors
    from topoland.train import TrainRecipe, train_minimum

    cfg, data = ctx.config, ctx.data
    name, kwargs = model_spec(cfg)
    seed = cfg["run"]["seed"]
    model = build_model(name, data.input_shape, data.num_classes, seed=seed, **kwargs)
    t = dict(cfg["train"])
    t["milestones"] = tuple(t["milestones"])
    recipe = TrainRecipe(**t)
    res = train_minimum(model, data, recipe, seed=seed, device=ctx.device)
    spec = {"name": name, "kwargs": kwargs, "input_shape": list(data.input_shape),
            "num_classes": data.num_classes, "data": cfg["data"], "seed": seed}
    save_checkpoint(out / "model.safetensors", model, spec=spec, metrics=res.metrics)
    res.history.to_csv(out / "history.csv", index=False)
    if res.checkpoints is not None:
        save_tensors(out / "checkpoints.safetensors", {"checkpoints": res.checkpoints})
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
    from topoland.runs.config import resolve_inherited
    from topoland.errors import ConfigError
    try:
        return resolve_inherited(stage_options(ctx, "sample"), ctx.config["train"])
    except ConfigError as e:
        raise ConfigError(f"cell {ctx.cell_id}: {e}") from None


def stage_sample(ctx: CellContext, out: Path) -> dict:
    from topoland.sampling import jump_and_retrain, save_samples, trajectory_features

    opts = sample_options(ctx)
    inherited = [k for k, v in stage_options(ctx, "sample").items() if v == "inherit"]
    model = ctx.model()
    res = jump_and_retrain(
        model, ctx.data, directions=opts["directions"], steps=tuple(opts["steps"]),
        seed=ctx.config["run"]["seed"], lr=opts["lr"], momentum=opts["momentum"],
        weight_decay=opts["weight_decay"], batch_size=opts["batch_size"], epochs=opts["epochs"],
        augment=bool(opts["augment"]), records_per_epoch=opts["records_per_epoch"],
        storage=opts["storage"], sketch_dim=opts["sketch_dim"], device=ctx.device,
        batched=opts["batched"])
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

    from topoland.sampling import load_samples
    from topoland.runs.store import save_tensors
    from topoland.topology import TopologyWarning, topology_of_samples

    opts = stage_options(ctx, "topology")
    s = load_samples(ctx.stage_dir("sample"))
    seed = ctx.config["run"]["seed"]
    phate_kwargs = {"knn": opts["knn"], "decay": opts["decay"], "t": opts["t"],
                    "n_landmark": opts["n_landmark"] or None}
    with warnings.catch_warnings():  # the notes are stored and shown on the report instead
        warnings.simplefilter("ignore", TopologyWarning)
        res = topology_of_samples(
            s.table, params=s.params, gram=s.gram, k=opts["k"], value=opts["value"],
            complex=opts["complex"], graph=opts["graph"], p=opts["p"], essential=opts["essential"],
            graph_on=opts["graph_on"], plane=opts["plane"], min_persistence=opts["min_persistence"],
            n_resamples=opts["n_resamples"], ci_level=opts["ci_level"], resample=opts["resample"],
            seed=seed, phate_kwargs=phate_kwargs, distances=opts["distances"],
            sketch_dim=opts["sketch_dim"], sketch_seed=seed, device=ctx.device)
    arrays = {"sample_ids": res.sample_ids, "coords": res.coords, "plane": res.plane,
              "edges": res.edges, "values": res.values}
    arrays |= {f"diagram_h{d}": np.asarray(dg, dtype=np.float64).reshape(-1, 2) for d, dg in res.diagrams.items()}
    save_tensors(out / "topology.safetensors", {k: torch.tensor(np.asarray(v)) for k, v in arrays.items()},
                 metadata={"t_used": int(res.t_used), "settings": res.settings, "notes": res.notes})
    (out / "features.json").write_text(json.dumps(res.features, indent=1, default=float))
    res.intervals.to_csv(out / "intervals.csv", index=False)
    return dict(res.features) | {"t_used": int(res.t_used), "notes": list(res.notes)}


def _surface_data(ctx: CellContext, n_samples: int):
    import torch
    x, y = ctx.data.x_train, ctx.data.y_train
    if n_samples and n_samples < len(x):
        g = torch.Generator().manual_seed(ctx.config["run"]["seed"])
        idx = torch.randperm(len(x), generator=g)[:n_samples]
        x, y = x[idx], y[idx]
    return x, y


def stage_surface(ctx: CellContext, out: Path) -> dict:
    import shutil

    import numpy as np

    from topoland.landscape import random_lines, random_plane, surface_features
    opts = stage_options(ctx, "surface")
    if opts["kind"] == "none":
        return {"skipped": "surface.kind = 'none'"}
    model = ctx.model()
    x, y = _surface_data(ctx, opts["n_samples"])
    lo, hi = (float(v) for v in opts["range"])
    common = dict(x_test=ctx.data.x_test, y_test=ctx.data.y_test, device=ctx.device)
    seed = ctx.config["run"]["seed"]
    # the grid file lives beside the stage while it fills, so a killed run resumes the grid
    partial = ctx.store.stage_dir(ctx.cell_id, "surface").with_name("surface.partial.h5")
    surfaces = []
    if opts["kind"] == "plane":
        srf = random_plane(model, x, y, seed=seed, grid=opts["grid"], range=(lo, hi), store=partial, **common)
        shutil.move(str(partial), out / "plane.h5")
        surfaces.append(srf)
    ckpt = ctx.stage_dir("train") / "checkpoints.safetensors"
    if ckpt.is_file():  # the training trajectory was recorded: PCA plane with the path over it
        from topoland.landscape import trajectory_plane
        from topoland.runs.store import load_tensors
        pca_partial = partial.with_name("surface.pca.partial.h5")  # store.RESUME_DATA names it
        srf = trajectory_plane(model, load_tensors(ckpt)["checkpoints"], x, y, grid=opts["grid"],
                               store=pca_partial, **common)
        shutil.move(str(pca_partial), out / "pca.h5")
        import pandas as pd
        pd.DataFrame(srf.path, columns=["pc1", "pc2"]).to_csv(out / "pca_path.csv", index=False)
        (out / "pca.json").write_text(json.dumps({"explained_variance_ratio": srf.meta["explained_variance_ratio"]}))
    lines = random_lines(model, x, y, n_directions=4, seed=seed + 1,
                         alphas=np.linspace(lo, hi, 2 * (opts["grid"] // 2) + 1), **common)
    for i, ln in enumerate(lines):
        _write_line_csv(ln, out / f"line_{i}.csv")
    surfaces += lines
    return surface_features(surfaces)


def _write_line_csv(srf, path):
    import pandas as pd
    pd.DataFrame({"alpha": srf.xs, **{k: v for k, v in srf.values.items()}}).to_csv(path, index=False)


def stage_curvature(ctx: CellContext, out: Path) -> dict:
    from topoland.landscape import curvature_features
    opts = stage_options(ctx, "curvature")
    if not opts["enabled"]:
        return {"skipped": "curvature.enabled = false"}
    model = ctx.model()
    feats = curvature_features(model, ctx.data.x_train, ctx.data.y_train, top_k=opts["top_k"],
                               n_probes=opts["n_probes"], n_samples=opts["n_samples"],
                               seed=ctx.config["run"]["seed"], sharpness_radius=opts["sharpness_radius"],
                               n_directions=opts["n_directions"], volume_threshold=opts["volume_threshold"],
                               device=ctx.device)
    if opts["density"]:
        import pandas as pd

        from topoland.landscape import eigenvalue_density, hvp_fn
        op = hvp_fn(model, ctx.data.x_train, ctx.data.y_train, n_samples=opts["n_samples"],
                    seed=ctx.config["run"]["seed"], device=ctx.device)
        grid, dens = eigenvalue_density(op, seed=ctx.config["run"]["seed"])
        pd.DataFrame({"eigenvalue": grid, "density": dens}).to_csv(out / "density.csv", index=False)
    (out / "curvature.json").write_text(json.dumps(feats, indent=1, default=float))
    return feats


def stage_ensemble(ctx: CellContext, out: Path) -> dict:
    """Fast geometric ensemble from the cell's minimum; its accuracy vs members on the test split."""
    import pandas as pd

    from topoland.train import ensemble_curve, fast_geometric_ensemble, member_probabilities
    from topoland.runs.store import save_tensors
    opts = stage_options(ctx, "ensemble")
    model, data = ctx.model(), ctx.data
    res = fast_geometric_ensemble(model, data, cycles=opts["cycles"], cycle_epochs=opts["cycle_epochs"],
                                  lr1=opts["lr1"], lr2=opts["lr2"], schedule=opts["schedule"],
                                  momentum=opts["momentum"], weight_decay=opts["weight_decay"],
                                  batch_size=opts["batch_size"], augment=bool(ctx.config["train"]["augment"]),
                                  seed=ctx.config["run"]["seed"], device=ctx.device)
    probs = member_probabilities(model, res.snapshots, data.x_test, buffers=res.buffers, device=ctx.device)
    curve = ensemble_curve(probs, data.y_test)
    curve.to_csv(out / "ensemble.csv", index=False)
    res.history.to_csv(out / "history.csv", index=False)
    save_tensors(out / "snapshots.safetensors",
                 {"snapshots": res.snapshots} | {f"buffer.{k}": v for k, v in res.buffers.items()},
                 metadata={"options": opts})
    last = curve.iloc[-1]
    base = ctx.store.summary(ctx.cell_id, "train").get("test_acc")
    return {"ensemble_acc": float(last["ensemble_acc"]), "ensemble_nll": float(last["ensemble_nll"]),
            "mean_member_acc": float(last["mean_member_acc"]), "n_members": int(last["members"]),
            "minimum_test_acc": None if base is None else float(base),
            "gain": None if base is None else float(last["ensemble_acc"]) - float(base), "options": opts}


STAGE_FUNCS = {"train": stage_train, "sample": stage_sample, "topology": stage_topology,
               "surface": stage_surface, "curvature": stage_curvature, "ensemble": stage_ensemble}


# ---------------------------------------------------------------------------------- driver
@dataclass
class RunReport:
    run_dir: Path
    failures: list = field(default_factory=list)   # (cell_id, stage, message)
    notes: list = field(default_factory=list)      # stages recomputed because disk or config changed
    seconds: dict = field(default_factory=dict)    # stage -> total seconds this invocation
    report_path: Path | None = None


def prepare(config_path, out=None) -> tuple[dict, list[Cell], RunStore]:
    """Validate a config, expand its grid and create (or reopen) its run directory."""
    cfg = load_config(config_path)
    cells = expand_grid(cfg)
    _check_data(cells)
    out = Path(out) if out else Path("runs") / cfg["run"]["name"]
    store = RunStore.create(out, to_toml(cfg), cells)
    return cfg, cells, store


def _check_data(cells):
    """Load each distinct dataset of the grid once (cached for the cells), so that a missing or
    corrupted dataset or non-finite inputs are one error before the run directory is touched."""
    for c in cells:
        load_cell_data(c.config)


def _skip_reason(store: RunStore, cell_id: str, stage: str) -> str | None:
    """Why ``stage`` is not run on a cell: a diverged training left no minimum to study."""
    if stage != "train" and store.is_done(cell_id, "train"):
        summ = store.summary(cell_id, "train")
        if summ.get("diverged"):
            return f"training diverged (non-finite loss after {summ.get('epochs_run', '?')} epochs)"
    return None


def _check_stage_names(only, force):
    """Refuse unknown names in ``--only`` / ``--force`` (before the run directory is touched)."""
    for flag, names in (("--only", only or ()), ("--force", force or ())):
        bad = [s for s in names if s not in STAGES]
        if bad:
            raise TopolandError(f"unknown stage {bad[0]!r} given to {flag} (stages: {', '.join(STAGES)})")


def _wanted_stages(cfg, only=None):
    stages = [s for s in STAGES if s in cfg["run"]["stages"]]
    if only:
        stages = [s for s in STAGES if s in only]
    return stages


def apply_threads(cfg: dict):
    """Set torch's CPU threads from ``run.threads`` (small models run faster on one thread)."""
    n = int(cfg.get("run", {}).get("threads", 0) or 0)
    if n:
        import torch
        torch.set_num_threads(n)


def run_cell_stages(store: RunStore, cell_id: str, stages, *, on_stage=None) -> list[tuple]:
    """Run the per-cell ``stages`` of one cell in order, skipping finished ones.

    A failing stage is recorded (error and traceback in the index) and ends the cell's work;
    the failure is returned, not raised, so other cells go on.
    """
    ctx = CellContext(store, cell_id, store.cell_config(cell_id))
    apply_threads(ctx.config)
    failures = []
    for stage in stages:
        if stage not in CELL_STAGES or store.is_done(cell_id, stage):
            continue
        if on_stage:
            on_stage(cell_id, stage)
        skip = _skip_reason(store, cell_id, stage)
        if skip:
            with store.stage(cell_id, stage) as box:
                box["summary"] = {"skipped": skip}
            continue
        try:
            with store.stage(cell_id, stage) as box:
                box["summary"] = STAGE_FUNCS[stage](ctx, box["dir"]) or {}
                box["inputs"] = stage_inputs(ctx.config, stage)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # recorded in the index by store.stage; other cells go on
            msg = str(e) if isinstance(e, TopolandError) else f"{type(e).__name__}: {e}"
            failures.append((cell_id, stage, msg))
            break
    return failures


def run(config_path, *, out=None, only=None, force=(), executor=None, address=None,
        progress=True, reports_dir="reports") -> RunReport:
    """Run every stage a config asks for, grid cell by grid cell; resumable.

    Returns a :class:`RunReport`; failed cells are listed there (and in the index) rather
    than raised, so one bad cell does not stop the others.
    """
    _check_stage_names(only, force)
    cfg, cells, store = prepare(config_path, out)
    stages = _wanted_stages(cfg, only)
    report = RunReport(store.path)
    apply_threads(cfg)
    with store:
        store.clean_stale()
        import torch
        dev = resolve_device(cfg["run"]["device"])
        store.set_meta("device", f"{dev.type} ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda"
                       else f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)")
        for stage in force:
            for cid in [c.cell_id for c in cells] if stage in CELL_STAGES else [RUN_LEVEL]:
                invalidate_stage(store, cid, stage)
        if store.config_text() != to_toml(cfg):  # what the run is asked to do now (a run-level section)
            from topoland.runs.store import atomic_write_text
            atomic_write_text(store.path / "config.toml", to_toml(cfg))
        report.notes += refresh_stages(store, {c.cell_id: store.cell_config(c.cell_id) for c in cells}, cfg)
        cell_stages = [s for s in stages if s in CELL_STAGES]
        done_before = _n_done(store)
        t0 = time.time()
        from topoland.pipeline.executors import execute_cells
        report.failures += execute_cells(store, [c.cell_id for c in cells], cell_stages,
                                         executor=executor or cfg["run"]["executor"], address=address,
                                         config=cfg, progress=progress)
        report.seconds["cells"] = time.time() - t0
        # run-level stages read every cell: once anything upstream changed, they are stale
        changed = _n_done(store) != done_before
        _add_seconds(store, report.seconds)
        report.seconds.clear()
        for stage in (s for s in stages if s in RUN_STAGES):
            if store.is_done(RUN_LEVEL, stage):
                if not changed:
                    continue
                store.invalidate(RUN_LEVEL, stage)
            changed = True
            t1 = time.time()
            try:
                with store.stage(RUN_LEVEL, stage) as box:
                    box["summary"] = RUN_STAGE_FUNCS[stage](store, cfg, box["dir"]) or {}
                    box["inputs"] = stage_inputs(cfg, stage)
            except KeyboardInterrupt:
                raise
            except Exception as e:
                msg = str(e) if isinstance(e, TopolandError) else f"{type(e).__name__}: {e}"
                report.failures.append((RUN_LEVEL, stage, msg))
            _add_seconds(store, {stage: time.time() - t1})
    if store.is_done(RUN_LEVEL, "report"):
        report.report_path = publish_report(store, reports_dir)
    return report


def _add_seconds(store: RunStore, seconds: dict):
    """Accumulate wall seconds per stage (over invocations) in the run's metadata."""
    acc = store.get_meta("seconds", {}) or {}
    for k, v in seconds.items():
        acc[k] = acc.get(k, 0.0) + v
    store.set_meta("seconds", acc)


def _n_done(store: RunStore) -> int:
    df = store.stages()
    return int(((df.status == "done") & (df.cell_id != RUN_LEVEL)).sum()) if len(df) else 0


def publish_report(store: RunStore, reports_dir="reports") -> Path:
    """Copy the run's PDF to ``reports_dir/<run>.pdf`` and its tables beside it (``<run>_*.csv``)."""
    import shutil
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    name = store.path.name
    target = reports_dir / f"{name}.pdf"
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.copyfile(store.stage_dir(RUN_LEVEL, "report") / "report.pdf", tmp)
    os.replace(tmp, target)
    for csv in sorted(store.stage_dir(RUN_LEVEL, "report").glob("*.csv")):
        shutil.copyfile(csv, reports_dir / f"{name}_{csv.name}")
    return target


RUN_STAGE_FUNCS: dict = {}


# ---------------------------------------------------------------------------------- run dirs
def _flatten_settings(cfg: dict, overrides: dict) -> dict:
    """The settings columns of a cell: every key its grid/cell entry set, plus the usual knobs."""
    cols = {}
    for key in ("model.name", "train.weight_decay", "train.batch_size", "train.augment", "train.lr",
                "train.epochs", "train.pretrain_random_epochs", "data.label_noise"):
        s, k = key.split(".")
        if k in cfg.get(s, {}):
            cols[key] = cfg[s][k]
    for key, v in overrides.items():
        cols[key] = v
    cols["run.seed"] = cfg["run"]["seed"]
    return cols


#: the stopping criterion's outcome per minimum (train summary; minima and analysis tables):
#: ``reached_target`` (bool: the target was met within train.epochs) and ``stop_epoch`` (main-phase
#: epochs trained). Present only for cells trained with train.target_loss or train.target_acc.
TARGET_COLUMNS = ("reached_target", "stop_epoch")


def missed_target(store: RunStore) -> list[str]:
    """Cell ids whose training had a stopping criterion and did not meet it within its epochs."""
    return [c for c in _done_cells(store, "train")
            if store.summary(c, "train").get("reached_target") is False]


def minima_table(run_dir) -> "pd.DataFrame":
    """One row per cell: id, settings, the train stage's metrics and every stage's status, and
    :data:`TARGET_COLUMNS` where a stopping criterion was set (cells without one: NaN)."""
    import pandas as pd
    store = RunStore.open(run_dir)
    cells = store.cells()
    stages = store.stages()
    rows = []
    for _, c in cells.iterrows():
        row = {"cell_id": c.cell_id} | _flatten_settings(c.settings, c.overrides)
        if store.is_done(c.cell_id, "train"):
            summ = store.summary(c.cell_id, "train")
            row |= {k: summ.get(k) for k in ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss",
                                            "test_acc", "gap", "acc_gap", "diverged") if k in summ}
            if "reached_target" in summ:   # trained with a stopping criterion
                row |= {k: summ[k] for k in TARGET_COLUMNS}
        st = stages[stages.cell_id == c.cell_id].set_index("stage")["status"].to_dict()
        row["stages"] = " ".join(f"{s}:{st[s][0]}" for s in CELL_STAGES if s in st) or "-"
        rows.append(row)
    return pd.DataFrame(rows)


def run_stage_in_dir(run_dir, stage: str, *, overrides=None, force=False, progress=True) -> RunReport:
    """Run one per-cell stage for every cell of an existing run directory.

    ``overrides`` replace keys of the stage's config section for this invocation; the options
    used are recorded in the stage's summary.
    """
    if stage not in CELL_STAGES:
        raise TopolandError(f"'{stage}' is not a per-cell stage ({', '.join(CELL_STAGES)})")
    store = RunStore.open(run_dir)
    report = RunReport(store.path)
    overrides = overrides or {}
    if overrides:
        from topoland.runs.config import SCHEMA, _check_value
        for k, v in overrides.items():
            if k not in SCHEMA[stage]:
                raise TopolandError(f"unknown option '{k}' for stage '{stage}' (known: {', '.join(SCHEMA[stage])})")
            _check_value(f"{stage}.{k}", SCHEMA[stage][k], v)
    _OVERRIDES[stage] = overrides
    try:
        with store:
            store.clean_stale()
            ids = list(store.cells().cell_id)
            if force:
                for cid in ids:
                    invalidate_stage(store, cid, stage)
            # this stage only: damage upstream is the whole run's business (`topoland run`)
            report.notes += refresh_stages(store, {cid: store.cell_config(cid) for cid in ids}, stages=[stage])
            from topoland.pipeline.executors import execute_cells
            report.failures += execute_cells(store, ids, [stage], progress=progress)
    finally:
        _OVERRIDES.pop(stage, None)
    return report


_OVERRIDES: dict[str, dict] = {}


def stage_options(ctx: CellContext, stage: str) -> dict:
    """A stage's config section for this cell, with any command-line overrides applied.

    Keys missing from the cell's stored config (run directories made before a key or an
    optional stage existed) take their defaults."""
    from topoland.runs.config import defaults
    return defaults().get(stage, {}) | dict(ctx.config.get(stage, {})) | _OVERRIDES.get(stage, {})


# ---------------------------------------------------------------------------------- paths
def _has_bn(model) -> bool:
    import torch.nn as nn
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def connect_models(model_a, model_b, data, *, method="neb", n_images=9, steps=100, lr=0.05,
                   climbing=False, n_samples=0, batch_size=0, seed=0, device="auto") -> dict:
    """Find a low-loss path between two minima of one architecture and measure its barriers.

    Returns ``{"profiles": {"linear": df, method: df}, "barriers": {name: {...}}, "images": (K, D)}``;
    profiles hold train/test loss and error at 61 points, BN statistics recomputed at every
    point for BN networks.
    """
    import torch

    from topoland.landscape import paths as P
    from topoland.nets import flatten, get_params
    theta_a = flatten(get_params(model_a)).float()
    theta_b = flatten(get_params(model_b)).float()
    if theta_a.shape != theta_b.shape:
        raise TopolandError("the two minima have different architectures; a path needs one parameter space")
    x, y = data.x_train, data.y_train
    if n_samples and n_samples < len(x):
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n_samples]
        x, y = x[idx], y[idx]
    bn = _has_bn(model_a)
    loss = P.network_loss(model_a, x, y, batch_size=batch_size or None, bn="train" if bn else "eval", seed=seed)
    if method == "neb":
        found = P.neb(loss, theta_a, theta_b, n_images=n_images, steps=steps, lr=lr, climbing=climbing)
    elif method == "autoneb":
        # the reference schedule (14 cycles, lr 0.1 -> 0.01 -> 0.001, at most 31 pivots), with
        # the config's step count per cycle
        ref = dict(P.AUTONEB_REFERENCE) | {"steps": steps, "climbing": climbing}
        if batch_size:
            ref["batch_size"] = batch_size
        else:
            ref.pop("batch_size", None)
        found = P.auto_neb(loss, theta_a, theta_b, **ref)
    elif method in ("bezier", "polychain"):
        found = P.fit_curve(loss, theta_a, theta_b, kind=method, steps=steps, lr=lr, seed=seed)
    else:
        raise TopolandError(f"unknown path method {method!r} (neb, autoneb, bezier, polychain)")
    metrics = P.network_metrics(model_a, {"train": (x, y), "test": (data.x_test, data.y_test)},
                                bn="recompute" if bn else "eval", device=device)
    profiles = {"linear": P.path_profile(metrics, P.linear_path(theta_a, theta_b)),
                method: P.path_profile(metrics, found)}
    bars = {}
    for name, prof in profiles.items():
        for col in ("train_loss", "test_loss", "train_error", "test_error"):
            b = P.barriers(prof, column=col)
            bars[f"{name}.{col}"] = b
    images = found.images if hasattr(found, "images") else found.point(torch.linspace(0, 1, 61))
    return {"profiles": profiles, "barriers": bars, "images": images.detach()}


def _done_cells(store: RunStore, stage: str) -> list[str]:
    return [cid for cid in store.cells().cell_id if store.is_done(cid, stage)]


def studied_cells(store: RunStore) -> list[str]:
    """Cells with a minimum to study: trained, and the training did not diverge (a diverged
    cell's later stages are skipped with the reason; nothing downstream reads them)."""
    return [c for c in _done_cells(store, "train") if not store.summary(c, "train").get("diverged")]


def _pairs(store: RunStore, how: str) -> list[tuple[str, str]]:
    cells = studied_cells(store)
    # only minima of one architecture can be joined by a path
    arch = {cid: json.dumps(store.cell_config(cid)["model"], sort_keys=True) for cid in cells}
    if how == "none" or len(cells) < 2:
        return []
    if how == "first":
        a = cells[0]
        same = [c for c in cells[1:] if arch[c] == arch[a]]
        return [(a, same[0])] if same else []
    return [(a, b) for i, a in enumerate(cells) for b in cells[i + 1:] if arch[a] == arch[b]]


def _connect_pair(store: RunStore, cfg: dict, a: str, b: str, attempt: int = 0) -> dict:
    """Connect two cells' minima (cached per pair and attempt, so a killed run resumes)."""
    import shutil

    from topoland.runs.store import save_tensors
    opts = cfg["paths"]
    pdir = store.path / "run" / "paths.pairs" / f"{a}__{b}" / f"attempt{attempt}"
    if not (pdir / "barriers.json").is_file():
        ca, cb = CellContext(store, a, store.cell_config(a)), CellContext(store, b, store.cell_config(b))
        # a retry (AutoNEB strategy) gets more images and steps
        res = connect_models(ca.model(), cb.model(), ca.data, method=opts["method"],
                             n_images=opts["n_images"] + 4 * attempt, steps=opts["steps"] * (1 + attempt),
                             lr=opts["lr"], climbing=opts["climbing"], n_samples=opts["n_samples"],
                             batch_size=opts["batch_size"], seed=cfg["run"]["seed"] + attempt, device=ca.device)
        tmp = pdir.with_name(pdir.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, prof in res["profiles"].items():
            prof.to_csv(tmp / f"profile_{name}.csv", index=False)
        save_tensors(tmp / "images.safetensors", {"images": res["images"]})
        (tmp / "barriers.json").write_text(json.dumps(res["barriers"], indent=1))
        shutil.rmtree(pdir, ignore_errors=True)
        os.replace(tmp, pdir)
    return json.loads((pdir / "barriers.json").read_text())


def _pair_row(a, b, method, bars) -> dict:
    row = {"a": a, "b": b, "method": method}
    for key, b_ in bars.items():
        for kind in ("max", "max_minus_linear", "max_minus_mean"):
            row[f"{key}.{kind}"] = b_[kind]
    return row


def stage_paths(store: RunStore, cfg: dict, out: Path) -> dict:
    import shutil

    import pandas as pd

    from topoland.runs.store import write_table
    opts = cfg["paths"]
    m = opts["method"]
    if opts["pairs"] == "mst":
        table = _connect_mst(store, cfg)
    else:
        pairs = _pairs(store, opts["pairs"])
        table = pd.DataFrame([_pair_row(a, b, m, _connect_pair(store, cfg, a, b)) for a, b in pairs])
    if table.empty:
        return {"skipped": f"no pair of minima to connect (paths.pairs = {opts['pairs']!r})"}
    # the stage keeps, per pair, the files of its last (most thorough) attempt
    last = table.groupby(["a", "b"])["attempt"].max() if "attempt" in table else None
    for a, b in dict.fromkeys(zip(table.a, table.b)):
        attempt = int(last[(a, b)]) if last is not None else 0
        shutil.copytree(store.path / "run" / "paths.pairs" / f"{a}__{b}" / f"attempt{attempt}", out / f"{a}__{b}")
    write_table(table, out / "pairs")
    return {"n_pairs": int(len(table)),
            "linear_barrier_mean": float(table["linear.train_loss.max_minus_linear"].mean()),
            f"{m}_barrier_mean": float(table[f"{m}.train_loss.max_minus_linear"].mean())}


def _connect_mst(store: RunStore, cfg: dict):
    """The AutoNEB strategy over every minimum of one architecture: grow a minimum spanning
    tree by barrier (train loss maximum along the path) and retry across its highest edge."""
    import pandas as pd

    from topoland.landscape.paths import connect_all
    from topoland.nets import flatten, get_params
    cells = [c for c in _pairs_cells(store)]
    if len(cells) < 2:
        return pd.DataFrame()
    m = cfg["paths"]["method"]
    minima, values = {}, {}
    for cid in cells:
        ctx = CellContext(store, cid, store.cell_config(cid))
        minima[cid] = flatten(get_params(ctx.model())).float()
        values[cid] = store.summary(cid, "train")["train_loss"]
    by_ptr = {t.data_ptr(): cid for cid, t in minima.items()}
    rows = {}

    def pair_fn(ta, tb, attempt):
        a, b = by_ptr[ta.data_ptr()], by_ptr[tb.data_ptr()]
        bars = _connect_pair(store, cfg, a, b, attempt)
        rows[(a, b, attempt)] = _pair_row(a, b, m, bars)
        return {k: v for k, v in bars[f"{m}.train_loss"].items()}

    table = connect_all(minima, pair_fn, strategy="mst", column="max", values=values)
    extra = pd.DataFrame([rows[(r.a, r.b, r.attempt)] | {"attempt": r.attempt, "in_mst": bool(r.in_mst)}
                          for r in table.itertuples()])
    return extra


def _pairs_cells(store: RunStore) -> list[str]:
    cells = studied_cells(store)
    if not cells:
        return []
    arch = {cid: json.dumps(store.cell_config(cid)["model"], sort_keys=True) for cid in cells}
    return [c for c in cells if arch[c] == arch[cells[0]]]


def connect_run(run_dir, *, strategy="mst", method=None, steps=None) -> RunReport:
    """``topoland connect``: connect the minima of a run and store the paths stage."""
    store = RunStore.open(run_dir)
    cfg = _stored_config(store)
    cfg["paths"]["pairs"] = strategy
    if method:
        cfg["paths"]["method"] = method
    if steps:
        cfg["paths"]["steps"] = steps
    report = RunReport(store.path)
    with store:
        invalidate_stage(store, RUN_LEVEL, "paths")
        try:
            with store.stage(RUN_LEVEL, "paths") as box:
                box["summary"] = stage_paths(store, cfg, box["dir"])
        except TopolandError as e:
            report.failures.append((RUN_LEVEL, "paths", str(e)))
    return report


# ---------------------------------------------------------------------------------- analysis
# The ensemble stage is deliberately not a feature group: its summary (ensemble accuracy, gain
# over the minimum's test accuracy) is measured on the test split, so as a feature it would
# leak the generalization target (test_acc / gen_label) into the classifiers.
FEATURE_STAGES = {"trajectory": "sample", "topology": "topology", "surface": "surface", "curvature": "curvature"}


def feature_groups(store: RunStore) -> dict:
    """Per-cell scalar summaries of each stage as feature-group DataFrames (indexed by cell_id)."""
    import numbers

    import pandas as pd
    groups = {}
    for group, stage in FEATURE_STAGES.items():
        rows = {}
        for cid in _done_cells(store, stage):
            summ = store.summary(cid, stage)
            vals = {k: v for k, v in summ.items()
                    if isinstance(v, numbers.Number) and not isinstance(v, bool) and k not in ("n_samples",)}
            vals = {k: (float("nan") if v is None else v) for k, v in vals.items()}
            if vals:
                rows[cid] = vals
        if rows:
            df = pd.DataFrame.from_dict(rows, orient="index")
            df = df.loc[:, df.notna().any()]
            df.index.name = "cell_id"
            groups[group] = df
    return groups


def analysis_table(store: RunStore):
    """The feature table of a run: settings, metrics and every available feature group."""
    from topoland.analysis import feature_table
    cells = minima_table(store.path).drop(columns=["stages"])
    cells = cells[[store.is_done(c, "train") for c in cells.cell_id]]
    if "diverged" in cells:
        cells = cells[~cells["diverged"].astype(bool)].drop(columns=["diverged"])
    groups = {g: df[df.index.isin(cells.cell_id)] for g, df in feature_groups(store).items()}
    return feature_table(cells.reset_index(drop=True), {g: df for g, df in groups.items() if len(df)},
                         test_derived=_test_derived_groups(store, cells.cell_id))


def _test_derived_groups(store: RunStore, cell_ids) -> dict:
    """Groups computed on the test split whatever their column names: a topology filtered by
    test loss (``topology.value = "test_loss"``) in any cell."""
    from topoland.runs.config import defaults
    base = defaults()["topology"]["value"]
    values = {store.cell_config(c).get("topology", {}).get("value", base) for c in cell_ids}
    return {"topology": "all"} if "test_loss" in values else {}


def run_design(store: RunStore, cfg: dict):
    """The :class:`~topoland.analysis.comparisons.Design` of a run: its grid axes and extra cells
    (``[[cells]]``: the cells after the grid's product, by position)."""
    import math

    from topoland.analysis import Design
    axes = tuple(cfg["grid"])
    n_grid = math.prod(len(v) for v in cfg["grid"].values())
    cells = store.cells()
    return Design(axes=axes, extra=tuple(cells.loc[cells.position >= n_grid, "cell_id"]))


def _config_settings(ft) -> list[str]:
    """Settings columns that are config keys (``section.key``), not stage outcomes."""
    return [c for c in ft.settings if "." in c]


def _floor_note(what: str, table) -> list[str]:
    """A note when no test of a family can reach adjusted p < 0.05 (p_min * family >= 0.05)."""
    p = table["p_value"].notna()
    if not p.any():
        return []
    p_min, m = float(table.loc[p, "p_min"].min()), int(p.sum())
    if p_min * m < 0.05:
        return []
    return [f"{what}: the smallest attainable p is {p_min:.3g} and the family holds {m} tests, so "
            f"p_min x {m} = {p_min * m:.3g} >= 0.05: none can be a finding after Holm"]


def _diverged_cells(store: RunStore) -> list[str]:
    return [c for c in _done_cells(store, "train") if store.summary(c, "train").get("diverged")]


def _targets(cfg: dict, ft) -> list[str]:
    out = []
    for t in cfg["analysis"]["targets"]:
        col = "test_acc" if t == "gen_label" else t
        if col in ft.frame and ft.frame[col].nunique() > 1:
            out.append(col)
    return out


def stage_analysis(store: RunStore, cfg: dict, out: Path) -> dict:
    import pandas as pd

    from topoland.analysis import classifier_table, correlations, save_feature_table
    from topoland.analysis import FLATNESS_MEASURES, comparison_table, flatness_ordering
    from topoland.errors import NotEnoughSamplesError
    from topoland.runs.store import write_table
    ft = analysis_table(store)
    save_feature_table(ft, out)
    a = cfg["analysis"]
    seed = cfg["run"]["seed"]
    notes = [f"features: {col} left out ({why}); test-split values are targets only"
             for col, why in ft.excluded.items()]
    diverged = _diverged_cells(store)
    if diverged:
        notes.append(f"{len(diverged)} minima left out because their training diverged: {', '.join(diverged)}")
    missed = missed_target(store)
    if missed:
        notes.append(f"{len(missed)} minima missed the training target (train.target_loss / train.target_acc) "
                     f"within train.epochs, so they are not comparable minima (column reached_target): "
                     f"{', '.join(missed)}")
    targets = _targets(cfg, ft)
    if ft.groups and targets:
        clf = classifier_table(ft, targets, n_classes=a["n_classes"], n_splits=a["n_splits"],
                               n_repeats=a["n_repeats"], seed=seed, n_permutations=a["n_permutations"],
                               p_adjust=a["p_adjust"], n_jobs=a["n_jobs"], on_error="record")
        write_table(clf, out / "classifiers")
        notes += _floor_note("classifier table", clf)
    feature_cols = [c for g in ft.groups.values() for c in g]
    enough = [c for c in feature_cols if ft.frame[c].notna().sum() >= 5]
    for c in sorted(set(feature_cols) - set(enough)):
        notes.append(f"correlations: {c} has {int(ft.frame[c].notna().sum())} values (needs 5); left out")
    try:
        if not enough:
            raise NotEnoughSamplesError("no feature has 5 or more values")
        corr = correlations(ft, enough, targets=("gap", "test_acc"), n_boot=a["n_boot"], seed=seed,
                            p_adjust=a["p_adjust"])
        write_table(corr, out / "correlations")
    except NotEnoughSamplesError as e:
        notes.append(f"correlations: {e}")
    # grid axes stratified on the others, extra cells (bad minima) on their own; one family
    design = run_design(store, cfg)
    metrics = (["test_acc", "gap"] + [c for c in TOPOLOGY_HEADLINE if c in feature_cols]
               + [c for c in FLATNESS_MEASURES if c in feature_cols])
    comps, comp_notes = comparison_table(ft, design, metrics, settings=_config_settings(ft), p_adjust=a["p_adjust"],
                                         n_permutations=a["compare_permutations"], n_boot=a["n_boot"], seed=seed)
    notes += comp_notes
    if not comps.empty:
        write_table(comps, out / "comparisons")
        batch = next((ax for ax in design.axes if ax.endswith("batch_size")), None)
        if batch:
            write_table(flatness_ordering(comps, by=batch), out / "flatness")
    (out / "notes.json").write_text(json.dumps(notes, indent=1))
    return {"n_minima": len(ft.frame), "groups": list(ft.groups), "targets": targets, "notes": notes}


def compare_in_dir(run_dir, *, by: str, metric: str, n_permutations=9999, seed=0):
    """``topoland compare``: compare ``metric`` by the grid axis ``by`` over the grid cells,
    stratified on the other axes; or, when ``by`` is the setting by which extra cells leave the
    grid (``train.pretrain_random_epochs``), those extra cells vs the grid."""
    from topoland.analysis import resolve_column
    from topoland.analysis import extra_comparison, extra_kinds, grid_comparison, value_sizes
    store = RunStore.open(run_dir)
    cfg = _stored_config(store)
    ft = analysis_table(store)
    design = run_design(store, cfg)
    metric = resolve_column(ft, metric)
    if by in design.axes:
        return grid_comparison(ft, design, by, metric, n_permutations=n_permutations, seed=seed)
    kinds = extra_kinds(ft, design, _config_settings(ft))
    hits = {k: c for k, c in kinds.items() if by == k or by in [part.split("=")[0] for part in k.split(", ")]}
    if len(hits) == 1:
        (kind, cells), = hits.items()
        return extra_comparison(ft, design, kind, cells, metric, n_permutations=n_permutations, seed=seed)
    if hits:
        raise TopolandError(f"several kinds of extra cells set {by!r} in run '{run_dir}': {', '.join(hits)}; "
                            "give one of them in full as --by")
    raise TopolandError(
        f"setting {by!r} is not varied by the grid of run '{run_dir}' (grid axes: {', '.join(design.axes) or 'none'}; "
        f"extra cells: {', '.join(f'{k} ({len(c)})' for k, c in kinds.items()) or 'none'}; "
        f"cells per value of {by!r}: {value_sizes(ft.frame, by)})")


def stage_report(store: RunStore, cfg: dict, out: Path) -> dict:
    from topoland.report import build_report
    pdf = build_report(store.path, out / "report.pdf")
    return {"pages": pdf["pages"]}


def write_report(run_dir, reports_dir="reports") -> Path:
    """(Re)write a run's report stage and ``reports/<run>.pdf`` with its tables as CSV beside it."""
    store = RunStore.open(run_dir)
    cfg = _stored_config(store)
    with store:
        store.invalidate(RUN_LEVEL, "report")
        with store.stage(RUN_LEVEL, "report") as box:
            box["summary"] = stage_report(store, cfg, box["dir"])
    return publish_report(store, reports_dir)


def _stored_config(store: RunStore) -> dict:
    import tomllib

    from topoland.runs.config import validate
    raw = tomllib.loads(store.config_text())
    return validate(raw)


RUN_STAGE_FUNCS.update({"paths": stage_paths, "analysis": stage_analysis, "report": stage_report})
