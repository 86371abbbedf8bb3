"""The grid engine of the surfaces: metrics, splits, chunked evaluation and resumable stores.

:func:`_evaluate_surface` evaluates every coefficient row of a 1-D or 2-D grid with the chosen
evaluator (``"batched"``/``"loop"``: :mod:`topoland.nets.params`; ``"linear-first"``:
:mod:`topoland.landscape.linear_first`; ``"auto"``) and returns a
:class:`~topoland.landscape.surface_points.Surface`; with ``store`` the chunks go to a
resumable :class:`~topoland.landscape.storage.GridStore`.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from topoland.nets import evaluation as _evaluation
from topoland.landscape.linear_first import _LinearFirst, _eval_linear_first, _linear_first_ok
from topoland.landscape.surface_points import Surface, SurfaceError, _points, _setup
from topoland.utils import resolve_device


_SHORT = {"loss": "loss", "accuracy": "acc", "error": "err"}
_EVALUATORS = ("auto", "batched", "loop", "linear-first")


def _metric_items(metrics) -> list[tuple[str, object]]:
    if isinstance(metrics, str) or callable(metrics):
        metrics = (metrics,)
    items = list(metrics.items()) if isinstance(metrics, Mapping) else [
        (m, m) if isinstance(m, str) else (m if isinstance(m, tuple) else (m.__name__, m))
        for m in metrics]
    for name, m in items:
        if isinstance(m, str) and m not in _SHORT:
            raise SurfaceError(f"unknown metric {m!r}; use one of {tuple(_SHORT)} or (name, fn)")
    if not items:
        raise SurfaceError("metrics is empty")
    return items


def _splits(x, y, x_test, y_test):
    if (x_test is None) != (y_test is None):
        raise SurfaceError("pass both x_test and y_test, or neither")
    out = [("train", x, y.to(torch.long))]
    if x_test is not None:
        out.append(("test", x_test, y_test.to(torch.long)))
    return out


def _value_keys(ms, splits) -> list[str]:
    return [f"{s}_{_SHORT.get(name, name)}" for s, _, _ in splits for name, _ in ms]


def _run_grid(model, names, origin, dirs, kind, coeffs: np.ndarray, splits, ms, *, evaluator,
              chunk_points, batch_size, bn, device, store=None, on_chunk=None, pending=None):
    """Evaluate every coefficient row (P, k); returns ({key: (P,)}, evaluator used)."""
    if evaluator not in _EVALUATORS:
        raise SurfaceError(f"evaluator must be one of {_EVALUATORS}, got {evaluator!r}")
    if chunk_points < 1:
        raise SurfaceError(f"chunk_points must be >= 1, got {chunk_points}")
    device = resolve_device(device)
    used = evaluator
    lf = None
    if evaluator in ("auto", "linear-first"):
        why = _linear_first_ok(model, kind, bn)
        if why is None:
            used, lf = "linear-first", _LinearFirst(model)
        elif evaluator == "linear-first":
            raise SurfaceError(f"evaluator 'linear-first' does not apply: {why}")
        else:
            used = "batched"
    keys = _value_keys(ms, splits)
    total = len(coeffs)
    out = {k: np.full(total, np.nan) for k in keys}
    todo = np.arange(total) if pending is None else np.asarray(pending, dtype=np.int64)
    model_dev = model
    for c0 in range(0, len(todo), chunk_points):
        idx = todo[c0:c0 + chunk_points]
        chunk_vals = {}
        for split, xs_, ys_ in splits:
            if used == "linear-first":
                res = _eval_linear_first(lf, model, names, origin, dirs, coeffs[idx], xs_, ys_, ms,
                                         batch_size, device)
            else:
                pts = _points(names, origin, dirs, coeffs[idx], model)
                fn = _evaluation.evaluate if used == "batched" else _evaluation.evaluate_loop
                kw = {} if used == "loop" else {"chunk_size": len(idx)}
                res = fn(model_dev, pts, xs_, ys_, metrics=ms, batch_size=batch_size, bn=bn,
                         device=device, **kw)
            for name, _ in ms:
                chunk_vals[f"{split}_{_SHORT.get(name, name)}"] = np.asarray(res[name], dtype=np.float64)
        for k in keys:
            out[k][idx] = chunk_vals[k]
        if store is not None:
            store.write(idx, chunk_vals)
        if on_chunk is not None:
            on_chunk(c0 + len(idx), len(todo))
    return out, ("batched" if used == "auto" else used)


def _grid_axis(grid, rng, name) -> np.ndarray:
    if isinstance(grid, (int, np.integer)):
        if grid < 1:
            raise SurfaceError(f"grid must be >= 1 points, got {grid}")
        lo, hi = rng
        return np.linspace(float(lo), float(hi), int(grid))
    arr = np.asarray(grid, dtype=np.float64).reshape(-1)
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise SurfaceError(f"grid coordinates '{name}' must be finite and non-empty")
    return arr


def _evaluate_surface(model, dirs_dicts, xs, ys, x, y, *, x_test, y_test, metrics, origin=None,
                      evaluator, chunk_points, batch_size, bn, device, store, on_chunk, meta):
    names, o, dirs, kind = _setup(model, dirs_dicts, origin)
    ms = _metric_items(metrics)
    splits = _splits(x, y, x_test, y_test)
    keys = _value_keys(ms, splits)
    if ys is None:
        coeffs = xs[:, None]
        shape = (len(xs),)
    else:
        gx, gy = np.meshgrid(xs, ys)
        coeffs = np.stack([gx.reshape(-1), gy.reshape(-1)], axis=1)
        shape = (len(ys), len(xs))
    values = None
    if store is not None:
        from topoland.landscape.storage import GridStore

        yy = np.zeros(1) if ys is None else ys
        with GridStore.open(store, xs=xs, ys=yy, directions=dirs.to(torch.float32).numpy(),
                            metrics=keys, origin=o.to(torch.float32).numpy(),
                            kind=meta.get("kind", "surface"), meta=meta) as st:
            pending = st.pending()
            _, used = _run_grid(model, names, o, dirs, kind, coeffs, splits, ms,
                                evaluator=evaluator, chunk_points=chunk_points,
                                batch_size=batch_size, bn=bn, device=device, store=st,
                                on_chunk=on_chunk, pending=pending)
            _, _, vals, _ = st.read()
        values = {k: v.reshape(shape) for k, v in vals.items()}
        meta = {**meta, "resumed_points": int(len(coeffs) - len(pending))}
    else:
        vals, used = _run_grid(model, names, o, dirs, kind, coeffs, splits, ms, evaluator=evaluator,
                               chunk_points=chunk_points, batch_size=batch_size, bn=bn,
                               device=device)
        values = {k: v.reshape(shape) for k, v in vals.items()}
    meta = {**meta, "evaluator": used, "names": names, "direction_kind": kind, "bn": bn}
    return Surface(xs=xs, ys=ys, values=values, directions=list(dirs_dicts), meta=meta)
