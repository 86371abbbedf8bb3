"""Experiment configs: TOML schema, validation and grid expansion.

A config names a dataset, a model, a training recipe, the later stages' options, and a grid:
lists of values for any ``section.key``; the grid is their product. The architecture itself can
be an axis: ``model = [{name = "mlp", widths = [64, 64]}, {name = "cnn", channels = [8, 16]}]``
replaces the whole ``[model]`` section per cell (its keys depend on the name). Extra cells (for
instance "bad minima" pretrained on random labels) are listed under ``[[cells]]``.

Your own model and data enter through factories: ``[model] name = "custom"``, ``factory =
"package.module:function"`` (the section's other keys are its keywords; see
:mod:`topoland.nets.external`), ``[model] name = "torchvision:resnet18"``, and ``[data] name =
"custom"``, ``factory = ...``, ``kwargs = {...}`` (:func:`topoland.data.load_dataset`). Validation
imports a factory's module: validating such a config runs the user's code. The factory string and
its keywords are part of the sections, hence of the cell id.

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

from topoland import declare
from topoland.data import check_data_section
from topoland.declare import Param
from topoland.errors import ConfigError
from topoland.nets.models import check_model_section
from topoland.runs.schema import schema
from topoland.runs.stages import OPTIONAL_STAGES



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
    if isinstance(v, dict):
        return model_label(v)
    return str(v)


def model_section(model: dict) -> dict:
    """A ``[model]`` table as the config holds it: ``name`` first (default "mlp"), then the rest."""
    return {"name": model.get("name", "mlp"), **model}


def model_label(model: dict) -> str:
    """A ``[model]`` section in one short string: ``"mlp(widths=[64, 64])"``."""
    args = ", ".join(f"{k}={v}" for k, v in model.items() if k != "name")
    return f"{model.get('name', 'mlp')}({args})"


#: why "inherit" is refused on [sample] keys that look like they could take it
_NO_INHERIT_WHY = {
    "sample.lr": "train.lr starts a schedule of a from-scratch training; the retraining rate is its own "
                 "choice (the reference study: 0.001)",
    "sample.epochs": "train.epochs is the budget of a from-scratch training; retraining epochs are their own "
                     "choice (the reference study: 40)",
}


def inheritable_keys() -> list[str]:
    """The ``section.key`` names that accept ``"inherit"`` (the minimum's own ``train.*`` value)."""
    return [f"{s}.{k}" for s, keys in schema().items() for k, spec in keys.items() if spec.inherit]


def _refuse_inherit(where: str):
    import re
    key = re.search(r"(\w+\.\w+)(\[\d+\])?$", where).group(1)  # 'grid.sample.lr[0]' -> 'sample.lr'
    why = _NO_INHERIT_WHY.get(key, "it has no counterpart in [train]" if key.startswith("sample.") else
                              "'inherit' takes the minimum's train.* value, which only retraining keys have")
    raise ConfigError(f"config key '{where}' = 'inherit': {key} cannot inherit ({why}); give it a value. "
                      f"Keys that take 'inherit': {', '.join(inheritable_keys())}")


def check_value(where: str, spec: Param, value):
    """Check one config value against its declaration (``"inherit"`` where the key takes it)."""
    if isinstance(value, str) and value == "inherit" and str not in spec.types:
        if spec.inherit:
            return
        _refuse_inherit(where)
    declare.check_value(where, spec, value)


#: training optimizers without an SGD momentum for 'sample.momentum = "inherit"' to take
_NO_SGD_MOMENTUM = ("adam", "pal")


def _cross_check(cfg: dict, where: str = "config"):
    """Checks that span sections (each key was already checked on its own)."""
    opt = cfg["train"]["optimizer"]
    value = cfg["topology"]["value"]
    if value.split("_", 1)[1] not in ("loss", *cfg["train"].get("metrics", {})):
        raise ConfigError(f"{where}: 'topology.value' = {value!r} names no recorded column: the losses are "
                          f"train_loss, val_loss, test_loss, the metrics <split>_<name> of train.metrics "
                          f"({', '.join(cfg['train'].get('metrics', {})) or 'none'})")
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
    return {s: declare.defaults(keys) for s, keys in schema().items()}


def _set_dotted(sch: dict, cfg: dict, key: str, value, where: str):
    if key == "model":   # the whole section: an architecture axis
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{where}': a 'model' value is a table such as "
                              f"{{name = \"mlp\", widths = [64, 64]}}, got {value!r}")
        cfg["model"] = model_section(value)
        check_model_section(cfg["model"], where=where)
        return
    if key.count(".") != 1:
        raise ConfigError(f"config key '{where}': grid keys are 'section.key' (or 'model', a whole "
                          f"[model] section per value), got '{key}'")
    section, name = key.split(".")
    if section not in sch:
        raise ConfigError(f"config key '{where}': unknown section '{section}'")
    if section != "model" and name not in sch[section]:
        raise ConfigError(f"unknown config key '{where}' ('{key}' is not a key of [{section}])")
    if section != "model":
        check_value(where, sch[section][name], value)
    cfg[section][name] = value


