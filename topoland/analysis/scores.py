"""Scores of generalization measures over a population of trained models (one row per model).

- :func:`kendall_tau`: Kendall's tau-a of a measure with the generalization gap (Jiang et al.
  2020, eq. 4: the mean over ordered pairs of sign products).
- :func:`granulated_kendall`: Jiang et al.'s granulated coefficient Psi: tau within the groups of
  models that differ in one hyperparameter axis only (seeds pooled), averaged over groups, then
  over axes.
- :func:`pgdl_score`: the conditional mutual information score of the NeurIPS 2020 PGDL
  competition (a fraction; the competition reports 100 x).
- :func:`robust_sign_error`: Dziugaite et al. 2020's worst-environment sign error.
- :func:`score_measures`: all of them for several measures, with bootstrap intervals and a
  permutation p-value of tau adjusted over the measures.
- :func:`oof_prediction`: out-of-fold predictions of the gap from features, a supervised
  baseline measure (Unterthiner et al. 2020).

Differences ``dm``, ``dg`` are ``m_i - m_j``, ``g_i - g_j``; ``sign(0) = 0``.
"""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from topoland.analysis.features import AnalysisError, as_frame, check_feature_columns
from topoland.analysis.multiple import P_ADJUST_METHODS, adjust_p

__all__ = ["kendall_tau", "granulated_kendall", "pgdl_score", "robust_sign_error", "score_measures",
           "oof_prediction"]

ASSUMPTIONS_SCORES = (
    "Models are the units: bootstrap resamples draw rows with replacement and recompute every "
    "score (percentile intervals), leaving out the pairs of two copies of one model (a model is "
    "not compared with itself); resamples where a score is undefined are discarded and counted "
    "(<score>_boot_discarded); PGDL slices left empty by a resample are skipped, and its plug-in "
    "mutual information is biased upward in resamples (for a measure unrelated to the gap the "
    "interval can lie above the estimate). The tau p-value "
    "permutes the measure across models (two-sided on |tau|), adjusted over the measures. Rows "
    "where a measure is NaN are dropped for that measure only (n_dropped)."
)
_ON_EMPTY = ("raise", "skip")


# ------------------------------------------------------------------------------- input checks
def _brief(columns, k: int = 10) -> str:
    cols = [str(c) for c in columns]
    return ", ".join(cols[:k]) + (f", ... ({len(cols) - k} more)" if len(cols) > k else "")


def _column(df: pd.DataFrame, name, role: str) -> str:
    """``name``, or the unique ``<group>.<name>`` column; else one error naming the role."""
    if name in df.columns:
        return name
    hits = [c for c in df.columns if isinstance(c, str) and c.endswith(f".{name}")]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise AnalysisError(f"{role} column {name!r} is ambiguous: it matches {hits}; give the full name")
    if role == "gap":
        raise AnalysisError(f"the table has no gap column {name!r} (columns: {_brief(df.columns)})")
    raise AnalysisError(f"{role} column {name!r} is not in the table (columns: {_brief(df.columns)})")


def _numeric(df: pd.DataFrame, col: str, role: str, *, allow_nan: bool = False) -> np.ndarray:
    s = df[col]
    if not (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)):
        raise AnalysisError(f"{role} column {col!r} is not numeric (dtype {s.dtype})")
    x = s.to_numpy(dtype=float)
    if not allow_nan and np.isnan(x).any():
        raise AnalysisError(f"{role} column {col!r} has {int(np.isnan(x).sum())} missing values "
                            f"(of {x.size} models); drop those rows first")
    return x


def _plain(v):
    return v.item() if hasattr(v, "item") else v


