"""Batched losses and metrics of a network at flat parameter points (the path algorithms'
loss functions for networks; protocol: :mod:`topoland.landscape.path_losses`).

Points are flat vectors of the trainable parameters in ``model.named_parameters()`` order;
BatchNorm is handled in ``"eval"``, ``"train"`` or ``"recompute"`` mode (see
:func:`network_loss`). The loss is ``loss=``: a name of :data:`topoland.nets.losses.LOSSES`
(default ``"cross_entropy"``, nats) or a per-sample callable ``(output (N, ...), target (N, ...))
-> (N,)``, checked once on a 2-sample batch (a model output that does not fit it raises one
message naming both shapes); values are in that loss's units. The loss is applied outside
``vmap`` to the outputs of all points flattened to ``(B * N, ...)`` (targets repeated), so a
callable needs no ``vmap`` support. Data: ``x`` with ``y``, or one data form with ``y=None``
(its train split, :func:`topoland.splits.as_pair`).
"""
from __future__ import annotations

import contextlib
import copy
from typing import Callable

import torch
from torch import Tensor, nn

from topoland.errors import ConfigError
from topoland.landscape.path_losses import PathError, _as_2d
from topoland.nets.losses import mean_loss, resolve_loss, tracks_accuracy
from topoland.nets.metrics import prepare_target

__all__ = ["NetworkLoss", "network_loss", "network_loss_loop", "network_metrics", "model_vector"]


_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


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


def _pair(x, y, what: str) -> tuple[Tensor, Tensor]:
    from topoland.splits import tensors_or_pair
    return tensors_or_pair(x, y, what=what, error=PathError)


def _resolve(model: nn.Module, loss, x: Tensor, y: Tensor) -> tuple[str, Callable, Tensor]:
    """``(name, per-sample fn, targets)``: ``loss`` resolved and checked once on the first two
    samples (eval mode, no gradient); targets as the loss reads them."""
    if isinstance(loss, tuple) and len(loss) == 2 and callable(loss[1]):
        return loss[0], loss[1], prepare_target(loss[0], y)
    name, _ = resolve_loss(loss)
    y = prepare_target(name, y)
    x2 = x[:2]
    p0 = next((p for p in model.parameters()), None)
    if p0 is not None and x2.is_floating_point() and p0.is_floating_point():
        x2 = x2.to(device=p0.device, dtype=p0.dtype)
    with torch.no_grad(), _modes(model, bn_train=False):
        out2 = model(x2)
    y2 = y[:2].to(out2.device)
    if y2.is_floating_point() and out2.is_floating_point():
        y2 = y2.to(out2.dtype)
    name, fn = resolve_loss(loss, output=out2, target=y2)
    return name, fn, y


def _flat_target(yb: Tensor, b: int) -> Tensor:
    """Targets ``(N, ...)`` repeated for B points: ``(B * N, ...)``."""
    return yb.unsqueeze(0).expand(b, *yb.shape).reshape(b * yb.shape[0], *yb.shape[1:])


def _point_losses(name: str, fn: Callable, outputs: Tensor, yb: Tensor) -> Tensor:
    """Mean per-sample loss of each point: outputs ``(B, N, ...)`` -> ``(B,)``."""
    b, n = outputs.shape[:2]
    v = fn(outputs.reshape(b * n, *outputs.shape[2:]), _flat_target(yb, b))
    if tuple(v.shape) != (b * n,):
        raise PathError(f"loss {name!r} returned shape {tuple(v.shape)} for {b * n} samples; it must "
                        f"return one value per sample")
    return v.view(b, n).mean(1)


