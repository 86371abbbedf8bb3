"""Directions in parameter space: random (filter/layer-normalized), orthogonal pairs, between models.

A direction is a dict ``{name: tensor}`` keyed by parameter name in model order, plus the
floating-point buffer names (BN running statistics) for ``kind="states"``. Integer buffers
(``num_batches_tracked``) are never part of a direction.

Random draws: one ``torch.Generator`` (CPU, seeded) draws a standard Gaussian for every
parameter tensor in model order, then (``kind="states"``) every floating buffer in model
order. Every tensor is drawn whatever the normalization, so a seed gives the same raw draws
for every ``norm``/``ignore`` setting, and the parameter part of a "states" direction equals
the "weights" direction of the same seed.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from topoland.errors import TopolandError
from topoland.utils import make_generator

__all__ = [
    "DirectionError",
    "random_direction",
    "filter_normalized_direction",
    "orthogonal_pair",
    "between",
    "as_flat",
    "direction_names",
    "normalize_direction",
    "combine",
]

_NORMS = ("filter", "layer", None)
_IGNORES = ("biasbn", None)
_KINDS = ("weights", "states")


class DirectionError(TopolandError):
    """A direction cannot be built: bad option, or models/dicts that do not match."""


def direction_names(model: nn.Module, kind: str = "weights") -> list[str]:
    """Names a direction covers: trainable parameters (model order), then for ``"states"``
    the floating-point buffers (model order)."""
    _check(kind=kind)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if kind == "states":
        names += [n for n, b in model.named_buffers() if b.is_floating_point()]
    return names


def _check(norm="filter", ignore="biasbn", kind="weights"):
    if norm not in _NORMS:
        raise DirectionError(f"norm must be one of {_NORMS}, got {norm!r}")
    if ignore not in _IGNORES:
        raise DirectionError(f"ignore must be one of {_IGNORES}, got {ignore!r}")
    if kind not in _KINDS:
        raise DirectionError(f"kind must be one of {_KINDS}, got {kind!r}")


def _state(model: nn.Module) -> dict[str, Tensor]:
    out = {n: p.detach() for n, p in model.named_parameters()}
    out.update({n: b.detach() for n, b in model.named_buffers()})
    return out


def normalize_direction(direction: Mapping[str, Tensor], weights: Mapping[str, Tensor], *,
                        norm: str | None = "filter", ignore: str | None = "biasbn") -> dict[str, Tensor]:
    """Rescale a direction against reference weights (Li et al. 2018).

    norm="filter": a tensor with 2+ dims is rescaled slice by slice along dim 0,
    ``d_i <- d_i / ||d_i|| * ||w_i||``; a tensor with <= 1 dim as one slice.
    norm="layer": each whole tensor rescaled to the norm of its weights. None: unchanged.
    ignore="biasbn": tensors with <= 1 dim (biases, BN scale/shift, running stats) are zero,
    whatever ``norm``. Returns new tensors; a zero weight slice gives a zero direction slice.
    """
    _check(norm=norm, ignore=ignore)
    out = {}
    for name, d in direction.items():
        if name not in weights:
            raise DirectionError(f"direction tensor {name!r} has no matching weight tensor")
        w = weights[name].to(d.dtype)
        if w.shape != d.shape:
            raise DirectionError(f"direction {name!r} has shape {tuple(d.shape)}, "
                                 f"the weights {tuple(w.shape)}")
        if d.dim() <= 1 and ignore == "biasbn":
            out[name] = torch.zeros_like(d)
        elif norm is None:
            out[name] = d.clone()
        elif norm == "layer" or d.dim() <= 1:
            out[name] = d * (w.norm() / d.norm().clamp_min(torch.finfo(d.dtype).tiny))
        else:  # filter
            dn = d.reshape(d.shape[0], -1).norm(dim=1).clamp_min(torch.finfo(d.dtype).tiny)
            wn = w.reshape(w.shape[0], -1).norm(dim=1)
            out[name] = d * (wn / dn).reshape(-1, *([1] * (d.dim() - 1)))
    return out


def random_direction(model: nn.Module, seed: int | None = None, *, norm: str | None = "filter",
                     ignore: str | None = "biasbn", kind: str = "weights",
                     generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """A seeded Gaussian direction, normalized against the model's weights.

    seed: int (a fresh CPU generator); or pass ``generator`` (a CPU torch.Generator, advanced
    in place) instead. norm: "filter" | "layer" | None; ignore: "biasbn" | None (see
    :func:`normalize_direction`). kind: "weights" (parameters only: BN running statistics are
    never perturbed) or "states" (floating buffers too, normalized the same way).
    Returns ``{name: tensor}`` with the shapes, dtypes and devices of the model's tensors.
    """
    _check(norm=norm, ignore=ignore, kind=kind)
    if (seed is None) == (generator is None):
        raise DirectionError("random_direction: pass exactly one of seed and generator")
    g = make_generator(seed) if generator is None else generator
    state = _state(model)
    names = direction_names(model, kind)
    raw = {n: torch.randn(state[n].shape, generator=g, dtype=torch.float32) for n in names}
    raw = {n: d.to(dtype=state[n].dtype) for n, d in raw.items()}
    out = normalize_direction(raw, {n: state[n].cpu() for n in names}, norm=norm, ignore=ignore)
    return {n: d.to(state[n].device) for n, d in out.items()}


def filter_normalized_direction(model: nn.Module, seed: int, ignore: str | None = "biasbn") -> dict[str, Tensor]:
    """Shorthand for ``random_direction(model, seed, norm="filter", ignore=ignore)``."""
    return random_direction(model, seed, norm="filter", ignore=ignore)


def _dot(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> Tensor:
    return sum((a[k].double() * b[k].double()).sum() for k in a)


def orthogonal_pair(model: nn.Module, seed: int, *, exact: bool = True, norm: str | None = "filter",
                    ignore: str | None = "biasbn", kind: str = "weights") -> tuple[dict, dict]:
    """Two random directions for a plane, drawn from one generator seeded with ``seed``.

    The first equals ``random_direction(model, seed, ...)``; the second continues the same
    random stream. exact=False: the pair as drawn (Li et al.: random high-dimensional vectors
    are nearly orthogonal, cosine ~ 1/sqrt(D)). exact=True (default): Gram-Schmidt on the flat
    vectors, ``d2 <- d2 - (d2.d1 / d1.d1) d1``, then d2 is rescaled by one global factor back
    to its pre-projection norm. The global factor keeps exact orthogonality; per-slice norms
    of d2 then match the weights' only approximately (relative change ~ 1/sqrt(D)).
    """
    g = make_generator(seed)
    d1 = random_direction(model, norm=norm, ignore=ignore, kind=kind, generator=g)
    d2 = random_direction(model, norm=norm, ignore=ignore, kind=kind, generator=g)
    if not exact:
        return d1, d2
    n11 = _dot(d1, d1)
    if n11 == 0:
        raise DirectionError("orthogonal_pair: the first direction is zero (all tensors ignored?)")
    before = _dot(d2, d2).sqrt()
    c = _dot(d2, d1) / n11
    proj = {k: d2[k].double() - c * d1[k].double() for k in d2}
    scale = before / _dot(proj, proj).sqrt()
    d2 = {k: (proj[k] * scale).to(d2[k].dtype) for k in proj}
    return d1, d2


def between(model_a, model_b, kind: str = "weights", *, model: nn.Module | None = None) -> dict[str, Tensor]:
    """The direction ``b - a`` from one model to another.

    model_a, model_b: nn.Modules or dicts of tensors (e.g. state dicts, :func:`get_params`).
    Names: trainable parameters (and floating buffers for ``kind="states"``) of whichever
    argument is a module, or of ``model``; with two dicts and no model, every floating tensor
    of a (b must have the same keys). Computed in each tensor's dtype on a's device.
    """
    _check(kind=kind)
    ref = model if model is not None else next(
        (m for m in (model_a, model_b) if isinstance(m, nn.Module)), None)
    a = _state(model_a) if isinstance(model_a, nn.Module) else dict(model_a)
    b = _state(model_b) if isinstance(model_b, nn.Module) else dict(model_b)
    if ref is not None:
        names = direction_names(ref, kind)
    else:
        if set(a) != set(b):
            diff = sorted(set(a) ^ set(b))
            raise DirectionError(f"between: tensor {diff[0]!r} is in only one of the two dicts")
        names = [n for n, t in a.items() if t.is_floating_point()]
    out = {}
    for n in names:
        for side, d in (("model_a", a), ("model_b", b)):
            if n not in d:
                raise DirectionError(f"between: {side} has no tensor {n!r}")
        if a[n].shape != b[n].shape:
            raise DirectionError(f"between: {n!r} has shape {tuple(a[n].shape)} in model_a and "
                                 f"{tuple(b[n].shape)} in model_b")
        out[n] = b[n].detach().to(a[n].device) - a[n].detach()
    return out


def as_flat(direction: Mapping[str, Tensor], model: nn.Module | None = None) -> Tensor:
    """A direction as one vector ``(D,)``: in model order (parameters, then floating buffers)
    when a model is given, else in the dict's order."""
    if model is None:
        names = list(direction)
    else:
        order = direction_names(model, "states")
        unknown = [n for n in direction if n not in order]
        if unknown:
            raise DirectionError(f"as_flat: {unknown[0]!r} is not a parameter or floating buffer "
                                 f"of the model")
        names = [n for n in order if n in direction]
    if not names:
        raise DirectionError("as_flat: empty direction")
    return torch.cat([direction[n].reshape(-1) for n in names])