def _axes(df: pd.DataFrame, hyperparameters, where: str):
    """Hyperparameter columns, their integer codes ``(n, H)`` and sorted values."""
    hps = [hyperparameters] if isinstance(hyperparameters, str) else list(hyperparameters)
    if not hps:
        raise AnalysisError(f"{where} needs hyperparameters=[columns]: the axes of the grid of models")
    twice = sorted({str(h) for h in hps if hps.count(h) > 1})
    if twice:
        raise AnalysisError(f"{where}: hyperparameter {twice[0]!r} is given twice")
    cols = [_column(df, h, "hyperparameter") for h in hps]
    codes, values = [], []
    for c in cols:
        s = df[c]
        if s.isna().any():
            raise AnalysisError(f"hyperparameter column {c!r} has {int(s.isna().sum())} missing values")
        try:
            code, uniq = pd.factorize(s, sort=True)
        except TypeError:  # values of mixed types
            code, uniq = pd.factorize(s)
        if len(uniq) < 2:
            raise AnalysisError(f"hyperparameter column {c!r} has a single value ({_plain(uniq[0])!r}): "
                                "it is not an axis of the grid")
        codes.append(code)
        values.append([_plain(v) for v in uniq])
    return cols, np.stack(codes, axis=1).astype(np.intp), values


def _prepare(table, measure, gap, hyperparameters, where):
    df = as_frame(table)
    g_col = _column(df, gap, "gap")
    m_col = _column(df, measure, "measure")
    if len(df) < 2:
        raise AnalysisError(f"{where} needs at least 2 models (rows), got {len(df)}")
    axes = _axes(df, hyperparameters, where) if hyperparameters is not None else ([], None, [])
    return _numeric(df, m_col, "measure"), _numeric(df, g_col, "gap"), axes


# ------------------------------------------------------------------------- pair structure
class _Pairs:
    """Everything about one population that does not depend on the measure: gap signs, the
    groups of Psi, the environments of the sign error and the PGDL slices."""

    def __init__(self, g, codes, n_values, min_gap_difference: float = 0.0, origin=None):
        n, n_axes = codes.shape
        self.n, self.codes, self.n_values = n, codes, tuple(n_values)
        d = g[:, None] - g[None, :]
        self.sg = np.sign(d)
        self.iu = np.triu_indices(n, 1)
        i, j = self.iu
        # a bootstrap copy of a model is that model: no pair of two copies counts in tau and Psi
        self.distinct = np.ones(i.size, bool) if origin is None else origin[i] != origin[j]
        self.psi_axes = []  # per axis: positions in iu of distinct same-group pairs, their group, pairs per group
        env_pos, env_id, env_axis, env_rep, offset = [], [], [], [], 0
        for a in range(n_axes):
            other = np.delete(codes, a, axis=1)
            gid = (np.unique(other, axis=0, return_inverse=True)[1].ravel() if other.shape[1]
                   else np.zeros(n, dtype=np.intp))
            size = np.bincount(gid)
            pos = np.flatnonzero(gid[i] == gid[j])
            distinct = pos[self.distinct[pos]]
            self.psi_axes.append((distinct, gid[i[distinct]], np.bincount(gid[i[distinct]], minlength=size.size)))
            env = pos[(codes[i[pos], a] != codes[j[pos], a]) & (np.abs(d[i[pos], j[pos]]) > min_gap_difference)]
            env_pos.append(env)
            env_id.append(gid[i[env]] + offset)
            env_axis += [a] * size.size
            env_rep.append(np.unique(gid, return_index=True)[1])
            offset += size.size
        self.env_pos = np.concatenate(env_pos) if env_pos else np.zeros(0, np.intp)
        self.env_id = np.concatenate(env_id) if env_id else np.zeros(0, np.intp)
        self.env_axis = np.asarray(env_axis, dtype=np.intp)
        self.env_rep = np.concatenate(env_rep) if env_rep else np.zeros(0, np.intp)
        self.n_env = offset
        gt = (d > 0).ravel().astype(np.intp)
        # PGDL keeps (i, i) but not the pairs of two different copies of one model (a spare bin)
        copies = (np.zeros((n, n), bool) if origin is None
                  else (origin[:, None] == origin[None, :]) & ~np.eye(n, dtype=bool)).ravel()
        self.slices = []  # per (h1, h2): axes, slice shape, 4 * slice id + 2 * [g_i > g_j], non-empty
        combos = list(itertools.combinations(range(n_axes), 2)) or ([(0,)] if n_axes else [])
        for ax in combos:
            shape = tuple(self.n_values[a] for a in ax for _ in (0, 1))
            idx = np.broadcast_arrays(*(c for a in ax for c in (codes[:, a, None], codes[None, :, a])))
            sid = np.ravel_multi_index(idx, shape).ravel()
            size = int(np.prod(shape))
            sid[copies] = size
            self.slices.append((ax, shape, 4 * sid + 2 * gt, np.bincount(sid, minlength=size + 1)[:size] > 0))

    def empty_slice(self):
        """``(axes, codes of the 4-tuple)`` of the first slice with no pair, or None."""
        for ax, shape, _, nonempty in self.slices:
            if not nonempty.all():
                return ax, np.unravel_index(int(np.flatnonzero(~nonempty)[0]), shape)
        return None


