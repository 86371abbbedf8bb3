"""Per-sample metrics recorded beside the loss: built-in names and user callables.

A metric is one of

* ``"loss"``: the loss in use (:mod:`topoland.nets.losses`: a name or a per-sample callable);
* ``"accuracy"`` / ``"error"``: argmax of the output against class-index targets, in [0, 1];
* a callable ``(output (N, ...), target (N, ...)) -> (N,)`` of per-sample values.

``metrics=`` takes a name, a callable (keyed by its ``__name__``), a sequence of those or of
``(name, metric)`` pairs, or a dict ``{name: metric}``; ``None`` is the default of the loss:
``("loss", "accuracy")`` where accuracy means something (:func:`topoland.nets.losses.tracks_accuracy`),
else ``("loss",)``. Every recorded value is the mean of the per-sample values over the split.

Batched evaluation applies a metric once to the outputs of B points flattened to ``(B * N, ...)``
(targets repeated): a per-sample function gives the same values as B separate calls, and needs
no ``vmap`` support.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from topoland.errors import ConfigError
from topoland.nets.losses import is_classification, resolve_loss, tracks_accuracy

__all__ = ["BUILTIN_METRICS", "resolve_metrics", "default_metrics", "per_sample", "metric_sums",
           "loss_and_metrics", "prepare_target", "config_metrics_check", "load_metrics",
           "with_defaults"]

#: names a user metric may not take: they are the recorded loss and accuracy columns
_RESERVED_NAMES = ("loss", "acc", "err", "accuracy", "error")

BUILTIN_METRICS = ("loss", "accuracy", "error")


def default_metrics(loss_name: str, target: Tensor | None) -> tuple[str, ...]:
    """``("loss", "accuracy")`` where accuracy is meaningful for this loss and target
    (:func:`~topoland.nets.losses.tracks_accuracy`; without a target: a classification loss),
    else ``("loss",)``."""
    ok = is_classification(loss_name) if target is None else tracks_accuracy(loss_name, target)
    return ("loss", "accuracy") if ok else ("loss",)


def _items(metrics) -> list[tuple[str, object]]:
    if isinstance(metrics, str) or callable(metrics):
        metrics = (metrics,)
    if isinstance(metrics, Mapping):
        return [(str(k), v) for k, v in metrics.items()]
    out = []
    for m in metrics:
        if isinstance(m, str):
            out.append((m, m))
        elif isinstance(m, tuple) and len(m) == 2:
            out.append((str(m[0]), m[1]))
        else:
            out.append((getattr(m, "__name__", None), m))
    return out


def resolve_metrics(metrics, *, loss_name: str = "cross_entropy", target: Tensor | None = None,
                    error: type[Exception] = ConfigError) -> list[tuple[str, object]]:
    """``[(name, metric)]`` of ``metrics`` (module docstring), checked.

    ``"accuracy"``/``"error"`` with float targets (a regression) raise ``error`` naming the dtype.
    """
    if metrics is None:
        metrics = default_metrics(loss_name, target)
    out = []
    for name, m in _items(metrics):
        if isinstance(m, str):
            if m not in BUILTIN_METRICS:
                raise error(f"unknown metric {m!r}; use one of {BUILTIN_METRICS} or a callable "
                            f"(output, target) -> per-sample values (N,)")
            if m != "loss" and target is not None and (target.is_floating_point() or target.is_complex()):
                raise error(f"metric {m!r} needs integer class-index targets, but the targets are "
                            f"{target.dtype} of shape {tuple(target.shape)} (a regression): record "
                            f"'loss' or your own callables")
        elif not callable(m):
            raise error(f"metric {name!r} is neither a name nor a callable (got {type(m).__name__})")
        if not name or name == "<lambda>":
            raise error("a metric callable needs a name: pass (name, fn) or a dict {name: fn}")
        out.append((name, m))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise error(f"duplicate metric names in {names}")
    if not out:
        raise error("metrics is empty")
    return out


def _shape(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__


def _values(name: str, m, loss_fn: Callable, output: Tensor, target: Tensor, error) -> Tensor:
    if m == "loss":
        v = loss_fn(output, target)
    elif m in ("accuracy", "error"):
        hit = output.argmax(-1) == target
        v = hit if m == "accuracy" else ~hit
    else:
        v = m(output, target)
    n = output.shape[0]
    if not isinstance(v, Tensor) or tuple(v.shape) != (n,):
        raise error(f"metric {name!r} must return per-sample values, shape ({n},); it returned "
                    f"{_shape(v)} for output {_shape(output)} and target {_shape(target)}")
    return v


def per_sample(ms, loss_fn: Callable, output: Tensor, target: Tensor, *,
               error: type[Exception] = ConfigError) -> dict[str, Tensor]:
    """``{name: (N,) float64}`` of every metric for one point's ``output (N, ...)``."""
    return {name: _values(name, m, loss_fn, output, target, error).to(torch.float64) for name, m in ms}


