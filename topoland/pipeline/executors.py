"""Executors of grid cells: in this process, in local worker processes, or as Ray tasks.

The unit of work is a grid cell: one minimum and every per-cell stage around it.

- ``local`` with one worker runs the cells one after another in this process.
- ``local`` with ``workers = N`` runs N worker processes (spawned), each pinned to one GPU
  when several exist; they write to the run directory directly (same machine, same disk).
- ``ray`` runs each cell as a Ray task with the config's ``num_cpus``/``num_gpus``. Results
  are **returned to the driver and written there**: a task receives the cell's config and its
  already finished stage folders as bytes, runs the missing stages in a private temporary run
  directory, and returns the new stage folders as bytes. So workers need no shared
  filesystem, the driver is the only writer of the index, and the stored results are the
  same files a local run writes. A failed stage inside a task comes back with its
  traceback and is recorded in the index; a task that dies (out of memory, lost worker) is
  recorded as a failure of the cell's first unfinished stage. Without ``--address`` a
  private local Ray instance is started for the run and stopped after it: all CPUs, no
  dashboard, no usage statistics, a 256 MiB object store, ``topoland`` importable by the
  workers from wherever the driver imports it.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from topoland.errors import TopolandError
from topoland.pipeline.cells import run_cell_stages
from topoland.pipeline.context import DataCache
from topoland.runs.config import Cell
from topoland.runs.stages import CELL_STAGES
from topoland.runs.store import RunStore


def execute_cells(store: RunStore, cell_ids, stages, *, executor="local", address=None, config=None,
                  progress=True, overrides=None, data_cache: DataCache | None = None) -> list[tuple]:
    """Run ``stages`` for every cell; return failures as ``(cell_id, stage, message)``.

    ``config``: the run's config (``run.workers``, ``run.num_cpus``, ``run.num_gpus``);
    ``overrides``: stage -> options of this invocation, given to every cell; ``data_cache``: the
    datasets already loaded in this process (used by the inline executor)."""
    todo = [c for c in cell_ids if any(not store.is_done(c, s) for s in stages)]
    if not todo or not stages:
        return []
    overrides = dict(overrides or {})
    if executor == "ray":
        return _execute_ray(store, todo, stages, address=address, config=config or {}, progress=progress,
                            overrides=overrides)
    workers = int((config or {}).get("run", {}).get("workers", 1))
    if executor != "local":
        raise TopolandError(f"unknown executor {executor!r} (use 'local' or 'ray')")
    if workers > 1:
        return _execute_processes(store, todo, stages, workers, progress, overrides)
    return _execute_inline(store, todo, stages, progress, overrides, data_cache or DataCache())


def _bar(total, progress, desc):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit="cell", disable=not progress, dynamic_ncols=True)


def _execute_inline(store, todo, stages, progress, overrides, data_cache):
    failures = []
    with _bar(len(todo), progress, "cells") as bar:
        def on_stage(cid, stage):
            bar.set_postfix_str(f"cell {cid} · {stage}")
        for cid in todo:
            failures += run_cell_stages(store, cid, stages, on_stage=on_stage, overrides=overrides,
                                        data_cache=data_cache)
            bar.update(1)
    return failures


def _init_worker(filters):
    # a spawned process starts with Python's default warning filters: give it the parent's, so
    # that what the CLI silences (library chatter, PHATE's disconnected-graph warning) stays silent
    import warnings
    warnings.filters[:] = filters


def _worker(args):
    run_dir, cid, stages, gpu, overrides = args
    if gpu is not None:  # set before this worker process first touches CUDA
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    return run_cell_stages(RunStore.open(run_dir), cid, stages, overrides=overrides)


def _execute_processes(store, todo, stages, workers, progress, overrides):
    import multiprocessing as mp
    import warnings

    import torch
    n_gpu = torch.cuda.device_count()
    jobs = [(str(store.path), cid, list(stages), (i % n_gpu) if n_gpu > 1 else None, overrides)
            for i, cid in enumerate(todo)]
    failures = []
    with mp.get_context("spawn").Pool(workers, _init_worker, (list(warnings.filters),)) as pool, _bar(len(todo), progress, "cells") as bar:
        for f in pool.imap_unordered(_worker, jobs):
            failures += f
            bar.update(1)
    return failures


# ---------------------------------------------------------------------------------- Ray
def _pack(store: RunStore, cell_id: str, stages=None) -> dict:
    """The finished stage folders (files as bytes, and summaries) of a cell; by default all of
    them, since a stage reads the folders of earlier stages even when only it is asked for."""
    packed = {}
    for stage in CELL_STAGES if stages is None else stages:
        if store.is_done(cell_id, stage):
            d = store.stage_dir(cell_id, stage)
            packed[stage] = {"files": {p.relative_to(d).as_posix(): p.read_bytes()
                                       for p in sorted(d.rglob("*")) if p.is_file()},
                             "summary": store.summary(cell_id, stage), "inputs": store.inputs(cell_id, stage)}
    return packed


def _unpack_into(store: RunStore, cell_id: str, stage: str, item: dict):
    with store.stage(cell_id, stage) as box:
        for rel, data in item["files"].items():
            p = box["dir"] / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        box["summary"] = item["summary"]
        box["inputs"] = item.get("inputs")  # the config values the stage read, as recorded where it ran


def run_packed_cell(cell_config: dict, cell_id: str, packed: dict, stages, overrides=None
                    ) -> tuple[dict, list, dict]:
    """Run a cell's missing stages in a private temporary run directory (a Ray task's body).

    Returns ``(new stage folders as bytes, failures, tracebacks by stage)``.
    """
    with tempfile.TemporaryDirectory(prefix="topoland-cell-") as tmp:
        st = RunStore.create(Path(tmp) / "run", "", [Cell(cell_id, 0, cell_config)])
        for stage, item in packed.items():
            _unpack_into(st, cell_id, stage, item)
        failures = run_cell_stages(st, cell_id, stages, overrides=overrides)
        new = {k: v for k, v in _pack(st, cell_id, stages).items() if k not in packed}
        errors = {}
        df = st.stages()
        for _, row in df[df.status == "failed"].iterrows():
            errors[row.stage] = row.error
        return new, failures, errors


def _ray_init(ray, address):
    """Connect to ``address`` or start a small private local Ray instance (no dashboard, no
    usage reporting, a bounded object store), so that it starts on a small CI machine too."""
    if address:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
        return
    ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
             object_store_memory=_RAY_OBJECT_STORE_BYTES,
             # workers import topoland from where the driver does (a source checkout included)
             runtime_env={"env_vars": {"PYTHONPATH": _pythonpath()}})


_RAY_OBJECT_STORE_BYTES = 256 * 1024 ** 2


def _pythonpath() -> str:
    import topoland
    here = str(Path(topoland.__file__).resolve().parents[1])
    rest = os.environ.get("PYTHONPATH", "")
    return here + (os.pathsep + rest if rest else "")


def _execute_ray(store, todo, stages, *, address, config, progress, overrides):
    # Ray reports usage statistics over the network unless told not to
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError:
        raise TopolandError("the 'ray' executor needs Ray: pip install 'topoland[ray]'") from None
    run_cfg = config.get("run", {})
    started_here = False
    if not ray.is_initialized():
        try:
            _ray_init(ray, address)
        except Exception as e:  # e.g. no cluster at --address
            where = f"the Ray cluster at {address!r}" if address else "a local Ray instance"
            raise TopolandError(f"cannot start or reach {where}: {type(e).__name__}: {e}") from None
        started_here = True
    try:
        task = ray.remote(num_cpus=run_cfg.get("num_cpus", 1), num_gpus=run_cfg.get("num_gpus", 0),
                          max_retries=0)(run_packed_cell)
        refs = {task.remote(store.cell_config(cid), cid, _pack(store, cid), list(stages), overrides): cid
                for cid in todo}
        failures = []
        with _bar(len(refs), progress, "cells (ray)") as bar:
            pending = list(refs)
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                cid = refs[done[0]]
                try:
                    new, fails, errors = ray.get(done[0])
                except Exception as e:  # the task itself died (out of memory, worker or node lost)
                    import traceback
                    stage = next(s for s in stages if not store.is_done(cid, s))
                    msg = f"Ray task of the cell died: {type(e).__name__}: {e}"
                    new, fails = {}, [(cid, stage, msg.splitlines()[0])]
                    errors = {stage: f"{msg}\n{traceback.format_exc()}"}
                for stage in stages:
                    if stage in new:
                        _unpack_into(store, cid, stage, new[stage])
                for _, stage, msg in fails:
                    store.record_failure(cid, stage, errors.get(stage, msg))
                failures += fails
                bar.update(1)
        return failures
    finally:
        if started_here:
            ray.shutdown()
