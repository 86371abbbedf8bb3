"""Nudged elastic band (Henkelman & Jónsson 2000) and AutoNEB (Kolsbjerg et al. 2016, as
used by Draxler et al. 2018) on batched losses of flat parameter vectors.

See :mod:`topoland.landscape.path_losses` for the loss-function protocol.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import pandas as pd
import torch
from torch import Tensor

from topoland.errors import ConfigError
from topoland.landscape.profiles import Path, _check_endpoints, _polyline_at
from topoland.landscape.path_losses import (PathError, _batch_stream, _call_loss, _loss_and_grad,
                                            _TensorOptimizer)

__all__ = ["neb", "neb_forces", "neb_forces_loop", "respace", "insert_images", "auto_neb",
           "AUTONEB_REFERENCE"]

_TANGENTS = ("improved", "bisection")


# --------------------------------------------------------------------------------------
# Forces
# --------------------------------------------------------------------------------------

def _tangents(images: Tensor, losses: Tensor, kind: str) -> Tensor:
    """Unit tangents ``(K-2, D)`` at the interior images."""
    tp = images[2:] - images[1:-1]
    tm = images[1:-1] - images[:-2]
    if kind == "bisection":
        tau = tp / tp.norm(dim=1, keepdim=True) + tm / tm.norm(dim=1, keepdim=True)
        return tau / tau.norm(dim=1, keepdim=True)
    vp, v0, vm = losses[2:, None], losses[1:-1, None], losses[:-2, None]
    up = (vp > v0) & (v0 > vm)
    down = (vp < v0) & (v0 < vm)
    dmax = torch.maximum((vp - v0).abs(), (vm - v0).abs())
    dmin = torch.minimum((vp - v0).abs(), (vm - v0).abs())
    mixed = torch.where(vp > vm, tp * dmax + tm * dmin, tp * dmin + tm * dmax)
    tau = torch.where(up, tp, torch.where(down, tm, mixed))
    norm = tau.norm(dim=1, keepdim=True)
    # Equal losses on both sides and at the image (flat path) give a zero weighted tangent;
    # the bisection tangent is the limit of the weighted one there.
    bis = tp / tp.norm(dim=1, keepdim=True) + tm / tm.norm(dim=1, keepdim=True)
    tau = torch.where(norm > 0, tau / norm.clamp_min(1e-300), bis / bis.norm(dim=1, keepdim=True))
    return tau


def neb_forces(images: Tensor, losses: Tensor, grads: Tensor, *, spring: float | None = None,
               climbing_index: int | None = None, tangent: str = "improved") -> Tensor:
    """NEB pseudo-gradients ``(K-2, D)`` of the interior images (descend along them).

    images ``(K, D)``, losses ``(K,)``, grads ``(K, D)`` (rows 0 and K-1 unused). Interior
    image i gets ``g_perp = g - (g.tau) tau`` plus, for a finite ``spring`` k, the spring
    term ``-k (|R_{i+1} - R_i| - |R_i - R_{i-1}|) tau``; the climbing image (index into the
    full chain) gets ``g - 2 (g.tau) tau`` and no spring. Tangents: Henkelman-Jónsson
    ``"improved"`` (energy-weighted at extrema) or ``"bisection"``.
    """
    if tangent not in _TANGENTS:
        raise ConfigError(f"tangent must be one of {_TANGENTS}, got {tangent!r}")
    if images.shape[0] < 3:
        raise PathError("NEB needs at least 3 images (two endpoints and one movable image)")
    tau = _tangents(images, losses, tangent)
    g = grads[1:-1]
    gt = (g * tau).sum(1, keepdim=True)
    out = g - gt * tau
    if spring is not None:
        d = (images[1:] - images[:-1]).norm(dim=1)
        out = out - spring * (d[1:] - d[:-1])[:, None] * tau
    if climbing_index is not None:
        c = climbing_index - 1
        out[c] = g[c] - 2 * gt[c] * tau[c]
    return out


def neb_forces_loop(images: Tensor, losses: Tensor, grads: Tensor, *, spring=None,
                    climbing_index=None, tangent="improved") -> Tensor:
    """Plain-loop reference of :func:`neb_forces` (one image at a time, Python floats)."""
    out = []
    k = images.shape[0]
    for i in range(1, k - 1):
        tp, tm = images[i + 1] - images[i], images[i] - images[i - 1]
        vp, v0, vm = float(losses[i + 1]), float(losses[i]), float(losses[i - 1])
        bis = tp / tp.norm() + tm / tm.norm()
        if tangent == "bisection":
            tau = bis
        elif vp > v0 > vm:
            tau = tp
        elif vp < v0 < vm:
            tau = tm
        else:
            dmax = max(abs(vp - v0), abs(vm - v0))
            dmin = min(abs(vp - v0), abs(vm - v0))
            tau = tp * dmax + tm * dmin if vp > vm else tp * dmin + tm * dmax
            if float(tau.norm()) == 0.0:
                tau = bis
        tau = tau / tau.norm()
        g = grads[i]
        if i == climbing_index:
            out.append(g - 2 * (g @ tau) * tau)
            continue
        f = g - (g @ tau) * tau
        if spring is not None:
            f = f - spring * (tp.norm() - tm.norm()) * tau
        out.append(f)
    return torch.stack(out)


def respace(images: Tensor, *, fixed: Sequence[int] = ()) -> Tensor:
    """Images moved to even arc-length spacing along their own polyline, ``(K, D)``.

    The endpoints and the images in ``fixed`` (e.g. a climbing image) stay; the images
    between two fixed ones are spaced evenly on that stretch (the reference's infinite
    spring constant).
    """
    k = images.shape[0]
    anchors = sorted({0, k - 1, *[int(i) for i in fixed]})
    out = images.clone()
    for a, b in zip(anchors[:-1], anchors[1:]):
        if b - a < 2:
            continue
        seg = images[a:b + 1]
        if float((seg[1:] - seg[:-1]).norm(dim=1).sum()) == 0.0:
            continue
        t = torch.linspace(0, 1, b - a + 1, dtype=images.dtype, device=images.device)
        out[a + 1:b] = _polyline_at(seg, t[1:-1])
    return out


# --------------------------------------------------------------------------------------
# NEB
# --------------------------------------------------------------------------------------

def neb(loss_fn: Callable, theta_a: Tensor, theta_b: Tensor, *, n_images: int = 9,
        images: Tensor | None = None, steps: int = 500, lr: float = 0.01,
        optimizer: str = "sgd", momentum: float = 0.0, weight_decay: float = 0.0,
        spring: float | None = None, climbing: bool = False, climb_after: int = 0,
        tangent: str = "improved", batches: Iterable | None = None, tol: float | None = None,
        record_every: int = 1) -> Path:
    """Nudged elastic band between two fixed endpoints ``theta_a``, ``theta_b`` ``(D,)``.

    The chain of ``n_images`` images (endpoints included) starts on the straight line, or
    at ``images`` ``(K, D)`` (whose ends must be the endpoints). Each step evaluates all
    images in one batched call (``loss_fn(thetas)`` or ``loss_fn(thetas, batch)`` with the
    next element of ``batches``), takes one optimizer step (``"sgd"`` with ``momentum``, or
    ``"adam"``) along the NEB pseudo-gradients of :func:`neb_forces`, and, when
    ``spring is None``, respaces the images evenly by arc length (the reference's infinite
    spring; a climbing image stays put). ``climbing``: from step ``climb_after`` on, the
    highest interior image climbs (inverted tangential force, no spring): it converges to
    the saddle. ``tol``: stop once the largest pseudo-gradient norm is below it.

    Returns a :class:`Path` with the final images, their losses (re-evaluated on the
    final chain), history (``step``, ``max_loss``, ``argmax``, ``max_force``) and info
    (``climbing_index``, ``steps``, ``converged``).
    """
    _check_endpoints(theta_a, theta_b)
    if images is None:
        if n_images < 3:
            raise ConfigError(f"n_images must be >= 3 (two endpoints + one image), got {n_images}")
        w = torch.linspace(0, 1, n_images, dtype=theta_a.dtype, device=theta_a.device)[:, None]
        images = (1 - w) * theta_a + w * theta_b
    else:
        images = images.detach().clone().to(theta_a)
        if images.dim() != 2 or images.shape[0] < 3:
            raise PathError(f"images must be (K>=3, D), got {tuple(images.shape)}")
        if not (torch.equal(images[0], theta_a) and torch.equal(images[-1], theta_b)):
            raise PathError("images[0] and images[-1] must equal theta_a and theta_b")
    interior = images[1:-1].clone()
    opt = _TensorOptimizer(optimizer, lr, momentum=momentum, weight_decay=weight_decay)
    stream = _batch_stream(batches)
    rows, climb_idx, converged, step = [], None, False, 0
    for step in range(steps):
        chain = torch.cat([theta_a[None], interior, theta_b[None]])
        losses, grads = _loss_and_grad(loss_fn, chain, next(stream))
        if not torch.isfinite(losses).all():
            raise PathError(f"loss is not finite at step {step} of NEB (lr={lr} too large?)")
        climb_idx = (int(losses[1:-1].argmax()) + 1) if climbing and step >= climb_after else None
        force = neb_forces(chain, losses, grads, spring=spring, climbing_index=climb_idx,
                           tangent=tangent)
        fmax = float(force.norm(dim=1).max())
        if step % record_every == 0:
            rows.append({"step": step, "max_loss": float(losses.max()),
                         "argmax": int(losses.argmax()), "max_force": fmax})
        if tol is not None and fmax < tol and (not climbing or climb_idx is not None):
            converged = True
            break
        opt.step(interior, force.to(interior.dtype))
        if spring is None:
            chain = torch.cat([theta_a[None], interior, theta_b[None]])
            fixed = () if climb_idx is None else (climb_idx,)
            interior = respace(chain, fixed=fixed)[1:-1]
    chain = torch.cat([theta_a[None], interior, theta_b[None]])
    with torch.no_grad():
        losses = _call_loss(loss_fn, chain, next(stream)).detach()
    if climbing and climb_idx is None:
        climb_idx = int(losses[1:-1].argmax()) + 1
    return Path(images=chain, losses=losses, history=pd.DataFrame(rows),
                info={"kind": "neb", "climbing_index": climb_idx, "steps": step + 1,
                      "converged": converged})


# --------------------------------------------------------------------------------------
# AutoNEB
# --------------------------------------------------------------------------------------

AUTONEB_REFERENCE: dict = dict(
    cycles=14,
    steps=(1000,) * 4 + (2000,) * 2 + (1000,) * 8,
    lr_schedule=(0.1,) * 6 + (0.01,) * 4 + (0.001,) * 4,
    optimizer="sgd", momentum=0.9, spring=None, n_initial=5, n_insert_eval=9,
    insert_threshold=0.1, max_insert_per_cycle=2, max_images=31, batch_size=512,
)
"""The shipped AutoNEB schedule of Draxler et al. (configs/cifar10-resnet20.yaml of
PyTorch-AutoNEB): 3 equally spaced pivots first (5 with the endpoints), 4 cycles of 1000
steps and 2 of 2000 at lr 0.1, 4 x 1000 at 0.01, 4 x 1000 at 0.001, SGD with momentum
(0.9 assumed), infinite spring (respacing), insertion of up to 2 pivots per cycle where the
score exceeds 0.1 (9 points per gap), at most 31 pivots, minibatches of 512."""


def insert_images(loss_fn: Callable, images: Tensor, *, n_insert_eval: int = 9,
                  insert_threshold: float = 0.1, max_insert: int = 2,
                  max_images: int | None = None, batch=None, chunk_size: int | None = None) -> tuple[Tensor, pd.DataFrame]:
    """The AutoNEB insertion rule. Returns the new chain ``(K', D)`` and a per-gap table.

    Between each pair of neighbouring images, ``n_insert_eval`` points at
    ``alpha = j / (n_insert_eval + 1)`` are evaluated together with the images (all in one
    batched call, so a minibatch-drawing loss sees one minibatch; or ``chunk_size`` points
    per call). A point's excess is its loss minus the straight line
    between the two images' losses; a gap's score is its largest excess divided by the
    range (max - min) of the image losses. A new image goes to the worst point of each of
    the ``max_insert`` highest-scoring gaps whose score exceeds ``insert_threshold``
    (never beyond ``max_images`` images). Table columns: ``gap``, ``score``, ``alpha``,
    ``inserted``.
    """
    k, d = images.shape
    alphas = torch.linspace(0, 1, n_insert_eval + 2, dtype=images.dtype,
                            device=images.device)[1:-1]
    a = images[:-1, None, :]
    b = images[1:, None, :]
    pts = ((1 - alphas)[None, :, None] * a + alphas[None, :, None] * b).reshape(-1, d)
    allp = torch.cat([images, pts])
    with torch.no_grad():
        cs = allp.shape[0] if chunk_size is None else chunk_size
        vals = torch.cat([_call_loss(loss_fn, c, batch) for c in torch.split(allp, cs)])
    losses, dense = vals[:k], vals[k:].view(k - 1, n_insert_eval)
    line = (1 - alphas)[None] * losses[:-1, None] + alphas[None] * losses[1:, None]
    excess = dense - line
    rng = float(losses.max() - losses.min())
    scores = excess / (rng + 1e-12)
    best, where = scores.max(dim=1)
    room = max_insert if max_images is None else min(max_insert, max_images - k)
    order = torch.argsort(best, descending=True)[:max(room, 0)]
    chosen = {int(g) for g in order if float(best[g]) > insert_threshold}
    new = []
    for g in range(k - 1):
        new.append(images[g])
        if g in chosen:
            al = alphas[where[g]]
            new.append((1 - al) * images[g] + al * images[g + 1])
    new.append(images[-1])
    table = pd.DataFrame({"gap": range(k - 1), "score": best.double().cpu().numpy(),
                          "alpha": alphas[where].double().cpu().numpy(),
                          "inserted": [g in chosen for g in range(k - 1)]})
    return torch.stack(new), table


def _per_cycle(value, cycles: int, name: str) -> list:
    if isinstance(value, (int, float)):
        return [value] * cycles
    if callable(value):
        return [value(c) for c in range(cycles)]
    value = list(value)
    if len(value) != cycles:
        raise ConfigError(f"{name} has {len(value)} entries but cycles={cycles}")
    return value


def auto_neb(loss_fn: Callable, theta_a: Tensor, theta_b: Tensor, *, cycles: int = 14,
             steps=1000, lr_schedule=0.1, optimizer: str = "sgd", momentum: float = 0.9,
             weight_decay: float = 0.0, spring: float | None = None, n_initial: int = 5,
             n_insert_eval: int = 9, insert_threshold: float = 0.1,
             max_insert_per_cycle: int = 2, max_images: int = 31, climbing: bool = False,
             tangent: str = "improved", batches: Iterable | None = None,
             batch_size: int | None = None, eval_fn: Callable | None = None,
             chunk_size: int | None = None) -> Path:
    """AutoNEB: cycles of :func:`neb` with image insertion in between.

    The chain starts with ``n_initial`` evenly spaced images on the straight line
    (endpoints included). Cycle c runs ``steps[c]`` NEB steps at learning rate
    ``lr_schedule[c]`` (ints/floats apply to every cycle; sequences have one entry per
    cycle; callables map the cycle index); after every cycle but the last,
    :func:`insert_images` adds up to ``max_insert_per_cycle`` images (evaluated with
    ``eval_fn``, default ``loss_fn``). ``batch_size``: minibatch size for a loss made by
    :func:`~topoland.landscape.network_losses.network_loss` (it must have ``with_batch_size``).
    ``climbing`` applies to the last cycle only. Use ``**AUTONEB_REFERENCE`` for the
    reference schedule.

    Returns a :class:`Path`; ``history`` has a ``cycle`` column, ``info["insertions"]``
    one insertion table per cycle.
    """
    _check_endpoints(theta_a, theta_b)
    if batch_size is not None:
        if not hasattr(loss_fn, "with_batch_size"):
            raise ConfigError("batch_size was given but loss_fn cannot draw minibatches "
                              "(make it with network_loss, or pass batches=)")
        loss_fn = loss_fn.with_batch_size(batch_size)
    if n_initial < 3 or n_initial > max_images:
        raise ConfigError(f"n_initial must be in [3, max_images={max_images}], got {n_initial}")
    steps_c = _per_cycle(steps, cycles, "steps")
    lr_c = _per_cycle(lr_schedule, cycles, "lr_schedule")
    ev = loss_fn if eval_fn is None else eval_fn
    stream = _batch_stream(batches)
    w = torch.linspace(0, 1, n_initial, dtype=theta_a.dtype, device=theta_a.device)[:, None]
    images = (1 - w) * theta_a + w * theta_b
    hist, tables, path = [], [], None
    for c in range(cycles):
        path = neb(loss_fn, theta_a, theta_b, images=images, steps=int(steps_c[c]),
                   lr=float(lr_c[c]), optimizer=optimizer, momentum=momentum,
                   weight_decay=weight_decay, spring=spring,
                   climbing=climbing and c == cycles - 1, tangent=tangent,
                   batches=None if batches is None else stream)
        h = path.history.copy()
        h.insert(0, "cycle", c)
        h["n_images"] = path.images.shape[0]
        hist.append(h)
        images = path.images
        if c < cycles - 1 and images.shape[0] < max_images:
            images, table = insert_images(
                ev, images, n_insert_eval=n_insert_eval, insert_threshold=insert_threshold,
                max_insert=max_insert_per_cycle, max_images=max_images,
                batch=None if batches is None else next(stream), chunk_size=chunk_size)
            table.insert(0, "cycle", c)
            tables.append(table)
    return Path(images=path.images, losses=path.losses,
                history=pd.concat(hist, ignore_index=True),
                info={"kind": "autoneb", "cycles": cycles, "insertions": tables,
                      "climbing_index": path.info["climbing_index"]})
