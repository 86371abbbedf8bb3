"""Jump-and-retrain sampling of the low-loss region around a minimum (Horoi et al. 2022).

From a minimum θ* the sampler jumps to ``θ* + step · d_k`` for every direction ``d_k`` (one
filter-normalized Gaussian direction per direction seed, reused for every step size) and
retrains each jump with a fresh SGD (momentum, weight decay, no schedule). Every trajectory is
recorded at its jump point (before any update) and after every epoch (optionally ``k`` times
per epoch): train/val/test loss and accuracy in eval mode, and the parameters.

Batched path (default): all J = directions x steps jumps advance together. Their parameters
and BN buffers are stacked ``(J, ...)``; one ``vmap``-ed ``functional_call`` computes the logits
of every jump on the shared minibatch, and one backward of ``sum_j L_j`` gives every jump's own
gradient (the jumps do not interact). SGD is applied to the stacked tensors exactly as
``torch.optim.SGD`` does it (one fused kernel per tensor while every trajectory is active).
Plain MLPs (Flatten/Linear/ReLU, no BN) skip ``vmap``: a hand-batched ``baddbmm`` chain with
fused biases computes the same logits faster (:func:`_mlp_chain`). The sequential path
(``batched=False``) is the reference: a plain ``nn.Module`` + ``torch.optim.SGD`` per jump,
one after another.

Data stream: one CPU generator per minimum (seeded from ``seed``) draws the minibatch order
and augmentation; every jump sees the same stream, so the batched and sequential samplers see
identical minibatches.

Divergence: a trajectory whose training minibatch loss or recorded eval loss is NaN or
infinite is marked diverged and frozen: the offending update is not applied (parameters, SGD
momentum and BN running statistics keep their values from before that step) and it never
updates again; the others go on.

Sample order: ``sample_id = trajectory * R + record`` (trajectory-major), R = 1 + epochs · k,
trajectory ``t = direction * n_steps + step_index``.
"""
from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.nn.modules.batchnorm import _BatchNorm

from topoland.data import augment_batch, minibatch_order
from topoland.nets.directions import as_flat, filter_normalized_direction
from topoland.errors import ConfigError, StoreError
from topoland.nets.params import flatten, param_names, unflatten
from topoland.utils import make_generator, resolve_device

__all__ = [
    "SampleResult",
    "STORAGE_POLICIES",
    "TABLE_COLUMNS",
    "jump_and_retrain",
    "direction_seeds",
    "data_seed",
    "random_projection",
    "save_samples",
    "load_samples",
    "trajectory_features",
]

STORAGE_POLICIES = ("full", "half", "sketch")
TABLE_COLUMNS = ("sample_id", "trajectory", "direction", "step", "epoch", "train_loss", "train_acc",
                 "val_loss", "val_acc", "test_loss", "test_acc", "diverged")
_SPLITS = ("train", "val", "test")
_TAG_DIRECTION, _TAG_DATA, _TAG_SKETCH = 1, 2, 3
_FAST_MLP = True  # hand-batched forward for plain MLPs (tests switch it off to compare)
_CPU_EVAL_FLOATS = 2 ** 18  # activations per eval chunk of the CPU MLP fast path (1 MiB)
_PROJECTION_BLOCK = 65536  # rows of the projection drawn per generator: fixes R whatever the memory


@dataclass
class SampleResult:
    """Trajectories sampled around one minimum.

    table: one row per snapshot (columns :data:`TABLE_COLUMNS`, ordered by ``sample_id``).
    params: ``(N, D)`` float32 (``full``) or float16 (``half``) snapshots, row = sample_id;
    None for ``sketch``. gram: ``(N, N)`` float64 inner products of the float32 snapshots
    (``sketch`` only). projection: ``(N, r)`` float32, snapshots times
    :func:`random_projection` ``(D, r)`` (``sketch`` only). theta_star: ``(D,)`` float32;
    directions: ``(n_dir, D)`` float32; config: the sampler's settings and derived seeds.
    """

    table: pd.DataFrame
    params: Tensor | None
    gram: Tensor | None
    projection: Tensor | None
    theta_star: Tensor
    directions: Tensor
    config: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- seeds


def _derived(seed: int, tag: int, index: int = 0) -> int:
    return int(np.random.SeedSequence([int(seed), tag, int(index)]).generate_state(1, np.uint64)[0] >> 1)


def direction_seeds(seed: int, n: int) -> list[int]:
    """The ``n`` direction seeds derived from a sampler ``seed`` (independent streams)."""
    return [_derived(seed, _TAG_DIRECTION, k) for k in range(int(n))]


