"""Subcommands on checkpoints and pairs of minima: ``surface``, ``neb`` and ``connect``.

A checkpoint written by ``topoland train`` records its model and its dataset, so these
commands need nothing but the file; ``--data`` overrides the dataset.
"""
from __future__ import annotations

import json
from pathlib import Path

from topoland.cli.output import finish
from topoland.errors import TopolandError

_MAX_PARAMS_TEXT = "200,000,000"  # topoland.nets.checkpoint.MAX_PARAMS, without importing torch for --help


def _positive_int(text: str) -> int:
    import argparse
    try:
        n = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expects a positive integer, got {text!r}")
    return n


def _range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(":"))
    except ValueError:
        raise TopolandError(f"--range expects LO:HI, e.g. -1:1, got {text!r}") from None
    if not lo < hi:
        raise TopolandError(f"--range {text!r}: LO must be below HI")
    return lo, hi


def add_commands(subs, make):
    """Register the checkpoint-level subcommands on ``subs`` (``make`` builds a subparser)."""
    s = make(subs, "surface", "1-D/2-D loss surface around a checkpoint or every minimum of a run", """\
        Filter-normalized loss surfaces (Li et al. 2018), evaluated many grid points per forward
        pass: a plane on two random directions, lines along random directions, the
        interpolation between two checkpoints, or the plane through three. The grid is stored in
        HDF5 as it fills: an interrupted surface resumes where it stopped.""",
        """\
        examples:
          topoland surface runs/quickstart/cells/<id>/train/model.safetensors --grid 51 --range -1:1
          topoland surface runs/quickstart --kind plane --grid 21          # every minimum of a run
          topoland surface a.safetensors --kind interpolate --other b.safetensors --range -0.5:1.5
          topoland surface a.safetensors --kind through --other b.safetensors c.safetensors""")
    s.add_argument("source", help="checkpoint (.safetensors) or run directory")
    s.add_argument("--kind", choices=["plane", "line", "interpolate", "through"], default="plane",
                   help="plane: two random directions; line: random directions; interpolate: to --other; "
                        "through: plane through this and two --other checkpoints")
    s.add_argument("--other", nargs="+", default=[], help="other checkpoint(s) for interpolate/through")
    s.add_argument("--grid", type=int, default=21, help="points per axis")
    s.add_argument("--range", type=_range, default=(-1.0, 1.0), help="coordinate range LO:HI")
    s.add_argument("--seed", type=int, default=0, help="seed of the random directions")
    s.add_argument("--samples", type=int, default=0, help="evaluate on this many training samples (0 = all)")
    s.add_argument("--states", action="store_true", help="interpolate BN running statistics too")
    s.add_argument("--out", default="surface", help="output stem: <out>.h5, <out>.png, <out>.vtk")
    s.add_argument("--data", help="dataset name (default: the one the checkpoint was trained on)")
    s.add_argument("--root", help="folder of a torchvision dataset")
    s.add_argument("--max-params", type=_positive_int, default=None, metavar="N",
                   help="largest model a checkpoint's spec may ask for, in parameters (default: "
                        f"{_MAX_PARAMS_TEXT}); raise it only for files you trust")

    s = make(subs, "neb", "minimum-energy path between two checkpoints", """\
        Find a low-loss path between two minima of one architecture (NEB, AutoNEB with the
        reference schedule, or a Bezier / polygonal curve) and measure its barriers against the
        straight line: absolute maximum, maximum minus the linear interpolation of the endpoint
        losses, maximum minus their mean; train/test loss and error at 61 points.""",
        """\
        examples:
          topoland neb A.safetensors B.safetensors
          topoland neb A.safetensors B.safetensors --method bezier --steps 500 --out paths/ab""")
    s.add_argument("a", help="first checkpoint")
    s.add_argument("b", help="second checkpoint")
    s.add_argument("--method", choices=["neb", "autoneb", "bezier", "polychain"], default="neb")
    s.add_argument("--images", type=int, default=9, help="NEB images")
    s.add_argument("--steps", type=int, default=200, help="optimization steps (per cycle for AutoNEB)")
    s.add_argument("--lr", type=float, default=0.05, help="learning rate")
    s.add_argument("--climbing", action="store_true", help="climbing image (accurate saddle)")
    s.add_argument("--samples", type=int, default=0, help="training samples in the path loss (0 = all)")
    s.add_argument("--batch", type=int, default=0, help="minibatch per step (0 = full batch)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="neb", help="output folder (profiles CSV, barriers JSON, figure)")
    s.add_argument("--data", help="dataset name (default: the one the checkpoint was trained on)")
    s.add_argument("--root", help="folder of a torchvision dataset")
    s.add_argument("--max-params", type=_positive_int, default=None, metavar="N",
                   help="largest model a checkpoint's spec may ask for, in parameters (default: "
                        f"{_MAX_PARAMS_TEXT}); raise it only for files you trust")

    s = make(subs, "connect", "connect the minima of a run and draw how they connect", """\
        Connect minima pairs of a run (all pairs, or the AutoNEB strategy: grow a minimum
        spanning tree by barrier and retry across its highest edge), store every path per pair
        (resumable) and draw the disconnectivity graph (merge tree of the minima by barrier).""",
        """\
        examples:
          topoland connect runs/quickstart
          topoland connect runs/quickstart --strategy mst --method autoneb""")
    s.add_argument("run_dir", help="run directory")
    s.add_argument("--strategy", choices=["all", "mst"], default="mst")
    s.add_argument("--method", choices=["neb", "autoneb", "bezier", "polychain"], help="override paths.method")
    s.add_argument("--steps", type=int, help="override paths.steps")


# ---------------------------------------------------------------------------------- helpers
def _load(path, data_name=None, root=None, max_params=None):
    """A checkpoint's model (eval mode) and the dataset it was trained on (or ``data_name``).

    The checkpoint's spec is untrusted (:func:`topoland.nets.checkpoint.check_spec`): validated, at
    most ``max_params`` parameters, and never a reason to download a dataset."""
    from topoland.nets import MAX_PARAMS, load_checkpoint
    from topoland.pipeline.context import DataCache
    model, meta = load_checkpoint(path, max_params=max_params or MAX_PARAMS)
    spec = meta.get("spec") or {}
    data_cfg = dict(spec.get("data") or {})
    seed = int(spec.get("seed", 0))
    if data_name:
        data_cfg = {"name": data_name}
    if not data_cfg:
        raise TopolandError(f"checkpoint '{path}' does not record its dataset; pass --data NAME")
    if root:
        data_cfg["root"] = root
    from topoland.runs.config import defaults
    cfg = defaults()
    cfg["data"].update(data_cfg)
    cfg["data"]["download"] = False  # a checkpoint never makes topoland reach the network
    cfg["run"]["seed"] = seed
    data = DataCache().load(cfg)
    if tuple(data.input_shape) != tuple(spec.get("input_shape", data.input_shape)):
        raise TopolandError(f"checkpoint '{path}' expects inputs {tuple(spec['input_shape'])}, "
                            f"dataset '{data_cfg['name']}' has {tuple(data.input_shape)}")
    return model.eval(), data


def _subset(data, n, seed):
    from topoland.data import seeded_subset
    return seeded_subset(data.x_train, data.y_train, n, seed)


def _save_fig(ax_fn, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4.5), constrained_layout=True)
    ax_fn(ax)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------- commands
