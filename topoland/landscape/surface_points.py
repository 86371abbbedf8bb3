"""The :class:`Surface` result, :class:`SurfaceError`, and the flat parameter points.

Every surface point is ``theta = origin + sum_j c_j d_j`` with the origin and the directions
flattened to float64 vectors in :func:`topoland.nets.directions.direction_names` order
(:func:`_setup`); :func:`_points` turns coefficient rows into the stacked per-point tensors the
evaluators take. See :mod:`topoland.landscape.surfaces` for the grid convention.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from topoland.nets import directions as _dirs
from topoland.errors import TopolandError

__all__ = ["SurfaceError", "Surface"]


class SurfaceError(TopolandError):
    """A surface cannot be computed: bad grid, directions, models or options (named)."""


@dataclass
class Surface:
    """A 1-D or 2-D loss surface.

    xs: (nx,) coordinates along direction 0 (alpha for 1-D); ys: (ny,) along direction 1, or
    None for 1-D. values: ``{"train_loss": (ny, nx) or (nx,), ...}``. directions: list of k
    direction dicts (flat order: ``meta["names"]``). meta: kind, evaluator, anchor
    coordinates, explained variance, ... path: (T, 2) trajectory coordinates or None.
    """
    xs: np.ndarray
    ys: np.ndarray | None
    values: dict[str, np.ndarray]
    directions: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    path: np.ndarray | None = None

    @property
    def ndim(self) -> int:
        return 1 if self.ys is None else 2


# ---------------------------------------------------------------------------------------------
# flat points
# ---------------------------------------------------------------------------------------------

def _state(model: nn.Module) -> dict[str, Tensor]:
    out = {n: p.detach() for n, p in model.named_parameters()}
    out.update({n: b.detach() for n, b in model.named_buffers()})
    return out


def _kind_of(direction: Mapping[str, Tensor], model: nn.Module) -> str:
    buffers = {n for n, b in model.named_buffers() if b.is_floating_point()}
    return "states" if any(n in buffers for n in direction) else "weights"


def _flat(tensors: Mapping[str, Tensor], names: Sequence[str], like: Mapping[str, Tensor],
          what: str) -> Tensor:
    """Concatenate ``tensors[n]`` (missing names -> zeros) as float64 (D,)."""
    parts = []
    for n in names:
        if n in tensors:
            t = tensors[n].detach()
            if t.shape != like[n].shape:
                raise SurfaceError(f"{what}: tensor {n!r} has shape {tuple(t.shape)}, the model's "
                                   f"is {tuple(like[n].shape)}")
            parts.append(t.reshape(-1).to("cpu", torch.float64))
        else:
            parts.append(torch.zeros(like[n].numel(), dtype=torch.float64))
    return torch.cat(parts)


def _setup(model, directions: Sequence[Mapping[str, Tensor]], origin=None):
    """names, origin (D,) float64, dirs (k, D) float64, kind."""
    if not directions:
        raise SurfaceError("no directions given")
    state = _state(model)
    for j, d in enumerate(directions):
        unknown = [n for n in d if n not in state]
        if unknown:
            raise SurfaceError(f"direction {j}: {unknown[0]!r} is not a parameter or buffer of the model")
    kind = "states" if any(_kind_of(d, model) == "states" for d in directions) else "weights"
    names = _dirs.direction_names(model, kind)
    o = _flat(state if origin is None else origin, names, state, "origin")
    dirs = torch.stack([_flat(d, names, state, f"direction {j}") for j, d in enumerate(directions)])
    return names, o, dirs, kind


def _points(names, origin, dirs, coeffs: np.ndarray, model) -> dict[str, Tensor]:
    """Stacked dict {name: (P, *shape)} in the model's dtypes for coefficient rows (P, k)."""
    c = torch.as_tensor(np.asarray(coeffs, dtype=np.float64))
    flat = origin.unsqueeze(0) + c @ dirs
    state = _state(model)
    out, s = {}, 0
    for n in names:
        t = state[n]
        out[n] = flat[:, s:s + t.numel()].reshape(-1, *t.shape).to(t.dtype)
        s += t.numel()
    return out