def data_seed(seed: int) -> int:
    """Seed of the minibatch-order/augmentation generator derived from a sampler ``seed``."""
    return _derived(seed, _TAG_DATA)


def random_projection(d: int, r: int, seed: int, *, rows: slice | None = None,
                      device="cpu") -> Tensor:
    """The fixed sketch projection ``(D, r)`` float32 (or its ``rows``): N(0, 1/r) entries.

    Drawn in blocks of 65,536 rows, each from its own CPU generator seeded by ``(seed, block)``,
    so any row range can be regenerated without the rest and results never depend on memory.
    ``E[|xR|^2] = |x|^2`` (Johnson-Lindenstrauss).
    """
    rows = slice(0, d) if rows is None else rows
    start, stop = rows.start or 0, d if rows.stop is None else min(rows.stop, d)
    parts = []
    for b in range(start // _PROJECTION_BLOCK, (max(stop, 1) - 1) // _PROJECTION_BLOCK + 1):
        lo = b * _PROJECTION_BLOCK
        n = min(_PROJECTION_BLOCK, d - lo)
        blk = torch.randn(n, int(r), generator=make_generator(_derived(seed, _TAG_SKETCH, b)))
        parts.append(blk[max(start - lo, 0):min(stop - lo, n)])
    out = torch.cat(parts) if parts else torch.zeros(0, int(r))
    return out.mul_(1.0 / math.sqrt(r)).to(device)


# --------------------------------------------------------------------------- argument checks


def _check_args(storage, steps, directions, epochs, records_per_epoch, lr, momentum,
                weight_decay, batch_size, sketch_dim, n_train):
    if storage not in STORAGE_POLICIES:
        raise ConfigError(f"storage must be one of {STORAGE_POLICIES}, got {storage!r}")
    if len(steps) == 0 or not all(math.isfinite(float(s)) for s in steps):
        raise ConfigError(f"steps must be a non-empty list of finite numbers, got {steps!r}")
    if isinstance(directions, int) and directions < 1:
        raise ConfigError(f"directions must be >= 1, got {directions!r}")
    for key, val in (("epochs", epochs), ("records_per_epoch", records_per_epoch),
                     ("batch_size", batch_size), ("sketch_dim", sketch_dim)):
        if int(val) != val or val < (0 if key == "epochs" else 1):
            raise ConfigError(f"{key} must be a {'non-negative' if key == 'epochs' else 'positive'} "
                              f"integer, got {val!r}")
    for key, val in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
        if not (math.isfinite(val) and val >= 0):
            raise ConfigError(f"{key} must be a finite number >= 0, got {val!r}")
    n_batches = math.ceil(n_train / batch_size)
    if records_per_epoch > n_batches:
        raise ConfigError(f"records_per_epoch={records_per_epoch} exceeds the {n_batches} "
                          f"minibatches of an epoch")


def _check_model(model: nn.Module):
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            raise ConfigError(f"module {name!r} is dropout with p={m.p}: jump retrains need "
                              f"deterministic training steps; build the model with dropout=0")
        if isinstance(m, _BatchNorm) and m.track_running_stats and m.momentum is None:
            raise ConfigError(f"BN module {name!r} has momentum=None (cumulative average), which "
                              f"the batched sampler does not support; set a numeric momentum")


def _record_positions(n_batches: int, k: int) -> list[int]:
    """Batch counts (1-based, within an epoch) after which a record is taken."""
    return [round(i * n_batches / k) for i in range(1, k + 1)]


# --------------------------------------------------------------------------- storage


class _Recorder:
    """Collects one (J, D) snapshot round per record and the metrics."""

    def __init__(self, storage, n_traj, n_rec, d, device, sketch_dim, sketch_seed, sketch_buffer):
        self.storage, self.J, self.R, self.D = storage, n_traj, n_rec, d
        self.sketch_dim, self.sketch_seed, self.device = sketch_dim, sketch_seed, device
        if storage == "sketch":
            where = device if sketch_buffer == "device" else torch.device("cpu")
            self.snap = torch.empty(n_traj, n_rec, d, dtype=torch.float32, device=where)
        else:
            dtype = torch.float32 if storage == "full" else torch.float16
            self.snap = torch.empty(n_traj, n_rec, d, dtype=dtype)
        self.metrics = {f"{s}_{m}": np.full((n_traj, n_rec), np.nan)
                        for s in _SPLITS for m in ("loss", "acc")}
        self.diverged = np.zeros((n_traj, n_rec), dtype=bool)

    def snapshot(self, r: int, flat: Tensor, traj: slice | int = slice(None)):
        self.snap[traj, r] = flat.detach().to(self.snap.device, self.snap.dtype)

    def finish(self):
        n = self.J * self.R
        if self.storage != "sketch":
            return self.snap.reshape(n, self.D), None, None
        s = self.snap.reshape(n, self.D)
        gram = torch.zeros(n, n, dtype=torch.float64, device=self.device)
        proj = torch.zeros(n, self.sketch_dim, dtype=torch.float64, device=self.device)
        for lo in range(0, self.D, _PROJECTION_BLOCK):
            blk = s[:, lo:lo + _PROJECTION_BLOCK].to(self.device, torch.float64)
            gram += blk @ blk.T
            rmat = random_projection(self.D, self.sketch_dim, self.sketch_seed,
                                     rows=slice(lo, lo + _PROJECTION_BLOCK), device=self.device)
            proj += blk @ rmat.double()
        self.snap = None  # the snapshots are not part of a sketch result
        return None, gram.cpu(), proj.float().cpu()


# --------------------------------------------------------------------------- evaluation


def _per_point_ce(logits: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy ``(B, n)`` of logits ``(B, n, C)`` against targets ``(n,)`` shared by all B."""
    b, n, c = logits.shape
    return F.cross_entropy(logits.reshape(b * n, c), y.expand(b, n).reshape(b * n),
                           reduction="none").view(b, n)


def _accumulate(logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Per-point summed cross-entropy (float64) and correct counts for logits ``(B, n, C)``."""
    b, n, c = logits.shape
    ce = _per_point_ce(logits, y)
    correct = (logits.argmax(-1) == y).sum(1)
    return ce.double().sum(1), correct


@torch.no_grad()
def _eval_batched(fwd, params, buffers, splits, eval_batch_size) -> dict[str, Tensor]:
    out = {}
    for name, (x, y) in splits.items():
        loss, correct = 0.0, 0
        for lo in range(0, x.shape[0], eval_batch_size):
            l_, c_ = _accumulate(fwd(params, buffers, x[lo:lo + eval_batch_size]),
                                 y[lo:lo + eval_batch_size])
            loss, correct = loss + l_, correct + c_
        out[f"{name}_loss"] = loss / x.shape[0]
        out[f"{name}_acc"] = correct.double() / x.shape[0]
    return out


@torch.no_grad()
def _eval_module(model: nn.Module, splits, eval_batch_size) -> dict[str, float]:
    model.eval()
    out = {}
    for name, (x, y) in splits.items():
        loss, correct = 0.0, 0
        for lo in range(0, x.shape[0], eval_batch_size):
            l_, c_ = _accumulate(model(x[lo:lo + eval_batch_size])[None], y[lo:lo + eval_batch_size])
            loss, correct = loss + l_, correct + c_
        out[f"{name}_loss"] = float(loss[0]) / x.shape[0]
        out[f"{name}_acc"] = float(correct[0]) / x.shape[0]
    return out


def _nonfinite(metrics: Mapping) -> Tensor | bool:
    bad = None
    for s in _SPLITS:
        v = metrics[f"{s}_loss"]
        b = ~torch.isfinite(v) if isinstance(v, Tensor) else not math.isfinite(v)
        bad = b if bad is None else bad | b
    return bad


# --------------------------------------------------------------------------- data stream


def _epoch_batches(x: Tensor, y: Tensor, kind: str, batch_size: int, gen: torch.Generator,
                   augment: bool, device):
    """One epoch of ``(x, y)`` minibatches on ``device``; draws from ``gen`` in a fixed order."""
    for idx in minibatch_order(x.shape[0], batch_size, gen):
        xb = x[idx]
        if augment:
            xb = augment_batch(xb, kind, gen)
        yield xb.to(device, non_blocking=True), y[idx].to(device, non_blocking=True)


# --------------------------------------------------------------------------- fast path for MLPs


def _mlp_chain(model: nn.Module) -> list[tuple[str, str | None]] | None:
    """The layers of a plain MLP as ``[("linear", name) | ("relu", None) | ("flatten", None)]``.

    Only models whose forward is known to apply their layers in order qualify: an exact
    ``nn.Sequential`` or ``topoland.nets.models.MLP`` (its ``net``), nested exact ``nn.Sequential``s,
    leaves exactly ``nn.Linear`` / ``nn.ReLU`` / ``nn.Identity`` / ``nn.Flatten(1, -1)`` (the
    latter only before the first Linear), no buffers. Anything else returns None (vmap path).
    """
    from topoland.nets.models import MLP

    if type(model) is MLP:
        root, prefix = model.net, "net."
    elif type(model) is nn.Sequential:
        root, prefix = model, ""
    else:
        return None
    if any(True for _ in model.buffers()):
        return None
    chain: list[tuple[str, str | None]] = []

    def walk(seq: nn.Sequential, pre: str) -> bool:
        for key, m in seq.named_children():
            if type(m) is nn.Sequential:
                if not walk(m, f"{pre}{key}."):
                    return False
            elif type(m) is nn.Linear:
                chain.append(("linear", f"{pre}{key}"))
            elif type(m) is nn.ReLU:
                if not chain or chain[-1][0] != "relu":  # idempotent; relu_ twice breaks autograd
                    chain.append(("relu", None))
            elif type(m) is nn.Identity:
                continue
            elif type(m) is nn.Flatten and (m.start_dim, m.end_dim) == (1, -1) and not any(
                    op == "linear" for op, _ in chain):
                chain.append(("flatten", None))
            else:
                return False
        return True

    if not walk(root, prefix) or not any(op == "linear" for op, _ in chain):
        return None
    linear_params = {f"{n}.{w}" for op, n in chain if op == "linear" for w in ("weight", "bias")}
    if any(k not in linear_params for k, _ in model.named_parameters()):
        return None
    return chain


def _mlp_forward(chain: list[tuple[str, str | None]]):
    """``fwd(params, buffers, x) -> (J, n, C)`` for stacked params ``{name: (J, ...)}``.

    Equals ``vmap(functional_call(model))`` up to float rounding, with fewer and larger ops:
    every Linear is one ``baddbmm`` (bias fused; the first one's input ``(n, in)``, shared by
    all jumps, expanded with a stride-0 batch dim), ReLUs act in place on the ``(J, n, ·)``
    activations. (Measured on CPU: faster than vmap's separate bias adds and than one
    ``(n, in) @ (in, J·out)`` GEMM for the first layer, whose output is a strided view.)
    """

    def fwd(params: Mapping[str, Tensor], buffers, x: Tensor) -> Tensor:
        h = x
        for op, name in chain:
            if op == "flatten":
                h = h.reshape(h.shape[0], -1)
            elif op == "relu":
                h = h.relu_() if h.dim() == 3 else h.relu()
            else:
                w, b = params[f"{name}.weight"], params.get(f"{name}.bias")
                if h.dim() == 2:  # the input shared by all jumps: a stride-0 batch dim
                    h = h.expand(w.shape[0], *h.shape)
                h = (torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2)) if b is not None
                     else torch.bmm(h, w.transpose(1, 2)))
        return h

    return fwd