def _cmd_surface(a):
    from topoland.landscape import surfaces as S
    from topoland.plots.landscape import export_vtk, plot_contour, plot_line
    from topoland.pipeline.driver import run_stage_in_dir
    src = Path(a.source)
    if src.is_dir():
        if a.kind not in ("plane", "line"):
            raise TopolandError("on a run directory, --kind must be plane or line")
        rep = run_stage_in_dir(src, "surface", overrides={"kind": a.kind, "grid": a.grid,
                                                          "range": list(a.range), "n_samples": a.samples},
                               force=True)
        return finish(rep)
    model, data = _load(src, a.data, a.root, a.max_params)
    x, y = _subset(data, a.samples, a.seed)
    common = dict(x_test=data.x_test, y_test=data.y_test)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    h5 = out.with_suffix(".h5")
    import numpy as np
    if a.kind == "plane":
        srf = S.random_plane(model, x, y, seed=a.seed, grid=a.grid, range=a.range, store=h5, **common)
    elif a.kind == "line":
        srf = S.random_lines(model, x, y, n_directions=1, seed=a.seed,
                             alphas=np.linspace(*a.range, a.grid), **common)[0]
    elif a.kind == "interpolate":
        if len(a.other) != 1:
            raise TopolandError("--kind interpolate needs exactly one --other checkpoint")
        other, _ = _load(a.other[0], a.data, a.root, a.max_params)
        srf = S.interpolate(model, other, x, y, alphas=np.linspace(*a.range, a.grid),
                            kind="states" if a.states else "weights", store=h5, **common)
    else:
        if len(a.other) != 2:
            raise TopolandError("--kind through needs exactly two --other checkpoints")
        b, _ = _load(a.other[0], a.data, a.root, a.max_params)
        c, _ = _load(a.other[1], a.data, a.root, a.max_params)
        srf = S.plane_through(model, b, c, x, y, grid=a.grid, store=h5, **common)
    png = out.with_suffix(".png")
    if srf.ndim == 2:
        _save_fig(lambda ax: plot_contour(srf, ax=ax, filled=True), png)
        export_vtk(srf, out.with_suffix(".vtk"))
        print(f"written: {h5}, {png}, {out.with_suffix('.vtk')}")
    else:
        _save_fig(lambda ax: plot_line(srf, ax=ax), png)
        import pandas as pd
        pd.DataFrame({"alpha": srf.xs, **srf.values}).to_csv(out.with_suffix(".csv"), index=False)
        print(f"written: {out.with_suffix('.csv')}, {png}")
    return 0


def _cmd_neb(a):
    from topoland.plots.paths import plot_profiles
    from topoland.landscape.connect import connect_models
    ma, data = _load(a.a, a.data, a.root, a.max_params)
    mb, _ = _load(a.b, a.data, a.root, a.max_params)
    res = connect_models(ma, mb, data, method=a.method, n_images=a.images, steps=a.steps, lr=a.lr,
                         climbing=a.climbing, n_samples=a.samples, batch_size=a.batch, seed=a.seed)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, prof in res["profiles"].items():
        prof.to_csv(out / f"profile_{name}.csv", index=False)
    (out / "barriers.json").write_text(json.dumps(res["barriers"], indent=1))
    _save_fig(lambda ax: plot_profiles(res["profiles"], ax=ax, column="train_loss"), out / "profiles.png")
    lin = res["barriers"]["linear.train_loss"]
    found = res["barriers"][f"{a.method}.train_loss"]
    print(f"barrier (train loss, max minus linear interpolation): straight line {lin['max_minus_linear']:.4g}, "
          f"{a.method} {found['max_minus_linear']:.4g}")
    print(f"written: {out}/profile_*.csv, barriers.json, profiles.png")
    return 0


def _cmd_connect(a):
    from topoland.pipeline.driver import connect_run
    rep = connect_run(a.run_dir, strategy=a.strategy, method=a.method, steps=a.steps)
    return finish(rep)


HANDLERS = {"surface": _cmd_surface, "neb": _cmd_neb, "connect": _cmd_connect}
