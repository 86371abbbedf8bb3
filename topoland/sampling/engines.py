"""The two engines of :func:`topoland.sampling.sampler.jump_and_retrain`.

:func:`_run_batched` advances every jump together (stacked parameters, one vmap-ed
``functional_call`` or, for plain MLPs, a hand-batched ``baddbmm`` chain, and ``torch.optim.SGD``'s
update applied to the stacked tensors); :func:`_run_sequential` is the reference, a plain
``nn.Module`` + ``torch.optim.SGD`` per jump. Both record into a
:class:`topoland.sampling.storage._Recorder`; their evaluation, data stream, MLP fast path and
SGD step are here too.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from topoland.data import augment_batch, minibatch_order
from topoland.errors import ConfigError
from topoland.nets import metrics as _metrics
from topoland.nets.losses import mean_loss
from topoland.nets.params import flatten, param_names, unflatten
from topoland.sampling.storage import _SPLITS
from topoland.utils import make_generator

_FAST_MLP = True  # hand-batched forward for plain MLPs (tests switch it off to compare)
_CPU_EVAL_FLOATS = 2 ** 18  # activations per eval chunk of the CPU MLP fast path (1 MiB)


# --------------------------------------------------------------------------- evaluation


def _per_point_ce(logits: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy ``(B, n)`` of logits ``(B, n, C)`` against targets ``(n,)`` shared by all B."""
    b, n, c = logits.shape
    return F.cross_entropy(logits.reshape(b * n, c), y.expand(b, n).reshape(b * n),
                           reduction="none").view(b, n)


class _Loss:
    """The retraining loss of both engines: ``name``, the per-sample ``fn`` (output, target) -> (n,),
    ``with_acc`` (accuracy recorded, else NaN). ``batched(outputs (B, n, ...), y) -> (B, n)``:
    the named cross-entropy by one reshaped call, anything else by ``vmap(fn)``; ``single(output,
    y) -> (n,)`` for the plain-loop reference (no vmap)."""

    def __init__(self, name: str, fn, with_acc: bool, extra=()):
        self.name, self.fn, self.with_acc = name, fn, with_acc
        self.extra = list(extra)  # [(name, metric)]: recorded as <split>_<name>
        self._vmapped = None if name == "cross_entropy" else vmap(fn, in_dims=(0, None))

    def batched(self, outputs: Tensor, y: Tensor) -> Tensor:
        if self._vmapped is None:
            return _per_point_ce(outputs, y)
        try:
            return self._vmapped(outputs, y)
        except Exception as e:  # noqa: BLE001 - one message for any failure under vmap
            raise ConfigError(f"loss {self.name!r} failed under torch.func.vmap ({type(e).__name__}: {e}): "
                              f"the batched sampler needs a vmap-compatible loss (no .item(), no "
                              f"data-dependent Python control flow); pass batched=False to use the "
                              f"plain-loop engine") from e

    def single(self, output: Tensor, y: Tensor) -> Tensor:
        return _per_point_ce(output[None], y)[0] if self._vmapped is None else self.fn(output, y)

    def mean(self, output: Tensor, y: Tensor) -> Tensor:
        return mean_loss(self.name, self.fn, output, y)


_CE = _Loss("cross_entropy", None, True)


def _accumulate(per_point: Tensor, logits: Tensor, y: Tensor, with_acc: bool) -> tuple[Tensor, Tensor]:
    """Per-point summed loss (float64) and correct counts for losses ``(B, n)``, logits ``(B, n, C)``
    (correct counts are NaN without accuracy)."""
    if with_acc:
        correct = (logits.argmax(-1) == y).sum(1)
    else:
        correct = torch.full((logits.shape[0],), float("nan"), dtype=torch.float64, device=logits.device)
    return per_point.double().sum(1), correct


@torch.no_grad()
def _eval_batched(fwd, params, buffers, splits, eval_batch_size, loss: _Loss = _CE) -> dict[str, Tensor]:
    out = {}
    for name, (x, y) in splits.items():
        total, correct, extra = 0.0, 0, {}
        for lo in range(0, x.shape[0], eval_batch_size):
            logits, yb = fwd(params, buffers, x[lo:lo + eval_batch_size]), y[lo:lo + eval_batch_size]
            l_, c_ = _accumulate(loss.batched(logits, yb), logits, yb, loss.with_acc)
            total, correct = total + l_, correct + c_
            for m, v in _metrics.metric_sums(loss.extra, loss.fn, logits, yb).items():
                extra[m] = extra.get(m, 0.0) + v
        out[f"{name}_loss"] = total / x.shape[0]
        out[f"{name}_acc"] = correct.double() / x.shape[0]
        out.update({f"{name}_{m}": v / x.shape[0] for m, v in extra.items()})
    return out


@torch.no_grad()
def _eval_module(model: nn.Module, splits, eval_batch_size, loss: _Loss = _CE) -> dict[str, float]:
    model.eval()
    out = {}
    for name, (x, y) in splits.items():
        total, correct, extra = 0.0, 0, {}
        for lo in range(0, x.shape[0], eval_batch_size):
            logits, yb = model(x[lo:lo + eval_batch_size]), y[lo:lo + eval_batch_size]
            l_, c_ = _accumulate(loss.single(logits, yb)[None], logits[None], yb, loss.with_acc)
            total, correct = total + l_, correct + c_
            for m, v in _metrics.per_sample(loss.extra, loss.fn, logits, yb).items():
                extra[m] = extra.get(m, 0.0) + float(v.sum())
        out[f"{name}_loss"] = float(total[0]) / x.shape[0]
        out[f"{name}_acc"] = float(correct[0]) / x.shape[0]
        out.update({f"{name}_{m}": v / x.shape[0] for m, v in extra.items()})
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


def _run_batched(model, jump_flat, buffers, data, cfg, rec, device, progress, loss: _Loss = _CE):
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
        m = _eval_batched(fwd, params, bufs, splits, eval_rows, loss)
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
            losses = loss.batched(fwd(params, bufs, xb), yb).mean(1)
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


def _run_sequential(model, jump_flat, buffers, data, cfg, rec, device, progress, loss: _Loss = _CE):
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
            met = _eval_module(m, splits, cfg["eval_batch_size"], loss)
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
                    value = loss.mean(m(xb), yb)
                    if torch.isfinite(value):
                        value.backward()
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
