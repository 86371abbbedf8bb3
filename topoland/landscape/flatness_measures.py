"""Flatness of one minimum as generalization measures: worst-case sharpness by projected gradient
ascent and the PAC-Bayes perturbation scale (Jiang et al. 2020, Appendix C; Foret et al. 2021;
Kwon et al. 2021).

Losses follow :mod:`topoland.landscape.hessian`: the mean of the per-sample ``loss`` (a name of
:data:`topoland.nets.losses.LOSSES` or a callable; default cross-entropy, nats) over a seeded subset of ``n_samples`` training samples, BN in eval mode
(running statistics never move), parameters flattened in :func:`topoland.nets.params.param_names`
order, shape (D,). Perturbation sets at radius r (``kind``):

* ``"filter"``: every filter (slice along dim 0 of a tensor with >= 2 dims) moves by at most
  r times that filter's weight norm (Euclidean ball per filter, as filter-normalized
  directions); tensors with <= 1 dim (biases, BN) are fixed for ``ignore="biasbn"``, else each
  is one ball of radius r ||tensor||.
* ``"adaptive"``: every coordinate moves by at most r (|theta_i| + eps) (a box; every parameter,
  biases and BN included).

Random numbers: ``torch.randn((k, D), generator=topoland.utils.make_generator(seed),
dtype=torch.float64)``, drawn once per call and reused at every radius or sigma tried (common
random numbers: the searches are deterministic given the seed).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn
from torch.func import grad_and_value, vmap

from topoland.landscape.curvature import _points_loss
from topoland.landscape.hessian import CurvatureError, _eval_mode, _flat_params, _Setup
from topoland.utils import make_generator

__all__ = ["project_perturbation", "worst_case_sharpness", "worst_case_alpha", "pac_bayes_rise",
           "pac_bayes_sigma"]

DEFAULT_N_SAMPLES = 2048
_TINY = 1e-30


class _PerturbationSet:
    """The set of perturbations allowed at radius r, on flat (R, D) tensors."""

    def __init__(self, theta: Tensor, names, shapes, kind: str, eps: float, ignore: str | None):
        if kind not in ("filter", "adaptive"):
            raise CurvatureError(f"kind must be 'filter' or 'adaptive', got {kind!r}")
        if ignore not in ("biasbn", None):
            raise CurvatureError(f"ignore must be 'biasbn' or None, got {ignore!r}")
        if eps < 0:
            raise CurvatureError(f"eps must be >= 0, got {eps}")
        self.kind = kind
        if kind == "adaptive":
            self.bound = theta.abs() + eps
            return
        gid, g = [], 0
        for shp in shapes:
            k = math.prod(shp)
            if len(shp) <= 1:
                gid.append(torch.full((k,), -1 if ignore == "biasbn" else g, dtype=torch.long))
                g += ignore != "biasbn"
            else:
                gid.append(g + torch.arange(shp[0]).repeat_interleave(k // shp[0]))
                g += shp[0]
        gid = torch.cat(gid).to(theta.device)
        self.free = gid >= 0
        self.gid = gid[self.free]
        self.n_groups = g
        self.scale = self._group_norm(theta[None])[0]  # (G,) weight norm of each filter

    def _group_norm(self, v: Tensor) -> Tensor:
        sq = torch.zeros(v.shape[0], self.n_groups, dtype=v.dtype, device=v.device)
        return sq.index_add_(1, self.gid, v[:, self.free] ** 2).sqrt()

    def project(self, delta: Tensor, r: float) -> Tensor:
        if self.kind == "adaptive":
            return torch.clamp(delta, -r * self.bound, r * self.bound)
        lim = r * self.scale
        n = self._group_norm(delta)
        f = torch.where(n > lim, lim / n.clamp_min(_TINY), torch.ones_like(n))
        out = torch.zeros_like(delta)
        out[:, self.free] = delta[:, self.free] * f[:, self.gid]
        return out

    def step(self, delta: Tensor, g: Tensor, r: float, eta: float) -> Tensor:
        """Ascent step of eta times the radius: sign steps in the box, per-filter normalized
        gradient steps in the filter balls."""
        if self.kind == "adaptive":
            return delta + eta * r * self.bound * torch.sign(g)
        gn = self._group_norm(g).clamp_min(_TINY)
        out = delta.clone()
        out[:, self.free] += eta * r * (self.scale / gn)[:, self.gid] * g[:, self.free]
        return out

    def boundary(self, z: Tensor, r: float) -> Tensor:
        """Random points on the boundary: a vertex of the box, or every filter at full radius."""
        if self.kind == "adaptive":
            return r * self.bound * torch.sign(z)
        return self.project(self.step(torch.zeros_like(z), z, r, 1.0), r)


def _check_radius(r, name="radius"):
    if not (isinstance(r, (int, float)) and math.isfinite(r) and r >= 0):
        raise CurvatureError(f"{name} must be a finite number >= 0, got {r!r}")


def project_perturbation(model: nn.Module, delta: Tensor, *, radius: float, kind: str = "filter",
                         eps: float = 1e-3, ignore: str | None = "biasbn", params: dict | None = None) -> Tensor:
    """Euclidean projection of flat perturbations ``delta`` (D,) or (R, D) onto the set of
    ``kind`` at ``radius`` around ``params`` (default the model's weights; see the module
    docstring): per filter ``delta_f * min(1, radius ||theta_f|| / ||delta_f||)`` (fixed
    tensors set to 0), or the clamp to ``|delta_i| <= radius (|theta_i| + eps)``. Same shape."""
    _check_radius(radius)
    delta = torch.as_tensor(delta)
    theta, names, shapes = _flat_params(model, params, delta.device, delta.dtype)
    if delta.shape[-1] != theta.numel() or delta.dim() not in (1, 2):
        raise CurvatureError(f"delta must have shape (D,) or (R, D) with D={theta.numel()}, got "
                             f"{tuple(delta.shape)}")
    out = _PerturbationSet(theta, names, shapes, kind, eps, ignore).project(delta.reshape(-1, theta.numel()), radius)
    return out.reshape(delta.shape)


class _Ascent:
    """Projected gradient ascent of the mean loss over a perturbation set (all restarts vmapped)."""

    def __init__(self, s: _Setup, kind, eps, ignore, steps, restarts, step_size, seed):
        if steps < 1 or restarts < 1:
            raise CurvatureError(f"steps and restarts must be >= 1, got {steps}, {restarts}")
        self.s, self.steps, self.restarts = s, steps, restarts
        self.eta = 2.5 / steps if step_size is None else float(step_size)
        self.pset = _PerturbationSet(s.theta, s.names, s.shapes, kind, eps, ignore)
        d = s.theta.numel()
        self.z = torch.randn((restarts - 1, d), generator=make_generator(seed),
                             dtype=torch.float64).to(s.theta) if restarts > 1 else s.theta.new_zeros(0, d)

        def f(delta, xb, yb):
            return s.loss(s.theta + delta, xb, yb)

        self.grad_value = vmap(grad_and_value(f), in_dims=(0, None, None))
        self.value = vmap(f, in_dims=(0, None, None))
        with torch.no_grad(), _eval_mode(s.model):
            self.base = self._values(s.theta.new_zeros(1, d))[0].item()

    def _values(self, delta):
        return sum(self.value(delta, self.s.x[a:b], self.s.y[a:b]).double() * ((b - a) / self.s.n)
                   for a, b in self.s.spans)

    def rise(self, r: float) -> tuple[float, Tensor]:
        """Largest loss rise found within radius r, and the perturbation that gave it (D,)."""
        s, ps = self.s, self.pset
        delta = torch.cat([s.theta.new_zeros(1, s.theta.numel()), ps.boundary(self.z, r)])
        best, arg = -math.inf, delta[0]
        with _eval_mode(s.model):
            for _ in range(self.steps):
                g = torch.zeros_like(delta)
                v = torch.zeros(delta.shape[0], dtype=torch.float64, device=delta.device)
                for a, b in s.spans:
                    gi, vi = self.grad_value(delta, s.x[a:b], s.y[a:b])
                    g += gi * ((b - a) / s.n)
                    v += vi.double() * ((b - a) / s.n)
                if float(v.max()) > best:
                    best, arg = float(v.max()), delta[int(v.argmax())]
                delta = ps.project(ps.step(delta, g, r, self.eta), r).detach()
            with torch.no_grad():
                v = self._values(delta)
        if float(v.max()) > best:
            best, arg = float(v.max()), delta[int(v.argmax())]
        return max(best - self.base, 0.0), arg.detach()


def _setup(model, x, y, n_samples, batch_size, seed, params, buffers, loss, device) -> _Setup:
    return _Setup(model, x, y, params=params, buffers=buffers, batch_size=batch_size,
                  n_samples=n_samples, seed=seed, loss=loss, device=device)


def worst_case_sharpness(model: nn.Module, x: Tensor, y: Tensor, *, radius: float, kind: str = "filter",
                         steps: int = 10, restarts: int = 2, step_size: float | None = None,
                         eps: float = 1e-3, ignore: str | None = "biasbn", seed: int = 0,
                         n_samples: int | None = DEFAULT_N_SAMPLES, batch_size: int = 1024,
                         params: dict | None = None, buffers: dict | None = None,
                         loss="cross_entropy", return_delta: bool = False, device="auto"):
    """Worst-case sharpness: the largest rise L(theta + delta) - L(theta) (loss units, nats for
    cross-entropy) found by projected gradient ascent with delta in the ``kind`` set at
    ``radius`` (module docstring). x: (N, *input_shape), y: (N,).

    ``restarts`` ascents run together (vmap): the first from delta = 0, the others from seeded
    random points on the boundary. Each takes ``steps`` steps of ``step_size`` x radius
    (default 2.5 / steps): sign steps scaled by the box (``"adaptive"``) or per-filter
    normalized gradient steps (``"filter"``), each followed by the projection
    (:func:`project_perturbation`). The result is the largest loss seen at any iterate, >= 0.
    ``return_delta``: also return that perturbation, (D,) flat.
    """
    _check_radius(radius)
    s = _setup(model, x, y, n_samples, batch_size, seed, params, buffers, loss, device)
    rise, delta = _Ascent(s, kind, eps, ignore, steps, restarts, step_size, seed).rise(float(radius))
    return (rise, delta) if return_delta else rise


def _largest_below(rise: Callable[[float], float], start: float, threshold: float, lo_limit: float,
                   hi_limit: float, rtol: float, factor: float = 4.0) -> float:
    """Largest s in [lo_limit, hi_limit] with rise(s) <= threshold: bracketing from ``start`` by
    ``factor``, bisection on log s until hi / lo <= 1 + rtol, then the crossing of the chord
    between (log lo, rise(lo)) and (log hi, rise(hi)) (continuous in the rises, so nearby
    minima do not tie on the bisection grid; at or below the true crossing when the rise is
    convex in log s). A limit when the bracket leaves the range (censored)."""
    if not (0 < lo_limit < hi_limit and rtol > 0):
        raise CurvatureError(f"need 0 < lower limit < upper limit and rtol > 0, got {lo_limit}, {hi_limit}, {rtol}")
    seen = {}

    def below(v):
        seen[v] = rise(v)
        return seen[v] <= threshold

    s = min(max(start, lo_limit), hi_limit)
    if below(s):
        lo, hi = s, None
        while hi is None:
            if lo >= hi_limit:
                return hi_limit
            nxt = min(lo * factor, hi_limit)
            lo, hi = (nxt, None) if below(nxt) else (lo, nxt)
    else:
        lo, hi = None, s
        while lo is None:
            if hi <= lo_limit:
                return lo_limit
            nxt = max(hi / factor, lo_limit)
            lo, hi = (nxt, hi) if below(nxt) else (None, nxt)
    while hi / lo > 1 + rtol:
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if below(mid) else (lo, mid)
    f_lo, f_hi = seen[lo], seen[hi]
    w = min(max((threshold - f_lo) / (f_hi - f_lo), 0.0), 1.0)  # f_lo <= threshold < f_hi
    return math.exp((1 - w) * math.log(lo) + w * math.log(hi))


def _check_threshold(threshold):
    if not (math.isfinite(threshold) and threshold > 0):
        raise CurvatureError(f"threshold must be a finite number > 0, got {threshold!r}")


def worst_case_alpha(model: nn.Module, x: Tensor, y: Tensor, *, kind: str = "filter", threshold: float = 0.1,
                     steps: int = 10, restarts: int = 2, step_size: float | None = None, eps: float = 1e-3,
                     ignore: str | None = "biasbn", seed: int = 0, rtol: float = 0.05,
                     alpha_start: float = 0.05, alpha_min: float = 1e-5, alpha_max: float = 10.0,
                     n_samples: int | None = DEFAULT_N_SAMPLES, batch_size: int = 1024,
                     params: dict | None = None, buffers: dict | None = None,
                     loss="cross_entropy", device="auto") -> float:
    """Jiang's alpha': the largest radius whose worst-case loss rise (:func:`worst_case_sharpness`,
    same ascent settings and random starts at every radius) stays <= ``threshold`` (nats of the
    mean loss; Jiang bounds the perturbed 0-1 error by 0.1 instead).

    Radii are relative (``kind``: per-filter weight norm or |theta_i| + eps). Search:
    from ``alpha_start`` by factors of 4, then bisection on log alpha to a relative width
    ``rtol``, then the chord crossing inside the final bracket (its lower end's rise was found
    <= threshold, its upper end's above); clipped to [``alpha_min``, ``alpha_max``] (a limit
    when the threshold is not crossed in between).
    """
    _check_threshold(threshold)
    s = _setup(model, x, y, n_samples, batch_size, seed, params, buffers, loss, device)
    asc = _Ascent(s, kind, eps, ignore, steps, restarts, step_size, seed)
    return _largest_below(lambda a: asc.rise(a)[0], alpha_start, threshold, alpha_min, alpha_max, rtol)


class _Draws:
    """Fixed Gaussian draws and the MC mean loss rise at a perturbation scale sigma."""

    def __init__(self, s: _Setup, kind: str, n_draws: int, eps: float, seed: int, chunk_size):
        if kind not in ("isotropic", "magnitude"):
            raise CurvatureError(f"kind must be 'isotropic' or 'magnitude', got {kind!r}")
        if n_draws < 1 or eps < 0:
            raise CurvatureError(f"n_draws must be >= 1 and eps >= 0, got {n_draws}, {eps}")
        self.s, self.kind, self.eps, self.chunk_size = s, kind, eps, chunk_size
        self.z = torch.randn((n_draws, s.theta.numel()), generator=make_generator(seed),
                             dtype=torch.float64).to(s.theta)
        self.base = float(_points_loss(s, s.theta[None], None)[0])

    def rise(self, sigma: float) -> float:
        th = self.s.theta
        std = sigma if self.kind == "isotropic" else torch.sqrt(sigma ** 2 * th ** 2 + self.eps ** 2)
        losses = _points_loss(self.s, th[None] + self.z * std, self.chunk_size)
        return float(losses.mean()) - self.base


def _draws(model, x, y, kind, n_draws, eps, seed, n_samples, batch_size, params, buffers, loss,
           chunk_size, device) -> _Draws:
    s = _setup(model, x, y, n_samples, batch_size, seed, params, buffers, loss, device)
    return _Draws(s, kind, n_draws, eps, seed, chunk_size)


def pac_bayes_rise(model: nn.Module, x: Tensor, y: Tensor, sigma: float, *, kind: str = "isotropic",
                   n_draws: int = 16, eps: float = 1e-3, seed: int = 0,
                   n_samples: int | None = DEFAULT_N_SAMPLES, batch_size: int = 1024,
                   params: dict | None = None, buffers: dict | None = None, loss="cross_entropy",
                   chunk_size: int | None = None, device="auto") -> float:
    """Monte-Carlo expected loss rise (1/n) sum_k L(theta + u_k) - L(theta) at scale ``sigma``
    (loss units). u_k = sigma z_k (``"isotropic"``: u ~ N(0, sigma^2 I)) or
    u_k = z_k sqrt(sigma^2 theta^2 + eps^2) (``"magnitude"``: u_i ~ N(0, sigma^2 theta_i^2 + eps^2),
    Jiang's magnitude-aware form), with the fixed draws z (n_draws, D) of the module docstring;
    every trainable parameter is perturbed. The n_draws points go through one batched
    :func:`topoland.nets.evaluation.evaluate` (``chunk_size`` points per vmap call).
    """
    _check_radius(sigma, "sigma")
    return _draws(model, x, y, kind, n_draws, eps, seed, n_samples, batch_size, params, buffers,
                  loss, chunk_size, device).rise(float(sigma))


def pac_bayes_sigma(model: nn.Module, x: Tensor, y: Tensor, *, kind: str = "isotropic", threshold: float = 0.1,
                    n_draws: int = 16, eps: float = 1e-3, seed: int = 0, rtol: float = 0.01,
                    sigma_start: float | None = None, sigma_min: float = 1e-8, sigma_max: float = 10.0,
                    n_samples: int | None = DEFAULT_N_SAMPLES, batch_size: int = 1024,
                    params: dict | None = None, buffers: dict | None = None, loss="cross_entropy",
                    chunk_size: int | None = None, device="auto") -> float:
    """The largest sigma whose Monte-Carlo expected loss rise (:func:`pac_bayes_rise`, the same
    draws at every sigma) is <= ``threshold`` (nats of the mean loss; Jiang bounds the perturbed
    0-1 error by 0.1 instead).

    sigma is absolute (``"isotropic"``) or relative to |theta_i| (``"magnitude"``). Search: from
    ``sigma_start`` (default 0.1 x the RMS of theta, or 0.1 for "magnitude") by factors of 4,
    then bisection on log sigma until hi / lo <= 1 + ``rtol``, then the crossing of the chord
    between the bracket ends (rise(log sigma) interpolated linearly: rise <= threshold at the lower
    end, > threshold at the upper end <= (1 + rtol) x the lower), clipped to [``sigma_min``,
    ``sigma_max``] (a limit when the threshold is not crossed in between).
    """
    _check_threshold(threshold)
    dr = _draws(model, x, y, kind, n_draws, eps, seed, n_samples, batch_size, params, buffers,
                loss, chunk_size, device)
    if sigma_start is None:
        th = dr.s.theta.double()
        sigma_start = 0.1 * float(th.pow(2).mean().sqrt()) if kind == "isotropic" else 0.1
        sigma_start = sigma_start if sigma_start > 0 else 0.1
    return _largest_below(dr.rise, float(sigma_start), threshold, sigma_min, sigma_max, rtol)