def _signs(m):
    return np.sign(m[:, None] - m[None, :])


def _tau_a(sm, sg) -> float:
    n = sm.shape[0]
    return float((sm * sg).sum() / (n * (n - 1)))


def _axis_taus(p: _Pairs, prod_u) -> np.ndarray:
    """Per axis: the mean over groups of >= 2 models of tau-a within the group (NaN: no group)."""
    out = []
    for pos, grp, n_pairs in p.psi_axes:
        ok = n_pairs > 0
        s = np.bincount(grp, prod_u[pos], minlength=n_pairs.size)
        out.append(np.mean(s[ok] / n_pairs[ok]) if ok.any() else np.nan)
    return np.asarray(out)


def _mi_entropy(c):
    """Mutual information of the two indicators and entropy of the gap one, in bits, of the
    slices' 2 x 2 tables ``c (S, 2, 2)`` (axis 1: gap, axis 2: measure; no empty slice)."""
    p = c / c.sum(axis=(1, 2), keepdims=True)
    pa, pb = p.sum(axis=2), p.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mi = np.where(p > 0, p * np.log2(p / (pa[:, :, None] * pb[:, None, :])), 0.0).sum(axis=(1, 2))
        h = np.where(pa > 0, -pa * np.log2(pa), 0.0).sum(axis=1)
    return mi, h


def _pgdl_pairs(p: _Pairs, m) -> np.ndarray:
    """Score of each (h1, h2): mean MI / mean gap entropy over the non-empty slices (NaN: 0/0)."""
    gtm = (m[:, None] > m[None, :]).ravel().astype(np.intp)
    out = []
    for _, shape, base, nonempty in p.slices:
        c = np.bincount(base + gtm, minlength=4 * nonempty.size + 4)[:4 * nonempty.size].reshape(-1, 2, 2)[nonempty]
        mi, h = _mi_entropy(c)
        out.append(mi.mean() / h.mean() if h.mean() > 0 else np.nan)
    return np.asarray(out)


def _env_errors(p: _Pairs, prod_u) -> np.ndarray:
    """Mean sign error ``(1 - sign(dm) sign(dg)) / 2`` per environment (NaN: no pair)."""
    err = (1 - prod_u[p.env_pos]) / 2
    count = np.bincount(p.env_id, minlength=p.n_env)
    total = np.bincount(p.env_id, err, minlength=p.n_env)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _evaluate(p: _Pairs, m) -> np.ndarray:
    """``[kendall_tau, psi, tau_<axis>..., pgdl, robust_sign_error, mean_sign_error]``; NaN = undefined."""
    prod = _signs(m) * p.sg
    i, j = p.iu
    prod_u = prod[i, j]
    taus = _axis_taus(p, prod_u)
    env = _env_errors(p, prod_u)
    env = env[~np.isnan(env)]
    tau = prod_u[p.distinct].mean() if p.distinct.any() else np.nan
    rse = (env.max(), env.mean()) if env.size else (np.nan, np.nan)
    return np.array([tau, np.mean(taus), *taus, np.min(_pgdl_pairs(p, m)), *rse])


