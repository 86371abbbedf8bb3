"""Loss surfaces around minima: 1-D lines and interpolations, 2-D planes, PCA trajectories.

Every surface is a set of parameter points ``theta = origin + sum_j c_j d_j`` (flat vectors
in :func:`topoland.nets.directions.direction_names` order) evaluated on the training data (and the
test data when given). Points are evaluated in chunks of ``chunk_points``.

Data: ``x, y`` tensors (inputs ``(N, ...)``, targets ``(N,)`` int64 class indices or float
``(N, ...)`` of the output's shape), or one data form as ``x`` with ``y`` omitted
(:mod:`topoland.splits`): a DataSplits or a mapping of splits gives the train split and the test
split (unless ``x_test`` is given); an ``(x, y)`` pair or a map-style Dataset is the train split.

Loss and metrics (:mod:`topoland.nets.losses`, :mod:`topoland.nets.metrics`): ``loss`` is a
name ("cross_entropy", "nll", "mse", "l1") or a per-sample callable ``(output, target) -> (N,)``,
recorded in ``Surface.meta["loss"]``; the metric "loss" is its mean over a split.
``metrics=None`` records ("loss", "accuracy") for class-index targets, ("loss",) for float
targets; accuracy/error on float targets raise naming the dtype. The loss and every metric are
checked once on a two-sample forward before any evaluation (a wrong shape raises naming it).

Evaluators (``evaluator=``):

- ``"batched"``: :func:`topoland.nets.evaluation.evaluate` (functional_call + vmap, P points per pass).
- ``"loop"``: :func:`topoland.nets.evaluation.evaluate_loop`, the plain reference.
- ``"linear-first"``: exact reformulation for models whose first layer (a Conv1d/Conv2d/Linear
  applied to the input and nothing else) is linear in its weights and bias jointly:
  ``layer(x; W0 + sum_j c_j D_j) = layer(x; W0) + sum_j c_j layer(x; D_j)``. The k + 1 first-layer
  outputs are computed once per data batch and shared by all points of a chunk. When the rest
  of the network is a plain chain (ReLU, Conv, MaxPool, Flatten, Linear, eval BatchNorm), on a
  GPU it runs for all P points of a chunk at once (one grouped convolution per conv layer, one
  bmm per linear layer, channels-last activations); on the CPU the convolutional part runs
  point by point as plain channels-last ops on cache-sized blocks of samples
  (``_Chain.run_points``), and the linear tail as one bmm. Otherwise the
  rest runs per point via ``torch.func.functional_call``.
- ``"auto"`` (default): ``"linear-first"`` when it applies (weights-only directions,
  ``bn="eval"``, a traceable model with such a first layer), else ``"batched"``. The choice
  is recorded in ``Surface.meta["evaluator"]``.

Grid convention: ``values[m][i, j]`` is at ``(xs[j], ys[i])`` (shape ``(ny, nx)``, as
``np.meshgrid(xs, ys)``); flat point index ``i * nx + j``. 1-D surfaces have ``ys=None`` and
values of shape ``(nx,)``. Metric keys are ``{split}_{short}`` with short ``loss`` (the mean
loss: nats for cross_entropy/nll, squared target units for mse), ``acc`` / ``err`` (fractions in
[0, 1]) or the user's metric name: ``train_loss``, ``train_acc``, ``test_loss``, ...
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor, nn

from topoland import checks
from topoland.declare import Param, declare
from topoland.nets import directions as _dirs
from topoland.nets import params as _params
from topoland.landscape.surface_engine import _evaluate_surface, _grid_axis
from topoland.landscape.surface_points import Surface, SurfaceError, _flat, _state

__all__ = [
    "interpolate", "line", "random_lines", "plane", "plane_through", "random_plane",
    "pca_directions", "trajectory_plane", "surface_features",
]


_COMMON_DOC = """
    x, y: training inputs (N, ...) and targets (N,) int64 class indices or (N, ...) float; or x
    one data form with y omitted (a DataSplits / mapping of splits: train and test; an (x, y)
    pair / Dataset: train). x_test, y_test: optional test split (tensors, or x_test a data form).
    loss: a name ("cross_entropy", "nll", "mse", "l1") or a per-sample callable (output, target)
    -> (N,); values "{split}_loss" are its mean. metrics: None (("loss", "accuracy") for class
    indices, ("loss",) for float targets), names ("loss", "accuracy", "error"), callables
    (output, target) -> (N,), (name, fn) pairs or {name: fn}; keys "{split}_{loss|acc|err|name}".
    evaluator: "auto" | "batched" | "loop" | "linear-first" (module docstring);
    chunk_points: points per evaluation chunk (and per HDF5 write); batch_size: samples per
    forward; bn: "eval" (the origin's running statistics) | "recompute" (per point, from x);
    device: "auto" | "cpu" | "cuda". store: HDF5 path for a resumable grid (resuming checks the
    loss too); on_chunk(done, total): called after every chunk (progress; raising interrupts,
    the store keeps the chunks already done)."""


def _common_doc(fn):
    """Append the keyword arguments every surface function shares to ``fn``'s docstring (a
    docstring built by ``+`` is an expression, not a docstring: ``__doc__`` would be None)."""
    fn.__doc__ = (fn.__doc__ or "") + _COMMON_DOC
    return fn


@_common_doc
def line(model: nn.Module, direction: Mapping[str, Tensor], x, y: Tensor | None = None, *,
         alphas=np.linspace(-1.0, 1.0, 41), x_test=None, y_test=None, loss="cross_entropy",
         metrics=None, evaluator="auto", chunk_points=16, batch_size=2048,
         bn="eval", device="auto", store=None, on_chunk=None) -> Surface:
    """1-D surface ``theta* + alpha * d`` for alphas (n,); values (n,)."""
    xs = _grid_axis(alphas, None, "alphas")
    return _evaluate_surface(model, [direction], xs, None, x, y, x_test=x_test, y_test=y_test,
                             loss=loss, metrics=metrics, evaluator=evaluator, chunk_points=chunk_points,
                             batch_size=batch_size, bn=bn, device=device, store=store,
                             on_chunk=on_chunk, meta={"kind": "line"})


def random_lines(model: nn.Module, x, y: Tensor | None = None, *, n_directions: int = 4, seed: int = 0,
                 alphas=np.linspace(-1.0, 1.0, 21), norm="filter", ignore="biasbn",
                 **kw) -> list[Surface]:
    """``n_directions`` 1-D surfaces along seeded random (filter-normalized) directions.

    Direction i uses the seed ``SeedSequence(seed).generate_state(n)[i]``. kw: as :func:`line`
    (except store)."""
    if n_directions < 1:
        raise SurfaceError(f"n_directions must be >= 1, got {n_directions}")
    seeds = np.random.SeedSequence(int(seed)).generate_state(n_directions)
    out = []
    for i, s in enumerate(seeds):
        d = _dirs.random_direction(model, int(s), norm=norm, ignore=ignore)
        srf = line(model, d, x, y, alphas=alphas, **kw)
        srf.meta.update(kind="random_line", seed=int(seed), direction_seed=int(s), index=i)
        out.append(srf)
    return out


@_common_doc
def interpolate(model_a: nn.Module, model_b: nn.Module, x, y: Tensor | None = None, *,
                alphas=np.linspace(-0.5, 1.5, 41), kind: str = "weights", x_test=None, y_test=None,
                loss="cross_entropy", metrics=None, evaluator="auto", chunk_points=16, batch_size=2048,
                bn="eval", device="auto", store=None, on_chunk=None) -> Surface:
    """1-D interpolation ``(1 - alpha) a + alpha b`` (Goodfellow et al.); values (n,).

    kind: "weights" (parameters; BN statistics stay model_a's) or "states" (floating buffers,
    i.e. BN running statistics, interpolated too). alpha = 0 is model_a, 1 is model_b.
    """
    if kind not in ("weights", "states"):
        raise SurfaceError(f"kind must be 'weights' or 'states', got {kind!r}")
    d = _dirs.between(model_a, model_b, kind=kind)
    xs = _grid_axis(alphas, None, "alphas")
    return _evaluate_surface(model_a, [d], xs, None, x, y, x_test=x_test, y_test=y_test,
                             loss=loss, metrics=metrics, evaluator=evaluator, chunk_points=chunk_points,
                             batch_size=batch_size, bn=bn, device=device, store=store,
                             on_chunk=on_chunk, meta={"kind": "interpolate", "interp_kind": kind})


@_common_doc
@declare({
    "grid": Param((int,), 21, checks.at_least(2), "points per axis"),
    "range": Param((list,), [-1.0, 1.0], checks.interval, "coordinate range of each axis", arg=tuple),
})
def plane(model: nn.Module, d1: Mapping[str, Tensor], d2: Mapping[str, Tensor], x,
          y: Tensor | None = None, *, grid=51, range=(-1.0, 1.0), x_test=None, y_test=None,
          loss="cross_entropy", metrics=None, evaluator="auto", chunk_points=32, batch_size=2048,
          bn="eval", device="auto", store=None, on_chunk=None, origin=None) -> Surface:
    """2-D surface ``theta* + a d1 + b d2``; values (ny, nx).

    grid: int (points per axis) or a pair (xs, ys) of coordinate arrays; range: (lo, hi) for
    an int grid. origin: optional dict of tensors replacing the model's own parameters as the
    centre."""
    if isinstance(grid, tuple) and len(grid) == 2 and not isinstance(grid[0], (int, np.integer)):
        xs, ys = _grid_axis(grid[0], None, "xs"), _grid_axis(grid[1], None, "ys")
    else:
        if isinstance(grid, tuple):
            raise SurfaceError("grid must be an int or a pair (xs, ys) of coordinate arrays")
        xs = ys = _grid_axis(grid, range, "grid")
    return _evaluate_surface(model, [d1, d2], xs, ys, x, y, x_test=x_test, y_test=y_test,
                             loss=loss, metrics=metrics, origin=origin, evaluator=evaluator,
                             chunk_points=chunk_points, batch_size=batch_size, bn=bn,
                             device=device, store=store, on_chunk=on_chunk,
                             meta={"kind": "plane"})


def random_plane(model: nn.Module, x, y: Tensor | None = None, *, seed: int = 0, norm="filter",
                 ignore="biasbn", exact: bool = False, **kw) -> Surface:
    """2-D surface on two seeded random (filter-normalized) directions (Li et al. 2018).

    Directions: :func:`topoland.nets.directions.orthogonal_pair` (exact=False: as drawn, nearly
    orthogonal). kw: as :func:`plane`."""
    d1, d2 = _dirs.orthogonal_pair(model, seed, exact=exact, norm=norm, ignore=ignore)
    srf = plane(model, d1, d2, x, y, **kw)
    srf.meta.update(kind="random_plane", seed=int(seed), norm=norm, ignore=ignore)
    return srf


def _unit_pair(u: Tensor, v: Tensor) -> tuple[Tensor, Tensor, float, float, float]:
    nu = float(u.norm())
    if nu == 0:
        raise SurfaceError("plane_through: model_a and model_b have equal parameters")
    e1 = u / nu
    v1 = float(v @ e1)
    w = v - v1 * e1
    nw = float(w.norm())
    if nw <= 1e-12 * max(float(v.norm()), 1.0):
        raise SurfaceError("plane_through: the three models are collinear")
    return e1, w / nw, nu, v1, nw


def plane_through(model_a: nn.Module, model_b: nn.Module, model_c: nn.Module, x,
                  y: Tensor | None = None, *, grid=51, margin: float = 0.25, **kw) -> Surface:
    """2-D surface on the plane through three models (parameters; BN statistics are a's).

    Orthonormal axes: e1 along b - a, e2 the part of c - a orthogonal to e1 (units: parameter
    space). Coordinates: a = (0, 0), b = (|b - a|, 0), c = ((c-a).e1, (c-a).e2), in
    ``meta["anchors"]``. The grid covers the three models plus ``margin`` x the extent on
    each side; grid: int or (xs, ys). kw: as :func:`plane`."""
    model_names = _dirs.direction_names(model_a, "weights")
    state = _state(model_a)
    fa = _flat(_state(model_a), model_names, state, "model_a")
    fb = _flat(_state(model_b), model_names, state, "model_b")
    fc = _flat(_state(model_c), model_names, state, "model_c")
    e1, e2, bx, cx, cy = _unit_pair(fb - fa, fc - fa)
    anchors = np.array([[0.0, 0.0], [bx, 0.0], [cx, cy]])
    if isinstance(grid, (int, np.integer)):
        lo, hi = anchors.min(0), anchors.max(0)
        ext = hi - lo
        xs = np.linspace(lo[0] - margin * ext[0], hi[0] + margin * ext[0], int(grid))
        ys = np.linspace(lo[1] - margin * ext[1], hi[1] + margin * ext[1], int(grid))
        grid = (xs, ys)
    unflat = _params.unflatten(e1.to(torch.float32), model_a, model_names)
    unflat2 = _params.unflatten(e2.to(torch.float32), model_a, model_names)
    # the float32 directions above are for storage; evaluation uses the float64 basis below
    srf = _plane_flat(model_a, model_names, fa, torch.stack([e1, e2]), grid, x, y, **kw)
    srf.directions = [unflat, unflat2]
    srf.meta.update(kind="plane_through", anchors=anchors.tolist())
    return srf


def _plane_flat(model, names, origin, dirs, grid, x, y, **kw) -> Surface:
    """A plane on flat float64 directions (2, D) (no dict round trip, so no float32 rounding)."""
    state = _state(model)
    as_dict = lambda v: {n: t for n, t in zip(names, torch.split(v, [state[n].numel() for n in names]))}
    d1 = {n: t.reshape(state[n].shape) for n, t in as_dict(dirs[0]).items()}
    d2 = {n: t.reshape(state[n].shape) for n, t in as_dict(dirs[1]).items()}
    o = {n: t.reshape(state[n].shape) for n, t in as_dict(origin).items()}
    return plane(model, d1, d2, x, y, grid=grid, origin=o, **kw)


# ---------------------------------------------------------------------------------------------
# PCA trajectories
# ---------------------------------------------------------------------------------------------

def pca_directions(checkpoints, theta_final):
    """PCA of a training trajectory around its end point (Li et al. 2018).

    checkpoints: (T, D) flat parameter vectors; theta_final: (D,). The principal axes are
    those of the (centred) differences ``theta_i - theta_final``; the path is the uncentred
    differences projected on them, so ``theta_final`` sits at (0, 0).
    Returns ``(d1 (D,), d2 (D,), explained_variance_ratio (2,), coords (T, 2))`` as float64
    tensors/arrays: d1, d2 orthonormal; each axis's sign makes its largest-magnitude entry
    positive; the ratios are fractions of the total variance (sum 1 for a planar path).
    """
    m = torch.as_tensor(checkpoints).detach().to("cpu", torch.float64)
    f = torch.as_tensor(theta_final).detach().to("cpu", torch.float64).reshape(-1)
    if m.dim() != 2 or m.shape[1] != f.shape[0]:
        raise SurfaceError(f"checkpoints must be (T, D) with D = {f.shape[0]}, got {tuple(m.shape)}")
    if m.shape[0] < 3:
        raise SurfaceError(f"PCA of a trajectory needs at least 3 checkpoints, got {m.shape[0]}")
    diff = m - f
    centred = diff - diff.mean(0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    var = s ** 2
    total = float(var.sum())
    if total == 0 or len(s) < 2 or float(s[1]) == 0:
        raise SurfaceError("the trajectory does not span two dimensions (checkpoints too similar)")
    axes = []
    for i in range(2):
        v = vh[i]
        if v[v.abs().argmax()] < 0:
            v = -v
        axes.append(v)
    coords = (diff @ torch.stack(axes).T).numpy()
    evr = (var[:2] / total).numpy()
    return axes[0], axes[1], evr, coords


def trajectory_plane(model: nn.Module, checkpoints, x, y: Tensor | None = None, *, grid=31,
                     margin: float = 0.2, **kw) -> Surface:
    """The surface on the PCA plane of a trajectory, with the path in ``Surface.path`` (T, 2).

    model: carries theta_final (its parameters); checkpoints: (T, D) in
    ``direction_names(model, "weights")`` order. The grid covers the path (and the origin)
    plus ``margin`` x the extent on each side. meta: explained_variance_ratio. kw: as
    :func:`plane`."""
    names = _dirs.direction_names(model, "weights")
    state = _state(model)
    final = _flat(state, names, state, "model")
    d1, d2, evr, coords = pca_directions(checkpoints, final)
    if isinstance(grid, (int, np.integer)):
        pts = np.vstack([coords, np.zeros((1, 2))])
        lo, hi = pts.min(0), pts.max(0)
        ext = np.maximum(hi - lo, 1e-12)
        grid = (np.linspace(lo[0] - margin * ext[0], hi[0] + margin * ext[0], int(grid)),
                np.linspace(lo[1] - margin * ext[1], hi[1] + margin * ext[1], int(grid)))
    srf = _plane_flat(model, names, final, torch.stack([d1, d2]), grid, x, y, **kw)
    srf.path = coords
    srf.meta.update(kind="pca_trajectory", explained_variance_ratio=[float(v) for v in evr])
    return srf


# ---------------------------------------------------------------------------------------------
# features
# ---------------------------------------------------------------------------------------------

def _rise_1d(srf: Surface, key: str, r: float) -> float:
    v = srf.values[key]
    xs = srf.xs
    if r > max(abs(xs.min()), abs(xs.max())) + 1e-12 or not (xs.min() <= 0 <= xs.max()):
        raise SurfaceError(f"line does not cover alpha = +/-{r} and 0")
    c = np.interp(0.0, xs, v)
    sides = [np.interp(s, xs, v) for s in (-r, r) if xs.min() - 1e-12 <= s <= xs.max() + 1e-12]
    return float(np.mean(sides) - c)


def _bilinear(srf: Surface, v: np.ndarray, px, py) -> np.ndarray:
    xs, ys = srf.xs, srf.ys
    ix = np.clip(np.searchsorted(xs, px) - 1, 0, len(xs) - 2)
    iy = np.clip(np.searchsorted(ys, py) - 1, 0, len(ys) - 2)
    tx = (px - xs[ix]) / (xs[ix + 1] - xs[ix])
    ty = (py - ys[iy]) / (ys[iy + 1] - ys[iy])
    return ((1 - tx) * (1 - ty) * v[iy, ix] + tx * (1 - ty) * v[iy, ix + 1]
            + (1 - tx) * ty * v[iy + 1, ix] + tx * ty * v[iy + 1, ix + 1])


def surface_features(surfaces, *, metric: str = "train_loss", radii=(0.5, 1.0)) -> dict[str, float]:
    """Scalar features of surfaces for the analysis ``surface`` group.

    surfaces: one :class:`Surface` or a list. Lines (kind "line"/"random_line"): loss rise
    at each radius r, ``mean(L(-r), L(r)) - L(0)``, averaged over lines ->
    ``surface_rise_r{r}``; interpolations: ``surface_barrier`` = max over alpha in [0, 1] of
    ``L(alpha) - ((1 - alpha) L(0) + alpha L(1))`` (>= 0 up to grid resolution), and
    ``surface_interp_max``. Planes: mean of L on the circle of radius r (bilinear, 64 angles)
    minus L(0, 0) -> ``surface_plane_rise_r{r}``; ``surface_plane_max_r{max r}`` the largest
    rise within the largest radius. Units: those of ``metric`` (``Surface.meta["loss"]``: nats for
    cross-entropy, squared target units for mse).
    """
    if isinstance(surfaces, Surface):
        surfaces = [surfaces]
    if not surfaces:
        raise SurfaceError("surface_features: no surfaces")
    out: dict[str, float] = {}
    lines = [s for s in surfaces if s.ndim == 1 and s.meta.get("kind") in ("line", "random_line")]
    interps = [s for s in surfaces if s.ndim == 1 and s.meta.get("kind") == "interpolate"]
    planes = [s for s in surfaces if s.ndim == 2]
    for s in surfaces:
        if metric not in s.values:
            raise SurfaceError(f"surface_features: metric {metric!r} not in {sorted(s.values)}")
    if lines:
        for r in radii:
            out[f"surface_rise_r{r:g}"] = float(np.mean([_rise_1d(s, metric, r) for s in lines]))
    if interps:
        bars, maxes = [], []
        for s in interps:
            v, a = s.values[metric], s.xs
            inside = (a >= -1e-12) & (a <= 1 + 1e-12)
            if inside.sum() < 2 or a.min() > 1e-12 or a.max() < 1 - 1e-12:
                raise SurfaceError("surface_features: interpolation does not cover alpha in [0, 1]")
            l0, l1 = np.interp(0.0, a, v), np.interp(1.0, a, v)
            chord = (1 - a[inside]) * l0 + a[inside] * l1
            bars.append(float(np.max(v[inside] - chord)))
            maxes.append(float(np.max(v[inside])))
        out["surface_barrier"] = float(np.mean(bars))
        out["surface_interp_max"] = float(np.mean(maxes))
    if planes:
        theta = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        rmax = max(radii)
        for s in planes:
            if not (s.xs.min() <= -rmax and s.xs.max() >= rmax and s.ys.min() <= -rmax and s.ys.max() >= rmax):
                raise SurfaceError(f"surface_features: plane does not cover radius {rmax}")
        for r in radii:
            vals = []
            for s in planes:
                v = s.values[metric]
                c = float(_bilinear(s, v, np.array([0.0]), np.array([0.0]))[0])
                vals.append(float(_bilinear(s, v, r * np.cos(theta), r * np.sin(theta)).mean() - c))
            out[f"surface_plane_rise_r{r:g}"] = float(np.mean(vals))
        mx = []
        for s in planes:
            v = s.values[metric]
            gx, gy = np.meshgrid(s.xs, s.ys)
            c = float(_bilinear(s, v, np.array([0.0]), np.array([0.0]))[0])
            mx.append(float(np.nanmax(np.where(gx ** 2 + gy ** 2 <= rmax ** 2 + 1e-12, v, -np.inf)) - c))
        out[f"surface_plane_max_r{rmax:g}"] = float(np.mean(mx))
    return out
