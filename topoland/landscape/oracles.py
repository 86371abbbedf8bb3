"""Landscapes of known topology, and a jump-and-retrain simulator that samples them.

An oracle is a smooth 2-D loss ``f(z)`` whose sublevel-set topology is known: its basins,
the saddles between them and its loops. :func:`simulate_jump_and_retrain` samples it the way
:func:`topoland.sampling.sampler.jump_and_retrain` samples a network: jumps from a minimum along random
directions at several step sizes, gradient-descent retraining, one record per epoch, and
returns a :class:`topoland.sampling.storage.SampleResult` with the same ``table`` columns and
``params`` layout. The parameters are ``theta = theta0 + E z``: ``E`` an isometric embedding
``(D, 2)`` with orthonormal columns and ``theta0`` a random offset, so the topology code sees
high-dimensional snapshots and must find the 2-D shape itself.

:func:`reference_diagrams` gives the expected answer: the sublevel-set persistence of ``f`` on
a fine grid (GUDHI's cubical complex), restricted to the disc the samples cover.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from topoland.errors import ConfigError

__all__ = ["Oracle", "ORACLES", "ORACLE_SAMPLING", "TOLERANCE", "oracle", "simulate_jump_and_retrain",
           "reference_diagrams", "check_oracle"]


@dataclass(frozen=True)
class Oracle:
    """A 2-D landscape of known topology.

    ``fn``: ``(B, 2) -> (B,)`` float64, differentiable. ``start``: the minimum the jumps leave
    from, ``(2,)``. ``jump_scale``: the jump length of step 1.0 (z units). ``expected``: the
    answer a sampled topology must find: ``n_basins`` (H0 classes that are not noise, the
    essential one included), ``h0`` (persistence of each finite H0 bar, descending, loss units),
    ``h1`` (persistence of each H1 bar, descending). ``bounds``: the ``(lo, hi)`` box used for
    :func:`reference_diagrams`.
    """
    name: str
    fn: Callable[[Tensor], Tensor]
    start: tuple[float, float]
    jump_scale: float
    expected: dict
    bounds: tuple[float, float] = (-3.0, 3.0)
    description: str = ""
    sampling: dict = field(default_factory=dict)

    def sampling_kwargs(self) -> dict:
        """How the oracle suite samples this landscape: :data:`ORACLE_SAMPLING` with this
        oracle's overrides."""
        return ORACLE_SAMPLING | self.sampling


def _bowl(z: Tensor) -> Tensor:
    return 0.5 * z[..., 0] ** 2 + 1.0 * z[..., 1] ** 2


def _double_well(z: Tensor) -> Tensor:
    x, y = z[..., 0], z[..., 1]
    return (x * x - 1) ** 2 + 0.15 * x + 0.5 * y * y


# three wells on a line inside a wide bowl; depths 1.0, 0.8, 0.6
_K_CENTRES = ((-2.0, 0.0), (0.0, 0.0), (2.0, 0.0))
_K_DEPTHS = (1.5, 1.2, 0.9)


def _k_basins(z: Tensor) -> Tensor:
    v = 0.05 * (z[..., 0] ** 2 + z[..., 1] ** 2)
    for (cx, cy), a in zip(_K_CENTRES, _K_DEPTHS):
        v = v - a * torch.exp(-((z[..., 0] - cx) ** 2 + (z[..., 1] - cy) ** 2) / (2 * 0.55 ** 2))
    return v


def _ring(z: Tensor) -> Tensor:
    r2 = z[..., 0] ** 2 + z[..., 1] ** 2
    return (r2 - 1) ** 2


ORACLES: dict[str, Oracle] = {
    "bowl": Oracle("bowl", _bowl, (0.0, 0.0), 2.0,
                   {"n_basins": 1, "h0": [], "h1": []},
                   description="convex quadratic 0.5 x^2 + y^2: one basin, no loop"),
    "double_well": Oracle("double_well", _double_well, (-1.0, 0.0), 2.5,
                          {"n_basins": 2, "h0": [0.855], "h1": []},
                          description="(x^2-1)^2 + 0.15 x + 0.5 y^2: minima -0.149 and 0.146, "
                                      "saddle 1.001 (0.855 above the higher minimum)"),
    "k_basins": Oracle("k_basins", _k_basins, (0.0, 0.0), 3.0,
                       {"n_basins": 3, "h0": [0.737, 0.371], "h1": []}, bounds=(-4.0, 4.0),
                       description="three Gaussian wells (depths 1.5, 1.2, 0.9) at x = -2, 0, 2 "
                                   "in a wide bowl, jumps from the middle one: 2 finite H0 bars "
                                   "(0.737, 0.371: the cubical reference)"),
    "ring": Oracle("ring", _ring, (1.0, 0.0), 2.2,
                   {"n_basins": None, "h0": None, "h1": [1.0]}, bounds=(-2.0, 2.0),
                   description="(x^2+y^2-1)^2: a flat circular valley, centre 1.0 above it: "
                               "one H1 class of persistence 1 (H0 not checked: the flat valley "
                               "is sampled at separate points, joined only through higher "
                               "samples); 16 directions, so that the valley is sampled all "
                               "the way round",
                   sampling={"directions": 16}),
}


