"""The feature table: one row per minimum, its settings, metrics and named feature groups.

Column naming
-------------
Settings and metrics keep their names as given (``train.weight_decay``, ``test_acc``). Every
feature column is named ``<group>.<feature>`` (``topology.total_persistence_h1``,
``curvature.top_eigenvalue``), and :attr:`FeatureTable.groups` maps each group to its column
names, in order; that mapping (not the name) says what is a feature. Group names may not
contain a dot; feature names may. A settings column may not start with ``<group>.`` of a
present group.

A group that was not computed is *absent* (no columns, no entry in ``groups``), never
zero-filled. A cell for which a present group has no row, or has a NaN, keeps NaN in those
columns and is listed in :attr:`FeatureTable.missing` ``{group: [cell_id, ...]}``.

Metrics (:data:`METRIC_COLUMNS`): ``train/val/test_loss`` (mean cross-entropy, nats),
``train/val/test_acc`` (fraction in [0, 1]), ``gap = test_loss - train_loss`` (nats) and
``acc_gap = train_acc - test_acc`` (positive when the minimum over-fits). ``gap`` and
``acc_gap`` are derived when absent and their inputs are present.

No feature from the test split
------------------------------
Test-split values may be targets (:data:`TEST_TARGETS`), never features. A feature column is
*test-derived* when its name carries the token ``test`` between ``.``/``_`` or the ends of the
name (:func:`is_test_derived`: ``trajectory.final_test_acc_mean``, ``paths.linear.test_loss.max``),
or when the caller declares it so (``feature_table(..., test_derived={"topology": "all"})`` for
a topology filtered by test loss). :func:`feature_table` leaves such columns out (or raises with
``on_test="raise"``) and lists them in :attr:`FeatureTable.excluded` (saved in
``features.json``); a :class:`FeatureTable` refuses to hold one, and :func:`check_feature_columns`
lets classifiers and correlations refuse them too.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from topoland.errors import TopolandError
from topoland.io import atomic_path

__all__ = [
    "AnalysisError",
    "FeatureTable",
    "METRIC_COLUMNS",
    "TEST_TARGETS",
    "check_feature_columns",
    "is_test_derived",
    "is_validation_derived",
    "feature_table",
    "save_feature_table",
    "load_feature_table",
    "resolve_column",
    "as_frame",
]

METRIC_COLUMNS: tuple[str, ...] = (
    "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "gap", "acc_gap",
)

#: Test-split columns allowed as targets only (``gen_label`` is ``test_acc`` binned).
TEST_TARGETS: tuple[str, ...] = ("test_loss", "test_acc", "gap", "acc_gap", "gen_label")

_TEST_TOKEN = re.compile(r"(?:^|[._])test(?:[._]|$)")
_VAL_TOKEN = re.compile(r"(?:^|[._])val(?:[._]|$)")

#: Conventional feature groups (others are allowed).
KNOWN_GROUPS: tuple[str, ...] = ("topology", "trajectory", "surface", "curvature", "paths")

_FILES = ("features.csv", "features.parquet", "features.json")


class AnalysisError(TopolandError):
    """Analysis input is malformed (unknown column, duplicated cell, non-numeric feature...)."""


@dataclass
class FeatureTable:
    """A feature table.

    Attributes:
        frame: DataFrame indexed by ``cell_id`` (one row per minimum): settings columns, metric
            columns, then ``<group>.<feature>`` columns.
        groups: ``{group: [column, ...]}`` for every present group.
        settings: names of the settings columns.
        metrics: names of the metric columns present.
        missing: ``{group: [cell_id, ...]}``: cells with at least one NaN in that group.
        excluded: ``{column: reason}``: feature columns left out because they come from the
            test split.

    Raises :class:`AnalysisError` when a group holds a test-derived column.
    """

    frame: pd.DataFrame
    groups: dict[str, list[str]]
    settings: list[str]
    metrics: list[str]
    missing: dict[str, list] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        check_feature_columns([c for cols in self.groups.values() for c in cols], where="FeatureTable")

    def columns(self, groups=None) -> list[str]:
        """Feature columns of ``groups`` (a name or list of names; default: all), in order."""
        if groups is None:
            groups = list(self.groups)
        elif isinstance(groups, str):
            groups = [groups]
        out: list[str] = []
        for g in groups:
            if g not in self.groups:
                raise AnalysisError(f"feature group {g!r} is not in the table (present: {sorted(self.groups)})")
            out.extend(c for c in self.groups[g] if c not in out)
        return out

    def __len__(self) -> int:
        return len(self.frame)


def is_test_derived(name: str) -> bool:
    """True when ``name`` marks a value of the test split: a target of :data:`TEST_TARGETS`, or
    the token ``test`` delimited by ``.``, ``_`` or the ends (``final_test_acc_mean``: yes;
    ``contest_score``: no)."""
    return name in TEST_TARGETS or bool(_TEST_TOKEN.search(name))


def is_validation_derived(name: str) -> bool:
    """True when ``name`` marks a value of the validation split: the token ``val`` delimited by
    ``.``, ``_`` or the ends (``final_val_acc_mean``: yes; ``interval_width``: no). Allowed as a
    feature, but held-out data: a generalization measure sees only the training split."""
    return bool(_VAL_TOKEN.search(name))


def check_feature_columns(columns, *, where: str = "features") -> None:
    """Raise :class:`AnalysisError` naming every test-derived column among ``columns``."""
    bad = [c for c in columns if isinstance(c, str) and is_test_derived(c)]
    if bad:
        raise AnalysisError(
            f"{where}: {bad} come from the test split and may only be targets, never features "
            f"(allowed targets: {', '.join(TEST_TARGETS)})")


def _split_test_columns(group: str, columns, declared) -> tuple[list[str], dict[str, str]]:
    """Feature names of one group kept, and ``{"<group>.<name>": reason}`` for those left out."""
    if declared not in (None, "all") and not isinstance(declared, (list, tuple, set)):
        raise AnalysisError(f"test_derived[{group!r}] must be 'all' or a list of feature names, got {declared!r}")
    named = set(columns) if declared == "all" else set(declared or ())
    unknown = named - set(columns)
    if unknown:
        raise AnalysisError(f"test_derived[{group!r}] names {sorted(unknown)}, which the group does not have")
    keep, out = [], {}
    for c in columns:
        full = f"{group}.{c}"
        if c in named:
            out[full] = "declared computed from the test split"
        elif is_test_derived(full):
            out[full] = "name marks the test split"
        else:
            keep.append(c)
    return keep, out


def as_frame(table) -> pd.DataFrame:
    """The DataFrame of a :class:`FeatureTable`, or ``table`` itself if it is a DataFrame."""
    if isinstance(table, FeatureTable):
        return table.frame
    if isinstance(table, pd.DataFrame):
        return table
    raise AnalysisError(f"expected a FeatureTable or a pandas DataFrame, got {type(table).__name__}")


def resolve_column(table, name: str) -> str:
    """Return the column called ``name``, or the unique ``<group>.<name>`` column.

    Lets ``--metric total_persistence_h1`` find ``topology.total_persistence_h1``.
    """
    df = as_frame(table)
    if name in df.columns:
        return name
    hits = [c for c in df.columns if isinstance(c, str) and c.endswith("." + name)]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise AnalysisError(f"column {name!r} is not in the feature table (columns: {list(df.columns)})")
    raise AnalysisError(f"column {name!r} is ambiguous: it matches {hits}; give the full name")


def _with_derived_metrics(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    if "gap" not in df.columns and {"test_loss", "train_loss"} <= set(df.columns):
        df["gap"] = df["test_loss"] - df["train_loss"]
    if "acc_gap" not in df.columns and {"test_acc", "train_acc"} <= set(df.columns):
        df["acc_gap"] = df["train_acc"] - df["test_acc"]
    return df


def feature_table(cells: pd.DataFrame, groups: dict[str, pd.DataFrame] | None = None, *,
                  test_derived: dict | None = None, on_test: str = "drop") -> FeatureTable:
    """Assemble the feature table.

    Args:
        cells: one row per minimum: a ``cell_id`` column (or index named ``cell_id``), settings
            columns and metric columns (any of :data:`METRIC_COLUMNS`; every other column is a
            setting).
        groups: ``{group: DataFrame indexed by cell_id}`` with numeric feature columns. ``None``
            or an empty frame means the group is absent.
        test_derived: ``{group: "all" | [feature, ...]}``: columns the caller knows were computed
            on the test split, whatever their names.
        on_test: "drop" (leave test-derived columns out, listed in ``excluded``) or "raise".

    Returns:
        A :class:`FeatureTable`; cells lacking a group's features get NaN there and are listed
        in ``missing``. A group left with no column is absent.
    """
    if on_test not in ("drop", "raise"):
        raise AnalysisError(f"on_test must be 'drop' or 'raise', got {on_test!r}")
    declared = dict(test_derived or {})
    if not isinstance(cells, pd.DataFrame):
        raise AnalysisError(f"cells must be a DataFrame, got {type(cells).__name__}")
    base = cells.copy()
    if "cell_id" in base.columns:
        base = base.set_index("cell_id")
    elif base.index.name != "cell_id":
        raise AnalysisError("cells has no 'cell_id' column (nor an index named 'cell_id')")
    if base.index.has_duplicates:
        dup = base.index[base.index.duplicated()].unique().tolist()
        raise AnalysisError(f"cells has duplicated cell_id values: {dup[:10]}")
    for c in base.columns:
        if not isinstance(c, str):
            raise AnalysisError(f"cells column {c!r}: settings and metric names must be strings")
    base = _with_derived_metrics(base)
    metrics = [c for c in METRIC_COLUMNS if c in base.columns]
    settings = [c for c in base.columns if c not in metrics]
    base = base[settings + metrics]

    group_cols: dict[str, list[str]] = {}
    missing: dict[str, list] = {}
    excluded: dict[str, str] = {}
    parts = [base]
    for g, gdf in (groups or {}).items():
        if gdf is None or (isinstance(gdf, pd.DataFrame) and gdf.shape[1] == 0):
            continue
        if not isinstance(g, str) or not g or "." in g:
            raise AnalysisError(f"feature group name {g!r} must be a non-empty string without '.'")
        if not isinstance(gdf, pd.DataFrame):
            raise AnalysisError(f"feature group {g!r} must be a DataFrame indexed by cell_id, got {type(gdf).__name__}")
        if "cell_id" in gdf.columns:
            gdf = gdf.set_index("cell_id")
        if gdf.index.has_duplicates:
            raise AnalysisError(f"feature group {g!r} has duplicated cell_id values")
        unknown = gdf.index.difference(base.index)
        if len(unknown):
            raise AnalysisError(f"feature group {g!r} has rows for unknown cell_id values: {unknown.tolist()[:10]}")
        bad = [c for c in gdf.columns if not pd.api.types.is_numeric_dtype(gdf[c])]
        if bad:
            raise AnalysisError(f"feature group {g!r} has non-numeric columns {bad}")
        keep, out = _split_test_columns(g, list(gdf.columns), declared.pop(g, None))
        if out and on_test == "raise":
            raise AnalysisError(f"feature group {g!r}: {sorted(out)} come from the test split; features may not")
        excluded.update(out)
        if not keep:
            continue
        gdf = gdf[keep]
        renamed = gdf.rename(columns=lambda c: f"{g}.{c}").astype(float)
        aligned = renamed.reindex(base.index)
        group_cols[g] = list(renamed.columns)
        lacking = aligned.index[aligned.isna().any(axis=1)].tolist()
        if lacking:
            missing[g] = lacking
        parts.append(aligned)
    clash = [c for c in settings if c.split(".", 1)[0] in group_cols]
    if clash:
        raise AnalysisError(f"cells columns {clash} look like features of a present group; rename them")
    frame = pd.concat(parts, axis=1)
    if frame.columns.has_duplicates:
        raise AnalysisError(f"duplicated columns in the feature table: {frame.columns[frame.columns.duplicated()].tolist()}")
    frame.index.name = "cell_id"
    return FeatureTable(frame=frame, groups=group_cols, settings=settings, metrics=metrics, missing=missing,
                        excluded=excluded)


def _atomic_write(path: Path, write) -> None:
    with atomic_path(path) as tmp:
        write(tmp)


def save_feature_table(ft: FeatureTable, directory) -> dict[str, Path]:
    """Write ``features.csv``, ``features.parquet`` and ``features.json`` (group mapping,
    settings, metrics, missing cells) into ``directory``; each file atomically.

    Returns ``{"csv": path, "parquet": path, "json": path}``.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    paths = {k: d / name for k, name in zip(("csv", "parquet", "json"), _FILES)}
    meta = {
        "index": "cell_id",
        "groups": ft.groups,
        "settings": ft.settings,
        "metrics": ft.metrics,
        "missing": {g: [_jsonable(c) for c in ids] for g, ids in ft.missing.items()},
        "column_naming": "<group>.<feature>",
        "excluded": dict(ft.excluded),
        "test_split_rule": ("a feature whose name carries the token 'test' (between '.', '_' or the ends) "
                            "or that its stage declares computed on the test split is left out; test-split "
                            f"values are targets only: {', '.join(TEST_TARGETS)}"),
    }
    _atomic_write(paths["csv"], lambda p: ft.frame.to_csv(p, index=True))
    _atomic_write(paths["parquet"], lambda p: ft.frame.to_parquet(p, index=True))
    _atomic_write(paths["json"], lambda p: p.write_text(json.dumps(meta, indent=2)))
    return paths


