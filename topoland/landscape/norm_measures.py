"""Norm-based generalization measures of one minimum, its output margin and weight statistics.

The norm and margin measures are those of Jiang et al., "Fantastic generalization measures and
where to find them" (ICLR 2020, Appendix C), under their names and orientation (larger = larger
predicted generalization gap; the raw ``margin`` is the exception). Conventions:

* **Weight tensors** are the trainable parameters with >= 2 dims (linear weights, conv kernels);
  biases and BatchNorm scale/shift (<= 1 dim) are excluded from the Frobenius/spectral forms,
  as the ``ignore="biasbn"`` convention of :mod:`topoland.nets.directions`. BN is not folded
  into the layer before it. ``d`` is the number of weight tensors.
* **Spectral norms** are of each weight reshaped to ``(out, in * k * k)`` (a conv kernel
  ``(out, in, k, k)`` as Jiang does, not the exact operator norm of the convolution).
* ``l2``, ``dist_init`` and ``n_params`` cover **all** trainable parameters (the vector the
  flatness measures perturb).
* Norms are computed in float64 on the CPU; margins on ``device`` from float64 logits.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from topoland.landscape.hessian import CurvatureError, _eval_mode, _Setup, _unflat
from topoland.nets import params as _params

__all__ = ["spectral_norm", "path_norm", "norm_based_measures", "output_margins", "margin_quantile",
           "weight_statistics"]


def _named_params(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.detach().cpu().double() for n, p in model.named_parameters() if p.requires_grad}


def _init_dict(model: nn.Module, init_params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    names = _params.param_names(model)
    missing = [n for n in names if n not in init_params]
    if missing:
        raise CurvatureError(f"init_params is missing the trainable parameter {missing[0]!r}")
    out = {}
    for n, p in model.named_parameters():
        if n in names:
            t = init_params[n].detach().cpu().double()
            if t.shape != p.shape:
                raise CurvatureError(f"init_params[{n!r}] has shape {tuple(t.shape)}, the model's "
                                     f"is {tuple(p.shape)}")
            out[n] = t
    return out


def spectral_norm(w: Tensor) -> float:
    """Largest singular value of ``w`` reshaped to ``(w.shape[0], -1)`` (float64)."""
    if w.dim() < 2:
        raise CurvatureError(f"spectral_norm needs a tensor with >= 2 dims, got shape {tuple(w.shape)}")
    return float(torch.linalg.matrix_norm(w.detach().cpu().double().reshape(w.shape[0], -1), ord=2))


def path_norm(model: nn.Module, input_shape) -> float:
    """Jiang's path norm: sum_i f_{theta^2}(1)[i], the outputs of the network whose trainable
    parameters are all squared, on one all-ones input of per-sample shape ``input_shape``.

    Biases are squared too (the paths from a constant unit), so for a bias-free ReLU MLP this is
    the sum over input-output paths of the product of squared weights. BatchNorm runs in eval
    mode with its scale/shift squared and its running statistics as they are (the reference
    implementation's choice): with BN the value is no longer a sum over paths. float64.
    """
    sq = {n: p ** 2 for n, p in _named_params(model).items()}
    bufs = {n: (b.detach().cpu().double() if b.is_floating_point() else b.detach().cpu())
            for n, b in model.named_buffers()}
    ones = torch.ones((1, *tuple(int(s) for s in input_shape)), dtype=torch.float64)
    with torch.no_grad(), _eval_mode(model):
        out = functional_call(model, (sq, bufs), (ones,))
    return float(out.sum())


def norm_based_measures(model: nn.Module, init_params: Mapping[str, Tensor] | None = None, *,
                        input_shape=None, margin: float | None = None) -> dict[str, float]:
    """Jiang's norm-based measures of the model's weights (floats; see the module conventions).

    Always: ``n_params`` (number of trainable scalars), ``l2`` (||theta||_2), ``param_norm``
    (sum_i ||W_i||_F^2), ``log_prod_of_fro`` (log prod_i ||W_i||_F^2), ``log_sum_of_fro``
    (log of d (prod_i ||W_i||_F^2)^(1/d)), ``log_prod_of_spec`` / ``log_sum_of_spec`` (the same
    with ||W_i||_2^2), ``fro_over_spec`` (sum_i ||W_i||_F^2 / ||W_i||_2^2). With ``input_shape``
    (per-sample shape): ``path_norm`` (:func:`path_norm`). With ``init_params`` ({name: tensor}
    of every trainable parameter at initialization) only: ``dist_init`` (||theta - theta_0||_2),
    ``fro_dist`` (sum_i ||W_i - W_i^0||_F^2) and ``dist_spec_init`` (sum_i ||W_i - W_i^0||_2^2);
    without it these keys are absent.

    With ``margin`` (gamma, e.g. :func:`margin_quantile`, logit units) the margin-normalized
    forms are added: ``inverse_margin`` (1/gamma^2), ``log_prod_of_fro_over_margin`` and
    ``log_prod_of_spec_over_margin`` (log of prod_i ||W_i||^2 / gamma^2),
    ``log_sum_of_fro_over_margin`` / ``log_sum_of_spec_over_margin`` (log of
    d (prod_i ||W_i||^2 / gamma^2)^(1/d)), ``log_spec_orig_main`` (log_prod_of_spec_over_margin +
    log fro_over_spec), ``path_norm_over_margin`` (with ``input_shape``) and, with
    ``init_params``, ``log_spec_init_main`` (log_prod_of_spec_over_margin +
    log sum_i ||W_i - W_i^0||_F^2 / ||W_i||_2^2). They are NaN when gamma <= 0 (undefined).
    """
    named = _named_params(model)
    if not named:
        raise CurvatureError("model has no trainable parameters")
    weights = {n: p for n, p in named.items() if p.dim() >= 2}
    if not weights:
        raise CurvatureError("model has no weight tensor (no trainable parameter with >= 2 dims)")
    d = len(weights)
    fro2 = np.array([float((w ** 2).sum()) for w in weights.values()])
    spec2 = np.array([spectral_norm(w) ** 2 for w in weights.values()])
    flat = torch.cat([p.reshape(-1) for p in named.values()])
    out = {"n_params": float(flat.numel()), "l2": float(flat.norm()), "param_norm": float(fro2.sum()),
           "log_prod_of_fro": float(np.log(fro2).sum()), "log_prod_of_spec": float(np.log(spec2).sum()),
           "fro_over_spec": float((fro2 / spec2).sum())}
    out["log_sum_of_fro"] = math.log(d) + out["log_prod_of_fro"] / d
    out["log_sum_of_spec"] = math.log(d) + out["log_prod_of_spec"] / d
    if input_shape is not None:
        out["path_norm"] = path_norm(model, input_shape)
    if init_params is not None:
        init = _init_dict(model, init_params)
        diff = {n: named[n] - init[n] for n in named}
        out["dist_init"] = float(torch.cat([t.reshape(-1) for t in diff.values()]).norm())
        out["fro_dist"] = float(sum(float((diff[n] ** 2).sum()) for n in weights))
        out["dist_spec_init"] = float(sum(spectral_norm(diff[n]) ** 2 for n in weights))
        dist_over_spec = float(sum(float((diff[n] ** 2).sum()) / s2 for n, s2 in zip(weights, spec2)))
    if margin is not None:
        g = float(margin)
        nan = float("nan")
        log_g2 = 2 * math.log(g) if g > 0 else nan
        out["inverse_margin"] = 1 / g ** 2 if g > 0 else nan
        for kind in ("fro", "spec"):
            out[f"log_prod_of_{kind}_over_margin"] = out[f"log_prod_of_{kind}"] - log_g2
            out[f"log_sum_of_{kind}_over_margin"] = math.log(d) + out[f"log_prod_of_{kind}_over_margin"] / d
        out["log_spec_orig_main"] = out["log_prod_of_spec_over_margin"] + math.log(out["fro_over_spec"])
        if init_params is not None:
            out["log_spec_init_main"] = (out["log_prod_of_spec_over_margin"] + math.log(dist_over_spec)
                                         if dist_over_spec > 0 else float("-inf"))
        if input_shape is not None:
            out["path_norm_over_margin"] = out["path_norm"] / g ** 2 if g > 0 else nan
    return out


def output_margins(model: nn.Module, x: Tensor, y: Tensor, *, n_samples: int | None = None, seed: int = 0,
                   batch_size: int = 1024, params: dict | None = None, buffers: dict | None = None,
                   device="auto") -> Tensor:
    """Output margins f_y(x) - max_{j != y} f_j(x) of the logits, per sample: (N,) float64.

    x: (N, *input_shape); y: (N,) int labels; BN in eval mode. ``n_samples``: a seeded subset
    (:func:`topoland.data.seeded_subset`, ``seed``) instead of all N (None: all).
    """
    s = _Setup(model, x, y, params=params, buffers=buffers, batch_size=batch_size,
               n_samples=n_samples, seed=seed, device=device)
    p = _unflat(s.theta, s.names, s.shapes)
    parts = []
    with torch.no_grad(), _eval_mode(model):
        for a, b in s.spans:
            logits = functional_call(model, (p, s.buffers), (s.x[a:b],)).double()
            yb = s.y[a:b].long()
            if logits.dim() != 2 or logits.shape[1] < 2:
                raise CurvatureError(f"margins need (N, C >= 2) logits, got {tuple(logits.shape)}")
            true = logits.gather(1, yb[:, None])[:, 0]
            other = logits.scatter(1, yb[:, None], float("-inf")).max(dim=1).values
            parts.append(true - other)
    return torch.cat(parts).cpu()


def margin_quantile(model: nn.Module, x: Tensor, y: Tensor, q: float = 0.1, **kw) -> float:
    """The ``q``-quantile (linear interpolation, as ``numpy.quantile``) over samples of the output
    margin (:func:`output_margins`; keywords as there), in logit units. Jiang's ``inverse_margin``
    is 1 / this^2 (q = 0.1); it is negative when more than a fraction q is misclassified."""
    if not 0 <= q <= 1:
        raise CurvatureError(f"q must be in [0, 1], got {q}")
    return float(np.quantile(output_margins(model, x, y, **kw).numpy(), q))


def _stats(v: np.ndarray, prefix: str) -> dict[str, float]:
    out = {f"{prefix}.mean": float(v.mean()), f"{prefix}.var": float(v.var())}
    for q, val in zip((0, 25, 50, 75, 100), np.quantile(v, [0, 0.25, 0.5, 0.75, 1])):
        out[f"{prefix}.q{q}"] = float(val)
    return out


def weight_statistics(model: nn.Module) -> dict[str, float]:
    """Mean, variance (population, ddof 0) and the 0/25/50/75/100 % quantiles (linear
    interpolation) of the weights (Unterthiner et al. 2020), float64, keys ``"<block>.<stat>"``
    with stats ``mean``, ``var``, ``q0``, ``q25``, ``q50``, ``q75``, ``q100``.

    Blocks: every trainable parameter tensor by name (:func:`topoland.nets.params.param_names`);
    and, so that models of different architectures share columns, ``all_weights`` (every weight
    tensor of >= 2 dims pooled), ``all_biases`` (the 1-dim tensors pooled; absent when none),
    ``first_layer`` and ``last_layer`` (the first and last weight tensors).
    """
    params = _named_params(model)
    out = {}
    for n, p in params.items():
        out |= _stats(p.reshape(-1).numpy(), n)
    weights = [p.reshape(-1).numpy() for p in params.values() if p.dim() >= 2]
    biases = [p.reshape(-1).numpy() for p in params.values() if p.dim() < 2]
    if weights:
        out |= _stats(np.concatenate(weights), "all_weights") | _stats(weights[0], "first_layer") \
            | _stats(weights[-1], "last_layer")
    if biases:
        out |= _stats(np.concatenate(biases), "all_biases")
    return out
