"""The samples of a jump-and-retrain run and their storage: :class:`SampleResult`, its table
columns, the storage policies (``full``, ``half``, ``sketch``) with the recorder that applies
them during a run, and the files on disk (:func:`save_samples`, :func:`load_samples`)."""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from topoland.errors import StoreError
from topoland.io import atomic_path, load_tensors, save_tensors
from topoland.sampling.seeds import _PROJECTION_BLOCK, random_projection

__all__ = ["SampleResult", "STORAGE_POLICIES", "TABLE_COLUMNS", "save_samples", "load_samples"]

STORAGE_POLICIES = ("full", "half", "sketch")
TABLE_COLUMNS = ("sample_id", "trajectory", "direction", "step", "epoch", "train_loss", "train_acc",
                 "val_loss", "val_acc", "test_loss", "test_acc", "diverged")
_SPLITS = ("train", "val", "test")


@dataclass
class SampleResult:
    """Trajectories sampled around one minimum.

    table: one row per snapshot (columns :data:`TABLE_COLUMNS`, then ``<split>_<name>`` for the
    user metrics ``config["metrics"]``; ordered by ``sample_id``).
    params: ``(N, D)`` float32 (``full``) or float16 (``half``) snapshots, row = sample_id;
    None for ``sketch``. gram: ``(N, N)`` float64 inner products of the float32 snapshots
    (``sketch`` only). projection: ``(N, r)`` float32, snapshots times
    :func:`~topoland.sampling.seeds.random_projection` ``(D, r)`` (``sketch`` only). theta_star: ``(D,)`` float32;
    directions: ``(n_dir, D)`` float32; config: the sampler's settings and derived seeds.
    """

    table: pd.DataFrame
    params: Tensor | None
    gram: Tensor | None
    projection: Tensor | None
    theta_star: Tensor
    directions: Tensor
    config: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- storage during a run


class _Recorder:
    """Collects one (J, D) snapshot round per record and the metrics."""

    def __init__(self, storage, n_traj, n_rec, d, device, sketch_dim, sketch_seed, sketch_buffer, extra=()):
        self.storage, self.J, self.R, self.D = storage, n_traj, n_rec, d
        self.sketch_dim, self.sketch_seed, self.device = sketch_dim, sketch_seed, device
        if storage == "sketch":
            where = device if sketch_buffer == "device" else torch.device("cpu")
            self.snap = torch.empty(n_traj, n_rec, d, dtype=torch.float32, device=where)
        else:
            dtype = torch.float32 if storage == "full" else torch.float16
            self.snap = torch.empty(n_traj, n_rec, d, dtype=dtype)
        self.metrics = {f"{s}_{m}": np.full((n_traj, n_rec), np.nan)
                        for s in _SPLITS for m in ("loss", "acc", *extra)}
        self.diverged = np.zeros((n_traj, n_rec), dtype=bool)

    def snapshot(self, r: int, flat: Tensor, traj: slice | int = slice(None)):
        self.snap[traj, r] = flat.detach().to(self.snap.device, self.snap.dtype)

    def finish(self):
        n = self.J * self.R
        if self.storage != "sketch":
            return self.snap.reshape(n, self.D), None, None
        s = self.snap.reshape(n, self.D)
        gram = torch.zeros(n, n, dtype=torch.float64, device=self.device)
        proj = torch.zeros(n, self.sketch_dim, dtype=torch.float64, device=self.device)
        for lo in range(0, self.D, _PROJECTION_BLOCK):
            blk = s[:, lo:lo + _PROJECTION_BLOCK].to(self.device, torch.float64)
            gram += blk @ blk.T
            rmat = random_projection(self.D, self.sketch_dim, self.sketch_seed,
                                     rows=slice(lo, lo + _PROJECTION_BLOCK), device=self.device)
            proj += blk @ rmat.double()
        self.snap = None  # the snapshots are not part of a sketch result
        return None, gram.cpu(), proj.float().cpu()


# --------------------------------------------------------------------------- storage on disk


def _atomic_write(path: Path, write: Callable[[str], None]):
    with atomic_path(path) as tmp:
        write(str(tmp))


def save_samples(result: SampleResult, directory) -> Path:
    """Write a result to ``directory``: ``samples.csv`` (table), ``arrays.safetensors``
    (theta_star, directions and params or gram + projection) and ``config.json``, each
    atomically (temporary name + rename); ``config.json`` is written last and marks completion."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    arrays = {"theta_star": result.theta_star, "directions": result.directions}
    for key in ("params", "gram", "projection"):
        if getattr(result, key) is not None:
            arrays[key] = getattr(result, key)
    save_tensors(d / "arrays.safetensors", arrays, sorted_header=False)
    _atomic_write(d / "samples.csv", lambda p: result.table.to_csv(p, index=False))
    _atomic_write(d / "config.json",
                  lambda p: Path(p).write_text(json.dumps(result.config, indent=1, sort_keys=True)))
    return d


def metric_columns(config: dict) -> list[str]:
    """The table columns of the user metrics ``config["metrics"]`` (after :data:`TABLE_COLUMNS`):
    ``<split>_<name>`` for each split and metric."""
    return [f"{s}_{m}" for s in _SPLITS for m in config.get("metrics", ())]


def load_samples(directory) -> SampleResult:
    """Read a result written by :func:`save_samples`; raises StoreError if incomplete."""
    d = Path(directory)
    for name in ("config.json", "arrays.safetensors", "samples.csv"):
        if not (d / name).is_file():
            raise StoreError(f"sample directory {str(d)!r} has no {name}: sampling did not finish")
    arrays, _ = load_tensors(d / "arrays.safetensors", what="sample file")
    table = pd.read_csv(d / "samples.csv")
    config = json.loads((d / "config.json").read_text())
    expected = [*TABLE_COLUMNS, *metric_columns(config)]
    if list(table.columns) != expected:
        raise StoreError(f"{str(d / 'samples.csv')!r} has columns {list(table.columns)}, "
                         f"expected {expected}")
    table["diverged"] = table["diverged"].astype(bool)
    return SampleResult(table=table, params=arrays.get("params"), gram=arrays.get("gram"),
                        projection=arrays.get("projection"), theta_star=arrays["theta_star"],
                        directions=arrays["directions"],
                        config=config)
