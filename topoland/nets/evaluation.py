"""Batched evaluation of many parameter points over a dataset.

Batched evaluation runs ``torch.func.functional_call`` under ``vmap`` over the stacked points,
with the input batch shared by all points (``in_dims=None``: it is never copied per point),
in chunks of points sized to a memory budget. :func:`evaluate_loop` is the plain
``load_state_dict`` loop that tests compare against.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.nn.modules.batchnorm import _BatchNorm

from topoland.nets import metrics as _metrics
from topoland.nets.functional import _Mode, _Momentum, _split_model_state
from topoland.nets.params import ParamsError, _bn_modules, _leading, _shapes, unflatten
from topoland.utils import resolve_device

__all__ = ["evaluate", "evaluate_loop", "estimate_chunk_size"]

def _resolve(loss, metrics, y):
    name, fn, ms = _metrics.loss_and_metrics(loss, metrics, target=y, error=ParamsError)
    return fn, ms, _metrics.prepare_target(name, y)


# --------------------------------------------------------------------------------------------
# evaluation of many points
# --------------------------------------------------------------------------------------------


def _points_dict(model: nn.Module, points) -> dict[str, Tensor]:
    if isinstance(points, Tensor):
        if points.dim() == 1:
            raise ParamsError("points: got a (D,) vector; pass (P, D) (e.g. vec[None]) for one point")
        return unflatten(points, model)
    if not isinstance(points, Mapping):
        raise ParamsError(f"points must be a (P, D) tensor or a stacked dict, got {type(points).__name__}")
    shapes = _shapes(model)
    p = _leading(points, "points")
    for k, v in points.items():
        if k not in shapes:
            raise ParamsError(f"points: {k!r} is not a parameter or buffer of the model")
        if tuple(v.shape[1:]) != tuple(shapes[k]):
            raise ParamsError(f"points: {k!r} has per-point shape {tuple(v.shape[1:])}, "
                              f"the model's is {tuple(shapes[k])}")
    return dict(points)


def _model_dtypes(model):
    d = {n: p.dtype for n, p in model.named_parameters()}
    d.update({n: b.dtype for n, b in model.named_buffers()})
    return d


def _activation_numel(model: nn.Module, x1: Tensor, params1: dict, shared: dict) -> int:
    """Number of activation values per sample and point: sum of all module outputs."""
    total = [0]

    def hook(_m, _i, out):
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, Tensor):
                total[0] += t.numel()

    hs = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad(), _Mode(model, bn_train=False):
            functional_call(model, (params1, shared), (x1,))
    finally:
        for h in hs:
            h.remove()
    return max(total[0] // max(x1.shape[0], 1), 1)


def _default_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    # on the CPU large batched activations fall out of cache; moderate chunks run fastest
    return 256 * 2**20


def estimate_chunk_size(model: nn.Module, x: Tensor, batch_size: int, *, device="auto",
                        memory_budget: int | None = None, n_points: int | None = None) -> int:
    """Points per vmap call so that activations of (chunk x batch_size) samples fit the budget.

    Bytes per point ~ 3 x (activation values per sample x batch size + parameters) x itemsize.
    memory_budget: bytes (default: half the free GPU memory, or 256 MiB on the CPU).
    """
    device = resolve_device(device)
    budget = _default_budget(device) if memory_budget is None else int(memory_budget)
    params1 = {n: p.detach().to(device) for n, p in model.named_parameters()}
    shared = {n: b.detach().to(device) for n, b in model.named_buffers()}
    x1 = x[:2].to(device)
    acts = _activation_numel(model, x1, params1, shared)
    n_param = sum(p.numel() for p in model.parameters())
    itemsize = next(model.parameters()).element_size()
    per_point = 3 * (acts * min(batch_size, x.shape[0]) + n_param) * itemsize
    chunk = max(1, budget // per_point)
    return int(min(chunk, n_points)) if n_points else int(chunk)


def _batches(n: int, batch_size: int):
    for s in range(0, n, batch_size):
        yield slice(s, min(s + batch_size, n))


def _pair(x, y) -> tuple[Tensor, Tensor]:
    from topoland.splits import tensors_or_pair
    return tensors_or_pair(x, y, what="evaluate data", error=ParamsError)


def _check_data(x: Tensor, y: Tensor, batch_size: int, bn, bn_x):
    if x.shape[0] != y.shape[0]:
        raise ParamsError(f"x has {x.shape[0]} samples but y has {y.shape[0]}")
    if x.shape[0] == 0:
        raise ParamsError("x is empty")
    if batch_size < 1:
        raise ParamsError(f"batch_size must be >= 1, got {batch_size}")
    if bn not in ("eval", "recompute"):
        raise ParamsError(f"bn must be 'eval' or 'recompute', got {bn!r}")


def _bn_batches_ok(model, n_bn: int, batch_size: int):
    if any(isinstance(m, nn.BatchNorm1d) for m in _bn_modules(model)):
        sizes = [s.stop - s.start for s in _batches(n_bn, batch_size)]
        if 1 in sizes:
            raise ParamsError(f"bn='recompute': bn_x has {n_bn} samples, so batch_size={batch_size} "
                              f"leaves a batch of 1 sample, on which BatchNorm1d cannot compute "
                              f"statistics; change batch_size")


def _recompute_bn_batched(model, pchunk: dict, shared: dict, bn_x: Tensor, batch_size: int,
                          device) -> dict[str, Tensor]:
    """Per-point BN running stats recomputed from bn_x: mean over batches of the batch
    statistics (momentum=None semantics, as torch.optim.swa_utils.update_bn). Returns stacked
    {buffer name: (B, ...)} for every BN layer's running_mean / running_var / num_batches_tracked.
    """
    b = _leading(pchunk, "points")
    bns = [(n, m) for n, m in model.named_modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    keys = []
    for n, m in bns:
        pre = f"{n}." if n else ""
        keys += [pre + "running_mean", pre + "running_var"]
        if pre + "num_batches_tracked" in shared:
            keys.append(pre + "num_batches_tracked")
    # momentum 1 makes each forward write exactly the batch statistics into the running buffers
    state = {k: shared[k].unsqueeze(0).expand(b, *shared[k].shape).clone() for k in keys}
    rest = {k: v for k, v in shared.items() if k not in state}
    stat_keys = [k for k in keys if not k.endswith("num_batches_tracked")]
    sums = {k: torch.zeros(state[k].shape, dtype=torch.float64, device=device) for k in stat_keys}

    def f(p, st, xx):
        functional_call(model, (p, st, rest), (xx,))
        return st

    nb = 0
    with torch.no_grad(), _Mode(model, bn_train=True), _Momentum(model, {}, override=1.0):
        for sl in _batches(bn_x.shape[0], batch_size):
            xb = bn_x[sl].to(device)
            st = vmap(f, in_dims=(0, 0, None))(pchunk, state, xb)
            for k in stat_keys:
                sums[k] += st[k].to(torch.float64)
            nb += 1
    out = {k: (sums[k] / nb).to(shared[k].dtype) for k in stat_keys}
    for n, _m in bns:
        pre = f"{n}." if n else ""
        k = pre + "num_batches_tracked"
        if k in shared:
            out[k] = torch.full((b,), nb, dtype=shared[k].dtype, device=device)
    return out


def evaluate(model: nn.Module, points, x, y: Tensor | None = None, *,
             loss="cross_entropy", metrics=None, batch_size: int = 1024, chunk_size: int | None = None,
             bn: str = "eval", bn_x: Tensor | None = None, device="auto",
             memory_budget: int | None = None) -> dict[str, np.ndarray]:
    """Metrics of P parameter points over a dataset, batched with vmap.

    points: ``(P, D)`` flat (param_names order) or stacked dict ``{name: (P, *shape)}``
    (may include buffers). x: ``(N, *input_shape)`` with y ``(N, ...)`` targets, or with
    ``y=None`` any data form of one split (:func:`topoland.data.as_pair`: the train split of a
    DataSplits, an ``(x, y)`` pair, a Dataset). loss: a name of
    :data:`topoland.nets.losses.LOSSES` or a per-sample callable ``(output, target) -> (N,)``;
    the metric "loss" is its mean. metrics: :mod:`topoland.nets.metrics` (None: "loss" and,
    for class-index targets, "accuracy"); callables are applied to all points of a chunk at
    once, their outputs flattened to ``(B * N, ...)``.
    batch_size: samples per forward; chunk_size: points per vmap call (default from an
    activation-memory estimate and memory_budget bytes). bn: "eval" uses the given/model
    running statistics; "recompute" first recomputes BN statistics per point from bn_x
    (default x) in batches of batch_size (only BN layers in train mode; cumulative average).
    Returns ``{metric: np.ndarray (P,) float64}``. Sums are accumulated in float64.
    """
    x, y = _pair(x, y)
    _check_data(x, y, batch_size, bn, bn_x)
    loss_fn, ms, y = _resolve(loss, metrics, y)
    device = resolve_device(device)
    pts = _points_dict(model, points)
    p_total = _leading(pts, "points")
    dtypes = _model_dtypes(model)
    bn_src = x if bn_x is None else bn_x
    if bn == "recompute":
        _bn_batches_ok(model, bn_src.shape[0], batch_size)
    if chunk_size is None:
        chunk_size = estimate_chunk_size(model, x, batch_size, device=device,
                                         memory_budget=memory_budget, n_points=p_total)
    if chunk_size < 1:
        raise ParamsError(f"chunk_size must be >= 1, got {chunk_size}")
    n = x.shape[0]
    shared_all = _split_model_state(model, pts, device)
    results = {name: np.empty(p_total, dtype=np.float64) for name, _ in ms}
    budget = _default_budget(device) if memory_budget is None else int(memory_budget)
    if x.device != device and x.element_size() * x.numel() <= budget // 4:
        x, y = x.to(device), y.to(device)  # move the data once, not once per chunk
    if bn == "recompute" and bn_src.device != device and \
            bn_src.element_size() * bn_src.numel() <= budget // 4:
        bn_src = bn_src.to(device)
    with torch.no_grad():
        for c0 in range(0, p_total, chunk_size):
            c1 = min(c0 + chunk_size, p_total)
            chunk = {k: v[c0:c1].to(device=device, dtype=dtypes[k]) for k, v in pts.items()}
            shared = shared_all
            if bn == "recompute":
                stats = _recompute_bn_batched(model, chunk, shared_all, bn_src, batch_size, device)
                chunk = {**chunk, **stats}
                shared = {k: v for k, v in shared_all.items() if k not in stats}
            sums = {name: torch.zeros(c1 - c0, dtype=torch.float64, device=device) for name, _ in ms}

            def f(p, xx):
                return functional_call(model, (p, shared), (xx,))

            with _Mode(model, bn_train=False):
                for sl in _batches(n, batch_size):
                    xb, yb = x[sl].to(device), y[sl].to(device)
                    logits = vmap(f, in_dims=(0, None))(chunk, xb)
                    for name, s in _metrics.metric_sums(ms, loss_fn, logits, yb, error=ParamsError).items():
                        sums[name] += s
            for name in sums:
                results[name][c0:c1] = (sums[name] / n).cpu().numpy()
    return results


def evaluate_loop(model: nn.Module, points, x, y: Tensor | None = None, *,
                  loss="cross_entropy", metrics=None, batch_size: int = 1024, chunk_size: int | None = None,
                  bn: str = "eval", bn_x: Tensor | None = None, device="auto",
                  memory_budget: int | None = None) -> dict[str, np.ndarray]:
    """Reference for :func:`evaluate`: a plain loop of ``load_state_dict`` + forward per point.

    Same arguments and result; chunk_size and memory_budget are accepted and ignored. Works on
    a deep copy of the model, so the caller's model is untouched.
    """
    x, y = _pair(x, y)
    _check_data(x, y, batch_size, bn, bn_x)
    loss_fn, ms, y = _resolve(loss, metrics, y)
    device = resolve_device(device)
    pts = _points_dict(model, points)
    p_total = _leading(pts, "points")
    bn_src = x if bn_x is None else bn_x
    if bn == "recompute":
        _bn_batches_ok(model, bn_src.shape[0], batch_size)
    m = copy.deepcopy(model).to(device)
    base = {k: v.detach().clone() for k, v in m.state_dict().items()}
    n = x.shape[0]
    results = {name: np.empty(p_total, dtype=np.float64) for name, _ in ms}
    with torch.no_grad():
        for i in range(p_total):
            sd = dict(base)
            sd.update({k: v[i] for k, v in pts.items()})
            m.load_state_dict(sd)
            if bn == "recompute":
                bns = _bn_modules(m)
                moms = [b.momentum for b in bns]
                m.eval()
                for b in bns:
                    b.reset_running_stats()
                    b.momentum = None
                    b.train()
                for sl in _batches(bn_src.shape[0], batch_size):
                    m(bn_src[sl].to(device))
                for b, mom in zip(bns, moms):
                    b.momentum = mom
            m.eval()
            sums = {name: 0.0 for name, _ in ms}
            for sl in _batches(n, batch_size):
                logits = m(x[sl].to(device))
                yb = y[sl].to(device)
                for name, v in _metrics.per_sample(ms, loss_fn, logits, yb, error=ParamsError).items():
                    sums[name] += float(v.sum())
            for name in sums:
                results[name][i] = sums[name] / n
    return results
