"""Functional (torch.func) forward and gradients of many parameter points at once.

``torch.func.functional_call`` runs under ``vmap`` over the stacked points (stacked dicts, see
:mod:`topoland.nets.params`), with the input batch shared by all points (``in_dims=None``: it is
never copied per point) unless ``x_per_point``. A model's own tensors are not used or modified;
its train/eval flags are restored.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping

import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap
from torch.nn.modules.batchnorm import _BatchNorm

from topoland.nets.params import ParamsError, _bn_modules, _leading

__all__ = ["functional_logits", "batched_grad"]


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
