"""Flat views of parameters and batched (torch.func) evaluation of many parameter points.

A *point* is one full set of trainable parameters of a model. Many points are held either as
a flat tensor ``(P, D)`` (parameters concatenated in :func:`param_names` order) or as a
*stacked dict* ``{name: (P, *shape)}``. A stacked dict may also carry buffers (e.g. BN running
statistics for "states" directions); any parameter or buffer it lacks is taken from the model
and shared by all points.

Batched evaluation runs ``torch.func.functional_call`` under ``vmap`` over the stacked points,
with the input batch shared by all points (``in_dims=None``: it is never copied per point),
in chunks of points sized to a memory budget. :func:`evaluate_loop` is the plain
``load_state_dict`` loop that tests compare against.
"""
from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap
from torch.nn.modules.batchnorm import _BatchNorm

from topoland.errors import TopolandError
from topoland.utils import resolve_device

__all__ = [
    "ParamsError",
    "has_batchnorm",
    "param_names",
    "buffer_names",
    "get_params",
    "get_buffers",
    "flatten",
    "unflatten",
    "stack",
    "functional_logits",
    "batched_grad",
    "evaluate",
    "evaluate_loop",
    "estimate_chunk_size",
]

_BUILTIN_METRICS = ("loss", "accuracy", "error")


class ParamsError(TopolandError):
    """Parameter points, buffers or metrics do not match the model; the message names the culprit."""


# --------------------------------------------------------------------------------------------
# names, dicts and flat vectors
# --------------------------------------------------------------------------------------------

def param_names(model: nn.Module) -> list[str]:
    """Names of the trainable parameters (``requires_grad``), in module order."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


def buffer_names(model: nn.Module) -> list[str]:
    """Names of all buffers (running statistics, ``num_batches_tracked``, ...), in module order."""
    return [n for n, _ in model.named_buffers()]


def get_params(model: nn.Module) -> dict[str, Tensor]:
    """Detached copies of the trainable parameters, ``{name: tensor}`` in module order."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def get_buffers(model: nn.Module) -> dict[str, Tensor]:
    """Detached copies of all buffers, ``{name: tensor}`` in module order."""
    return {n: b.detach().clone() for n, b in model.named_buffers()}


def flatten(tensors: Mapping[str, Tensor], names: Sequence[str] | None = None, *,
            stacked: bool = False) -> Tensor:
    """Concatenate tensors into one vector.

    tensors: ``{name: tensor}``; names: order (default: the dict's order).
    Returns ``(D,)``; with ``stacked=True`` every tensor has a leading point dim B and the
    result is ``(B, D)``. Tensors are promoted to a common dtype.
    """
    names = list(tensors.keys()) if names is None else list(names)
    missing = [n for n in names if n not in tensors]
    if missing:
        raise ParamsError(f"flatten: tensor {missing[0]!r} is missing from the dict")
    if not names:
        raise ParamsError("flatten: no tensors to flatten")
    dtype = tensors[names[0]].dtype
    for n in names[1:]:
        dtype = torch.promote_types(dtype, tensors[n].dtype)
    if not stacked:
        return torch.cat([tensors[n].reshape(-1).to(dtype) for n in names])
    b = tensors[names[0]].shape[0] if tensors[names[0]].dim() else None
    for n in names:
        t = tensors[n]
        if t.dim() == 0 or t.shape[0] != b:
            raise ParamsError(f"flatten: stacked tensor {n!r} has shape {tuple(t.shape)}, "
                              f"expected leading dim {b}")
    return torch.cat([tensors[n].reshape(b, -1).to(dtype) for n in names], dim=1)


def _shapes(model: nn.Module) -> dict[str, torch.Size]:
    out = {n: p.shape for n, p in model.named_parameters()}
    out.update({n: b.shape for n, b in model.named_buffers()})
    return out


def unflatten(vec: Tensor, model: nn.Module, names: Sequence[str] | None = None) -> dict[str, Tensor]:
    """Split a flat vector into named tensors shaped like the model's.

    vec: ``(D,)`` -> ``{name: shape}``; ``(B, D)`` -> stacked ``{name: (B, *shape)}``.
    names: default :func:`param_names` (may include buffer names). Results are views of vec.
    """
    names = param_names(model) if names is None else list(names)
    shapes = _shapes(model)
    unknown = [n for n in names if n not in shapes]
    if unknown:
        raise ParamsError(f"unflatten: {unknown[0]!r} is not a parameter or buffer of the model")
    sizes = [math.prod(shapes[n]) for n in names]
    d = sum(sizes)
    if vec.dim() not in (1, 2) or vec.shape[-1] != d:
        raise ParamsError(f"unflatten: vector of shape {tuple(vec.shape)} does not match the "
                          f"model's {d} values; expected (D,) or (B, D) with D={d}")
    parts = torch.split(vec, sizes, dim=-1)
    lead = tuple(vec.shape[:-1])
    return {n: p.reshape(*lead, *shapes[n]) for n, p in zip(names, parts)}


