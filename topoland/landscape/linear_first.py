"""The linear-first-layer surface evaluator (``evaluator="linear-first"``).

Exact reformulation for models whose first layer (a Conv1d/Conv2d/Linear applied to the input
and nothing else) is linear in its weights and bias jointly:
``layer(x; W0 + sum_j c_j D_j) = layer(x; W0) + sum_j c_j layer(x; D_j)``. The k + 1
first-layer outputs are computed once per data batch and shared by all points of a chunk; the
rest of the network runs through :class:`~topoland.landscape.linear_chain._Chain` when it is a
plain chain, else per point via ``torch.func.functional_call``. See
:mod:`topoland.landscape.surfaces` for when ``"auto"`` picks it.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from topoland.landscape.linear_chain import _Chain
from topoland.nets import metrics as _metrics
from topoland.landscape.surface_points import SurfaceError, _points, _state


class _LinearFirst:
    """Exact split ``model = rest(first(x))`` with ``first`` linear in (weight, bias)."""

    def __init__(self, model: nn.Module):
        import torch.fx as fx

        m = copy.deepcopy(model).eval()
        gm = fx.symbolic_trace(m)
        phs = [n for n in gm.graph.nodes if n.op == "placeholder"]
        if len(phs) != 1:
            raise SurfaceError("linear-first evaluator: the model's forward must take one input")
        users = list(phs[0].users)
        if len(users) != 1 or users[0].op != "call_module":
            raise SurfaceError("linear-first evaluator: the input must feed exactly one module")
        first = users[0]
        mod = gm.get_submodule(first.target)
        if type(mod) not in (nn.Conv1d, nn.Conv2d, nn.Linear):
            raise SurfaceError(f"linear-first evaluator: first module {first.target!r} is "
                               f"{type(mod).__name__}, not Conv1d/Conv2d/Linear")
        if len(first.args) != 1 or first.kwargs:
            raise SurfaceError("linear-first evaluator: first module takes extra arguments")
        with gm.graph.inserting_after(phs[0]):
            z = gm.graph.placeholder("z")
        first.replace_all_uses_with(z)
        gm.graph.erase_node(first)
        gm.graph.erase_node(phs[0])
        gm.graph.lint()
        gm.recompile()
        self.prefix = first.target
        self.first = mod
        self.rest = gm
        self.first_names = [f"{first.target}.{n}" for n, _ in mod.named_parameters()]
        rest_state = dict(gm.named_parameters())
        rest_state.update(dict(gm.named_buffers()))
        self.rest_names = list(rest_state)
        self.chain = _Chain.build(gm, flat=isinstance(mod, nn.Linear))

    def first_out(self, flat_like: dict[str, Tensor], x: Tensor, with_bias: bool = True) -> Tensor:
        w = flat_like[f"{self.prefix}.weight"]
        b = flat_like.get(f"{self.prefix}.bias") if with_bias else None
        m = self.first
        if isinstance(m, nn.Linear):
            z = F.linear(x, w, b)
        else:
            if m.padding_mode != "zeros":
                x = F.pad(x, m._reversed_padding_repeated_twice, mode=m.padding_mode)
                pad = 0
            else:
                pad = m.padding
            conv = F.conv2d if isinstance(m, nn.Conv2d) else F.conv1d
            z = conv(x, w, b, m.stride, pad, m.dilation, m.groups)
        if z.dim() == 4:
            z = z.contiguous(memory_format=torch.channels_last)
        return z


def _linear_first_ok(model, kind, bn) -> str | None:
    """None if the linear-first evaluator applies, else the reason."""
    if kind != "weights":
        return "directions move buffers"
    if bn != "eval":
        return "bn='recompute'"
    try:
        _LinearFirst(model)
    except SurfaceError as e:
        return str(e)
    except Exception as e:  # torch.fx cannot trace data-dependent control flow
        return f"torch.fx cannot trace the model ({type(e).__name__})"
    return None


def _eval_linear_first(lf: _LinearFirst, model, names, origin, dirs, coeffs, x, y, ms, loss_fn,
                       batch_size, device) -> dict[str, np.ndarray]:
    """Metrics (P,) for points origin + coeffs @ dirs via the first-layer split.

    ms: resolved metrics and loss_fn the per-sample loss (:mod:`topoland.nets.metrics`), applied
    to the outputs of all points of a chunk at once (:func:`~topoland.nets.metrics.metric_sums`);
    y: targets as the loss reads them (class indices (N,) or float (N, ...))."""
    state = _state(model)
    k = dirs.shape[0]

    def as_dict(vec):
        out, s = {}, 0
        for n in names:
            t = state[n]
            out[n] = vec[s:s + t.numel()].reshape(t.shape).to(device, t.dtype)
            s += t.numel()
        return out

    o = as_dict(origin)
    ds = [as_dict(dirs[j]) for j in range(k)]
    pts = _points(names, origin, dirs, coeffs, model)
    npts = len(coeffs)
    rest_stack = {n: pts[n].to(device) for n in lf.rest_names if n in pts}
    shared = {n: t.to(device) for n, t in lf.rest.named_buffers()}
    shared.update({n: t.to(device) for n, t in lf.rest.named_parameters() if n not in pts})
    c = np.asarray(coeffs, dtype=np.float64)
    ct = torch.as_tensor(c, dtype=next(iter(o.values())).dtype, device=device)
    sums = {name: torch.zeros(npts, dtype=torch.float64) for name, _ in ms}
    n = x.shape[0]
    lf.rest.to(device).eval()
    with torch.no_grad():
        for s in range(0, n, batch_size):
            xb, yb = x[s:s + batch_size].to(device), y[s:s + batch_size].to(device)
            zs = [lf.first_out(o, xb)] + [lf.first_out(d, xb) for d in ds]
            if lf.chain is not None and device.type == "cpu" and zs[0].dim() > 2:
                logits = lf.chain.run_points(zs, ct, rest_stack, shared)
                for name, v in _sums(ms, loss_fn, logits, yb).items():
                    sums[name] += v
                continue
            if lf.chain is not None:
                logits = lf.chain.run(_combine_first(zs, ct, npts), npts, rest_stack, shared,
                                      flat=zs[0].dim() == 2)
                for name, v in _sums(ms, loss_fn, logits, yb).items():
                    sums[name] += v
                continue
            for p in range(npts):
                z = zs[0].clone()
                for j in range(k):
                    if c[p, j] != 0.0:
                        z.add_(zs[j + 1], alpha=float(c[p, j]))
                params_p = {nm: v[p] for nm, v in rest_stack.items()}
                logits = torch.func.functional_call(lf.rest, (params_p, shared), (z,))
                for name, v in _sums(ms, loss_fn, logits.unsqueeze(0), yb).items():
                    sums[name][p] += v[0]
    return {name: (sums[name] / n).numpy() for name, _ in ms}


def _combine_first(zs: list[Tensor], ct: Tensor, npts: int) -> Tensor:
    """First-layer outputs of P points ``z0 + sum_j c[p, j] z_j`` in the chain's layout.

    zs: k + 1 tensors (N, C, H, W) / (N, C, L) / (N, F); ct: (P, k). Returns (N, P*C, H, W)
    channels-last, (N, P*C, L) or (P, N, F)."""
    z0 = zs[0]
    if z0.dim() == 2:
        flat = torch.stack([z.reshape(-1) for z in zs[1:]])             # (k, N*F)
        out = torch.addmm(z0.reshape(1, -1), ct, flat)                   # (P, N*F)
        return out.reshape(npts, *z0.shape)
    if z0.dim() == 4:
        n, ch, h, w = z0.shape
        lay = lambda z: z.permute(0, 2, 3, 1).reshape(n, h, w, 1, ch)    # NHWC, point axis
        shape = (1, 1, 1, npts, 1)
    else:
        n, ch, ln = z0.shape
        lay = lambda z: z.reshape(n, 1, ch, ln)
        shape = (1, npts, 1, 1)
    out = None
    for j in range(len(zs) - 1):
        coef = ct[:, j].reshape(shape)
        out = torch.addcmul(lay(zs[0]), coef, lay(zs[j + 1])) if out is None else \
            out.addcmul_(coef, lay(zs[j + 1]))
    if z0.dim() == 4:
        return out.reshape(n, h, w, npts * ch).permute(0, 3, 1, 2)
    return out.reshape(n, npts * ch, ln)


def _sums(ms, loss_fn, outputs: Tensor, y: Tensor) -> dict[str, Tensor]:
    """Sums over the N samples, (P,) float64 on the CPU, of every metric for the outputs
    (P, N, ...) of P points against targets (N, ...)."""
    return {name: v.cpu() for name, v in
            _metrics.metric_sums(ms, loss_fn, outputs, y, error=SurfaceError).items()}
