"""Flatness of the loss around a minimum, and the ``curvature`` feature group.

Flatness: filter-normalized sharpness (largest loss rise within a radius along random
filter-normalized directions) and the basin "volume" (distance at which the loss first
exceeds a level along each direction, summarized as a log-volume). Losses follow the
conventions of :mod:`topoland.landscape.hessian`: the mean of ``loss=`` (a name of
:data:`topoland.nets.losses.LOSSES`, default ``"cross_entropy"`` in nats, or a per-sample callable
``(output, target) -> (N,)``), in that loss's units; eval mode; a seeded subset of ``n_samples``;
``x`` with ``y``, or any data form with ``y=None`` (its train split). :func:`curvature_features`
adds the spectrum of :mod:`topoland.landscape.spectrum`.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from topoland import checks
from topoland.declare import Param, declare
from topoland.nets import directions as _directions
from topoland.nets import evaluation as _evaluation
from topoland.nets import params as _params
from topoland.landscape.hessian import (DEFAULT_N_SAMPLES, CurvatureError, _check_v, _data, _eval_mode,
                                        _flat_params, _Setup, _unflat, hvp_fn)
from topoland.landscape.spectrum import hessian_trace, top_eigenvalues
from topoland.utils import resolve_device

__all__ = [
    "random_directions", "loss_along_directions", "sharpness_profile", "sharpness",
    "basin_volume", "log_ball_volume", "curvature_features",
]


# --------------------------------------------------------------------------------------
# Directions and batched loss evaluation
# --------------------------------------------------------------------------------------


def random_directions(model: nn.Module, n: int, seed: int = 0, *, norm: str | None = "filter",
                      ignore: str | None = "biasbn", params: dict | None = None, device="auto") -> Tensor:
    """``n`` random normalized directions at ``params`` as flat rows: (n, D), trainable
    parameters in model order.

    Direction i is :func:`topoland.nets.directions.random_direction` with the seed
    ``numpy.random.SeedSequence(seed).generate_state(n)[i] >> 1`` (so the first directions do
    not depend on ``n``), normalized against ``params`` (default: the model's weights) by
    :func:`topoland.nets.directions.normalize_direction`: ``norm`` "filter" (Li et al. 2018: each
    slice along dim 0 rescaled to the norm of the weights' slice), "layer", or None/"none";
    ``ignore="biasbn"`` zeroes tensors with <= 1 dim. BN running statistics never move.
    """
    norm = None if norm == "none" else norm
    if n < 1:
        raise CurvatureError(f"n_directions must be positive, got {n}")
    theta, names, shapes = _flat_params(model, params, resolve_device(device))
    weights = {k: v.cpu() for k, v in _unflat(theta, names, shapes).items()}
    seeds = np.random.SeedSequence(seed).generate_state(n, dtype=np.uint64)
    rows = []
    for sd in seeds:
        raw = _directions.random_direction(model, int(sd) >> 1, norm=None, ignore=None)
        raw = {k: raw[k].detach().cpu().to(weights[k].dtype) for k in names}
        d = _directions.normalize_direction(raw, weights, norm=norm, ignore=ignore)
        rows.append(torch.cat([d[k].reshape(-1) for k in names]))
    return torch.stack(rows).to(theta.device)


def _points_loss(s: _Setup, points: Tensor, chunk_size: int | None) -> Tensor:
    """Mean loss at each flat parameter point (P, D) -> (P,) float64, batched through
    :func:`topoland.nets.evaluation.evaluate` (functional_call + vmap, BN in eval mode)."""
    pts = _params.unflatten(points, s.model, s.names)
    if s.buffers:
        P = points.shape[0]
        pts.update({k: b.unsqueeze(0).expand(P, *b.shape) for k, b in s.buffers.items()})
    out = _evaluation.evaluate(s.model, pts, s.x, s.y, loss=(s.loss_name, s.loss_fn), metrics=("loss",),
                               batch_size=s.batch_size, chunk_size=chunk_size, bn="eval",
                               device=s.device)["loss"]
    return torch.as_tensor(out, dtype=torch.float64)


def _points_loss_loop(s: _Setup, points: Tensor) -> Tensor:
    """Plain-loop reference of :func:`_points_loss`."""
    out = torch.zeros(points.shape[0], dtype=torch.float64)
    with torch.no_grad(), _eval_mode(s.model):
        for i, p in enumerate(points):
            out[i] = sum(s.loss(p, s.x[a:b], s.y[a:b]).double() * ((b - a) / s.n) for a, b in s.spans)
    return out


def loss_along_directions(model: nn.Module, x, y: Tensor | None = None, *, directions: Tensor, alphas,
                          loss="cross_entropy", batch_size: int = 512,
                          n_samples: int | None = DEFAULT_N_SAMPLES, seed: int = 0,
                          params: dict | None = None, buffers: dict | None = None,
                          chunk_size: int | None = None, device="auto") -> np.ndarray:
    """Mean loss (loss units) at theta + alpha d for every direction d (n, D) and alpha (A,):
    (n, A) float64. ``y=None``: ``x`` is a data form (its train split).

    All n*A points go through :func:`topoland.nets.evaluation.evaluate` (vmap over ``chunk_size`` points
    per call; None: sized from its memory estimate); same subset, batches and eval-mode
    convention as :func:`hvp_fn`.
    """
    s = _Setup(model, x, y, params=params, buffers=buffers, batch_size=batch_size,
               n_samples=n_samples, seed=seed, loss=loss, device=device, what="loss_along_directions data")
    directions = torch.as_tensor(directions).to(s.theta)
    _check_v(directions, s.theta.numel(), "directions")
    if directions.dim() == 1:
        directions = directions[None]
    a = torch.as_tensor(np.asarray(alphas, dtype=np.float64)).to(s.theta)
    pts = s.theta[None, None] + a[None, :, None] * directions[:, None, :]
    return _points_loss(s, pts.reshape(-1, s.theta.numel()), chunk_size).cpu().numpy().reshape(
        directions.shape[0], a.numel())


# --------------------------------------------------------------------------------------
# Flatness
# --------------------------------------------------------------------------------------


def _directions_arg(model, directions, n_directions, seed, norm, ignore, params, device):
    if directions is None:
        if n_directions < 1:
            raise CurvatureError(f"n_directions must be positive, got {n_directions}")
        return random_directions(model, n_directions, seed, norm=norm, ignore=ignore, params=params,
                                 device=device)
    return torch.as_tensor(directions)


def sharpness_profile(model: nn.Module, x, y: Tensor | None = None, *, loss="cross_entropy", radius: float = 0.1,
                      n_directions: int = 10, n_alphas: int = 21, seed: int = 0, norm: str = "filter",
                      ignore: str | None = "biasbn", directions: Tensor | None = None,
                      batch_size: int = 512, n_samples: int | None = DEFAULT_N_SAMPLES,
                      params: dict | None = None, buffers: dict | None = None,
                      chunk_size: int | None = None, device="auto") -> dict:
    """Loss along random normalized directions within ``radius``: the data behind :func:`sharpness`.

    Alphas: ``n_alphas`` points evenly spaced on [-radius, radius] (alpha is in units of the
    direction, i.e. relative to each filter's weight norm for ``norm="filter"``). Directions:
    ``directions`` (n, D) if given, else :func:`random_directions` (``n_directions``, ``seed``).
    Losses in the units of ``loss``. Returns {"alphas": (A,), "losses": (n, A), "base_loss":
    float, "directions": (n, D), "radius": float, "sharpness": float (max loss - base_loss)}.
    """
    if radius <= 0 or n_alphas < 2:
        raise CurvatureError(f"radius must be > 0 and n_alphas >= 2, got {radius}, {n_alphas}")
    x, y = _data(x, y, "sharpness data")
    d = _directions_arg(model, directions, n_directions, seed, norm, ignore, params, device)
    alphas = np.linspace(-radius, radius, n_alphas)
    kw = dict(loss=loss, batch_size=batch_size, n_samples=n_samples, seed=seed, params=params,
              buffers=buffers, chunk_size=chunk_size, device=device)
    losses = loss_along_directions(model, x, y, directions=d, alphas=alphas, **kw)
    base = float(loss_along_directions(model, x, y, directions=d[:1], alphas=[0.0], **kw)[0, 0])
    return {"alphas": alphas, "losses": losses, "base_loss": base, "directions": d.detach().cpu(),
            "radius": float(radius), "sharpness": float(losses.max() - base)}


def sharpness(model: nn.Module, x, y: Tensor | None = None, *, radius: float = 0.1, n_directions: int = 10,
              seed: int = 0, norm: str = "filter", **kw) -> float:
    """Filter-normalized sharpness: max over directions d and |alpha| <= radius of
    L(theta + alpha d) - L(theta), in loss units (nats for cross-entropy).

    Directions are random and normalized by ``norm`` (see :func:`random_directions`);
    ``n_alphas`` (default 21) evenly spaced alphas on [-radius, radius] are evaluated along
    each. Other keywords (``loss=`` among them) as :func:`sharpness_profile`.
    """
    return sharpness_profile(model, x, y, radius=radius, n_directions=n_directions, seed=seed,
                             norm=norm, **kw)["sharpness"]


def log_ball_volume(dim: int) -> float:
    """log of the volume of the unit ball in ``dim`` dimensions: (dim/2) log pi - lgamma(dim/2 + 1)."""
    return 0.5 * dim * math.log(math.pi) - math.lgamma(0.5 * dim + 1)


def basin_volume(model: nn.Module, x, y: Tensor | None = None, *, loss="cross_entropy", threshold: float = 0.1, relative: bool = True,
                 n_directions: int = 20, seed: int = 0, max_radius: float = 10.0, tol: float = 1e-3,
                 n_grid: int = 20, norm: str = "filter", ignore: str | None = "biasbn",
                 directions: Tensor | None = None, batch_size: int = 512,
                 n_samples: int | None = DEFAULT_N_SAMPLES, params: dict | None = None,
                 buffers: dict | None = None, chunk_size: int | None = None, device="auto") -> dict:
    """Basin "volume": how far the loss stays below a level along random directions.

    Level (loss units): ``loss* + threshold`` (``relative=True``, loss* = loss at theta) or ``threshold``
    itself (``relative=False``; must exceed loss*). Along each direction d_i (normalized as in
    :func:`random_directions`, or given as ``directions`` (n, D)) the radius r_i is the first
    alpha > 0 with L(theta + alpha d_i) > level: the first of ``n_grid`` evenly spaced alphas on
    (0, max_radius] that exceeds the level brackets it, then bisection (all directions in one
    batched call per step) narrows it to ``tol`` (alpha units). A direction that never exceeds
    within ``max_radius`` gets r_i = max_radius and is counted as censored.

    Log-volume: the sublevel set is treated as star-shaped around theta with Euclidean radius
    rho_i = r_i ||d_i|| along d_i / ||d_i||; with n = the number of coordinates that the
    directions move (``dim``), vol = V_n E_u[rho(u)^n] is estimated by
    log V_n + logsumexp_i(n log rho_i) - log(#directions), in float64. It assumes the unit
    vectors d_i/||d_i|| are uniform on the sphere, which filter-normalized directions are not;
    the estimate is dominated by the largest radius when n is large, so ``mean_log_radius``
    (mean of log r_i, alpha units) and ``mean_log_distance`` (mean of log rho_i) are the
    robust summaries.

    Returns {"radii": (n,) alpha units, "distances": (n,) Euclidean, "censored": (n,) bool,
    "n_censored", "loss_star", "level", "dim", "log_volume", "mean_log_radius",
    "mean_log_distance"}.
    """
    if max_radius <= 0 or tol <= 0 or n_grid < 1:
        raise CurvatureError(f"max_radius, tol and n_grid must be positive, got {max_radius}, {tol}, {n_grid}")
    s = _Setup(model, x, y, params=params, buffers=buffers, batch_size=batch_size,
               n_samples=n_samples, seed=seed, loss=loss, device=device, what="basin_volume data")
    d = _directions_arg(model, directions, n_directions, seed, norm, ignore, params, device).to(s.theta)
    _check_v(d, s.theta.numel(), "directions")
    if d.dim() == 1:
        d = d[None]
    if bool((d.norm(dim=1) == 0).any()):
        raise CurvatureError("directions contains a zero direction")
    n = d.shape[0]

    def losses(alpha: Tensor) -> Tensor:  # alpha (n, G) -> (n, G) losses at theta + alpha_ij d_i
        pts = s.theta[None, None] + alpha.to(s.theta)[:, :, None] * d[:, None, :]
        return _points_loss(s, pts.reshape(-1, s.theta.numel()), chunk_size).cpu().view(alpha.shape)

    loss_star = float(_points_loss(s, s.theta[None], None)[0])
    level = loss_star + threshold if relative else float(threshold)
    if level <= loss_star:
        raise CurvatureError(f"threshold gives a level {level} not above the loss at theta {loss_star}")
    grid = torch.linspace(0, max_radius, n_grid + 1, dtype=torch.float64)[1:]
    g_loss = losses(grid[None].expand(n, n_grid))
    above = g_loss > level
    censored = ~above.any(dim=1)
    first = torch.where(censored, torch.full((n,), n_grid - 1), above.int().argmax(dim=1))
    hi = grid[first].clone()
    lo = torch.where(first > 0, grid[(first - 1).clamp(min=0)], torch.zeros(n, dtype=torch.float64))
    active = ~censored
    while bool(active.any()) and float((hi - lo)[active].max()) > tol:
        mid = 0.5 * (lo + hi)
        up = losses(mid[:, None])[:, 0] > level
        hi = torch.where(active & up, mid, hi)
        lo = torch.where(active & ~up, mid, lo)
    radii = torch.where(censored, torch.full((n,), float(max_radius), dtype=torch.float64), 0.5 * (lo + hi))
    radii = radii.numpy()
    dn = d.double().norm(dim=1).cpu().numpy()
    dist = radii * dn
    dim = int((d != 0).any(dim=0).sum())
    log_r = np.log(dist)
    log_volume = log_ball_volume(dim) + _logsumexp(dim * log_r) - math.log(n)
    return {"radii": radii, "distances": dist, "censored": censored.numpy(), "n_censored": int(censored.sum()),
            "loss_star": loss_star, "level": level, "dim": dim, "log_volume": float(log_volume),
            "mean_log_radius": float(np.log(radii).mean()), "mean_log_distance": float(log_r.mean())}


def _logsumexp(a: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64)
    m = a.max()
    return float(m + np.log(np.exp(a - m).sum()))


# --------------------------------------------------------------------------------------
# Feature group
# --------------------------------------------------------------------------------------


@declare({
    "top_k": Param((int,), 1, checks.pos, "top Hessian eigenvalues"),
    "n_probes": Param((int,), 20, checks.pos, "Hutchinson probes for the trace"),
    "n_samples": Param((int,), 2048, checks.pos, "training samples in the Hessian"),
    "sharpness_radius": Param((int, float), 0.5, checks.pos, "filter-normalized radius of sharpness"),
    "n_directions": Param((int,), 8, checks.pos, "random directions for sharpness and volume"),
    "volume_threshold": Param((int, float), 0.1, checks.pos, "loss rise that ends the basin (loss units; nats for cross-entropy)"),
})
def curvature_features(model: nn.Module, x, y: Tensor | None = None, *, loss="cross_entropy", top_k: int = 1, n_probes: int = 20,
                       n_samples: int | None = DEFAULT_N_SAMPLES, batch_size: int = 512, seed: int = 0,
                       lanczos_iters: int = 100, tol: float = 1e-4, probe_batch: int = 1,
                       sharpness_radius: float = 0.5, n_directions: int = 8, volume_threshold: float = 0.1,
                       max_radius: float = 10.0, params: dict | None = None,
                       buffers: dict | None = None, device="auto") -> dict[str, float]:
    """The ``curvature`` feature group of one minimum (all floats; keys without group prefix).

    top_eigenvalue (largest algebraic Hessian eigenvalue, Lanczos) and, for ``top_k`` > 1,
    eigenvalue_2 ... eigenvalue_k; trace (Hutchinson, ``n_probes`` Rademacher probes) and
    trace_stderr; top_trace_ratio (top_eigenvalue / trace); sharpness (filter-normalized,
    radius ``sharpness_radius``, ``n_directions`` directions); log_volume and mean_log_radius
    (:func:`basin_volume`, level loss* + ``volume_threshold`` in loss units, same number of
    directions); n_samples (samples used). ``loss``: a name of LOSSES or a per-sample callable
    (:func:`topoland.landscape.hessian.hvp_fn`); eigenvalues, trace and sharpness are in its units
    (nats for cross-entropy). ``x`` with ``y``, or a data form with ``y=None`` (train split).
    ``seed`` fixes the subset, the Lanczos start, the probes and the directions. Defaults match
    the ``[curvature]`` config section except ``n_samples``.
    """
    x, y = _data(x, y, "curvature_features data")
    common = dict(loss=loss, batch_size=batch_size, n_samples=n_samples, seed=seed, params=params,
                  buffers=buffers, device=device)
    op = hvp_fn(model, x, y, **common)
    vals, _ = top_eigenvalues(op, k=top_k, method="lanczos", iters=lanczos_iters, tol=tol, seed=seed)
    tr, tr_se = hessian_trace(op, n_probes=n_probes, seed=seed, probe_batch=probe_batch)
    top = float(vals[0])
    sh = sharpness(model, x, y, radius=sharpness_radius, n_directions=n_directions, **common)
    vol = basin_volume(model, x, y, threshold=volume_threshold, n_directions=n_directions,
                       max_radius=max_radius, **common)
    out = {"top_eigenvalue": top}
    out.update({f"eigenvalue_{i + 1}": float(v) for i, v in enumerate(vals[1:], start=1)})
    out.update({"trace": tr, "trace_stderr": tr_se,
                "top_trace_ratio": top / tr if tr != 0 else float("nan"), "sharpness": sh,
                "log_volume": vol["log_volume"], "mean_log_radius": vol["mean_log_radius"],
                "n_samples": float(op.n_samples)})
    return out