class NetworkLoss:
    """Batched mean loss of a network at flat parameter points (loss units; nats for cross-entropy).

    ``loss(thetas (B, D)) -> (B,)``; ``loss(thetas, (xb, yb))`` uses that minibatch. Without
    a batch, the whole ``(x, y)`` is used, or, when ``batch_size`` is set, a fresh random
    minibatch (drawn with the object's own seeded generator, shared by all B points).
    See :func:`network_loss`.
    """

    def __init__(self, model, x, y=None, *, loss="cross_entropy", batch_size=None, bn="eval", bn_x=None,
                 bn_batch_size=None, chunk_size=None, seed=0):
        if bn not in _BN_MODES:
            raise ConfigError(f"bn must be one of {_BN_MODES}, got {bn!r}")
        x, y = _pair(x, y, "network_loss data")
        if x.shape[0] != y.shape[0]:
            raise PathError(f"x has {x.shape[0]} samples but y has {y.shape[0]}")
        if x.shape[0] == 0:
            raise PathError("x is empty")
        self.loss_name, self.loss_fn, y = _resolve(model, loss, x, y)
        self.model, self.x, self.y = model, x, y
        self.batch_size, self.bn, self.bn_batch_size = batch_size, bn, bn_batch_size
        self.bn_x = x if bn_x is None else bn_x
        self.chunk_size, self.seed = chunk_size, seed
        self._gen = torch.Generator(device=x.device)
        self._gen.manual_seed(int(seed))
        self.dim = sum(p.numel() for _, p in _trainable(model))

    def with_batch_size(self, batch_size: int | None) -> "NetworkLoss":
        """A copy that draws random minibatches of ``batch_size`` (None: full data)."""
        return NetworkLoss(self.model, self.x, self.y, loss=(self.loss_name, self.loss_fn),
                           batch_size=batch_size, bn=self.bn,
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
        outputs = self._logits(thetas, xb)  # (B, N, ...)
        return _point_losses(self.loss_name, self.loss_fn, outputs, yb)


def network_loss(model: nn.Module, x, y: Tensor | None = None, *, loss="cross_entropy",
                 batch_size: int | None = None, bn: str = "eval", bn_x: Tensor | None = None,
                 bn_batch_size: int | None = None, chunk_size: int | None = None, seed: int = 0) -> NetworkLoss:
    """Batched loss ``thetas (B, D) -> (B,)`` of ``model``: the mean over the samples of ``loss``
    (a name of LOSSES or a per-sample callable; module docstring), in its units (nats for
    cross-entropy). This is the loss NEB, AutoNEB and the curve fitters minimise.

    Points are flat vectors of the trainable parameters in ``model.named_parameters()``
    order (as :func:`topoland.nets.params.flatten`). Evaluation: ``torch.func.functional_call`` + ``vmap`` over the stacked,
    unflattened parameters (one call for all B points; ``chunk_size`` points per call to
    bound memory). The model itself is never modified.

    bn: ``"eval"`` uses the model's stored running statistics for every point;
    ``"train"`` uses each point's own batch statistics (use this to *train* NEB or curves on
    BN networks); ``"recompute"`` recomputes the running statistics at every point from
    ``bn_x`` (default ``x``; in chunks of ``bn_batch_size``) and then evaluates in eval mode
    (the statistics count as constants for gradients; to *evaluate* a final path prefer
    :func:`network_metrics`). Dropout is always off (``topoland.nets.functional.functional_logits``
    with ``train=True`` would also switch dropout on, hence this module's own BN-only
    train mode). ``batch_size``: draw a random minibatch per call (seeded by
    ``seed``); None uses all of ``x``.
    """
    return NetworkLoss(model, x, y, loss=loss, batch_size=batch_size, bn=bn, bn_x=bn_x,
                       bn_batch_size=bn_batch_size, chunk_size=chunk_size, seed=seed)


def network_loss_loop(model: nn.Module, x, y: Tensor | None = None, *, loss="cross_entropy", bn: str = "eval",
                      bn_x: Tensor | None = None, bn_batch_size: int | None = None) -> Callable:
    """Plain-loop reference of :func:`network_loss` (full data, no gradient; same ``loss``).

    Each point: a deep copy of the model, parameters loaded with ``vector_to_parameters``,
    BN statistics reset and re-accumulated with ``momentum=None`` for ``"recompute"``.
    """
    if bn not in _BN_MODES:
        raise ConfigError(f"bn must be one of {_BN_MODES}, got {bn!r}")
    x, y = _pair(x, y, "network_loss_loop data")
    name, fn, y = _resolve(model, loss, x, y)
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
                out.append(mean_loss(name, fn, m(x), y))
        return torch.stack(out)
    return _loop


def _split_pairs(splits) -> dict[str, tuple[Tensor, Tensor]]:
    """``{name: (x, y)}`` of a mapping of splits (values: ``(x, y)`` pairs or Datasets) or of a
    DataSplits (its train and test splits)."""
    from collections.abc import Mapping

    from topoland.splits import DataSplits, as_pair
    if isinstance(splits, DataSplits):
        return {"train": splits.split("train"), "test": splits.split("test")}
    if not isinstance(splits, Mapping):
        raise PathError(f"network_metrics splits must be a mapping name -> (x, y) or a DataSplits, "
                        f"got {type(splits).__name__}")
    out = {}
    for name, v in splits.items():
        if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(t, Tensor) for t in v):
            out[str(name)] = (v[0], v[1])
        else:
            out[str(name)] = as_pair(v, "train", what=f"network_metrics split {name!r}")
    return out


def network_metrics(model: nn.Module, splits, *, loss="cross_entropy", metrics=None,
                    bn: str = "recompute", bn_x: Tensor | None = None, batch_size: int = 1024,
                    chunk_size: int | None = None, device="auto") -> Callable:
    """Batched metrics ``thetas (B, D) -> {f"{split}_{metric}": (B,)}``.

    splits: ``{name: (x, y)}`` (values may also be Datasets) or a DataSplits (train and test).
    loss: a name of LOSSES or a per-sample callable (its mean is the column ``{split}_loss``, in
    its units: nats for cross-entropy). metrics: as :func:`topoland.nets.evaluation.evaluate`;
    None records ``loss`` and, for class-index targets (:func:`~topoland.nets.losses.tracks_accuracy`),
    ``error`` (fraction misclassified, 0..1): the columns ``{split}_loss``, ``{split}_error``.
    Evaluated by :func:`topoland.nets.evaluation.evaluate` (vmap over points, no gradients); with
    ``bn="recompute"`` (default) the BN statistics are recomputed at every point from
    ``bn_x`` (default: the first split's inputs, normally ``"train"``) in batches of
    ``batch_size``.
    """
    from topoland.nets.evaluation import evaluate

    if not splits:
        raise PathError("network_metrics needs at least one split (name -> (x, y))")
    if bn not in ("eval", "recompute"):
        raise ConfigError(f"network_metrics bn must be 'eval' or 'recompute', got {bn!r}")
    pairs = _split_pairs(splits)
    fx, fy = next(iter(pairs.values()))
    name, fn, _ = _resolve(model, loss, fx, fy)
    if metrics is None:
        metrics = ("loss", "error") if tracks_accuracy(name, fy) else ("loss",)
    bn_x = fx if bn_x is None else bn_x

    def _metrics(thetas: Tensor) -> dict[str, Tensor]:
        thetas = _as_2d(thetas, "thetas").detach()
        out = {}
        for s, (x, y) in pairs.items():
            r = evaluate(model, thetas, x, y, loss=(name, fn), metrics=metrics, batch_size=batch_size,
                         chunk_size=chunk_size, bn=bn, bn_x=bn_x, device=device)
            for k, v in r.items():
                out[f"{s}_{k}"] = torch.as_tensor(v)
        return out
    return _metrics
