"""The experiment driver: every stage a config asks for, grid cell by grid cell, then the
run-level stages, skipping what is stored; and the commands that rerun one stage of an existing
run directory (``topoland sample/topology/curvature``, ``connect``, ``report``)."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from topoland.errors import TopolandError
from topoland.io import atomic_copy
from topoland.pipeline.cells import apply_threads
from topoland.pipeline.context import DataCache, model_spec
from topoland.pipeline.executors import execute_cells
from topoland.pipeline.run_stages import RUN_STAGE_FUNCS, stage_paths, stage_report
from topoland.runs import layout
from topoland.runs.config import Cell, expand_grid, load_config, to_toml
from topoland.runs.freshness import invalidate_stage, refresh_stages, stage_inputs
from topoland.runs.stages import CELL_STAGES, RUN_STAGES, STAGES
from topoland.runs.store import RUN_LEVEL, RunStore
from topoland.runs.tables import stored_config
from topoland.utils import resolve_device


@dataclass
class RunReport:
    run_dir: Path
    failures: list = field(default_factory=list)   # (cell_id, stage, message)
    notes: list = field(default_factory=list)      # stages recomputed because disk or config changed
    seconds: dict = field(default_factory=dict)    # stage -> total seconds this invocation
    report_path: Path | None = None


def prepare(config_path, out=None, data_cache: DataCache | None = None) -> tuple[dict, list[Cell], RunStore]:
    """Validate a config, expand its grid, load its datasets (into ``data_cache``) and create (or
    reopen) its run directory."""
    cfg = load_config(config_path)
    cells = expand_grid(cfg)
    _check_data(cells, data_cache or DataCache())
    out = Path(out) if out else Path("runs") / cfg["run"]["name"]
    store = RunStore.create(out, to_toml(cfg), cells)
    return cfg, cells, store


def _check_data(cells, cache: DataCache):
    """Load each distinct dataset of the grid once (cached for the cells), so that a missing or
    corrupted dataset or non-finite inputs are one error before the run directory is touched; and
    build each distinct model once for its data, so that a factory that fails or returns no
    ``nn.Module``, a torchvision model given non-RGB inputs, or a model output that does not fit
    ``train.loss`` is one error too (the train stage builds it again, seeded)."""
    from topoland.nets import build_model
    checked = set()
    for c in cells:
        data = cache.load(c.config)
        name, kwargs = model_spec(c.config)
        key = json.dumps([c.config["model"], c.config["train"].get("loss"), c.config["data"],
                          list(data.input_shape), data.num_classes], sort_keys=True, default=str)
        if key not in checked:
            model = build_model(name, data.input_shape, data.num_classes, **kwargs)
            _check_task(c.config, data, model)
            checked.add(key)


#: what a run asks of accuracy, refused when the loss and targets track none (a regression)
_NEEDS_ACCURACY = (("train", "target_acc", lambda v: v > 0, "stops on an accuracy"),
                   ("train", "pretrain_random_epochs", lambda v: v > 0, "draws random class labels"),
                   ("analysis", "score_gap", lambda v: v == "acc_gap", "scores the accuracy gap"))


def _check_task(cfg: dict, data, model) -> None:
    """The loss fits the model's output and the targets (one message naming the shapes), and a
    loss without accuracy (mse, l1, a callable on float targets) meets no setting that needs one."""
    import torch

    from topoland.errors import ConfigError
    from topoland.nets.losses import resolve_loss, tracks_accuracy
    spec = cfg["train"].get("loss", "cross_entropy")
    model.eval()
    with torch.no_grad():
        out = model(data.x_train[:2])
    try:
        name, fn = resolve_loss(spec, output=out, target=data.y_train[:2])
    except ConfigError as e:
        raise ConfigError(f"config key 'train.loss' = {spec!r} with data {data.name!r} ({data.task}): {e}") from None
    from topoland.nets.metrics import load_metrics, per_sample, prepare_target, resolve_metrics
    for key, metric in load_metrics(cfg["train"].get("metrics")).items():
        y2 = prepare_target(name, data.y_train[:2])
        try:
            per_sample(resolve_metrics({key: metric}, loss_name=name, target=y2), fn, out, y2)
        except Exception as e:  # noqa: BLE001 - the user's function: any error, named with the key
            raise ConfigError(f"config key 'train.metrics.{key}' = {cfg['train']['metrics'][key]!r}: "
                              f"{type(e).__name__ + ': ' if not isinstance(e, ConfigError) else ''}{e}") from None
    if tracks_accuracy(name, data.y_train):
        return
    why = f"train.loss = {spec!r} on {data.task} targets tracks no accuracy"
    for section, key, bad, what in _NEEDS_ACCURACY:
        if section in cfg and key in cfg[section] and bad(cfg[section][key]):
            raise ConfigError(f"config key '{section}.{key}' = {cfg[section][key]!r} {what}, but {why}")
    for stage in ("measures", "ensemble"):
        if stage in cfg["run"]["stages"]:
            raise ConfigError(f"config key 'run.stages' names {stage!r}, which needs class labels "
                              f"(margins, ensemble accuracy), but {why}; remove it")


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


def run(config_path, *, out=None, only=None, force=(), executor=None, address=None,
        progress=True, reports_dir="reports") -> RunReport:
    """Run every stage a config asks for, grid cell by grid cell; resumable.

    Returns a :class:`RunReport`; failed cells are listed there (and in the index) rather
    than raised, so one bad cell does not stop the others.
    """
    _check_stage_names(only, force)
    cache = DataCache()
    cfg, cells, store = prepare(config_path, out, cache)
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
            from topoland.io import atomic_write_text
            atomic_write_text(store.path / "config.toml", to_toml(cfg))
        report.notes += refresh_stages(store, {c.cell_id: store.cell_config(c.cell_id) for c in cells}, cfg)
        cell_stages = [s for s in stages if s in CELL_STAGES]
        done_before = _n_done(store)
        t0 = time.time()
        report.failures += execute_cells(store, [c.cell_id for c in cells], cell_stages,
                                         executor=executor or cfg["run"]["executor"], address=address,
                                         config=cfg, progress=progress, data_cache=cache)
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
    atomic_copy(store.stage_dir(RUN_LEVEL, "report") / layout.REPORT_PDF, target)
    for csv in sorted(store.stage_dir(RUN_LEVEL, "report").glob("*.csv")):
        shutil.copyfile(csv, reports_dir / f"{name}_{csv.name}")
    return target


def run_stage_in_dir(run_dir, stage: str, *, overrides=None, force=False, progress=True) -> RunReport:
    """Run one per-cell stage for every cell of an existing run directory, with the executor and
    workers of its stored config (``run.executor``, ``run.workers``).

    ``overrides`` replace keys of the stage's config section for this invocation; the options
    used are recorded in the stage's summary.
    """
    if stage not in CELL_STAGES:
        raise TopolandError(f"'{stage}' is not a per-cell stage ({', '.join(CELL_STAGES)})")
    store = RunStore.open(run_dir)
    report = RunReport(store.path)
    overrides = dict(overrides or {})
    if overrides:
        from topoland.runs.config import check_value
        from topoland.runs.schema import schema
        keys = schema()[stage]
        for k, v in overrides.items():
            if k not in keys:
                raise TopolandError(f"unknown option '{k}' for stage '{stage}' (known: {', '.join(keys)})")
            check_value(f"{stage}.{k}", keys[k], v)
    cfg = stored_config(store)
    with store:
        store.clean_stale()
        ids = list(store.cells().cell_id)
        if force:
            for cid in ids:
                invalidate_stage(store, cid, stage)
        # this stage only: damage upstream is the whole run's business (`topoland run`)
        report.notes += refresh_stages(store, {cid: store.cell_config(cid) for cid in ids}, stages=[stage],
                                       overrides={stage: overrides})
        report.failures += execute_cells(store, ids, [stage], executor=cfg["run"]["executor"], config=cfg,
                                         progress=progress, overrides={stage: overrides})
    return report


def connect_run(run_dir, *, strategy="mst", method=None, steps=None) -> RunReport:
    """``topoland connect``: connect the minima of a run and store the paths stage."""
    store = RunStore.open(run_dir)
    cfg = stored_config(store)
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


def write_report(run_dir, reports_dir="reports") -> Path:
    """(Re)write a run's report stage and ``reports/<run>.pdf`` with its tables as CSV beside it."""
    store = RunStore.open(run_dir)
    cfg = stored_config(store)
    with store:
        store.invalidate(RUN_LEVEL, "report")
        with store.stage(RUN_LEVEL, "report") as box:
            box["summary"] = stage_report(store, cfg, box["dir"])
    return publish_report(store, reports_dir)
