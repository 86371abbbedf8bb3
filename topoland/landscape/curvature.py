"""Curvature and flatness of the loss around a minimum.

* Hessian-vector products (HVPs) through ``torch.func`` (forward-over-reverse: ``jvp`` of
  ``grad``), for a network's mean loss over a dataset or for any scalar function of a flat
  parameter vector; several vectors at once through ``vmap``.
* Spectrum: top eigenpairs (Lanczos with full reorthogonalization, or power iteration with
  deflation), the trace (Hutchinson, Rademacher probes) and the eigenvalue density
  (stochastic Lanczos quadrature, SLQ).
* Flatness: filter-normalized sharpness (largest loss rise within a radius along random
  filter-normalized directions) and the basin "volume" (distance at which the loss first
  exceeds a level along each direction, summarized as a log-volume).

Conventions
-----------
* The loss is the **mean** over the samples used of ``loss_fn(logits, y) -> (N,)``, a
  per-sample loss (default: cross-entropy in nats; the convention of
  :func:`topoland.nets.params.evaluate` metrics). The Hessian is taken with respect to the trainable parameters flattened in module
  order (``model.named_parameters()``), shape ``(D,)``.
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

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vmap

from topoland.nets import directions as _directions
from topoland.nets import params as _params
from topoland.errors import TopolandError
from topoland.utils import make_generator, resolve_device

__all__ = [
    "CurvatureError",
    "function_hvp",
    "hvp_fn",
    "loss_fn_flat",
    "top_eigenvalues",
    "hessian_trace",
    "slq_quadrature",
    "eigenvalue_density",
    "random_directions",
    "loss_along_directions",
    "sharpness_profile",
    "sharpness",
    "basin_volume",
    "log_ball_volume",
    "curvature_features",
]

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
    idx = torch.randperm(x.shape[0], generator=make_generator(seed))[:n_samples]
    return x[idx], y[idx]


def _batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    if batch_size < 1:
        raise CurvatureError(f"batch_size must be positive, got {batch_size}")
    return [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


class _Setup:
    """Everything a functional loss over (a subset of) a dataset needs."""

    def __init__(self, model, x, y, *, params, buffers, batch_size, n_samples, seed, loss_fn, device):
        self.device = resolve_device(device)
        self.model = model
        theta, self.names, self.shapes = _flat_params(model, params, self.device)
        self.theta = theta
        self.buffers = _buffers(model, buffers, self.device)
        xs, ys = _subset(x, y, n_samples, seed)
        self.x = xs.to(self.device)
        if self.x.is_floating_point():
            self.x = self.x.to(theta.dtype)
        self.y = ys.to(self.device)
        self.n = self.x.shape[0]
        self.batch_size = batch_size
        self.spans = _batches(self.n, batch_size)
        self.custom_loss = loss_fn is not None
        self.loss_fn = _cross_entropy if loss_fn is None else loss_fn

    def loss(self, flat: Tensor, xb: Tensor, yb: Tensor) -> Tensor:
        out = functional_call(self.model, (_unflat(flat, self.names, self.shapes), self.buffers), (xb,))
        return self.loss_fn(out, yb).mean()


def _cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Per-sample cross-entropy (N,), nats."""
    return F.cross_entropy(logits, y, reduction="none")


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


def hvp_fn(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 512,
           n_samples: int | None = DEFAULT_N_SAMPLES, seed: int = 0, params: dict | None = None,
           buffers: dict | None = None, loss_fn: Callable | None = None, chunk_size: int | None = None,
           device="auto") -> Callable:
    """HVP operator of the mean loss of ``model`` over ``(x, y)`` at ``params``.

    x: (N, *input_shape); y: (N,) targets for ``loss_fn(logits, y) -> (N,)`` per-sample losses
    (default cross-entropy, nats); the loss is their mean. A seeded subset of ``n_samples`` rows is used (``None``: all),
    in batches of ``batch_size``; BN in eval mode (running statistics from ``buffers``).
    Returns ``hvp(v)``: v (D,) -> H v (D,), or (K, D) -> (K, D) (``vmap`` over the K vectors,
    ``chunk_size`` at a time). The operator has attributes ``dim`` (D), ``theta`` (D,) and
    ``n_samples`` (samples actually used). Forward-over-reverse: ``jvp`` of ``grad``.
    """
    s = _Setup(model, x, y, params=params, buffers=buffers, batch_size=batch_size,
               n_samples=n_samples, seed=seed, loss_fn=loss_fn, device=device)
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
    return hvp