def metric_sums(ms, loss_fn: Callable, outputs: Tensor, target: Tensor, *,
                error: type[Exception] = ConfigError) -> dict[str, Tensor]:
    """``{name: (B,) float64}``: sums over the N samples of every metric, for B points' outputs
    ``(B, N, ...)`` against one target ``(N, ...)``."""
    b, n = outputs.shape[:2]
    flat = outputs.reshape(b * n, *outputs.shape[2:])
    tgt = target.unsqueeze(0).expand(b, *target.shape).reshape(b * n, *target.shape[1:])
    return {name: _values(name, m, loss_fn, flat, tgt, error).reshape(b, n).to(torch.float64).sum(1)
            for name, m in ms}


def loss_and_metrics(loss, metrics, *, target: Tensor | None, error: type[Exception] = ConfigError):
    """``(loss_name, loss_fn, ms)``: the resolved loss (:func:`~topoland.nets.losses.resolve_loss`) and
    metrics (:func:`resolve_metrics`) of one call."""
    if isinstance(loss, tuple) and len(loss) == 2 and callable(loss[1]):
        name, fn = loss
    else:
        try:
            name, fn = resolve_loss(loss)
        except ConfigError as exc:
            raise error(str(exc)) from None
    return name, fn, resolve_metrics(metrics, loss_name=name, target=target, error=error)


def prepare_target(loss_name: str, y: Tensor) -> Tensor:
    """Targets as the loss reads them: int64 class indices for the classification losses (and
    integer targets of a callable), float targets unchanged."""
    if is_classification(loss_name) or not (y.is_floating_point() or y.is_complex()):
        return y.to(torch.long)
    return y


def config_metrics_check(v) -> str | None:
    """The check of a config's ``train.metrics`` table ``{name = "package.module:function"}``:
    each name an identifier other than the loss/accuracy columns, each value a factory string
    (imported when the run starts, before the run directory is touched)."""
    import re

    from topoland.declare import _FACTORY_FORM
    for name, spec in v.items():
        if not re.fullmatch(r"[A-Za-z_]\w*", str(name)) or name in _RESERVED_NAMES:
            return (f"metric name {name!r} must be an identifier other than {', '.join(_RESERVED_NAMES)} "
                    f"(it becomes the columns train_{name}, val_{name}, test_{name})")
        if not isinstance(spec, str) or not re.fullmatch(_FACTORY_FORM, spec):
            return (f"metric {name!r} = {spec!r} must be 'package.module:function', a per-sample function "
                    f"(output, target) -> (N,) of your own")
    return None


def load_metrics(spec: Mapping | None) -> dict[str, Callable]:
    """``{name: callable}`` of a config's ``train.metrics`` table, each factory string imported
    (:func:`topoland.declare.load_factory`; errors name ``train.metrics.<name>``)."""
    from topoland.declare import load_factory
    return {str(k): load_factory(v, f"train.metrics.{k}") for k, v in (spec or {}).items()}


def with_defaults(extra: Mapping | None, *, loss_name: str, target: Tensor | None,
                  accuracy: str = "accuracy") -> list:
    """The default metrics of the loss (:func:`default_metrics`, its accuracy recorded as
    ``accuracy``: "accuracy" or "error") followed by ``extra``'s ``(name, callable)`` pairs: what a
    stage records when the user asked for more."""
    base = [accuracy if m == "accuracy" else m for m in default_metrics(loss_name, target)]
    return [*((m, m) for m in base), *dict(extra or {}).items()]
