"""The grid engine of the surfaces: data, loss and metrics, chunked evaluation, resumable stores.

:func:`_resolve` turns the data (tensors or one data form, :mod:`topoland.splits`) into the
train (and test) split and resolves the loss and metrics (:mod:`topoland.nets.metrics`).
:func:`_evaluate_surface` evaluates every coefficient row of a 1-D or 2-D grid with the chosen
evaluator (``"batched"``/``"loop"``: :mod:`topoland.nets.evaluation`; ``"linear-first"``:
:mod:`topoland.landscape.linear_first`; ``"auto"``) and returns a
:class:`~topoland.landscape.surface_points.Surface`; with ``store`` the chunks go to a
resumable :class:`~topoland.landscape.storage.GridStore`.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from topoland.errors import ConfigError
from topoland.nets import evaluation as _evaluation
from topoland.nets import losses as _losses
from topoland.nets import metrics as _metrics
from topoland.landscape.linear_first import _LinearFirst, _eval_linear_first, _linear_first_ok
from topoland.landscape.surface_points import Surface, SurfaceError, _points, _setup, _state
from topoland.utils import resolve_device


_SHORT = {"loss": "loss", "accuracy": "acc", "error": "err"}
_EVALUATORS = ("auto", "batched", "loop", "linear-first")


def _is_tensor_pair(x, y) -> bool:
    return isinstance(x, Tensor) and isinstance(y, Tensor)


def _raw_splits(x, y, x_test, y_test) -> list[tuple[str, Tensor, Tensor]]:
    """``[("train", x, y), ("test", x, y)?]`` from tensors or one data form (``y=None``)."""
    from torch.utils.data import Dataset

    from topoland.splits import DataSplits, as_pair, as_splits

    if y is None:
        if isinstance(x, Tensor):
            raise SurfaceError("y is missing: pass x and y tensors, or one data form (a DataSplits, a "
                               "mapping of splits, an (x, y) pair, a Dataset) as x with y omitted")
        if isinstance(x, (DataSplits, Mapping)):
            ds = as_splits(x, what="surface data")
            train = ds.split("train")
            if x_test is None and y_test is None:
                x_test, y_test = ds.split("test")
        else:
            train = as_pair(x, "train", what="surface data")
    elif _is_tensor_pair(x, y):
        train = (x, y)
    elif isinstance(x, (DataSplits, Mapping, tuple, list, Dataset)):
        raise SurfaceError(f"x is a {type(x).__name__}, a data form that carries its own targets: omit y "
                           f"(got a {type(y).__name__}; a line's alphas then go by keyword, alphas=...)")
    else:  # arrays: checked and converted as an (x, y) pair
        train = as_pair((x, y), "train", what="surface data")
    out = [("train", *train)]
    if x_test is not None and y_test is None and not isinstance(x_test, Tensor):
        x_test, y_test = as_pair(x_test, "test", what="surface x_test")
    if (x_test is None) != (y_test is None):
        raise SurfaceError("pass both x_test and y_test, or neither")
    if x_test is not None:
        if not _is_tensor_pair(x_test, y_test):  # arrays: checked and converted as a pair
            x_test, y_test = as_pair((x_test, y_test), "test", what="surface x_test, y_test")
        out.append(("test", x_test, y_test))
    for split, xs_, ys_ in out:
        if xs_.shape[0] != ys_.shape[0]:
            raise SurfaceError(f"x_{split} has {xs_.shape[0]} samples but y_{split} has {ys_.shape[0]}")
        if xs_.shape[0] == 0:
            raise SurfaceError(f"x_{split} is empty")
    kinds = {split: ys_.is_floating_point() for split, _, ys_ in out}
    if len(set(kinds.values())) > 1:
        raise SurfaceError("the splits mix class labels and regression targets ("
                           + ", ".join(f"y_{s}: {'float' if f else 'integer'}" for s, f in kinds.items()) + ")")
    return out


def _check_on_batch(model, name, loss_fn, ms, x, y) -> None:
    """Run the model (eval mode, no grad, modes restored) on two samples and check the loss
    and every metric there, so that shape errors are raised before any evaluation."""
    state = _state(model)
    dev = next(iter(state.values())).device if state else torch.device("cpu")
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            out = model(x[:2].to(dev))
    finally:
        for m, t in modes:
            m.training = t
    yb = y[:2].to(out.device)
    try:
        if _losses.LOSSES.get(name) is loss_fn:  # a named loss: also the target's shape
            _losses.resolve_loss(name, output=out, target=yb)
        else:
            _losses.check_loss_output(name, loss_fn, out, yb)
    except ConfigError as exc:
        raise SurfaceError(str(exc)) from None
    _metrics.per_sample(ms, loss_fn, out, yb, error=SurfaceError)


def _resolve(model, loss, metrics, x, y, x_test, y_test):
    """``(loss_name, loss_fn, ms, splits)``: the resolved loss and metrics
    (:func:`topoland.nets.metrics.loss_and_metrics`) and ``[(split, x, y)]`` with the targets as
    the loss reads them (:func:`topoland.nets.metrics.prepare_target`; float targets stay float)."""
    raw = _raw_splits(x, y, x_test, y_test)
    name, loss_fn, _ = _metrics.loss_and_metrics(loss, "loss", target=None, error=SurfaceError)
    # targets first, as before: float class labels under a classification loss stay accepted
    splits = [(split, xs_, _metrics.prepare_target(name, ys_)) for split, xs_, ys_ in raw]
    ms = _metrics.resolve_metrics(metrics, loss_name=name, target=splits[0][2], error=SurfaceError)
    _check_on_batch(model, name, loss_fn, ms, splits[0][1], splits[0][2])
    return name, loss_fn, ms, splits


def _value_keys(ms, splits) -> list[str]:
    """``{split}_{short}`` for every split and metric (short: loss, acc, err or the name)."""
    keys = [f"{s}_{_SHORT.get(name, name)}" for s, _, _ in splits for name, _ in ms]
    if len(set(keys)) != len(keys):
        raise SurfaceError(f"metric names {[n for n, _ in ms]} give duplicate value keys {keys} "
                           f"('accuracy' is recorded as '_acc', 'error' as '_err')")
    return keys


def _run_grid(model, names, origin, dirs, kind, coeffs: np.ndarray, splits, ms, *, loss, evaluator,
              chunk_points, batch_size, bn, device, store=None, on_chunk=None, pending=None):
    """Evaluate every coefficient row (P, k); returns ({key: (P,)}, evaluator used).

    loss: the resolved ``(name, per-sample fn)``; ms: the resolved metrics; splits: from
    :func:`_resolve`."""
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
                                         loss[1], batch_size, device)
            else:
                pts = _points(names, origin, dirs, coeffs[idx], model)
                fn = _evaluation.evaluate if used == "batched" else _evaluation.evaluate_loop
                kw = {} if used == "loop" else {"chunk_size": len(idx)}
                res = fn(model_dev, pts, xs_, ys_, loss=loss, metrics=ms, batch_size=batch_size,
                         bn=bn, device=device, **kw)
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


def _evaluate_surface(model, dirs_dicts, xs, ys, x, y, *, x_test, y_test, loss="cross_entropy",
                      metrics=None, origin=None, evaluator, chunk_points, batch_size, bn, device,
                      store, on_chunk, meta):
    names, o, dirs, kind = _setup(model, dirs_dicts, origin)
    loss_name, loss_fn, ms, splits = _resolve(model, loss, metrics, x, y, x_test, y_test)
    keys = _value_keys(ms, splits)
    meta = {**meta, "loss": loss_name}
    if ys is None:
        coeffs = xs[:, None]
        shape = (len(xs),)
    else:
        gx, gy = np.meshgrid(xs, ys)
        coeffs = np.stack([gx.reshape(-1), gy.reshape(-1)], axis=1)
        shape = (len(ys), len(xs))
    values = None
    if store is not None:
        from topoland.landscape.storage import GridStore, GridStoreError

        yy = np.zeros(1) if ys is None else ys
        with GridStore.open(store, xs=xs, ys=yy, directions=dirs.to(torch.float32).numpy(),
                            metrics=keys, origin=o.to(torch.float32).numpy(),
                            kind=meta.get("kind", "surface"), meta=meta) as st:
            stored = st.meta().get("loss", "cross_entropy")  # stores before losses: cross-entropy
            if stored != loss_name:
                raise GridStoreError(f"{st.path} holds values of the loss {stored!r}, not {loss_name!r}; "
                                     f"use a new file or the same loss to resume")
            pending = st.pending()
            _, used = _run_grid(model, names, o, dirs, kind, coeffs, splits, ms,
                                loss=(loss_name, loss_fn), evaluator=evaluator, chunk_points=chunk_points,
                                batch_size=batch_size, bn=bn, device=device, store=st,
                                on_chunk=on_chunk, pending=pending)
            _, _, vals, _ = st.read()
        values = {k: v.reshape(shape) for k, v in vals.items()}
        meta = {**meta, "resumed_points": int(len(coeffs) - len(pending))}
    else:
        vals, used = _run_grid(model, names, o, dirs, kind, coeffs, splits, ms,
                               loss=(loss_name, loss_fn), evaluator=evaluator,
                               chunk_points=chunk_points, batch_size=batch_size, bn=bn,
                               device=device)
        values = {k: v.reshape(shape) for k, v in vals.items()}
    meta = {**meta, "evaluator": used, "names": names, "direction_kind": kind, "bn": bn}
    return Surface(xs=xs, ys=ys, values=values, directions=list(dirs_dicts), meta=meta)
