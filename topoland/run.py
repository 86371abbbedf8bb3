"""The experiment runner: the stages of each grid cell, in order, skipping what is stored.

This is the only module that knows the order of the stages. Each stage is a function
``stage_x(ctx, out_dir) -> summary dict`` that reads what earlier stages stored (through
``ctx``), writes its own results into ``out_dir`` and returns scalars for the index.
The store renames ``out_dir`` into place only when the function returns.

Per-cell stages: train -> sample -> topology -> surface -> curvature.
Run-level stages (across cells): paths -> analysis -> report.
"""
from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from .config import STAGES, Cell, expand_grid, load_config, to_toml
from .errors import StoreError, TopolandError
from .store import RUN_LEVEL, RunStore

CELL_STAGES = ("train", "sample", "topology", "surface", "curvature")
RUN_STAGES = ("paths", "analysis", "report")
assert CELL_STAGES + RUN_STAGES == STAGES


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
        from .utils import resolve_device
        return resolve_device(self.config["run"]["device"])

    @property
    def data(self):
        if self._data is None:
            self._data = load_cell_data(self.config)
        return self._data

    def model(self):
        """The trained minimum of this cell (an ``nn.Module`` in eval mode)."""
        from .checkpoint import load_checkpoint
        model, _ = load_checkpoint(self.stage_dir("train") / "model.safetensors")
        return model.eval()


_DATA_CACHE: dict[str, object] = {}


def load_cell_data(cfg: dict):
    """Load (and cache per process) the dataset a cell's config names."""
    from .data import load_dataset
    d = cfg["data"]
    key = json.dumps(d, sort_keys=True)
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = load_dataset(
            d["name"], root=d["root"] or None, seed=cfg["run"]["seed"], val_fraction=d["val_fraction"],
            val_seed=d["val_seed"], label_noise=d["label_noise"], download=d["download"],
            n_train=d["n_train"] or None, n_test=d["n_test"] or None)
    return _DATA_CACHE[key]


def model_spec(cfg: dict) -> tuple[str, dict]:
    m = dict(cfg["model"])
    return m.pop("name"), m


# ---------------------------------------------------------------------------------- stages
def stage_train(ctx: CellContext, out: Path) -> dict:
    from .checkpoint import save_checkpoint
    from .models import build_model
    from .store import save_tensors
    from .train import TrainRecipe, train_minimum

    cfg, data = ctx.config, ctx.data
    name, kwargs = model_spec(cfg)
    seed = cfg["run"]["seed"]
    model = build_model(name, data.input_shape, data.num_classes, seed=seed, **kwargs)
    t = dict(cfg["train"])
    t["milestones"] = tuple(t["milestones"])
    recipe = TrainRecipe(**t)
    res = train_minimum(model, data, recipe, seed=seed, device=ctx.device)
    spec = {"name": name, "kwargs": kwargs, "input_shape": list(data.input_shape),
            "num_classes": data.num_classes}
    save_checkpoint(out / "model.safetensors", model, spec=spec, metrics=res.metrics)
    res.history.to_csv(out / "history.csv", index=False)
    if res.checkpoints is not None:
        save_tensors(out / "checkpoints.safetensors", {"checkpoints": res.checkpoints})
    return dict(res.metrics) | {"diverged": bool(res.diverged)}


STAGE_FUNCS = {"train": stage_train}


# ---------------------------------------------------------------------------------- driver
@dataclass
class RunReport:
    run_dir: Path
    failures: list = field(default_factory=list)   # (cell_id, stage, message)
    seconds: dict = field(default_factory=dict)    # stage -> total seconds this invocation
    report_path: Path | None = None


def prepare(config_path, out=None) -> tuple[dict, list[Cell], RunStore]:
    """Validate a config, expand its grid and create (or reopen) its run directory."""
    cfg = load_config(config_path)
    cells = expand_grid(cfg)
    out = Path(out) if out else Path("runs") / cfg["run"]["name"]
    store = RunStore.create(out, to_toml(cfg), cells)
    return cfg, cells, store


