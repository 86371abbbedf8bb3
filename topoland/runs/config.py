"""Experiment configs: TOML schema, validation and grid expansion.

A config names a dataset, a model, a training recipe, the later stages' options, and a grid:
lists of values for any ``section.key``; the grid is their product. Extra cells (for
instance "bad minima" pretrained on random labels) are listed under ``[[cells]]``.

Validation happens before any work starts and names the culprit key::

    >>> cfg = load_config("experiments/quickstart.toml")      # doctest: +SKIP
    >>> cells = expand_grid(cfg)                              # doctest: +SKIP
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from topoland import checks as _c
from topoland import topology as _topo
from topoland.errors import ConfigError
from topoland.runs.stages import DEFAULT_STAGES, OPTIONAL_STAGES, STAGES

DATASET_NAMES = ("mnist1d", "digits", "synthetic", "cifar10", "mnist", "fashion_mnist")
MODEL_NAMES = ("mlp", "cnn", "wrn", "resnet")


@dataclass(frozen=True)
class _Key:
    types: tuple
    default: Any
    check: Callable[[Any], str | None] | None = None  # returns an error text or None
    help: str = ""
    inherit: str | None = None  # the [train] key whose value "inherit" takes (None: no "inherit")


_NUM = (int, float)
_LIST = (list,)

# One schema per section. Keys under [model] are free-form model arguments (checked by the
# model builder); every other section is closed.
SCHEMA: dict[str, dict[str, _Key]] = {
    "run": {
        "name": _Key((str,), "run", _c.run_name, "run name: the run directory and the report are named after it"),
        "seed": _Key((int,), 0, _c.seed, "master seed of every stage"),
        "device": _Key((str,), "auto", _c.one_of("auto", "cpu", "cuda"), "auto picks CUDA when present"),
        "stages": _Key(_LIST, list(DEFAULT_STAGES), _c.nonempty(_c.each(_c.one_of(*STAGES))),
                        "stages to run, in pipeline order (optional, by name only: ensemble)"),
        "executor": _Key((str,), "local", _c.one_of("local", "ray"), "where grid cells run"),
        "workers": _Key((int,), 1, _c.pos, "local worker processes (one GPU each when several exist)"),
        "threads": _Key((int,), 0, _c.nonneg, "torch CPU threads per process (0 = torch's default)"),
        "num_cpus": _Key(_NUM, 1, _c.pos, "CPUs per cell (Ray)"),
        "num_gpus": _Key(_NUM, 0, _c.nonneg, "GPUs per cell (Ray)"),
    },
    "data": {
        "name": _Key((str,), "mnist1d", _c.one_of(*DATASET_NAMES), "dataset"),
        "root": _Key((str,), "", None, "local folder of torchvision datasets"),
        "download": _Key((bool,), False, None, "let torchvision download where a network exists"),
        "val_fraction": _Key(_NUM, 0.1, _c.frac, "share of the training set held out for validation"),
        "val_seed": _Key((int,), 0, _c.seed, "seed of the validation split"),
        "label_noise": _Key(_NUM, 0.0, _c.unit, "share of training labels replaced by random ones"),
        "n_train": _Key((int,), 0, _c.nonneg, "subsample the training set (0 = all)"),
        "n_test": _Key((int,), 0, _c.nonneg, "subsample the test set (0 = all)"),
        "label_seed": _Key((int,), 0, _c.seed, "seed of the label corruption"),
        "synthetic": _Key((dict,), {}, _c.synthetic_opts,
                          "synthetic set: n_train, n_test, num_classes, input_shape, separation, noise"),
    },
    "model": {
        "name": _Key((str,), "mlp", _c.one_of(*MODEL_NAMES), "architecture"),
    },
    "train": {
        "optimizer": _Key((str,), "sgd", _c.one_of("sgd", "adam", "swa", "entropy_sgd", "pal"), "optimizer"),
        "nesterov": _Key((bool,), False, None, "Nesterov momentum"),
        "swa_start": _Key(_NUM, 0.75, _c.frac, "SWA: averaging starts at this fraction of epochs"),
        "swa_lr": _Key(_NUM, 0.01, _c.pos, "SWA: constant lr reached by SWALR"),
        "swa_anneal_epochs": _Key((int,), 1, _c.nonneg, "SWA: epochs of cosine annealing to swa_lr"),
        "entropy_L": _Key((int,), 5, _c.pos, "Entropy-SGD: SGLD steps (minibatches) per outer step"),
        "entropy_gamma0": _Key(_NUM, 0.03, _c.pos, "Entropy-SGD: initial scope gamma"),
        "entropy_gamma1": _Key(_NUM, 0.001, _c.nonneg, "Entropy-SGD: scoping growth, gamma_t = gamma0 (1+gamma1)^t"),
        "entropy_sgld_lr": _Key(_NUM, 0.1, _c.pos, "Entropy-SGD: inner SGLD step size"),
        "entropy_noise": _Key(_NUM, 1e-4, _c.nonneg, "Entropy-SGD: SGLD thermal noise"),
        "entropy_alpha": _Key(_NUM, 0.75, lambda v: None if 0 < v <= 1 else "must be in (0, 1]",
                              "Entropy-SGD: averaging weight of mu"),
        "pal_mu": _Key(_NUM, 0.1, _c.pos, "PAL: measuring step"),
        "pal_max_step": _Key(_NUM, 1.0, _c.pos, "PAL: maximum step"),
        "pal_momentum": _Key(_NUM, 0.0, _c.frac, "PAL: conjugate-gradient momentum"),
        "pal_adapt": _Key(_NUM, 1.0, _c.pos, "PAL: factor on the vertex step"),
        "lr": _Key(_NUM, 0.1, _c.pos, "learning rate"),
        "momentum": _Key(_NUM, 0.9, _c.frac, "SGD momentum"),
        "weight_decay": _Key(_NUM, 0.0, _c.nonneg, "L2 weight decay"),
        "batch_size": _Key((int,), 128, _c.pos, "minibatch size"),
        "epochs": _Key((int,), 20, _c.pos, "training epochs"),
        "milestones": _Key(_LIST, [0.5, 0.75, 0.925], _c.numbers(_c.frac, min_len=0), "lr steps as fractions of epochs"),
        "gamma": _Key(_NUM, 0.1, _c.pos, "lr factor at each milestone"),
        "augment": _Key((bool,), False, None, "crop+flip (images) / circular shift (signals)"),
        "target_loss": _Key(_NUM, 0.0, _c.nonneg, "stop at the first epoch end with train cross-entropy "
                            "<= this (nats, eval mode, full training split; 0 = no target)"),
        "target_acc": _Key(_NUM, 0.0, _c.unit, "stop at the first epoch end with train accuracy >= this "
                           "(eval mode, full training split; 0 = no target); with target_loss both must hold"),
        "pretrain_random_epochs": _Key((int,), 0, _c.nonneg, "bad minima: epochs on random labels first"),
        "checkpoints_per_epoch": _Key((int,), 0, _c.nonneg, "snapshots per epoch for PCA trajectories"),
    },
    "sample": {
        "directions": _Key((int,), 4, _c.pos, "random filter-normalized directions"),
        "steps": _Key(_LIST, [0.25, 0.5, 0.75, 1.0], _c.numbers(_c.pos), "jump sizes along each direction"),
        "epochs": _Key((int,), 40, _c.pos, "retraining epochs per jump"),
        "lr": _Key(_NUM, 0.001, _c.pos, "retraining learning rate"),
        "momentum": _Key(_NUM, "inherit", _c.frac, "retraining SGD momentum ('inherit' = train.momentum)",
                         inherit="momentum"),
        "weight_decay": _Key(_NUM, "inherit", _c.nonneg, "retraining weight decay ('inherit' = train.weight_decay)",
                             inherit="weight_decay"),
        "batch_size": _Key((int,), "inherit", _c.pos, "retraining batch size ('inherit' = train.batch_size)",
                           inherit="batch_size"),
        "augment": _Key((bool,), "inherit", None, "augmentation while retraining ('inherit' = train.augment)",
                        inherit="augment"),
        "records_per_epoch": _Key((int,), 1, _c.pos, "recorded points per epoch"),
        "storage": _Key((str,), "full", _c.one_of("full", "half", "sketch"), "what is kept of the snapshots"),
        "sketch_dim": _Key((int,), 256, _c.pos, "random projection size of the sketch"),
        "batched": _Key((bool,), True, None, "train all jumps at once (False: the sequential reference)"),
    },
    "topology": {
        "k": _Key((int,), 20, _c.pos, "neighbours of the k-NN graph"),
        "value": _Key((str,), "val_loss", _c.one_of(*_topo.VALUES), "vertex value"),
        "graph": _Key((str,), "knn_mst", _c.one_of(*_topo.GRAPHS),
                      "filtration graph: k-NN united with a minimum spanning tree (connected), or bare k-NN"),
        "graph_on": _Key((str,), "cosine", _c.one_of(*_topo.GRAPH_ON),
                         "metric of the filtration graph: the snapshots' cosine distances, PHATE's potential or 2-D embedding"),
        "complex": _Key((str,), "planar", _c.one_of(*_topo.COMPLEXES),
                        "planar: H0 on the graph, H1 on the graph filled by the Delaunay triangulation of `plane`"),
        "plane": _Key((str,), "pca", _c.one_of(*_topo.PLANES),
                      "plane whose Delaunay triangulation fills loops: principal plane of the snapshots, or PHATE's"),
        "p": _Key(_NUM, 2, _c.pos, "exponent of total persistence and activity"),
        "essential": _Key((str,), "drop", _c.one_of(*_topo.ESSENTIAL),
                          "essential classes in total_persistence: dropped, or capped at the largest value (measures the loss range)"),
        "min_persistence": _Key((str, int, float), "auto", _c.auto_or_nonneg,
                                "bars shorter than this are noise in n_basins/n_loops ('auto': 20 noise standard deviations)"),
        "n_resamples": _Key((int,), 50, _c.nonneg, "resampled trajectory sets for the features' confidence intervals (0 = none)"),
        "ci_level": _Key((float,), 0.9, _c.open_unit, "level of the percentile intervals"),
        "resample": _Key((str,), "trajectory", _c.one_of(*_topo.RESAMPLE), "unit drawn with replacement for the intervals"),
        "knn": _Key((int,), 5, _c.pos, "PHATE kNN"),
        "decay": _Key(_NUM, 40, _c.pos, "PHATE alpha decay"),
        "t": _Key((int, str), 20, _c.auto_or_pos_int, "PHATE diffusion time (fixed so pictures compare, or 'auto'; the value used is stored)"),
        "n_landmark": _Key((int,), 0, _c.nonneg, "PHATE landmarks (0 = none)"),
        "distances": _Key((str,), "exact", _c.one_of(*_topo.DISTANCES), "cosine distances of the snapshots: exact, or estimated from a count sketch (large N)"),
        "sketch_dim": _Key((int,), 4096, _c.pos, "buckets of the count sketch (relative error about sqrt(2 / sketch_dim))"),
    },
    "surface": {
        "kind": _Key((str,), "plane", _c.one_of("plane", "line", "none"), "surface around each minimum"),
        "grid": _Key((int,), 21, _c.at_least(2), "points per axis"),
        "range": _Key(_LIST, [-1.0, 1.0], _c.interval, "coordinate range of each axis"),
        "n_samples": _Key((int,), 0, _c.nonneg, "evaluate on a fixed training subset (0 = all)"),
    },
    "curvature": {
        "enabled": _Key((bool,), True, None, "compute Hessian curvature"),
        "top_k": _Key((int,), 1, _c.pos, "top Hessian eigenvalues"),
        "n_probes": _Key((int,), 20, _c.pos, "Hutchinson probes for the trace"),
        "n_samples": _Key((int,), 2048, _c.pos, "training samples in the Hessian"),
        "sharpness_radius": _Key(_NUM, 0.5, _c.pos, "filter-normalized radius of sharpness"),
        "n_directions": _Key((int,), 8, _c.pos, "random directions for sharpness and volume"),
        "volume_threshold": _Key(_NUM, 0.1, _c.pos, "loss rise that ends the basin (nats)"),
        "density": _Key((bool,), False, None, "eigenvalue density by SLQ"),
    },
    "ensemble": {
        "cycles": _Key((int,), 4, _c.pos, "FGE: cycles of the cyclic learning rate (one snapshot each)"),
        "cycle_epochs": _Key((int,), 2, _c.pos, "FGE: epochs per cycle"),
        "lr1": _Key(_NUM, 0.05, _c.pos, "FGE: highest learning rate (cycle start and end)"),
        "lr2": _Key(_NUM, 5e-4, _c.pos, "FGE: lowest learning rate (mid-cycle, where the snapshot is taken)"),
        "schedule": _Key((str,), "triangular", _c.one_of("triangular", "cosine"), "FGE: shape of each cycle"),
        "batch_size": _Key((int,), 128, _c.pos, "FGE: minibatch size"),
        "momentum": _Key(_NUM, 0.9, _c.frac, "FGE: SGD momentum"),
        "weight_decay": _Key(_NUM, 5e-4, _c.nonneg, "FGE: L2 weight decay"),
    },
    "paths": {
        "method": _Key((str,), "neb", _c.one_of("neb", "autoneb", "bezier", "polychain"), "path algorithm"),
        "pairs": _Key((str,), "first", _c.one_of("first", "all", "mst", "none"), "which minima to connect"),
        "n_images": _Key((int,), 9, _c.pos, "images (NEB) or evaluation points per segment"),
        "steps": _Key((int,), 100, _c.pos, "optimization steps"),
        "lr": _Key(_NUM, 0.05, _c.pos, "learning rate"),
        "climbing": _Key((bool,), False, None, "climbing image"),
        "n_samples": _Key((int,), 0, _c.nonneg, "training subset for the path loss (0 = all)"),
        "batch_size": _Key((int,), 0, _c.nonneg, "minibatch per step (0 = full batch)"),
    },
    "analysis": {
        "targets": _Key(_LIST, ["gen_label"], _c.each(_c.is_str), "classifier targets: gen_label and/or setting keys ([] = none)"),
        "n_splits": _Key((int,), 5, _c.pos, "folds"),
        "n_repeats": _Key((int,), 3, _c.pos, "repeats of the stratified k-fold"),
        "n_permutations": _Key((int, str), "auto", lambda v: None if v == "auto" or (isinstance(v, int) and v >= 0)
                               else "must be an integer >= 0 or 'auto'",
                               "permutations of each classifier-table cell ('auto' = 20 x the number of "
                               "cells: the fewest for which a cell can be a finding after Holm)"),
        "compare_permutations": _Key((int,), 9999, _c.pos, "random within-strata relabellings of each comparison "
                                     "(every relabelling is enumerated when there are fewer)"),
        "p_adjust": _Key((str,), "holm", _c.one_of("holm", "bh"), "multiple-comparison adjustment of every family "
                         "(classifier cells, comparisons, correlations): Holm or Benjamini-Hochberg"),
        "n_boot": _Key((int,), 1000, _c.pos, "bootstrap resamples"),
        "n_classes": _Key((int,), 5, lambda v: None if v >= 2 else "must be >= 2", "quantile classes of gen_label"),
        "n_jobs": _Key((int,), 1, _c.pos, "processes for the classifier permutation test"),
    },
    "report": {
        "enabled": _Key((bool,), True, None, "write the PDF report"),
    },
}

SECTIONS = tuple(SCHEMA) + ("grid", "cells")


@dataclass
class Cell:
    """One grid cell: the fully resolved settings of one minimum and everything around it."""
    cell_id: str
    position: int
    config: dict            # resolved config of this cell (grid values applied)
    overrides: dict = field(default_factory=dict)  # the grid/cell values that made it

    @property
    def label(self) -> str:
        if not self.overrides:
            return self.cell_id
        return " ".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in self.overrides.items())


def _fmt(v):
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _type_name(types):
    names = {int: "integer", float: "number", str: "string", bool: "boolean", list: "list", dict: "table"}
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in types))


#: why "inherit" is refused on [sample] keys that look like they could take it
_NO_INHERIT_WHY = {
    "sample.lr": "train.lr starts a schedule of a from-scratch training; the retraining rate is its own "
                 "choice (the reference study: 0.001)",
    "sample.epochs": "train.epochs is the budget of a from-scratch training; retraining epochs are their own "
                     "choice (the reference study: 40)",
}


def inheritable_keys() -> list[str]:
    """The ``section.key`` names that accept ``"inherit"`` (the minimum's own ``train.*`` value)."""
    return [f"{s}.{k}" for s, keys in SCHEMA.items() for k, spec in keys.items() if spec.inherit]


def _refuse_inherit(where: str):
    import re
    key = re.search(r"(\w+\.\w+)(\[\d+\])?$", where).group(1)  # 'grid.sample.lr[0]' -> 'sample.lr'
    why = _NO_INHERIT_WHY.get(key, "it has no counterpart in [train]" if key.startswith("sample.") else
                              "'inherit' takes the minimum's train.* value, which only retraining keys have")
    raise ConfigError(f"config key '{where}' = 'inherit': {key} cannot inherit ({why}); give it a value. "
                      f"Keys that take 'inherit': {', '.join(inheritable_keys())}")


def check_value(where: str, spec: _Key, value):
    if isinstance(value, str) and value == "inherit" and str not in spec.types:
        if spec.inherit:
            return
        _refuse_inherit(where)
    # bool is an int subclass: keep true/false out of numeric keys and vice versa
    ok = isinstance(value, spec.types) and not (isinstance(value, bool) and bool not in spec.types)
    if int in spec.types and float in spec.types and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key '{where}': {value!r} is not a finite number")
    if not ok:
        raise ConfigError(f"config key '{where}' must be a {_type_name(spec.types)}, got {type(value).__name__} {value!r}")
    if isinstance(value, int) and not isinstance(value, bool) and value > _c.INT_LIMIT and spec.check is not _c.seed:
        raise ConfigError(f"config key '{where}' = {value!r}: must be <= {_c.INT_LIMIT} (no count or size "
                          "topoland handles is larger)")
    if spec.check is not None:
        msg = spec.check(value)
        if msg:
            raise ConfigError(f"config key '{where}' = {value!r}: {msg}")


def _model_kwargs_check(model: dict, where="model"):
    import inspect

    from topoland.nets import MODELS
    name = model.get("name", "mlp")
    allowed = [p for p in inspect.signature(MODELS[name]).parameters if p not in ("input_shape", "num_classes")]
    for k in model:
        if k != "name" and k not in allowed:
            raise ConfigError(f"unknown config key '{where}.{k}' for model '{name}' (its arguments: {', '.join(allowed)})")
    for k, v in model.items():
        if k == "name":
            continue
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0:
            raise ConfigError(f"config key '{where}.{k}' = {v!r}: must be >= 0")
        if isinstance(v, list) and any(isinstance(x, (int, float)) and not isinstance(x, bool) and x <= 0
                                       for x in v):
            raise ConfigError(f"config key '{where}.{k}' = {v!r}: every layer size must be > 0")
    if name == "wrn":
        depth = model.get("depth", 16)
        if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
            raise ConfigError(f"config key '{where}.depth' = {depth!r}: a WideResNet needs depth with (depth - 4) % 6 == 0, e.g. 10, 16, 22, 28")
    if name == "resnet":
        depth = model.get("depth", 20)
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ConfigError(f"config key '{where}.depth' = {depth!r}: a CIFAR ResNet needs depth with (depth - 2) % 6 == 0, e.g. 20, 56, 110")


#: training optimizers without an SGD momentum for 'sample.momentum = "inherit"' to take
_NO_SGD_MOMENTUM = ("adam", "pal")


def _cross_check(cfg: dict, where: str = "config"):
    """Checks that span sections (each key was already checked on its own)."""
    opt = cfg["train"]["optimizer"]
    if "sample" in cfg["run"]["stages"]:
        try:
            resolve_inherited(cfg["sample"], cfg["train"])
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    if opt == "swa" and (cfg["train"]["target_loss"] or cfg["train"]["target_acc"]):
        raise ConfigError(f"{where}: 'train.target_loss'/'train.target_acc' stop training at the first epoch "
                          "whose iterate meets the target, but train.optimizer = 'swa' returns the average "
                          "of the last epochs' iterates: use another optimizer or no target")
    if cfg["sample"]["storage"] == "sketch" and cfg["topology"]["distances"] == "sketch":
        raise ConfigError(f"{where}: 'topology.distances' = 'sketch' estimates cosines from stored "
                          "snapshots, but 'sample.storage' = 'sketch' keeps no snapshots (its Gram "
                          "gives exact cosines cheaply): set topology.distances = 'exact'")


def defaults() -> dict:
    """The default config, every section filled."""
    return {s: {k: copy.deepcopy(spec.default) for k, spec in keys.items()} for s, keys in SCHEMA.items()}


def _validate_section(section: str, values: dict, where_prefix: str = ""):
    if not isinstance(values, dict):
        raise ConfigError(f"config section '[{section}]' must be a table")
    schema = SCHEMA[section]
    for k, v in values.items():
        where = f"{where_prefix}{section}.{k}"
        if section == "model" and k != "name":
            continue
        if k not in schema:
            raise ConfigError(f"unknown config key '{where}' (known keys of [{section}]: {', '.join(schema)})")
        check_value(where, schema[k], v)


def _set_dotted(cfg: dict, key: str, value, where: str):
    if key.count(".") != 1:
        raise ConfigError(f"config key '{where}': grid keys are 'section.key', got '{key}'")
    section, name = key.split(".")
    if section not in SCHEMA:
        raise ConfigError(f"config key '{where}': unknown section '{section}'")
    if section != "model" and name not in SCHEMA[section]:
        raise ConfigError(f"unknown config key '{where}' ('{key}' is not a key of [{section}])")
    if section != "model":
        check_value(where, SCHEMA[section][name], value)
    cfg[section][name] = value


def validate(raw: dict) -> dict:
    """Validate a raw config dict and return it resolved over the defaults.

    Raises :class:`ConfigError` naming the first offending key.
    """
    if not isinstance(raw, dict):
        raise ConfigError("a config must be a TOML table")
    for section in raw:
        if section not in SECTIONS:
            raise ConfigError(f"unknown config section '[{section}]' (known: {', '.join(SECTIONS)})")
    cfg = defaults()
    for section in SCHEMA:
        if section in raw:
            _validate_section(section, raw[section])
            if section == "model":
                cfg["model"] = {"name": raw["model"].get("name", "mlp"), **raw["model"]}
            else:
                cfg[section].update(raw[section])
    _model_kwargs_check(cfg["model"])
    _cross_check(cfg)
    grid = raw.get("grid", {})
    if not isinstance(grid, dict):
        raise ConfigError("config section '[grid]' must be a table of 'section.key' = [values]")
    for key, values in grid.items():
        where = f"grid.{key}"
        if not isinstance(values, list):
            raise ConfigError(f"config key '{where}' must be a list of values")
        if not values:
            raise ConfigError(f"config key '{where}' is an empty list: the grid would have no cells")
        probe = copy.deepcopy(cfg)
        for i, v in enumerate(values):
            _set_dotted(probe, key, v, f"{where}[{i}]")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise ConfigError(f"config key '{where}' lists a value twice: the grid would have duplicate cells")
    cells = raw.get("cells", [])
    if not isinstance(cells, list) or not all(isinstance(c, dict) for c in cells):
        raise ConfigError("config '[[cells]]' must be an array of tables of 'section.key' = value")
    for i, extra in enumerate(cells):
        probe = copy.deepcopy(cfg)
        for key, v in extra.items():
            _set_dotted(probe, key, v, f"cells[{i}].{key}")
    cfg["grid"] = grid
    cfg["cells"] = cells
    return cfg


def load_config(path) -> dict:
    """Read and validate a TOML config file. Syntax errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file '{path}' is not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file '{path}' is not UTF-8 text") from None
    return validate(raw)


def cell_id(settings: dict) -> str:
    """Stable 10-character id of a cell's resolved settings (independent of key order)."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:10]


#: keys added after run directories existed: they count in a cell id only when they differ
#: from their defaults, so the ids of older configs (and of their run directories) stay the same
_LATER_KEYS = (("topology", "distances"), ("topology", "sketch_dim"), ("train", "target_loss"),
               ("train", "target_acc"))


def _cell_settings(cfg: dict) -> dict:
    # The settings that define a minimum and its analysis; the run/report sections do not.
    # Optional stages' sections count only when they differ from the defaults, so the cell ids
    # of configs written before those stages existed (and of their run directories) stay the same.
    base = defaults()
    out = ({s: dict(cfg[s]) for s in SCHEMA if s not in ("run", "report", "analysis") + OPTIONAL_STAGES}
           | {s: cfg[s] for s in OPTIONAL_STAGES if s in cfg and cfg[s] != base[s]}
           | {"seed": cfg["run"]["seed"]})
    for section, key in _LATER_KEYS:
        if section in out and out[section].get(key, base[section][key]) == base[section][key]:
            out[section].pop(key, None)
    # the retraining's weight decay, batch size and momentum count by the values they resolve to:
    # "inherit" and an explicit equal value retrain alike and share an id, and an id made when the
    # defaults were 1e-4 / 128 / 0.9 stays where the minimum's values are those. sample.augment
    # counts as written ("inherit" was its default before any run directory existed)
    keys = [k for k in _ID_RESOLVED if k != "momentum" or cfg["train"]["optimizer"] not in _NO_SGD_MOMENTUM]
    out["sample"] = resolve_inherited(out["sample"], cfg["train"], keys=keys)
    return out


_ID_RESOLVED = ("weight_decay", "batch_size", "momentum")


def resolve_inherited(section: dict, train: dict, *, stage: str = "sample", keys=None) -> dict:
    """A copy of a stage's config section with every ``"inherit"`` replaced by ``train``'s value.

    ``train``: the cell's resolved [train] section. ``keys``: limit the replacement to these keys
    (default: every key of the section that takes "inherit"). Raises :class:`ConfigError` when a
    key holds "inherit" but cannot take it.
    """
    out = dict(section)
    for k, v in section.items():
        if not (isinstance(v, str) and v == "inherit") or (keys is not None and k not in keys):
            continue
        spec = SCHEMA[stage].get(k)
        if spec is None or spec.inherit is None:
            _refuse_inherit(f"{stage}.{k}")
        if spec.inherit == "momentum" and train["optimizer"] in _NO_SGD_MOMENTUM:
            raise ConfigError(f"'{stage}.momentum' = 'inherit' takes the minimum's SGD momentum, but "
                              f"train.optimizer = {train['optimizer']!r} has none (train.momentum is unused "
                              f"by it): give {stage}.momentum a number")
        out[k] = train[spec.inherit]
    return out


def expand_grid(cfg: dict) -> list[Cell]:
    """The grid's product plus the extra ``[[cells]]``, in a fixed order.

    Raises :class:`ConfigError` for duplicate cells (two entries with identical settings).
    """
    grid = cfg.get("grid", {})
    keys = list(grid)
    combos = list(itertools.product(*(grid[k] for k in keys))) if keys else [()]
    overrides = [dict(zip(keys, combo)) for combo in combos]
    overrides += [dict(c) for c in cfg.get("cells", [])]
    out, seen = [], {}
    for pos, ov in enumerate(overrides):
        c = copy.deepcopy({k: v for k, v in cfg.items() if k not in ("grid", "cells")})
        for key, v in ov.items():
            section, name = key.split(".")
            c[section][name] = v
        _model_kwargs_check(c["model"], where="model")
        _cross_check(c, where=f"cell {pos} ({ov})")
        cid = cell_id(_cell_settings(c))
        if cid in seen:
            raise ConfigError(f"duplicate cells: cell {pos} ({ov}) has the same settings as cell {seen[cid]}")
        seen[cid] = pos
        out.append(Cell(cid, pos, c, ov))
    return out


def to_toml(cfg: dict) -> str:
    """Serialize a resolved config to TOML (tables of scalars and lists only)."""
    lines = []

    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v) if math.isfinite(v) else ("inf" if v > 0 else "-inf") if not math.isnan(v) else "nan"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{json.dumps(k)} = {val(x)}" for k, x in v.items()) + "}"
        raise TypeError(type(v))

    for section, values in cfg.items():
        if section == "cells":
            for c in values:
                lines.append("[[cells]]")
                lines += [f"{json.dumps(k)} = {val(v)}" for k, v in c.items()]
                lines.append("")
            continue
        lines.append(f"[{section}]")
        for k, v in values.items():
            key = json.dumps(k) if "." in k else k
            lines.append(f"{key} = {val(v)}")
        lines.append("")
    return "\n".join(lines)


def describe_schema() -> str:
    """Every config key with its default and meaning, for ``topoland config --keys``."""
    out = []
    for section, keys in SCHEMA.items():
        out.append(f"[{section}]")
        for k, spec in keys.items():
            out.append(f"  {k:<24} = {spec.default!r:<28} # {spec.help}")
        if section == "model":
            out.append("  <argument>               = ...                          # any build_model argument")
    out.append("[grid]\n  \"section.key\"            = [v1, v2, ...]                # the grid is the product")
    out.append("[[cells]]\n  \"section.key\"            = value                        # an extra cell")
    return "\n".join(out)
