"""Queries of a run directory: the minima table, the per-stage feature groups, the cells a stage
can study, the run's design, and comparisons by a setting."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

from topoland.errors import TopolandError
from topoland.runs.stages import CELL_STAGES
from topoland.runs.store import RunStore

if TYPE_CHECKING:
    import pandas as pd


def _flatten_settings(cfg: dict, overrides: dict) -> dict:
    from topoland.runs.config import model_label
    """The settings columns of a cell: every key its grid/cell entry set, plus the usual knobs."""
    cols = {}
    for key in ("model.name", "train.weight_decay", "train.batch_size", "train.augment", "train.lr",
                "train.epochs", "train.pretrain_random_epochs", "data.label_noise"):
        s, k = key.split(".")
        if k in cfg.get(s, {}):
            cols[key] = cfg[s][k]
    for key, v in overrides.items():
        # a whole [model] section (an architecture axis) as one readable value
        cols[key] = model_label(v) if isinstance(v, dict) else v
    cols["run.seed"] = cfg["run"]["seed"]
    return cols


#: the stopping criterion's outcome per minimum (train summary; minima and analysis tables):
#: ``reached_target`` (bool: the target was met within train.epochs) and ``stop_epoch`` (main-phase
#: epochs trained). Present only for cells trained with train.target_loss or train.target_acc.
TARGET_COLUMNS = ("reached_target", "stop_epoch")


def missed_target(store: RunStore) -> list[str]:
    """Cell ids whose training had a stopping criterion and did not meet it within its epochs."""
    return [c for c in done_cells(store, "train")
            if store.summary(c, "train").get("reached_target") is False]


def minima_table(run_dir) -> "pd.DataFrame":
    """One row per cell: id, settings, the train stage's metrics and every stage's status, and
    :data:`TARGET_COLUMNS` where a stopping criterion was set (cells without one: NaN)."""
    import pandas as pd
    store = RunStore.open(run_dir)
    cells = store.cells()
    stages = store.stages()
    rows = []
    for _, c in cells.iterrows():
        row = {"cell_id": c.cell_id} | _flatten_settings(c.settings, c.overrides)
        if store.is_done(c.cell_id, "train"):
            summ = store.summary(c.cell_id, "train")
            row |= {k: summ.get(k) for k in ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss",
                                            "test_acc", "gap", "acc_gap", "diverged") if k in summ}
            if "reached_target" in summ:   # trained with a stopping criterion
                row |= {k: summ[k] for k in TARGET_COLUMNS}
        st = stages[stages.cell_id == c.cell_id].set_index("stage")["status"].to_dict()
        row["stages"] = " ".join(f"{s}:{st[s][0]}" for s in CELL_STAGES if s in st) or "-"
        rows.append(row)
    out = pd.DataFrame(rows)
    if "model" in out:  # an architecture axis: extra cells that keep the base [model] show it too
        from topoland.runs.config import model_label
        base = {c.cell_id: model_label(c.settings["model"]) for c in cells.itertuples()}
        out["model"] = [base[cid] if pd.isna(v) else v for cid, v in zip(out.cell_id, out["model"])]
    return out


def done_cells(store: RunStore, stage: str) -> list[str]:
    """Cell ids whose ``stage`` is finished, in grid order."""
    return [cid for cid in store.cells().cell_id if store.is_done(cid, stage)]


def studied_cells(store: RunStore) -> list[str]:
    """Cells with a minimum to study: trained, and the training did not diverge (a diverged
    cell's later stages are skipped with the reason; nothing downstream reads them)."""
    return [c for c in done_cells(store, "train") if not store.summary(c, "train").get("diverged")]


def diverged_cells(store: RunStore) -> list[str]:
    """Cell ids whose training diverged."""
    return [c for c in done_cells(store, "train") if store.summary(c, "train").get("diverged")]


def pairs_to_connect(store: RunStore, how: str) -> list[tuple[str, str]]:
    """Pairs of studied cells of one architecture to join by a path: ``"first"`` (the first cell
    and the next of its architecture), ``"all"`` or ``"none"``."""
    cells = studied_cells(store)
    # only minima of one architecture can be joined by a path
    arch = {cid: json.dumps(store.cell_config(cid)["model"], sort_keys=True) for cid in cells}
    if how == "none" or len(cells) < 2:
        return []
    if how == "first":
        a = cells[0]
        same = [c for c in cells[1:] if arch[c] == arch[a]]
        return [(a, same[0])] if same else []
    return [(a, b) for i, a in enumerate(cells) for b in cells[i + 1:] if arch[a] == arch[b]]


def connectable_cells(store: RunStore) -> list[str]:
    """The studied cells of the first studied cell's architecture."""
    cells = studied_cells(store)
    if not cells:
        return []
    arch = {cid: json.dumps(store.cell_config(cid)["model"], sort_keys=True) for cid in cells}
    return [c for c in cells if arch[c] == arch[cells[0]]]


# The ensemble stage is deliberately not a feature group: its summary (ensemble accuracy, gain
# over the minimum's test accuracy) is measured on the test split, so as a feature it would
# leak the generalization target (test_acc / gen_label) into the classifiers.
FEATURE_STAGES = {"trajectory": "sample", "topology": "topology", "surface": "surface", "curvature": "curvature",
                  "measures": "measures"}


def feature_groups(store: RunStore) -> dict:
    """Per-cell scalar summaries of each stage as feature-group DataFrames (indexed by cell_id)."""
    import numbers

    import pandas as pd
    groups = {}
    for group, stage in FEATURE_STAGES.items():
        rows = {}
        for cid in done_cells(store, stage):
            summ = store.summary(cid, stage)
            vals = {k: v for k, v in summ.items()
                    if isinstance(v, numbers.Number) and not isinstance(v, bool) and k not in ("n_samples",)}
            vals = {k: (float("nan") if v is None else v) for k, v in vals.items()}
            if vals:
                rows[cid] = vals
        if rows:
            df = pd.DataFrame.from_dict(rows, orient="index")
            df = df.loc[:, df.notna().any()]
            df.index.name = "cell_id"
            groups[group] = df
    return groups


def weight_statistics_table(store: RunStore, cell_ids) -> "pd.DataFrame":
    """The per-tensor weight statistics of ``cell_ids`` (rows, indexed by cell_id) from their
    measures stage; cells without one are left out. Not a feature group: its hundreds of columns
    feed one cross-validated regressor, the supervised baseline of the measure scores."""
    import pandas as pd

    from topoland.runs import layout
    rows = {c: layout.read_weight_statistics(store.stage_dir(c, "measures"))
            for c in cell_ids if store.is_done(c, "measures")}
    df = pd.DataFrame.from_dict({c: r for c, r in rows.items() if r}, orient="index")
    df.index.name = "cell_id"
    return df


def analysis_table(store: RunStore):
    """The feature table of a run: settings, metrics and every available feature group."""
    from topoland.analysis import feature_table
    cells = minima_table(store.path).drop(columns=["stages"])
    cells = cells[[store.is_done(c, "train") for c in cells.cell_id]]
    if "diverged" in cells:
        cells = cells[~cells["diverged"].astype(bool)].drop(columns=["diverged"])
    groups = {g: df[df.index.isin(cells.cell_id)] for g, df in feature_groups(store).items()}
    return feature_table(cells.reset_index(drop=True), {g: df for g, df in groups.items() if len(df)},
                         test_derived=_test_derived_groups(store, cells.cell_id))


def topology_values(store: RunStore, cell_ids) -> set[str]:
    """The ``topology.value`` columns (``train_loss``, ``val_loss``, ...) the cells filtered by."""
    from topoland.runs.config import defaults
    base = defaults()["topology"]["value"]
    return {store.cell_config(c).get("topology", {}).get("value", base) for c in cell_ids}


def _test_derived_groups(store: RunStore, cell_ids) -> dict:
    """Groups computed on the test split whatever their column names: a topology filtered by
    test split (``topology.value = "test_loss"`` or ``"test_<metric>"``) in any cell."""
    return {"topology": "all"} if any(v.startswith("test_") for v in topology_values(store, cell_ids)) else {}


def run_design(store: RunStore, cfg: dict):
    """The :class:`~topoland.analysis.comparisons.Design` of a run: its grid axes and extra cells
    (``[[cells]]``: the cells after the grid's product, by position)."""
    import math

    from topoland.analysis import Design
    axes = tuple(cfg["grid"])
    n_grid = math.prod(len(v) for v in cfg["grid"].values())
    cells = store.cells()
    return Design(axes=axes, extra=tuple(cells.loc[cells.position >= n_grid, "cell_id"]))


def config_settings(ft) -> list[str]:
    """Settings columns that are config keys (``section.key``, or ``model`` for an architecture
    axis), not stage outcomes."""
    return [c for c in ft.settings if "." in c or c == "model"]


def compare_in_dir(run_dir, *, by: str, metric: str, n_permutations=9999, seed=0):
    """``topoland compare``: compare ``metric`` by the grid axis ``by`` over the grid cells,
    stratified on the other axes; or, when ``by`` is the setting by which extra cells leave the
    grid (``train.pretrain_random_epochs``), those extra cells vs the grid."""
    from topoland.analysis import resolve_column
    from topoland.analysis import extra_comparison, extra_kinds, grid_comparison, value_sizes
    store = RunStore.open(run_dir)
    cfg = stored_config(store)
    ft = analysis_table(store)
    design = run_design(store, cfg)
    metric = resolve_column(ft, metric)
    if by in design.axes:
        return grid_comparison(ft, design, by, metric, n_permutations=n_permutations, seed=seed)
    kinds = extra_kinds(ft, design, config_settings(ft))
    hits = {k: c for k, c in kinds.items() if by == k or by in [part.split("=")[0] for part in k.split(", ")]}
    if len(hits) == 1:
        (kind, cells), = hits.items()
        return extra_comparison(ft, design, kind, cells, metric, n_permutations=n_permutations, seed=seed)
    if hits:
        raise TopolandError(f"several kinds of extra cells set {by!r} in run '{run_dir}': {', '.join(hits)}; "
                            "give one of them in full as --by")
    raise TopolandError(
        f"setting {by!r} is not varied by the grid of run '{run_dir}' (grid axes: {', '.join(design.axes) or 'none'}; "
        f"extra cells: {', '.join(f'{k} ({len(c)})' for k, c in kinds.items()) or 'none'}; "
        f"cells per value of {by!r}: {value_sizes(ft.frame, by)})")


def stored_config(store: RunStore) -> dict:
    """The run's config (``config.toml``), validated."""
    import tomllib

    from topoland.runs.config import validate
    raw = tomllib.loads(store.config_text())
    return validate(raw)
