"""Scoring generalization measures over a population of models, with supervised baselines and a
held-out split (:func:`score_population`).

Every measure column is scored by :func:`~topoland.analysis.scores.score_measures` (Kendall's
tau, Jiang et al.'s Ψ, the PGDL conditional-mutual-information score, the robust sign error, each
with a bootstrap interval, and a permutation p adjusted over the measures). Two things are added:

- **Supervised baselines.** For each named feature block (per-tensor weight statistics, the
  topology features, ...) the gap is predicted out of fold by a cross-validated regressor
  (:func:`~topoland.analysis.scores.oof_prediction`); each model's prediction never sees its own
  row. The prediction is scored like any measure, as ``supervised.<block>``.
- **A held-out split.** A measure's orientation (does a larger value mean a larger gap?) and the
  supervised baselines' fits are chosen on the discovery seeds and scored on the held-out seeds:
  ``held_out_psi`` and ``held_out_tau`` were not computed from the models they are measured on;
  ``held_out_p`` is Ψ's permutation p on the held-out models, ``held_out_p_adjusted`` adjusted
  over the measures (a number that survives the held-out split and the correction).
  Seeds split in two halves by value (the lower half discovers).
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from topoland.analysis.features import AnalysisError, is_validation_derived
from topoland.analysis.multiple import adjust_p, permutations_for_family
from topoland.analysis.scores import (granulated_kendall, kendall_tau, oof_prediction, psi_permutation_test, regressor,
                                      score_measures)

__all__ = ["score_population", "hashable_settings", "resolve_gap"]



def resolve_gap(gap: str, frame) -> str:
    """The gap column ``gap`` names: ``"auto"`` is ``acc_gap`` (train_acc - test_acc) where the
    minima record accuracy, else ``gap`` (test_loss - train_loss: a regression has no accuracy)."""
    if gap != "auto":
        return gap
    return "acc_gap" if "acc_gap" in frame and frame["acc_gap"].notna().any() else "gap"


def hashable_settings(frame: pd.DataFrame, columns) -> pd.DataFrame:
    """``frame`` with list-valued setting columns (``model.widths = [64, 64]``) as JSON strings, so
    models group by them."""
    out = frame.copy()
    for c in columns:
        if out[c].map(lambda v: isinstance(v, (list, tuple, dict))).any():
            out[c] = out[c].map(lambda v: json.dumps(v) if isinstance(v, (list, tuple, dict)) else v)
    return out


def _fit_predict(train: pd.DataFrame, test: pd.DataFrame, features, target: str, estimator: str, seed: int):
    reg = regressor(estimator, seed)
    reg.fit(train[features].to_numpy(float), train[target].to_numpy(float))
    return pd.Series(reg.predict(test[features].to_numpy(float)), index=test.index)


def _held_out(frame, measures, gap, hps, seed_column, baselines, estimator, seed, n_permutations,
              p_adjust) -> tuple[pd.DataFrame, list]:
    seeds = sorted(frame[seed_column].unique())
    disc_seeds = seeds[: len(seeds) // 2]
    disc = frame[frame[seed_column].isin(disc_seeds)]
    held = frame[~frame[seed_column].isin(disc_seeds)]
    rows, notes = [], []
    notes.append(f"held-out split: discovery seeds {', '.join(map(str, disc_seeds))} ({len(disc)} models), "
                 f"held-out seeds {', '.join(map(str, seeds[len(seeds) // 2:]))} ({len(held)} models)")

    def held_out(h, col, sign):
        test = psi_permutation_test(h, col, gap, hps, n_permutations=n_permutations, seed=seed)
        return {"held_out_psi": sign * test["psi"], "held_out_p": test["p_value"],
                "held_out_tau": sign * kendall_tau(h, col, gap), "held_out_n": int(len(h))}

    def scored(d, h, col):
        d, h = d[d[col].notna()], h[h[col].notna()]
        psi_d = granulated_kendall(d, col, gap, hps)["psi"]
        sign = -1.0 if psi_d < 0 else 1.0
        return {"measure": col, "discovery_psi": psi_d, "orientation": sign} | held_out(h, col, sign)

    failed: dict[str, list[str]] = {}
    for col in measures:
        try:
            rows.append(scored(disc, held, col))
        except AnalysisError as e:
            failed.setdefault(str(e), []).append(col)
    for why, cols in failed.items():
        notes.append(f"no held-out score for {len(cols)} measure(s) ({', '.join(cols)}): {why}")
    for name, block in baselines.items():
        col = f"supervised.{name}"
        try:
            feats = list(block.columns)
            keep = [gap] + [c for c in hps if c not in feats]
            d = disc[keep].join(block, how="inner").dropna(subset=feats + [gap])
            h = held[keep].join(block, how="inner").dropna(subset=feats + [gap])
            if len(d) < 3 or len(h) < 2:
                raise AnalysisError(f"{len(d)} discovery and {len(h)} held-out models with every feature")
            h = h.assign(**{col: _fit_predict(d, h, feats, gap, estimator, seed)})
            rows.append({"measure": col, "discovery_psi": np.nan, "orientation": 1.0} | held_out(h, col, 1.0))
        except AnalysisError as e:
            notes.append(f"held-out score of {col}: {e}")
    out = pd.DataFrame(rows)
    if not out.empty:
        out["held_out_p_adjusted"] = adjust_p(out["held_out_p"].to_numpy(), p_adjust)
    return out, notes


def score_population(frame: pd.DataFrame, measures, *, gap: str, hyperparameters, seed_column: str | None = None,
                     baselines: dict | None = None, estimator: str = "ridge", n_boot: int = 200,
                     level: float = 0.95, seed: int = 0, n_permutations: int | str = "auto",
                     p_adjust: str = "holm", on_empty: str = "skip",
                     validation=()) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Score every measure column of a population against ``gap``.

    Args:
        frame: one row per model (index: model id): the measures, ``gap``, the hyperparameter
            columns and ``seed_column``.
        measures: the measure columns (unsupervised: computed per model, no gap seen).
        gap: the generalization-gap column (e.g. ``acc_gap``, a fraction; ``gap``, nats).
        hyperparameters: the axes of the population (seeds are not an axis); axes with one value
            are dropped with a note.
        seed_column: the seed column; with two or more seeds the held-out columns are added.
        baselines: ``{name: DataFrame (models, features)}`` indexed like ``frame``: each becomes the
            out-of-fold prediction ``supervised.<name>`` of ``gap`` (``estimator``: "ridge" or
            "forest"), scored beside the measures.
        validation: measure columns computed from the validation split (held-out data, unlike a
            generalization measure, which sees only the training data and the weights); columns
            whose name carries the token ``val`` count too. Their ``kind`` is "validation".
        n_permutations: relabellings of the permutation test of each tau; "auto": at least 999
            and 4x the fewest whose smallest p survives Holm over the measures.
        on_empty: PGDL slices (value combinations of two axes) without models: "skip" (a
            population with extra cells, e.g. bad minima at a few settings, has them) or "raise".

    Returns ``(scores, predictions, notes)``: the score table (one row per measure: the columns of
    :func:`~topoland.analysis.scores.score_measures`, ``kind`` (measure / validation /
    supervised) and, with seeds, ``discovery_psi``, ``orientation``, ``held_out_psi``,
    ``held_out_p``, ``held_out_p_adjusted``, ``held_out_tau``, ``held_out_n``), the supervised
    predictions (models x baselines) and notes.
    """
    if gap not in frame.columns:
        raise AnalysisError(f"the population has no gap column {gap!r}")
    notes: list[str] = []
    hps = []
    missing = [h for h in hyperparameters if h not in frame.columns]
    if missing:
        raise AnalysisError(f"hyperparameter column {missing[0]!r} is not in the population")
    frame = hashable_settings(frame, hyperparameters)
    for h in hyperparameters:
        if frame[h].nunique(dropna=False) < 2:
            notes.append(f"{h} takes one value ({frame[h].iloc[0]!r}) over the scored models: not an axis")
        else:
            hps.append(h)
    for h in list(hps):   # an axis that is a function of another has no group of its own
        by = next((o for o in hps if o != h and frame.groupby(o)[h].nunique().max() == 1
                   and (frame.groupby(h)[o].nunique().max() > 1 or hps.index(o) < hps.index(h))), None)
        if by is not None:
            notes.append(f"{h} is determined by {by} over the scored models: not a separate axis")
            hps.remove(h)
    if not hps:
        raise AnalysisError("no hyperparameter takes two or more values over the scored models: "
                            "nothing to condition the scores on")
    constant = [c for c in measures if frame[c].nunique() < 2]
    if constant:
        notes.append(f"{len(constant)} measure(s) constant over the scored models, not scored: {', '.join(constant)}")
        measures = [c for c in measures if c not in constant]
    baselines = dict(baselines or {})
    preds = {}
    for name, block in baselines.items():
        block = block.loc[block.index.intersection(frame.index)].dropna(axis=1, how="any")
        block = block.loc[:, block.nunique() > 1]
        baselines[name] = block
        if block.shape[1] == 0 or len(block) < 5:
            notes.append(f"supervised.{name}: {len(block)} models with {block.shape[1]} usable features; left out")
            continue
        data = frame[[gap]].join(block, how="inner")
        preds[f"supervised.{name}"] = oof_prediction(data, list(block.columns), gap, seed=seed,
                                                     estimator=estimator, dropna=True)
    baselines = {n: b for n, b in baselines.items() if f"supervised.{n}" in preds}
    pred = pd.DataFrame(preds, index=frame.index)
    full = frame.join(pred) if len(pred.columns) else frame
    cols = list(measures) + list(pred.columns)
    if n_permutations == "auto":   # enough that the smallest p can survive Holm over the family
        n_permutations = max(999, 4 * permutations_for_family(len(cols)))
    table = score_measures(full, cols, gap, hps, n_boot=n_boot, level=level, seed=seed,
                           n_permutations=n_permutations, p_adjust=p_adjust, on_empty=on_empty)
    validation = set(validation) | {c for c in cols if is_validation_derived(c)}
    table["kind"] = ["supervised" if m.startswith("supervised.") else "validation" if m in validation else "measure"
                     for m in table["measure"]]
    if seed_column is not None and seed_column in frame and frame[seed_column].nunique() >= 2:
        held, held_notes = _held_out(full, list(measures), gap, hps, seed_column, baselines, estimator, seed,
                                     n_permutations, p_adjust)
        notes += held_notes
        if not held.empty:
            table = table.merge(held, on="measure", how="left")
    else:
        notes.append("one seed: no held-out split; every score was computed on the models it describes")
    return table, pred, notes
