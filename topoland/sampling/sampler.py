"""Jump-and-retrain sampling of the low-loss region around a minimum (Horoi et al. 2022).

From a minimum θ* the sampler jumps to ``θ* + step · d_k`` for every direction ``d_k`` (one
filter-normalized Gaussian direction per direction seed, reused for every step size) and
retrains each jump with a fresh SGD (momentum, weight decay, no schedule). Every trajectory is
recorded at its jump point (before any update) and after every epoch (optionally ``k`` times
per epoch): train/val/test loss and accuracy in eval mode, and the parameters.

Batched path (default): all J = directions x steps jumps advance together. Their parameters
and BN buffers are stacked ``(J, ...)``; one ``vmap``-ed ``functional_call`` computes the logits
of every jump on the shared minibatch, and one backward of ``sum_j L_j`` gives every jump's own
gradient (the jumps do not interact). SGD is applied to the stacked tensors exactly as
``torch.optim.SGD`` does it (one fused kernel per tensor while every trajectory is active).
Plain MLPs (Flatten/Linear/ReLU, no BN) skip ``vmap``: a hand-batched ``baddbmm`` chain with
fused biases computes the same logits faster (:func:`topoland.sampling.engines._mlp_chain`).
The sequential path (``batched=False``) is the reference: a plain ``nn.Module`` +
``torch.optim.SGD`` per jump, one after another. Both engines: :mod:`topoland.sampling.engines`.

Data stream: one CPU generator per minimum (seeded from ``seed``) draws the minibatch order
and augmentation; every jump sees the same stream, so the batched and sequential samplers see
identical minibatches.

Divergence: a trajectory whose training minibatch loss or recorded eval loss is NaN or
infinite is marked diverged and frozen: the offending update is not applied (parameters, SGD
momentum and BN running statistics keep their values from before that step) and it never
updates again; the others go on.

Sample order: ``sample_id = trajectory * R + record`` (trajectory-major), R = 1 + epochs · k,
trajectory ``t = direction * n_steps + step_index``.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from topoland import checks
from topoland.data import as_splits
from topoland.declare import Param, declare
from topoland.errors import ConfigError
from topoland.nets.directions import as_flat, filter_normalized_direction
from topoland.nets.losses import resolve_loss, tracks_accuracy
from topoland.nets.metrics import resolve_metrics
from topoland.nets.params import flatten, param_names, unflatten
from topoland.sampling.engines import _Loss, _run_batched, _run_sequential
from topoland.sampling.seeds import _TAG_SKETCH, _derived, data_seed, direction_seeds
from topoland.sampling.storage import STORAGE_POLICIES, TABLE_COLUMNS, SampleResult, _Recorder, metric_columns
from topoland.utils import resolve_device

__all__ = ["jump_and_retrain"]


# --------------------------------------------------------------------------- argument checks


def _check_args(storage, steps, directions, epochs, records_per_epoch, lr, momentum,
                weight_decay, batch_size, sketch_dim, n_train):
    if storage not in STORAGE_POLICIES:
        raise ConfigError(f"storage must be one of {STORAGE_POLICIES}, got {storage!r}")
    if len(steps) == 0 or not all(math.isfinite(float(s)) for s in steps):
        raise ConfigError(f"steps must be a non-empty list of finite numbers, got {steps!r}")
    if isinstance(directions, int) and directions < 1:
        raise ConfigError(f"directions must be >= 1, got {directions!r}")
    for key, val in (("epochs", epochs), ("records_per_epoch", records_per_epoch),
                     ("batch_size", batch_size), ("sketch_dim", sketch_dim)):
        if int(val) != val or val < (0 if key == "epochs" else 1):
            raise ConfigError(f"{key} must be a {'non-negative' if key == 'epochs' else 'positive'} "
                              f"integer, got {val!r}")
    for key, val in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
        if not (math.isfinite(val) and val >= 0):
            raise ConfigError(f"{key} must be a finite number >= 0, got {val!r}")
    n_batches = math.ceil(n_train / batch_size)
    if records_per_epoch > n_batches:
        raise ConfigError(f"records_per_epoch={records_per_epoch} exceeds the {n_batches} "
                          f"minibatches of an epoch")


def _check_model(model: nn.Module):
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            raise ConfigError(f"module {name!r} is dropout with p={m.p}: jump retrains need "
                              f"deterministic training steps; build the model with dropout=0")
        if isinstance(m, _BatchNorm) and m.track_running_stats and m.momentum is None:
            raise ConfigError(f"BN module {name!r} has momentum=None (cumulative average), which "
                              f"the batched sampler does not support; set a numeric momentum")


def _checked_loss(loss, model: nn.Module, data):
    """``(name, fn)`` of ``loss``, run once on the (CPU) model's eval-mode output for two training
    samples; the model's train/eval flags are restored."""
    was = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            out = model(data.x_train[:2].cpu().float())
    finally:
        for m, t in was:
            m.training = t
    return resolve_loss(loss, output=out, target=data.y_train[:2].cpu())


