"""Scalar summaries of persistence diagrams, and the landscape features built on them.

The headline features of a sampled region (:func:`landscape_features`) never close essential
classes at the largest value: that would make them multiples of the loss range. Instead the
range, the number of basins and the finite-bar activity are separate features.
"""
from __future__ import annotations

import numpy as np

from topoland.errors import ConfigError, DataError
from topoland.topology.persistence import _finite

__all__ = ["ESSENTIAL", "DEFAULT_ESSENTIAL", "AUTO_NOISE_MULTIPLE", "total_persistence",
           "betti_curve", "diagram_features", "noise_level", "resolve_min_persistence",
           "landscape_features", "extended_features"]

ESSENTIAL = ("drop", "cap")
#: essential classes are left out of total persistence by default (``"cap"`` closes them at
#: the largest value, which measures the loss range; it stays available)
DEFAULT_ESSENTIAL = "drop"
#: ``min_persistence="auto"``: bars shorter than this many noise standard deviations are noise
AUTO_NOISE_MULTIPLE = 20.0


def _resolve_essential(diagram, essential: str, cap) -> np.ndarray:
    d = np.asarray(diagram, dtype=np.float64).reshape(-1, 2)
    if essential not in ESSENTIAL:
        raise ConfigError(f"essential must be one of {ESSENTIAL}, got {essential!r}.")
    inf = ~np.isfinite(d[:, 1])
    if not inf.any():
        return d
    if essential == "drop":
        return d[~inf]
    if cap is None:
        raise ConfigError("essential='cap' needs cap= (the largest filtration value) when the "
                          "diagram has essential classes.")
    d = d.copy()
    d[inf, 1] = float(cap)
    return d


def total_persistence(diagram, p: float = 2, essential: str = DEFAULT_ESSENTIAL,
                      cap: float | None = None) -> float:
    """``sum |death - birth|^p`` over the points of one diagram (``(n, 2)``).

    Essential points (death = inf) are dropped (``essential="drop"``) or given death
    ``cap`` (``"cap"``; pass the largest filtration value, e.g. ``values.max()``).
    ``p = 2`` is the reference study's quantity. Units: value units to the power ``p``.
    """
    if p <= 0:
        raise ConfigError(f"total persistence p must be positive, got {p!r}.")
    d = _resolve_essential(diagram, essential, cap)
    return float(np.sum(np.abs(d[:, 1] - d[:, 0]) ** p))


def betti_curve(diagrams: dict[int, np.ndarray], thresholds) -> dict[int, np.ndarray]:
    """Betti numbers as functions of the value threshold ``t``: ``#{(b, d): b <= t < d}``.

    ``thresholds``: ``(T,)``; returns ``{dim: (T,) int64}``. For graph/flag diagrams this
    is the Betti number of the sublevel complex ``{value <= t}`` (zero-length bars aside).
    """
    t = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    out = {}
    for dim, dg in diagrams.items():
        d = np.asarray(dg, dtype=np.float64).reshape(-1, 2)
        out[dim] = ((d[:, 0][None, :] <= t[:, None]) & (t[:, None] < d[:, 1][None, :])
                    ).sum(axis=1).astype(np.int64)
    return out


def diagram_features(diagrams: dict[int, np.ndarray], *, p: float = 2,
                     essential: str = DEFAULT_ESSENTIAL, cap: float | None = None
                     ) -> dict[str, float]:
    """Scalar features of diagrams ``{dim: (n, 2)}``, per dimension ``d``:

    ``total_persistence_h{d}`` (:func:`total_persistence` with ``p``, ``essential``, ``cap``),
    ``n_bars_h{d}`` (all points), ``n_essential_h{d}`` (death = inf),
    ``max_persistence_h{d}`` and ``mean_persistence_h{d}`` (finite points, 0 if none),
    ``entropy_h{d}`` (persistent entropy of the finite bars, natural log, 0 if none);
    plus ``total_persistence`` summed over dimensions.
    """
    out: dict[str, float] = {}
    total = 0.0
    for dim in sorted(diagrams):
        d = np.asarray(diagrams[dim], dtype=np.float64).reshape(-1, 2)
        fin = _finite(d)
        pers = np.abs(fin[:, 1] - fin[:, 0])
        tp = total_persistence(d, p=p, essential=essential, cap=cap)
        total += tp
        out[f"total_persistence_h{dim}"] = tp
        out[f"n_bars_h{dim}"] = float(len(d))
        out[f"n_essential_h{dim}"] = float((~np.isfinite(d[:, 1])).sum())
        out[f"max_persistence_h{dim}"] = float(pers.max()) if len(pers) else 0.0
        out[f"mean_persistence_h{dim}"] = float(pers.mean()) if len(pers) else 0.0
        s = pers.sum()
        if len(pers) and s > 0:
            q = pers[pers > 0] / s
            out[f"entropy_h{dim}"] = float(-(q * np.log(q)).sum())
        else:
            out[f"entropy_h{dim}"] = 0.0
    out["total_persistence"] = total
    return out




