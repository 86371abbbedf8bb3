"""Analytic 2-D test potentials with known minima and saddles, for testing path methods.

Each potential is batched: ``V(thetas (B, 2)) -> (B,)`` and differentiable; dtype follows
the input (use float64 for tight tolerances). :func:`critical_point` refines an approximate
stationary point by Newton's method on the gradient.
"""
from __future__ import annotations

import torch
from torch import Tensor

from topoland.errors import TopolandError

__all__ = ["muller_brown", "MULLER_BROWN_MINIMA", "MULLER_BROWN_SADDLES", "curved_double_well",
           "ring_valley", "critical_point"]

# Müller & Brown (1979), Theor. Chim. Acta 53, 75.
_MB_A = (-200.0, -100.0, -170.0, 15.0)
_MB_a = (-1.0, -1.0, -6.5, 0.7)
_MB_b = (0.0, 0.0, 11.0, 0.6)
_MB_c = (-10.0, -10.0, -6.5, 0.7)
_MB_X = (1.0, 0.0, -0.5, -1.0)
_MB_Y = (0.0, 0.5, 1.5, 1.0)

#: Approximate literature positions (3 decimals) and energies; refine with
#: :func:`critical_point` for exact answers.
MULLER_BROWN_MINIMA = {"A": ((-0.558, 1.442), -146.70), "B": ((0.623, 0.028), -108.17),
                       "C": ((-0.050, 0.467), -80.77)}
#: Saddles: "AC" joins minima A and C, "CB" joins C and B.
MULLER_BROWN_SADDLES = {"AC": ((-0.822, 0.624), -40.66), "CB": ((0.212, 0.293), -72.25)}


def muller_brown(thetas: Tensor) -> Tensor:
    """Müller-Brown potential ``(B, 2) -> (B,)``: three minima, two saddles."""
    x, y = thetas[..., 0], thetas[..., 1]
    v = 0.0
    for A, a, b, c, x0, y0 in zip(_MB_A, _MB_a, _MB_b, _MB_c, _MB_X, _MB_Y):
        dx, dy = x - x0, y - y0
        v = v + A * torch.exp(a * dx * dx + b * dx * dy + c * dy * dy)
    return v


def curved_double_well(thetas: Tensor, *, a: float = 5.0, b: float = 1.0) -> Tensor:
    """``V = (x^2 - 1)^2 + a (y - b (x^2 - 1))^2``, ``(B, 2) -> (B,)``.

    Minima at (+-1, 0) with V = 0, joined by the curved valley y = b (x^2 - 1); the
    saddle is (0, -b) with V = 1 (Hessian diag(-4, 2a)). The straight line y = 0 between
    the minima peaks at (0, 0) with V = 1 + a b^2.
    """
    x, y = thetas[..., 0], thetas[..., 1]
    u = x * x - 1
    return u * u + a * (y - b * u) ** 2


def ring_valley(thetas: Tensor) -> Tensor:
    """``V = (x^2 + y^2 - 1)^2``, ``(B, 2) -> (B,)``: a flat circular valley of minima
    (V = 0 on the unit circle); any two points of it are joined by a zero-barrier arc,
    while the chord between them rises to ``(r^2 - 1)^2`` at its midpoint radius r."""
    x, y = thetas[..., 0], thetas[..., 1]
    return (x * x + y * y - 1) ** 2


def critical_point(fn, x0, *, tol: float = 1e-12, max_iter: int = 100) -> tuple[Tensor, Tensor]:
    """Newton's method on the gradient of ``fn`` (batched ``(1, D) -> (1,)``) from ``x0``.

    Returns the stationary point ``(D,)`` (float64) and the Hessian eigenvalues there
    (ascending; one negative eigenvalue = a first-order saddle). Raises
    :class:`TopolandError` when it does not converge to ``|grad| < tol``.
    """
    x = torch.as_tensor(x0, dtype=torch.float64).clone()

    def f1(z):
        return fn(z[None])[0]

    # torch.autograd.functional, not torch.func.hessian: the latter's first call imports
    # the compiler stack (seconds).
    for _ in range(max_iter):
        z = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(f1(z), z)
        h = torch.autograd.functional.hessian(f1, x)
        if float(g.norm()) < tol:
            return x, torch.linalg.eigvalsh(h)
        x = x - torch.linalg.solve(h, g)
        if not bool(torch.isfinite(x).all()):
            break
    raise TopolandError(f"critical_point: Newton did not converge from x0={list(map(float, torch.as_tensor(x0)))}")
