"""Fair comparisons over an experiment's design: grid axes stratified, extra cells on their own.

A run is a grid (the product of the ``[grid]`` axes) plus extra cells (``[[cells]]``, e.g. bad
minima pretrained on random labels). :class:`Design` says which column is a grid axis and
which rows are extra cells. Then:

- :func:`grid_comparison` compares by one grid axis over the grid cells only, stratified on the
  other grid axes (labels permuted only within cells equal on them), so an effect of one axis
  is never credited to another, and the extra cells never enter.
- :func:`extra_comparison` compares each kind of extra cell with the grid cells, stratified on
  the grid axes whose value the extra cells share with the grid (the others are named in the
  notes: they cannot be matched).
- :func:`comparison_table` runs both over a list of metrics and adjusts the p-values over the
  whole family (:func:`topoland.analysis.multiple.adjust_p`); ``finding`` is ``p_adjusted < 0.05``.
- :func:`flatness_ordering` reads, from that table, the small- vs large-batch ordering of the
  curvature measures with each sign and adjusted p.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from topoland.analysis.features import AnalysisError, as_frame, resolve_column
from topoland.analysis.group_tests import CompareResult, compare
from topoland.analysis.multiple import adjust_p
from topoland.errors import TopolandError

__all__ = [
    "ALPHA",
    "FLATNESS_MEASURES",
    "Design",
    "comparison_table",
    "extra_comparison",
    "extra_kinds",
    "flatness_ordering",
    "grid_comparison",
    "value_sizes",
]

#: Level below which an adjusted p-value is called a finding.
ALPHA = 0.05

#: Curvature measures and the reading of a larger value ("sharper" or "flatter").
FLATNESS_MEASURES: dict[str, str] = {
    "curvature.sharpness": "sharper",
    "curvature.top_eigenvalue": "sharper",
    "curvature.trace": "sharper",
    "curvature.log_volume": "flatter",
}


@dataclass(frozen=True)
class Design:
    """The experimental design of a feature table.

    Attributes:
        axes: setting columns the grid varies (``train.batch_size``...), in config order.
        extra: ``cell_id`` of every extra cell (rows outside the grid's product).
    """

    axes: tuple[str, ...]
    extra: tuple = ()

    def grid_rows(self, table) -> pd.DataFrame:
        """The rows of the grid cells."""
        df = as_frame(table)
        return df[~df.index.isin(self.extra)]


def value_sizes(df: pd.DataFrame, column: str) -> str:
    """``"0.05: 8, 0.1: 2"``: the cells per value of ``column`` ("not a column" if absent)."""
    if column not in df.columns:
        return "not a column of the table"
    counts = df[column].value_counts(dropna=False, sort=False)
    return ", ".join(f"{k}: {v}" for k, v in counts.items())


def _check_axis(df: pd.DataFrame, design: Design, by: str) -> None:
    if by not in design.axes:
        raise AnalysisError(
            f"setting {by!r} is not varied by the grid (grid axes: {', '.join(design.axes) or 'none'}; "
            f"cells per value of {by!r}: {value_sizes(df, by)}); compare by a grid axis "
            "(extra cells are compared with the grid by extra_comparison)")
    absent = [a for a in design.axes if a not in df.columns]
    if absent:
        raise AnalysisError(f"grid axes {absent} are not columns of the feature table")


def grid_comparison(table, design: Design, by: str, metric: str, **kw) -> CompareResult:
    """Compare ``metric`` by the grid axis ``by`` over the grid cells, stratified on the other
    grid axes that vary there. ``kw`` goes to :func:`~topoland.analysis.group_tests.compare`.

    Raises :class:`AnalysisError` when ``by`` is not a grid axis, and
    :class:`~topoland.errors.NotEnoughSamplesError` naming ``by`` and the group sizes when a
    group is below the minimum size.
    """
    df = as_frame(table)
    _check_axis(df, design, by)
    grid = design.grid_rows(df)
    # seeds are replicates, exchangeable within a stratum: not strata
    strata = [a for a in design.axes if a not in (by, "run.seed") and grid[a].nunique(dropna=True) > 1]
    return compare(grid, by, resolve_column(df, metric), strata=strata, **kw)


def extra_kinds(table, design: Design, settings) -> dict[str, list]:
    """Extra cells grouped by how they leave the grid: ``{"train.pretrain_random_epochs=20":
    [cell_id, ...]}``; ``settings`` are the setting columns (e.g. ``FeatureTable.settings``)."""
    df = as_frame(table)
    grid = design.grid_rows(df)
    skip = set(design.axes) | {"run.seed"}
    kinds: dict[str, list] = {}
    for cid in design.extra:
        if cid not in df.index:
            continue
        keys = [f"{c}={df.at[cid, c]}" for c in settings
                if c not in skip and c in df and not grid[c].astype(str).eq(str(df.at[cid, c])).any()]
        if not keys:  # off the grid only through an axis value the grid does not list
            keys = [f"{a}={df.at[cid, a]}" for a in design.axes
                    if not grid[a].astype(str).eq(str(df.at[cid, a])).any()] or ["duplicate of a grid cell"]
        kinds.setdefault(", ".join(keys), []).append(cid)
    return kinds


def extra_comparison(table, design: Design, kind: str, cells, metric: str, **kw) -> CompareResult:
    """Compare the extra cells ``cells`` (one kind, see :func:`extra_kinds`) with the grid
    cells, stratified on every grid axis whose values the extra cells share with the grid;
    axes they leave (a batch size the grid lacks) are named in ``notes``. The groups are
    ``"extra"`` (a) and ``"grid"`` (b), ``by`` is ``kind``."""
    df = as_frame(table)
    metric = resolve_column(df, metric)
    grid = design.grid_rows(df)
    ex = df.loc[list(cells)]
    matched, unmatched = [], []
    for a in design.axes:
        if a == "run.seed" or grid[a].nunique(dropna=True) < 2:
            continue
        if ex[a].astype(str).isin(grid[a].astype(str)).all():
            matched.append(a)
        else:
            unmatched.append(f"{a} (extra: {', '.join(map(str, pd.unique(ex[a])))}; grid: "
                             f"{', '.join(map(str, pd.unique(grid[a])))})")
    both = pd.concat([ex.assign(_cells="extra"), grid.assign(_cells="grid")])
    try:
        res = compare(both, "_cells", metric, order=["extra", "grid"], strata=matched, **kw)
    except TopolandError as e:
        raise type(e)(str(e).replace("'_cells'", repr(kind))) from None
    res.by = kind
    if unmatched:
        res.notes.append("not matched (the extra cells leave the grid there): " + "; ".join(unmatched))
    return res


def _frame(res: CompareResult, family: str) -> pd.DataFrame:
    df = res.to_frame()
    df.insert(0, "family", family)
    df["notes"] = "; ".join(res.notes)
    return df


def comparison_table(table, design: Design, metrics, *, settings=None, p_adjust: str = "holm",
                     alpha: float = ALPHA, **kw) -> tuple[pd.DataFrame, list[str]]:
    """Every fair comparison of ``metrics``: by each grid axis (family "grid"), and each kind of
    extra cell vs the grid (family "extra"); p-values adjusted over all rows together.

    Args:
        settings: setting columns (default: ``table.settings`` of a FeatureTable).
        p_adjust: "holm" (default) or "bh". ``kw`` goes to :func:`compare`.

    Returns ``(table, notes)``: one row per test (see :meth:`CompareResult.to_frame`) plus
    ``family``, ``notes``, ``p_adjusted``, ``p_adjust``, ``finding`` (``p_adjusted < alpha``);
    ``notes`` lists the comparisons that could not be made, and why.
    """
    df = as_frame(table)
    settings = list(settings if settings is not None else getattr(table, "settings", []))
    metrics = [m for m in dict.fromkeys(metrics)]
    rows, notes = [], []
    grid = design.grid_rows(df)
    for by in design.axes:
        if by == "run.seed" or by not in grid or grid[by].nunique(dropna=True) < 2:
            continue
        for m in metrics:
            try:
                rows.append(_frame(grid_comparison(df, design, by, m, **kw), "grid"))
            except TopolandError as e:
                notes.append(f"compare {m} by {by}: {e}")
    for kind, cells in extra_kinds(df, design, settings).items():
        for m in metrics:
            try:
                rows.append(_frame(extra_comparison(df, design, kind, cells, m, **kw), "extra"))
            except TopolandError as e:
                notes.append(f"compare {m}, extra cells ({kind}) vs grid: {e}")
    if not rows:
        return pd.DataFrame(), notes
    out = pd.concat(rows, ignore_index=True)
    out[["group_a", "group_b"]] = out[["group_a", "group_b"]].astype(str)  # setting values and labels mix types
    out["p_adjusted"] = adjust_p(out["p_value"].to_numpy(dtype=float), p_adjust)
    out["p_adjust"] = p_adjust
    out["finding"] = out["p_adjusted"] < alpha
    n = int(out["p_value"].notna().sum())
    floor = out["p_min"].dropna()
    if len(floor) and p_adjust == "holm" and float(floor.min()) * n >= alpha:
        notes.append(f"comparisons: the smallest attainable p ({float(floor.min()):.3g}) times the family size "
                     f"({n}) is >= {alpha}: no comparison can be a finding under Holm with this design")
    return out, notes


_FLAT_COLUMNS = ["measure", "small", "large", "mean_diff", "sign", "reading", "p_value", "p_min",
                 "p_adjusted", "finding"]


def flatness_ordering(comparisons: pd.DataFrame, by: str = "train.batch_size") -> pd.DataFrame:
    """Small- vs large-``by`` ordering of each curvature measure, from :func:`comparison_table`.

    Returns one row per measure present: ``measure, small, large, mean_diff`` (small minus
    large), ``sign`` ("+", "-" or "0"), ``reading`` ("small sharper"/"small flatter"...),
    ``p_value``, ``p_min``, ``p_adjusted``, ``finding``. With more than two values of ``by``, the pair smallest vs
    largest is read.
    """
    need = {"family", "by", "metric", "group_a", "group_b", "mean_diff", "p_adjusted", "finding"}
    if comparisons.empty:
        return pd.DataFrame(columns=_FLAT_COLUMNS)
    if not need <= set(comparisons.columns):
        raise AnalysisError(f"flatness_ordering needs columns {sorted(need)}, got {list(comparisons.columns)}")
    sel = comparisons[(comparisons["family"] == "grid") & (comparisons["by"] == by)
                      & comparisons["metric"].isin(list(FLATNESS_MEASURES)) & (comparisons["group_a"] != "all")]
    rows = []
    for measure in FLATNESS_MEASURES:
        r = sel[sel["metric"] == measure]
        if r.empty:
            continue
        vals = pd.to_numeric(pd.concat([r["group_a"], r["group_b"]]), errors="coerce")
        small, large = vals.min(), vals.max()
        r = r[(pd.to_numeric(r["group_a"], errors="coerce") == small)
              & (pd.to_numeric(r["group_b"], errors="coerce") == large)].iloc[0]
        d = float(r["mean_diff"])
        sign = "+" if d > 0 else "-" if d < 0 else "0"
        larger = FLATNESS_MEASURES[measure]
        other = "flatter" if larger == "sharper" else "sharper"
        reading = "no difference" if sign == "0" else f"small {by.split('.')[-1]} {larger if d > 0 else other}"
        rows.append({"measure": measure, "small": small, "large": large, "mean_diff": d, "sign": sign,
                     "reading": reading, "p_value": float(r.get("p_value", np.nan)),
                     "p_min": float(r.get("p_min", np.nan)), "p_adjusted": float(r["p_adjusted"]),
                     "finding": bool(r["finding"])})
    return pd.DataFrame(rows, columns=_FLAT_COLUMNS)
