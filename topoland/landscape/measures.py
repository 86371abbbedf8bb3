"""The ``measures`` feature group: generalization measures of one minimum from the training data
(Jiang et al., "Fantastic generalization measures and where to find them", ICLR 2020, App. C).

Norms and margins: :mod:`topoland.landscape.norm_measures`; worst-case sharpness and the
PAC-Bayes scale: :mod:`topoland.landscape.flatness_measures`. This module combines them into
Jiang's bound forms.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from topoland import checks
from topoland.declare import Param, declare
from topoland.landscape.flatness_measures import _Ascent, _Draws, _largest_below
from topoland.landscape.hessian import _Setup, _subset
from topoland.landscape.norm_measures import margin_quantile, norm_based_measures

__all__ = ["generalization_measures"]


def _mag_forms(prefix: str, scale: float, extra: float, gauss: float, l2sq: dict, theta: Tensor,
               eps: float, m: int) -> dict[str, float]:
    """Magnitude-aware forms: 1/4 sum_i log((eps^2 + (scale^2 + extra) sq / omega) /
    (eps^2 + scale^2 theta_i^2)) + log(m / gauss) + 10."""
    omega = theta.numel()
    den = torch.log(eps ** 2 + scale ** 2 * theta ** 2)
    return {f"{prefix}_{k}": 0.25 * float((math.log(eps ** 2 + (scale ** 2 + extra) * sq / omega) - den).sum())
            + math.log(m / gauss) + 10 for k, sq in l2sq.items()}


@declare({
    "n_samples": Param((int,), 2048, checks.pos, "training samples of the measures (seeded subset)"),
    "sharpness_radius": Param((int, float), 0.01, checks.pos,
                              "relative radius of the worst-case sharpness values"),
    "threshold": Param((int, float), 0.1, checks.pos, "loss rise (nats) that sets alpha' and sigma"),
    "n_draws": Param((int,), 16, checks.pos, "Gaussian draws of each PAC-Bayes expectation"),
    "steps": Param((int,), 10, checks.pos, "projected-ascent steps of each worst-case search"),
    "restarts": Param((int,), 2, checks.pos, "ascents per worst-case search (the first from theta)"),
    "margin_quantile_level": Param((float,), 0.1, checks.open_unit, "quantile of the training margins"),
})
def generalization_measures(model: nn.Module, x: Tensor, y: Tensor, *,
                            init_params: Mapping[str, Tensor] | None = None, n_samples: int | None = 2048,
                            seed: int = 0, sharpness_radius: float = 0.01, threshold: float = 0.1,
                            n_draws: int = 16, steps: int = 10, restarts: int = 2,
                            margin_quantile_level: float = 0.1, eps: float = 1e-3, alpha_rtol: float = 0.05,
                            sigma_rtol: float = 0.01, batch_size: int = 1024, chunk_size: int | None = None,
                            device="auto") -> dict[str, float]:
    """The ``measures`` feature group of one minimum: a flat dict of floats, keys without prefix.

    x: (N, *input_shape) training inputs, y: (N,) labels; a seeded subset of ``n_samples`` (m)
    rows (:func:`topoland.data.seeded_subset`, ``seed``; None: all) is used throughout; losses
    are mean cross-entropy in nats with BN in eval mode. ``init_params``: {name: tensor} of every
    trainable parameter at initialization; the keys marked *init* exist only when it is given.
    ``seed`` also fixes the random ascent starts and the Gaussian draws.

    Orientation: + = larger value predicts a larger generalization gap (Jiang's orientation),
    - = the opposite. W_i: weight tensors (>= 2 dims; biases and BN excluded), d of them;
    omega: number of trainable parameters; ||theta||: all of them.

    ====================================  ==  ===================================================
    key                                   or  definition
    ====================================  ==  ===================================================
    n_params                              +   omega
    l2 / dist_init (init)                 +   ||theta||_2 / ||theta - theta_0||_2
    param_norm                            +   sum_i ||W_i||_F^2
    fro_dist, dist_spec_init (init)       +   sum_i ||W_i - W_i^0||_F^2, sum_i ||W_i - W_i^0||_2^2
    log_prod_of_fro, log_sum_of_fro       +   log prod_i ||W_i||_F^2, log d (prod ...)^(1/d)
    log_prod_of_spec, log_sum_of_spec     +   the same with ||W_i||_2^2 (conv: (out, in k k))
    fro_over_spec                         +   sum_i ||W_i||_F^2 / ||W_i||_2^2
    path_norm                             +   sum of outputs, squared parameters, ones input
    margin                                -   gamma: q-quantile of f_y - max_{j!=y} f_j (logits)
    inverse_margin                        +   1 / gamma^2
    log_{prod,sum}_of_{fro,spec}          +   the log forms with prod_i ||W_i||^2 / gamma^2
    _over_margin
    log_spec_orig_main                    +   log_prod_of_spec_over_margin + log fro_over_spec
    log_spec_init_main (init)             +   ... + log sum_i ||W_i - W_i^0||_F^2 / ||W_i||_2^2
    path_norm_over_margin                 +   path_norm / gamma^2
    cross_entropy                         +   training loss L(theta) on the subset (nats)
    worst_case_sharpness                  +   max rise, filter ball of ``sharpness_radius``
    adaptive_sharpness                    +   max rise, box |delta_i| <= r (|theta_i| + eps)
    sharpness_flatness                    +   1 / alpha^2, alpha: largest filter radius whose
                                              worst-case rise <= ``threshold``
    sharpness_orig / _init (init)         +   ||theta (- theta_0)||^2 log(2 omega) / (4 alpha^2)
                                              + log(m / sigma_a) + 10,
                                              sigma_a = alpha / sqrt(2 log(2 omega))
    sharpness_mag_flatness                +   1 / alpha'^2, alpha' the same for the box
    sharpness_mag_orig / _init (init)     +   1/4 sum_i log[(eps^2 + (alpha'^2 + 4 log(2 omega))
                                              ||theta (- theta_0)||^2 / omega) /
                                              (eps^2 + alpha'^2 theta_i^2)] + log(m/sigma_a') + 10
    pacbayes_flatness                     +   1 / sigma^2, sigma: largest with E[L(theta + u)]
                                              - L(theta) <= ``threshold``, u ~ N(0, sigma^2 I)
    pacbayes_orig / _init (init)          +   ||theta (- theta_0)||^2 / (4 sigma^2)
                                              + log(m / sigma) + 10
    pacbayes_mag_flatness                 +   1 / sigma'^2, u_i ~ N(0, sigma'^2 theta_i^2 + eps^2)
    pacbayes_mag_orig / _init (init)      +   1/4 sum_i log[(eps^2 + (sigma'^2 + 1)
                                              ||theta (- theta_0)||^2 / omega) /
                                              (eps^2 + sigma'^2 theta_i^2)] + log(m/sigma') + 10
    n_samples                                 m (not a measure)
    ====================================  ==  ===================================================

    Margin-normalized keys are NaN when gamma <= 0. Departures from Jiang: thresholds are on the
    mean loss (nats), not the 0-1 error; the unnormalized worst case uses filter balls (Jiang: a
    box |u_i| <= alpha); the magnitude-aware denominators use the drawn perturbation's variance
    eps^2 + s^2 theta_i^2 (Jiang prints |theta_i - theta_i^0| there) and the log term uses the
    perturbation scale, like the plain forms; delta is dropped from log(2 omega). Searches:
    :func:`~topoland.landscape.flatness_measures.worst_case_alpha` (``steps``, ``restarts``,
    ``alpha_rtol``) and :func:`~topoland.landscape.flatness_measures.pac_bayes_sigma`
    (``n_draws``, ``sigma_rtol``); their results are clipped to their search ranges.
    """
    xs, ys = _subset(x, y, n_samples, seed)
    m = int(xs.shape[0])
    gamma = margin_quantile(model, xs, ys, margin_quantile_level, n_samples=None, batch_size=batch_size,
                            device=device)
    out = norm_based_measures(model, init_params, input_shape=tuple(x.shape[1:]), margin=gamma)
    out["margin"] = gamma
    s = _Setup(model, xs, ys, params=None, buffers=None, batch_size=batch_size, n_samples=None,
               seed=seed, device=device)
    theta = s.theta.detach().double().cpu()
    l2sq = {"orig": out["l2"] ** 2}
    if init_params is not None:
        l2sq["init"] = out["dist_init"] ** 2
    omega = theta.numel()
    log2w = math.log(2 * omega)

    for kind, prefix in (("filter", "sharpness"), ("adaptive", "sharpness_mag")):
        asc = _Ascent(s, kind, eps, "biasbn", steps, restarts, None, seed)
        seen = {}

        def rise(a, asc=asc, seen=seen):
            if a not in seen:
                seen[a] = asc.rise(a)[0]
            return seen[a]

        out["worst_case_sharpness" if kind == "filter" else "adaptive_sharpness"] = rise(float(sharpness_radius))
        alpha = _largest_below(rise, float(sharpness_radius), threshold, 1e-5, 10.0, alpha_rtol)
        out[f"{prefix}_flatness"] = 1 / alpha ** 2
        gauss = alpha / math.sqrt(2 * log2w)
        if kind == "filter":
            out.update({f"{prefix}_{k}": sq * log2w / (4 * alpha ** 2) + math.log(m / gauss) + 10
                        for k, sq in l2sq.items()})
        else:
            out.update(_mag_forms(prefix, alpha, 4 * log2w, gauss, l2sq, theta, eps, m))
    out["cross_entropy"] = asc.base

    for kind, prefix in (("isotropic", "pacbayes"), ("magnitude", "pacbayes_mag")):
        dr = _Draws(s, kind, n_draws, eps, seed, chunk_size)
        start = 0.1 * float(theta.pow(2).mean().sqrt()) if kind == "isotropic" else 0.1
        sigma = _largest_below(dr.rise, start if start > 0 else 0.1, threshold, 1e-8, 10.0, sigma_rtol)
        out[f"{prefix}_flatness"] = 1 / sigma ** 2
        if kind == "isotropic":
            out.update({f"{prefix}_{k}": sq / (4 * sigma ** 2) + math.log(m / sigma) + 10
                        for k, sq in l2sq.items()})
        else:
            out.update(_mag_forms(prefix, sigma, 1.0, sigma, l2sq, theta, eps, m))
    out["n_samples"] = float(m)
    return {k: float(v) for k, v in out.items()}