def loss_fn_flat(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 512,
                 n_samples: int | None = DEFAULT_N_SAMPLES, seed: int = 0, params: dict | None = None,
                 buffers: dict | None = None, loss_fn: Callable | None = None, device="auto") -> tuple[Callable, Tensor]:
    """The mean loss as a function of the flat parameter vector: returns (f, theta (D,)).

    ``f(theta) -> scalar`` uses the same subset, batches and eval-mode convention as
    :func:`hvp_fn`, and is torch.func-compatible (e.g. ``torch.func.hessian(f)(theta)`` for tiny
    networks); call it while the model is in eval mode if it has BN or dropout.
    """
    s = _Setup(model, x, y, params=params, buffers=buffers, batch_size=batch_size,
               n_samples=n_samples, seed=seed, loss_fn=loss_fn, device=device)

    def f(flat: Tensor) -> Tensor:
        return sum(s.loss(flat, s.x[a:b], s.y[a:b]) * ((b - a) / s.n) for a, b in s.spans)

    return f, s.theta


# --------------------------------------------------------------------------------------
# Spectrum
# --------------------------------------------------------------------------------------


def _operator_meta(hvp, dim, device, dtype):
    theta = getattr(hvp, "theta", None)
    if device is None:
        device = theta.device if theta is not None else torch.device("cpu")
    if dtype is None:
        dtype = theta.dtype if theta is not None else torch.float64
    if dim is None:
        dim = getattr(hvp, "dim", None)
        if dim is None:
            raise CurvatureError("dim is required when hvp has no 'dim' attribute")
    return int(dim), torch.device(device), dtype


def _rademacher(shape, generator, device, dtype) -> Tensor:
    z = torch.randint(0, 2, shape, generator=generator, dtype=torch.int64)
    return (2 * z - 1).to(device=device, dtype=dtype)


def _lanczos(hvp, q0: Tensor, m: int, *, k_watch: int = 0, tol: float = 0.0, which: str = "LA",
             generator=None):
    """``m`` Lanczos steps from ``q0`` with full reorthogonalization.

    Returns (alpha (j,), beta (j-1,), Q (j, D)) with j <= m steps done; stops early when the
    ``k_watch`` wanted Ritz values all have residual bound ``|beta_j s_{j,i}| <= tol * |theta_i|``
    (``k_watch=0``: never). On breakdown (an invariant subspace), continues with a fresh random
    vector orthogonal to the basis when ``generator`` is given, else stops.
    """
    dim = q0.numel()
    m = min(m, dim)
    Q = torch.zeros(m, dim, dtype=q0.dtype, device=q0.device)
    alpha, beta = [], []
    q = q0 / q0.norm()
    for j in range(m):
        Q[j] = q
        w = hvp(q)
        a = torch.dot(q, w)
        alpha.append(a.item())
        # full reorthogonalization, twice (classical Gram-Schmidt is unstable once)
        for _ in range(2):
            w = w - Q[: j + 1].T @ (Q[: j + 1] @ w)
        b = w.norm().item()
        if j == m - 1:
            break
        if k_watch and j + 1 >= k_watch:
            evals, evecs = _tri_eigh(alpha, beta)
            order = _order(evals, which)[:k_watch]
            res = np.abs(b * evecs[-1, order])
            if np.all(res <= tol * np.maximum(np.abs(evals[order]), 1e-30)):
                break
        # with full reorthogonalization a noise-level residual is harmless (the next vector is
        # still orthogonal to the basis), so only an exact or near-exact breakdown is handled
        scale = max(max(abs(t) for t in alpha), max(beta, default=0.0))
        if b == 0.0 or b <= 1e-10 * scale:
            if generator is None:
                break
            w = torch.randn(dim, generator=generator, dtype=q0.dtype).to(q0.device)
            for _ in range(2):
                w = w - Q[: j + 1].T @ (Q[: j + 1] @ w)
            beta.append(0.0)
            q = w / w.norm()
        else:
            beta.append(b)
            q = w / b
    n = len(alpha)
    return np.array(alpha), np.array(beta[: n - 1]), Q[:n]