def stack(dicts: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Stack dicts with equal keys and shapes into one dict with leading dim B = len(dicts)."""
    if len(dicts) == 0:
        raise ParamsError("stack: empty list of dicts")
    keys = list(dicts[0].keys())
    for i, d in enumerate(dicts):
        if set(d.keys()) != set(keys):
            diff = sorted(set(d.keys()) ^ set(keys))
            raise ParamsError(f"stack: dict {i} differs from dict 0 in key {diff[0]!r}")
    return {k: torch.stack([d[k] for d in dicts]) for k in keys}


# --------------------------------------------------------------------------------------------
# functional forward and gradients
# --------------------------------------------------------------------------------------------

def _bn_modules(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` holds a batch-normalization layer (of any dimension)."""
    return bool(_bn_modules(model))


def _leading(tensors: Mapping[str, Tensor], what: str) -> int:
    sizes = {k: (v.shape[0] if v.dim() else None) for k, v in tensors.items()}
    vals = set(sizes.values())
    if len(vals) != 1 or None in vals:
        k = next(iter(sizes))
        raise ParamsError(f"{what}: stacked tensors disagree on the number of points "
                          f"({k!r} has {sizes[k]}, sizes seen {sorted(v for v in vals if v is not None)})")
    return vals.pop()


def _split_model_state(model: nn.Module, batched: Mapping[str, Tensor], device):
    """Shared (unbatched) tensors for everything the batched dict lacks, on `device`."""
    shared = {}
    for n, p in model.named_parameters():
        if n not in batched:
            shared[n] = p.detach().to(device)
    for n, b in model.named_buffers():
        if n not in batched:  # cloned: BN in train mode would bump num_batches_tracked in place
            shared[n] = b.detach().to(device, copy=True)
    return shared


class _Mode:
    """Context: put the model in eval mode, with only BN modules in train mode if asked."""

    def __init__(self, model: nn.Module, bn_train: bool, all_train: bool = False):
        self.model, self.bn_train, self.all_train = model, bn_train, all_train

    def __enter__(self):
        self.saved = [(m, m.training) for m in self.model.modules()]
        self.model.train(self.all_train)
        if self.bn_train:
            for m in _bn_modules(self.model):
                m.train(True)
        return self

    def __exit__(self, *exc):
        for m, t in self.saved:
            m.training = t
        return False


class _Momentum:
    """Context: BN momentum None (cumulative average) is replaced by the equivalent numeric factor.

    ``float(num_batches_tracked)`` cannot run under vmap, so the factor 1/(n+1) is computed
    outside from the (equal) batch counts of all points.
    """

    def __init__(self, model: nn.Module, buffers: Mapping[str, Tensor], override: float | None = None):
        self.model, self.buffers, self.override = model, buffers, override

    def __enter__(self):
        self.saved = []
        for name, m in self.model.named_modules():
            if not isinstance(m, _BatchNorm):
                continue
            self.saved.append((m, m.momentum))
            if self.override is not None:
                m.momentum = self.override
            elif m.momentum is None and m.track_running_stats:
                key = f"{name}.num_batches_tracked" if name else "num_batches_tracked"
                nbt = self.buffers[key]
                if not bool((nbt == nbt.reshape(-1)[0]).all()):
                    raise ParamsError(f"BN layer {name!r} has momentum=None but its points have "
                                      f"different num_batches_tracked; cannot batch the update")
                m.momentum = 1.0 / (float(nbt.reshape(-1)[0]) + 1.0)
        return self

    def __exit__(self, *exc):
        for m, mom in self.saved:
            m.momentum = mom
        return False


def _prepare_buffers(model, params, buffers, train):
    """Batched buffers (cloned) when BN in train mode must update running stats per point."""
    b = _leading(params, "params")
    buffers = {} if buffers is None else dict(buffers)
    if buffers and _leading(buffers, "buffers") != b:
        raise ParamsError(f"buffers are stacked for {_leading(buffers, 'buffers')} points, params for {b}")
    if train and any(m.track_running_stats for m in _bn_modules(model)):
        for n, t in model.named_buffers():
            if n not in buffers:
                buffers[n] = t.detach().unsqueeze(0).expand(b, *t.shape)
        buffers = {k: v.clone() for k, v in buffers.items()}  # updated in place under vmap
    return buffers


def functional_logits(model: nn.Module, params: Mapping[str, Tensor],
                      buffers: Mapping[str, Tensor] | None, x: Tensor, *, train: bool = False,
                      x_per_point: bool = False, return_buffers: bool = False,
                      randomness: str = "error"):
    """Logits of B parameter points on one input batch.

    params: stacked ``{name: (B, *shape)}`` (missing names come from the model, shared);
    buffers: stacked ``{name: (B, *shape)}`` or None (the model's buffers, shared).
    x: ``(N, *input_shape)`` shared by all points, or ``(B, N, *input_shape)`` with
    ``x_per_point=True``. Returns logits ``(B, N, C)``.
    train: run in train mode (BN uses batch statistics and updates per-point running
    statistics on clones: pass ``return_buffers=True`` to get ``(logits, new_buffers)``).
    randomness: passed to vmap ("different"/"same" for dropout in train mode).
    The model's own tensors are not used or modified; its train/eval flags are restored.
    """
    params = dict(params)
    buffers = _prepare_buffers(model, params, buffers, train)
    device = next(iter(params.values())).device
    shared = _split_model_state(model, {**params, **buffers}, device)

    def f(p, bf, xx):
        return functional_call(model, (p, bf, shared), (xx,)), bf

    mom = _Momentum(model, buffers) if train else contextlib.nullcontext()
    with _Mode(model, bn_train=False, all_train=train), mom:
        out, new_b = vmap(f, in_dims=(0, 0 if buffers else None, 0 if x_per_point else None),
                          randomness=randomness)(params, buffers, x)
    return (out, new_b) if return_buffers else out


def batched_grad(model: nn.Module, params: Mapping[str, Tensor],
                 buffers: Mapping[str, Tensor] | None, x: Tensor, y: Tensor, *,
                 train: bool = True, x_per_point: bool = False,
                 loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
                 randomness: str = "error"):
    """Per-point loss and gradient for B stacked points, for batched training.

    params: stacked ``{name: (B, *shape)}``; buffers: stacked or None (model's, shared; in
    train mode they are broadcast to B copies so each point keeps its own BN statistics).
    x: ``(N, ...)`` shared or ``(B, N, ...)`` with ``x_per_point=True``; y: ``(N,)`` or ``(B, N)``
    (per point when ``y.dim() == 2``). loss_fn(logits (N, C), y (N,)) -> scalar, default mean
    cross-entropy (nats). Returns ``(losses (B,), grads {name: (B, *shape)}, new_buffers)``;
    new_buffers are the per-point buffers after BN's running-statistics update (train mode),
    or the given buffers unchanged (eval mode / no BN). Inputs are not modified.
    """
    params = dict(params)
    loss_fn = F.cross_entropy if loss_fn is None else loss_fn
    buffers = _prepare_buffers(model, params, buffers, train)
    device = next(iter(params.values())).device
    shared = _split_model_state(model, {**params, **buffers}, device)
    y_per_point = y.dim() == 2

    def f(p, bf, xx, yy):
        out = functional_call(model, (p, bf, shared), (xx,))
        return loss_fn(out, yy), bf

    gv = grad_and_value(f, has_aux=True)
    mom = _Momentum(model, buffers) if train else contextlib.nullcontext()
    with _Mode(model, bn_train=False, all_train=train), mom:
        grads, (losses, new_b) = vmap(
            gv, in_dims=(0, 0 if buffers else None, 0 if x_per_point else None,
                         0 if y_per_point else None), randomness=randomness)(params, buffers, x, y)
    return losses.detach(), {k: g.detach() for k, g in grads.items()}, \
        {k: v.detach() for k, v in new_b.items()}


# --------------------------------------------------------------------------------------------
# evaluation of many points
# --------------------------------------------------------------------------------------------

def _metric_list(metrics) -> list[tuple[str, object]]:
    if isinstance(metrics, str) or callable(metrics):
        metrics = (metrics,)
    items = metrics.items() if isinstance(metrics, Mapping) else [
        (m if isinstance(m, str) else (m[0] if isinstance(m, tuple) else getattr(m, "__name__", None)),
         m[1] if isinstance(m, tuple) else m) for m in metrics]
    out = []
    for name, m in items:
        if isinstance(m, str):
            if m not in _BUILTIN_METRICS:
                raise ParamsError(f"unknown metric {m!r}; use one of {_BUILTIN_METRICS} or a "
                                  f"callable(logits, y) -> per-sample values")
        elif not callable(m):
            raise ParamsError(f"metric {name!r} is neither a name nor a callable")
        if not name or name == "<lambda>":
            raise ParamsError("a metric callable needs a name: pass (name, fn) or a dict")
        out.append((name, m))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ParamsError(f"duplicate metric names in {names}")
    if not out:
        raise ParamsError("metrics is empty")
    return out


def _per_sample(m, logits: Tensor, y: Tensor) -> Tensor:
    """Per-sample values (n,) of one metric for one point, as float64."""
    if m == "loss":
        v = F.cross_entropy(logits, y, reduction="none")
    elif m == "accuracy":
        v = (logits.argmax(-1) == y)
    elif m == "error":
        v = (logits.argmax(-1) != y)
    else:
        v = m(logits, y)
        if not isinstance(v, Tensor) or v.shape != y.shape:
            raise ParamsError(f"metric {getattr(m, '__name__', m)!r} must return per-sample "
                              f"values of shape {tuple(y.shape)}, got "
                              f"{tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__}")
    return v.to(torch.float64)


def _batched_metrics(ms, logits: Tensor, y: Tensor) -> dict[str, Tensor]:
    """Sums over samples, (B,) float64, of every metric; logits (B, n, C)."""
    b, n, c = logits.shape
    out = {}
    for name, m in ms:
        if m == "loss":
            v = F.cross_entropy(logits.reshape(b * n, c), y.repeat(b), reduction="none")
            out[name] = v.reshape(b, n).to(torch.float64).sum(1)
        elif m in ("accuracy", "error"):
            hit = logits.argmax(-1) == y.unsqueeze(0)
            out[name] = (hit if m == "accuracy" else ~hit).to(torch.float64).sum(1)
        else:
            out[name] = torch.stack([_per_sample(m, logits[i], y).sum() for i in range(b)])
    return out


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


def evaluate(model: nn.Module, points, x: Tensor, y: Tensor, *,
             metrics=("loss", "accuracy"), batch_size: int = 1024, chunk_size: int | None = None,
             bn: str = "eval", bn_x: Tensor | None = None, device="auto",
             memory_budget: int | None = None) -> dict[str, np.ndarray]:
    """Metrics of P parameter points over a dataset, batched with vmap.

    points: ``(P, D)`` flat (param_names order) or stacked dict ``{name: (P, *shape)}``
    (may include buffers). x: ``(N, *input_shape)``; y: ``(N,)`` int64 labels.
    metrics: names ("loss": mean cross-entropy in nats, "accuracy" in [0, 1], "error"),
    callables ``fn(logits (N, C), y (N,)) -> (N,)`` (averaged; keyed by ``__name__``),
    ``(name, fn)`` pairs, or a dict ``{name: name_or_fn}``.
    batch_size: samples per forward; chunk_size: points per vmap call (default from an
    activation-memory estimate and memory_budget bytes). bn: "eval" uses the given/model
    running statistics; "recompute" first recomputes BN statistics per point from bn_x
    (default x) in batches of batch_size (only BN layers in train mode; cumulative average).
    Returns ``{metric: np.ndarray (P,) float64}``. Sums are accumulated in float64.
    """
    _check_data(x, y, batch_size, bn, bn_x)
    ms = _metric_list(metrics)
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
    y = y.to(torch.long)
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
                    for name, s in _batched_metrics(ms, logits, yb).items():
                        sums[name] += s
            for name in sums:
                results[name][c0:c1] = (sums[name] / n).cpu().numpy()
    return results


def evaluate_loop(model: nn.Module, points, x: Tensor, y: Tensor, *,
                  metrics=("loss", "accuracy"), batch_size: int = 1024, chunk_size: int | None = None,
                  bn: str = "eval", bn_x: Tensor | None = None, device="auto",
                  memory_budget: int | None = None) -> dict[str, np.ndarray]:
    """Reference for :func:`evaluate`: a plain loop of ``load_state_dict`` + forward per point.

    Same arguments and result; chunk_size and memory_budget are accepted and ignored. Works on
    a deep copy of the model, so the caller's model is untouched.
    """
    _check_data(x, y, batch_size, bn, bn_x)
    ms = _metric_list(metrics)
    device = resolve_device(device)
    pts = _points_dict(model, points)
    p_total = _leading(pts, "points")
    bn_src = x if bn_x is None else bn_x
    if bn == "recompute":
        _bn_batches_ok(model, bn_src.shape[0], batch_size)
    m = copy.deepcopy(model).to(device)
    base = {k: v.detach().clone() for k, v in m.state_dict().items()}
    y = y.to(torch.long)
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
                for name, metric in ms:
                    sums[name] += float(_per_sample(metric, logits, yb).sum())
            for name in sums:
                results[name][i] = sums[name] / n
    return results
