"""Training and evaluation of minima.

Determinism: the model's initial weights come from :func:`topoland.nets.models.build_model`'s
``seed``; :func:`train_minimum` trains the given model *in place* from its current weights,
and its ``seed`` drives the minibatch order, the augmentation draws and the random labels of
the pretraining phase, each from its own ``torch.Generator``. The global RNG is never used, so
on the CPU the same model seed, data and recipe give bit-identical weights and metrics.
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from topoland import checks
from topoland.data import DataSplits, as_splits
from topoland.declare import Param, declare
from topoland.errors import ConfigError
from topoland.nets.losses import config_loss_check, resolve_loss, tracks_accuracy
from topoland.nets.metrics import config_metrics_check
from topoland.train.epochs import evaluate_model, evaluate_split, train_one_epoch
from topoland.train.optim import PAL, EntropySGD, SWAAverager
from topoland.utils import resolve_device

__all__ = ["TrainRecipe", "REFERENCE_RECIPE", "TrainResult", "train_minimum", "evaluate_model",
           "make_optimizer", "lr_at", "train_one_epoch", "evaluate_split", "target_met"]

_OPTIMIZERS = ("sgd", "adam", "swa", "entropy_sgd", "pal")


@declare({
    "optimizer": Param((str,), "sgd", checks.one_of("sgd", "adam", "swa", "entropy_sgd", "pal"), "optimizer"),
    "loss": Param((str,), "cross_entropy", config_loss_check, "training loss: cross_entropy (logits), nll "
                  "(log-probabilities), mse / l1 (float targets) or 'package.module:function' (your own "
                  "per-sample loss; runs your code)"),
    "metrics": Param((dict,), {}, config_metrics_check, "more per-sample values every stage records: "
                     "{name = 'package.module:function'} (columns train_<name>, val_<name>, test_<name>; "
                     "runs your code)"),
    "nesterov": Param((bool,), False, None, "Nesterov momentum"),
    "swa_start": Param((int, float), 0.75, checks.frac, "SWA: averaging starts at this fraction of epochs"),
    "swa_lr": Param((int, float), 0.01, checks.pos, "SWA: constant lr reached by SWALR"),
    "swa_anneal_epochs": Param((int,), 1, checks.nonneg, "SWA: epochs of cosine annealing to swa_lr"),
    "entropy_L": Param((int,), 5, checks.pos, "Entropy-SGD: SGLD steps (minibatches) per outer step"),
    "entropy_gamma0": Param((int, float), 0.03, checks.pos, "Entropy-SGD: initial scope gamma"),
    "entropy_gamma1": Param((int, float), 0.001, checks.nonneg, "Entropy-SGD: scoping growth, gamma_t = gamma0 (1+gamma1)^t"),
    "entropy_sgld_lr": Param((int, float), 0.1, checks.pos, "Entropy-SGD: inner SGLD step size"),
    "entropy_noise": Param((int, float), 1e-4, checks.nonneg, "Entropy-SGD: SGLD thermal noise"),
    "entropy_alpha": Param((int, float), 0.75, lambda v: None if 0 < v <= 1 else "must be in (0, 1]",
                          "Entropy-SGD: averaging weight of mu"),
    "pal_mu": Param((int, float), 0.1, checks.pos, "PAL: measuring step"),
    "pal_max_step": Param((int, float), 1.0, checks.pos, "PAL: maximum step"),
    "pal_momentum": Param((int, float), 0.0, checks.frac, "PAL: conjugate-gradient momentum"),
    "pal_adapt": Param((int, float), 1.0, checks.pos, "PAL: factor on the vertex step"),
    "lr": Param((int, float), 0.1, checks.pos, "learning rate"),
    "momentum": Param((int, float), 0.9, checks.frac, "SGD momentum"),
    "weight_decay": Param((int, float), 0.0, checks.nonneg, "L2 weight decay"),
    "batch_size": Param((int,), 128, checks.pos, "minibatch size"),
    "epochs": Param((int,), 20, checks.pos, "training epochs"),
    "milestones": Param((list,), [0.5, 0.75, 0.925], checks.numbers(checks.frac, min_len=0), "lr steps as fractions of epochs", arg=tuple),
    "gamma": Param((int, float), 0.1, checks.pos, "lr factor at each milestone"),
    "augment": Param((bool,), False, None, "crop+flip (images) / circular shift (signals)"),
    "target_loss": Param((int, float), 0.0, checks.nonneg, "stop at the first epoch end with train cross-entropy "
                        "<= this (nats, eval mode, full training split; 0 = no target)"),
    "target_acc": Param((int, float), 0.0, checks.unit, "stop at the first epoch end with train accuracy >= this "
                       "(eval mode, full training split; 0 = no target); with target_loss both must hold"),
    "pretrain_random_epochs": Param((int,), 0, checks.nonneg, "bad minima: epochs on random labels first"),
    "checkpoints_per_epoch": Param((int,), 0, checks.nonneg, "snapshots per epoch for PCA trajectories"),
})
@dataclass(frozen=True)
class TrainRecipe:
    """How to train a minimum.

    ``milestones`` are fractions of ``epochs``: the learning rate is multiplied by ``gamma``
    from epoch ``round(f * epochs)`` on (0-based), for each ``f``. ``pretrain_random_epochs``
    epochs on fully random labels (constant ``lr``, augmentation per ``pretrain_augment``) run
    first; the main phase then starts from those weights with a fresh optimizer.
    ``checkpoints_per_epoch`` > 0 records the flat parameter vector at the start and that many
    times per main-phase epoch (evenly spaced steps), for PCA trajectories.

    Stopping criterion: with ``target_loss`` > 0 (nats) and/or ``target_acc`` > 0, the main
    phase ends at the first epoch end where the full training split, in eval mode and against
    the training labels, has cross-entropy <= ``target_loss`` and/or accuracy >= ``target_acc``
    (both when both are set); ``epochs`` is then the budget. The milestone schedule stays a
    function of ``epochs``. Not with ``"swa"`` (its result is an average, not the iterate tested).

    ``loss``: a name of :data:`topoland.nets.losses.LOSSES` or a callable ``(output, target) ->
    (N,)`` per-sample losses (from Python); ``target_loss`` then bounds that loss, and accuracy
    (``target_acc``, the ``*_acc`` metrics) exists only for class-index targets.

    Optimizers (:mod:`topoland.train.optim`):

    * ``"sgd"``, ``"adam"``: torch's, under the milestone schedule.
    * ``"swa"``: SGD (milestone schedule) up to epoch ``min(floor(swa_start * epochs),
      epochs - 1)``; from there ``SWALR`` anneals to ``swa_lr`` over ``swa_anneal_epochs``
      (cosine) and the weights are averaged at the end of every epoch; the final model is
      the average with BN statistics recomputed on the training inputs.
    * ``"entropy_sgd"``: :class:`topoland.train.optim.EntropySGD`; one outer step per ``entropy_L``
      consecutive minibatches (one SGLD step each), so an epoch costs as many gradients as an
      SGD epoch. ``lr`` (milestone schedule), ``momentum``, ``nesterov`` act on the outer step,
      ``weight_decay`` on the inner gradient; scoping ``gamma_t = entropy_gamma0 * (1 +
      entropy_gamma1) ** t`` over outer steps t.
    * ``"pal"``: :class:`topoland.train.optim.PAL` (``pal_mu``, ``pal_max_step``, ``pal_momentum``,
      ``pal_adapt``); ``lr`` and milestones are unused; ``weight_decay`` is added to the measured
      losses as ``weight_decay / 2 * |theta|^2``. The history's ``lr`` column holds the mean PAL step.
    """

    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    epochs: int = 20
    milestones: tuple[float, ...] = (0.5, 0.75, 0.925)
    gamma: float = 0.1
    augment: bool = False
    nesterov: bool = False
    pretrain_random_epochs: int = 0
    pretrain_augment: bool = False
    checkpoints_per_epoch: int = 0
    swa_start: float = 0.75
    swa_lr: float = 0.01
    swa_anneal_epochs: int = 1
    entropy_L: int = 5
    entropy_gamma0: float = 0.03
    entropy_gamma1: float = 1e-3
    entropy_sgld_lr: float = 0.1
    entropy_noise: float = 1e-4
    entropy_alpha: float = 0.75
    pal_mu: float = 0.1
    pal_max_step: float = 1.0
    pal_momentum: float = 0.0
    pal_adapt: float = 1.0
    target_loss: float = 0.0
    target_acc: float = 0.0
    loss: str | Callable = "cross_entropy"
    metrics: Mapping = field(default_factory=dict)

    @property
    def has_target(self) -> bool:
        """Whether a stopping criterion is set (``target_loss`` or ``target_acc`` > 0)."""
        return self.target_loss > 0 or self.target_acc > 0

    def __post_init__(self):
        resolve_loss(self.loss)  # an unknown name: one error listing the known ones
        try:
            object.__setattr__(self, "milestones", tuple(float(m) for m in self.milestones))
        except (TypeError, ValueError):
            raise ConfigError(f"training recipe milestones must be a list of fractions, "
                              f"got {self.milestones!r}") from None
        if self.optimizer not in _OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {_OPTIMIZERS}, got {self.optimizer!r}")
        checks = [
            ("lr", _is_num(self.lr) and self.lr > 0, "a positive number"),
            ("momentum", _is_num(self.momentum) and 0 <= self.momentum < 1, "in [0, 1)"),
            ("weight_decay", _is_num(self.weight_decay) and self.weight_decay >= 0, "non-negative"),
            ("batch_size", _is_int(self.batch_size) and self.batch_size > 0, "a positive integer"),
            ("epochs", _is_int(self.epochs) and self.epochs >= 0, "a non-negative integer"),
            ("milestones", all(0 < m <= 1 for m in self.milestones)
             and list(self.milestones) == sorted(self.milestones), "increasing fractions in (0, 1]"),
            ("gamma", _is_num(self.gamma) and self.gamma > 0, "a positive number"),
            ("pretrain_random_epochs", _is_int(self.pretrain_random_epochs)
             and self.pretrain_random_epochs >= 0, "a non-negative integer"),
            ("checkpoints_per_epoch", _is_int(self.checkpoints_per_epoch)
             and self.checkpoints_per_epoch >= 0, "a non-negative integer"),
            ("swa_start", _is_num(self.swa_start) and 0 <= self.swa_start < 1, "in [0, 1)"),
            ("swa_lr", _is_num(self.swa_lr) and self.swa_lr > 0, "a positive number"),
            ("swa_anneal_epochs", _is_int(self.swa_anneal_epochs) and self.swa_anneal_epochs >= 0,
             "a non-negative integer"),
            ("entropy_L", _is_int(self.entropy_L) and self.entropy_L >= 1, "a positive integer"),
            ("entropy_gamma0", _is_num(self.entropy_gamma0) and self.entropy_gamma0 > 0, "a positive number"),
            ("entropy_gamma1", _is_num(self.entropy_gamma1) and self.entropy_gamma1 >= 0, "non-negative"),
            ("entropy_sgld_lr", _is_num(self.entropy_sgld_lr) and self.entropy_sgld_lr > 0,
             "a positive number"),
            ("entropy_noise", _is_num(self.entropy_noise) and self.entropy_noise >= 0, "non-negative"),
            ("entropy_alpha", _is_num(self.entropy_alpha) and 0 < self.entropy_alpha <= 1, "in (0, 1]"),
            ("pal_mu", _is_num(self.pal_mu) and self.pal_mu > 0, "a positive number"),
            ("pal_max_step", _is_num(self.pal_max_step) and self.pal_max_step > 0, "a positive number"),
            ("pal_momentum", _is_num(self.pal_momentum) and 0 <= self.pal_momentum < 1, "in [0, 1)"),
            ("pal_adapt", _is_num(self.pal_adapt) and self.pal_adapt > 0, "a positive number"),
            ("target_loss", _is_num(self.target_loss) and self.target_loss >= 0, "non-negative (0 = no target)"),
            ("target_acc", _is_num(self.target_acc) and 0 <= self.target_acc <= 1, "in [0, 1] (0 = no target)"),
        ]
        for key, ok, what in checks:
            if not ok:
                raise ConfigError(f"training recipe {key} must be {what}, got {getattr(self, key)!r}")
        if self.optimizer == "swa" and self.has_target:
            raise ConfigError("training recipe target_loss/target_acc cannot be used with optimizer 'swa': "
                              "its result is the average of the last epochs, not the iterate the target tests")

    def replace(self, **changes) -> "TrainRecipe":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _is_num(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) \
        and math.isfinite(v)


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


#: The reference recipe (Horoi et al.): SGD lr 0.1, momentum 0.9, 200 epochs, lr x0.1 at
#: epochs 100, 150, 185, batch 128, crop+flip augmentation.
REFERENCE_RECIPE = TrainRecipe(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, batch_size=128,
                               epochs=200, milestones=(0.5, 0.75, 0.925), gamma=0.1, augment=True)


@dataclass
class TrainResult:
    """Outcome of :func:`train_minimum`.

    ``params``/``buffers``: detached CPU copies keyed by name. ``metrics``: :func:`evaluate_model`
    output plus ``epochs_run`` (pretraining included), ``stop_epoch`` (main-phase epochs trained),
    ``diverged`` (0/1) and ``num_params``; with a stopping criterion also ``reached_target`` (0/1).
    ``history``: one row per epoch (with a criterion also ``train_loss``/``train_acc``, the eval-mode
    values it tested). ``checkpoints``: ``(T, D)`` float32 flat parameter snapshots, or None.
    ``reached_target``: None without a criterion.
    ``seconds``: wall time (kept out of ``metrics`` so that metrics are reproducible).
    """

    params: dict[str, Tensor]
    buffers: dict[str, Tensor]
    metrics: dict[str, float]
    history: pd.DataFrame
    checkpoints: Tensor | None = None
    diverged: bool = False
    seconds: float = 0.0
    reached_target: bool | None = None


def target_met(recipe: TrainRecipe, train_loss: float, train_acc: float) -> bool:
    """Whether eval-mode train cross-entropy (nats) and accuracy meet ``recipe``'s target.

    Every set target must hold (``target_loss``: loss <= it; ``target_acc``: accuracy >= it);
    NaN never meets one. False when the recipe has no target.
    """
    if not recipe.has_target:
        return False
    ok_loss = recipe.target_loss <= 0 or train_loss <= recipe.target_loss
    ok_acc = recipe.target_acc <= 0 or train_acc >= recipe.target_acc
    return bool(ok_loss and ok_acc)


def lr_at(epoch: int, recipe: TrainRecipe) -> float:
    """Learning rate of the main phase in 0-based ``epoch`` under the multi-step schedule."""
    steps = sum(1 for m in recipe.milestones if epoch >= round(m * recipe.epochs))
    return float(recipe.lr * recipe.gamma ** steps)


def make_optimizer(params, recipe: TrainRecipe, lr: float | None = None, *,
                   generator: torch.Generator | None = None) -> torch.optim.Optimizer:
    """A fresh optimizer for ``params`` following ``recipe`` (``lr`` overrides ``recipe.lr``).

    "swa" gives its base SGD optimizer (the averaging lives in :func:`train_minimum`).
    ``generator`` drives Entropy-SGD's SGLD noise (default: a CPU generator seeded with 0).
    """
    lr = recipe.lr if lr is None else lr
    if recipe.optimizer in ("sgd", "swa"):
        return torch.optim.SGD(params, lr=lr, momentum=recipe.momentum,
                               weight_decay=recipe.weight_decay, nesterov=recipe.nesterov)
    if recipe.optimizer == "entropy_sgd":
        return EntropySGD(params, lr=lr, L=int(recipe.entropy_L), gamma0=recipe.entropy_gamma0,
                          gamma1=recipe.entropy_gamma1, sgld_lr=recipe.entropy_sgld_lr,
                          noise=recipe.entropy_noise, alpha=recipe.entropy_alpha,
                          momentum=recipe.momentum, nesterov=recipe.nesterov and recipe.momentum > 0,
                          weight_decay=recipe.weight_decay, generator=generator)
    if recipe.optimizer == "pal":
        return PAL(params, mu=recipe.pal_mu, max_step=recipe.pal_max_step,
                   momentum=recipe.pal_momentum, adapt=recipe.pal_adapt, weight_decay=recipe.weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=recipe.weight_decay)


def _derived_generator(seed: int, tag: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(np.random.SeedSequence([int(seed), 100 + tag]).generate_state(1, np.uint64)[0] >> 1))
    return g


def _flat_params(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1).float().cpu() for p in model.parameters()])


def train_minimum(model: nn.Module, data: DataSplits, recipe: TrainRecipe = TrainRecipe(), *, seed: int = 0,
                  device="auto", progress: Callable[[int, int, dict], None] | None = None,
                  loss=None, metrics=None) -> TrainResult:
    """Train ``model`` in place on ``data`` (a DataSplits or a mapping of splits: :func:`topoland.data.as_splits`)
    following ``recipe``; return weights and metrics.

    ``seed`` drives minibatch order, augmentation and pretraining labels (see module doc).
    ``progress(epoch, total_epochs, row)`` is called after each epoch (1-based, pretraining
    epochs included) with that epoch's history row. A non-finite loss stops training and sets
    ``diverged`` (also ``metrics["diverged"] = 1.0``); it is not an exception. The model is left
    on ``device`` in eval mode.

    ``metrics`` (default ``recipe.metrics``): ``{name: per-sample callable or 'package.module:function'}``,
    recorded in ``metrics`` as ``train_<name>``, ``val_<name>``, ``test_<name>`` (eval mode, after training).
    ``loss`` (default ``recipe.loss``, "cross_entropy"): a name of :data:`topoland.nets.losses.LOSSES`
    or a callable ``(output, target) -> (N,)``, checked once on two training samples. Accuracy is
    recorded only when the loss tracks it (:func:`topoland.nets.losses.tracks_accuracy`): with
    mse/l1 (float targets, ``data`` a :class:`DataSplits` built directly) the metrics hold the
    losses and the history has no ``acc``/``val_acc``/``train_acc`` columns.
    """
    if not isinstance(recipe, TrainRecipe):
        raise ConfigError(f"recipe must be a TrainRecipe, got {type(recipe).__name__}")
    metrics_arg = metrics
    data = as_splits(data, what="train_minimum data")
    t0 = time.perf_counter()
    dev = resolve_device(device)
    model.to(dev)
    x_tr, y_tr = data.x_train.to(dev), data.y_train.to(dev)
    loss_pair = _checked_loss(recipe.loss if loss is None else loss, model, x_tr, y_tr)
    with_acc = tracks_accuracy(loss_pair[0], y_tr)
    if not with_acc and recipe.target_acc > 0:
        raise ConfigError(f"training recipe target_acc needs accuracy, which loss {loss_pair[0]!r} "
                          f"does not track; set target_acc = 0 (target_loss bounds the loss)")
    if not with_acc and recipe.pretrain_random_epochs:
        raise ConfigError(f"training recipe pretrain_random_epochs draws random class labels, which "
                          f"loss {loss_pair[0]!r} does not take; set it to 0")
    lkw = dict(loss=loss_pair, with_acc=with_acc)
    g_order = _derived_generator(seed, 0)
    rows: list[dict] = []
    total = recipe.pretrain_random_epochs + recipe.epochs
    diverged = False
    reached = False
    epoch_no = 0
    stop_epoch = 0
    check_target = recipe.has_target

    def run_phase(phase, epochs, labels, augment, lr_fn):
        nonlocal diverged, epoch_no, reached, stop_epoch
        opt = make_optimizer(model.parameters(), recipe, lr=lr_fn(0),
                             generator=_derived_generator(seed, 2 if phase == "train" else 3))
        use_swa = phase == "train" and recipe.optimizer == "swa" and epochs > 0
        swa_from = min(int(math.floor(recipe.swa_start * epochs)), epochs - 1)
        swa_sched = None
        for e in range(epochs):
            if use_swa and e >= swa_from:
                if swa_sched is None:  # SWALR sets the lr from here on
                    swa_sched = torch.optim.swa_utils.SWALR(
                        opt, swa_lr=recipe.swa_lr, anneal_epochs=recipe.swa_anneal_epochs,
                        anneal_strategy="cos")
            else:
                for group in opt.param_groups:
                    group["lr"] = lr_fn(e)
            lr = float(opt.param_groups[0]["lr"]) if "lr" in opt.param_groups[0] else float("nan")
            pal_before = (opt.state.get("step", 0), opt.state.get("step_size_sum", 0.0)) \
                if isinstance(opt, PAL) else None
            on_step = snapshots.hook if (phase == "train" and snapshots.per_epoch) else None
            loss, acc, finite = train_one_epoch(model, opt, x_tr, labels, batch_size=recipe.batch_size,
                                                kind=data.kind, augment=augment, generator=g_order,
                                                on_step=on_step, **lkw)
            if pal_before is not None:
                n_steps = opt.state.get("step", 0) - pal_before[0]
                lr = (opt.state.get("step_size_sum", 0.0) - pal_before[1]) / n_steps if n_steps else float("nan")
            if use_swa and e >= swa_from and finite:
                swa.update(model)
                swa_sched.step()
            epoch_no += 1
            val_loss, val_acc = evaluate_split(model, data.x_val, data.y_val, device=dev, **lkw)
            row = {"epoch": epoch_no, "phase": phase, "lr": lr, "loss": loss, "acc": acc,
                   "val_loss": val_loss, "val_acc": val_acc, "finite": finite}
            if phase == "train":
                stop_epoch = e + 1
                if check_target:
                    row["train_loss"], row["train_acc"] = evaluate_split(model, x_tr, labels, device=dev, **lkw)
                    reached = finite and target_met(recipe, row["train_loss"], row["train_acc"])
            rows.append(row if with_acc else {k: v for k, v in row.items() if k not in _ACC_COLUMNS})
            if progress is not None:
                progress(epoch_no, total, dict(row))
            if not finite:
                diverged = True
                return
            if reached:
                return

    snapshots = _Snapshots(model, recipe.checkpoints_per_epoch)
    swa = SWAAverager(model) if recipe.optimizer == "swa" else None
    if recipe.pretrain_random_epochs:
        g_labels = _derived_generator(seed, 1)
        rand = torch.randint(0, data.num_classes, (len(y_tr),), generator=g_labels).to(dev)
        run_phase("random", recipe.pretrain_random_epochs, rand, recipe.pretrain_augment,
                  lambda e: float(recipe.lr))
    if not diverged:
        snapshots.take()
        run_phase("train", recipe.epochs, y_tr, recipe.augment, lambda e: lr_at(e, recipe))
    if swa is not None and not diverged and swa.n_averaged > 0:
        swa.apply_to(model, x_tr, batch_size=recipe.batch_size)

    metrics = evaluate_model(model, data, dev, loss=loss_pair)
    metrics |= _user_metrics(model, data, recipe.metrics if metrics_arg is None else metrics_arg, loss_pair, dev)
    model.eval()
    metrics.update({"epochs_run": float(epoch_no), "stop_epoch": float(stop_epoch), "diverged": float(diverged),
                    "num_params": float(sum(p.numel() for p in model.parameters()))})
    if check_target:
        metrics["reached_target"] = float(reached)
    if swa is not None:
        metrics["swa_n_averaged"] = float(swa.n_averaged)
    columns = ["epoch", "phase", "lr", "loss", "acc", "val_loss", "val_acc", "finite"] \
        + (["train_loss", "train_acc"] if check_target else [])
    history = pd.DataFrame(rows, columns=[c for c in columns if with_acc or c not in _ACC_COLUMNS])
    return TrainResult(
        params={k: v.detach().cpu().clone() for k, v in model.named_parameters()},
        buffers={k: v.detach().cpu().clone() for k, v in model.named_buffers()},
        metrics=metrics, history=history, checkpoints=snapshots.result(), diverged=diverged,
        seconds=time.perf_counter() - t0, reached_target=bool(reached) if check_target else None)


_ACC_COLUMNS = ("acc", "val_acc", "train_acc")


def _user_metrics(model: nn.Module, data, spec, loss_pair, dev, batch_size: int = 1024) -> dict[str, float]:
    """``{<split>_<name>: mean}`` of the user metrics ``spec`` (``{name: callable or
    'package.module:function'}``) on every split, the model in eval mode."""
    from topoland.nets.metrics import load_metrics, per_sample, prepare_target, resolve_metrics
    if not spec:
        return {}
    fns = {k: v if callable(v) else load_metrics({k: v})[k] for k, v in dict(spec).items()}
    ms = resolve_metrics(fns, loss_name=loss_pair[0], target=data.y_train)
    out = {}
    model.eval()
    with torch.no_grad():
        for split in ("train", "val", "test"):
            x, y = data.split(split)
            y = prepare_target(loss_pair[0], y)
            sums = dict.fromkeys(fns, 0.0)
            for lo in range(0, len(x), batch_size):
                vals = per_sample(ms, loss_pair[1], model(x[lo:lo + batch_size].to(dev)), y[lo:lo + batch_size].to(dev))
                for k, v in vals.items():
                    sums[k] += float(v.sum())
            out |= {f"{split}_{k}": v / max(len(x), 1) for k, v in sums.items()}
    return out


def _checked_loss(loss, model: nn.Module, x: Tensor, y: Tensor):
    """``(name, fn)`` of ``loss``, run once on the model's output for two training samples."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x[:2])
    finally:
        model.train(was)
    return resolve_loss(loss, output=out, target=y[:2])


class _Snapshots:
    """Records flat parameter vectors ``per_epoch`` times per epoch at evenly spaced steps."""

    def __init__(self, model, per_epoch):
        self.model, self.per_epoch, self.items = model, int(per_epoch), []

    def take(self):
        if self.per_epoch:
            self.items.append(_flat_params(self.model))

    def hook(self, step, n_steps):
        # steps ceil(j * n / k) for j = 1..k (deduplicated when k > n)
        marks = {max(1, math.ceil(j * n_steps / self.per_epoch)) for j in range(1, self.per_epoch + 1)}
        if step in marks:
            self.take()

    def result(self):
        return torch.stack(self.items) if self.items else None