def noise_level(values, trajectory, order) -> float:
    """Standard deviation of the noise on recorded values, from second differences along
    each trajectory: ``v[t+1] - 2 v[t] + v[t-1]`` has std ``sqrt(6) sigma`` for independent
    noise on a locally linear trend. Robust (median absolute deviation).

    ``values``, ``trajectory``, ``order``: ``(N,)`` each (the value, the trajectory of each
    sample, its position in time). Raises :class:`DataError` when no trajectory has 3 records.
    """
    v = np.asarray(values, dtype=np.float64)
    t = np.asarray(trajectory)
    o = np.asarray(order, dtype=np.float64)
    idx = np.lexsort((o, t))
    v, t = v[idx], t[idx]
    same = (t[2:] == t[1:-1]) & (t[1:-1] == t[:-2])
    d2 = (v[2:] - 2 * v[1:-1] + v[:-2])[same]
    if d2.size == 0:
        raise DataError("cannot estimate the noise level: no trajectory has 3 records; give "
                        "topology min_persistence as a number.")
    return float(1.4826 * np.median(np.abs(d2 - np.median(d2))) / np.sqrt(6.0))


def resolve_min_persistence(min_persistence, values, trajectory, order) -> tuple[float, float]:
    """The persistence below which a bar is noise: ``"auto"`` (``AUTO_NOISE_MULTIPLE`` x
    :func:`noise_level`) or a number >= 0. Returns ``(threshold, noise level or NaN)``."""
    if isinstance(min_persistence, str):
        if min_persistence != "auto":
            raise ConfigError("topology min_persistence must be 'auto' or a number >= 0, got "
                              f"{min_persistence!r}.")
        noise = noise_level(values, trajectory, order)
        return AUTO_NOISE_MULTIPLE * noise, noise
    m = float(min_persistence)
    if not np.isfinite(m) or m < 0:
        raise ConfigError(f"topology min_persistence must be 'auto' or a number >= 0, got {min_persistence!r}.")
    return m, float("nan")


def landscape_features(diagrams: dict[int, np.ndarray], values, *, p: float = 2,
                       min_persistence: float = 0.0) -> dict[str, float]:
    """What a loss-filtered complex says about the sampled region, each as its own feature.

    ``diagrams``: ``{0: (n, 2), 1: (m, 2)}`` (graph/flag/planar convention: essential classes
    have death inf); ``values``: the ``(N,)`` vertex values; bars of persistence below
    ``min_persistence`` are noise and are not counted (they still enter the activities).

    - ``loss_min``, ``loss_max``, ``loss_range`` (value units);
    - ``n_basins``: components (essential H0 classes) plus finite H0 bars at least
      ``min_persistence`` long: the basins of the sampled region;
    - ``n_loops``: finite H1 bars at least ``min_persistence`` long; ``n_unfilled_loops``:
      essential H1 classes (loops the complex never fills: holes in the sampling);
    - ``activity_h{d}``: ``sum (d - b)^p`` over finite bars, the topological activity
      (value units^p); ``activity_h{d}_norm``: divided by ``loss_range^p`` (unitless; NaN for
      a zero range);
    - ``max_depth_h{d}``: the longest finite bar (0 if none).
    """
    f = np.asarray(values, dtype=np.float64)
    lo, hi = float(f.min()), float(f.max())
    rng = hi - lo
    out = {"loss_min": lo, "loss_max": hi, "loss_range": rng}
    for dim in (0, 1):
        d = np.asarray(diagrams.get(dim, np.zeros((0, 2))), dtype=np.float64).reshape(-1, 2)
        fin = _finite(d)
        pers = np.abs(fin[:, 1] - fin[:, 0])
        n_ess = int((~np.isfinite(d[:, 1])).sum())
        n_long = int((pers >= min_persistence).sum())  # zero-length bars were dropped already
        if dim == 0:
            out["n_basins"] = float(n_ess + n_long)
        else:
            out["n_loops"] = float(n_long)
            out["n_unfilled_loops"] = float(n_ess)
        act = float(np.sum(pers ** p))
        out[f"activity_h{dim}"] = act
        out[f"activity_h{dim}_norm"] = act / rng ** p if rng > 0 else float("nan")
        out[f"max_depth_h{dim}"] = float(pers.max()) if len(pers) else 0.0
    return out


def extended_features(parts: dict[str, dict[int, np.ndarray]], *, p: float = 2) -> dict[str, float]:
    """Per sub-diagram of extended persistence (:func:`~topoland.topology.persistence.extended_diagrams`):
    ``ext_{part}_h{d}_n`` (points) and ``ext_{part}_h{d}_activity`` (``sum |d - b|^p``), with
    part one of ``ordinary``, ``relative``, ``extended_plus``, ``extended_minus``."""
    out = {}
    for part, per_dim in parts.items():
        name = part.replace("+", "_plus").replace("-", "_minus")
        for dim in (0, 1):
            d = np.asarray(per_dim.get(dim, np.zeros((0, 2))), dtype=np.float64).reshape(-1, 2)
            out[f"ext_{name}_h{dim}_n"] = float(len(d))
            out[f"ext_{name}_h{dim}_activity"] = float(np.sum(np.abs(d[:, 1] - d[:, 0]) ** p))
    return out
