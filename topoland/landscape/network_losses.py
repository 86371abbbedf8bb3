"""Batched losses and metrics of a network at flat parameter points (the path algorithms'
loss functions for networks; protocol: :mod:`topoland.landscape.path_losses`).

Points are flat vectors of the trainable parameters in ``model.named_parameters()`` order;
BatchNorm is handled in ``"eval"``, ``"train"`` or ``"recompute"`` mode (see
:func:`network_loss`).
"""
from __future__ import annotations

import contextlib
import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from topoland.errors import ConfigError
from topoland.landscape.path_losses import PathError, _as_2d

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
    :func:`network_metrics`). Dropout is always off (``topoland.nets.functional.functional_logits``
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
    :func:`topoland.nets.evaluation.evaluate` (vmap over points, no gradients); with
    ``bn="recompute"`` (default) the BN statistics are recomputed at every point from
    ``bn_x`` (default: the first split's inputs, normally ``"train"``) in batches of
    ``batch_size``.
    """
    from topoland.nets.evaluation import evaluate

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