def _tri_eigh(alpha, beta) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of the symmetric tridiagonal matrix (diagonal alpha, off-diagonal beta)."""
    a = np.asarray(alpha, dtype=np.float64)
    # the LAPACK tridiagonal solver: np.linalg.eigh on a dense T is far slower on small,
    # busy CPUs (BLAS thread start-up dominates)
    return scipy.linalg.eigh_tridiagonal(a, np.asarray(beta[: len(a) - 1], dtype=np.float64))


def _order(evals: np.ndarray, which: str) -> np.ndarray:
    key = np.abs(evals) if which == "LM" else evals
    return np.argsort(-key, kind="stable")


def _power(hvp, dim, k, iters, tol, which, gen, device, dtype):
    """Power iteration with deflation by projection; returns (vals (k,), vecs (k, D))."""
    vals, vecs = [], []
    for _ in range(k):
        found = torch.stack(vecs) if vecs else None

        def proj(v):
            if found is None:
                return v
            for _ in range(2):
                v = v - found.T @ (found @ v)
            return v

        v0 = proj(torch.randn(dim, generator=gen, dtype=dtype).to(device))
        lam, v = _power_one(hvp, proj, v0, 0.0, iters, tol)
        if which == "LA" and lam < 0:
            # the dominant eigenvalue is negative: shifting by |lam| makes every eigenvalue of
            # the projected operator >= 0, so the dominant one is then the largest algebraic
            lam, v = _power_one(hvp, proj, v0, -lam, iters, tol)
        vals.append(lam)
        vecs.append(v)
    return torch.tensor(vals, dtype=torch.float64), torch.stack(vecs)


def _power_one(hvp, proj, v, shift, iters, tol):
    v = v / v.norm()
    lam = 0.0
    for _ in range(iters):
        w = proj(hvp(v)) + shift * v
        mu = torch.dot(v, w).item()
        res = (w - mu * v).norm().item()
        lam = mu - shift
        if res <= tol * max(abs(lam), 1e-30):
            break
        nw = w.norm()
        if nw == 0:
            break
        v = proj(w / nw)
        v = v / v.norm()
    return lam, v


def top_eigenvalues(hvp: Callable, dim: int | None = None, k: int = 1, method: str = "lanczos", *,
                    iters: int = 100, tol: float = 1e-6, seed: int = 0, which: str = "LA",
                    device=None, dtype=None) -> tuple[Tensor, Tensor]:
    """Top-``k`` Hessian eigenpairs from HVPs.

    hvp: v (D,) -> H v (D,) (e.g. from :func:`hvp_fn`; ``dim``/``device``/``dtype`` default to
    its attributes). ``which="LA"``: largest algebraic eigenvalues; ``"LM"``: largest magnitude.
    ``method="lanczos"``: up to ``iters`` Lanczos steps with full reorthogonalization, stopped
    when the k wanted Ritz residual bounds are <= ``tol * |lambda|``; ``"power"``: power
    iteration with deflation (iterates kept orthogonal to the found eigenvectors), up to
    ``iters`` HVPs per eigenpair, stopped when ``||Hv - lambda v|| <= tol * |lambda|``.
    Returns eigenvalues (k,) float64, descending by ``which``, and unit eigenvectors (k, D).
    """
    dim, device, dtype = _operator_meta(hvp, dim, device, dtype)
    if not 1 <= k <= dim:
        raise CurvatureError(f"k must be in [1, D={dim}], got {k}")
    if which not in ("LA", "LM"):
        raise CurvatureError(f"which must be 'LA' or 'LM', got {which!r}")
    if iters < 1:
        raise CurvatureError(f"iters must be positive, got {iters}")
    gen = make_generator(seed)
    if method == "power":
        return _power(hvp, dim, k, iters, tol, which, gen, device, dtype)
    if method != "lanczos":
        raise CurvatureError(f"method must be 'lanczos' or 'power', got {method!r}")
    q0 = torch.randn(dim, generator=gen, dtype=dtype).to(device)
    alpha, beta, Q = _lanczos(hvp, q0, max(iters, k), k_watch=k, tol=tol, which=which, generator=gen)
    evals, evecs = _tri_eigh(alpha, beta)
    order = _order(evals, which)[:k]
    S = torch.as_tensor(evecs[:, order], dtype=Q.dtype, device=Q.device)
    V = (Q.T @ S).T
    V = V / V.norm(dim=1, keepdim=True)
    return torch.tensor(evals[order], dtype=torch.float64), V


def hessian_trace(hvp: Callable, dim: int | None = None, n_probes: int = 100, seed: int = 0, *,
                  probe_batch: int = 1, device=None, dtype=None) -> tuple[float, float]:
    """Hutchinson estimate of tr(H) with Rademacher probes: (estimate, standard error).

    estimate = mean_i z_i^T H z_i over ``n_probes`` probes; stderr = sample std (ddof 1) /
    sqrt(n_probes) (nan for one probe). ``probe_batch`` probes go through one batched HVP call
    (the operator must then accept (K, D)); the probes, hence the estimate, do not depend on it.
    """
    dim, device, dtype = _operator_meta(hvp, dim, device, dtype)
    if n_probes < 1 or probe_batch < 1:
        raise CurvatureError(f"n_probes and probe_batch must be positive, got {n_probes}, {probe_batch}")
    Z = _rademacher((n_probes, dim), make_generator(seed), device, dtype)
    vals = []
    for i in range(0, n_probes, probe_batch):
        z = Z[i:i + probe_batch]
        hz = hvp(z[0])[None] if probe_batch == 1 else hvp(z)
        vals.append((z * hz).sum(1).double().cpu())
    vals = torch.cat(vals).numpy()
    stderr = float(vals.std(ddof=1) / math.sqrt(n_probes)) if n_probes > 1 else float("nan")
    return float(vals.mean()), stderr


def slq_quadrature(hvp: Callable, dim: int | None = None, *, n_runs: int = 10, n_iter: int = 80,
                   seed: int = 0, probes: Tensor | None = None, device=None,
                   dtype=None) -> tuple[np.ndarray, np.ndarray]:
    """Stochastic Lanczos quadrature nodes and weights: (nodes (R, m), weights (R, m)).

    Each run starts Lanczos (full reorthogonalization, ``m = min(n_iter, D)`` steps; fewer on
    breakdown, padded with weight 0) from a normalized Rademacher vector v; the nodes are the
    Ritz values and the weights the squared first components of the Ritz vectors (they sum
    to 1), so that sum_j w_j f(node_j) approximates v^T f(H) v / v^T v, exactly for
    polynomials of degree < 2m. Averaged over runs it estimates the spectral density
    (1/D) sum_i delta(t - lambda_i). ``probes`` (R, D): explicit start vectors instead of
    ``n_runs`` seeded Rademacher ones.
    """
    dim, device, dtype = _operator_meta(hvp, dim, device, dtype)
    if n_runs < 1 or n_iter < 1:
        raise CurvatureError(f"n_runs and n_iter must be positive, got {n_runs}, {n_iter}")
    if probes is None:
        probes = _rademacher((n_runs, dim), make_generator(seed), device, dtype)
    else:
        _check_v(probes, dim, "probes")
        probes = probes.reshape(-1, dim).to(device=device, dtype=dtype)
        n_runs = probes.shape[0]
    m = min(n_iter, dim)
    nodes = np.zeros((n_runs, m))
    weights = np.zeros((n_runs, m))
    for r in range(n_runs):
        v = probes[r]
        alpha, beta, _ = _lanczos(hvp, v, m)
        evals, evecs = _tri_eigh(alpha, beta)
        j = len(evals)
        nodes[r, :j] = evals
        nodes[r, j:] = evals[-1] if j else 0.0
        weights[r, :j] = evecs[0] ** 2
    return nodes, weights


def eigenvalue_density(hvp: Callable, dim: int | None = None, *, n_runs: int = 10, n_iter: int = 80,
                       seed: int = 0, grid: int | np.ndarray = 1000, sigma: float | None = None,
                       probes: Tensor | None = None, device=None, dtype=None) -> tuple[np.ndarray, np.ndarray]:
    """Hessian eigenvalue density by stochastic Lanczos quadrature: (grid (G,), density (G,)).

    density(t) = mean_runs sum_j w_j N(t; node_j, sigma^2) (see :func:`slq_quadrature`), a
    probability density in 1/eigenvalue units that integrates to ~1 over a grid covering the
    nodes. ``grid``: an int G (G points spanning the nodes +- 5 sigma) or explicit points.
    ``sigma``: Gaussian kernel width in eigenvalue units; default 1% of the node range
    (1e-3 if the range is 0).
    """
    nodes, weights = slq_quadrature(hvp, dim, n_runs=n_runs, n_iter=n_iter, seed=seed, probes=probes,
                                    device=device, dtype=dtype)
    lo, hi = float(nodes.min()), float(nodes.max())
    if sigma is None:
        sigma = 0.01 * (hi - lo) if hi > lo else 1e-3
    if sigma <= 0:
        raise CurvatureError(f"sigma must be positive, got {sigma}")
    if np.isscalar(grid):
        g = np.linspace(lo - 5 * sigma, hi + 5 * sigma, int(grid))
    else:
        g = np.asarray(grid, dtype=np.float64)
    keep = weights > 0
    mu, w = nodes[keep], weights[keep] / nodes.shape[0]
    density = np.empty(g.shape)
    step = max(1, 2**22 // max(mu.size, 1))  # bound the (grid chunk, nodes) temporary
    for i in range(0, g.size, step):
        z = (g[i:i + step, None] - mu[None]) / sigma
        density[i:i + step] = np.exp(-0.5 * z**2) @ w
    return g, density / (sigma * math.sqrt(2 * math.pi))


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
    :func:`topoland.nets.params.evaluate` (functional_call + vmap, BN in eval mode)."""
    pts = _params.unflatten(points, s.model, s.names)
    if s.buffers:
        P = points.shape[0]
        pts.update({k: b.unsqueeze(0).expand(P, *b.shape) for k, b in s.buffers.items()})
    metric = {"loss": s.loss_fn} if s.custom_loss else {"loss": "loss"}
    out = _params.evaluate(s.model, pts, s.x, s.y, metrics=metric, batch_size=s.batch_size,
                           chunk_size=chunk_size, bn="eval", device=s.device)["loss"]
    return torch.as_tensor(out, dtype=torch.float64)


