"""Resumable HDF5 store for surface grids (1-D lines and 2-D planes).

Layout of one file::

    /xs                (nx,)   float64   coordinates along direction 0
    /ys                (ny,)   float64   coordinates along direction 1 (ny = 1 for a line)
    /directions        (k, D)  float32   the flat directions (k = 1 or 2)
    /origin            (D,)    float32   the flat centre point (optional)
    /values/<metric>   (ny, nx) float64  NaN until evaluated
    /done              (ny, nx) bool     which points are evaluated
    attrs: format, kind, meta (JSON)

The file is created atomically (temporary name, then rename); values are written and flushed
chunk by chunk, so an interrupted grid resumes where it stopped and skips done points.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from topoland.errors import StoreError
from topoland.io import atomic_path

FORMAT = "topoland-surface-grid-1"


class GridStoreError(StoreError):
    """A surface grid file does not match the grid being resumed (directions, axes, metrics)."""


class GridStore:
    """An open HDF5 grid; use :meth:`open` and close it (or use it as a context manager)."""

    def __init__(self, path: Path, handle):
        self.path = Path(path)
        self._h = handle

    # ------------------------------------------------------------------ creation / validation
    @classmethod
    def open(cls, path, *, xs, ys, directions, metrics, origin=None, kind="plane",
             meta=None) -> "GridStore":
        """Create the file at ``path`` or reopen it for resuming.

        xs: (nx,), ys: (ny,) grid coordinates; directions: (k, D) flat directions;
        metrics: metric names; origin: optional (D,) centre point. On reopening, every one of
        these must match what is stored, else :class:`GridStoreError` names the mismatch.
        """
        import h5py

        path = Path(path)
        xs = np.asarray(xs, dtype=np.float64)
        ys = np.asarray(ys, dtype=np.float64)
        dirs = np.asarray(directions, dtype=np.float32)
        if dirs.ndim == 1:
            dirs = dirs[None]
        org = None if origin is None else np.asarray(origin, dtype=np.float32).reshape(-1)
        metrics = [str(m) for m in metrics]
        if not path.exists():
            with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
                f.attrs["format"] = FORMAT
                f.attrs["kind"] = str(kind)
                f.attrs["meta"] = json.dumps(meta or {}, default=_json_default)
                f.attrs["metrics"] = json.dumps(metrics)
                f.create_dataset("xs", data=xs)
                f.create_dataset("ys", data=ys)
                f.create_dataset("directions", data=dirs)
                if org is not None:
                    f.create_dataset("origin", data=org)
                g = f.create_group("values")
                for m in metrics:
                    g.create_dataset(m, data=np.full((len(ys), len(xs)), np.nan))
                f.create_dataset("done", data=np.zeros((len(ys), len(xs)), dtype=bool))
        try:
            handle = h5py.File(path, "r+")
        except OSError as e:
            raise GridStoreError(f"surface grid file {path} cannot be opened: {e}") from e
        store = cls(path, handle)
        try:
            store._validate(xs, ys, dirs, metrics, org)
        except Exception:
            handle.close()
            raise
        return store

    def _validate(self, xs, ys, dirs, metrics, org):
        f = self._h
        if f.attrs.get("format") != FORMAT:
            raise GridStoreError(f"{self.path} is not a topoland surface grid file")
        if json.loads(f.attrs["metrics"]) != metrics:
            raise GridStoreError(
                f"{self.path} holds metrics {json.loads(f.attrs['metrics'])}, not {metrics}")
        for name, want in (("xs", xs), ("ys", ys)):
            have = f[name][()]
            if have.shape != want.shape or not np.allclose(have, want, rtol=0, atol=1e-12):
                raise GridStoreError(f"{self.path}: grid coordinates '{name}' differ from the stored grid")
        have = f["directions"][()]
        if have.shape != dirs.shape or not np.array_equal(have, dirs):
            raise GridStoreError(
                f"{self.path}: the directions differ from those stored (shape {have.shape} vs "
                f"{dirs.shape}); use a new file or the same directions to resume")
        if org is not None:
            if "origin" not in f or not np.array_equal(f["origin"][()], org):
                raise GridStoreError(f"{self.path}: the origin (centre model) differs from the stored one")

    # ------------------------------------------------------------------ reading / writing
    @property
    def shape(self) -> tuple[int, int]:
        """(ny, nx)."""
        return tuple(self._h["done"].shape)

    @property
    def metrics(self) -> list[str]:
        return json.loads(self._h.attrs["metrics"])

    def done_mask(self) -> np.ndarray:
        """(ny, nx) bool."""
        return self._h["done"][()]

    def pending(self) -> np.ndarray:
        """Flat (row-major over (ny, nx)) indices of points not yet evaluated, ascending."""
        return np.flatnonzero(~self.done_mask().reshape(-1))

    def write(self, flat_index, values: dict) -> None:
        """Store ``values[metric]`` (n,) at flat indices (n,), mark them done, flush."""
        idx = np.asarray(flat_index, dtype=np.int64).reshape(-1)
        ny, nx = self.shape
        rows, cols = np.divmod(idx, nx)
        for m in self.metrics:
            if m not in values:
                raise GridStoreError(f"{self.path}: chunk lacks metric '{m}'")
            arr = self._h["values"][m][()]
            arr[rows, cols] = np.asarray(values[m], dtype=np.float64).reshape(-1)
            self._h["values"][m][...] = arr
        done = self._h["done"][()]
        done[rows, cols] = True
        self._h["done"][...] = done
        self._h.flush()

    def read(self) -> tuple[np.ndarray, np.ndarray, dict, np.ndarray]:
        """(xs (nx,), ys (ny,), {metric: (ny, nx)}, done (ny, nx))."""
        vals = {m: self._h["values"][m][()] for m in self.metrics}
        return self._h["xs"][()], self._h["ys"][()], vals, self.done_mask()

    def directions(self) -> np.ndarray:
        """(k, D) float32."""
        return self._h["directions"][()]

    def meta(self) -> dict:
        return json.loads(self._h.attrs["meta"])

    def close(self) -> None:
        if self._h is not None:
            self._h.close()
            self._h = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_grid(path) -> dict:
    """Read a grid file: dict with xs, ys, values, done, directions, origin (or None), kind, meta."""
    import h5py

    path = Path(path)
    if not path.exists():
        raise GridStoreError(f"surface grid file {path} does not exist")
    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != FORMAT:
            raise GridStoreError(f"{path} is not a topoland surface grid file")
        metrics = json.loads(f.attrs["metrics"])
        return {
            "xs": f["xs"][()], "ys": f["ys"][()],
            "values": {m: f["values"][m][()] for m in metrics},
            "done": f["done"][()], "directions": f["directions"][()],
            "origin": f["origin"][()] if "origin" in f else None,
            "kind": str(f.attrs["kind"]), "meta": json.loads(f.attrs["meta"]),
        }


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)
