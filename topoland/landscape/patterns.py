"""Multi-point optimization: loss patterns drawn into the landscape (Skorokhodov & Burtsev).

A plane ``w(x, y) = origin + s (x right + y up)`` in parameter space is trained so that a given
binary picture appears in the loss on a grid of cells over ``[-1, 1]^2``: the loss (``loss=``,
default cross-entropy in nats; a name of :data:`topoland.nets.losses.LOSSES` or a per-sample
callable ``(output, target) -> (N,)``) is minimized at "low" cells and maximized, clipped at
``clip`` (loss units), at "high" cells. ``right``
and ``up`` are kept orthogonal and of equal norm by Gram-Schmidt after every step, so the
picture is not distorted by the parametrization.

Grid convention: a mask is ``(H, W)`` bool, ``True`` = high-loss cell; row 0 is the top of the
picture. Cell ``(i, j)`` sits at ``x = linspace(-1, 1, W)[j]``, ``y = linspace(1, -1, H)[i]``.
Cells per step go through the network in one batched call
(:func:`topoland.nets.functional.functional_logits`, vmap over cells); :func:`_cell_losses_loop` is the
plain reference.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator
from torch import Tensor, nn

from topoland.nets.directions import orthogonal_pair
from topoland.errors import TopolandError
from topoland.nets.evaluation import evaluate
from topoland.nets.functional import functional_logits
from topoland.nets.losses import resolve_loss
from topoland.nets.metrics import prepare_target
from topoland.nets.params import flatten, get_params, has_batchnorm, param_names, unflatten
from topoland.utils import make_generator, resolve_device

__all__ = ["PatternError", "load_mask", "random_mask", "cell_coordinates", "plane_points",
           "gram_schmidt_", "LossPatternFitter", "pattern_gap"]


class PatternError(TopolandError):
    """A mask, plane or fitting option is invalid; the message names the culprit."""


# --------------------------------------------------------------------------------------------
# masks and the plane
# --------------------------------------------------------------------------------------------

def load_mask(src, size: tuple[int, int] | None = (30, 30), *, threshold: float = 0.5,
              invert: bool = False) -> np.ndarray:
    """A binary picture as a ``(H, W)`` bool mask (True = high-loss cell).

    src: a PNG/JPEG path (read with ``matplotlib.image.imread``) or an array ``(H, W)``,
    ``(H, W, 3)`` or ``(H, W, 4)``; colours are averaged to gray and scaled to [0, 1]
    (uint8 / 255). size: ``(H, W)`` of the result: the picture is area-averaged down to it
    (None keeps the size). A cell is high where its gray value is ``>= threshold`` (bright =
    high); ``invert=True`` swaps that.
    """
    if isinstance(src, (str, Path)):
        path = Path(src)
        if not path.is_file():
            raise PatternError(f"mask picture {str(path)!r} does not exist")
        import matplotlib.image as mpimg

        arr = np.asarray(mpimg.imread(str(path)))
    else:
        arr = np.asarray(src)
    if arr.dtype == np.uint8:
        arr = arr / 255.0
    arr = arr.astype(np.float64)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        arr = arr[..., :3].mean(2)
    if arr.ndim != 2 or arr.size == 0:
        raise PatternError(f"mask must be a 2-D picture (H, W[, 3|4]), got shape {np.shape(src)}")
    if size is not None:
        h, w = (int(s) for s in size)
        if h < 1 or w < 1 or h > arr.shape[0] or w > arr.shape[1]:
            raise PatternError(f"mask size {size} must be positive and at most the picture's {arr.shape}")
        t = torch.from_numpy(arr)[None, None]
        arr = F.adaptive_avg_pool2d(t, (h, w))[0, 0].numpy()
    high = arr >= threshold
    return ~high if invert else high


def random_mask(size: tuple[int, int], fill: float, seed: int) -> np.ndarray:
    """A random ``(H, W)`` bool mask: each cell is high with probability ``fill`` (numpy Generator)."""
    if not 0 <= fill <= 1:
        raise PatternError(f"random_mask fill must be in [0, 1], got {fill}")
    return np.random.default_rng(seed).random(tuple(size)) < fill


def cell_coordinates(shape: tuple[int, int]) -> Tensor:
    """Plane coordinates of every cell, row-major: ``(H * W, 2)`` float64 ``(x, y)``."""
    h, w = (int(s) for s in shape)
    xs = torch.linspace(-1, 1, w, dtype=torch.float64) if w > 1 else torch.zeros(1, dtype=torch.float64)
    ys = torch.linspace(1, -1, h, dtype=torch.float64) if h > 1 else torch.zeros(1, dtype=torch.float64)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)


def plane_points(origin: Tensor, right: Tensor, up: Tensor, scale, coords: Tensor) -> Tensor:
    """Points ``origin + scale (x right + y up)`` for coords ``(P, 2)``: returns ``(P, D)``.

    Differentiable in all arguments (scale may be a 0-d tensor)."""
    c = coords.to(origin.dtype).to(origin.device)
    return origin + scale * (c[:, :1] * right + c[:, 1:2] * up)


@torch.no_grad()
def gram_schmidt_(right: Tensor, up: Tensor) -> None:
    """In place: make ``up`` orthogonal to ``right`` and of the same norm (float64 arithmetic).

    ``up <- up - (up . right / right . right) right``, then ``up <- up |right| / |up|``.
    """
    r, u = right.double(), up.double()
    rr = float(r @ r)
    if rr == 0:
        raise PatternError("plane vector 'right' is zero; cannot orthogonalize 'up' against it")
    u = u - (float(u @ r) / rr) * r
    nu = float(u.norm())
    if nu == 0:
        raise PatternError("plane vector 'up' became parallel to 'right'")
    up.copy_((u * (rr ** 0.5 / nu)).to(up.dtype))


# --------------------------------------------------------------------------------------------
# per-cell losses: batched and reference
# --------------------------------------------------------------------------------------------

def _loss(loss):
    """``(name, per-sample fn)`` of a loss name, callable or resolved pair."""
    if isinstance(loss, tuple) and len(loss) == 2 and callable(loss[1]):
        return loss
    return resolve_loss(loss)


def _cell_losses(model: nn.Module, points: Tensor, xb: Tensor, yb: Tensor, *, train: bool,
                 loss="cross_entropy") -> Tensor:
    """Mean loss (loss units; nats for cross-entropy) of each point on one batch: points
    ``(B, D)`` -> ``(B,)``.

    One vmap call over the points (the loss is applied outside it, to the outputs flattened to
    ``(B * N, ...)``); differentiable in ``points``. train: BN uses batch statistics."""
    _, fn = _loss(loss)
    params = unflatten(points, model)
    out = functional_logits(model, params, None, xb, train=train)   # (B, N, ...)
    b, n = out.shape[:2]
    tgt = yb.unsqueeze(0).expand(b, *yb.shape).reshape(b * n, *yb.shape[1:])
    return fn(out.reshape(b * n, *out.shape[2:]), tgt).reshape(b, n).mean(1)


@torch.no_grad()
def _cell_losses_loop(model: nn.Module, points: Tensor, xb: Tensor, yb: Tensor, *, train: bool,
                      loss="cross_entropy") -> Tensor:
    """Reference for :func:`_cell_losses`: a fresh copy of the model per point, load_state_dict, forward."""
    _, fn = _loss(loss)
    names = param_names(model)
    out = []
    for p in points:
        m = copy.deepcopy(model)
        m.load_state_dict({**m.state_dict(), **unflatten(p.detach(), m, names)})
        m.eval()
        if train:
            for mod in m.modules():
                if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                    mod.train(True)
        out.append(fn(m(xb), yb).mean())
    return torch.stack(out)


# --------------------------------------------------------------------------------------------
# fitting
# --------------------------------------------------------------------------------------------

class LossPatternFitter(BaseEstimator):
    """Fit a plane whose loss landscape shows a binary mask (sklearn-style).

    Parameters: steps (Adam steps), lr, cells_per_step (half low, half high cells drawn with
    replacement each step; all in one batched forward), batch_size (training samples per step),
    clip (loss units, nats for cross-entropy; high cells' loss is maximized up to it), init_scale
    (initial s), seed (plane directions, cell and batch draws), loss (a name of LOSSES or a
    per-sample callable ``(output, target) -> (N,)``, checked once on 2 samples), device.

    ``fit(model, x, y, mask)`` (or ``fit(model, data, mask=mask)`` with any data form: its train
    split) starts from the model's weights as origin and an exactly
    orthogonal filter-normalized pair (:func:`topoland.nets.directions.orthogonal_pair`) as right/up.
    BN models are trained with batch statistics and evaluated with statistics recomputed per
    cell. Fitted attributes: ``origin_``, ``right_``, ``up_`` ``(D,)`` float32, ``scale_`` (float),
    ``mask_`` and ``history_`` (step, loss, low_loss, high_loss, cos, norm_ratio; the last two
    are measured after each Gram-Schmidt step).
    """

    def __init__(self, *, steps: int = 500, lr: float = 1e-3, cells_per_step: int = 8, batch_size: int = 128,
                 clip: float = 2.5, init_scale: float = 1.0, seed: int = 0, loss="cross_entropy",
                 device="auto"):
        self.steps, self.lr, self.cells_per_step, self.batch_size = steps, lr, cells_per_step, batch_size
        self.clip, self.init_scale, self.seed, self.device = clip, init_scale, seed, device
        self.loss = loss

    def _check(self, mask):
        for name, ok in [("steps", self.steps >= 1), ("lr", self.lr > 0), ("cells_per_step", self.cells_per_step >= 2),
                         ("batch_size", self.batch_size >= 1), ("clip", self.clip > 0),
                         ("init_scale", self.init_scale > 0)]:
            if not ok:
                raise PatternError(f"LossPatternFitter {name} is out of range: {getattr(self, name)!r}")
        mask = np.asarray(mask)
        if mask.ndim != 2 or mask.dtype != bool:
            raise PatternError(f"mask must be a 2-D bool array, got {mask.dtype} of shape {mask.shape}")
        if mask.all() or not mask.any():
            raise PatternError("mask needs both high (True) and low (False) cells")
        return mask

    def _data(self, model, x, y, what):
        """``(x, y, (loss name, fn))``: tensors (the train split of a data form when ``y`` is None),
        targets as the loss reads them, and the loss checked on the model's outputs for 2 samples."""
        from topoland.splits import tensors_or_pair
        x, y = tensors_or_pair(x, y, what=what, error=PatternError)
        name, fn = _loss(self.loss)
        y = prepare_target(name, y)
        if not isinstance(self.loss, tuple):
            flags = [(m, m.training) for m in model.modules()]
            model.eval()
            try:
                with torch.no_grad():
                    out2 = model(x[:2].to(next(model.parameters()).device))
            finally:
                for m, f in flags:
                    m.training = f
            name, fn = resolve_loss(self.loss, output=out2, target=y[:2].to(out2.device))
        return x, y, (name, fn)

    def fit(self, model: nn.Module, x, y: Tensor | None = None, mask=None) -> "LossPatternFitter":
        if mask is None:
            raise PatternError("LossPatternFitter.fit needs a mask: fit(model, x, y, mask) or "
                               "fit(model, data, mask=mask)")
        mask = self._check(mask)
        dev = resolve_device(self.device)
        model.to(dev)
        x, y, objective = self._data(model, x, y, "LossPatternFitter.fit data")
        x, y = x.to(dev), y.to(dev)
        train = has_batchnorm(model)
        d1, d2 = orthogonal_pair(model, self.seed)
        names = param_names(model)
        origin = flatten(get_params(model), names).float().to(dev).requires_grad_(True)
        right = flatten(d1, names).float().to(dev).requires_grad_(True)
        up = flatten(d2, names).float().to(dev).requires_grad_(True)
        gram_schmidt_(right, up)
        scale = torch.tensor(float(self.init_scale), device=dev, requires_grad=True)
        opt = torch.optim.Adam([origin, right, up, scale], lr=self.lr)
        coords = cell_coordinates(mask.shape).float().to(dev)
        flat = mask.reshape(-1)
        high_idx = torch.from_numpy(np.flatnonzero(flat))
        low_idx = torch.from_numpy(np.flatnonzero(~flat))
        g = make_generator(self.seed + 1)
        n_low = self.cells_per_step // 2
        n_high = self.cells_per_step - n_low
        rows = []
        for step in range(self.steps):
            lo = low_idx[torch.randint(len(low_idx), (n_low,), generator=g)]
            hi = high_idx[torch.randint(len(high_idx), (n_high,), generator=g)]
            bidx = torch.randint(len(y), (min(self.batch_size, len(y)),), generator=g).to(dev)
            cells = torch.cat([lo, hi]).to(dev)
            pts = plane_points(origin, right, up, scale, coords[cells])
            ce = _cell_losses(model, pts, x[bidx], y[bidx], train=train, loss=objective)
            low_loss, high_loss = ce[:n_low].mean(), ce[n_low:].clamp(max=self.clip).mean()
            loss = low_loss - high_loss
            if not bool(torch.isfinite(loss)):
                raise PatternError(f"loss pattern fit diverged at step {step} (lr={self.lr} too large?)")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            gram_schmidt_(right, up)
            with torch.no_grad():
                r, u = right.double(), up.double()
                cos = float(r @ u / (r.norm() * u.norm()))
                ratio = float(u.norm() / r.norm())
            rows.append({"step": step, "loss": float(loss.detach()), "low_loss": float(low_loss.detach()),
                         "high_loss": float(ce[n_low:].detach().mean()), "cos": cos, "norm_ratio": ratio})
        self.origin_, self.right_, self.up_ = (t.detach().cpu() for t in (origin, right, up))
        self.scale_ = float(scale.detach())
        self.mask_ = mask
        self.history_ = pd.DataFrame(rows)
        return self

    def points(self) -> Tensor:
        """Plane points of every cell, row-major: ``(H * W, D)`` float32."""
        if not hasattr(self, "origin_"):
            raise PatternError("LossPatternFitter is not fitted; call fit() first")
        return plane_points(self.origin_, self.right_, self.up_, self.scale_, cell_coordinates(self.mask_.shape))

    def evaluate(self, model: nn.Module, x, y: Tensor | None = None, *, metrics=None, batch_size: int = 1024,
                 device=None) -> dict[str, np.ndarray]:
        """The metrics of every cell on ``(x, y)`` (or a data form with ``y=None``: its train
        split): ``{name: (H, W)}``, via :func:`topoland.nets.evaluation.evaluate` (BN statistics
        recomputed per cell from x). metrics: None is "loss" (the fitter's ``loss``, in its units)
        and, for class-index targets, "accuracy"; or any ``metrics=`` of
        :mod:`topoland.nets.metrics`.

        Pass held-out data (the test split, as the source paper does): the plane was optimized on
        the training data given to :meth:`fit`, so a pattern that shows there measures only the
        optimization; one that shows on data the fit never saw is a property of the landscape."""
        dev = self.device if device is None else device
        pts = self.points()
        x, y, loss = self._data(model, x, y, "LossPatternFitter.evaluate data")
        bn = "recompute" if has_batchnorm(model) else "eval"
        res = evaluate(model, pts, x, y, loss=loss, metrics=metrics, batch_size=batch_size,
                       bn=bn, device=dev)
        return {k: v.reshape(self.mask_.shape) for k, v in res.items()}


def pattern_gap(grids: dict[str, np.ndarray], mask) -> dict[str, float]:
    """How well a mask shows: mean loss (and accuracy, when recorded) over low and high cells.

    grids: ``{"loss", ("accuracy")}`` ``(H, W)``; mask ``(H, W)`` bool (True = high). Returns
    ``low_loss, high_loss, loss_gap = high_loss - low_loss`` (loss units) and, when ``grids``
    has "accuracy" (class-index targets), ``low_acc, high_acc, acc_gap = low_acc - high_acc``.
    """
    mask = np.asarray(mask, bool)
    if "loss" not in grids:
        raise PatternError(f"pattern_gap needs a 'loss' grid, got {sorted(grids)}")
    out = {}
    for key, short in (("loss", "loss"), ("accuracy", "acc")):
        if key not in grids:
            continue
        g = np.asarray(grids[key])
        if g.shape != mask.shape:
            raise PatternError(f"grid {key!r} has shape {g.shape}, mask {mask.shape}")
        out[f"low_{short}"] = float(g[~mask].mean())
        out[f"high_{short}"] = float(g[mask].mean())
    out["loss_gap"] = out["high_loss"] - out["low_loss"]
    if "low_acc" in out:
        out["acc_gap"] = out["low_acc"] - out["high_acc"]
    return out