#: how the oracle suite samples each landscape (8 directions x 4 steps x 21 records = 672
#: samples, about the reference study's 640)
ORACLE_SAMPLING = dict(directions=8, steps=(0.25, 0.5, 0.75, 1.0), epochs=20, steps_per_epoch=10)
#: relative tolerance on each expected bar's persistence
TOLERANCE = 0.35


def oracle(name: str) -> Oracle:
    """The oracle called ``name`` (one of :data:`ORACLES`)."""
    if name not in ORACLES:
        raise ConfigError(f"unknown oracle {name!r}; choose one of {sorted(ORACLES)}.")
    return ORACLES[name]


def _grad(fn, z: Tensor) -> tuple[Tensor, Tensor]:
    z = z.detach().requires_grad_(True)
    v = fn(z)
    (g,) = torch.autograd.grad(v.sum(), z)
    return v.detach(), g


def simulate_jump_and_retrain(oracle_or_name, *, directions: int = 8,
                              steps=(0.25, 0.5, 0.75, 1.0), epochs: int = 40,
                              steps_per_epoch: int = 5, lr: float = 0.05,
                              grad_noise: float = 0.05, loss_noise: float = 0.005,
                              max_update: float = 0.1, dim: int = 300, offset_norm: float = 5.0,
                              seed: int = 0):
    """Jump and retrain on an analytic landscape; returns a ``SampleResult`` like the sampler's.

    ``directions`` random unit directions in the plane (seeded) x ``steps`` (fractions of the
    oracle's ``jump_scale``) give ``J`` trajectories, ``t = direction * len(steps) + step``.
    Each retrains by ``epochs x steps_per_epoch`` gradient-descent steps of size ``lr``
    (plus Gaussian gradient noise of std ``grad_noise``, like minibatch noise; each update's
    length clipped to ``max_update``, like a gradient-norm clip), recorded at the
    jump point and after every epoch: ``N = J (epochs + 1)`` samples. Recorded losses are
    ``f(z)`` plus independent Gaussian noise of std ``loss_noise`` per split (train, val, test);
    accuracies are ``exp(-loss)`` clipped to [0, 1] (a monotone stand-in). ``params`` are the
    float32 snapshots ``theta0 + E z`` ``(N, dim)``; ``theta_star`` is the start's.
    ``result.config["z"]`` holds the true 2-D points ``(N, 2)``.
    """
    from topoland.sampling.storage import TABLE_COLUMNS, SampleResult

    o = oracle(oracle_or_name) if isinstance(oracle_or_name, str) else oracle_or_name
    if directions < 1 or epochs < 1 or steps_per_epoch < 1 or dim < 3:
        raise ConfigError("simulate_jump_and_retrain needs directions, epochs, steps_per_epoch >= 1 "
                          f"and dim >= 3; got {directions}, {epochs}, {steps_per_epoch}, {dim}.")
    steps = [float(s) for s in steps]
    gen = torch.Generator().manual_seed(int(seed))
    ang = torch.rand(directions, generator=gen, dtype=torch.float64) * 2 * math.pi
    dirs = torch.stack([torch.cos(ang), torch.sin(ang)], 1)                  # (n_dir, 2)
    start = torch.tensor(o.start, dtype=torch.float64)
    s = torch.tensor(steps, dtype=torch.float64) * o.jump_scale
    z = start + (dirs[:, None, :] * s[None, :, None]).reshape(-1, 2)         # (J, 2) jump points
    J, n_rec = z.shape[0], epochs + 1
    path = torch.empty((J, n_rec, 2), dtype=torch.float64)
    path[:, 0] = z
    for e in range(1, n_rec):
        for _ in range(steps_per_epoch):
            _, g = _grad(o.fn, z)
            if grad_noise:
                g = g + grad_noise * torch.randn(g.shape, generator=gen, dtype=torch.float64)
            u = lr * g  # clipped like a gradient-norm clip, so steep jump points do not diverge
            z = z - u * (max_update / u.norm(dim=1, keepdim=True).clamp_min(max_update))
        path[:, e] = z
    zs = path.reshape(-1, 2)
    with torch.no_grad():
        f = o.fn(zs).numpy()
    E, _ = torch.linalg.qr(torch.randn((dim, 2), generator=gen, dtype=torch.float64))
    theta0 = torch.randn(dim, generator=gen, dtype=torch.float64)
    theta0 = theta0 * (offset_norm / theta0.norm())
    params = (theta0 + zs @ E.T).to(torch.float32)
    rng = np.random.default_rng(int(seed) + 1)
    traj = np.repeat(np.arange(J), n_rec)
    cols = {}
    for split in ("train", "val", "test"):
        loss = f + loss_noise * rng.standard_normal(f.shape)
        cols[f"{split}_loss"] = loss
        cols[f"{split}_acc"] = np.clip(np.exp(-loss), 0.0, 1.0)
    table = pd.DataFrame({
        "sample_id": np.arange(J * n_rec), "trajectory": traj, "direction": traj // len(steps),
        "step": np.asarray(steps)[traj % len(steps)], "epoch": np.tile(np.arange(n_rec, dtype=float), J),
        **cols, "diverged": np.zeros(J * n_rec, dtype=bool)})[list(TABLE_COLUMNS)]
    theta_star = (theta0 + start @ E.T).to(torch.float32)
    cfg = dict(oracle=o.name, directions=directions, steps=steps, epochs=epochs,
               steps_per_epoch=steps_per_epoch, lr=lr, grad_noise=grad_noise, max_update=max_update,
               loss_noise=loss_noise, dim=dim, offset_norm=offset_norm, seed=seed,
               n_trajectories=J, records_per_trajectory=n_rec, z=zs.numpy())
    return SampleResult(table=table, params=params, gram=None, projection=None,
                        theta_star=theta_star, directions=(dirs @ E.T).to(torch.float32), config=cfg)


