"""Optimizers that aim for particular minima: SWA helpers, Entropy-SGD and PAL.

* **SWA** (Izmailov et al. 2018): an equal-weight running average of the weights visited late in
  training (``torch.optim.swa_utils.AveragedModel``), followed by a recomputation of the BN
  running statistics for the averaged weights (:func:`update_bn`): the statistics collected
  along the trajectory do not belong to the average.
* **Entropy-SGD** (Chaudhari et al. 2017/2019), :class:`EntropySGD`: an inner SGLD loop of
  ``L`` steps samples ``x'`` from the local Gibbs measure ``exp(-f(x') - gamma/2 |x - x'|^2)``
  and averages it into ``mu``; the outer step moves along ``x - mu`` (the gradient of the
  negative local entropy is ``gamma (x - mu)``). "Scoping": ``gamma_t = gamma0 (1 + gamma1)^t``
  grows with the outer step count ``t`` (0-based), so the inner chain is tied ever closer to x
  and the method turns into plain SGD on f late in training.
* **PAL** (Mutschler & Zell 2020), :class:`PAL`: on one minibatch, measure the loss at the current
  point, its directional derivative along the (momentum) descent direction and the loss at
  distance ``mu``; fit the parabola ``a s^2 + b s + c`` and jump to its vertex.

Entropy-SGD and PAL need a closure (several evaluations per step); see their ``step``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.swa_utils import AveragedModel

from topoland.errors import TopolandError
from topoland.nets.params import has_batchnorm

__all__ = ["OptimError", "average_snapshots", "SWAAverager", "update_bn", "EntropySGD", "PAL",
           "entropy_gamma", "pal_step_size"]


class OptimError(TopolandError):
    """An optimizer option or closure is invalid; the message names the culprit."""


# --------------------------------------------------------------------------------------------
# SWA
# --------------------------------------------------------------------------------------------

def average_snapshots(snapshots: Sequence[Mapping[str, Tensor]] | Tensor):
    """Equal-weight mean of weight snapshots: the reference for SWA's running average.

    snapshots: a list of ``{name: tensor}`` dicts with equal keys, or a flat ``(T, D)`` tensor.
    Returns a dict of means (float64 accumulation, cast back) or a ``(D,)`` tensor.
    """
    if isinstance(snapshots, Tensor):
        if snapshots.dim() != 2 or snapshots.shape[0] == 0:
            raise OptimError(f"snapshots must be a non-empty (T, D) tensor, got shape {tuple(snapshots.shape)}")
        return snapshots.double().mean(0).to(snapshots.dtype)
    if len(snapshots) == 0:
        raise OptimError("average_snapshots: empty list of snapshots")
    keys = list(snapshots[0])
    for i, s in enumerate(snapshots):
        if list(s) != keys:
            raise OptimError(f"average_snapshots: snapshot {i} has different keys than snapshot 0")
    return {k: torch.stack([s[k].double() for s in snapshots]).mean(0).to(snapshots[0][k].dtype)
            for k in keys}


@torch.no_grad()
def update_bn(model: nn.Module, x: Tensor, *, batch_size: int = 256, device=None) -> None:
    """Recompute BN running statistics of ``model`` in place from inputs ``x`` ``(N, ...)``.

    Cumulative average over batches of ``batch_size`` (``torch.optim.swa_utils.update_bn``);
    no-op for models without BN. Batches of one sample are dropped (BN needs two). The
    model's train/eval flags are restored.
    """
    if batch_size < 1:
        raise OptimError(f"update_bn batch_size must be >= 1, got {batch_size}")
    if not has_batchnorm(model):
        return
    batches = [x[i:i + batch_size] for i in range(0, len(x), batch_size)]
    batches = [b for b in batches if len(b) > 1]
    if not batches:
        raise OptimError(f"update_bn needs at least 2 samples to recompute BN statistics, got {len(x)}")
    flags = [(m, m.training) for m in model.modules()]
    torch.optim.swa_utils.update_bn(batches, model, device=device)
    for m, t in flags:
        m.training = t


class SWAAverager:
    """Running equal-weight average of a model's parameters (wraps ``AveragedModel``).

    ``update(model)`` adds the model's current parameters; ``n_averaged`` counts them;
    ``average()`` returns ``{name: tensor}``; ``apply_to(model, x=None)`` copies the average into
    ``model`` and, given training inputs ``x``, recomputes its BN statistics (:func:`update_bn`).
    """

    def __init__(self, model: nn.Module):
        self._avg = AveragedModel(model, use_buffers=False)

    @property
    def n_averaged(self) -> int:
        return int(self._avg.n_averaged)

    def update(self, model: nn.Module) -> None:
        self._avg.update_parameters(model)

    def average(self) -> dict[str, Tensor]:
        if self.n_averaged == 0:
            raise OptimError("SWAAverager: no snapshot was averaged yet")
        return {n: p.detach().clone() for n, p in self._avg.module.named_parameters()}

    @torch.no_grad()
    def apply_to(self, model: nn.Module, x: Tensor | None = None, *, batch_size: int = 256) -> None:
        avg = self.average()
        for n, p in model.named_parameters():
            p.copy_(avg[n].to(p.device, p.dtype))
        if x is not None:
            update_bn(model, x, batch_size=batch_size, device=next(model.parameters()).device)


# --------------------------------------------------------------------------------------------
# Entropy-SGD
# --------------------------------------------------------------------------------------------

def entropy_gamma(t: int, gamma0: float, gamma1: float) -> float:
    """Scoping schedule of Entropy-SGD: ``gamma_t = gamma0 * (1 + gamma1) ** t`` (t = outer step, 0-based)."""
    return float(gamma0) * (1.0 + float(gamma1)) ** int(t)


class EntropySGD(Optimizer):
    """Entropy-SGD (Chaudhari et al.), one outer step per :meth:`step` call.

    Per outer step t with ``gamma = entropy_gamma(t, gamma0, gamma1)``, starting from ``x' = mu = x``::

        for l in 1..L:     g = grad f_l(x') + weight_decay * x'          (closure call l)
                           x' <- x' - sgld_lr * (g - gamma (x - x')) + sqrt(sgld_lr) * noise * N(0, I)
                           mu <- (1 - alpha) mu + alpha x'
        x <- x - lr * v,   v = momentum buffer of (x - mu)  (Nesterov optional)

    The outer direction is ``x - mu`` as in the authors' reference implementation; the paper's
    ``gamma (x - mu)`` is the same step with ``lr`` replaced by ``lr * gamma``. Each closure call
    may use a new minibatch. The SGLD noise comes from ``generator`` (or a CPU generator seeded
    with ``seed``). ``state["step"]`` counts outer steps, ``state["gamma"]`` is the last gamma used.
    """

    def __init__(self, params: Iterable, lr: float = 1.0, *, L: int = 5, gamma0: float = 0.03,
                 gamma1: float = 1e-3, sgld_lr: float = 0.1, noise: float = 1e-4, alpha: float = 0.75,
                 momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
                 generator: torch.Generator | None = None, seed: int = 0):
        checks = [("lr", lr > 0), ("L", isinstance(L, int) and L >= 1), ("gamma0", gamma0 > 0),
                  ("gamma1", gamma1 >= 0), ("sgld_lr", sgld_lr > 0), ("noise", noise >= 0),
                  ("alpha", 0 < alpha <= 1), ("momentum", 0 <= momentum < 1),
                  ("weight_decay", weight_decay >= 0)]
        for name, ok in checks:
            if not ok:
                raise OptimError(f"EntropySGD {name} is out of range: {locals()[name]!r}")
        if nesterov and momentum == 0:
            raise OptimError("EntropySGD nesterov needs momentum > 0")
        defaults = dict(lr=lr, L=L, gamma0=gamma0, gamma1=gamma1, sgld_lr=sgld_lr, noise=noise,
                        alpha=alpha, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
        super().__init__(params, defaults)
        if generator is None:
            generator = torch.Generator()
            generator.manual_seed(int(seed))
        self.generator = generator
        self.state["step"] = 0
        self.state["gamma"] = float("nan")

    def _params(self):
        return [p for g in self.param_groups for p in g["params"]]

    def _noise_like(self, p: Tensor) -> Tensor:
        z = torch.randn(p.shape, generator=self.generator, device=self.generator.device, dtype=p.dtype)
        return z.to(p.device)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor]) -> Tensor:  # type: ignore[override]
        """One outer step. ``closure()`` computes a minibatch loss at the current parameters and
        calls ``backward()`` (gradients are zeroed before each call); it is called ``L`` times.
        Returns the loss of the first call (at x)."""
        if closure is None:
            raise OptimError("EntropySGD.step needs a closure that computes the loss and calls backward()")
        t = int(self.state["step"])
        params = self._params()
        x0 = [p.detach().clone() for p in params]
        mu = [p.detach().clone() for p in params]
        first = None
        L = self.param_groups[0]["L"]
        for _ in range(L):
            for p in params:
                p.grad = None
            with torch.enable_grad():
                loss = closure()
            if first is None:
                first = loss.detach() if isinstance(loss, Tensor) else torch.tensor(float(loss))
            if not bool(torch.isfinite(torch.as_tensor(loss))):
                for p, x in zip(params, x0):
                    p.copy_(x)
                return first
            i = 0
            for group in self.param_groups:
                gamma = entropy_gamma(t, group["gamma0"], group["gamma1"])
                eta, eps, alpha, wd = group["sgld_lr"], group["noise"], group["alpha"], group["weight_decay"]
                for p in group["params"]:
                    g = torch.zeros_like(p) if p.grad is None else p.grad.detach()
                    if wd:
                        g = g + wd * p
                    dx = g - gamma * (x0[i] - p)
                    p.add_(dx, alpha=-eta)
                    if eps > 0:
                        p.add_(self._noise_like(p), alpha=math.sqrt(eta) * eps)
                    mu[i].mul_(1 - alpha).add_(p, alpha=alpha)
                    i += 1
        i = 0
        for group in self.param_groups:
            lr, mom, nest = group["lr"], group["momentum"], group["nesterov"]
            for p in group["params"]:
                d = x0[i] - mu[i]
                if mom > 0:
                    st = self.state[p]
                    buf = st.get("momentum_buffer")
                    if buf is None:
                        buf = st["momentum_buffer"] = d.clone()
                    else:
                        buf.mul_(mom).add_(d)
                    d = d + mom * buf if nest else buf
                p.copy_(x0[i] - lr * d)
                p.grad = None
                i += 1
        self.state["gamma"] = entropy_gamma(t, self.param_groups[0]["gamma0"], self.param_groups[0]["gamma1"])
        self.state["step"] = t + 1
        return first


# --------------------------------------------------------------------------------------------
# PAL
# --------------------------------------------------------------------------------------------

def pal_step_size(loss0: float, deriv0: float, loss_mu: float, mu: float, *, max_step: float,
                  adapt: float = 1.0) -> tuple[float, float]:
    """PAL's step along a unit direction from three measurements; returns ``(step, a)``.

    Parabola ``a s^2 + b s + c`` with ``c = loss0``, ``b = deriv0`` (directional derivative at 0)
    and ``a = (loss_mu - loss0 - b mu) / mu^2``. Cases (Mutschler & Zell, Alg. 1):
    ``a > 0, b < 0``: vertex ``-b / (2a)`` times ``adapt``; ``a <= 0, b < 0`` (concave or linear,
    no vertex ahead): the measuring step ``mu``; ``b >= 0`` (not a descent direction): 0.
    The step is clipped to ``max_step``.
    """
    a = (loss_mu - loss0 - deriv0 * mu) / (mu * mu)
    if deriv0 < 0 and a > 0:
        s = adapt * (-deriv0 / (2.0 * a))
    elif deriv0 < 0:
        s = mu
    else:
        s = 0.0
    return min(s, max_step), a


class PAL(Optimizer):
    """Parabolic approximation line search (Mutschler & Zell 2020).

    Per step: ``g = grad f(x)`` on the batch; direction ``d = -v / |v|`` with ``v = g`` (or the
    conjugate-gradient-like buffer ``v <- momentum * v + g``); ``b = g . d`` (exact directional
    derivative; ``-|g|`` without momentum); ``loss_mu = f(x + mu d)`` on the *same* batch; then
    ``x <- x + s d`` with ``s`` from :func:`pal_step_size`. No learning rate. ``weight_decay``
    adds ``weight_decay / 2 * |x|^2`` to every measurement (and ``weight_decay * x`` to g), so
    the parabola is fitted to the regularized loss.
    ``state``: ``step`` count, ``step_size_sum`` and the last ``step_size``, ``a``, ``b``,
    ``loss0``, ``loss_mu`` (regularized).
    """

    def __init__(self, params: Iterable, *, mu: float = 0.1, max_step: float = 1.0,
                 momentum: float = 0.0, adapt: float = 1.0, weight_decay: float = 0.0, eps: float = 1e-15):
        for name, ok in [("mu", mu > 0), ("max_step", max_step > 0), ("momentum", 0 <= momentum < 1),
                         ("adapt", adapt > 0), ("weight_decay", weight_decay >= 0)]:
            if not ok:
                raise OptimError(f"PAL {name} is out of range: {locals()[name]!r}")
        super().__init__(params, dict(mu=mu, max_step=max_step, momentum=momentum, adapt=adapt,
                                      weight_decay=weight_decay, eps=eps))
        self.state["step"] = 0
        self.state["step_size_sum"] = 0.0

    def _l2(self, params) -> float:
        wd = self.param_groups[0]["weight_decay"]
        if not wd:
            return 0.0
        return 0.5 * wd * sum(float((p.detach().double() ** 2).sum()) for p in params)

    @torch.no_grad()
    def step(self, closure: Callable[..., Tensor]) -> Tensor:  # type: ignore[override]
        """One PAL step. ``closure(backward: bool)`` evaluates the loss on the current batch (the
        same batch and the same random draws on every call) and calls ``backward()`` when
        ``backward`` is True. Called twice. Returns the loss at the starting point; a
        non-finite measurement leaves the parameters unchanged."""
        if closure is None:
            raise OptimError("PAL.step needs a closure(backward) evaluating the loss on one batch")
        group = self.param_groups[0]
        if len(self.param_groups) > 1:
            raise OptimError("PAL supports a single parameter group (one line search over all parameters)")
        params = [p for p in group["params"]]
        for p in params:
            p.grad = None
        with torch.enable_grad():
            loss0 = closure(backward=True)
        l0 = float(loss0) + self._l2(params)
        grads = [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params]
        if group["weight_decay"]:
            grads = [g + group["weight_decay"] * p.detach() for g, p in zip(grads, params)]
        if not math.isfinite(l0):
            return loss0.detach()
        mom = group["momentum"]
        if mom > 0:
            dirs = []
            for p, g in zip(params, grads):
                st = self.state[p]
                buf = st.get("momentum_buffer")
                buf = g.clone() if buf is None else buf.mul_(mom).add_(g)
                st["momentum_buffer"] = buf
                dirs.append(buf)
        else:
            dirs = grads
        norm = math.sqrt(sum(float((v.double() ** 2).sum()) for v in dirs))
        norm = max(norm, group["eps"])
        b = -sum(float((g.double() * v.double()).sum()) for g, v in zip(grads, dirs)) / norm
        mu = group["mu"]
        for p, v in zip(params, dirs):
            p.add_(v, alpha=-mu / norm)
        lmu = float(closure(backward=False)) + self._l2(params)
        if not math.isfinite(lmu):
            s = 0.0
            a = float("nan")
        else:
            s, a = pal_step_size(l0, b, lmu, mu, max_step=group["max_step"], adapt=group["adapt"])
        for p, v in zip(params, dirs):
            p.add_(v, alpha=-(s - mu) / norm)
            p.grad = None
        self.state.update(step=int(self.state["step"]) + 1, step_size_sum=self.state["step_size_sum"] + s,
                          step_size=s, a=a, b=b, loss0=l0, loss_mu=lmu)
        return loss0.detach()
