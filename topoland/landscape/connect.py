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
                   climbing=False, n_samples=0, batch_size=0, seed=0, device="auto") -> dict:
    """Find a low-loss path between two minima of one architecture and measure its barriers.

    data: a DataSplits or a mapping of splits (:func:`topoland.data.as_splits`); train and test are read.
    Returns ``{"profiles": {"linear": df, method: df}, "barriers": {name: {...}}, "images": (K, D)}``;
    profiles hold train/test loss and error at 61 points, BN statistics recomputed at every
    point for BN networks.
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
    loss = P.network_loss(model_a, x, y, batch_size=batch_size or None, bn="train" if bn else "eval", seed=seed)
    if method == "neb":
        found = P.neb(loss, theta_a, theta_b, n_images=n_images, steps=steps, lr=lr, climbing=climbing)
    elif method == "autoneb":
        # the reference schedule (14 cycles, lr 0.1 -> 0.01 -> 0.001, at most 31 pivots), with
        # the config's step count per cycle
        ref = dict(P.AUTONEB_REFERENCE) | {"steps": steps, "climbing": climbing}
        if batch_size:
            ref["batch_size"] = batch_size
        else:
            ref.pop("batch_size", None)
        found = P.auto_neb(loss, theta_a, theta_b, **ref)
    elif method in ("bezier", "polychain"):
        found = P.fit_curve(loss, theta_a, theta_b, kind=method, steps=steps, lr=lr, seed=seed)
    else:
        raise TopolandError(f"unknown path method {method!r} (neb, autoneb, bezier, polychain)")
    metrics = P.network_metrics(model_a, {"train": (x, y), "test": (data.x_test, data.y_test)},
                                bn="recompute" if bn else "eval", device=device)
    profiles = {"linear": P.path_profile(metrics, P.linear_path(theta_a, theta_b)),
                method: P.path_profile(metrics, found)}
    bars = {}
    for name, prof in profiles.items():
        for col in ("train_loss", "test_loss", "train_error", "test_error"):
            b = P.barriers(prof, column=col)
            bars[f"{name}.{col}"] = b
    images = found.images if hasattr(found, "images") else found.point(torch.linspace(0, 1, 61))
    return {"profiles": profiles, "barriers": bars, "images": images.detach()}