@torch.no_grad()
def _sgd_step(params: list[Tensor], grads: Sequence[Tensor], momentum_buf: list[Tensor],
              first: bool, ok: Tensor | None, lr: float, mom: float, wd: float):
    """``torch.optim.SGD``'s update (no dampening/nesterov) on stacked ``(J, ...)`` tensors.

    momentum_buf: one tensor per parameter (contents ignored when ``first``). ok: ``(J,)``
    bool, the trajectories to update (the others keep their parameters; their momentum may go
    stale, they never resume), or None for all: then one fused kernel per tensor
    (``torch._fused_sgd_``, bit-identical to the for-loop ``SGD`` on CPU, a third of its time).
    """
    if ok is None and params[0].device.type in ("cpu", "cuda"):
        # the fused kernel assumes grads laid out like the (contiguous) params; vmap's may not be
        torch._fused_sgd_(params, [g.contiguous() for g in grads], momentum_buf if mom != 0 else [], weight_decay=wd,
                          momentum=mom, lr=lr, dampening=0.0, nesterov=False, maximize=False,
                          is_first_step=first)
        return
    d_p = torch._foreach_add(grads, params, alpha=wd) if wd != 0 else list(grads)
    if mom != 0:
        if first:
            torch._foreach_copy_(momentum_buf, d_p)
        else:
            torch._foreach_mul_(momentum_buf, mom)
            torch._foreach_add_(momentum_buf, d_p)
        d_p = momentum_buf
    if ok is None:
        torch._foreach_add_(params, d_p, alpha=-lr)
    else:
        for p, u in zip(params, d_p):
            p.copy_(torch.where(ok.reshape(-1, *([1] * (p.dim() - 1))), p.add(u, alpha=-lr), p))


