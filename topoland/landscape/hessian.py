"""Hessian-vector products of the loss around a minimum.

HVPs (Hessian-vector products) go through ``torch.func`` (forward-over-reverse: ``jvp`` of
``grad``), for a network's mean loss over a dataset (:func:`hvp_fn`) or for any scalar
function of a flat parameter vector (:func:`function_hvp`); several vectors at once through
``vmap``. The spectrum built on these operators is in :mod:`topoland.landscape.spectrum`,
flatness measures in :mod:`topoland.landscape.curvature`.

Conventions
-----------
* The loss is the **mean** over the samples used of a per-sample loss ``loss=``: a name of
  :data:`topoland.nets.losses.LOSSES` (default ``"cross_entropy"``, nats; ``"mse"``/``"l1"`` in
  the squared / absolute units of the targets) or a callable ``(output (N, ...), target (N, ...))
  -> (N,)``, checked once on a 2-sample batch (:func:`topoland.nets.losses.resolve_loss`: a model
  output that does not fit the loss raises one message naming both shapes). Targets are read as
  the loss needs them (:func:`topoland.nets.metrics.prepare_target`: int64 class indices for the
  classification losses, float regression targets kept float). The Hessian is taken with respect
  to the trainable parameters flattened in module order (``model.named_parameters()``), shape
  ``(D,)``.
* The loss is differentiated under ``torch.func`` (``grad``/``jvp``/``vmap``): a callable must be
  written with differentiable torch operations (no ``.item()``/``.tolist()``/``.numpy()``, no
  Python ``if``/``while`` on tensor values, no in-place change of its inputs). It is tried once
  under ``vmap`` and ``grad`` on the 2-sample batch; one that fails raises a
  :class:`CurvatureError` naming the loss and the transform that failed (never a fallback).
* Data: ``x`` (N, *input_shape) with targets ``y``, or, with ``y=None``, any data form of
  :func:`topoland.splits.as_pair` (its train split: a DataSplits, an ``(x, y)`` pair, a
  map-style Dataset, a mapping of splits).
* Networks are evaluated in **eval mode**: BatchNorm uses its running statistics (the
  buffers passed in, by default the model's own) and dropout is off, so the loss is a
  deterministic function of the parameters. The model's train/eval flags are restored after
  every call.
* "Several thousand samples are advised" for Hessian estimates (small batches give high
  variance): by default a fixed, seeded subset of ``n_samples=4096`` samples is used (the
  whole set when it is smaller); ``n_samples=None`` uses every sample. Samples are processed
  in batches of ``batch_size`` and the results are accumulated with weights ``n_b / N``, so
  the answer does not depend on the batch size.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vmap

from topoland.data import seeded_subset
from topoland.errors import TopolandError
from topoland.nets.losses import resolve_loss
from topoland.nets.metrics import prepare_target
from topoland.utils import resolve_device

__all__ = ["CurvatureError", "function_hvp", "hvp_fn", "loss_fn_flat"]


DEFAULT_N_SAMPLES = 4096


class CurvatureError(TopolandError):
    """A curvature computation got impossible arguments; the message names the argument."""


# --------------------------------------------------------------------------------------
# Flat parameter views and the functional loss
# --------------------------------------------------------------------------------------


def _trainable(model: nn.Module) -> list[tuple[str, Tensor]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _flat_params(model: nn.Module, params: dict | None, device, dtype=None) -> tuple[Tensor, list, list]:
    """Flatten ``params`` (or the model's trainable parameters): returns (theta (D,), names, shapes)."""
    named = _trainable(model)
    names = [n for n, _ in named]
    if params is None:
        tensors = [p.detach() for _, p in named]
    else:
        missing = [n for n in names if n not in params]
        if missing:
            raise CurvatureError(f"params is missing the trainable parameter {missing[0]!r}")
        tensors = [params[n].detach() for n in names]
    if not tensors:
        raise CurvatureError("model has no trainable parameters")
    shapes = [tuple(t.shape) for t in tensors]
    theta = torch.cat([t.reshape(-1) for t in tensors]).to(device)
    if dtype is not None:
        theta = theta.to(dtype)
    return theta, names, shapes


def _unflat(flat: Tensor, names: list[str], shapes: list[tuple]) -> dict[str, Tensor]:
    out, i = {}, 0
    for n, s in zip(names, shapes):
        k = math.prod(s)
        out[n] = flat[i:i + k].view(s)
        i += k
    return out


def _buffers(model: nn.Module, buffers: dict | None, device) -> dict[str, Tensor]:
    src = dict(model.named_buffers()) if buffers is None else buffers
    return {n: b.detach().to(device) for n, b in src.items()}


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, f in flags:
            m.training = f


def _subset(x: Tensor, y: Tensor, n_samples: int | None, seed: int) -> tuple[Tensor, Tensor]:
    """A fixed, seeded subset of ``n_samples`` rows (all rows when fewer or ``None``)."""
    if x.shape[0] != y.shape[0]:
        raise CurvatureError(f"x has {x.shape[0]} samples but y has {y.shape[0]}")
    if x.shape[0] == 0:
        raise CurvatureError("x is empty")
    if n_samples is None or n_samples >= x.shape[0]:
        return x, y
    if n_samples < 1:
        raise CurvatureError(f"n_samples must be positive, got {n_samples}")
    return seeded_subset(x, y, n_samples, seed)


def _batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    if batch_size < 1:
        raise CurvatureError(f"batch_size must be positive, got {batch_size}")
    return [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def _data(x, y, what: str) -> tuple[Tensor, Tensor]:
    from topoland.splits import tensors_or_pair
    return tensors_or_pair(x, y, what=what, error=CurvatureError)


_FUNC_ADVICE = ("a loss used for curvature is differentiated with torch.func (grad/jvp/vmap): write it "
                "with differentiable torch operations only (no .item()/.tolist()/.numpy(), no Python "
                "if/while on tensor values, no in-place change of its inputs)")


def _shape(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__


def _check_func(name: str, fn: Callable, out: Tensor, target: Tensor) -> None:
    """Try a user loss once under ``vmap`` (over a stack of two copies of ``out``) and ``grad``
    on a small batch; raise one :class:`CurvatureError` naming the loss and what failed."""
    out = out.detach()
    for what, run in (
            ("vmap over points", lambda: vmap(lambda o: fn(o, target))(torch.stack([out, out]))),
            ("grad", lambda: grad(lambda o: fn(o, target).sum())(out))):
        try:
            run()
        except Exception as e:  # noqa: BLE001 - re-raised with the loss's name
            raise CurvatureError(f"loss {name!r} is not torch.func-compatible: {what} failed on output "
                                 f"{_shape(out)} and target {_shape(target)} ({type(e).__name__}: "
                                 f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); "
                                 f"{_FUNC_ADVICE}") from e


class _Setup:
    """Everything a functional loss over (a subset of) a dataset needs.

    ``loss``: a name of LOSSES, a per-sample callable, or a resolved ``(name, fn)`` pair.
    """

    def __init__(self, model, x, y=None, *, params=None, buffers=None, batch_size=512,
                 n_samples=DEFAULT_N_SAMPLES, seed=0, loss="cross_entropy", device="auto",
                 what="curvature data"):
        self.device = resolve_device(device)
        self.model = model
        theta, self.names, self.shapes = _flat_params(model, params, self.device)
        self.theta = theta
        self.buffers = _buffers(model, buffers, self.device)
        x, y = _data(x, y, what)
        xs, ys = _subset(x, y, n_samples, seed)
        self.x = xs.to(self.device)
        if self.x.is_floating_point():
            self.x = self.x.to(theta.dtype)
        if isinstance(loss, tuple) and len(loss) == 2 and callable(loss[1]):
            name, fn = loss
            ys = prepare_target(name, ys)
        else:
            name, _ = resolve_loss(loss)  # the name decides the target dtype
            ys = prepare_target(name, ys)
            with torch.no_grad(), _eval_mode(model):
                out2 = functional_call(model, (_unflat(theta, self.names, self.shapes), self.buffers),
                                       (self.x[:2],))
            y2 = ys[:2].to(self.device)
            if y2.is_floating_point():
                y2 = y2.to(theta.dtype)
            name, fn = resolve_loss(loss, output=out2, target=y2)
            if not isinstance(loss, str):
                _check_func(name, fn, out2, y2)
        self.y = ys.to(self.device)
        if self.y.is_floating_point():
            self.y = self.y.to(theta.dtype)
        self.n = self.x.shape[0]
        self.batch_size = batch_size
        self.spans = _batches(self.n, batch_size)
        self.loss_name, self.loss_fn = name, fn
        self.custom_loss = not isinstance(loss, str)

    def loss(self, flat: Tensor, xb: Tensor, yb: Tensor) -> Tensor:
        out = functional_call(self.model, (_unflat(flat, self.names, self.shapes), self.buffers), (xb,))
        if not self.custom_loss:
            return self.loss_fn(out, yb).mean()
        try:
            return self.loss_fn(out, yb).mean()
        except Exception as e:  # noqa: BLE001 - a user loss failing under torch.func: name it
            raise CurvatureError(f"loss {self.loss_name!r} failed under torch.func on output {_shape(out)} "
                                 f"and target {_shape(yb)} ({type(e).__name__}: {e}); {_FUNC_ADVICE}") from e


# --------------------------------------------------------------------------------------
# Hessian-vector products
# --------------------------------------------------------------------------------------


def _check_v(v: Tensor, dim: int, name="v") -> None:
    if v.dim() not in (1, 2) or v.shape[-1] != dim:
        raise CurvatureError(f"{name} must have shape (D,) or (K, D) with D={dim}, got {tuple(v.shape)}")


def function_hvp(f: Callable[[Tensor], Tensor], theta: Tensor, *, chunk_size: int | None = None) -> Callable:
    """HVP operator of a scalar function of a flat vector, at ``theta``.

    ``f``: (D,) -> scalar, written with torch operations (torch.func-compatible).
    Returns ``hvp(v)``: v (D,) -> H v (D,), or v (K, D) -> (K, D) via ``vmap`` over the rows
    (``chunk_size`` rows at a time; ``None`` = all at once).
    """
    theta = theta.detach()
    dim = theta.numel()

    def one(v):
        return jvp(grad(f), (theta,), (v,))[1]

    many = vmap(one, chunk_size=chunk_size)

    def hvp(v: Tensor) -> Tensor:
        _check_v(v, dim)
        v = v.to(device=theta.device, dtype=theta.dtype)
        return one(v) if v.dim() == 1 else many(v)

    hvp.dim = dim
    return hvp


def hvp_fn(model: nn.Module, x, y: Tensor | None = None, *, loss="cross_entropy", batch_size: int = 512,
           n_samples: int | None = DEFAULT_N_SAMPLES, seed: int = 0, params: dict | None = None,
           buffers: dict | None = None, chunk_size: int | None = None, device="auto") -> Callable:
    """HVP operator of the mean loss of ``model`` over ``(x, y)`` at ``params``.

    x: (N, *input_shape) with y (N, ...) targets, or any data form with ``y=None`` (its train
    split). loss: a name of :data:`~topoland.nets.losses.LOSSES` or a per-sample callable
    ``(output, target) -> (N,)`` (module docstring); the Hessian is that of their mean, in loss
    units per squared parameter unit (nats for cross-entropy). A seeded subset of ``n_samples``
    rows is used (``None``: all), in batches of ``batch_size``; BN in eval mode (running
    statistics from ``buffers``). Returns ``hvp(v)``: v (D,) -> H v (D,), or (K, D) -> (K, D)
    (``vmap`` over the K vectors, ``chunk_size`` at a time). The operator has attributes ``dim``
    (D), ``theta`` (D,), ``n_samples`` (samples actually used) and ``loss_name``.
    Forward-over-reverse: ``jvp`` of ``grad``.
    """
    s = _Setup(model, x, y, params=params, buffers=buffers, batch_size=batch_size,
               n_samples=n_samples, seed=seed, loss=loss, device=device, what="hvp_fn data")
    dim = s.theta.numel()

    def one(v, xb, yb):
        return jvp(lambda t: grad(s.loss)(t, xb, yb), (s.theta,), (v,))[1]

    many = vmap(one, in_dims=(0, None, None), chunk_size=chunk_size)

    def hvp(v: Tensor) -> Tensor:
        _check_v(v, dim)
        v = v.to(device=s.theta.device, dtype=s.theta.dtype)
        f = one if v.dim() == 1 else many
        out = torch.zeros_like(v)
        with _eval_mode(model):
            for a, b in s.spans:
                out += f(v, s.x[a:b], s.y[a:b]) * ((b - a) / s.n)
        return out

    hvp.dim = dim
    hvp.theta = s.theta
    hvp.n_samples = s.n
    hvp.loss_name = s.loss_name
    return hvp


def loss_fn_flat(model: nn.Module, x, y: Tensor | None = None, *, loss="cross_entropy", batch_size: int = 512,
                 n_samples: int | None = DEFAULT_N_SAMPLES, seed: int = 0, params: dict | None = None,
                 buffers: dict | None = None, device="auto") -> tuple[Callable, Tensor]:
    """The mean loss (loss units) as a function of the flat parameter vector: returns (f, theta (D,)).

    ``f(theta) -> scalar`` uses the same data forms, ``loss``, subset, batches and eval-mode
    convention as :func:`hvp_fn`, and is torch.func-compatible (e.g.
    ``torch.func.hessian(f)(theta)`` for tiny networks); call it while the model is in eval mode
    if it has BN or dropout.
    """
    s = _Setup(model, x, y, params=params, buffers=buffers, batch_size=batch_size,
               n_samples=n_samples, seed=seed, loss=loss, device=device, what="loss_fn_flat data")

    def f(flat: Tensor) -> Tensor:
        return sum(s.loss(flat, s.x[a:b], s.y[a:b]) * ((b - a) / s.n) for a, b in s.spans)

    return f, s.theta