def _extra_metrics(metrics, loss_name: str, data) -> list[tuple[str, object]]:
    """The user metrics beyond loss and accuracy (always recorded), checked once on two samples."""
    if metrics is None:
        return []
    ms = [(n, m) for n, m in resolve_metrics(metrics, loss_name=loss_name, target=data.y_train)
          if m not in ("loss", "accuracy")]
    for n, _ in ms:
        if n in ("loss", "acc"):
            raise ConfigError(f"metric name {n!r} would overwrite the recorded {n} columns; rename it")
    return ms


def _record_positions(n_batches: int, k: int) -> list[int]:
    """Batch counts (1-based, within an epoch) after which a record is taken."""
    return [round(i * n_batches / k) for i in range(1, k + 1)]


def _theta_star(model, params, names) -> Tensor:
    if params is None:
        return torch.cat([model.get_parameter(k).detach().reshape(-1).float().cpu() for k in names])
    if isinstance(params, Tensor):
        if params.dim() != 1:
            raise ConfigError(f"params must be a flat (D,) tensor or a dict, got shape "
                              f"{tuple(params.shape)}")
        unflatten(params, model, names)  # validates D
        return params.detach().float().cpu().clone()
    missing = [k for k in names if k not in params]
    if missing:
        raise ConfigError(f"params is missing the model parameter {missing[0]!r}")
    for k in names:
        if tuple(params[k].shape) != tuple(model.get_parameter(k).shape):
            raise ConfigError(f"params[{k!r}] has shape {tuple(params[k].shape)}, the model "
                              f"{tuple(model.get_parameter(k).shape)}")
    return flatten({k: params[k].detach().float().cpu() for k in names}, names)


def _direction_matrix(model_star, directions, seeds, names, d) -> Tensor:
    if isinstance(directions, int):
        rows = [as_flat({k: v for k, v in filter_normalized_direction(model_star, s).items()
                         if k in names}, model_star) for s in seeds]
        return torch.stack(rows).float().cpu()
    if isinstance(directions, Tensor):
        mat = directions.detach().float().cpu()
        if mat.dim() == 1:
            mat = mat[None]
    else:
        mat = torch.stack([flatten({k: v.detach().float().cpu() for k, v in dct.items()}, names)
                           for dct in directions])
    if mat.dim() != 2 or mat.shape[1] != d:
        raise ConfigError(f"directions must be an int, an (n_dir, D={d}) tensor or a list of "
                          f"parameter dicts; got shape {tuple(mat.shape)}")
    return mat.clone()