def _wanted_stages(cfg, only=None):
    stages = [s for s in STAGES if s in cfg["run"]["stages"]]
    if only:
        bad = [s for s in only if s not in STAGES]
        if bad:
            raise TopolandError(f"unknown stage {bad[0]!r} (stages: {', '.join(STAGES)})")
        stages = [s for s in STAGES if s in only]
    return stages


def run_cell_stages(store: RunStore, cell_id: str, stages, *, on_stage=None) -> list[tuple]:
    """Run the per-cell ``stages`` of one cell in order, skipping finished ones.

    A failing stage is recorded (error and traceback in the index) and ends the cell's work;
    the failure is returned, not raised, so other cells go on.
    """
    ctx = CellContext(store, cell_id, store.cell_config(cell_id))
    failures = []
    for stage in stages:
        if stage not in CELL_STAGES or store.is_done(cell_id, stage):
            continue
        if on_stage:
            on_stage(cell_id, stage)
        try:
            with store.stage(cell_id, stage) as box:
                box["summary"] = STAGE_FUNCS[stage](ctx, box["dir"]) or {}
        except KeyboardInterrupt:
            raise
        except Exception as e:  # recorded in the index by store.stage; other cells go on
            msg = str(e) if isinstance(e, TopolandError) else f"{type(e).__name__}: {e}"
            failures.append((cell_id, stage, msg))
            break
    return failures


def run(config_path, *, out=None, only=None, force=(), executor=None, address=None,
        progress=True) -> RunReport:
    """Run every stage a config asks for, grid cell by grid cell; resumable.

    Returns a :class:`RunReport`; failed cells are listed there (and in the index) rather
    than raised, so one bad cell does not stop the others.
    """
    cfg, cells, store = prepare(config_path, out)
    stages = _wanted_stages(cfg, only)
    report = RunReport(store.path)
    with store:
        store.clean_stale()
        for stage in force:
            if stage not in STAGES:
                raise TopolandError(f"unknown stage {stage!r} given to --force (stages: {', '.join(STAGES)})")
            for c in cells:
                store.invalidate(c.cell_id, stage)
            store.invalidate(RUN_LEVEL, stage)
        # a rerun retries failed stages: forget their failure rows
        cell_stages = [s for s in stages if s in CELL_STAGES]
        t0 = time.time()
        from .execute import execute_cells
        report.failures += execute_cells(store, [c.cell_id for c in cells], cell_stages,
                                         executor=executor or cfg["run"]["executor"], address=address,
                                         config=cfg, progress=progress)
        report.seconds["cells"] = time.time() - t0
        for stage in (s for s in stages if s in RUN_STAGES):
            if store.is_done(RUN_LEVEL, stage):
                continue
            t1 = time.time()
            try:
                with store.stage(RUN_LEVEL, stage) as box:
                    box["summary"] = RUN_STAGE_FUNCS[stage](store, cfg, box["dir"]) or {}
            except KeyboardInterrupt:
                raise
            except Exception as e:
                msg = str(e) if isinstance(e, TopolandError) else f"{type(e).__name__}: {e}"
                report.failures.append((RUN_LEVEL, stage, msg))
            report.seconds[stage] = time.time() - t1
    return report


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


def minima_table(run_dir) -> "pd.DataFrame":
    """One row per cell: id, settings, the train stage's metrics and every stage's status."""
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
        from .config import SCHEMA, _check_value
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
                    store.invalidate(cid, stage)
            from .execute import execute_cells
            report.failures += execute_cells(store, ids, [stage], progress=progress)
    finally:
        _OVERRIDES.pop(stage, None)
    return report


_OVERRIDES: dict[str, dict] = {}


def stage_options(ctx: CellContext, stage: str) -> dict:
    """A stage's config section for this cell, with any command-line overrides applied."""
    return dict(ctx.config.get(stage, {})) | _OVERRIDES.get(stage, {})