# --------------------------------------------------------------------------- the two samplers


def _run_batched(model, jump_flat, buffers, data, cfg, rec, device, progress):
    names = param_names(model)
    J = jump_flat.shape[0]
    base = copy.deepcopy(model).to(device)
    for p in base.parameters():
        p.requires_grad_(False)
    params = {k: v.clone().contiguous().requires_grad_(True)
              for k, v in unflatten(jump_flat.to(device), base, names).items()}
    plist = list(params.values())
    bufs = {k: v.detach().to(device).unsqueeze(0).repeat(J, *([1] * v.dim())).contiguous()
            for k, v in buffers.items()}
    momentum_buf = [torch.empty_like(p) for p in plist] if cfg["momentum"] != 0 else []
    first_step = True
    active = torch.ones(J, dtype=torch.bool, device=device)
    lr, mom, wd = cfg["lr"], cfg["momentum"], cfg["weight_decay"]

    chain = _mlp_chain(base) if _FAST_MLP else None
    eval_rows = cfg["eval_batch_size"]
    if chain is not None and (chain[0][0] == "flatten" or data.x_train.dim() == 2):
        fwd = _mlp_forward(chain)
        if device.type == "cpu":
            # eval is GEMM-bound; J x rows x width activations that fit in L2 run ~2x faster
            widest = max(params[f"{n}.weight"].shape[1] for op, n in chain if op == "linear")
            eval_rows = max(64, min(eval_rows, _CPU_EVAL_FLOATS // (J * widest)))
    else:
        fwd = vmap(lambda p, b, x: functional_call(base, (p, b), (x,)), in_dims=(0, 0, None))
    splits = {s: tuple(t.to(device) for t in data.split(s)) for s in _SPLITS}

    @torch.no_grad()
    def record(r: int):
        base.eval()
        m = _eval_batched(fwd, params, bufs, splits, eval_rows)
        nonlocal active
        active = active & ~_nonfinite(m)
        rec.snapshot(r, flatten(params, names, stacked=True))
        for k, v in m.items():
            rec.metrics[k][:, r] = v.cpu().numpy()
        rec.diverged[:, r] = (~active).cpu().numpy()

    record(0)
    gen = make_generator(cfg["data_seed"])
    r = 1
    for epoch in range(cfg["epochs"]):
        for i, (xb, yb) in enumerate(_epoch_batches(data.x_train, data.y_train, data.kind,
                                                    cfg["batch_size"], gen, cfg["augment"], device), 1):
            base.train()
            old_bufs = {k: v.clone() for k, v in bufs.items()}
            losses = _per_point_ce(fwd(params, bufs, xb), yb).mean(1)
            ok = active & torch.isfinite(losses.detach())
            grads = torch.autograd.grad(losses.sum(), plist)
            all_ok = bool(ok.all())
            if not all_ok:
                with torch.no_grad():
                    for k, v in bufs.items():
                        v.copy_(torch.where(ok.reshape(J, *([1] * (v.dim() - 1))), v, old_bufs[k]))
            _sgd_step(plist, grads, momentum_buf, first_step, None if all_ok else ok, lr, mom, wd)
            first_step = False
            active = ok
            if i in cfg["positions"]:
                record(r)
                r += 1
        if progress is not None:
            progress((epoch + 1) * J, cfg["epochs"] * J)


def _run_sequential(model, jump_flat, buffers, data, cfg, rec, device, progress):
    """The reference: one plain nn.Module + torch.optim.SGD per jump, one after another."""
    names = param_names(model)
    J = jump_flat.shape[0]
    splits = {s: tuple(t.to(device) for t in data.split(s)) for s in _SPLITS}
    for j in range(J):
        m = copy.deepcopy(model).to(device)
        with torch.no_grad():
            for k, v in unflatten(jump_flat[j].to(device), m, names).items():
                m.get_parameter(k).copy_(v)
            for k, v in buffers.items():
                m.get_buffer(k).copy_(v)
        opt = torch.optim.SGD([m.get_parameter(k) for k in names], lr=cfg["lr"],
                              momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
        active = True

        def record(r: int):
            nonlocal active
            met = _eval_module(m, splits, cfg["eval_batch_size"])
            if _nonfinite(met):
                active = False
            rec.snapshot(r, torch.cat([m.get_parameter(k).detach().reshape(-1) for k in names]), j)
            for k, v in met.items():
                rec.metrics[k][j, r] = v
            rec.diverged[j, r] = not active

        record(0)
        gen = make_generator(cfg["data_seed"])
        r = 1
        for epoch in range(cfg["epochs"]):
            for i, (xb, yb) in enumerate(_epoch_batches(data.x_train, data.y_train, data.kind,
                                                        cfg["batch_size"], gen, cfg["augment"],
                                                        device), 1):
                if active:
                    m.train()
                    saved = {k: b.clone() for k, b in m.named_buffers()}
                    opt.zero_grad()
                    loss = F.cross_entropy(m(xb), yb)
                    if torch.isfinite(loss):
                        loss.backward()
                        opt.step()
                    else:  # diverged: undo BN's running-statistics update, freeze
                        active = False
                        with torch.no_grad():
                            for k, b in saved.items():
                                m.get_buffer(k).copy_(b)
                if i in cfg["positions"]:
                    record(r)
                    r += 1
            if progress is not None:
                progress(j * cfg["epochs"] + epoch + 1, cfg["epochs"] * J)


# --------------------------------------------------------------------------- public entry


def _theta_star(model, params, names) -> Tensor:
    if params is None:
        return torch.cat([model.get_parameter(k).detach().reshape(-1).float().cpu() for k in names])
    if isinstance(params, Tensor):
        if params.dim() != 1:
            raise ConfigError(f"params must be a flat (D,) tensor or a dict, got shape "
                              f"{tuple(params.shape)}")
        unflatten(params, model, names)  # validates D
        return params.detach().float().cpu().clone()
    missing = [k for k in names if k not in params]
    if missing:
        raise ConfigError(f"params is missing the model parameter {missing[0]!r}")
    for k in names:
        if tuple(params[k].shape) != tuple(model.get_parameter(k).shape):
            raise ConfigError(f"params[{k!r}] has shape {tuple(params[k].shape)}, the model "
                              f"{tuple(model.get_parameter(k).shape)}")
    return flatten({k: params[k].detach().float().cpu() for k in names}, names)


def _direction_matrix(model_star, directions, seeds, names, d) -> Tensor:
    if isinstance(directions, int):
        rows = [as_flat({k: v for k, v in filter_normalized_direction(model_star, s).items()
                         if k in names}, model_star) for s in seeds]
        return torch.stack(rows).float().cpu()
    if isinstance(directions, Tensor):
        mat = directions.detach().float().cpu()
        if mat.dim() == 1:
            mat = mat[None]
    else:
        mat = torch.stack([flatten({k: v.detach().float().cpu() for k, v in dct.items()}, names)
                           for dct in directions])
    if mat.dim() != 2 or mat.shape[1] != d:
        raise ConfigError(f"directions must be an int, an (n_dir, D={d}) tensor or a list of "
                          f"parameter dicts; got shape {tuple(mat.shape)}")
    return mat.clone()


def jump_and_retrain(model: nn.Module, data, *, params=None,
                     buffers: Mapping[str, Tensor] | None = None,
                     directions: int | Tensor | Sequence[Mapping[str, Tensor]] = 4,
                     steps: Sequence[float] = (0.25, 0.5, 0.75, 1.0), seed: int = 0,
                     lr: float = 0.001, momentum: float = 0.9, weight_decay: float = 1e-4,
                     batch_size: int = 128, epochs: int = 40, augment: bool = False,
                     records_per_epoch: int = 1, storage: str = "full", sketch_dim: int = 256,
                     sketch_buffer: str = "device", eval_batch_size: int = 1024,
                     device="auto", batched: bool = True,
                     progress: Callable[[int, int], None] | None = None) -> SampleResult:
    """Jump away from the minimum along random directions and retrain every jump.

    model: the architecture; its parameters are θ* unless ``params`` is given (a ``{name:
    tensor}`` dict or a flat ``(D,)`` vector over the trainable parameters in module order);
    its buffers (BN running statistics) are θ*'s unless ``buffers`` is given. The model is not
    modified. data: a :class:`topoland.data.DataSplits`. directions: the number of
    filter-normalized directions (seeds from :func:`direction_seeds`), or explicit directions
    ``(n_dir, D)`` / a list of parameter dicts. Every direction is used with every step:
    J = n_dir x len(steps) trajectories, ``t = direction * len(steps) + step_index``.
    Retraining: SGD(lr, momentum, weight_decay), ``epochs`` passes of minibatches of
    ``batch_size`` (minibatch order and, with ``augment``, augmentation drawn from one
    generator seeded by :func:`data_seed`), train mode. Records: at the jump point (epoch 0) and
    ``records_per_epoch`` times per epoch, metrics in eval mode (loss = mean cross-entropy in
    nats, accuracy in [0, 1]). storage: ``"full"`` (float32 snapshots), ``"half"`` (float16)
    or ``"sketch"`` (Gram matrix + ``sketch_dim``-column random projection; the snapshots are
    held in float32 on ``sketch_buffer`` = "device" | "cpu" during the run and then dropped).
    batched: all jumps in one vmap-ed model (True) or the sequential reference (False).
    progress: called as ``progress(done, total)`` in trajectory-epochs.
    Returns a :class:`SampleResult` with N = J x (1 + epochs x records_per_epoch) snapshots.
    """
    device = resolve_device(device)
    steps = [float(s) for s in steps]
    _check_args(storage, steps, directions, epochs, records_per_epoch, lr, momentum, weight_decay,
                batch_size, sketch_dim, data.x_train.shape[0])
    if sketch_buffer not in ("device", "cpu"):
        raise ConfigError(f"sketch_buffer must be 'device' or 'cpu', got {sketch_buffer!r}")
    _check_model(model)
    names = param_names(model)
    theta_star = _theta_star(model, params, names)
    d = theta_star.numel()
    model_star = copy.deepcopy(model).cpu().float()
    with torch.no_grad():
        for k, v in unflatten(theta_star, model_star, names).items():
            model_star.get_parameter(k).copy_(v)
        if buffers is not None:
            for k, v in buffers.items():
                model_star.get_buffer(k).copy_(v)
    star_buffers = {k: v.detach().clone() for k, v in model_star.named_buffers()}

    n_dir = directions if isinstance(directions, int) else None
    seeds = direction_seeds(seed, n_dir) if n_dir is not None else None
    dirs = _direction_matrix(model_star, directions, seeds, names, d)
    n_dir = dirs.shape[0]
    steps32 = torch.tensor(steps, dtype=torch.float32)
    # jump points θ* + step·d in float32, the same elementwise ops for every path
    jump_flat = theta_star[None] + steps32.repeat(n_dir)[:, None] * dirs.repeat_interleave(len(steps), 0)
    J = jump_flat.shape[0]
    n_batches = math.ceil(data.x_train.shape[0] / batch_size)
    k = int(records_per_epoch)
    n_rec = 1 + int(epochs) * k
    cfg = dict(lr=float(lr), momentum=float(momentum), weight_decay=float(weight_decay),
               batch_size=int(batch_size), epochs=int(epochs), augment=bool(augment),
               records_per_epoch=k, storage=storage, sketch_dim=int(sketch_dim),
               seed=int(seed), data_seed=data_seed(seed), direction_seeds=seeds,
               sketch_seed=_derived(seed, _TAG_SKETCH, 0) if storage == "sketch" else None,
               steps=[float(s) for s in steps32], n_directions=n_dir, n_trajectories=J,
               records_per_trajectory=n_rec, eval_batch_size=int(eval_batch_size),
               batched=bool(batched), dataset=getattr(data, "name", None), n_params=d,
               positions=_record_positions(n_batches, k))
    rec = _Recorder(storage, J, n_rec, d, device, int(sketch_dim), cfg["sketch_seed"], sketch_buffer)
    runner = _run_batched if batched else _run_sequential
    model_run = copy.deepcopy(model_star)
    runner(model_run, jump_flat, star_buffers, data, cfg, rec, device, progress)
    snaps, gram, proj = rec.finish()

    traj = np.repeat(np.arange(J), n_rec)
    epoch_grid = np.concatenate([[0.0], np.arange(1, n_rec) / k])
    table = pd.DataFrame({
        "sample_id": np.arange(J * n_rec),
        "trajectory": traj,
        "direction": traj // len(steps),
        "step": np.asarray(cfg["steps"])[traj % len(steps)],
        "epoch": np.tile(epoch_grid, J),
        **{key: val.reshape(-1) for key, val in rec.metrics.items()},
        "diverged": rec.diverged.reshape(-1),
    })[list(TABLE_COLUMNS)]
    cfg.pop("positions")
    return SampleResult(table=table, params=snaps, gram=gram, projection=proj,
                        theta_star=theta_star, directions=dirs, config=cfg)


# --------------------------------------------------------------------------- distances, features


def _final_rows(table: pd.DataFrame) -> pd.DataFrame:
    return table.sort_values("epoch").groupby("trajectory").tail(1).sort_values("trajectory")


def trajectory_features(table: pd.DataFrame, theta_star: Tensor | None = None,
                        params: Tensor | None = None, gram: Tensor | None = None,
                        loss: str = "val_loss") -> dict[str, float]:
    """Scalar features of a minimum's trajectories (the analysis ``trajectory`` group).

    Always: ``frac_diverged``; over non-diverged trajectories: mean/max final ``loss``,
    mean jump-point ``loss``, ``recovery_ratio_mean`` (mean of final / jump-point loss: 0 =
    fully recovered, 1 = no progress), mean final train/val/test accuracy.
    With ``params`` ``(N, D)`` (rows = sample_id): ``path_length_mean`` (sum of consecutive
    snapshot distances), ``displacement_mean`` (|final - jump|), ``straightness_mean``;
    the same from ``gram`` ``(N, N)`` when params are absent. With ``theta_star`` and params:
    ``return_ratio_mean`` = mean |final - θ*| / |jump - θ*| (< 1: moved back toward θ*).
    Diverged trajectories are excluded from every mean; NaN when none is left.
    """
    if loss not in table.columns:
        raise ConfigError(f"loss column {loss!r} not in the sample table")
    t = table.sort_values("sample_id")
    div = t.groupby("trajectory")["diverged"].any()
    ok_traj = div.index[~div.values]
    first = t[t.epoch == 0].set_index("trajectory")
    last = _final_rows(t).set_index("trajectory")
    f = {"n_trajectories": float(len(div)), "frac_diverged": float(div.mean())}
    nan = float("nan")

    def mean(s):
        return float(s.mean()) if len(s) else nan

    lf, l0 = last.loc[ok_traj, loss], first.loc[ok_traj, loss]
    f["final_loss_mean"] = mean(lf)
    f["final_loss_max"] = float(lf.max()) if len(lf) else nan
    f["jump_loss_mean"] = mean(l0)
    f["recovery_ratio_mean"] = mean(lf / l0)
    for s in _SPLITS:
        f[f"final_{s}_acc_mean"] = mean(last.loc[ok_traj, f"{s}_acc"])

    if params is None and gram is None:
        return f
    lengths, disp, ret = [], [], []
    for tr in ok_traj:
        ids = t.loc[t.trajectory == tr].sort_values("epoch")["sample_id"].to_numpy()
        if params is not None:
            p = params[torch.from_numpy(ids.copy())].double()
            lengths.append(float((p[1:] - p[:-1]).norm(dim=1).sum()))
            disp.append(float((p[-1] - p[0]).norm()))
            if theta_star is not None:
                ts = theta_star.double()
                ret.append(float((p[-1] - ts).norm() / (p[0] - ts).norm()))
        else:
            sel = torch.from_numpy(ids.copy())
            g = gram.double()[sel][:, sel]
            diag = g.diagonal()
            consec = (diag[1:] + diag[:-1] - 2 * g.diagonal(1)).clamp_min(0).sqrt()
            lengths.append(float(consec.sum()))
            disp.append(float((diag[-1] + diag[0] - 2 * g[0, -1]).clamp_min(0).sqrt()))
    f["path_length_mean"] = float(np.mean(lengths)) if lengths else nan
    f["displacement_mean"] = float(np.mean(disp)) if disp else nan
    f["straightness_mean"] = (float(np.mean([a / b for a, b in zip(disp, lengths) if b > 0]))
                              if lengths else nan)
    if ret:
        f["return_ratio_mean"] = float(np.mean(ret))
    return f


# --------------------------------------------------------------------------- storage on disk


def _atomic_write(path: Path, write: Callable[[str], None]):
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_samples(result: SampleResult, directory) -> Path:
    """Write a result to ``directory``: ``samples.csv`` (table), ``arrays.safetensors``
    (theta_star, directions and params or gram + projection) and ``config.json``, each
    atomically (temporary name + rename); ``config.json`` is written last and marks completion."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    arrays = {"theta_star": result.theta_star, "directions": result.directions}
    for key in ("params", "gram", "projection"):
        if getattr(result, key) is not None:
            arrays[key] = getattr(result, key)
    arrays = {k: v.detach().cpu().contiguous() for k, v in arrays.items()}
    _atomic_write(d / "arrays.safetensors", lambda p: save_file(arrays, p))
    _atomic_write(d / "samples.csv", lambda p: result.table.to_csv(p, index=False))
    _atomic_write(d / "config.json",
                  lambda p: Path(p).write_text(json.dumps(result.config, indent=1, sort_keys=True)))
    return d


def load_samples(directory) -> SampleResult:
    """Read a result written by :func:`save_samples`; raises StoreError if incomplete."""
    from safetensors.torch import load_file

    d = Path(directory)
    for name in ("config.json", "arrays.safetensors", "samples.csv"):
        if not (d / name).is_file():
            raise StoreError(f"sample directory {str(d)!r} has no {name}: sampling did not finish")
    arrays = load_file(str(d / "arrays.safetensors"))
    table = pd.read_csv(d / "samples.csv")
    if list(table.columns) != list(TABLE_COLUMNS):
        raise StoreError(f"{str(d / 'samples.csv')!r} has columns {list(table.columns)}, "
                         f"expected {list(TABLE_COLUMNS)}")
    table["diverged"] = table["diverged"].astype(bool)
    return SampleResult(table=table, params=arrays.get("params"), gram=arrays.get("gram"),
                        projection=arrays.get("projection"), theta_star=arrays["theta_star"],
                        directions=arrays["directions"],
                        config=json.loads((d / "config.json").read_text()))