@declare({
    "directions": Param((int,), 4, checks.pos, "random filter-normalized directions"),
    "steps": Param((list,), [0.25, 0.5, 0.75, 1.0], checks.numbers(checks.pos), "jump sizes along each direction", arg=tuple),
    "epochs": Param((int,), 40, checks.pos, "retraining epochs per jump"),
    "lr": Param((int, float), 0.001, checks.pos, "retraining learning rate"),
    "momentum": Param((int, float), "inherit", checks.frac, "retraining SGD momentum ('inherit' = train.momentum)",
                     inherit="momentum"),
    "weight_decay": Param((int, float), "inherit", checks.nonneg, "retraining weight decay ('inherit' = train.weight_decay)",
                         inherit="weight_decay"),
    "batch_size": Param((int,), "inherit", checks.pos, "retraining batch size ('inherit' = train.batch_size)",
                       inherit="batch_size"),
    "augment": Param((bool,), "inherit", None, "augmentation while retraining ('inherit' = train.augment)",
                    inherit="augment", arg=bool),
    "records_per_epoch": Param((int,), 1, checks.pos, "recorded points per epoch"),
    "storage": Param((str,), "full", checks.one_of("full", "half", "sketch"), "what is kept of the snapshots"),
    "sketch_dim": Param((int,), 256, checks.pos, "random projection size of the sketch"),
    "batched": Param((bool,), True, None, "train all jumps at once (False: the sequential reference)"),
})
def jump_and_retrain(model: nn.Module, data, *, params=None,
                     buffers: Mapping[str, Tensor] | None = None,
                     directions: int | Tensor | Sequence[Mapping[str, Tensor]] = 4,
                     steps: Sequence[float] = (0.25, 0.5, 0.75, 1.0), seed: int = 0,
                     lr: float = 0.001, momentum: float = 0.9, weight_decay: float = 1e-4,
                     batch_size: int = 128, epochs: int = 40, augment: bool = False,
                     records_per_epoch: int = 1, storage: str = "full", sketch_dim: int = 256,
                     sketch_buffer: str = "device", eval_batch_size: int = 1024,
                     device="auto", batched: bool = True,
                     progress: Callable[[int, int], None] | None = None,
                     loss="cross_entropy", metrics=None) -> SampleResult:
    """Jump away from the minimum along random directions and retrain every jump.

    model: the architecture; its parameters are θ* unless ``params`` is given (a ``{name:
    tensor}`` dict or a flat ``(D,)`` vector over the trainable parameters in module order);
    its buffers (BN running statistics) are θ*'s unless ``buffers`` is given. The model is not
    modified. data: a :class:`topoland.data.DataSplits` or a mapping ``{"train", ("val",) "test"}``
    of ``(x, y)`` pairs / Datasets (:func:`topoland.data.as_splits`; every split is recorded, so
    one pair is not enough). directions: the number of
    filter-normalized directions (seeds from :func:`direction_seeds`), or explicit directions
    ``(n_dir, D)`` / a list of parameter dicts. Every direction is used with every step:
    J = n_dir x len(steps) trajectories, ``t = direction * len(steps) + step_index``.
    Retraining: SGD(lr, momentum, weight_decay), ``epochs`` passes of minibatches of
    ``batch_size`` (minibatch order and, with ``augment``, augmentation drawn from one
    generator seeded by :func:`data_seed`), train mode. Records: at the jump point (epoch 0) and
    ``records_per_epoch`` times per epoch, metrics in eval mode (loss = mean cross-entropy in
    nats, accuracy in [0, 1]). storage: ``"full"`` (float32 snapshots), ``"half"`` (float16)
    or ``"sketch"`` (Gram matrix + ``sketch_dim``-column random projection; the snapshots are
    held in float32 on ``sketch_buffer`` = "device" | "cpu" during the run and then dropped).
    batched: all jumps in one vmap-ed model (True) or the sequential reference (False).
    progress: called as ``progress(done, total)`` in trajectory-epochs.
    loss: the retraining objective and the recorded ``*_loss``: a name of
    :data:`topoland.nets.losses.LOSSES` or a callable ``(output, target) -> (n,)`` per-sample
    losses, checked once on two training samples; both engines use the same function (the
    batched one under ``torch.func.vmap``: a loss that fails there raises one error suggesting
    ``batched=False``). The ``*_acc`` columns are NaN when the loss tracks no accuracy (mse, l1,
    a callable on float targets); ``config["loss"]`` names a loss other than cross-entropy.
    Returns a :class:`SampleResult` with N = J x (1 + epochs x records_per_epoch) snapshots.
    """
    data = as_splits(data, what="jump_and_retrain data")
    device = resolve_device(device)
    steps = [float(s) for s in steps]
    _check_args(storage, steps, directions, epochs, records_per_epoch, lr, momentum, weight_decay,
                batch_size, sketch_dim, data.x_train.shape[0])
    if sketch_buffer not in ("device", "cpu"):
        raise ConfigError(f"sketch_buffer must be 'device' or 'cpu', got {sketch_buffer!r}")
    _check_model(model)
    names = param_names(model)
    theta_star = _theta_star(model, params, names)
    d = theta_star.numel()
    model_star = copy.deepcopy(model).cpu().float()
    with torch.no_grad():
        for k, v in unflatten(theta_star, model_star, names).items():
            model_star.get_parameter(k).copy_(v)
        if buffers is not None:
            for k, v in buffers.items():
                model_star.get_buffer(k).copy_(v)
    star_buffers = {k: v.detach().clone() for k, v in model_star.named_buffers()}
    loss_name, loss_fn = _checked_loss(loss, model_star, data)
    extra = _extra_metrics(metrics, loss_name, data)

    n_dir = directions if isinstance(directions, int) else None
    seeds = direction_seeds(seed, n_dir) if n_dir is not None else None
    dirs = _direction_matrix(model_star, directions, seeds, names, d)
    n_dir = dirs.shape[0]
    steps32 = torch.tensor(steps, dtype=torch.float32)
    # jump points θ* + step·d in float32, the same elementwise ops for every path
    jump_flat = theta_star[None] + steps32.repeat(n_dir)[:, None] * dirs.repeat_interleave(len(steps), 0)
    J = jump_flat.shape[0]
    n_batches = math.ceil(data.x_train.shape[0] / batch_size)
    k = int(records_per_epoch)
    n_rec = 1 + int(epochs) * k
    cfg = dict(lr=float(lr), momentum=float(momentum), weight_decay=float(weight_decay),
               batch_size=int(batch_size), epochs=int(epochs), augment=bool(augment),
               records_per_epoch=k, storage=storage, sketch_dim=int(sketch_dim),
               seed=int(seed), data_seed=data_seed(seed), direction_seeds=seeds,
               sketch_seed=_derived(seed, _TAG_SKETCH, 0) if storage == "sketch" else None,
               steps=[float(s) for s in steps32], n_directions=n_dir, n_trajectories=J,
               records_per_trajectory=n_rec, eval_batch_size=int(eval_batch_size),
               batched=bool(batched), dataset=getattr(data, "name", None), n_params=d,
               positions=_record_positions(n_batches, k))
    if loss_name != "cross_entropy":
        cfg["loss"] = loss_name
    if extra:
        cfg["metrics"] = [n for n, _ in extra]
    rec = _Recorder(storage, J, n_rec, d, device, int(sketch_dim), cfg["sketch_seed"], sketch_buffer,
                    extra=cfg.get("metrics", ()))
    runner = _run_batched if batched else _run_sequential
    model_run = copy.deepcopy(model_star)
    runner(model_run, jump_flat, star_buffers, data, cfg, rec, device, progress,
           _Loss(loss_name, loss_fn, tracks_accuracy(loss_name, data.y_train), extra))
    snaps, gram, proj = rec.finish()

    traj = np.repeat(np.arange(J), n_rec)
    epoch_grid = np.concatenate([[0.0], np.arange(1, n_rec) / k])
    table = pd.DataFrame({
        "sample_id": np.arange(J * n_rec),
        "trajectory": traj,
        "direction": traj // len(steps),
        "step": np.asarray(cfg["steps"])[traj % len(steps)],
        "epoch": np.tile(epoch_grid, J),
        **{key: val.reshape(-1) for key, val in rec.metrics.items()},
        "diverged": rec.diverged.reshape(-1),
    })[[*TABLE_COLUMNS, *metric_columns(cfg)]]
    cfg.pop("positions")
    return SampleResult(table=table, params=snaps, gram=gram, projection=proj,
                        theta_star=theta_star, directions=dirs, config=cfg)