# ---------------------------------------------------------------------------- single scores
def kendall_tau(table, measure, gap="gap") -> float:
    """Kendall's tau-a of ``measure`` with ``gap`` over the models (Jiang et al. 2020, eq. 4).

    The mean over the ``n (n - 1)`` ordered pairs ``i != j`` of ``sign(dm) sign(dg)``: in
    ``[-1, 1]``; ties count 0 (equals scipy's tau-b when nothing ties).
    """
    m, g, _ = _prepare(table, measure, gap, None, "kendall_tau")
    return _tau_a(_signs(m), _signs(g))


def _pairs_of(table, measure, gap, hyperparameters, where, min_gap_difference=0.0):
    m, g, (cols, codes, values) = _prepare(table, measure, gap, hyperparameters, where)
    return m, cols, values, _Pairs(g, codes, [len(v) for v in values], min_gap_difference)


def granulated_kendall(table, measure, gap="gap", hyperparameters=()) -> dict:
    """Jiang et al.'s granulated Kendall coefficient Psi.

    For each axis ``a`` of ``hyperparameters``, the models that agree on every other axis form a
    group (a column left out, such as the seed, is pooled: models differing only in it share a
    group); ``tau_a`` is the mean over groups of >= 2 models of the tau-a within the group.
    With one axis, its group is the whole table.

    Returns:
        ``{"psi": mean of the per-axis values, "tau_<axis>": float, ...}``, each in ``[-1, 1]``.

    Raises :class:`AnalysisError` when no group of an axis holds 2 models.
    """
    m, cols, _, p = _pairs_of(table, measure, gap, hyperparameters, "granulated_kendall")
    i, j = p.iu
    taus = _axis_taus(p, (_signs(m) * p.sg)[i, j])
    for c, t in zip(cols, taus):
        if np.isnan(t):
            raise AnalysisError(f"granulated_kendall: no two models agree on every axis but {c!r}; "
                                f"tau along {c!r} is undefined")
    return {"psi": float(np.mean(taus)), **{f"tau_{c}": float(t) for c, t in zip(cols, taus)}}


def _slice_name(cols, values, ax, code) -> str:
    names = ", ".join(f"{cols[a]}_{s}" for a in ax for s in "ij")
    vals = ", ".join(repr(values[a][code[2 * k + s]]) for k, a in enumerate(ax) for s in (0, 1))
    return f"({names}) = ({vals})"


def pgdl_score(table, measure, gap="gap", hyperparameters=(), *, on_empty="raise") -> float:
    """The PGDL competition's score: conditional mutual information of the orderings of the gap
    and the measure, normalised, worst case over pairs of hyperparameters.

    Every ordered pair ``(i, j)``, ``i = j`` included, falls in a 2 x 2 table of
    ``[g_i > g_j] x [m_i > m_j]`` (strict: ties are "not greater"), sliced by the 4-tuple
    ``(h1_i, h1_j, h2_i, h2_j)``. Per slice: the mutual information of the indicators and the
    entropy of the gap indicator, in bits (exact, ``0 log 0 = 0``). The score of ``(h1, h2)`` is
    mean MI / mean entropy, the means taken with equal weight per slice (as the competition
    does); the result is the minimum over the pairs (the score is symmetric in ``h1, h2``).
    With a single hyperparameter the table is sliced by ``(h_i, h_j)`` alone.

    Slices, like the competition's, are all the combinations of the values the columns take:
    ``V1^2 V2^2`` of them. One is empty when the grid of ``(h1, h2)`` lacks a cell (the
    competition's grids are complete; an empty slice would make its average NaN). An empty
    slice raises :class:`AnalysisError` naming its 4-tuple; ``on_empty="skip"`` leaves it out
    of both means.

    Returns a fraction in ``[0, 1]`` (1: the measure orders every slice's pairs as the gap does;
    0: e.g. a constant measure). Mutual information ignores the direction: ``-gap`` scores high
    too (below 1 only through the ``i = j`` pairs). Raises when the gap indicator is constant in
    every slice (e.g. one model per slice).
    """
    if on_empty not in _ON_EMPTY:
        raise AnalysisError(f"on_empty={on_empty!r} is unknown; choose from {_ON_EMPTY}")
    m, cols, values, p = _pairs_of(table, measure, gap, hyperparameters, "pgdl_score")
    empty = p.empty_slice()
    if empty and on_empty == "raise":
        raise AnalysisError(f"pgdl_score: slice {_slice_name(cols, values, *empty)} has no pairs of models "
                            "(a cell of the grid is missing); pass on_empty='skip' to average over the "
                            "non-empty slices")
    per = _pgdl_pairs(p, m)
    bad = [" x ".join(cols[a] for a in s[0]) for s, v in zip(p.slices, per) if np.isnan(v)]
    if bad:
        raise AnalysisError(f"pgdl_score: the gap ordering is constant within every slice of {bad[0]} "
                            "(e.g. one model per slice): the score is undefined")
    return float(per.min())