def _points_loss_loop(s: _Setup, points: Tensor) -> Tensor:
    """Plain-loop reference of :func:`_points_loss`."""
    out = torch.zeros(points.shape[0], dtype=torch.float64)
    with torch.no_grad(), _eval_mode(s.model):
        for i, p in enumerate(points):
            out[i] = sum(s.loss(p, s.x[a:b], s.y[a:b]).double() * ((b - a) / s.n) for a, b in s.spans)
    return out


def loss_along_directions(model: nn.Module, x: Tensor, y: Tensor, directions: Tensor, alphas, *,
                          batch_size: int = 512, n_samples: int | None = DEFAULT_N_SAMPLES, seed: int = 0,
                          params: dict | None = None, buffers: dict | None = None,
                          loss_fn: Callable | None = None, chunk_size: int | None = None,
                          device="auto") -> np.ndarray:
    """Mean loss at theta + alpha d for every direction d (n, D) and alpha (A,): (n, A) float64.

    All n*A points go through :func:`topoland.nets.params.evaluate` (vmap over ``chunk_size`` points
    per call; None: sized from its memory estimate); same subset, batches and eval-mode
    convention as :func:`hvp_fn`.
    """
    s = _Setup(model, x, y, params=params, buffers=buffers, batch_size=batch_size,
               n_samples=n_samples, seed=seed, loss_fn=loss_fn, device=device)
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


