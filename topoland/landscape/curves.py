"""Mode-connecting curves (Garipov et al. 2018): quadratic Bezier and polygonal chain with
one trainable bend, endpoints fixed, trained by sampling t ~ U(0, 1).

See :mod:`topoland.landscape.path_losses` for the loss-function protocol.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import pandas as pd
import torch
from torch import Tensor

from topoland.errors import ConfigError
from topoland.landscape.profiles import _check_endpoints
from topoland.landscape.path_losses import PathError, _batch_stream, _call_loss, _TensorOptimizer

__all__ = ["Curve", "curve_weights", "fit_curve", "CURVE_KINDS"]

CURVE_KINDS = ("bezier", "polychain")


def curve_weights(t: Tensor, kind: str) -> Tensor:
    """Weights ``(T, 3)`` of (theta_a, bend, theta_b) at parameters ``t`` ``(T,)`` in [0, 1].

    bezier: ``((1-t)^2, 2t(1-t), t^2)``; polychain: ``(1-2t, 2t, 0)`` for t <= 1/2 and
    ``(0, 2-2t, 2t-1)`` above.
    """
    if kind == "bezier":
        return torch.stack([(1 - t) ** 2, 2 * t * (1 - t), t ** 2], dim=1)
    if kind == "polychain":
        lo = t <= 0.5
        z = torch.zeros_like(t)
        return torch.stack([torch.where(lo, 1 - 2 * t, z),
                            torch.where(lo, 2 * t, 2 - 2 * t),
                            torch.where(lo, z, 2 * t - 1)], dim=1)
    raise ConfigError(f"curve kind must be one of {CURVE_KINDS}, got {kind!r}")


@dataclass
class Curve:
    """A curve ``phi(t)`` from ``theta_a`` to ``theta_b`` (``(D,)``) through ``bend``."""
    theta_a: Tensor
    theta_b: Tensor
    bend: Tensor
    kind: str = "bezier"
    history: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def dtype(self):
        return self.theta_a.dtype

    def point(self, t) -> Tensor:
        """Curve points ``(T, D)`` at parameters ``t`` (``(T,)`` in [0, 1])."""
        t = torch.as_tensor(t, dtype=self.theta_a.dtype, device=self.theta_a.device).reshape(-1)
        return _points(self.theta_a, self.bend, self.theta_b, t, self.kind)

    __call__ = point


def _points(a: Tensor, m: Tensor, b: Tensor, t: Tensor, kind: str) -> Tensor:
    w = curve_weights(t, kind)
    return w[:, :1] * a + w[:, 1:2] * m + w[:, 2:] * b


def fit_curve(loss_fn: Callable, theta_a: Tensor, theta_b: Tensor, *, kind: str = "bezier",
              steps: int = 500, lr: float = 0.01, batch_t: int = 4, optimizer: str = "sgd",
              momentum: float = 0.9, weight_decay: float = 0.0, seed: int = 0,
              batches: Iterable | None = None, init_bend: Tensor | None = None,
              record_every: int = 1) -> Curve:
    """Train the bend of a Bezier / polygonal-chain curve between fixed endpoints ``(D,)``.

    The bend starts at the midpoint (or ``init_bend``). Each step draws ``batch_t``
    parameters t ~ U(0, 1) (seeded ``torch.Generator``), evaluates the curve points in one
    batched call (``loss_fn(points)``, or ``loss_fn(points, batch)`` with the next element
    of ``batches``: all t of a step share a minibatch) and descends the mean loss w.r.t.
    the bend (``"sgd"`` with ``momentum``, or ``"adam"``; ``weight_decay`` on the bend).
    Garipov et al. use one t per minibatch; ``batch_t > 1`` averages several t per step
    (a lower-variance estimate of the same objective, the mean loss over t ~ U(0, 1)).
    Returns a :class:`Curve` with ``history`` (``step``, ``loss``: the step's mean loss).
    """
    if kind not in CURVE_KINDS:
        raise ConfigError(f"curve kind must be one of {CURVE_KINDS}, got {kind!r}")
    _check_endpoints(theta_a, theta_b)
    if batch_t < 1:
        raise ConfigError(f"batch_t must be >= 1, got {batch_t}")
    bend0 = 0.5 * (theta_a + theta_b) if init_bend is None else init_bend.to(theta_a)
    if bend0.shape != theta_a.shape:
        raise PathError(f"init_bend has shape {tuple(bend0.shape)}, expected {tuple(theta_a.shape)}")
    bend = bend0.detach().clone()
    opt = _TensorOptimizer(optimizer, lr, momentum=momentum, weight_decay=weight_decay)
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    stream = _batch_stream(batches)
    a, b = theta_a.detach(), theta_b.detach()
    rows = []
    for step in range(steps):
        t = torch.rand(batch_t, generator=gen, dtype=theta_a.dtype).to(theta_a.device)
        m = bend.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = _call_loss(loss_fn, _points(a, m, b, t, kind), next(stream)).mean()
            if not torch.isfinite(loss):
                raise PathError(f"curve loss is not finite at step {step} (lr={lr} too large?)")
            (g,) = torch.autograd.grad(loss, m)
        opt.step(bend, g)
        if step % record_every == 0:
            rows.append({"step": step, "loss": float(loss.detach())})
    return Curve(theta_a=a, theta_b=b, bend=bend.detach(), kind=kind,
                 history=pd.DataFrame(rows))
