"""Loss surfaces around minima: 1-D lines and interpolations, 2-D planes, PCA trajectories.

Every surface is a set of parameter points ``theta = origin + sum_j c_j d_j`` (flat vectors
in :func:`topoland.nets.directions.direction_names` order) evaluated on the training data (and the
test data when given). Points are evaluated in chunks of ``chunk_points``.

Evaluators (``evaluator=``):

- ``"batched"``: :func:`topoland.nets.params.evaluate` (functional_call + vmap, P points per pass).
- ``"loop"``: :func:`topoland.nets.params.evaluate_loop`, the plain reference.
- ``"linear-first"``: exact reformulation for models whose first layer (a Conv1d/Conv2d/Linear
  applied to the input and nothing else) is linear in its weights and bias jointly:
  ``layer(x; W0 + sum_j c_j D_j) = layer(x; W0) + sum_j c_j layer(x; D_j)``. The k + 1 first-layer
  outputs are computed once per data batch and shared by all points of a chunk. When the rest
  of the network is a plain chain (ReLU, Conv, MaxPool, Flatten, Linear, eval BatchNorm), on a
  GPU it runs for all P points of a chunk at once (one grouped convolution per conv layer, one
  bmm per linear layer, channels-last activations); on the CPU the convolutional part runs
  point by point as plain channels-last ops on cache-sized blocks of samples
  (``_Chain.run_points``), and the linear tail as one bmm. Otherwise the
  rest runs per point via ``torch.func.functional_call``.
- ``"auto"`` (default): ``"linear-first"`` when it applies (weights-only directions,
  ``bn="eval"``, a traceable model with such a first layer), else ``"batched"``. The choice
  is recorded in ``Surface.meta["evaluator"]``.

Grid convention: ``values[m][i, j]`` is at ``(xs[j], ys[i])`` (shape ``(ny, nx)``, as
``np.meshgrid(xs, ys)``); flat point index ``i * nx + j``. 1-D surfaces have ``ys=None`` and
values of shape ``(nx,)``. Metric keys are ``{split}_{name}``: ``train_loss`` (mean
cross-entropy, nats), ``train_acc`` (fraction), ``test_loss``, ``test_acc``, ...
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from topoland.nets import directions as _dirs
from topoland.nets import params as _params
from topoland.errors import TopolandError
from topoland.utils import resolve_device

__all__ = [
    "SurfaceError", "Surface", "interpolate", "line", "random_lines", "plane", "plane_through",
    "random_plane", "pca_directions", "trajectory_plane", "surface_features",
]

_SHORT = {"loss": "loss", "accuracy": "acc", "error": "err"}
_EVALUATORS = ("auto", "batched", "loop", "linear-first")


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


# ---------------------------------------------------------------------------------------------
# the linear-first-layer evaluator
# ---------------------------------------------------------------------------------------------

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


def _eval_linear_first(lf: _LinearFirst, model, names, origin, dirs, coeffs, x, y, ms,
                       batch_size, device) -> dict[str, np.ndarray]:
    """Metrics (P,) for points origin + coeffs @ dirs via the first-layer split."""
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
                for name, v in _chunk_sums(ms, logits, yb).items():
                    sums[name] += v
                continue
            if lf.chain is not None:
                logits = lf.chain.run(_combine_first(zs, ct, npts), npts, rest_stack, shared,
                                      flat=zs[0].dim() == 2)
                for name, v in _chunk_sums(ms, logits, yb).items():
                    sums[name] += v
                continue
            for p in range(npts):
                z = zs[0].clone()
                for j in range(k):
                    if c[p, j] != 0.0:
                        z.add_(zs[j + 1], alpha=float(c[p, j]))
                params_p = {nm: v[p] for nm, v in rest_stack.items()}
                logits = torch.func.functional_call(lf.rest, (params_p, shared), (z,))
                for name, v in _chunk_sums(ms, logits.unsqueeze(0), yb).items():
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


def _chunk_sums(ms, logits: Tensor, y: Tensor) -> dict[str, Tensor]:
    """Sums over samples (P,) float64 of each metric for logits (P, N, C), labels (N,)."""
    b, n, c = logits.shape
    out = {}
    for name, m in ms:
        if m == "loss":
            v = F.cross_entropy(logits.reshape(b * n, c), y.repeat(b), reduction="none").reshape(b, n)
        elif m == "accuracy":
            v = logits.argmax(-1) == y
        elif m == "error":
            v = logits.argmax(-1) != y
        else:
            vs = []
            for p in range(b):
                vp = m(logits[p], y)
                if not isinstance(vp, Tensor) or vp.shape != y.shape:
                    raise SurfaceError(f"metric {name!r} must return per-sample values of shape {tuple(y.shape)}")
                vs.append(vp)
            v = torch.stack(vs)
        out[name] = v.to(torch.float64).sum(1).cpu()
    return out


# ---------------------------------------------------------------------------------------------
# the grid engine
# ---------------------------------------------------------------------------------------------

def _metric_items(metrics) -> list[tuple[str, object]]:
    if isinstance(metrics, str) or callable(metrics):
        metrics = (metrics,)
    items = list(metrics.items()) if isinstance(metrics, Mapping) else [
        (m, m) if isinstance(m, str) else (m if isinstance(m, tuple) else (m.__name__, m))
        for m in metrics]
    for name, m in items:
        if isinstance(m, str) and m not in _SHORT:
            raise SurfaceError(f"unknown metric {m!r}; use one of {tuple(_SHORT)} or (name, fn)")
    if not items:
        raise SurfaceError("metrics is empty")
    return items


def _splits(x, y, x_test, y_test):
    if (x_test is None) != (y_test is None):
        raise SurfaceError("pass both x_test and y_test, or neither")
    out = [("train", x, y.to(torch.long))]
    if x_test is not None:
        out.append(("test", x_test, y_test.to(torch.long)))
    return out


def _value_keys(ms, splits) -> list[str]:
    return [f"{s}_{_SHORT.get(name, name)}" for s, _, _ in splits for name, _ in ms]


def _run_grid(model, names, origin, dirs, kind, coeffs: np.ndarray, splits, ms, *, evaluator,
              chunk_points, batch_size, bn, device, store=None, on_chunk=None, pending=None):
    """Evaluate every coefficient row (P, k); returns ({key: (P,)}, evaluator used)."""
    if evaluator not in _EVALUATORS:
        raise SurfaceError(f"evaluator must be one of {_EVALUATORS}, got {evaluator!r}")
    if chunk_points < 1:
        raise SurfaceError(f"chunk_points must be >= 1, got {chunk_points}")
    device = resolve_device(device)
    used = evaluator
    lf = None
    if evaluator in ("auto", "linear-first"):
        why = _linear_first_ok(model, kind, bn)
        if why is None:
            used, lf = "linear-first", _LinearFirst(model)
        elif evaluator == "linear-first":
            raise SurfaceError(f"evaluator 'linear-first' does not apply: {why}")
        else:
            used = "batched"
    keys = _value_keys(ms, splits)
    total = len(coeffs)
    out = {k: np.full(total, np.nan) for k in keys}
    todo = np.arange(total) if pending is None else np.asarray(pending, dtype=np.int64)
    model_dev = model
    for c0 in range(0, len(todo), chunk_points):
        idx = todo[c0:c0 + chunk_points]
        chunk_vals = {}
        for split, xs_, ys_ in splits:
            if used == "linear-first":
                res = _eval_linear_first(lf, model, names, origin, dirs, coeffs[idx], xs_, ys_, ms,
                                         batch_size, device)
            else:
                pts = _points(names, origin, dirs, coeffs[idx], model)
                fn = _params.evaluate if used == "batched" else _params.evaluate_loop
                kw = {} if used == "loop" else {"chunk_size": len(idx)}
                res = fn(model_dev, pts, xs_, ys_, metrics=ms, batch_size=batch_size, bn=bn,
                         device=device, **kw)
            for name, _ in ms:
                chunk_vals[f"{split}_{_SHORT.get(name, name)}"] = np.asarray(res[name], dtype=np.float64)
        for k in keys:
            out[k][idx] = chunk_vals[k]
        if store is not None:
            store.write(idx, chunk_vals)
        if on_chunk is not None:
            on_chunk(c0 + len(idx), len(todo))
    return out, ("batched" if used == "auto" else used)


def _grid_axis(grid, rng, name) -> np.ndarray:
    if isinstance(grid, (int, np.integer)):
        if grid < 1:
            raise SurfaceError(f"grid must be >= 1 points, got {grid}")
        lo, hi = rng
        return np.linspace(float(lo), float(hi), int(grid))
    arr = np.asarray(grid, dtype=np.float64).reshape(-1)
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise SurfaceError(f"grid coordinates '{name}' must be finite and non-empty")
    return arr


def _evaluate_surface(model, dirs_dicts, xs, ys, x, y, *, x_test, y_test, metrics, origin=None,
                      evaluator, chunk_points, batch_size, bn, device, store, on_chunk, meta):
    names, o, dirs, kind = _setup(model, dirs_dicts, origin)
    ms = _metric_items(metrics)
    splits = _splits(x, y, x_test, y_test)
    keys = _value_keys(ms, splits)
    if ys is None:
        coeffs = xs[:, None]
        shape = (len(xs),)
    else:
        gx, gy = np.meshgrid(xs, ys)
        coeffs = np.stack([gx.reshape(-1), gy.reshape(-1)], axis=1)
        shape = (len(ys), len(xs))
    values = None
    if store is not None:
        from topoland.landscape.storage import GridStore

        yy = np.zeros(1) if ys is None else ys
        with GridStore.open(store, xs=xs, ys=yy, directions=dirs.to(torch.float32).numpy(),
                            metrics=keys, origin=o.to(torch.float32).numpy(),
                            kind=meta.get("kind", "surface"), meta=meta) as st:
            pending = st.pending()
            _, used = _run_grid(model, names, o, dirs, kind, coeffs, splits, ms,
                                evaluator=evaluator, chunk_points=chunk_points,
                                batch_size=batch_size, bn=bn, device=device, store=st,
                                on_chunk=on_chunk, pending=pending)
            _, _, vals, _ = st.read()
        values = {k: v.reshape(shape) for k, v in vals.items()}
        meta = {**meta, "resumed_points": int(len(coeffs) - len(pending))}
    else:
        vals, used = _run_grid(model, names, o, dirs, kind, coeffs, splits, ms, evaluator=evaluator,
                               chunk_points=chunk_points, batch_size=batch_size, bn=bn,
                               device=device)
        values = {k: v.reshape(shape) for k, v in vals.items()}
    meta = {**meta, "evaluator": used, "names": names, "direction_kind": kind, "bn": bn}
    return Surface(xs=xs, ys=ys, values=values, directions=list(dirs_dicts), meta=meta)


_COMMON_DOC = """
    x, y: training inputs (N, ...) and int64 labels (N,); x_test, y_test: optional test split.
    metrics: names ("loss", "accuracy", "error") or (name, fn(logits, y) -> (N,)) pairs.
    evaluator: "auto" | "batched" | "loop" | "linear-first" (module docstring);
    chunk_points: points per evaluation chunk (and per HDF5 write); batch_size: samples per
    forward; bn: "eval" (the origin's running statistics) | "recompute" (per point, from x);
    device: "auto" | "cpu" | "cuda". store: HDF5 path for a resumable grid; on_chunk(done,
    total): called after every chunk (progress; raising interrupts, the store keeps the chunks
    already done)."""


def _common_doc(fn):
    """Append the keyword arguments every surface function shares to ``fn``'s docstring (a
    docstring built by ``+`` is an expression, not a docstring: ``__doc__`` would be None)."""
    fn.__doc__ = (fn.__doc__ or "") + _COMMON_DOC
    return fn


@_common_doc
def line(model: nn.Module, direction: Mapping[str, Tensor], x: Tensor, y: Tensor,
         alphas=np.linspace(-1.0, 1.0, 41), *, x_test=None, y_test=None,
         metrics=("loss", "accuracy"), evaluator="auto", chunk_points=16, batch_size=2048,
         bn="eval", device="auto", store=None, on_chunk=None) -> Surface:
    """1-D surface ``theta* + alpha * d`` for alphas (n,); values (n,)."""
    xs = _grid_axis(alphas, None, "alphas")
    return _evaluate_surface(model, [direction], xs, None, x, y, x_test=x_test, y_test=y_test,
                             metrics=metrics, evaluator=evaluator, chunk_points=chunk_points,
                             batch_size=batch_size, bn=bn, device=device, store=store,
                             on_chunk=on_chunk, meta={"kind": "line"})


def random_lines(model: nn.Module, x: Tensor, y: Tensor, *, n_directions: int = 4, seed: int = 0,
                 alphas=np.linspace(-1.0, 1.0, 21), norm="filter", ignore="biasbn",
                 **kw) -> list[Surface]:
    """``n_directions`` 1-D surfaces along seeded random (filter-normalized) directions.

    Direction i uses the seed ``SeedSequence(seed).generate_state(n)[i]``. kw: as :func:`line`
    (except store)."""
    if n_directions < 1:
        raise SurfaceError(f"n_directions must be >= 1, got {n_directions}")
    seeds = np.random.SeedSequence(int(seed)).generate_state(n_directions)
    out = []
    for i, s in enumerate(seeds):
        d = _dirs.random_direction(model, int(s), norm=norm, ignore=ignore)
        srf = line(model, d, x, y, alphas, **kw)
        srf.meta.update(kind="random_line", seed=int(seed), direction_seed=int(s), index=i)
        out.append(srf)
    return out


@_common_doc
def interpolate(model_a: nn.Module, model_b: nn.Module, x: Tensor, y: Tensor, *,
                alphas=np.linspace(-0.5, 1.5, 41), kind: str = "weights", x_test=None, y_test=None,
                metrics=("loss", "accuracy"), evaluator="auto", chunk_points=16, batch_size=2048,
                bn="eval", device="auto", store=None, on_chunk=None) -> Surface:
    """1-D interpolation ``(1 - alpha) a + alpha b`` (Goodfellow et al.); values (n,).

    kind: "weights" (parameters; BN statistics stay model_a's) or "states" (floating buffers,
    i.e. BN running statistics, interpolated too). alpha = 0 is model_a, 1 is model_b.
    """
    if kind not in ("weights", "states"):
        raise SurfaceError(f"kind must be 'weights' or 'states', got {kind!r}")
    d = _dirs.between(model_a, model_b, kind=kind)
    xs = _grid_axis(alphas, None, "alphas")
    return _evaluate_surface(model_a, [d], xs, None, x, y, x_test=x_test, y_test=y_test,
                             metrics=metrics, evaluator=evaluator, chunk_points=chunk_points,
                             batch_size=batch_size, bn=bn, device=device, store=store,
                             on_chunk=on_chunk, meta={"kind": "interpolate", "interp_kind": kind})


@_common_doc
def plane(model: nn.Module, d1: Mapping[str, Tensor], d2: Mapping[str, Tensor], x: Tensor,
          y: Tensor, *, grid=51, range=(-1.0, 1.0), x_test=None, y_test=None,
          metrics=("loss", "accuracy"), evaluator="auto", chunk_points=32, batch_size=2048,
          bn="eval", device="auto", store=None, on_chunk=None, origin=None) -> Surface:
    """2-D surface ``theta* + a d1 + b d2``; values (ny, nx).

    grid: int (points per axis) or a pair (xs, ys) of coordinate arrays; range: (lo, hi) for
    an int grid. origin: optional dict of tensors replacing the model's own parameters as the
    centre."""
    if isinstance(grid, tuple) and len(grid) == 2 and not isinstance(grid[0], (int, np.integer)):
        xs, ys = _grid_axis(grid[0], None, "xs"), _grid_axis(grid[1], None, "ys")
    else:
        if isinstance(grid, tuple):
            raise SurfaceError("grid must be an int or a pair (xs, ys) of coordinate arrays")
        xs = ys = _grid_axis(grid, range, "grid")
    return _evaluate_surface(model, [d1, d2], xs, ys, x, y, x_test=x_test, y_test=y_test,
                             metrics=metrics, origin=origin, evaluator=evaluator,
                             chunk_points=chunk_points, batch_size=batch_size, bn=bn,
                             device=device, store=store, on_chunk=on_chunk,
                             meta={"kind": "plane"})


def random_plane(model: nn.Module, x: Tensor, y: Tensor, *, seed: int = 0, norm="filter",
                 ignore="biasbn", exact: bool = False, **kw) -> Surface:
    """2-D surface on two seeded random (filter-normalized) directions (Li et al. 2018).

    Directions: :func:`topoland.nets.directions.orthogonal_pair` (exact=False: as drawn, nearly
    orthogonal). kw: as :func:`plane`."""
    d1, d2 = _dirs.orthogonal_pair(model, seed, exact=exact, norm=norm, ignore=ignore)
    srf = plane(model, d1, d2, x, y, **kw)
    srf.meta.update(kind="random_plane", seed=int(seed), norm=norm, ignore=ignore)
    return srf


def _unit_pair(u: Tensor, v: Tensor) -> tuple[Tensor, Tensor, float, float, float]:
    nu = float(u.norm())
    if nu == 0:
        raise SurfaceError("plane_through: model_a and model_b have equal parameters")
    e1 = u / nu
    v1 = float(v @ e1)
    w = v - v1 * e1
    nw = float(w.norm())
    if nw <= 1e-12 * max(float(v.norm()), 1.0):
        raise SurfaceError("plane_through: the three models are collinear")
    return e1, w / nw, nu, v1, nw


def plane_through(model_a: nn.Module, model_b: nn.Module, model_c: nn.Module, x: Tensor, y: Tensor,
                  *, grid=51, margin: float = 0.25, **kw) -> Surface:
    """2-D surface on the plane through three models (parameters; BN statistics are a's).

    Orthonormal axes: e1 along b - a, e2 the part of c - a orthogonal to e1 (units: parameter
    space). Coordinates: a = (0, 0), b = (|b - a|, 0), c = ((c-a).e1, (c-a).e2), in
    ``meta["anchors"]``. The grid covers the three models plus ``margin`` x the extent on
    each side; grid: int or (xs, ys). kw: as :func:`plane`."""
    model_names = _dirs.direction_names(model_a, "weights")
    state = _state(model_a)
    fa = _flat(_state(model_a), model_names, state, "model_a")
    fb = _flat(_state(model_b), model_names, state, "model_b")
    fc = _flat(_state(model_c), model_names, state, "model_c")
    e1, e2, bx, cx, cy = _unit_pair(fb - fa, fc - fa)
    anchors = np.array([[0.0, 0.0], [bx, 0.0], [cx, cy]])
    if isinstance(grid, (int, np.integer)):
        lo, hi = anchors.min(0), anchors.max(0)
        ext = hi - lo
        xs = np.linspace(lo[0] - margin * ext[0], hi[0] + margin * ext[0], int(grid))
        ys = np.linspace(lo[1] - margin * ext[1], hi[1] + margin * ext[1], int(grid))
        grid = (xs, ys)
    unflat = _params.unflatten(e1.to(torch.float32), model_a, model_names)
    unflat2 = _params.unflatten(e2.to(torch.float32), model_a, model_names)
    # the float32 directions above are for storage; evaluation uses the float64 basis below
    srf = _plane_flat(model_a, model_names, fa, torch.stack([e1, e2]), grid, x, y, **kw)
    srf.directions = [unflat, unflat2]
    srf.meta.update(kind="plane_through", anchors=anchors.tolist())
    return srf


def _plane_flat(model, names, origin, dirs, grid, x, y, **kw) -> Surface:
    """A plane on flat float64 directions (2, D) (no dict round trip, so no float32 rounding)."""
    state = _state(model)
    as_dict = lambda v: {n: t for n, t in zip(names, torch.split(v, [state[n].numel() for n in names]))}
    d1 = {n: t.reshape(state[n].shape) for n, t in as_dict(dirs[0]).items()}
    d2 = {n: t.reshape(state[n].shape) for n, t in as_dict(dirs[1]).items()}
    o = {n: t.reshape(state[n].shape) for n, t in as_dict(origin).items()}
    return plane(model, d1, d2, x, y, grid=grid, origin=o, **kw)


# ---------------------------------------------------------------------------------------------
# PCA trajectories
# ---------------------------------------------------------------------------------------------

def pca_directions(checkpoints, theta_final):
    """PCA of a training trajectory around its end point (Li et al. 2018).

    checkpoints: (T, D) flat parameter vectors; theta_final: (D,). The principal axes are
    those of the (centred) differences ``theta_i - theta_final``; the path is the uncentred
    differences projected on them, so ``theta_final`` sits at (0, 0).
    Returns ``(d1 (D,), d2 (D,), explained_variance_ratio (2,), coords (T, 2))`` as float64
    tensors/arrays: d1, d2 orthonormal; each axis's sign makes its largest-magnitude entry
    positive; the ratios are fractions of the total variance (sum 1 for a planar path).
    """
    m = torch.as_tensor(checkpoints).detach().to("cpu", torch.float64)
    f = torch.as_tensor(theta_final).detach().to("cpu", torch.float64).reshape(-1)
    if m.dim() != 2 or m.shape[1] != f.shape[0]:
        raise SurfaceError(f"checkpoints must be (T, D) with D = {f.shape[0]}, got {tuple(m.shape)}")
    if m.shape[0] < 3:
        raise SurfaceError(f"PCA of a trajectory needs at least 3 checkpoints, got {m.shape[0]}")
    diff = m - f
    centred = diff - diff.mean(0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    var = s ** 2
    total = float(var.sum())
    if total == 0 or len(s) < 2 or float(s[1]) == 0:
        raise SurfaceError("the trajectory does not span two dimensions (checkpoints too similar)")
    axes = []
    for i in range(2):
        v = vh[i]
        if v[v.abs().argmax()] < 0:
            v = -v
        axes.append(v)
    coords = (diff @ torch.stack(axes).T).numpy()
    evr = (var[:2] / total).numpy()
    return axes[0], axes[1], evr, coords


def trajectory_plane(model: nn.Module, checkpoints, x: Tensor, y: Tensor, *, grid=31,
                     margin: float = 0.2, **kw) -> Surface:
    """The surface on the PCA plane of a trajectory, with the path in ``Surface.path`` (T, 2).

    model: carries theta_final (its parameters); checkpoints: (T, D) in
    ``direction_names(model, "weights")`` order. The grid covers the path (and the origin)
    plus ``margin`` x the extent on each side. meta: explained_variance_ratio. kw: as
    :func:`plane`."""
    names = _dirs.direction_names(model, "weights")
    state = _state(model)
    final = _flat(state, names, state, "model")
    d1, d2, evr, coords = pca_directions(checkpoints, final)
    if isinstance(grid, (int, np.integer)):
        pts = np.vstack([coords, np.zeros((1, 2))])
        lo, hi = pts.min(0), pts.max(0)
        ext = np.maximum(hi - lo, 1e-12)
        grid = (np.linspace(lo[0] - margin * ext[0], hi[0] + margin * ext[0], int(grid)),
                np.linspace(lo[1] - margin * ext[1], hi[1] + margin * ext[1], int(grid)))
    srf = _plane_flat(model, names, final, torch.stack([d1, d2]), grid, x, y, **kw)
    srf.path = coords
    srf.meta.update(kind="pca_trajectory", explained_variance_ratio=[float(v) for v in evr])
    return srf


# ---------------------------------------------------------------------------------------------
# features
# ---------------------------------------------------------------------------------------------

def _rise_1d(srf: Surface, key: str, r: float) -> float:
    v = srf.values[key]
    xs = srf.xs
    if r > max(abs(xs.min()), abs(xs.max())) + 1e-12 or not (xs.min() <= 0 <= xs.max()):
        raise SurfaceError(f"line does not cover alpha = +/-{r} and 0")
    c = np.interp(0.0, xs, v)
    sides = [np.interp(s, xs, v) for s in (-r, r) if xs.min() - 1e-12 <= s <= xs.max() + 1e-12]
    return float(np.mean(sides) - c)


def _bilinear(srf: Surface, v: np.ndarray, px, py) -> np.ndarray:
    xs, ys = srf.xs, srf.ys
    ix = np.clip(np.searchsorted(xs, px) - 1, 0, len(xs) - 2)
    iy = np.clip(np.searchsorted(ys, py) - 1, 0, len(ys) - 2)
    tx = (px - xs[ix]) / (xs[ix + 1] - xs[ix])
    ty = (py - ys[iy]) / (ys[iy + 1] - ys[iy])
    return ((1 - tx) * (1 - ty) * v[iy, ix] + tx * (1 - ty) * v[iy, ix + 1]
            + (1 - tx) * ty * v[iy + 1, ix] + tx * ty * v[iy + 1, ix + 1])


def surface_features(surfaces, *, metric: str = "train_loss", radii=(0.5, 1.0)) -> dict[str, float]:
    """Scalar features of surfaces for the analysis ``surface`` group.

    surfaces: one :class:`Surface` or a list. Lines (kind "line"/"random_line"): loss rise
    at each radius r, ``mean(L(-r), L(r)) - L(0)``, averaged over lines ->
    ``surface_rise_r{r}``; interpolations: ``surface_barrier`` = max over alpha in [0, 1] of
    ``L(alpha) - ((1 - alpha) L(0) + alpha L(1))`` (>= 0 up to grid resolution), and
    ``surface_interp_max``. Planes: mean of L on the circle of radius r (bilinear, 64 angles)
    minus L(0, 0) -> ``surface_plane_rise_r{r}``; ``surface_plane_max_r{max r}`` the largest
    rise within the largest radius. Units: those of ``metric`` (nats for losses).
    """
    if isinstance(surfaces, Surface):
        surfaces = [surfaces]
    if not surfaces:
        raise SurfaceError("surface_features: no surfaces")
    out: dict[str, float] = {}
    lines = [s for s in surfaces if s.ndim == 1 and s.meta.get("kind") in ("line", "random_line")]
    interps = [s for s in surfaces if s.ndim == 1 and s.meta.get("kind") == "interpolate"]
    planes = [s for s in surfaces if s.ndim == 2]
    for s in surfaces:
        if metric not in s.values:
            raise SurfaceError(f"surface_features: metric {metric!r} not in {sorted(s.values)}")
    if lines:
        for r in radii:
            out[f"surface_rise_r{r:g}"] = float(np.mean([_rise_1d(s, metric, r) for s in lines]))
    if interps:
        bars, maxes = [], []
        for s in interps:
            v, a = s.values[metric], s.xs
            inside = (a >= -1e-12) & (a <= 1 + 1e-12)
            if inside.sum() < 2 or a.min() > 1e-12 or a.max() < 1 - 1e-12:
                raise SurfaceError("surface_features: interpolation does not cover alpha in [0, 1]")
            l0, l1 = np.interp(0.0, a, v), np.interp(1.0, a, v)
            chord = (1 - a[inside]) * l0 + a[inside] * l1
            bars.append(float(np.max(v[inside] - chord)))
            maxes.append(float(np.max(v[inside])))
        out["surface_barrier"] = float(np.mean(bars))
        out["surface_interp_max"] = float(np.mean(maxes))
    if planes:
        theta = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        rmax = max(radii)
        for s in planes:
            if not (s.xs.min() <= -rmax and s.xs.max() >= rmax and s.ys.min() <= -rmax and s.ys.max() >= rmax):
                raise SurfaceError(f"surface_features: plane does not cover radius {rmax}")
        for r in radii:
            vals = []
            for s in planes:
                v = s.values[metric]
                c = float(_bilinear(s, v, np.array([0.0]), np.array([0.0]))[0])
                vals.append(float(_bilinear(s, v, r * np.cos(theta), r * np.sin(theta)).mean() - c))
            out[f"surface_plane_rise_r{r:g}"] = float(np.mean(vals))
        mx = []
        for s in planes:
            v = s.values[metric]
            gx, gy = np.meshgrid(s.xs, s.ys)
            c = float(_bilinear(s, v, np.array([0.0]), np.array([0.0]))[0])
            mx.append(float(np.nanmax(np.where(gx ** 2 + gy ** 2 <= rmax ** 2 + 1e-12, v, -np.inf)) - c))
        out[f"surface_plane_max_r{rmax:g}"] = float(np.mean(mx))
    return out