def psi_permutation_test(table, measure, gap="gap", hyperparameters=(), *, n_permutations: int = 999,
                         seed: int = 0) -> dict:
    """Ψ of ``measure`` (:func:`granulated_kendall`) and its permutation p-value: the measure's
    values are shuffled over the models (null: the measure is unrelated to the gap), two-sided,
    ``p = (1 + #{|Ψ*| >= |Ψ|}) / (1 + n_permutations)``.

    Returns ``{"psi": float, "p_value": float, "n_permutations": int}``.
    """
    if n_permutations < 1:
        raise AnalysisError(f"n_permutations must be >= 1, got {n_permutations}")
    m, cols, _, p = _pairs_of(table, measure, gap, hyperparameters, "psi_permutation_test")
    i, j = p.iu

    def psi(v):
        return float(np.mean(_axis_taus(p, (_signs(v) * p.sg)[i, j])))

    obs = psi(m)
    if np.isnan(obs):
        raise AnalysisError(f"psi_permutation_test: Ψ of {measure!r} is undefined (an axis has no group of "
                            "two models)")
    rng = np.random.default_rng(seed)
    hits, done = 0, 0
    while done < n_permutations:   # blocks of permutations, scored at once (_psi_many)
        b = min(_PERMUTATION_BLOCK, n_permutations - done)
        perms = np.stack([rng.permutation(m) for _ in range(b)])
        hits += int((np.abs(_psi_many(p, perms)) >= abs(obs) - 1e-12).sum())
        done += b
    return {"psi": obs, "p_value": (1 + hits) / (1 + n_permutations), "n_permutations": int(n_permutations)}


_PERMUTATION_BLOCK = 256


def _psi_many(p: "_Pairs", ms: np.ndarray) -> np.ndarray:
    """Ψ of each row of ``ms (B, n)`` (measure values over the models): :func:`_axis_taus` for B
    measures at once, the per-group sums as one product with the pair-to-group indicator."""
    i, j = p.iu
    prod_u = np.sign(ms[:, i] - ms[:, j]) * p.sg[i, j]
    taus = []
    for pos, grp, n_pairs in p.psi_axes:
        ok = n_pairs > 0
        if not ok.any():
            taus.append(np.full(len(ms), np.nan))
            continue
        onehot = np.zeros((len(pos), n_pairs.size))
        onehot[np.arange(len(pos)), grp] = 1.0
        sums = prod_u[:, pos] @ onehot            # exact: sums of +-1 and 0
        taus.append((sums[:, ok] / n_pairs[ok]).mean(axis=1))
    return np.mean(np.stack(taus, axis=1), axis=1)


def _environment_name(cols, values, codes, axis, row) -> str:
    rest = [f"{c}={values[k][codes[row, k]]!r}" for k, c in enumerate(cols) if k != axis]
    return f"{cols[axis]} varies" + (f", {', '.join(rest)}" if rest else " (no other axis)")


