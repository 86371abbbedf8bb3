"""Connecting two minima: a low-loss path (NEB, AutoNEB or a curve) and its barriers."""
from __future__ import annotations

from topoland import checks
from topoland.declare import Param, declare
from topoland.errors import TopolandError


@declare({
    "method": Param((str,), "neb", checks.one_of("neb", "autoneb", "bezier", "polychain"), "path algorithm"),
    "n_images": Param((int,), 9, checks.pos, "images (NEB) or evaluation points per segment"),
    "steps": Param((int,), 100, checks.pos, "optimization steps"),
    "lr": Param((int, float), 0.05, checks.pos, "learning rate"),
    "climbing": Param((bool,), False, None, "climbing image"),
    "n_samples": Param((int,), 0, checks.nonneg, "training subset for the path loss (0 = all)"),
    "batch_size": Param((int,), 0, checks.nonneg, "minibatch per step (0 = full batch)"),
})
def connect_models(model_a, model_b, data, *, method="neb", n_images=9, steps=100, lr=0.05,
                   climbing=False, n_samples=0, batch_size=0, seed=0, loss="cross_entropy", metrics=None,
                   device="auto") -> dict:
    """Find a low-loss path between two minima of one architecture and measure its barriers.

    data: a DataSplits or a mapping of splits (:func:`topoland.data.as_splits`); train and test are read.
    loss: the loss the path minimises (a name of :data:`topoland.nets.losses.LOSSES`, default
    cross-entropy in nats, or a per-sample callable ``(output, target) -> (N,)``); metrics: what
    the profiles record (:func:`topoland.landscape.network_losses.network_metrics`; None: loss,
    and error for class-index targets).
    Returns ``{"profiles": {"linear": df, method: df}, "barriers": {name: {...}}, "images": (K, D)}``;
    profiles hold ``{split}_{metric}`` for train and test (default: train/test loss and, for
    classification, error) at 61 points, BN statistics recomputed at every point for BN
    networks; a barrier per profile and column, keyed ``"{profile}.{column}"``.
    """
    import torch

    from topoland.data import as_splits, seeded_subset
    from topoland.landscape import paths as P
    from topoland.nets import flatten, get_params, has_batchnorm
    data = as_splits(data, what="connect_models data")
    theta_a = flatten(get_params(model_a)).float()
    theta_b = flatten(get_params(model_b)).float()
    if theta_a.shape != theta_b.shape:
        raise TopolandError("the two minima have different architectures; a path needs one parameter space")
    x, y = seeded_subset(data.x_train, data.y_train, n_samples, seed)
    bn = has_batchnorm(model_a)
    path_loss = P.network_loss(model_a, x, y, loss=loss, batch_size=batch_size or None,
                               bn="train" if bn else "eval", seed=seed)
    if method == "neb":
        found = P.neb(path_loss, theta_a, theta_b, n_images=n_images, steps=steps, lr=lr, climbing=climbing)
    elif method == "autoneb":
        # the reference schedule (14 cycles, lr 0.1 -> 0.01 -> 0.001, at most 31 pivots), with
        # the config's step count per cycle
        ref = dict(P.AUTONEB_REFERENCE) | {"steps": steps, "climbing": climbing}
        if batch_size:
            ref["batch_size"] = batch_size
        else:
            ref.pop("batch_size", None)
        found = P.auto_neb(path_loss, theta_a, theta_b, **ref)
    elif method in ("bezier", "polychain"):
        found = P.fit_curve(path_loss, theta_a, theta_b, kind=method, steps=steps, lr=lr, seed=seed)
    else:
        raise TopolandError(f"unknown path method {method!r} (neb, autoneb, bezier, polychain)")
    measure = P.network_metrics(model_a, {"train": (x, y), "test": (data.x_test, data.y_test)},
                                loss=(path_loss.loss_name, path_loss.loss_fn), metrics=metrics,
                                bn="recompute" if bn else "eval", device=device)
    profiles = {"linear": P.path_profile(measure, P.linear_path(theta_a, theta_b)),
                method: P.path_profile(measure, found)}
    bars = {}
    for name, prof in profiles.items():
        cols = [c for c in prof.columns if c.startswith(("train_", "test_"))]
        # the historical order for the default columns: losses first, then errors
        cols = sorted(cols, key=lambda c: (c.split("_", 1)[1] != "loss", not c.startswith("train_"), c))
        for col in cols:
            b = P.barriers(prof, column=col)
            bars[f"{name}.{col}"] = b
    images = found.images if hasattr(found, "images") else found.point(torch.linspace(0, 1, 61))
    return {"profiles": profiles, "barriers": bars, "images": images.detach()}