def _jsonable(v):
    return v.item() if isinstance(v, np.generic) else v


def load_feature_table(directory, *, prefer: str = "parquet") -> FeatureTable:
    """Read a table written by :func:`save_feature_table` (Parquet by default, else CSV)."""
    d = Path(directory)
    meta_path = d / "features.json"
    if not meta_path.exists():
        raise AnalysisError(f"{meta_path} is missing: not a feature table directory")
    meta = json.loads(meta_path.read_text())
    pq, csv = d / "features.parquet", d / "features.csv"
    if prefer == "parquet" and pq.exists():
        frame = pd.read_parquet(pq)
    elif csv.exists():
        frame = pd.read_csv(csv, index_col="cell_id")
    elif pq.exists():
        frame = pd.read_parquet(pq)
    else:
        raise AnalysisError(f"neither {pq} nor {csv} exists")
    cols = set(frame.columns)
    expected = set(meta["settings"]) | set(meta["metrics"]) | {c for cs in meta["groups"].values() for c in cs}
    if cols != expected:
        raise AnalysisError(
            f"{d}: table columns do not match features.json (extra {sorted(cols - expected)}, "
            f"missing {sorted(expected - cols)})"
        )
    frame.index.name = "cell_id"
    # a table stored before the test-split rule may hold test-derived features: leave them out
    groups, excluded = {}, dict(meta.get("excluded", {}))
    for g, cs in meta["groups"].items():
        keep = [c for c in cs if not is_test_derived(c)]
        excluded.update({c: "name marks the test split (left out on loading)" for c in cs if c not in keep})
        if keep:
            groups[g] = keep
    frame = frame.drop(columns=[c for c in excluded if c in frame.columns])
    return FeatureTable(
        frame=frame,
        groups=groups,
        settings=list(meta["settings"]),
        metrics=list(meta["metrics"]),
        missing={g: list(ids) for g, ids in meta.get("missing", {}).items() if g in groups},
        excluded=excluded,
    )
