"""Running the per-cell stages of one grid cell, in order, skipping what is stored: the body every
executor runs."""
from __future__ import annotations

from topoland.errors import TopolandError
from topoland.pipeline.cell_stages import CELL_STAGE_FUNCS
from topoland.pipeline.context import CellContext, DataCache
from topoland.runs.freshness import stage_inputs
from topoland.runs.stages import CELL_STAGES
from topoland.runs.store import RunStore


def _skip_reason(store: RunStore, cell_id: str, stage: str) -> str | None:
    """Why ``stage`` is not run on a cell: a diverged training left no minimum to study."""
    if stage != "train" and store.is_done(cell_id, "train"):
        summ = store.summary(cell_id, "train")
        if summ.get("diverged"):
            return f"training diverged (non-finite loss after {summ.get('epochs_run', '?')} epochs)"
    return None


def apply_threads(cfg: dict):
    """Set torch's CPU threads from ``run.threads`` (small models run faster on one thread)."""
    n = int(cfg.get("run", {}).get("threads", 0) or 0)
    if n:
        import torch
        torch.set_num_threads(n)


def run_cell_stages(store: RunStore, cell_id: str, stages, *, on_stage=None, overrides=None,
                    data_cache: DataCache | None = None) -> list[tuple]:
    """Run the per-cell ``stages`` of one cell in order, skipping finished ones.

    A failing stage is recorded (error and traceback in the index) and ends the cell's work;
    the failure is returned, not raised, so other cells go on. ``overrides``: stage -> options
    of this invocation (recorded with the stage's inputs).
    """
    ctx = CellContext(store, cell_id, store.cell_config(cell_id), overrides=dict(overrides or {}),
                      data_cache=data_cache or DataCache())
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
                box["summary"] = CELL_STAGE_FUNCS[stage](ctx, box["dir"]) or {}
                box["inputs"] = stage_inputs(ctx.config, stage, ctx.overrides.get(stage))
        except KeyboardInterrupt:
            raise
        except Exception as e:  # recorded in the index by store.stage; other cells go on
            msg = str(e) if isinstance(e, TopolandError) else f"{type(e).__name__}: {e}"
            failures.append((cell_id, stage, msg))
            break
    return failures
