"""The Hessian spectrum from HVP operators (:mod:`topoland.landscape.hessian`).

Top eigenpairs (Lanczos with full reorthogonalization, or power iteration with deflation),
the trace (Hutchinson, Rademacher probes) and the eigenvalue density (stochastic Lanczos
quadrature, SLQ). Every function takes an operator ``hvp(v)``: v (D,) -> H v (D,).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

from topoland.landscape.hessian import CurvatureError, _check_v
from topoland.utils import make_generator

__all__ = ["top_eigenvalues", "hessian_trace", "slq_quadrature", "eigenvalue_density"]


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
