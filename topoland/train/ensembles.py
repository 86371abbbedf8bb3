"""Fast geometric ensembling (Garipov et al. 2018): snapshots along a cyclic learning rate.

From a trained minimum, SGD runs ``cycles`` cycles of ``cycle_epochs`` epochs each; within a
cycle the learning rate goes from ``lr1`` down to ``lr2`` at the middle and back up
(``"triangular"``: linearly; ``"cosine"``: ``lr2 + (lr1 - lr2) (1 + cos 2 pi t) / 2``), with
``t in [0, 1)`` the position of the iteration in its cycle. A snapshot is taken after the
iteration with the lowest rate of each cycle. The SGD objective is the mean of ``loss=`` (a
name of :data:`topoland.nets.losses.LOSSES`, default cross-entropy, or a per-sample callable
``(output, target) -> (N,)``). For a classification the ensemble predicts the average of the
members' softmax probabilities (:func:`member_probabilities`); :func:`ensemble_curve` tabulates
its accuracy against the number of members.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from topoland import checks
from topoland.data import DataSplits, as_pair, augment_batch, kind_of, minibatch_order
from topoland.declare import Param, declare
from topoland.errors import TopolandError
from topoland.nets.losses import mean_loss, resolve_loss
from topoland.nets.metrics import prepare_target
from topoland.train.optim import update_bn
from topoland.nets.functional import functional_logits
from topoland.nets.params import flatten, get_buffers, has_batchnorm, param_names, stack, unflatten
from topoland.utils import make_generator, resolve_device

__all__ = ["EnsembleError", "FGEResult", "cyclic_lr", "fast_geometric_ensemble", "member_probabilities",
           "ensemble_curve"]

_SCHEDULES = ("triangular", "cosine")


class EnsembleError(TopolandError):
    """An ensembling option or input is invalid; the message names the culprit."""


def cyclic_lr(t: float, lr1: float, lr2: float, schedule: str = "triangular") -> float:
    """Learning rate at position ``t`` in ``[0, 1]`` of a cycle: ``lr1`` at 0 and 1, ``lr2`` at 0.5."""
    if schedule == "triangular":
        return (1 - 2 * t) * lr1 + 2 * t * lr2 if t <= 0.5 else (2 - 2 * t) * lr2 + (2 * t - 1) * lr1
    if schedule == "cosine":
        return lr2 + (lr1 - lr2) * (1 + math.cos(2 * math.pi * t)) / 2
    raise EnsembleError(f"schedule must be one of {_SCHEDULES}, got {schedule!r}")


@dataclass
class FGEResult:
    """Snapshots of :func:`fast_geometric_ensemble`.

    ``snapshots``: ``(M, D)`` float32 flat parameters (param_names order); ``buffers``: stacked
    ``{name: (M, ...)}`` (BN statistics per member) or ``{}``; ``history``: one row per
    iteration (cycle, iteration, lr, loss (the minibatch's mean loss, in its units), snapshot flag).
    """

    snapshots: Tensor
    buffers: dict[str, Tensor]
    history: pd.DataFrame


@declare({
    "cycles": Param((int,), 4, checks.pos, "FGE: cycles of the cyclic learning rate (one snapshot each)"),
    "cycle_epochs": Param((int,), 2, checks.pos, "FGE: epochs per cycle"),
    "lr1": Param((int, float), 0.05, checks.pos, "FGE: highest learning rate (cycle start and end)"),
    "lr2": Param((int, float), 5e-4, checks.pos, "FGE: lowest learning rate (mid-cycle, where the snapshot is taken)"),
    "schedule": Param((str,), "triangular", checks.one_of("triangular", "cosine"), "FGE: shape of each cycle"),
    "batch_size": Param((int,), 128, checks.pos, "FGE: minibatch size"),
    "momentum": Param((int, float), 0.9, checks.frac, "FGE: SGD momentum"),
    "weight_decay": Param((int, float), 5e-4, checks.nonneg, "FGE: L2 weight decay"),
})
def fast_geometric_ensemble(model: nn.Module, data, *, cycles: int = 4, cycle_epochs: int = 2,
                            lr1: float = 0.05, lr2: float = 5e-4, schedule: str = "triangular",
                            momentum: float = 0.9, weight_decay: float = 5e-4, batch_size: int = 128,
                            augment: bool = False, bn: str = "recompute", seed: int = 0,
                            loss="cross_entropy", device="auto") -> FGEResult:
    """Collect ``cycles`` snapshots around the minimum held by ``model`` (trained in place).

    data: only its training split is used: a DataSplits, a mapping of splits, or one ``(x, y)``
    pair / map-style Dataset (:func:`topoland.data.as_pair`); targets int64 class indices or
    float regression targets. loss: a name of LOSSES or a per-sample callable, checked once on
    the model's outputs for 2 samples (a mismatch names both shapes); SGD minimises its mean.

    bn: "recompute" (BN statistics of every snapshot recomputed on the training inputs, as
    for SWA) or "running" (the running statistics at snapshot time). ``seed`` drives the
    minibatch order and augmentation. Returns :class:`FGEResult`; the model is left at the
    last iterate in eval mode.
    """
    for name, ok in [("cycles", cycles >= 1), ("cycle_epochs", cycle_epochs >= 1), ("lr1", lr1 > 0),
                     ("lr2", 0 < lr2 <= lr1), ("batch_size", batch_size >= 1)]:
        if not ok:
            raise EnsembleError(f"fast_geometric_ensemble {name} is out of range: {locals()[name]!r}")
    if schedule not in _SCHEDULES:
        raise EnsembleError(f"schedule must be one of {_SCHEDULES}, got {schedule!r}")
    if bn not in ("recompute", "running"):
        raise EnsembleError(f"bn must be 'recompute' or 'running', got {bn!r}")
    dev = resolve_device(device)
    model.to(dev)
    x, y = as_pair(data, "train", what="fast_geometric_ensemble data")
    kind = data.kind if isinstance(data, DataSplits) else kind_of(x)
    loss_name, _ = resolve_loss(loss)
    y = prepare_target(loss_name, y)
    x, y = x.to(dev), y.to(dev)
    was = [(m, m.training) for m in model.modules()]
    model.eval()
    with torch.no_grad():
        out2 = model(x[:2])
    for m, f in was:
        m.training = f
    loss_name, loss_fn = resolve_loss(loss, output=out2, target=y[:2])
    g = make_generator(seed)
    has_bn = has_batchnorm(model)
    n_batches = len(minibatch_order(len(y), batch_size, make_generator(0)))
    if has_bn and len(y) % batch_size == 1:
        raise EnsembleError(f"batch_size {batch_size} leaves a last batch of one sample; BN cannot train on it")
    per_cycle = n_batches * cycle_epochs
    lrs = [cyclic_lr(i / per_cycle, lr1, lr2, schedule) for i in range(per_cycle)]
    snap_at = int(np.argmin(lrs))
    opt = torch.optim.SGD(model.parameters(), lr=lr1, momentum=momentum, weight_decay=weight_decay)
    names = param_names(model)
    snaps, bufs, rows = [], [], []
    model.train()
    for c in range(cycles):
        i = 0
        for _ in range(cycle_epochs):
            for idx in minibatch_order(len(y), batch_size, g):
                idx = idx.to(dev)
                xb, yb = x[idx], y[idx]
                if augment:
                    xb = augment_batch(xb, kind, g)
                for group in opt.param_groups:
                    group["lr"] = lrs[i]
                obj = mean_loss(loss_name, loss_fn, model(xb), yb)
                if not bool(torch.isfinite(obj)):
                    raise EnsembleError(f"fast_geometric_ensemble diverged in cycle {c} (lr1={lr1} too large?)")
                opt.zero_grad(set_to_none=True)
                obj.backward()
                opt.step()
                snap = i == snap_at
                if snap:
                    snaps.append(flatten({n: p.detach() for n, p in model.named_parameters()}, names).float().cpu())
                    bufs.append({k: v.cpu() for k, v in get_buffers(model).items()})
                rows.append({"cycle": c, "iteration": i, "lr": lrs[i], "loss": float(obj.detach()), "snapshot": snap})
                i += 1
    model.eval()
    buffers = stack(bufs) if bufs and bufs[0] else {}
    if has_bn and bn == "recompute":
        work = copy.deepcopy(model)
        wp = dict(work.named_parameters())
        new = []
        for m in range(len(snaps)):
            with torch.no_grad():
                for n, t in unflatten(snaps[m], work, names).items():
                    wp[n].copy_(t.to(dev))
            update_bn(work, x, batch_size=batch_size, device=dev)
            new.append({k: v.cpu() for k, v in get_buffers(work).items()})
        buffers = stack(new)
    return FGEResult(snapshots=torch.stack(snaps), buffers=buffers, history=pd.DataFrame(rows))


@torch.no_grad()
def member_probabilities(model: nn.Module, snapshots: Tensor, x: Tensor, *, buffers: dict | None = None,
                         batch_size: int = 1024, device="auto") -> Tensor:
    """Softmax outputs of every member, batched over members (eval mode).

    snapshots: ``(M, D)`` flat parameters; buffers: stacked ``{name: (M, ...)}`` or None (the
    model's); x: ``(N, ...)``. Returns ``(M, N, C)`` float32 probabilities on the CPU.
    """
    dev = resolve_device(device)
    params = {k: v.to(dev) for k, v in unflatten(snapshots.to(torch.float32), model).items()}
    bufs = None if not buffers else {k: v.to(dev) for k, v in buffers.items()}
    model.to(dev)
    out = []
    for i in range(0, len(x), batch_size):
        logits = functional_logits(model, params, bufs, x[i:i + batch_size].to(dev))
        out.append(torch.softmax(logits, -1).cpu())
    return torch.cat(out, 1)


@torch.no_grad()
def _member_probabilities_loop(model, snapshots, x, *, buffers=None):
    """Reference for :func:`member_probabilities`: load_state_dict and forward, member by member."""
    m = copy.deepcopy(model).cpu().eval()
    names = param_names(m)
    out = []
    for j in range(len(snapshots)):
        sd = m.state_dict()
        sd.update(unflatten(snapshots[j], m, names))
        if buffers:
            sd.update({k: v[j] for k, v in buffers.items()})
        m.load_state_dict(sd)
        out.append(torch.softmax(m(x), -1))
    return torch.stack(out)


def ensemble_curve(probs: Tensor, y: Tensor) -> pd.DataFrame:
    """Ensemble quality against the number of members (members in snapshot order).

    probs: ``(M, N, C)`` member probabilities; y: ``(N,)`` labels. Row m (members = m + 1):
    ``ensemble_acc`` and ``ensemble_nll`` (mean -log of the averaged probability of the label,
    nats) of the first m + 1 members, ``member_acc`` of member m alone, ``mean_member_acc`` of
    the first m + 1.
    """
    if probs.dim() != 3 or probs.shape[1] != len(y):
        raise EnsembleError(f"probs must be (M, N, C) with N = len(y) = {len(y)}, got {tuple(probs.shape)}")
    p = probs.double()
    y = y.long().cpu()
    member_acc = (p.argmax(-1) == y).double().mean(1)
    cum = p.cumsum(0) / torch.arange(1, len(p) + 1, dtype=torch.float64)[:, None, None]
    ens_acc = (cum.argmax(-1) == y).double().mean(1)
    nll = -torch.log(cum.gather(2, y.expand(len(p), -1)[..., None]).squeeze(-1).clamp_min(1e-300)).mean(1)
    mean_member = member_acc.cumsum(0) / torch.arange(1, len(p) + 1, dtype=torch.float64)
    return pd.DataFrame({"members": np.arange(1, len(p) + 1), "ensemble_acc": ens_acc.numpy(),
                         "ensemble_nll": nll.numpy(), "member_acc": member_acc.numpy(),
                         "mean_member_acc": mean_member.numpy()})