def sharpness_profile(model: nn.Module, x: Tensor, y: Tensor, *, radius: float = 0.1,
                      n_directions: int = 10, n_alphas: int = 21, seed: int = 0, norm: str = "filter",
                      ignore: str | None = "biasbn", directions: Tensor | None = None,
                      batch_size: int = 512, n_samples: int | None = DEFAULT_N_SAMPLES,
                      params: dict | None = None, buffers: dict | None = None,
                      loss_fn: Callable | None = None, chunk_size: int | None = None, device="auto") -> dict:
    """Loss along random normalized directions within ``radius``: the data behind :func:`sharpness`.

    Alphas: ``n_alphas`` points evenly spaced on [-radius, radius] (alpha is in units of the
    direction, i.e. relative to each filter's weight norm for ``norm="filter"``). Directions:
    ``directions`` (n, D) if given, else :func:`random_directions` (``n_directions``, ``seed``).
    Returns {"alphas": (A,), "losses": (n, A), "base_loss": float, "directions": (n, D),
    "radius": float, "sharpness": float (max loss - base_loss)}.
    """
    if radius <= 0 or n_alphas < 2:
        raise CurvatureError(f"radius must be > 0 and n_alphas >= 2, got {radius}, {n_alphas}")
    d = _directions_arg(model, directions, n_directions, seed, norm, ignore, params, device)
    alphas = np.linspace(-radius, radius, n_alphas)
    kw = dict(batch_size=batch_size, n_samples=n_samples, seed=seed, params=params, buffers=buffers,
              loss_fn=loss_fn, chunk_size=chunk_size, device=device)
    losses = loss_along_directions(model, x, y, d, alphas, **kw)
    base = float(loss_along_directions(model, x, y, d[:1], [0.0], **kw)[0, 0])
    return {"alphas": alphas, "losses": losses, "base_loss": base, "directions": d.detach().cpu(),
            "radius": float(radius), "sharpness": float(losses.max() - base)}