def validate(raw: dict) -> dict:
    """Validate a raw config dict and return it resolved over the defaults.

    Raises :class:`ConfigError` naming the first offending key.
    """
    if not isinstance(raw, dict):
        raise ConfigError("a config must be a TOML table")
    sch = schema()
    sections = (*sch, "grid", "cells")
    for section in raw:
        if section not in sections:
            raise ConfigError(f"unknown config section '[{section}]' (known: {', '.join(sections)})")
    cfg = {s: declare.defaults(keys) for s, keys in sch.items()}
    for section in sch:
        if section in raw:
            # [model] keys besides name are the builder's arguments (check_model_section)
            declare.validate_section(section, sch[section], raw[section], check=check_value,
                                     skip_undeclared=section == "model")
            if section == "model":
                cfg["model"] = model_section(raw["model"])
            else:
                cfg[section].update(raw[section])
    check_model_section(cfg["model"])
    check_data_section(cfg["data"])
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
            _set_dotted(sch, probe, key, v, f"{where}[{i}]")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise ConfigError(f"config key '{where}' lists a value twice: the grid would have duplicate cells")
    cells = raw.get("cells", [])
    if not isinstance(cells, list) or not all(isinstance(c, dict) for c in cells):
        raise ConfigError("config '[[cells]]' must be an array of tables of 'section.key' = value")
    for i, extra in enumerate(cells):
        probe = copy.deepcopy(cfg)
        for key, v in extra.items():
            _set_dotted(sch, probe, key, v, f"cells[{i}].{key}")
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
               ("train", "target_acc"), ("data", "factory"), ("data", "kwargs"),
               ("train", "loss"), ("train", "metrics"))


def _cell_settings(cfg: dict) -> dict:
    # The settings that define a minimum and its analysis; the run/report sections do not.
    # Optional stages' sections count only when they differ from the defaults, so the cell ids
    # of configs written before those stages existed (and of their run directories) stay the same.
    base = defaults()
    out = ({s: dict(cfg[s]) for s in schema() if s not in ("run", "report", "analysis") + OPTIONAL_STAGES}
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
        spec = schema()[stage].get(k)
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
    out, seen, checked = [], {}, set()
    for pos, ov in enumerate(overrides):
        c = copy.deepcopy({k: v for k, v in cfg.items() if k not in ("grid", "cells")})
        for key, v in ov.items():
            if key == "model":
                c["model"] = model_section(v)
                continue
            section, name = key.split(".")
            c[section][name] = v
        sections = json.dumps([c["model"], c["data"]], sort_keys=True, default=str)
        if sections not in checked:  # a factory is imported (a torchvision model built on meta) once
            check_model_section(c["model"], where="model")
            check_data_section(c["data"])
            checked.add(sections)
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
    for section, keys in schema().items():
        out.append(f"[{section}]")
        for k, spec in keys.items():
            out.append(f"  {k:<24} = {spec.default!r:<28} # {spec.help}")
        if section == "model":
            out.append("  <argument>               = ...                          # any build_model argument; "
                       "name = 'custom': factory = 'package.module:function' (runs your code) and its "
                       "keywords; 'torchvision:<name>': get_model's keywords (no weights)")
    out.append("[grid]\n  \"section.key\"            = [v1, v2, ...]                # the grid is the product")
    out.append("[[cells]]\n  \"section.key\"            = value                        # an extra cell")
    return "\n".join(out)