def robust_sign_error(table, measure, gap="gap", hyperparameters=(), min_gap_difference=0.0) -> dict:
    """Dziugaite et al. 2020's robust sign error of ``measure`` as a predictor of ``gap``.

    An environment is one axis ``a`` with fixed values of all other axes; its pairs are the
    unordered pairs of models in it whose value of ``a`` differs (seeds pooled), except those
    with ``|dg| <= min_gap_difference`` (gap units). A pair's sign error is
    ``(1 - sign(dm) sign(dg)) / 2`` (0: right order, 1: wrong, 1/2: measure tie).

    Returns:
        ``{"robust_sign_error": max over environments of the mean sign error,
        "mean_sign_error": mean over environments, "n_environments": environments with pairs,
        "worst_environment": e.g. "lr varies, wd=0.001"}``.
    """
    m, cols, values, p = _pairs_of(table, measure, gap, hyperparameters, "robust_sign_error",
                                   min_gap_difference)
    i, j = p.iu
    env = _env_errors(p, (_signs(m) * p.sg)[i, j])
    ok = ~np.isnan(env)
    if not ok.any():
        raise AnalysisError("robust_sign_error: no pair of models differs in one axis only with "
                            f"|gap difference| > {min_gap_difference}")
    worst = int(np.nanargmax(env))
    return {"robust_sign_error": float(env[worst]), "mean_sign_error": float(env[ok].mean()),
            "n_environments": int(ok.sum()),
            "worst_environment": _environment_name(cols, values, p.codes, p.env_axis[worst], p.env_rep[worst])}


