"""Losses of flat parameter vectors: the protocol every path algorithm uses.

This is the base module of the path code (``network_losses.py``, ``barriers.py``,
``connectivity.py``, ``neb.py`` and ``curves.py`` build on it; ``paths.py`` re-exports the
public names).

Loss-function protocol used by every path algorithm
---------------------------------------------------
A *batched loss* maps a stack of flat parameter vectors ``thetas`` of shape ``(B, D)`` to the
losses ``(B,)``: all images of one step are evaluated in one call. It must be differentiable
with torch.autograd, and row ``i`` of the output may depend on row ``i`` of the input only
(then the gradient of ``losses.sum()`` is the per-point gradient). A *stochastic* batched loss
takes a second argument, ``loss_fn(thetas, batch)``; the algorithms pass the next element of
their ``batches`` iterable as ``batch`` (the same minibatch for every point of one step).
Wrap an unbatched ``loss_fn(theta (D,)) -> scalar`` with :func:`batched_loss`, and a network
with :func:`~topoland.landscape.network_losses.network_loss`.

Also here: checked calls and per-point gradients of a batched loss, the endless minibatch
stream, and the small in-place optimizer NEB and the curves step with.
"""
from __future__ import annotations

import itertools
from typing import Callable, Iterable

import torch
from torch import Tensor

from topoland.errors import ConfigError, TopolandError

__all__ = ["PathError", "batched_loss"]


class PathError(TopolandError):
    """A path computation got inconsistent input (shapes, endpoints, loss output)."""


# --------------------------------------------------------------------------------------
# Loss functions of flat parameter vectors
# --------------------------------------------------------------------------------------

def batched_loss(loss_fn: Callable[[Tensor], Tensor], *, method: str = "vmap") -> Callable:
    """Turn an unbatched ``loss_fn(theta (D,)) -> scalar`` into a batched ``(B, D) -> (B,)``.

    ``method="vmap"`` uses :func:`torch.func.vmap` (the function must be vmap-compatible: no
    ``.item()``, no data-dependent Python control flow, no in-place ops on its input);
    ``method="loop"`` calls the function once per row and stacks the results (always works,
    slower; also the plain-loop reference for the vmap path). Both keep autograd.
    """
    if method == "vmap":
        vm = torch.func.vmap(loss_fn)

        def _batched(thetas: Tensor) -> Tensor:
            return vm(_as_2d(thetas, "thetas"))
    elif method == "loop":
        def _batched(thetas: Tensor) -> Tensor:
            thetas = _as_2d(thetas, "thetas")
            return torch.stack([torch.as_tensor(loss_fn(t)).reshape(()) for t in thetas])
    else:
        raise ConfigError(f"batched_loss method must be 'vmap' or 'loop', got {method!r}")
    _batched.__wrapped__ = loss_fn
    return _batched


def _as_2d(thetas: Tensor, name: str) -> Tensor:
    if not isinstance(thetas, Tensor) or thetas.dim() != 2:
        raise PathError(f"{name} must be a 2-D tensor (B, D) of flat parameter vectors, "
                        f"got {getattr(thetas, 'shape', type(thetas))}")
    return thetas


def _call_loss(loss_fn: Callable, thetas: Tensor, batch=None) -> Tensor:
    """Evaluate a batched loss and check that it returns ``(B,)``."""
    out = loss_fn(thetas) if batch is None else loss_fn(thetas, batch)
    if not isinstance(out, Tensor) or out.shape != (thetas.shape[0],):
        raise PathError(f"loss_fn must return a tensor of shape ({thetas.shape[0]},) for "
                        f"thetas of shape {tuple(thetas.shape)}, got "
                        f"{getattr(out, 'shape', type(out))}")
    return out


def _loss_and_grad(loss_fn: Callable, thetas: Tensor, batch=None) -> tuple[Tensor, Tensor]:
    """Losses ``(B,)`` and per-point gradients ``(B, D)`` from one batched call."""
    x = thetas.detach().requires_grad_(True)
    with torch.enable_grad():
        losses = _call_loss(loss_fn, x, batch)
        (grads,) = torch.autograd.grad(losses.sum(), x)
    return losses.detach(), grads.detach()


def _batch_stream(batches: Iterable | None):
    """Endless stream of minibatches (``None`` forever when ``batches`` is None).

    A re-iterable (list, DataLoader) restarts when exhausted; a one-shot iterator that runs
    out raises :class:`PathError`.
    """
    if batches is None:
        yield from itertools.repeat(None)
        return
    while True:
        it = iter(batches)
        one_shot = it is batches
        empty = True
        for b in it:
            empty = False
            yield b
        if one_shot or empty:
            raise PathError("batches ran out: pass a re-iterable (list, DataLoader) or an "
                            "endless iterator")


class _TensorOptimizer:
    """SGD (heavy-ball momentum, PyTorch's convention) or Adam on one tensor, in place.

    A few lines instead of ``torch.optim`` (whose first use imports the compiler stack,
    seconds on a busy CPU); the update rules are those of ``torch.optim.SGD``/``Adam``.
    """

    def __init__(self, name: str, lr: float, *, momentum: float = 0.0,
                 weight_decay: float = 0.0, betas=(0.9, 0.999), eps: float = 1e-8):
        if name not in ("sgd", "adam"):
            raise ConfigError(f"optimizer must be 'sgd' or 'adam', got {name!r}")
        self.name, self.lr, self.momentum, self.wd = name, lr, momentum, weight_decay
        self.betas, self.eps, self.t = betas, eps, 0
        self.buf = self.m = self.v = None

    @torch.no_grad()
    def step(self, x: Tensor, g: Tensor) -> None:
        if self.wd:
            g = g + self.wd * x
        self.t += 1
        if self.name == "sgd":
            if self.momentum:
                self.buf = g.clone() if self.buf is None else self.buf.mul_(self.momentum).add_(g)
                g = self.buf
            x.sub_(self.lr * g)
            return
        b1, b2 = self.betas
        if self.m is None:
            self.m, self.v = torch.zeros_like(x), torch.zeros_like(x)
        self.m.mul_(b1).add_(g, alpha=1 - b1)
        self.v.mul_(b2).addcmul_(g, g, value=1 - b2)
        mhat = self.m / (1 - b1 ** self.t)
        vhat = self.v / (1 - b2 ** self.t)
        x.sub_(self.lr * mhat / (vhat.sqrt() + self.eps))
