"""Losses of flat parameter vectors, paths, loss profiles along paths, barriers, and the
connectivity of many minima (minimum spanning tree, disconnectivity / merge tree).

This is the base module of the path code (``neb.py`` and ``curves.py`` build on it;
``paths.py`` re-exports everything).

Loss-function protocol used by every path algorithm
---------------------------------------------------
A *batched loss* maps a stack of flat parameter vectors ``thetas`` of shape ``(B, D)`` to the
losses ``(B,)``: all images of one step are evaluated in one call. It must be differentiable
with torch.autograd, and row ``i`` of the output may depend on row ``i`` of the input only
(then the gradient of ``losses.sum()`` is the per-point gradient). A *stochastic* batched loss
takes a second argument, ``loss_fn(thetas, batch)``; the algorithms pass the next element of
their ``batches`` iterable as ``batch`` (the same minibatch for every point of one step).
Wrap an unbatched ``loss_fn(theta (D,)) -> scalar`` with :func:`batched_loss`, and a network
with :func:`network_loss`.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from topoland.errors import ConfigError, TopolandError

__all__ = [
    "PathError", "Path", "batched_loss", "network_loss", "network_loss_loop",
    "network_metrics", "linear_path", "resample_polyline", "path_profile", "barriers",
    "path_plane", "project_to_plane", "connect_all", "barrier_matrix", "DisconnectivityTree",
    "disconnectivity_tree",
]

_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


class PathError(TopolandError):
    """A path computation got inconsistent input (shapes, endpoints, loss output)."""


# --------------------------------------------------------------------------------------
# Loss functions of flat parameter vectors
# --------------------------------------------------------------------------------------

def batched_loss(loss_fn: Callable[[Tensor], Tensor], *, method: str = "vmap") -> Callable:
    """Turn an unbatched ``loss_fn(theta (D,)) -> scalar`` into a batched ``(B, D) -> (B,)``.

    ``method="vmap"`` uses :func:`torch.func.vmap` (the function must be vmap-compatible: no
    ``.item()``, no data-dependent Python control flow, no in-place ops on its input);
    ``method="loop"`` calls the function once per row and stacks the results (always works,
    slower; also the plain-loop reference for the vmap path). Both keep autograd.
    """
    if method == "vmap":
        vm = torch.func.vmap(loss_fn)

        def _batched(thetas: Tensor) -> Tensor:
            return vm(_as_2d(thetas, "thetas"))
    elif method == "loop":
        def _batched(thetas: Tensor) -> Tensor:
            thetas = _as_2d(thetas, "thetas")
            return torch.stack([torch.as_tensor(loss_fn(t)).reshape(()) for t in thetas])
    else:
        raise ConfigError(f"batched_loss method must be 'vmap' or 'loop', got {method!r}")
    _batched.__wrapped__ = loss_fn
    return _batched


def _as_2d(thetas: Tensor, name: str) -> Tensor:
    if not isinstance(thetas, Tensor) or thetas.dim() != 2:
        raise PathError(f"{name} must be a 2-D tensor (B, D) of flat parameter vectors, "
                        f"got {getattr(thetas, 'shape', type(thetas))}")
    return thetas


def _call_loss(loss_fn: Callable, thetas: Tensor, batch=None) -> Tensor:
    """Evaluate a batched loss and check that it returns ``(B,)``."""
    out = loss_fn(thetas) if batch is None else loss_fn(thetas, batch)
    if not isinstance(out, Tensor) or out.shape != (thetas.shape[0],):
        raise PathError(f"loss_fn must return a tensor of shape ({thetas.shape[0]},) for "
                        f"thetas of shape {tuple(thetas.shape)}, got "
                        f"{getattr(out, 'shape', type(out))}")
    return out


def _loss_and_grad(loss_fn: Callable, thetas: Tensor, batch=None) -> tuple[Tensor, Tensor]:
    """Losses ``(B,)`` and per-point gradients ``(B, D)`` from one batched call."""
    x = thetas.detach().requires_grad_(True)
    with torch.enable_grad():
        losses = _call_loss(loss_fn, x, batch)
        (grads,) = torch.autograd.grad(losses.sum(), x)
    return losses.detach(), grads.detach()


def _batch_stream(batches: Iterable | None):
    """Endless stream of minibatches (``None`` forever when ``batches`` is None).

    A re-iterable (list, DataLoader) restarts when exhausted; a one-shot iterator that runs
    out raises :class:`PathError`.
    """
    if batches is None:
        yield from itertools.repeat(None)
        return
    while True:
        it = iter(batches)
        one_shot = it is batches
        empty = True
        for b in it:
            empty = False
            yield b
        if one_shot or empty:
            raise PathError("batches ran out: pass a re-iterable (list, DataLoader) or an "
                            "endless iterator")


class _TensorOptimizer:
    """SGD (heavy-ball momentum, PyTorch's convention) or Adam on one tensor, in place.

    A few lines instead of ``torch.optim`` (whose first use imports the compiler stack,
    seconds on a busy CPU); the update rules are those of ``torch.optim.SGD``/``Adam``.
    """

    def __init__(self, name: str, lr: float, *, momentum: float = 0.0,
                 weight_decay: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8):
        if name not in ("sgd", "adam"):
            raise ConfigError(f"optimizer must be 'sgd' or 'adam', got {name!r}")
        self.name, self.lr, self.momentum, self.wd = name, lr, momentum, weight_decay
        self.betas, self.eps, self.t = betas, eps, 0
        self.buf = self.m = self.v = None

    @torch.no_grad()
    def step(self, x: Tensor, g: Tensor) -> None:
        if self.wd:
            g = g + self.wd * x
        self.t += 1
        if self.name == "sgd":
            if self.momentum:
                self.buf = g.clone() if self.buf is None else self.buf.mul_(self.momentum).add_(g)
                g = self.buf
            x.sub_(self.lr * g)
            return
        b1, b2 = self.betas
        if self.m is None:
            self.m, self.v = torch.zeros_like(x), torch.zeros_like(x)
        self.m.mul_(b1).add_(g, alpha=1 - b1)
        self.v.mul_(b2).addcmul_(g, g, value=1 - b2)
        mhat = self.m / (1 - b1 ** self.t)
        vhat = self.v / (1 - b2 ** self.t)
        x.sub_(self.lr * mhat / (vhat.sqrt() + self.eps))


# -- networks ---------------------------------------------------------------------------

def _trainable(model: nn.Module) -> list[tuple[str, Tensor]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _unflatten_stacked(thetas: Tensor, model: nn.Module) -> dict[str, Tensor]:
    """``(B, D)`` flat vectors -> stacked ``{name: (B, *shape)}`` (:func:`topoland.nets.params.unflatten`
    order: trainable parameters in module order, each flattened row-major)."""
    from topoland.nets.params import unflatten

    d = sum(p.numel() for _, p in _trainable(model))
    if thetas.shape[1] != d:
        raise PathError(f"thetas have {thetas.shape[1]} columns but the model has {d} "
                        "trainable parameters")
    return unflatten(thetas, model)


def model_vector(model: nn.Module) -> Tensor:
    """The model's trainable parameters as one flat detached vector ``(D,)``."""
    return torch.cat([p.detach().reshape(-1) for _, p in _trainable(model)])


@contextlib.contextmanager
def _modes(model: nn.Module, *, bn_train: bool, momentum=None):
    """Everything in eval mode, BatchNorm modules in train mode when ``bn_train``; restore."""
    saved = [(m, m.training, getattr(m, "momentum", None)) for m in model.modules()]
    try:
        for m in model.modules():
            m.training = False
            if isinstance(m, _BN_TYPES):
                m.training = bn_train
                if momentum is not None:
                    m.momentum = momentum
        yield
    finally:
        for m, tr, mom in saved:
            m.training = tr
            if isinstance(m, _BN_TYPES):
                m.momentum = mom


def _fresh_bn_buffers(model: nn.Module, b: int) -> dict[str, Tensor]:
    """Buffers stacked ``b`` times; BN running stats reset (mean 0, var 1, count 0)."""
    bufs = {}
    bn_names = set()
    for mname, m in model.named_modules():
        if isinstance(m, _BN_TYPES) and m.track_running_stats:
            pre = f"{mname}." if mname else ""
            bn_names |= {pre + "running_mean", pre + "running_var", pre + "num_batches_tracked"}
    for n, buf in model.named_buffers():
        if n in bn_names and n.endswith("running_mean"):
            base = torch.zeros_like(buf)
        elif n in bn_names and n.endswith("running_var"):
            base = torch.ones_like(buf)
        elif n in bn_names:
            base = torch.zeros_like(buf)
        else:
            base = buf.detach()
        bufs[n] = base.unsqueeze(0).repeat(b, *([1] * buf.dim())).clone()
    return bufs


def _vmapped_logits(model, params, buffers, x, buffers_batched: bool) -> Tensor:
    def f(p, bf):
        return torch.func.functional_call(model, (p, bf), (x,))
    return torch.func.vmap(f, in_dims=(0, 0 if buffers_batched else None))(params, buffers)


def _recompute_bn(model, params, bn_x: Tensor, bn_batch_size: int | None) -> dict[str, Tensor]:
    """BN running statistics recomputed at each point: stacked buffers ``(B, ...)``.

    One train-mode pass per chunk of ``bn_x`` with momentum 1 gives that chunk's batch mean
    and unbiased variance; the chunks are averaged with equal weights, which is what
    PyTorch's cumulative average (``momentum=None``) over the same chunks gives.
    """
    b = next(iter(params.values())).shape[0]
    chunks = [bn_x] if bn_batch_size is None else list(torch.split(bn_x, bn_batch_size))
    acc = None
    with torch.no_grad(), _modes(model, bn_train=True, momentum=1.0):
        for xc in chunks:
            bufs = _fresh_bn_buffers(model, b)
            _vmapped_logits(model, {k: v.detach() for k, v in params.items()}, bufs, xc, True)
            if acc is None:
                acc = {k: v.clone() for k, v in bufs.items()}
            else:
                for k in acc:
                    if acc[k].is_floating_point():
                        acc[k] += bufs[k]
    for k, v in acc.items():
        if v.is_floating_point():
            acc[k] = v / len(chunks)
        else:
            acc[k] = torch.full_like(v, len(chunks))
    return acc


_BN_MODES = ("eval", "train", "recompute")


class NetworkLoss:
    """Batched mean cross-entropy (nats) of a network at flat parameter points.

    ``loss(thetas (B, D)) -> (B,)``; ``loss(thetas, (xb, yb))`` uses that minibatch. Without
    a batch, the whole ``(x, y)`` is used, or, when ``batch_size`` is set, a fresh random
    minibatch (drawn with the object's own seeded generator, shared by all B points).
    See :func:`network_loss`.
    """

    def __init__(self, model, x, y, *, batch_size=None, bn="eval", bn_x=None,
                 bn_batch_size=None, chunk_size=None, seed=0):
        if bn not in _BN_MODES:
            raise ConfigError(f"bn must be one of {_BN_MODES}, got {bn!r}")
        if x.shape[0] != y.shape[0]:
            raise PathError(f"x has {x.shape[0]} samples but y has {y.shape[0]}")
        self.model, self.x, self.y = model, x, y
        self.batch_size, self.bn, self.bn_batch_size = batch_size, bn, bn_batch_size
        self.bn_x = x if bn_x is None else bn_x
        self.chunk_size, self.seed = chunk_size, seed
        self._gen = torch.Generator(device=x.device)
        self._gen.manual_seed(int(seed))
        self.dim = sum(p.numel() for _, p in _trainable(model))

    def with_batch_size(self, batch_size: int | None) -> "NetworkLoss":
        """A copy that draws random minibatches of ``batch_size`` (None: full data)."""
        return NetworkLoss(self.model, self.x, self.y, batch_size=batch_size, bn=self.bn,
                           bn_x=self.bn_x, bn_batch_size=self.bn_batch_size,
                           chunk_size=self.chunk_size, seed=self.seed)

    def __call__(self, thetas: Tensor, batch=None) -> Tensor:
        thetas = _as_2d(thetas, "thetas")
        if batch is not None:
            xb, yb = batch
        elif self.batch_size is not None and self.batch_size < self.x.shape[0]:
            idx = torch.randperm(self.x.shape[0], generator=self._gen,
                                 device=self.x.device)[: self.batch_size]
            xb, yb = self.x[idx], self.y[idx]
        else:
            xb, yb = self.x, self.y
        cs = thetas.shape[0] if self.chunk_size is None else self.chunk_size
        return torch.cat([self._losses(t, xb, yb) for t in torch.split(thetas, cs)])

    def _logits(self, thetas, xb):
        params = _unflatten_stacked(thetas, self.model)
        if self.bn == "eval":
            bufs = {n: b.detach() for n, b in self.model.named_buffers()}
            with _modes(self.model, bn_train=False):
                return _vmapped_logits(self.model, params, bufs, xb, False)
        if self.bn == "train":
            bufs = _fresh_bn_buffers(self.model, thetas.shape[0])
            with _modes(self.model, bn_train=True):
                return _vmapped_logits(self.model, params, bufs, xb, True)
        bufs = _recompute_bn(self.model, params, self.bn_x, self.bn_batch_size)
        with _modes(self.model, bn_train=False):
            return _vmapped_logits(self.model, params, bufs, xb, True)

    def _losses(self, thetas, xb, yb):
        logits = self._logits(thetas, xb)  # (B, N, C)
        b, n, c = logits.shape
        ce = F.cross_entropy(logits.reshape(b * n, c), yb.repeat(b), reduction="none")
        return ce.view(b, n).mean(1)


def network_loss(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int | None = None,
                 bn: str = "eval", bn_x: Tensor | None = None, bn_batch_size: int | None = None,
                 chunk_size: int | None = None, seed: int = 0) -> NetworkLoss:
    """Batched loss ``thetas (B, D) -> (B,)`` (mean cross-entropy, nats) of ``model``.

    Points are flat vectors of the trainable parameters in ``model.named_parameters()``
    order (as :func:`topoland.nets.params.flatten`). Evaluation: ``torch.func.functional_call`` + ``vmap`` over the stacked,
    unflattened parameters (one call for all B points; ``chunk_size`` points per call to
    bound memory). The model itself is never modified.

    bn: ``"eval"`` uses the model's stored running statistics for every point;
    ``"train"`` uses each point's own batch statistics (use this to *train* NEB or curves on
    BN networks); ``"recompute"`` recomputes the running statistics at every point from
    ``bn_x`` (default ``x``; in chunks of ``bn_batch_size``) and then evaluates in eval mode
    (the statistics count as constants for gradients; to *evaluate* a final path prefer
    :func:`network_metrics`). Dropout is always off (``topoland.nets.params.functional_logits``
    with ``train=True`` would also switch dropout on, hence this module's own BN-only
    train mode). ``batch_size``: draw a random minibatch per call (seeded by
    ``seed``); None uses all of ``x``.
    """
    return NetworkLoss(model, x, y, batch_size=batch_size, bn=bn, bn_x=bn_x,
                       bn_batch_size=bn_batch_size, chunk_size=chunk_size, seed=seed)


def network_loss_loop(model: nn.Module, x: Tensor, y: Tensor, *, bn: str = "eval",
                      bn_x: Tensor | None = None, bn_batch_size: int | None = None) -> Callable:
    """Plain-loop reference of :func:`network_loss` (full data, no gradient).

    Each point: a deep copy of the model, parameters loaded with ``vector_to_parameters``,
    BN statistics reset and re-accumulated with ``momentum=None`` for ``"recompute"``.
    """
    if bn not in _BN_MODES:
        raise ConfigError(f"bn must be one of {_BN_MODES}, got {bn!r}")
    bn_x = x if bn_x is None else bn_x

    def _loop(thetas: Tensor) -> Tensor:
        out = []
        for theta in _as_2d(thetas, "thetas"):
            m = copy.deepcopy(model)
            with torch.no_grad():
                torch.nn.utils.vector_to_parameters(
                    theta.detach().clone(), [p for _, p in _trainable(m)])
                m.eval()
                if bn == "recompute":
                    for mod in m.modules():
                        if isinstance(mod, _BN_TYPES):
                            mod.reset_running_stats()
                            mod.momentum = None
                            mod.train()
                    for xc in ([bn_x] if bn_batch_size is None
                               else torch.split(bn_x, bn_batch_size)):
                        m(xc)
                    m.eval()
                elif bn == "train":
                    for mod in m.modules():
                        if isinstance(mod, _BN_TYPES):
                            mod.train()
                out.append(F.cross_entropy(m(x), y))
        return torch.stack(out)
    return _loop


def network_metrics(model: nn.Module, splits: dict[str, tuple[Tensor, Tensor]], *,
                    bn: str = "recompute", bn_x: Tensor | None = None, batch_size: int = 1024,
                    chunk_size: int | None = None, device="auto") -> Callable:
    """Batched metrics ``thetas (B, D) -> {f"{split}_loss", f"{split}_error": (B,)}``.

    Loss: mean cross-entropy (nats); error: fraction misclassified (0..1). Evaluated by
    :func:`topoland.nets.params.evaluate` (vmap over points, no gradients); with
    ``bn="recompute"`` (default) the BN statistics are recomputed at every point from
    ``bn_x`` (default: the first split's inputs, normally ``"train"``) in batches of
    ``batch_size``.
    """
    from topoland.nets.params import evaluate

    if not splits:
        raise PathError("network_metrics needs at least one split (name -> (x, y))")
    if bn not in ("eval", "recompute"):
        raise ConfigError(f"network_metrics bn must be 'eval' or 'recompute', got {bn!r}")
    first = next(iter(splits.values()))[0]
    bn_x = first if bn_x is None else bn_x

    def _metrics(thetas: Tensor) -> dict[str, Tensor]:
        thetas = _as_2d(thetas, "thetas").detach()
        out = {}
        for s, (x, y) in splits.items():
            r = evaluate(model, thetas, x, y, metrics=("loss", "error"), batch_size=batch_size,
                         chunk_size=chunk_size, bn=bn, bn_x=bn_x, device=device)
            out[f"{s}_loss"] = torch.as_tensor(r["loss"])
            out[f"{s}_error"] = torch.as_tensor(r["error"])
        return out
    return _metrics


# --------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------

@dataclass
class Path:
    """A piecewise-linear path through ``images`` ``(K, D)`` with ``losses`` ``(K,)``.

    ``history``: one row per recorded optimisation step; ``info``: algorithm details
    (e.g. the climbing image index, AutoNEB insertions).
    """
    images: Tensor
    losses: Tensor | None = None
    history: pd.DataFrame = field(default_factory=pd.DataFrame)
    info: dict = field(default_factory=dict)

    @property
    def arc_positions(self) -> Tensor:
        """Normalised cumulative arc length of the images, ``(K,)`` from 0 to 1."""
        return _arc_positions(self.images)

    def point(self, t) -> Tensor:
        """Points at normalised arc length ``t`` (``(T,)`` in [0, 1]) -> ``(T, D)``."""
        return _polyline_at(self.images, torch.as_tensor(t, dtype=self.images.dtype))


def _arc_positions(images: Tensor) -> Tensor:
    seg = (images[1:] - images[:-1]).norm(dim=1)
    s = torch.cat([seg.new_zeros(1), seg.cumsum(0)])
    total = s[-1]
    if total <= 0:
        raise PathError("path has zero length: its images all coincide")
    return s / total


def _polyline_at(images: Tensor, t: Tensor) -> Tensor:
    s = _arc_positions(images)
    t = t.to(images.device).clamp(0, 1)
    j = torch.searchsorted(s, t, right=True).clamp(1, images.shape[0] - 1)
    s0, s1 = s[j - 1], s[j]
    w = torch.where(s1 > s0, (t - s0) / (s1 - s0), torch.zeros_like(t)).unsqueeze(1)
    return (1 - w) * images[j - 1] + w * images[j]


def resample_polyline(images: Tensor, n: int) -> Tensor:
    """``n`` points evenly spaced by arc length along the polyline ``images`` ``(K, D)``;
    the first and last points are the polyline's ends exactly."""
    if images.dim() != 2 or images.shape[0] < 2:
        raise PathError(f"images must be (K>=2, D), got {tuple(images.shape)}")
    out = _polyline_at(images, torch.linspace(0, 1, n, dtype=images.dtype))
    out[0], out[-1] = images[0], images[-1]
    return out


def linear_path(theta_a: Tensor, theta_b: Tensor, n_images: int = 2,
                loss_fn: Callable | None = None) -> Path:
    """The straight line from ``theta_a`` to ``theta_b`` (``(D,)`` each) as a :class:`Path`
    with ``n_images`` evenly spaced images (losses evaluated when ``loss_fn`` is given)."""
    _check_endpoints(theta_a, theta_b)
    w = torch.linspace(0, 1, n_images, dtype=theta_a.dtype, device=theta_a.device)[:, None]
    images = (1 - w) * theta_a + w * theta_b
    losses = None
    if loss_fn is not None:
        with torch.no_grad():
            losses = _call_loss(loss_fn, images)
    return Path(images=images, losses=losses, info={"kind": "linear"})


def _check_endpoints(theta_a: Tensor, theta_b: Tensor) -> None:
    if theta_a.dim() != 1 or theta_a.shape != theta_b.shape:
        raise PathError(f"theta_a and theta_b must be flat vectors of equal length, got "
                        f"{tuple(theta_a.shape)} and {tuple(theta_b.shape)}")
    if torch.equal(theta_a, theta_b):
        raise PathError("theta_a and theta_b are the same point: there is no path to find")


# --------------------------------------------------------------------------------------
# Profiles and barriers
# --------------------------------------------------------------------------------------

def _curve_arclength_params(curve: Callable, n: int, n_fine: int, dtype) -> Tensor:
    """Curve parameters ``(n,)`` at evenly spaced arc length (fine grid, linear inversion)."""
    tf = torch.linspace(0, 1, n_fine, dtype=dtype)
    seg = []
    prev = None
    for chunk in torch.split(tf, 256):
        pts = curve(chunk)
        if prev is not None:
            pts = torch.cat([prev, pts])
        seg.append((pts[1:] - pts[:-1]).norm(dim=1))
        prev = pts[-1:]
    seg = torch.cat(seg)
    s = torch.cat([seg.new_zeros(1), seg.cumsum(0)])
    if s[-1] <= 0:
        raise PathError("curve has zero length")
    s = (s / s[-1]).cpu().double().numpy()
    target = np.linspace(0, 1, n)
    return torch.as_tensor(np.interp(target, s, tf.double().numpy()), dtype=dtype)


def path_profile(loss_fn: Callable, path, *, n: int = 61, param: str = "arclength",
                 chunk_size: int | None = None, n_fine: int = 2001, batch=None) -> pd.DataFrame:
    """Loss (and any other metric) at ``n`` dense points along a path.

    loss_fn: batched ``(B, D) -> (B,)`` (column ``loss``) or ``(B, D) -> dict[name, (B,)]``
    (one column per key, e.g. :func:`network_metrics`). path: a :class:`Path` or ``(K, D)``
    tensor (polyline through the points), or an object with ``point(t)`` / a callable
    ``t (T,) -> (T, D)`` (e.g. a :class:`~topoland.landscape.curves.Curve`).
    param: ``"arclength"`` spaces the points evenly by arc length (default), ``"t"`` evenly
    in the curve parameter (Garipov et al.'s 61 points). Returns a DataFrame with ``t``
    (normalised arc length, 0..1), ``t_param`` (curve parameter; = ``t`` for polylines)
    and the metric columns. Points are evaluated in batched calls of ``chunk_size``.
    """
    if param not in ("arclength", "t"):
        raise ConfigError(f"param must be 'arclength' or 't', got {param!r}")
    if isinstance(path, Path):
        path = path.images
    if isinstance(path, Tensor):
        # a polyline is parametrised by its arc length: both spacings coincide
        pts = resample_polyline(path, n)
        t_param = t_arc = torch.linspace(0, 1, n, dtype=torch.float64)
    else:
        curve = path.point if hasattr(path, "point") else path
        dtype = getattr(path, "dtype", torch.get_default_dtype())
        t_param = (_curve_arclength_params(curve, n, n_fine, dtype) if param == "arclength"
                   else torch.linspace(0, 1, n, dtype=dtype))
        pts = curve(t_param)
        t_arc = (torch.linspace(0, 1, n, dtype=torch.float64) if param == "arclength"
                 else _arc_positions(pts.double()))
    cols: dict[str, list] = {}
    cs = n if chunk_size is None else chunk_size
    with torch.no_grad():
        for chunk in torch.split(pts, cs):
            out = loss_fn(chunk) if batch is None else loss_fn(chunk, batch)
            if isinstance(out, Tensor):
                out = {"loss": out}
            for k, v in out.items():
                v = torch.as_tensor(v)
                if v.shape != (chunk.shape[0],):
                    raise PathError(f"metric {k!r} has shape {tuple(v.shape)}, expected "
                                    f"({chunk.shape[0]},)")
                cols.setdefault(k, []).append(v.detach().double().cpu())
    df = pd.DataFrame({"t": t_arc.double().cpu().numpy(),
                       "t_param": torch.as_tensor(t_param).double().cpu().numpy()})
    for k, v in cols.items():
        df[k] = torch.cat(v).numpy()
    return df


def barriers(profile: pd.DataFrame, loss_a: float | None = None, loss_b: float | None = None,
             *, column: str = "loss") -> dict[str, float]:
    """Barrier of a path from its profile (columns ``t`` in [0, 1] and ``column``).

    Returns ``max`` (highest loss on the path), ``max_minus_linear`` (Entezari et al.:
    max over t of L(t) - ((1 - t) L_a + t L_b)), ``max_minus_mean`` (max - (L_a + L_b) / 2)
    and ``t_max`` (where the maximum lies). ``loss_a``/``loss_b`` default to the first and
    last rows of the profile. Units: those of the loss.
    """
    if column not in profile or "t" not in profile:
        raise PathError(f"profile needs columns 't' and {column!r}; has {list(profile.columns)}")
    t = profile["t"].to_numpy(float)
    v = profile[column].to_numpy(float)
    la = float(v[0]) if loss_a is None else float(loss_a)
    lb = float(v[-1]) if loss_b is None else float(loss_b)
    i = int(np.argmax(v))
    return {"max": float(v[i]),
            "max_minus_linear": float(np.max(v - ((1 - t) * la + t * lb))),
            "max_minus_mean": float(v[i] - 0.5 * (la + lb)),
            "t_max": float(t[i])}


def path_plane(theta_a: Tensor, theta_b: Tensor, through: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Orthonormal frame ``(origin, e1, e2)`` of the plane through ``theta_a``, ``theta_b``
    and ``through`` (all ``(D,)``): origin ``theta_a``, e1 towards ``theta_b``, e2 the
    Gram-Schmidt remainder of ``through - theta_a``."""
    u = theta_b - theta_a
    e1 = u / u.norm()
    v = through - theta_a
    v = v - (v @ e1) * e1
    if v.norm() <= 1e-12 * max(float(u.norm()), 1.0):
        raise PathError("the point 'through' lies on the line through the endpoints: "
                        "the plane is not defined")
    return theta_a, e1, v / v.norm()


def project_to_plane(points: Tensor, plane: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """Coordinates ``(K, 2)`` of ``points`` ``(K, D)`` in the frame of :func:`path_plane`
    (units: parameter-space distance)."""
    origin, e1, e2 = plane
    d = points - origin
    return torch.stack([d @ e1, d @ e2], dim=1)


# --------------------------------------------------------------------------------------
# Many minima
# --------------------------------------------------------------------------------------

def connect_all(minima: dict[str, Tensor], pair_fn: Callable, *, strategy: str = "all",
                column: str = "max", values: dict[str, float] | None = None,
                rounds: int | None = None, max_attempts: int = 3) -> pd.DataFrame:
    """Connect minima pairwise and tabulate the barriers.

    minima: name -> flat vector ``(D,)``. ``pair_fn(theta_a, theta_b, attempt) -> dict``
    returns at least ``column`` (e.g. ``barriers(...)`` of its path); ``attempt`` counts
    from 0 and a retry should use more images/cycles.

    strategy ``"all"``: every pair once. ``"mst"`` (the AutoNEB strategy): first connect
    every minimum to the lowest one (by ``values``, else the first name): a spanning tree
    of n - 1 pairs; then for ``rounds`` rounds (default n - 1) take the minimum spanning tree by
    barrier, remove its highest edge and connect an untried pair across the cut (lowest
    minima first); when every such pair is tried, retry the highest edge itself with
    ``attempt + 1`` (up to ``max_attempts`` attempts per pair). Returns one row per call
    (columns ``a``, ``b``, ``attempt``, the dict's keys) and ``in_mst`` marking the best
    attempt of each pair that lies on the final minimum spanning tree.
    """
    import networkx as nx

    names = list(minima)
    if len(names) < 2:
        raise PathError("connect_all needs at least two minima")
    if strategy not in ("all", "mst"):
        raise ConfigError(f"strategy must be 'all' or 'mst', got {strategy!r}")
    vals = values or {}
    order = sorted(names, key=lambda n: (vals.get(n, 0.0), names.index(n)))
    rows: list[dict] = []
    best: dict[tuple[str, str], float] = {}
    attempts: dict[tuple[str, str], int] = {}

    def _key(a, b):
        return (a, b) if names.index(a) < names.index(b) else (b, a)

    def _run(a, b):
        k = _key(a, b)
        att = attempts.get(k, -1) + 1
        res = dict(pair_fn(minima[k[0]], minima[k[1]], att))
        if column not in res:
            raise PathError(f"pair_fn returned no {column!r} (keys: {sorted(res)})")
        attempts[k] = att
        best[k] = min(best.get(k, np.inf), float(res[column]))
        rows.append({"a": k[0], "b": k[1], "attempt": att, **res})

    if strategy == "all":
        for a, b in itertools.combinations(names, 2):
            _run(a, b)
    else:
        for i in range(1, len(order)):
            _run(order[0], order[i])  # a star around the lowest minimum spans all
        n_rounds = len(names) - 1 if rounds is None else rounds
        for _ in range(n_rounds):
            g = nx.Graph()
            g.add_nodes_from(names)
            for (a, b), w in best.items():
                g.add_edge(a, b, weight=w)
            mst = nx.minimum_spanning_tree(g, weight="weight")
            edges = sorted(mst.edges, key=lambda e: g[e[0]][e[1]]["weight"], reverse=True)
            suggestion = None
            for e in edges:
                mst.remove_edge(*e)
                c1, c2 = list(nx.connected_components(mst))
                mst.add_edge(*e)
                for s in (x for x in order if x in c1):
                    for tt in (x for x in order if x in c2):
                        if _key(s, tt) not in best:
                            suggestion = (s, tt)
                            break
                    if suggestion:
                        break
                if suggestion:
                    break
            if suggestion is None:
                for e in edges:
                    if attempts[_key(*e)] + 1 < max_attempts:
                        suggestion = e
                        break
            if suggestion is None:
                break
            _run(*suggestion)
    df = pd.DataFrame(rows)
    g = nx.Graph()
    for (a, b), w in best.items():
        g.add_edge(a, b, weight=w)
    mst_edges = {_key(a, b) for a, b in nx.minimum_spanning_tree(g, weight="weight").edges}
    best_rows = df.loc[df.groupby(["a", "b"])[column].idxmin()].index
    df["in_mst"] = [(i in best_rows) and ((r.a, r.b) in mst_edges) for i, r in df.iterrows()]
    return df


def barrier_matrix(pairs: pd.DataFrame, names: list[str], *, column: str = "max") -> np.ndarray:
    """Symmetric ``(n, n)`` matrix of the lowest ``column`` found per pair (columns ``a``,
    ``b``); ``inf`` where a pair was never connected, 0 on the diagonal."""
    idx = {n: i for i, n in enumerate(names)}
    m = np.full((len(names), len(names)), np.inf)
    np.fill_diagonal(m, 0.0)
    for r in pairs.itertuples():
        i, j = idx[r.a], idx[r.b]
        v = min(m[i, j], float(getattr(r, column)))
        m[i, j] = m[j, i] = v
    return m


@dataclass
class DisconnectivityTree:
    """Merge tree of minima by barrier.

    ``mst``: edges ``(a, b, barrier)`` of the minimum spanning tree; ``linkage``: SciPy
    linkage matrix ``(n - 1, 4)`` (single linkage = merge heights along the MST, usable with
    ``scipy.cluster.hierarchy.dendrogram``); ``minimax``: ``(n, n)`` lowest achievable
    barrier between each pair through the graph (the cophenetic matrix); ``energies``:
    optional loss of each minimum.
    """
    names: list[str]
    mst: list[tuple[str, str, float]]
    linkage: np.ndarray
    minimax: np.ndarray
    energies: np.ndarray | None = None


def disconnectivity_tree(names: list[str], barrier_matrix: np.ndarray,
                         energies=None) -> DisconnectivityTree:
    """Minimum spanning tree and merge tree (dendrogram) of minima by barrier.

    barrier_matrix: symmetric ``(n, n)``; ``inf``/NaN where no path is known. Raises
    :class:`PathError` when the known paths do not connect all minima.
    """
    import networkx as nx

    m = np.asarray(barrier_matrix, dtype=float)
    n = len(names)
    if m.shape != (n, n):
        raise PathError(f"barrier_matrix has shape {m.shape}, expected ({n}, {n})")
    g = nx.Graph()
    g.add_nodes_from(range(n))
    for i in range(n):
        for j in range(i + 1, n):
            w = m[i, j] if np.isfinite(m[i, j]) else m[j, i]
            if np.isfinite(w):
                g.add_edge(i, j, weight=float(w))
    comps = list(nx.connected_components(g))
    if len(comps) > 1:
        lone = [names[i] for c in comps[1:] for i in sorted(c)]
        raise PathError(f"barrier_matrix does not connect all minima: {lone} are cut off")
    tree = nx.minimum_spanning_tree(g, weight="weight")
    edges = sorted(tree.edges(data="weight"), key=lambda e: (e[2], e[0], e[1]))
    # Kruskal merge order over the MST edges gives the single-linkage tree.
    cluster = list(range(n))
    size = {i: 1 for i in range(n)}
    members = {i: [i] for i in range(n)}
    rep = list(range(n))
    z = []
    minimax = np.zeros((n, n))
    for k, (i, j, w) in enumerate(edges):
        ri, rj = _find(rep, i), _find(rep, j)
        ci, cj = cluster[ri], cluster[rj]
        for p in members[ri]:
            for q in members[rj]:
                minimax[p, q] = minimax[q, p] = w
        new = n + k
        z.append([min(ci, cj), max(ci, cj), w, size[ci] + size[cj]])
        size[new] = size[ci] + size[cj]
        rep[rj] = ri
        members[ri] = members[ri] + members.pop(rj)
        cluster[ri] = new
    return DisconnectivityTree(
        names=list(names), mst=[(names[i], names[j], float(w)) for i, j, w in edges],
        linkage=np.asarray(z, dtype=float).reshape(-1, 4), minimax=minimax,
        energies=None if energies is None else np.asarray(energies, dtype=float))


def _find(rep: list[int], i: int) -> int:
    while rep[i] != i:
        rep[i] = rep[rep[i]]
        i = rep[i]
    return i