# ---------------------------------------------------------------------------- many measures
def _tau_p_value(m, sg, n_permutations: int, rng, chunk_elems: int = 2_000_000) -> float:
    """Permutation p of |tau-a|: ``(1 + #{|tau*| >= |tau|}) / (1 + n_permutations)``."""
    if n_permutations < 1:
        return np.nan
    n = m.size
    obs = abs(np.rint((_signs(m) * sg).sum()))
    hits, step = 0, max(1, chunk_elems // (n * n))
    for s in range(0, n_permutations, step):
        mp = rng.permuted(np.tile(m, (min(step, n_permutations - s), 1)), axis=1)
        stat = np.einsum("kij,ij->k", np.sign(mp[:, :, None] - mp[:, None, :]), sg)
        hits += int((np.abs(np.rint(stat)) >= obs).sum())
    return (1 + hits) / (1 + n_permutations)


def _bootstrap(X, g, codes, n_values, idx, min_gap_difference) -> np.ndarray:
    """Scores ``(B, k, n_scores)`` of the measures ``X (k, n)`` on the resamples ``idx (B, n)``."""
    out = []
    for rows in idx:
        p = _Pairs(g[rows], codes[rows], n_values, min_gap_difference, origin=rows)
        out.append([_evaluate(p, x[rows]) for x in X])
    return np.asarray(out).reshape(len(idx), len(X), -1)


def score_measures(table, measures, gap="gap", hyperparameters=(), *, n_boot: int = 200, level: float = 0.95,
                   seed: int = 0, n_permutations: int = 999, p_adjust: str = "holm",
                   min_gap_difference: float = 0.0, on_empty: str = "raise") -> pd.DataFrame:
    """Every score of every measure, with percentile bootstrap intervals over models.

    Args:
        measures: a column name or a list of them.
        hyperparameters: the grid axes (a seed column is not one).
        n_boot: bootstrap resamples of the models (rows drawn with replacement; 0: no CI).
        n_permutations: relabellings of the measure across models for ``tau_p_value``.
        p_adjust: "holm" or "bh": ``tau_p_adjusted`` over the family of measures.
        min_gap_difference, on_empty: as in :func:`robust_sign_error`, :func:`pgdl_score`.

    Returns:
        One row per measure, sorted by ``psi`` descending: ``measure``, ``n_models``,
        ``n_dropped`` (its NaN rows, left out), then for each score ``kendall_tau``, ``psi``,
        ``tau_<axis>``, ``pgdl`` (a fraction), ``robust_sign_error``, ``mean_sign_error``: the
        value, ``<score>_ci_low/_ci_high`` and ``<score>_boot_discarded`` (resamples where it is
        undefined); ``tau_p_value``, ``tau_p_adjusted`` and ``note`` (undefined scores). A
        measure's resamples depend only on its rows and ``seed``; measures with the same rows
        share them. In a resample, the pairs of two copies of one model are left out (a model is
        not compared with itself; PGDL keeps the ``i = j`` pairs, one per row) and PGDL skips the
        slices the resample leaves empty. ``.attrs["assumptions"]`` states the assumptions.
    """
    df = as_frame(table)
    names = [measures] if isinstance(measures, str) else list(measures)
    if not names:
        raise AnalysisError("score_measures got no measure columns")
    g_col = _column(df, gap, "gap")
    cols = [_column(df, m, "measure") for m in names]
    if len(df) < 2:
        raise AnalysisError(f"score_measures needs at least 2 models (rows), got {len(df)}")
    axes, codes, values = _axes(df, hyperparameters, "score_measures")
    g = _numeric(df, g_col, "gap")
    if p_adjust not in P_ADJUST_METHODS:
        raise AnalysisError(f"p-value adjustment {p_adjust!r} is unknown; choose from {P_ADJUST_METHODS}")
    if on_empty not in _ON_EMPTY:
        raise AnalysisError(f"on_empty={on_empty!r} is unknown; choose from {_ON_EMPTY}")
    if not 0 < level < 1 or n_boot < 0 or n_permutations < 0:
        raise AnalysisError(f"need 0 < level < 1, n_boot >= 0, n_permutations >= 0; got {level}, {n_boot}, "
                            f"{n_permutations}")
    n_values = [len(v) for v in values]
    score_names = ["kendall_tau", "psi", *(f"tau_{a}" for a in axes), "pgdl", "robust_sign_error",
                   "mean_sign_error"]
    X = np.stack([_numeric(df, c, "measure", allow_nan=True) for c in cols])
    ok = ~np.isnan(X)
    alpha = (1 - level) / 2
    rows = [None] * len(cols)
    for key in dict.fromkeys(r.tobytes() for r in ok):  # measures grouped by their complete rows
        members = [k for k in range(len(cols)) if ok[k].tobytes() == key]
        keep = ok[members[0]]
        n = int(keep.sum())
        if n < 2:
            raise AnalysisError(f"measure column {cols[members[0]]!r} has {n} non-missing values; needs 2")
        gk, ck, Xk = g[keep], codes[keep], X[members][:, keep]
        p = _Pairs(gk, ck, n_values, min_gap_difference)
        empty = p.empty_slice()
        if empty and on_empty == "raise":
            raise AnalysisError(f"score_measures: PGDL slice {_slice_name(axes, values, *empty)} of measure "
                                f"{cols[members[0]]!r} has no pairs of models; pass on_empty='skip'")
        idx = np.random.default_rng([seed, 0]).integers(0, n, size=(n_boot, n))
        boot = _bootstrap(Xk, gk, ck, n_values, idx, min_gap_difference)
        rng_perm = np.random.default_rng([seed, 1])
        for b, k in enumerate(members):
            point = _evaluate(p, Xk[b])
            row = {"measure": cols[k], "n_models": n, "n_dropped": int((~keep).sum())}
            for s, name in enumerate(score_names):
                valid = boot[:, b, s][~np.isnan(boot[:, b, s])]
                lo, hi = np.quantile(valid, [alpha, 1 - alpha]) if valid.size >= 2 and not np.isnan(point[s]) \
                    else (np.nan, np.nan)
                row.update({name: point[s], f"{name}_ci_low": lo, f"{name}_ci_high": hi,
                            f"{name}_boot_discarded": n_boot - valid.size})
            row["tau_p_value"] = _tau_p_value(Xk[b], p.sg, n_permutations, rng_perm)
            undefined = [s for s, v in zip(score_names, point) if np.isnan(v)]
            row["note"] = f"undefined: {', '.join(undefined)}" if undefined else ""
            rows[k] = row
    out = pd.DataFrame(rows)
    out["tau_p_adjusted"] = adjust_p(out["tau_p_value"].to_numpy(dtype=float), p_adjust)
    order = ["measure", "n_models", "n_dropped"]
    for s in score_names:
        order += [s, f"{s}_ci_low", f"{s}_ci_high"] + (["tau_p_value", "tau_p_adjusted"] if s == "kendall_tau" else [])
    order += [f"{s}_boot_discarded" for s in score_names] + ["note"]
    out = out[order].sort_values("psi", ascending=False, na_position="last", kind="stable").reset_index(drop=True)
    out.attrs.update(assumptions=ASSUMPTIONS_SCORES, level=level, n_boot=n_boot, p_adjust=p_adjust,
                     hyperparameters=list(axes), gap=g_col)
    return out


# ------------------------------------------------------------------------ supervised baseline
def oof_prediction(table, features, target="gap", *, n_splits: int = 5, seed: int = 0, estimator: str = "ridge",
                   dropna: bool = False) -> pd.Series:
    """Out-of-fold predictions of ``target`` from ``features``: a supervised baseline measure.

    The rows are split by a shuffled, seeded ``KFold(n_splits)``; each fold is predicted by a
    model fitted on the other folds only, so no row's prediction has seen its own target.
    ``estimator``: "ridge" (StandardScaler + RidgeCV over ``alphas = 10^-3 ... 10^3``, 13 values)
    or "forest" (RandomForestRegressor, 200 trees, seeded).

    Returns:
        A Series ``(n,)`` in the units of ``target``, indexed like the table (the rows kept),
        named ``oof_<estimator>``. Rows with a NaN feature or target raise, or are dropped with
        ``dropna=True``. Test-split features are refused.
    """
    df = as_frame(table)
    feats = [features] if isinstance(features, str) else list(features)
    if not feats:
        raise AnalysisError("oof_prediction got no feature columns")
    feats = [_column(df, f, "feature") for f in feats]
    check_feature_columns(feats, where="oof_prediction")
    y_col = _column(df, target, "gap" if target == "gap" else "target")
    if estimator not in ("ridge", "forest"):
        raise AnalysisError(f"estimator {estimator!r} is unknown; choose from ('ridge', 'forest')")
    X = np.column_stack([_numeric(df, f, "feature", allow_nan=True) for f in feats])
    y = _numeric(df, y_col, "target", allow_nan=True)
    bad = np.isnan(X).any(axis=1) | np.isnan(y)
    if bad.any() and not dropna:
        raise AnalysisError(f"oof_prediction: {int(bad.sum())} of {y.size} rows have a NaN feature or target; "
                            "pass dropna=True to drop them")
    X, y = X[~bad], y[~bad]
    if not 2 <= n_splits <= y.size:
        raise AnalysisError(f"oof_prediction: n_splits={n_splits} needs 2 <= n_splits <= rows ({y.size})")
    from sklearn.model_selection import KFold
    pred = np.empty(y.size)
    for train, test in KFold(n_splits, shuffle=True, random_state=seed).split(X):
        pred[test] = regressor(estimator, seed).fit(X[train], y[train]).predict(X[test])
    return pd.Series(pred, index=df.index[~bad], name=f"oof_{estimator}")


def regressor(estimator: str = "ridge", seed: int = 0):
    """The unfitted regressor of the supervised baselines: "ridge" (StandardScaler + RidgeCV over
    ``alphas = 10^-3 ... 10^3``) or "forest" (RandomForestRegressor, 200 trees, ``seed``)."""
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    if estimator == "ridge":
        return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
    if estimator == "forest":
        return RandomForestRegressor(n_estimators=200, random_state=seed)
    raise AnalysisError(f"estimator {estimator!r} is unknown; choose from ('ridge', 'forest')")