def combine(origin: Mapping[str, Tensor], directions: Sequence[Mapping[str, Tensor]],
            coords: Tensor) -> dict[str, Tensor]:
    """Points ``origin + sum_j coords[:, j] * directions[j]`` as a stacked dict.

    origin: ``{name: tensor}``; directions: k dicts over a subset of origin's names (names
    absent from a direction do not move); coords: ``(P, k)`` (or ``(P,)`` for k = 1).
    Returns ``{name: (P, *shape)}`` for every name of origin, in origin's dtype.
    """
    coords = torch.as_tensor(coords)
    if coords.dim() == 1:
        coords = coords[:, None]
    if coords.dim() != 2 or coords.shape[1] != len(directions):
        raise DirectionError(f"combine: coords of shape {tuple(coords.shape)} do not match "
                             f"{len(directions)} directions; expected (P, {len(directions)})")
    for j, d in enumerate(directions):
        extra = [n for n in d if n not in origin]
        if extra:
            raise DirectionError(f"combine: direction {j} has tensor {extra[0]!r} not in origin")
    out = {}
    for n, o in origin.items():
        acc = o.detach().to(torch.float64).unsqueeze(0).repeat(coords.shape[0], *([1] * o.dim()))
        for j, d in enumerate(directions):
            if n in d:
                c = coords[:, j].to(device=o.device, dtype=torch.float64)
                acc = acc + c.reshape(-1, *([1] * o.dim())) * d[n].to(device=o.device, dtype=torch.float64)
        out[n] = acc.to(o.dtype)
    return out
