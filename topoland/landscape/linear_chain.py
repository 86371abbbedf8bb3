"""The rest of a sequential network after its first layer, run for many points at once.

Used by the linear-first evaluator (:mod:`topoland.landscape.linear_first`): on a GPU,
:meth:`_Chain.run` evaluates all P points of a chunk at once (one grouped convolution per conv
layer, one bmm per linear layer, channels-last activations); on the CPU,
:meth:`_Chain.run_points` runs the convolutional part point by point as plain channels-last
ops on cache-sized blocks of samples, and the linear tail as one bmm.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from topoland.landscape.surface_points import SurfaceError


class _Chain:
    """The rest of a sequential network as a list of ops run for P points at once.

    Supported: ReLU, Conv1d/Conv2d (zero padding), MaxPool1d/2d, Flatten(1), Linear,
    eval-mode BatchNorm. 4-D activations stay channels-last; ``relu -> maxpool`` runs as
    ``maxpool -> relu`` (equal, since max commutes with the monotone ReLU, on 4x fewer values);
    a channels-last ``flatten -> linear`` permutes the linear weight's columns instead of the
    activations. Built by :meth:`build`, which returns None for any other graph.
    """

    def __init__(self, ops):
        self.ops = ops

    @classmethod
    def build(cls, gm, flat: bool) -> "_Chain | None":
        nodes = list(gm.graph.nodes)
        if not nodes or nodes[0].op != "placeholder":
            return None
        prev, ops = nodes[0], []
        for n in nodes[1:]:
            if n.op == "output":
                return cls(ops) if n.args[0] is prev and cls._layout_ok(ops, flat) else None
            if not n.args or n.args[0] is not prev or len(prev.users) != 1:
                return None
            extra = n.args[1:]
            if n.op == "call_module":
                mod = gm.get_submodule(n.target)
                if n.kwargs or extra:
                    return None
                if isinstance(mod, nn.ReLU):
                    ops.append(("relu", None, None))
                elif type(mod) in (nn.Conv1d, nn.Conv2d) and mod.padding_mode == "zeros":
                    ops.append(("conv", n.target, mod))
                elif type(mod) in (nn.MaxPool1d, nn.MaxPool2d) and not mod.return_indices:
                    ops.append(("pool", n.target, mod))
                elif isinstance(mod, nn.Flatten) and mod.start_dim == 1 and mod.end_dim == -1:
                    ops.append(("flatten", None, None))
                elif type(mod) is nn.Linear:
                    ops.append(("linear", n.target, mod))
                elif type(mod) in (nn.BatchNorm1d, nn.BatchNorm2d) and mod.track_running_stats:
                    ops.append(("bn", n.target, mod))
                else:
                    return None
            elif n.op == "call_function" and n.target in (torch.relu, F.relu) and not extra \
                    and not n.kwargs.get("inplace", False):
                ops.append(("relu", None, None))
            elif n.op == "call_function" and n.target is torch.flatten and tuple(extra) == (1,) \
                    and not n.kwargs:
                ops.append(("flatten", None, None))
            else:
                return None
            prev = n
        return None

    def run(self, t: Tensor, npts: int, p: Mapping[str, Tensor], shared: Mapping[str, Tensor],
            flat: bool) -> Tensor:
        """Logits (P, N, C) of P points at once.

        t: first-layer outputs of all points, owned (modified in place): (N, P*C, H, W)
        channels-last or (N, P*C, L) (point-major channel blocks), or (P, N, F) with flat=True.
        p: stacked per-point tensors {name: (P, ...)}; shared: unstacked {name: tensor}.
        Convolutions run as one grouped convolution (groups = P x groups), linears as one bmm.
        """
        def get(name):
            if name in p:
                return p[name]
            v = shared.get(name)
            return None if v is None else v.unsqueeze(0).expand(npts, *v.shape)

        ops, i, perm = self.ops, 0, None
        while i < len(ops):
            kind, name, mod = ops[i]
            if kind == "relu":
                if i + 1 < len(ops) and ops[i + 1][0] == "pool":
                    t = self._pool(t, ops[i + 1][2]).clamp_min_(0)
                    i += 2
                    continue
                t = t.clamp_min_(0)
            elif kind == "pool":
                t = self._pool(t, mod)
            elif kind == "conv":
                w = get(f"{name}.weight")
                bias = get(f"{name}.bias")
                conv = F.conv2d if isinstance(mod, nn.Conv2d) else F.conv1d
                t = conv(t, w.reshape(-1, *w.shape[2:]), None if bias is None else bias.reshape(-1),
                         mod.stride, mod.padding, mod.dilation, mod.groups * npts)
            elif kind == "bn":
                scale, shift = _bn_fold(get(f"{name}.running_mean"), get(f"{name}.running_var"),
                                        get(f"{name}.weight"), get(f"{name}.bias"), mod.eps)
                if flat:
                    t = torch.addcmul(shift.unsqueeze(1), t, scale.unsqueeze(1))
                else:
                    view = (1, -1) + (1,) * (t.dim() - 2)
                    t = torch.addcmul(shift.reshape(view), t, scale.reshape(view))
            elif kind == "flatten":
                n = t.shape[0]
                if flat:
                    pass
                elif t.dim() == 4:   # (N, P*C, H, W) channels-last -> (P, N, H*W*C)
                    _, pc, h, ww = t.shape
                    perm = (pc // npts, h, ww)
                    t = t.permute(0, 2, 3, 1).reshape(n, h * ww, npts, pc // npts)
                    t = t.permute(2, 0, 1, 3).reshape(npts, n, -1)
                else:
                    t = t.reshape(n, npts, -1, t.shape[-1]).permute(1, 0, 2, 3).reshape(npts, n, -1)
                flat = True
            elif kind == "linear":
                if not flat:
                    raise SurfaceError("linear-first evaluator: a Linear layer needs flat input")
                w = get(f"{name}.weight")
                if perm is not None:
                    c, h, ww = perm
                    w = w.reshape(npts, w.shape[1], c, h, ww).permute(0, 1, 3, 4, 2).reshape(
                        npts, w.shape[1], -1)
                    perm = None
                bias = get(f"{name}.bias")
                wt = w.transpose(1, 2)
                t = torch.baddbmm(bias.unsqueeze(1), t, wt) if bias is not None else torch.bmm(t, wt)
            i += 1
        if not flat:
            raise SurfaceError("linear-first evaluator: the network must end in a Linear layer")
        return t

    def run_points(self, zs: list[Tensor], ct: Tensor, p: Mapping[str, Tensor],
                   shared: Mapping[str, Tensor]) -> Tensor:
        """Logits (P, N, C) of the points ``z0 + sum_j ct[:, j] z_j``, point by point (CPU).

        zs: the k + 1 first-layer outputs, (N, C, H, W) channels-last or (N, C, L); ct: (P, k).
        For each point and each block of ``_CPU_ROWS`` samples, the first-layer combination,
        the ops up to ``flatten`` and the first linear layer after it run as plain
        channels-last (NHWC) ops on activations that stay in the core's cache: oneDNN's
        channels-last convolutions are 3-4x its grouped or channels-first ones at these sizes.
        1-D layers run as 2-D layers of height 1. The remaining linear layers run as one bmm.
        """
        npts, k = ct.shape
        if zs[0].dim() == 4:
            zl = [z.permute(0, 2, 3, 1) for z in zs]                       # (N, H, W, C)
            zl = [z if z.is_contiguous() else z.contiguous() for z in zl]
        else:
            zl = [z.permute(0, 2, 1).contiguous().unsqueeze(1) for z in zs]  # (N, 1, L, C)
        stop = next(i for i, op in enumerate(self.ops) if op[0] == "flatten")
        seg, tail = self.ops[:stop], self.ops[stop + 1:]
        lin = tail[0][1] if tail and tail[0][0] == "linear" else None
        c = ct.tolist()
        n = zl[0].shape[0]
        buf = torch.empty((min(n, _CPU_ROWS), *zl[0].shape[1:]), dtype=zl[0].dtype, device=zl[0].device)
        feats, shape = [], None
        for q in range(npts):
            w = b = None
            parts = []
            for r0 in range(0, n, _CPU_ROWS):
                rows = slice(r0, min(n, r0 + _CPU_ROWS))
                h = buf[:rows.stop - r0]
                torch.add(zl[0][rows], zl[1][rows], alpha=c[q][0], out=h)
                for j in range(1, k):
                    h.add_(zl[j + 1][rows], alpha=c[q][j])
                h = self._segment_nhwc(h, seg, q, p, shared)
                m, hh, ww, cc = shape = h.shape
                h = h.reshape(m, -1)
                if lin is not None:
                    if w is None:   # (F', C*H*W) with columns reordered to (H, W, C)
                        w = _stacked(p, shared, f"{lin}.weight", npts)[q]
                        w = w.reshape(-1, cc, hh, ww).permute(0, 2, 3, 1).reshape(w.shape[0], -1)
                        b = _stacked(p, shared, f"{lin}.bias", npts)
                        b = None if b is None else b[q]
                    h = torch.addmm(b, h, w.T) if b is not None else h @ w.T
                parts.append(h)
            feats.append(torch.cat(parts) if len(parts) > 1 else parts[0])
        rest = _Chain(tail[1:] if lin is not None else tail)
        perm = None if lin is not None else (shape[3], shape[1], shape[2])
        return rest._run_flat(torch.stack(feats), npts, p, shared, perm=perm)

    def _segment_nhwc(self, h: Tensor, seg, q: int, p, shared) -> Tensor:
        """Run the spatial ops ``seg`` of point ``q`` on h (M, H, W, C) (modified in place)."""
        def get(name):
            return p[name][q] if name in p else shared.get(name)

        i = 0
        while i < len(seg):
            kind, name, mod = seg[i]
            if kind == "relu" and i + 1 < len(seg) and seg[i + 1][0] == "pool":
                h = self._pool_nhwc(h, seg[i + 1][2]).clamp_min_(0)   # max commutes with ReLU
                i += 2
                continue
            if kind == "relu":
                h = h.clamp_min_(0)
            elif kind == "pool":
                h = self._pool_nhwc(h, mod)
            elif kind == "conv":
                o = self._conv2d(h.permute(0, 3, 1, 2), mod, get(f"{name}.weight"), get(f"{name}.bias"))
                h = o.permute(0, 2, 3, 1)
                if not h.is_contiguous():
                    h = h.contiguous()
            elif kind == "bn":
                scale, shift = _bn_fold(get(f"{name}.running_mean"), get(f"{name}.running_var"),
                                        get(f"{name}.weight"), get(f"{name}.bias"), mod.eps)
                h = torch.addcmul(shift, h, scale)
            i += 1
        return h

    @staticmethod
    def _pool_nhwc(h: Tensor, mod) -> Tensor:
        """Max pooling of h (M, H, W, C); kernel == stride without padding as elementwise maxima."""
        two_d = isinstance(mod, nn.MaxPool2d)
        pair = (lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)) if two_d else \
            (lambda v: (1, v if isinstance(v, int) else v[0]))
        ks = pair(mod.kernel_size)
        st = pair(mod.stride if mod.stride is not None else mod.kernel_size)
        no_pad = mod.padding in (0, (0,), (0, 0), [0, 0])
        if ks == st and no_pad and pair(mod.dilation) == (1, 1) \
                and (not mod.ceil_mode or (h.shape[1] % ks[0] == 0 and h.shape[2] % ks[1] == 0)):
            m, hh, ww, c = h.shape
            ho, wo = hh // ks[0], ww // ks[1]
            t = h[:, :ho * ks[0], :wo * ks[1]].reshape(m, ho, ks[0], wo, ks[1], c)
            r = t[:, :, 0]
            for a in range(1, ks[0]):
                r = torch.maximum(r, t[:, :, a])                  # (M, Ho, Wo, kw, C)
            out = r[:, :, :, 0]
            for b in range(1, ks[1]):
                out = torch.maximum(out, r[:, :, :, b])
            return out if out.is_contiguous() else out.contiguous()
        o = _Chain._pool2d(h.permute(0, 3, 1, 2), mod).permute(0, 2, 3, 1)
        return o if o.is_contiguous() else o.contiguous()

    def _run_flat(self, t: Tensor, npts: int, p, shared, perm) -> Tensor:
        """The flat tail (linear, relu, bn) on (P, N, F); ``perm=(C, H, W)``: t's features are
        in (H, W, C) order, the next linear's columns in (C, H, W) order."""
        for kind, name, mod in self.ops:
            def get(k):
                return _stacked(p, shared, f"{name}.{k}", npts)
            if kind == "relu":
                t = t.clamp_min_(0)
            elif kind == "bn":
                scale, shift = _bn_fold(get("running_mean"), get("running_var"), get("weight"),
                                        get("bias"), mod.eps)
                t = torch.addcmul(shift.unsqueeze(1), t, scale.unsqueeze(1))
            elif kind == "linear":
                w = get("weight")
                if perm is not None:
                    c, h, ww = perm
                    w = w.reshape(npts, w.shape[1], c, h, ww).permute(0, 1, 3, 4, 2).reshape(
                        npts, w.shape[1], -1)
                    perm = None
                bias = get("bias")
                wt = w.transpose(1, 2)
                t = torch.baddbmm(bias.unsqueeze(1), t, wt) if bias is not None else torch.bmm(t, wt)
            else:
                raise SurfaceError(f"linear-first evaluator: {kind} after flatten is not supported")
        return t

    @staticmethod
    def _conv2d(h: Tensor, mod, w: Tensor, b: Tensor | None) -> Tensor:
        if isinstance(mod, nn.Conv2d):
            return F.conv2d(h, w, b, mod.stride, mod.padding, mod.dilation, mod.groups)
        pad = mod.padding if isinstance(mod.padding, str) else (0, mod.padding[0])
        return F.conv2d(h, w.unsqueeze(2), b, (1, mod.stride[0]), pad, (1, mod.dilation[0]),
                        mod.groups)

    @staticmethod
    def _pool2d(h: Tensor, mod) -> Tensor:
        if isinstance(mod, nn.MaxPool2d):
            return F.max_pool2d(h, mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.ceil_mode)
        one = lambda v: (1, v if isinstance(v, int) else v[0])  # noqa: E731
        stride = mod.stride if mod.stride is not None else mod.kernel_size
        return F.max_pool2d(h, one(mod.kernel_size), one(stride), (0, one(mod.padding)[1]),
                            one(mod.dilation), mod.ceil_mode)

    @staticmethod
    def _layout_ok(ops, flat: bool) -> bool:
        """Convs and pools need unflattened input, linears flat input; logits end flat."""
        for kind, _, _ in ops:
            if kind in ("conv", "pool") and flat:
                return False
            if kind == "linear" and not flat:
                return False
            if kind == "flatten":
                flat = True
        return flat

    @staticmethod
    def _pool(t, mod):
        pool = F.max_pool2d if isinstance(mod, nn.MaxPool2d) else F.max_pool1d
        return pool(t, mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.ceil_mode)


def _bn_fold(mean: Tensor, var: Tensor, weight, bias, eps: float) -> tuple[Tensor, Tensor]:
    """Eval-mode BatchNorm as ``x * scale + shift`` (any matching leading shapes)."""
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    return scale, (shift + bias if bias is not None else shift)


_CPU_ROWS = 256  # samples per pass of the CPU point-by-point chain (activations stay in cache)


def _stacked(p, shared, name, npts):
    """The per-point tensor ``name`` (P, ...), from ``p`` or broadcast from ``shared``; or None."""
    if name in p:
        return p[name]
    v = shared.get(name)
    return None if v is None else v.unsqueeze(0).expand(npts, *v.shape)
