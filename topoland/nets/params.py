"""Flat views of parameters: names, ``{name: tensor}`` dicts, flat vectors and stacked dicts.

A *point* is one full set of trainable parameters of a model. Many points are held either as
a flat tensor ``(P, D)`` (parameters concatenated in :func:`param_names` order) or as a
*stacked dict* ``{name: (P, *shape)}``. A stacked dict may also carry buffers (e.g. BN running
statistics for "states" directions); any parameter or buffer it lacks is taken from the model
and shared by all points.

Batched evaluation of many points: :mod:`topoland.nets.functional` (forward, gradients) and
:mod:`topoland.nets.evaluation` (metrics over a dataset).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from topoland.errors import TopolandError

__all__ = [
    "ParamsError",
    "has_batchnorm",
    "param_names",
    "buffer_names",
    "get_params",
    "get_buffers",
    "flatten",
    "unflatten",
    "stack",
]


class ParamsError(TopolandError):
    """Parameter points, buffers or metrics do not match the model; the message names the culprit."""


# --------------------------------------------------------------------------------------------
# names, dicts and flat vectors
# --------------------------------------------------------------------------------------------

def param_names(model: nn.Module) -> list[str]:
    """Names of the trainable parameters (``requires_grad``), in module order."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


def buffer_names(model: nn.Module) -> list[str]:
    """Names of all buffers (running statistics, ``num_batches_tracked``, ...), in module order."""
    return [n for n, _ in model.named_buffers()]


def get_params(model: nn.Module) -> dict[str, Tensor]:
    """Detached copies of the trainable parameters, ``{name: tensor}`` in module order."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def get_buffers(model: nn.Module) -> dict[str, Tensor]:
    """Detached copies of all buffers, ``{name: tensor}`` in module order."""
    return {n: b.detach().clone() for n, b in model.named_buffers()}


def flatten(tensors: Mapping[str, Tensor], names: Sequence[str] | None = None, *,
            stacked: bool = False) -> Tensor:
    """Concatenate tensors into one vector.

    tensors: ``{name: tensor}``; names: order (default: the dict's order).
    Returns ``(D,)``; with ``stacked=True`` every tensor has a leading point dim B and the
    result is ``(B, D)``. Tensors are promoted to a common dtype.
    """
    names = list(tensors.keys()) if names is None else list(names)
    missing = [n for n in names if n not in tensors]
    if missing:
        raise ParamsError(f"flatten: tensor {missing[0]!r} is missing from the dict")
    if not names:
        raise ParamsError("flatten: no tensors to flatten")
    dtype = tensors[names[0]].dtype
    for n in names[1:]:
        dtype = torch.promote_types(dtype, tensors[n].dtype)
    if not stacked:
        return torch.cat([tensors[n].reshape(-1).to(dtype) for n in names])
    b = tensors[names[0]].shape[0] if tensors[names[0]].dim() else None
    for n in names:
        t = tensors[n]
        if t.dim() == 0 or t.shape[0] != b:
            raise ParamsError(f"flatten: stacked tensor {n!r} has shape {tuple(t.shape)}, "
                              f"expected leading dim {b}")
    return torch.cat([tensors[n].reshape(b, -1).to(dtype) for n in names], dim=1)


def _shapes(model: nn.Module) -> dict[str, torch.Size]:
    out = {n: p.shape for n, p in model.named_parameters()}
    out.update({n: b.shape for n, b in model.named_buffers()})
    return out


def unflatten(vec: Tensor, model: nn.Module, names: Sequence[str] | None = None) -> dict[str, Tensor]:
    """Split a flat vector into named tensors shaped like the model's.

    vec: ``(D,)`` -> ``{name: shape}``; ``(B, D)`` -> stacked ``{name: (B, *shape)}``.
    names: default :func:`param_names` (may include buffer names). Results are views of vec.
    """
    names = param_names(model) if names is None else list(names)
    shapes = _shapes(model)
    unknown = [n for n in names if n not in shapes]
    if unknown:
        raise ParamsError(f"unflatten: {unknown[0]!r} is not a parameter or buffer of the model")
    sizes = [math.prod(shapes[n]) for n in names]
    d = sum(sizes)
    if vec.dim() not in (1, 2) or vec.shape[-1] != d:
        raise ParamsError(f"unflatten: vector of shape {tuple(vec.shape)} does not match the "
                          f"model's {d} values; expected (D,) or (B, D) with D={d}")
    parts = torch.split(vec, sizes, dim=-1)
    lead = tuple(vec.shape[:-1])
    return {n: p.reshape(*lead, *shapes[n]) for n, p in zip(names, parts)}


def stack(dicts: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Stack dicts with equal keys and shapes into one dict with leading dim B = len(dicts)."""
    if len(dicts) == 0:
        raise ParamsError("stack: empty list of dicts")
    keys = list(dicts[0].keys())
    for i, d in enumerate(dicts):
        if set(d.keys()) != set(keys):
            diff = sorted(set(d.keys()) ^ set(keys))
            raise ParamsError(f"stack: dict {i} differs from dict 0 in key {diff[0]!r}")
    return {k: torch.stack([d[k] for d in dicts]) for k in keys}


# --------------------------------------------------------------------------------------------
# batch normalization and stacked dicts
# --------------------------------------------------------------------------------------------

def _bn_modules(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` holds a batch-normalization layer (of any dimension)."""
    return bool(_bn_modules(model))


def _leading(tensors: Mapping[str, Tensor], what: str) -> int:
    sizes = {k: (v.shape[0] if v.dim() else None) for k, v in tensors.items()}
    vals = set(sizes.values())
    if len(vals) != 1 or None in vals:
        k = next(iter(sizes))
        raise ParamsError(f"{what}: stacked tensors disagree on the number of points "
                          f"({k!r} has {sizes[k]}, sizes seen {sorted(v for v in vals if v is not None)})")
    return vals.pop()
