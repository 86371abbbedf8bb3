"""Training losses: per-sample functions ``loss(output (N, ...), target (N, ...)) -> (N,)``.

:data:`LOSSES` names the built-in ones:

* ``"cross_entropy"``: ``output`` logits ``(N, C)``, ``target`` int64 class indices ``(N,)`` (nats);
* ``"nll"``: ``output`` log-probabilities ``(N, C)``, ``target`` int64 class indices ``(N,)``;
* ``"mse"``, ``"l1"``: squared / absolute error averaged over the output's non-batch dimensions,
  ``target`` float of the output's shape.

Anywhere a ``loss=`` is taken (training, sampling, surfaces, curvature, paths) a callable
``(output, target) -> (N,)`` may stand in for a name, or a factory string
``"package.module:function"`` naming one (a config's ``train.loss``; importing it runs the user's
code); :func:`resolve_loss` checks it once on a small batch. The mean over a batch is the
training objective; accuracy means something only for class-index targets
(:func:`tracks_accuracy`).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from topoland.errors import ConfigError

__all__ = ["LOSSES", "CLASSIFICATION_LOSSES", "resolve_loss", "is_classification", "tracks_accuracy",
           "mean_loss", "check_loss_output", "config_loss_check"]


def _cross_entropy(output: Tensor, target: Tensor) -> Tensor:
    """Per-sample cross-entropy (nats) of logits ``(N, C)`` against class indices ``(N,)``."""
    return F.cross_entropy(output, target, reduction="none")


def _nll(output: Tensor, target: Tensor) -> Tensor:
    """Per-sample negative log-likelihood of log-probabilities ``(N, C)`` at class indices ``(N,)``."""
    return F.nll_loss(output, target, reduction="none")


def _mse(output: Tensor, target: Tensor) -> Tensor:
    """Per-sample squared error, averaged over the non-batch dimensions; ``(N,)``."""
    return (output - target).square().reshape(output.shape[0], -1).mean(1)


def _l1(output: Tensor, target: Tensor) -> Tensor:
    """Per-sample absolute error, averaged over the non-batch dimensions; ``(N,)``."""
    return (output - target).abs().reshape(output.shape[0], -1).mean(1)


LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "cross_entropy": _cross_entropy, "nll": _nll, "mse": _mse, "l1": _l1}
CLASSIFICATION_LOSSES = ("cross_entropy", "nll")

# torch's fused mean reductions of the named losses: the training objective of a named loss is
# computed by these so that its results stay bit-identical to the cross-entropy-only versions
_REDUCED = {"cross_entropy": F.cross_entropy, "nll": F.nll_loss}


def is_classification(loss_name: str) -> bool:
    """Whether ``loss_name`` is a classification loss of class-index targets (cross_entropy, nll)."""
    return loss_name in CLASSIFICATION_LOSSES


def config_loss_check(v) -> str | None:
    """The check of a config's ``train.loss`` key: a name of :data:`LOSSES` or a factory string
    ``"package.module:function"`` (its import and its fit to the model and data are checked when
    the run starts, before the run directory is touched)."""
    import re

    from topoland.declare import _FACTORY_FORM
    if v in LOSSES or (isinstance(v, str) and re.fullmatch(_FACTORY_FORM, v)):
        return None
    return (f"must be one of {', '.join(map(repr, LOSSES))} or 'package.module:function' "
            f"(a per-sample loss (output, target) -> (N,) of your own)")


def tracks_accuracy(loss_name: str, target: Tensor) -> bool:
    """Whether accuracy (argmax of the output against the target) is recorded with this loss:
    always for the classification losses, for a user callable when ``target`` holds integer
    class indices, never for mse/l1."""
    if loss_name in LOSSES:
        return is_classification(loss_name)
    return not (target.is_floating_point() or target.is_complex())


def _shape(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__


def check_loss_output(name: str, fn, output: Tensor, target: Tensor) -> None:
    """Run ``fn`` once on ``(output, target)`` (a small batch) and check it returns ``(N,)``.

    Raises one :class:`ConfigError` naming the loss and the shapes otherwise.
    """
    with torch.no_grad():
        try:
            v = fn(output, target)
        except Exception as e:  # noqa: BLE001 - reported with the shapes it was given
            raise ConfigError(f"loss {name!r} failed on output {_shape(output)} and target "
                              f"{_shape(target)} ({type(e).__name__}: {e})") from e
    n = output.shape[0]
    if not isinstance(v, Tensor) or tuple(v.shape) != (n,):
        raise ConfigError(f"loss {name!r} returned shape {_shape(v)} for output {_shape(output)} and "
                          f"target {_shape(target)}: it must return one value per sample, shape ({n},)")


def resolve_loss(loss, *, output: Tensor | None = None, target: Tensor | None = None,
                 where: str = "train.loss") -> tuple[str, Callable[[Tensor, Tensor], Tensor]]:
    """``(name, per-sample fn)`` of a loss name in :data:`LOSSES`, a callable or a factory string.

    A callable ``(output, target) -> (N,)`` is named by its ``__name__`` ("custom" for a lambda);
    a factory string ``"package.module:function"`` is imported (:func:`topoland.declare.load_factory`,
    errors naming the config key ``where``) and named by the string.
    With a small batch ``output``/``target``, the loss is run on it once and its shape checked
    (:func:`check_loss_output`); the named regression losses also need ``target`` of the output's
    shape. Unknown names raise :class:`ConfigError` listing the known ones.
    """
    if isinstance(loss, str) and ":" in loss:  # a factory string: the user's own function
        from topoland.declare import load_factory
        name, fn = loss, load_factory(loss, where)
    elif isinstance(loss, str):
        if loss not in LOSSES:
            raise ConfigError(f"unknown loss {loss!r}; known losses: {', '.join(LOSSES)} "
                              f"(or pass a callable (output, target) -> per-sample losses (N,))")
        name, fn = loss, LOSSES[loss]
        if output is not None and is_classification(name) and (target.is_floating_point() or target.ndim != 1):
            raise ConfigError(f"loss {name!r} needs class-index targets of shape (N,), got {target.dtype} "
                              f"targets {_shape(target)} (output {_shape(output)}); for regression targets "
                              f"use 'mse' or 'l1'")
        if output is not None and not is_classification(name) and tuple(target.shape) != tuple(output.shape):
            raise ConfigError(f"loss {name!r} needs a target of the output's shape: got output "
                              f"{_shape(output)} and target {_shape(target)}")
    elif callable(loss):
        name = getattr(loss, "__name__", None) or type(loss).__name__
        name, fn = ("custom" if name == "<lambda>" else name), loss
        if name in LOSSES:  # a user function that happens to share a built-in's name
            name = f"custom:{name}"
    else:
        raise ConfigError(f"loss must be a name ({', '.join(LOSSES)}) or a callable, "
                          f"got {type(loss).__name__}")
    if output is not None:
        check_loss_output(name, fn, output, target)
    return name, fn


def mean_loss(name: str, fn, output: Tensor, target: Tensor) -> Tensor:
    """The batch objective: the mean of the per-sample losses (a scalar with autograd)."""
    reduced = _REDUCED.get(name)
    return reduced(output, target) if reduced is not None else fn(output, target).mean()
