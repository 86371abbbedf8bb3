"""Predict generalization and training settings from feature groups with 11 simple classifiers.

The protocol (the reference study's classifier table, made reproducible):

- Target: a continuous column (``test_acc``, ``gap``, any metric or feature) binned into
  ``n_classes`` balanced quantile classes by :func:`generalization_label`, or a setting column
  (``weight_decay``, ``augment``, ``batch_size``...) used as categories.
- Rows with a NaN in the target or in any used feature are dropped and counted (``n_dropped``);
  binning happens after the drop, on the rows actually used, so classes stay balanced.
- Each classifier of :data:`CLASSIFIERS` runs in ``Pipeline(StandardScaler, clf)`` (with a
  median ``SimpleImputer`` first only when ``impute=True``; then no row is dropped for NaN
  features), evaluated by ``RepeatedStratifiedKFold(n_splits, n_repeats, random_state=seed)``.
  A classifier's accuracy is its mean over all folds and repeats.
- Two uncertainties, named apart. The *across-classifier standard error*
  ``std(ddof=1) / sqrt(n_classifiers)`` of the per-classifier accuracies (the reference
  study's statistic) says how far the classifiers agree; it is not sampling error. The
  *cross-validation standard error* (``cv_se``, per classifier and for the mean over the
  classifiers) is the Nadeau-Bengio corrected standard error of the repeated CV estimate,
  ``sqrt((1 / J + n_test / n_train) * s^2)`` with ``s^2`` the variance of the ``J = n_splits *
  n_repeats`` fold accuracies (for the mean: of the per-fold means over classifiers); the
  ``n_test / n_train`` term accounts for the overlap of training sets between folds.
- Chance: ``chance_majority`` is the majority-class rate among the used rows (the accuracy of
  always guessing the largest class); ``chance_uniform`` is ``1 / n_classes_present``.
- Permutation test: the target is permuted ``n_permutations`` times (numpy Generator seeded
  by ``seed``); each time the whole protocol is rerun and the mean-over-classifiers accuracy
  recorded. ``p = (1 + #{null >= observed}) / (1 + n_permutations)``; the smallest attainable
  p is ``p_min = 1 / (1 + n_permutations)``. :func:`classifier_table` adjusts the p-values of
  its cells as one family (Holm by default, BH on request); a cell is a ``finding`` only at
  adjusted p < 0.05, which needs ``p_min * family_size < 0.05``: its default
  ``n_permutations="auto"`` takes the fewest permutations that allow it
  (:func:`~topoland.analysis.multiple.permutations_for_family`).
- When the smallest class has fewer than ``n_splits`` members, ``n_splits`` is reduced to that
  size and a note is recorded; with fewer than 2 members, or fewer than 10 usable rows,
  :class:`~topoland.errors.NotEnoughSamplesError` is raised.

Defaults: ``n_splits=5``, ``n_repeats=2``; ``classify`` runs no permutation test unless asked
(``n_permutations=0``); ``classifier_table`` uses ``n_permutations="auto"`` (``20 *`` the number
of cells, e.g. 300 for 5 groups x 3 targets). Each permutation costs as much as the observed fit, so the table costs about
``(1 + n_permutations) * n_groups * n_targets`` protocol runs of ``11 * n_splits * n_repeats``
fits (ensembles dominate: 30 trees for the forests, 20 stages for the boosters). Use
``n_jobs`` to spread the permutations over cores; the result does not depend on it.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import sklearn
from joblib import Parallel, delayed
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.ensemble import (
    AdaBoostClassifier,
    ExtraTreesClassifier,
    GradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import RepeatedStratifiedKFold
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC
from sklearn.tree import DecisionTreeClassifier

from topoland import checks
from topoland.analysis.features import (
    KNOWN_GROUPS,
    METRIC_COLUMNS,
    AnalysisError,
    FeatureTable,
    as_frame,
    check_feature_columns,
)
from topoland.analysis.multiple import adjust_p, permutation_p_min, permutations_for_family
from topoland.declare import Param, declare
from topoland.errors import NotEnoughSamplesError

__all__ = [
    "CLASSIFIERS",
    "MIN_ROWS",
    "generalization_label",
    "make_pipeline",
    "classify",
    "classifier_table",
    "pivot_classifier_table",
    "format_classifier_table",
    "cv_standard_error",
]

ASSUMPTIONS = (
    "Rows (minima) are independent and exchangeable under the null. Accuracy is estimated by "
    "repeated stratified k-fold cross-validation (fixed seed), standardization fitted on each "
    "training fold only. Two standard errors: across the classifiers (agreement between "
    "classifiers, not sampling error) and of the cross-validation estimate (Nadeau-Bengio "
    "corrected for overlapping training folds). The permutation p-value tests whether the mean "
    "accuracy exceeds what the same protocol reaches on permuted targets; the table's p-values are "
    "adjusted over all its cells."
)

#: Fewest complete rows ``classify`` accepts (k-NN needs 5 neighbours in every training fold).
MIN_ROWS = 10

#: name -> factory(seed) -> unfitted classifier. Small ensembles keep permutation tests affordable.
CLASSIFIERS: dict[str, Callable[[int], object]] = {
    "logistic_regression": lambda seed: LogisticRegression(max_iter=2000),
    "linear_svm": lambda seed: LinearSVC(C=1.0, max_iter=20000, random_state=seed),
    "rbf_svm": lambda seed: SVC(kernel="rbf", C=1.0, gamma="scale"),
    "knn": lambda seed: KNeighborsClassifier(n_neighbors=5),
    "decision_tree": lambda seed: DecisionTreeClassifier(random_state=seed),
    "random_forest": lambda seed: RandomForestClassifier(n_estimators=30, random_state=seed),
    "extra_trees": lambda seed: ExtraTreesClassifier(n_estimators=30, random_state=seed),
    "gradient_boosting": lambda seed: GradientBoostingClassifier(n_estimators=20, random_state=seed),
    "adaboost": lambda seed: AdaBoostClassifier(n_estimators=20, random_state=seed),
    "gaussian_nb": lambda seed: GaussianNB(),
    # shrinkage keeps LDA defined when a feature is (nearly) constant within a training fold
    "lda": lambda seed: LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto"),
}


def generalization_label(values, n_classes: int = 5) -> np.ndarray:
    """Bin ``values`` (shape ``(n,)``, no NaN) into ``n_classes`` quantile classes.

    Rank ``r`` (0-based, ascending; ties broken by position, i.e. a stable sort) goes to
    class ``floor(r * n_classes / n)``. Class sizes therefore differ by at most one, and the
    labels depend only on the values and their order. Returns int64 labels ``(n,)`` in
    ``0..n_classes-1``, 0 = lowest values.
    """
    v = np.asarray(values, dtype=float)
    if v.ndim != 1:
        raise AnalysisError(f"generalization_label expects a 1-D array, got shape {v.shape}")
    if np.isnan(v).any():
        raise AnalysisError(f"generalization_label got {int(np.isnan(v).sum())} NaN values; drop them first")
    if n_classes < 2:
        raise AnalysisError(f"n_classes must be >= 2, got {n_classes}")
    n = v.size
    if n < n_classes:
        raise NotEnoughSamplesError(f"binning into {n_classes} quantile classes needs at least {n_classes} values, got {n}")
    order = np.argsort(v, kind="stable")
    ranks = np.empty(n, dtype=np.int64)
    ranks[order] = np.arange(n)
    return (ranks * n_classes) // n


def make_pipeline(name: str, seed: int = 0, *, impute: bool = False) -> Pipeline:
    """``Pipeline([(imputer,) scaler, clf])`` for classifier ``name`` of :data:`CLASSIFIERS`."""
    if name not in CLASSIFIERS:
        raise AnalysisError(f"unknown classifier {name!r}; choose from {list(CLASSIFIERS)}")
    steps = [("impute", SimpleImputer(strategy="median"))] if impute else []
    steps += [("scale", StandardScaler()), ("clf", CLASSIFIERS[name](seed))]
    return Pipeline(steps)


def _target_kind(table, name: str, kind: str) -> str:
    """Metrics and feature columns are continuous ("quantile"); settings are "categorical".

    A feature column is one listed in a FeatureTable's groups, or, in a plain DataFrame, one
    named ``<g>.<x>`` with ``g`` in :data:`KNOWN_GROUPS` (so ``train.lr`` stays a setting).
    """
    if kind not in ("auto", "quantile", "categorical"):
        raise AnalysisError(f"target kind for {name!r} must be 'auto', 'quantile' or 'categorical', got {kind!r}")
    if kind != "auto":
        return kind
    if name in METRIC_COLUMNS:
        return "quantile"
    if isinstance(table, FeatureTable):
        is_feature = any(name in cols for cols in table.groups.values())
    else:
        is_feature = name.split(".", 1)[0] in KNOWN_GROUPS and "." in name
    return "quantile" if is_feature else "categorical"


def _resolve_features(table, features) -> list[str]:
    if isinstance(features, str):
        if isinstance(table, FeatureTable) and features in table.groups:
            return list(table.groups[features])
        features = [features]
    cols = list(dict.fromkeys(features))
    if not cols:
        raise AnalysisError("no feature columns given")
    df = as_frame(table)
    absent = [c for c in cols if c not in df.columns]
    if absent:
        raise AnalysisError(f"feature columns not in the table: {absent}")
    bad = [c for c in cols if not pd.api.types.is_numeric_dtype(df[c])]
    if bad:
        raise AnalysisError(f"feature columns must be numeric: {bad}")
    check_feature_columns(cols, where="classify")
    return cols


def _prepare(table, target, features, n_classes, target_kind, impute):
    """Rows used, features X (n, d), labels y (n,), class names, kind, n_dropped."""
    df = as_frame(table)
    if target not in df.columns:
        raise AnalysisError(f"target column {target!r} is not in the table")
    cols = _resolve_features(table, features)
    if target in cols:
        raise AnalysisError(f"target {target!r} is also among the features")
    kind = _target_kind(table, target, target_kind)
    t = df[target]
    keep = t.notna().to_numpy().copy()
    if not impute:
        keep &= df[cols].notna().all(axis=1).to_numpy()
    n_dropped = int((~keep).sum())
    # a feature constant over the rows used carries no information and breaks LDA's SVD
    varying = [c for c in cols if df.loc[keep, c].nunique(dropna=True) > 1]
    if not varying:
        raise NotEnoughSamplesError(
            f"classify(target={target!r}): every feature column is constant over the {int(keep.sum())} rows used")
    cols = varying
    X = df.loc[keep, cols].to_numpy(dtype=float)
    tv = t[keep]
    if kind == "quantile":
        if not pd.api.types.is_numeric_dtype(tv):
            raise AnalysisError(f"target {target!r} is not numeric and cannot be binned into quantiles")
        if len(tv) < MIN_ROWS:
            raise NotEnoughSamplesError(
                f"classify(target={target!r}) has {len(tv)} complete rows ({n_dropped} dropped for NaN); needs at least {MIN_ROWS}"
            )
        y = generalization_label(tv.to_numpy(dtype=float), n_classes)
        classes = [f"q{i}" for i in range(n_classes)]
    else:
        uniq = sorted(pd.unique(tv), key=lambda v: (str(type(v)), v))
        lookup = {u: i for i, u in enumerate(uniq)}
        y = np.array([lookup[v] for v in tv], dtype=np.int64)
        classes = [str(u) for u in uniq]
    return X, y, classes, kind, n_dropped, cols


def cv_standard_error(fold_acc, test_fraction: float) -> np.ndarray:
    """Nadeau-Bengio corrected standard error of repeated-CV accuracy.

    Args:
        fold_acc: ``(..., J)`` accuracies of the ``J`` folds (all repeats).
        test_fraction: ``n_test / n_train`` of one fold (``1 / (n_splits - 1)`` when even).

    Returns ``(...)``: ``sqrt((1 / J + test_fraction) * var(fold_acc, ddof=1))``; 0 for ``J = 1``.
    """
    a = np.asarray(fold_acc, dtype=float)
    J = a.shape[-1]
    if J < 2:
        return np.zeros(a.shape[:-1])
    return np.sqrt((1.0 / J + test_fraction) * a.var(axis=-1, ddof=1))


def _cv_accuracy(X, y, names, n_splits, n_repeats, seed, impute) -> np.ndarray:
    """Accuracy per classifier and fold: ``(n_classifiers, n_splits * n_repeats)``."""
    cv = RepeatedStratifiedKFold(n_splits=n_splits, n_repeats=n_repeats, random_state=seed)
    folds = list(cv.split(X, y))
    acc = np.empty((len(names), len(folds)))
    # the estimators' parameters are CLASSIFIERS' fixed ones: sklearn's check of them at every
    # fit is a fifth of the time on the few rows a population of minima has
    with sklearn.config_context(skip_parameter_validation=True):
        for j, (tr, te) in enumerate(folds):
            for i, name in enumerate(names):
                model = make_pipeline(name, seed, impute=impute).fit(X[tr], y[tr])
                acc[i, j] = float(np.mean(model.predict(X[te]) == y[te]))
    return acc


def classify(
    table,
    target: str,
    features,
    *,
    n_classes: int = 5,
    target_kind: str = "auto",
    n_splits: int = 5,
    n_repeats: int = 2,
    seed: int = 0,
    n_permutations: int = 0,
    classifiers=None,
    impute: bool = False,
    n_jobs: int | None = 1,
) -> pd.DataFrame:
    """Cross-validated accuracy of each classifier predicting ``target`` from ``features``.

    Args:
        table: :class:`FeatureTable` or DataFrame, one row per minimum.
        target: column to predict; ``target_kind`` "auto" bins metrics and feature columns
            into ``n_classes`` quantile classes and treats any other column (settings such as
            ``train.weight_decay``) as categorical; "quantile"/"categorical" force a kind.
        features: list of numeric columns, or a group name of a :class:`FeatureTable`.
        classifiers: names from :data:`CLASSIFIERS` (default: all 11).
        n_permutations: size of the permutation null of the mean accuracy (0: no test).
        n_jobs: joblib workers for the permutations (results do not depend on it).

    Returns:
        DataFrame indexed by classifier with ``accuracy`` (mean over folds, fraction),
        ``accuracy_sd`` (std over folds), ``cv_se`` (cross-validation standard error) and
        ``n_folds``. ``.attrs`` holds the summary: ``mean``, ``se_across_classifiers``,
        ``cv_se`` (of the mean over classifiers), ``chance_majority``, ``chance_uniform``,
        ``p_value`` and ``p_min`` (NaN only when ``n_permutations == 0``), ``null`` (list),
        ``n_used``, ``n_dropped``, ``n_classes``,
        ``classes``, ``n_splits`` (as used), ``n_repeats``, ``target``, ``target_kind``,
        ``features``, ``notes``, ``assumptions``.
    """
    plan = _plan(table, target, features, n_classes=n_classes, target_kind=target_kind, n_splits=n_splits,
                 n_repeats=n_repeats, seed=seed, n_permutations=n_permutations, classifiers=classifiers,
                 impute=impute)
    accs = Parallel(n_jobs=n_jobs)(delayed(_cv_accuracy)(*args) for args in plan.tasks()) if n_permutations \
        else [_cv_accuracy(*plan.tasks()[0])]
    return plan.finish(accs)


class _Plan:
    """A prepared :func:`classify` call: the data, the folds' settings and the permuted targets.

    ``tasks()`` lists the ``_cv_accuracy`` argument tuples (the observed target first, then one
    per permutation); ``finish(accs)`` turns their results into classify's DataFrame. Splitting
    the two lets :func:`classifier_table` send every cell's tasks to the workers at once.
    """

    def __init__(self, X, y, names, splits, n_repeats, seed, impute, perms, meta):
        self.X, self.y, self.names, self.splits, self.n_repeats = X, y, names, splits, n_repeats
        self.seed, self.impute, self.perms, self.meta = seed, impute, perms, meta

    def tasks(self) -> list[tuple]:
        return [(self.X, t, self.names, self.splits, self.n_repeats, self.seed, self.impute)
                for t in [self.y, *self.perms]]

    def finish(self, accs) -> pd.DataFrame:
        acc, null_accs = accs[0], accs[1:]
        names, m = self.names, self.meta
        notes = list(m["notes"])
        n, splits = len(self.y), self.splits
        per_clf = acc.mean(axis=1)
        mean = float(per_clf.mean())
        se = float(per_clf.std(ddof=1) / np.sqrt(len(names))) if len(names) > 1 else 0.0
        n_test = n / splits
        test_fraction = n_test / (n - n_test)
        cv_se = cv_standard_error(acc, test_fraction)
        cv_se_mean = float(cv_standard_error(acc.mean(axis=0), test_fraction))
        if len(names) == 1:
            notes.append("one classifier: se across classifiers is 0 by definition")
        n_permutations = len(self.perms)
        null = [float(a.mean()) for a in null_accs]
        p_value = float("nan")
        if n_permutations > 0:
            # accuracies are multiples of 1/(n * n_repeats * n_classifiers); 1e-12 absorbs summation order
            p_value = (1 + int(np.sum(np.asarray(null) >= mean - 1e-12))) / (1 + n_permutations)
        out = pd.DataFrame(
            {"accuracy": per_clf, "accuracy_sd": acc.std(axis=1, ddof=1) if acc.shape[1] > 1 else 0.0,
             "cv_se": cv_se, "n_folds": acc.shape[1]},
            index=pd.Index(names, name="classifier"),
        )
        counts = np.bincount(self.y)
        out.attrs.update(
            target=m["target"], target_kind=m["kind"], features=m["cols"], mean=mean, se_across_classifiers=se,
            cv_se=cv_se_mean, p_min=permutation_p_min(n_permutations) if n_permutations else float("nan"),
            chance_majority=float(counts.max() / n), chance_uniform=1.0 / int((counts > 0).sum()),
            p_value=p_value, n_permutations=int(n_permutations), null=null,
            n_used=n, n_dropped=m["n_dropped"], n_classes=int((counts > 0).sum()), classes=m["classes"],
            n_splits=splits, n_repeats=self.n_repeats, seed=self.seed, notes="; ".join(notes),
            assumptions=ASSUMPTIONS,
        )
        return out


def _plan(table, target, features, *, n_classes, target_kind, n_splits, n_repeats, seed, n_permutations,
          classifiers, impute) -> _Plan:
    """Check the arguments and the data of one :func:`classify` call; raise what it would raise."""
    names = list(classifiers) if classifiers is not None else list(CLASSIFIERS)
    unknown = [n for n in names if n not in CLASSIFIERS]
    if unknown or not names:
        raise AnalysisError(f"unknown classifiers {unknown}; choose from {list(CLASSIFIERS)}")
    if n_splits < 2 or n_repeats < 1 or n_permutations < 0:
        raise AnalysisError(f"need n_splits >= 2, n_repeats >= 1, n_permutations >= 0; got {n_splits}, {n_repeats}, {n_permutations}")
    X, y, classes, kind, n_dropped, cols = _prepare(table, target, features, n_classes, target_kind, impute)
    n = len(y)
    where = f"classify(target={target!r}, features={cols[:3]}{'...' if len(cols) > 3 else ''})"
    if n < MIN_ROWS:
        raise NotEnoughSamplesError(f"{where} has {n} complete rows ({n_dropped} dropped for NaN); needs at least {MIN_ROWS}")
    counts = np.bincount(y)
    present = int((counts > 0).sum())
    if present < 2:
        raise NotEnoughSamplesError(f"{where}: the target has a single class {classes}; nothing to classify")
    notes = []
    smallest = int(counts[counts > 0].min())
    if smallest < 2:
        raise NotEnoughSamplesError(
            f"{where}: class {classes[int(np.argmin(np.where(counts > 0, counts, n + 1)))]!r} has {smallest} member; "
            "stratified cross-validation needs at least 2 per class"
        )
    splits = n_splits
    if smallest < n_splits:
        splits = smallest
        notes.append(f"n_splits reduced from {n_splits} to {splits}: smallest class has {smallest} members")
    # every training fold must hold more samples than classes (LDA and others need it)
    smallest_train = n - int(np.ceil(n / splits))
    if smallest_train <= present:
        raise NotEnoughSamplesError(
            f"{where}: {n} rows in {splits} folds leave {smallest_train} training rows for {present} classes; "
            "more minima are needed"
        )

    rng = np.random.default_rng(seed)
    perms = [rng.permutation(y) for _ in range(n_permutations)]  # drawn up front: n_jobs-independent
    meta = dict(target=target, kind=kind, cols=cols, classes=classes, n_dropped=n_dropped, notes=notes)
    return _Plan(X, y, names, splits, n_repeats, seed, impute, perms, meta)


_SUMMARY = ("mean", "se_across_classifiers", "cv_se", "chance_majority", "chance_uniform", "p_value",
            "p_min", "n_permutations",
            "n_used", "n_dropped", "n_classes", "n_splits", "n_repeats", "target_kind", "notes")


@declare({
    "n_splits": Param((int,), 5, checks.pos, "folds"),
    "n_repeats": Param((int,), 3, checks.pos, "repeats of the stratified k-fold"),
    "n_permutations": Param((int, str), "auto", lambda v: None if v == "auto" or (isinstance(v, int) and v >= 0)
                           else "must be an integer >= 0 or 'auto'",
                           "permutations of each classifier-table cell ('auto' = 20 x the number of "
                           "cells: the fewest for which a cell can be a finding after Holm)"),
    "p_adjust": Param((str,), "holm", checks.one_of("holm", "bh"), "multiple-comparison adjustment of every family "
                     "(classifier cells, comparisons, correlations): Holm or Benjamini-Hochberg"),
    "n_classes": Param((int,), 5, lambda v: None if v >= 2 else "must be >= 2", "quantile classes of gen_label"),
    "n_jobs": Param((int,), 1, checks.pos, "processes for the classifier permutation test"),
})
def classifier_table(
    table,
    targets,
    groups=None,
    *,
    include_all: bool = True,
    n_classes: int = 5,
    target_kinds: dict[str, str] | None = None,
    n_splits: int = 5,
    n_repeats: int = 2,
    seed: int = 0,
    n_permutations: int | str = "auto",
    p_adjust: str = "holm",
    classifiers=None,
    impute: bool = False,
    n_jobs: int | None = 1,
    on_error: str = "raise",
) -> pd.DataFrame:
    """The classifier table: every feature group (and their union ``"all"``) x every target.

    Args:
        table: :class:`FeatureTable` or DataFrame.
        targets: column names (see :func:`classify` for how each is turned into classes).
        groups: ``{group: [columns]}``; default: ``table.groups`` of a FeatureTable.
        include_all: add the row ``"all"`` (union of the groups' columns) when there are
            at least two groups; without ``impute`` it uses only rows complete in every group.
        target_kinds: ``{target: "quantile"|"categorical"}`` overrides of "auto".
        on_error: "raise" (default) or "record": a cell that raises
            :class:`NotEnoughSamplesError` gets NaN accuracy and the message in ``notes``.
        n_permutations: per cell; "auto" = ``permutations_for_family(n_cells)``, the fewest
            for which a cell can be a finding after adjustment.
        p_adjust: "holm" (default) or "bh", over the cells' permutation p-values.

    Returns:
        Tidy DataFrame, one row per (group, target), columns ``group, target, mean,
        se_across_classifiers, cv_se, chance_majority, chance_uniform, p_value, p_min,
        n_permutations, n_used, n_dropped, n_classes, n_splits, n_repeats, target_kind, notes,
        p_adjusted, p_adjust, finding`` (``p_adjusted < 0.05``), one ``acc_<classifier>`` and
        one ``cv_se_<classifier>`` column per classifier. :func:`pivot_classifier_table` gives
        rows = groups, columns = targets.
    """
    if groups is None:
        if not isinstance(table, FeatureTable):
            raise AnalysisError("classifier_table needs groups={name: [columns]} when given a plain DataFrame")
        groups = table.groups
    groups = {g: list(c) for g, c in groups.items()}
    if not groups:
        raise AnalysisError("classifier_table got no feature groups")
    if on_error not in ("raise", "record"):
        raise AnalysisError(f"on_error must be 'raise' or 'record', got {on_error!r}")
    if include_all and len(groups) > 1:
        if "all" in groups:
            raise AnalysisError("a feature group is called 'all', which is reserved for the union")
        groups["all"] = list(dict.fromkeys(c for cs in groups.values() for c in cs))
    targets = [targets] if isinstance(targets, str) else list(targets)
    kinds = target_kinds or {}
    names = list(classifiers) if classifiers is not None else list(CLASSIFIERS)
    if n_permutations == "auto":
        n_permutations = permutations_for_family(len(groups) * len(targets))
    elif isinstance(n_permutations, bool) or not isinstance(n_permutations, int):
        raise AnalysisError(f"n_permutations must be an integer >= 0 or 'auto', got {n_permutations!r}")
    cells = []  # (row, plan or None): every cell is prepared first, then all fits run at once
    for g, cols in groups.items():
        for t in targets:
            row = {"group": g, "target": t}
            try:
                plan = _plan(table, t, cols, n_classes=n_classes, target_kind=kinds.get(t, "auto"),
                             n_splits=n_splits, n_repeats=n_repeats, seed=seed,
                             n_permutations=n_permutations, classifiers=names, impute=impute)
            except NotEnoughSamplesError as e:
                if on_error == "raise":
                    raise
                row.update({k: np.nan for k in _SUMMARY}, notes=f"not computed: {e}",
                           target_kind=_target_kind(table, t, kinds.get(t, "auto")))
                plan = None
            cells.append((row, plan))
    # one task list over all cells balances the workers (one cell's 1 + n_permutations runs
    # rarely divide evenly among them); each task's result does not depend on where it ran
    tasks = [(i, args) for i, (_, plan) in enumerate(cells) if plan is not None for args in plan.tasks()]
    results = Parallel(n_jobs=n_jobs)(delayed(_cv_accuracy)(*args) for _, args in tasks) if tasks else []
    by_cell: dict[int, list] = {}
    for (i, _), acc in zip(tasks, results):
        by_cell.setdefault(i, []).append(acc)
    rows = []
    for i, (row, plan) in enumerate(cells):
        if plan is not None:
            res = plan.finish(by_cell[i])
            row.update({k: res.attrs[k] for k in _SUMMARY})
            row.update({f"acc_{c}": a for c, a in res["accuracy"].items()})
            row.update({f"cv_se_{c}": a for c, a in res["cv_se"].items()})
        rows.append(row)
    out = pd.DataFrame(rows)
    out["p_adjusted"] = adjust_p(out["p_value"].to_numpy(dtype=float), p_adjust)
    out["p_adjust"] = p_adjust
    out["finding"] = out["p_adjusted"] < 0.05
    out.attrs["assumptions"] = ASSUMPTIONS
    return out


def pivot_classifier_table(result: pd.DataFrame, value: str = "mean") -> pd.DataFrame:
    """Rows = groups (in order of appearance), columns = targets, cells = ``value``."""
    wide = result.pivot(index="group", columns="target", values=value)
    return wide.loc[pd.unique(result["group"]), pd.unique(result["target"])]


def format_classifier_table(result: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """Strings ``"mean ± se_clf / ± se_cv (p_adj=..., p_min=...)"`` with rows = groups, columns =
    targets: the across-classifier and the cross-validation standard errors; a last row
    ``chance (majority)`` gives, per target, the largest majority-class rate over the groups
    (groups may use different rows when features are missing)."""
    def cell(r):
        if pd.isna(r["mean"]):
            return "n/a"
        p = "" if pd.isna(r["p_value"]) else f" (p_adj={r['p_adjusted']:.3g}, p_min={r['p_min']:.2g})"
        return (f"{r['mean']:.{digits}f} ± {r['se_across_classifiers']:.{digits}f} clf"
                f" / ± {r['cv_se']:.{digits}f} cv{p}")

    r = result.assign(_cell=result.apply(cell, axis=1))
    wide = pivot_classifier_table(r, "_cell")
    chance = result.groupby("target", sort=False)["chance_majority"].max()
    wide.loc["chance (majority)"] = [f"{chance[t]:.{digits}f}" if pd.notna(chance[t]) else "n/a" for t in wide.columns]
    return wide
