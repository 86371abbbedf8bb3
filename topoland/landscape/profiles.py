"""Paths through parameter space, loss profiles along them, and their barriers.

:class:`Path` (a polyline of images), :func:`linear_path`, :func:`resample_polyline`;
:func:`path_profile` (the loss at dense points along a path or curve), :func:`barriers` (the
barrier measures of a profile), and the plane of a path (:func:`path_plane`,
:func:`project_to_plane`). Loss functions follow :mod:`topoland.landscape.path_losses`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from topoland.errors import ConfigError
from topoland.landscape.path_losses import PathError, _call_loss

__all__ = ["Path", "linear_path", "resample_polyline", "path_profile", "barriers", "path_plane",
           "project_to_plane"]


# --------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------

@dataclass
class Path:
    """A piecewise-linear path through ``images`` ``(K, D)`` with ``losses`` ``(K,)``.

    ``history``: one row per recorded optimisation step; ``info``: algorithm details
    (e.g. the climbing image index, AutoNEB insertions).
    """
    images: Tensor
    losses: Tensor | None = None
    history: pd.DataFrame = field(default_factory=pd.DataFrame)
    info: dict = field(default_factory=dict)

    @property
    def arc_positions(self) -> Tensor:
        """Normalised cumulative arc length of the images, ``(K,)`` from 0 to 1."""
        return _arc_positions(self.images)

    def point(self, t) -> Tensor:
        """Points at normalised arc length ``t`` (``(T,)`` in [0, 1]) -> ``(T, D)``."""
        return _polyline_at(self.images, torch.as_tensor(t, dtype=self.images.dtype))


def _arc_positions(images: Tensor) -> Tensor:
    seg = (images[1:] - images[:-1]).norm(dim=1)
    s = torch.cat([seg.new_zeros(1), seg.cumsum(0)])
    total = s[-1]
    if total <= 0:
        raise PathError("path has zero length: its images all coincide")
    return s / total


def _polyline_at(images: Tensor, t: Tensor) -> Tensor:
    s = _arc_positions(images)
    t = t.to(images.device).clamp(0, 1)
    j = torch.searchsorted(s, t, right=True).clamp(1, images.shape[0] - 1)
    s0, s1 = s[j - 1], s[j]
    w = torch.where(s1 > s0, (t - s0) / (s1 - s0), torch.zeros_like(t)).unsqueeze(1)
    return (1 - w) * images[j - 1] + w * images[j]


def resample_polyline(images: Tensor, n: int) -> Tensor:
    """``n`` points evenly spaced by arc length along the polyline ``images`` ``(K, D)``;
    the first and last points are the polyline's ends exactly."""
    if images.dim() != 2 or images.shape[0] < 2:
        raise PathError(f"images must be (K>=2, D), got {tuple(images.shape)}")
    out = _polyline_at(images, torch.linspace(0, 1, n, dtype=images.dtype))
    out[0], out[-1] = images[0], images[-1]
    return out


def linear_path(theta_a: Tensor, theta_b: Tensor, n_images: int = 2,
                loss_fn: Callable | None = None) -> Path:
    """The straight line from ``theta_a`` to ``theta_b`` (``(D,)`` each) as a :class:`Path`
    with ``n_images`` evenly spaced images (losses evaluated when ``loss_fn`` is given)."""
    _check_endpoints(theta_a, theta_b)
    w = torch.linspace(0, 1, n_images, dtype=theta_a.dtype, device=theta_a.device)[:, None]
    images = (1 - w) * theta_a + w * theta_b
    losses = None
    if loss_fn is not None:
        with torch.no_grad():
            losses = _call_loss(loss_fn, images)
    return Path(images=images, losses=losses, info={"kind": "linear"})


def _check_endpoints(theta_a: Tensor, theta_b: Tensor) -> None:
    if theta_a.dim() != 1 or theta_a.shape != theta_b.shape:
        raise PathError(f"theta_a and theta_b must be flat vectors of equal length, got "
                        f"{tuple(theta_a.shape)} and {tuple(theta_b.shape)}")
    if torch.equal(theta_a, theta_b):
        raise PathError("theta_a and theta_b are the same point: there is no path to find")


# --------------------------------------------------------------------------------------
# Profiles and barriers
# --------------------------------------------------------------------------------------

def _curve_arclength_params(curve: Callable, n: int, n_fine: int, dtype) -> Tensor:
    """Curve parameters ``(n,)`` at evenly spaced arc length (fine grid, linear inversion)."""
    tf = torch.linspace(0, 1, n_fine, dtype=dtype)
    seg = []
    prev = None
    for chunk in torch.split(tf, 256):
        pts = curve(chunk)
        if prev is not None:
            pts = torch.cat([prev, pts])
        seg.append((pts[1:] - pts[:-1]).norm(dim=1))
        prev = pts[-1:]
    seg = torch.cat(seg)
    s = torch.cat([seg.new_zeros(1), seg.cumsum(0)])
    if s[-1] <= 0:
        raise PathError("curve has zero length")
    s = (s / s[-1]).cpu().double().numpy()
    target = np.linspace(0, 1, n)
    return torch.as_tensor(np.interp(target, s, tf.double().numpy()), dtype=dtype)