def reference_diagrams(oracle_or_name, *, resolution: int = 401, within=None) -> dict[int, np.ndarray]:
    """Sublevel-set persistence of the oracle's ``f`` on a ``resolution^2`` grid over its
    ``bounds`` box (GUDHI cubical complex, vertex values): ``{0: (n, 2), 1: (m, 2)}``,
    essential classes with death ``inf``. ``within``: ``(centre (2,), radius)`` restricts the
    domain to a disc (cells outside get ``+inf`` and never enter), the region a sampler covers.
    """
    import gudhi

    o = oracle(oracle_or_name) if isinstance(oracle_or_name, str) else oracle_or_name
    lo, hi = o.bounds
    g = torch.linspace(lo, hi, resolution, dtype=torch.float64)
    X, Y = torch.meshgrid(g, g, indexing="ij")
    with torch.no_grad():
        F = o.fn(torch.stack([X, Y], -1).reshape(-1, 2)).reshape(resolution, resolution).numpy()
    if within is not None:
        (cx, cy), r = within
        F = np.where((X.numpy() - cx) ** 2 + (Y.numpy() - cy) ** 2 <= r * r, F, np.inf)
    cc = gudhi.CubicalComplex(vertices=F)
    cc.compute_persistence()
    out = {}
    for dim in (0, 1):
        d = np.asarray(cc.persistence_intervals_in_dimension(dim), dtype=np.float64).reshape(-1, 2)
        d = d[np.isfinite(d[:, 0])]
        out[dim] = d[np.lexsort((d[:, 1], d[:, 0]))]
    return out


def check_oracle(oracle_or_name, diagrams: dict, *, min_persistence: float,
                 tolerance: float = TOLERANCE) -> dict:
    """Compare a sampled topology with the oracle's known answer.

    ``diagrams``: ``{0: (n, 2), 1: (m, 2)}`` of the samples' complex (essential classes with
    death inf); bars shorter than ``min_persistence`` are noise. Per dimension the found bars
    (finite, at least ``min_persistence``, descending) must match the expected ones in number,
    and each within ``tolerance`` relative error; ``n_basins`` (essential H0 classes plus long
    finite bars) must equal the expected count. An expectation of None is not checked.
    Returns the found values and ``passed`` (bool) with ``why`` (what failed).
    """
    o = oracle(oracle_or_name) if isinstance(oracle_or_name, str) else oracle_or_name
    found, why = {}, []
    for dim, key in ((0, "h0"), (1, "h1")):
        d = np.asarray(diagrams.get(dim, np.zeros((0, 2))), dtype=np.float64).reshape(-1, 2)
        fin = d[np.isfinite(d[:, 1])]
        pers = np.sort(np.abs(fin[:, 1] - fin[:, 0]))[::-1]
        long = pers[pers >= min_persistence]
        found[key] = [round(float(x), 3) for x in long]
        found[f"n_essential_{key}"] = int((~np.isfinite(d[:, 1])).sum())
        exp = o.expected[key]
        if exp is None:
            continue
        if len(long) != len(exp):
            why.append(f"{len(long)} {key.upper()} bars >= {min_persistence:.3g}, expected {len(exp)}")
        else:
            for got, want in zip(long, exp):
                if abs(got - want) > tolerance * want:
                    why.append(f"{key.upper()} bar {got:.3f}, expected {want} +- {tolerance:.0%}")
    found["n_basins"] = found["n_essential_h0"] + len(found["h0"])
    if o.expected["n_basins"] is not None and found["n_basins"] != o.expected["n_basins"]:
        why.append(f"{found['n_basins']} basins, expected {o.expected['n_basins']}")
    return found | {"passed": not why, "why": "; ".join(why)}