def sharpness(model: nn.Module, x: Tensor, y: Tensor, *, radius: float = 0.1, n_directions: int = 10,
              seed: int = 0, norm: str = "filter", **kw) -> float:
    """Filter-normalized sharpness: max over directions d and |alpha| <= radius of
    L(theta + alpha d) - L(theta), in loss units (nats for cross-entropy).

    Directions are random and normalized by ``norm`` (see :func:`random_directions`);
    ``n_alphas`` (default 21) evenly spaced alphas on [-radius, radius] are evaluated along
    each. Other keywords as :func:`sharpness_profile`.
    """
    return sharpness_profile(model, x, y, radius=radius, n_directions=n_directions, seed=seed,
                             norm=norm, **kw)["sharpness"]


def log_ball_volume(dim: int) -> float:
    """log of the volume of the unit ball in ``dim`` dimensions: (dim/2) log pi - lgamma(dim/2 + 1)."""
    return 0.5 * dim * math.log(math.pi) - math.lgamma(0.5 * dim + 1)


def basin_volume(model: nn.Module, x: Tensor, y: Tensor, *, threshold: float = 0.1, relative: bool = True,
                 n_directions: int = 20, seed: int = 0, max_radius: float = 10.0, tol: float = 1e-3,
                 n_grid: int = 20, norm: str = "filter", ignore: str | None = "biasbn",
                 directions: Tensor | None = None, batch_size: int = 512,
                 n_samples: int | None = DEFAULT_N_SAMPLES, params: dict | None = None,
                 buffers: dict | None = None, loss_fn: Callable | None = None,
                 chunk_size: int | None = None, device="auto") -> dict:
    """Basin "volume": how far the loss stays below a level along random directions.

    Level: ``loss* + threshold`` (``relative=True``, loss* = loss at theta) or ``threshold``
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
               n_samples=n_samples, seed=seed, loss_fn=loss_fn, device=device)
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


def curvature_features(model: nn.Module, x: Tensor, y: Tensor, *, top_k: int = 1, n_probes: int = 20,
                       n_samples: int | None = DEFAULT_N_SAMPLES, batch_size: int = 512, seed: int = 0,
                       lanczos_iters: int = 100, tol: float = 1e-4, probe_batch: int = 1,
                       sharpness_radius: float = 0.5, n_directions: int = 8, volume_threshold: float = 0.1,
                       max_radius: float = 10.0, loss_fn: Callable | None = None, params: dict | None = None,
                       buffers: dict | None = None, device="auto") -> dict[str, float]:
    """The ``curvature`` feature group of one minimum (all floats; keys without group prefix).

    top_eigenvalue (largest algebraic Hessian eigenvalue, Lanczos) and, for ``top_k`` > 1,
    eigenvalue_2 ... eigenvalue_k; trace (Hutchinson, ``n_probes`` Rademacher probes) and
    trace_stderr; top_trace_ratio (top_eigenvalue / trace); sharpness (filter-normalized,
    radius ``sharpness_radius``, ``n_directions`` directions); log_volume and mean_log_radius
    (:func:`basin_volume`, level loss* + ``volume_threshold`` nats, same number of directions);
    n_samples (samples used). ``seed`` fixes the subset, the Lanczos start, the probes and the
    directions. Defaults match the ``[curvature]`` config section except ``n_samples``.
    """
    common = dict(batch_size=batch_size, n_samples=n_samples, seed=seed, params=params,
                  buffers=buffers, loss_fn=loss_fn, device=device)
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