def path_profile(loss_fn: Callable, path, *, n: int = 61, param: str = "arclength",
                 chunk_size: int | None = None, n_fine: int = 2001, batch=None) -> pd.DataFrame:
    """Loss (and any other metric) at ``n`` dense points along a path.

    loss_fn: batched ``(B, D) -> (B,)`` (column ``loss``) or ``(B, D) -> dict[name, (B,)]``
    (one column per key, e.g. :func:`network_metrics`). path: a :class:`Path` or ``(K, D)``
    tensor (polyline through the points), or an object with ``point(t)`` / a callable
    ``t (T,) -> (T, D)`` (e.g. a :class:`~topoland.landscape.curves.Curve`).
    param: ``"arclength"`` spaces the points evenly by arc length (default), ``"t"`` evenly
    in the curve parameter (Garipov et al.'s 61 points). Returns a DataFrame with ``t``
    (normalised arc length, 0..1), ``t_param`` (curve parameter; = ``t`` for polylines)
    and the metric columns. Points are evaluated in batched calls of ``chunk_size``.
    """
    if param not in ("arclength", "t"):
        raise ConfigError(f"param must be 'arclength' or 't', got {param!r}")
    if isinstance(path, Path):
        path = path.images
    if isinstance(path, Tensor):
        # a polyline is parametrised by its arc length: both spacings coincide
        pts = resample_polyline(path, n)
        t_param = t_arc = torch.linspace(0, 1, n, dtype=torch.float64)
    else:
        curve = path.point if hasattr(path, "point") else path
        dtype = getattr(path, "dtype", torch.get_default_dtype())
        t_param = (_curve_arclength_params(curve, n, n_fine, dtype) if param == "arclength"
                   else torch.linspace(0, 1, n, dtype=dtype))
        pts = curve(t_param)
        t_arc = (torch.linspace(0, 1, n, dtype=torch.float64) if param == "arclength"
                 else _arc_positions(pts.double()))
    cols: dict[str, list] = {}
    cs = n if chunk_size is None else chunk_size
    with torch.no_grad():
        for chunk in torch.split(pts, cs):
            out = loss_fn(chunk) if batch is None else loss_fn(chunk, batch)
            if isinstance(out, Tensor):
                out = {"loss": out}
            for k, v in out.items():
                v = torch.as_tensor(v)
                if v.shape != (chunk.shape[0],):
                    raise PathError(f"metric {k!r} has shape {tuple(v.shape)}, expected "
                                    f"({chunk.shape[0]},)")
                cols.setdefault(k, []).append(v.detach().double().cpu())
    df = pd.DataFrame({"t": t_arc.double().cpu().numpy(),
                       "t_param": torch.as_tensor(t_param).double().cpu().numpy()})
    for k, v in cols.items():
        df[k] = torch.cat(v).numpy()
    return df


def barriers(profile: pd.DataFrame, loss_a: float | None = None, loss_b: float | None = None,
             *, column: str = "loss") -> dict[str, float]:
    """Barrier of a path from its profile (columns ``t`` in [0, 1] and ``column``).

    Returns ``max`` (highest loss on the path), ``max_minus_linear`` (Entezari et al.:
    max over t of L(t) - ((1 - t) L_a + t L_b)), ``max_minus_mean`` (max - (L_a + L_b) / 2)
    and ``t_max`` (where the maximum lies). ``loss_a``/``loss_b`` default to the first and
    last rows of the profile. Units: those of the loss.
    """
    if column not in profile or "t" not in profile:
        raise PathError(f"profile needs columns 't' and {column!r}; has {list(profile.columns)}")
    t = profile["t"].to_numpy(float)
    v = profile[column].to_numpy(float)
    la = float(v[0]) if loss_a is None else float(loss_a)
    lb = float(v[-1]) if loss_b is None else float(loss_b)
    i = int(np.argmax(v))
    return {"max": float(v[i]),
            "max_minus_linear": float(np.max(v - ((1 - t) * la + t * lb))),
            "max_minus_mean": float(v[i] - 0.5 * (la + lb)),
            "t_max": float(t[i])}


def path_plane(theta_a: Tensor, theta_b: Tensor, through: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Orthonormal frame ``(origin, e1, e2)`` of the plane through ``theta_a``, ``theta_b``
    and ``through`` (all ``(D,)``): origin ``theta_a``, e1 towards ``theta_b``, e2 the
    Gram-Schmidt remainder of ``through - theta_a``."""
    u = theta_b - theta_a
    e1 = u / u.norm()
    v = through - theta_a
    v = v - (v @ e1) * e1
    if v.norm() <= 1e-12 * max(float(u.norm()), 1.0):
        raise PathError("the point 'through' lies on the line through the endpoints: "
                        "the plane is not defined")
    return theta_a, e1, v / v.norm()


def project_to_plane(points: Tensor, plane: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """Coordinates ``(K, 2)`` of ``points`` ``(K, D)`` in the frame of :func:`path_plane`
    (units: parameter-space distance)."""
    origin, e1, e2 = plane
    d = points - origin
    return torch.stack([d @ e1, d @ e2], dim=1)
