"""Whether a finished stage still holds: its files unchanged on disk and the config it read
unchanged; invalidating a stage invalidates every stage that depends on it."""
from __future__ import annotations

import json

from topoland.runs.config import defaults
from topoland.runs.stages import CELL_STAGES, READS, RUN_STAGES, dependents
from topoland.runs.store import RUN_LEVEL, RunStore


def invalidate_stage(store: RunStore, cell_id: str, stage: str) -> None:
    """Forget a stage of a cell (or of the run) and every stage that depends on it: the same
    cell's per-cell stages and the run-level ones."""
    store.invalidate(cell_id, stage)
    for d in dependents(stage):
        if d in RUN_STAGES:
            store.invalidate(RUN_LEVEL, d)
        elif cell_id != RUN_LEVEL:
            store.invalidate(cell_id, d)


def stage_inputs(cfg: dict, stage: str, overrides: dict | None = None) -> dict:
    """The config values ``stage`` reads (:data:`~topoland.runs.stages.READS`, with the stage's
    command-line ``overrides`` of its own section), keys at their defaults left out, so that a key
    added later does not count as a change."""
    base = defaults()
    out = {"run.seed": cfg["run"]["seed"]}
    for section in READS[stage]:
        vals = dict(cfg.get(section, {})) | ((overrides or {}) if section == stage else {})
        ref = base.get(section, {}) if section != "model" else {}
        out[section] = {k: v for k, v in sorted(vals.items()) if k not in ref or v != ref[k]}
    return json.loads(json.dumps(out, default=str))


def refresh_stages(store: RunStore, cell_cfgs: dict, run_cfg: dict | None = None,
                   stages=CELL_STAGES, overrides: dict | None = None) -> list[str]:
    """Check the disk and the config against the index before resuming: a finished stage whose
    folder is missing or altered, or whose recorded inputs differ from the config's, is
    invalidated with its dependents so that it is recomputed. ``cell_cfgs``: cell id -> config;
    ``stages``: the per-cell stages to check; ``run_cfg``: the config of the run-level stages
    (None: leave them); ``overrides``: stage -> option overrides of this invocation. Returns one
    line per stage invalidated, saying why."""
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
        elif recorded is not None and recorded != stage_inputs(cfg, stage, (overrides or {}).get(stage)):
            why.append(f"{cid}/{stage}: recomputed, the config it read changed")
        else:
            continue
        invalidate_stage(store, cid, stage)
    return why
