"""One epoch of minibatch training and the eval-mode loss/accuracy of a model on its splits, for
any training loss (:mod:`topoland.nets.losses`); :func:`topoland.train.training.train_minimum`
drives them.

``loss`` arguments are ``(name, fn)`` pairs from :func:`topoland.nets.losses.resolve_loss`: the
batch objective is :func:`~topoland.nets.losses.mean_loss` (torch's fused mean for the named
classification losses, so cross-entropy results are those of the cross-entropy-only code);
accuracy is counted only when ``with_acc`` (otherwise it is NaN).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from topoland.data import DataSplits, as_splits, augment_batch, minibatch_order
from topoland.errors import ConfigError
from topoland.nets.losses import mean_loss, resolve_loss, tracks_accuracy
from topoland.nets.params import has_batchnorm
from topoland.train.optim import PAL, EntropySGD
from topoland.utils import resolve_device

__all__ = ["train_one_epoch", "evaluate_split", "evaluate_model"]


def _loss_pair(loss, y: Tensor, with_acc: bool | None):
    """``(name, fn, with_acc)`` of a loss name, callable or resolved ``(name, fn)`` pair."""
    name, fn = loss if isinstance(loss, tuple) else resolve_loss(loss)
    return name, fn, tracks_accuracy(name, y) if with_acc is None else bool(with_acc)


def _correct(logits: Tensor, y: Tensor, with_acc: bool) -> int:
    return int((logits.argmax(1) == y).sum()) if with_acc else 0


def _acc(correct, seen: int, with_acc: bool) -> float:
    return float(correct) / seen if with_acc else float("nan")


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, *,
                    batch_size: int, kind: str, augment: bool, generator: torch.Generator,
                    on_step: Callable[[int, int], None] | None = None, loss="cross_entropy",
                    with_acc: bool | None = None) -> tuple[float, float, bool]:
    """One pass of minibatch training (train mode) over ``x`` ``(N, ...)``, ``y`` ``(N,)``.

    ``x``/``y`` must be on the model's device. ``loss``: a name of
    :data:`topoland.nets.losses.LOSSES`, a callable ``(output, target) -> (N,)`` or a resolved
    ``(name, fn)`` pair; ``with_acc``: count accuracy (default: when the loss tracks it,
    :func:`topoland.nets.losses.tracks_accuracy`; otherwise the accuracy returned is NaN).
    Returns ``(mean loss (nats for cross-entropy), accuracy, finite)``
    over the minibatches seen; stops at the first non-finite loss (``finite`` False). Batches
    of one example are skipped for models with BatchNorm (batch statistics need two).
    ``on_step(step, n_steps)`` is called after each update (1-based step).

    Closure optimizers: :class:`~topoland.train.optim.PAL` measures twice on each (once augmented)
    batch, the second forward leaving BN running statistics untouched; models with active
    dropout are refused (PAL needs the same random draws). :class:`~topoland.train.optim.EntropySGD`
    takes ``L`` consecutive batches per outer step; the reported loss/accuracy are those of the
    first batch of each outer step (measured at the outer point).
    """
    name, fn, with_acc = _loss_pair(loss, y, with_acc)
    lo = (name, fn, with_acc)
    if isinstance(optimizer, PAL):
        return _epoch_pal(model, optimizer, x, y, batch_size=batch_size, kind=kind, augment=augment,
                          generator=generator, on_step=on_step, loss=lo)
    if isinstance(optimizer, EntropySGD):
        return _epoch_entropy(model, optimizer, x, y, batch_size=batch_size, kind=kind, augment=augment,
                              generator=generator, on_step=on_step, loss=lo)
    model.train()
    batches = minibatch_order(len(y), batch_size, generator)
    skip_single = has_batchnorm(model)
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    seen = 0
    for step, idx in enumerate(batches, 1):
        if skip_single and len(idx) < 2:
            if on_step is not None:
                on_step(step, len(batches))
            continue
        idx = idx.to(x.device)
        xb, yb = x[idx], y[idx]
        if augment:
            xb = augment_batch(xb, kind, generator)
        logits = model(xb)
        loss = mean_loss(name, fn, logits, yb)
        if not bool(torch.isfinite(loss)):
            return float("nan"), float("nan"), False
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach().double() * len(idx)
        if with_acc:
            correct += (logits.detach().argmax(1) == yb).sum()
        seen += len(idx)
        if on_step is not None:
            on_step(step, len(batches))
    if seen == 0:
        return float("nan"), float("nan"), True
    return float(loss_sum) / seen, _acc(correct, seen, with_acc), True


def _active_dropout(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())


def _epoch_pal(model, optimizer, x, y, *, batch_size, kind, augment, generator, on_step, loss):
    name, fn, with_acc = loss
    if _active_dropout(model):
        raise ConfigError("optimizer 'pal' cannot train a model with dropout: its two loss "
                          "measurements need the same random draws (set the model's dropout to 0)")
    model.train()
    batches = minibatch_order(len(y), batch_size, generator)
    skip_single = has_batchnorm(model)
    loss_sum, correct, seen = 0.0, 0, 0
    for step, idx in enumerate(batches, 1):
        if skip_single and len(idx) < 2:
            if on_step is not None:
                on_step(step, len(batches))
            continue
        idx = idx.to(x.device)
        xb, yb = x[idx], y[idx]
        if augment:
            xb = augment_batch(xb, kind, generator)
        held = {}

        def closure(backward=True):
            if backward:
                logits = model(xb)
                loss = mean_loss(name, fn, logits, yb)
                loss.backward()
                held["logits"] = logits.detach()
                return loss.detach()
            saved = [(b, b.detach().clone()) for b in model.buffers()]
            loss = mean_loss(name, fn, model(xb), yb)
            for b, v in saved:
                b.copy_(v)
            return loss.detach()

        loss = optimizer.step(closure)
        if not bool(torch.isfinite(loss)):
            return float("nan"), float("nan"), False
        loss_sum += float(loss) * len(idx)
        correct += _correct(held["logits"], yb, with_acc)
        seen += len(idx)
        if on_step is not None:
            on_step(step, len(batches))
    if seen == 0:
        return float("nan"), float("nan"), True
    return loss_sum / seen, _acc(correct, seen, with_acc), True


def _epoch_entropy(model, optimizer, x, y, *, batch_size, kind, augment, generator, on_step, loss):
    name, fn, with_acc = loss
    model.train()
    batches = minibatch_order(len(y), batch_size, generator)
    if has_batchnorm(model):
        batches = [b for b in batches if len(b) >= 2]
    L = int(optimizer.param_groups[0]["L"])
    chunks = [batches[i:i + L] for i in range(0, len(batches), L)]
    loss_sum, correct, seen = 0.0, 0, 0
    for step, chunk in enumerate(chunks, 1):
        calls = []

        def closure():
            idx = chunk[len(calls) % len(chunk)].to(x.device)
            xb, yb = x[idx], y[idx]
            if augment:
                xb = augment_batch(xb, kind, generator)
            logits = model(xb)
            loss = mean_loss(name, fn, logits, yb)
            loss.backward()
            calls.append((logits.detach(), yb))
            return loss.detach()

        loss = optimizer.step(closure)
        if not bool(torch.isfinite(loss)):
            return float("nan"), float("nan"), False
        logits0, y0 = calls[0]
        loss_sum += float(loss) * len(y0)
        correct += _correct(logits0, y0, with_acc)
        seen += len(y0)
        if on_step is not None:
            on_step(step, len(chunks))
    if seen == 0:
        return float("nan"), float("nan"), True
    return loss_sum / seen, _acc(correct, seen, with_acc), True


@torch.no_grad()
def evaluate_split(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 1024,
                   device="auto", loss="cross_entropy", with_acc: bool | None = None) -> tuple[float, float]:
    """Mean loss (cross-entropy in nats by default) and accuracy of ``model`` on ``(x, y)`` in eval mode.

    ``loss``/``with_acc`` as in :func:`train_one_epoch` (accuracy NaN when not tracked).
    Empty splits give ``(nan, nan)``. The model's train/eval mode is restored afterwards.
    """
    if len(y) == 0:
        return float("nan"), float("nan")
    name, fn, with_acc = _loss_pair(loss, y, with_acc)
    if isinstance(device, str) and device == "auto":
        dev = next(model.parameters()).device
    else:
        dev = resolve_device(device)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    correct = torch.zeros((), dtype=torch.int64, device=dev)
    try:
        for i in range(0, len(y), batch_size):
            xb, yb = x[i:i + batch_size].to(dev), y[i:i + batch_size].to(dev)
            logits = model(xb)
            if name == "cross_entropy":
                loss_sum += nn.functional.cross_entropy(logits, yb, reduction="sum").double()
            else:
                loss_sum += fn(logits, yb).double().sum()
            if with_acc:
                correct += (logits.argmax(1) == yb).sum()
    finally:
        model.train(was_training)
    return float(loss_sum) / len(y), _acc(correct, len(y), with_acc)


def evaluate_model(model: nn.Module, data: DataSplits, device="auto", *, batch_size: int = 1024,
                   loss="cross_entropy") -> dict[str, float]:
    """Loss (mean cross-entropy in nats by default; any ``loss`` of :func:`train_one_epoch`) and
    accuracy on every split, in eval mode.

    Keys: ``train_loss, train_acc`` (against the possibly corrupted training labels),
    ``train_clean_loss, train_clean_acc`` (against the clean ones), ``val_loss, val_acc,
    test_loss, test_acc``, ``gap = test_loss - train_loss`` and ``acc_gap = train_acc - test_acc``.
    When the loss does not track accuracy (mse, l1, a callable on float targets:
    :func:`topoland.nets.losses.tracks_accuracy`) the ``*_acc`` keys and ``acc_gap`` are absent.
    The model is moved to ``device``. data: anything :func:`topoland.data.as_splits` takes.
    """
    data = as_splits(data, what="evaluate_model data")
    name, fn, with_acc = _loss_pair(loss, data.y_train, None)
    kw = dict(batch_size=batch_size, loss=(name, fn), with_acc=with_acc)
    dev = resolve_device(device)
    model.to(dev)
    out = {}
    out["train_loss"], out["train_acc"] = evaluate_split(model, data.x_train, data.y_train, device=dev, **kw)
    if torch.equal(data.y_train, data.y_train_clean):
        out["train_clean_loss"], out["train_clean_acc"] = out["train_loss"], out["train_acc"]
    else:
        out["train_clean_loss"], out["train_clean_acc"] = evaluate_split(
            model, data.x_train, data.y_train_clean, device=dev, **kw)
    out["val_loss"], out["val_acc"] = evaluate_split(model, data.x_val, data.y_val, device=dev, **kw)
    out["test_loss"], out["test_acc"] = evaluate_split(model, data.x_test, data.y_test, device=dev, **kw)
    out["gap"] = out["test_loss"] - out["train_loss"]
    out["acc_gap"] = out["train_acc"] - out["test_acc"]
    if not with_acc:
        out = {k: v for k, v in out.items() if not k.endswith("acc") and k != "acc_gap"}
    return out
