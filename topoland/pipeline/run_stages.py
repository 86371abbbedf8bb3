"""The run-level stage bodies (across cells): paths, analysis and the report. Each is
``stage_x(store, cfg, out_dir) -> summary dict``."""
from __future__ import annotations

import json
from pathlib import Path

from topoland.declare import arguments
from topoland.landscape.connect import connect_models
from topoland.pipeline.cell_stages import TOPOLOGY_HEADLINE
from topoland.pipeline.context import CellContext, DataCache
from topoland.runs import layout
from topoland.runs.store import RUN_LEVEL, RunStore
from topoland.runs.tables import (analysis_table, config_settings, connectable_cells, diverged_cells,
                                  missed_target, pairs_to_connect, run_design, topology_values,
                                  weight_statistics_table)


def _connect_pair(store: RunStore, cfg: dict, a: str, b: str, attempt: int = 0, *,
                  cache: DataCache) -> dict:
    """Connect two cells' minima (cached per pair and attempt, so a killed run resumes)."""
    from topoland.io import atomic_path, save_tensors
    opts = cfg["paths"]
    pdir = layout.pair_attempt_dir(store.stage_dir(RUN_LEVEL, "paths"), a, b, attempt)
    if not (pdir / layout.BARRIERS).is_file():
        ca = CellContext(store, a, store.cell_config(a), data_cache=cache)
        cb = CellContext(store, b, store.cell_config(b), data_cache=cache)
        # a retry (AutoNEB strategy) gets more images and steps
        res = connect_models(ca.model(), cb.model(), ca.data, **arguments(
            connect_models, opts, n_images=opts["n_images"] + 4 * attempt, steps=opts["steps"] * (1 + attempt),
            seed=cfg["run"]["seed"] + attempt, device=ca.device, loss=ca.loss,
            metrics=ca.stage_metrics(ca.data.y_train, accuracy="error")))
        with atomic_path(pdir) as tmp:
            tmp.mkdir()
            for name, prof in res["profiles"].items():
                prof.to_csv(tmp / layout.profile_csv(name), index=False)
            save_tensors(tmp / layout.IMAGES, {"images": res["images"]})
            (tmp / layout.BARRIERS).write_text(json.dumps(res["barriers"], indent=1))
    return layout.read_barriers(pdir)


def _pair_row(a, b, method, bars) -> dict:
    row = {"a": a, "b": b, "method": method}
    for key, b_ in bars.items():
        for kind in ("max", "max_minus_linear", "max_minus_mean"):
            row[f"{key}.{kind}"] = b_[kind]
    return row


def stage_paths(store: RunStore, cfg: dict, out: Path) -> dict:
    import shutil

    import pandas as pd

    from topoland.runs.store import write_table
    opts = cfg["paths"]
    m = opts["method"]
    cache = DataCache()
    if opts["pairs"] == "mst":
        table = _connect_mst(store, cfg, cache)
    else:
        pairs = pairs_to_connect(store, opts["pairs"])
        table = pd.DataFrame([_pair_row(a, b, m, _connect_pair(store, cfg, a, b, cache=cache)) for a, b in pairs])
    if table.empty:
        return {"skipped": f"no pair of minima to connect (paths.pairs = {opts['pairs']!r})"}
    # the stage keeps, per pair, the files of its last (most thorough) attempt
    last = table.groupby(["a", "b"])["attempt"].max() if "attempt" in table else None
    for a, b in dict.fromkeys(zip(table.a, table.b)):
        attempt = int(last[(a, b)]) if last is not None else 0
        shutil.copytree(layout.pair_attempt_dir(store.stage_dir(RUN_LEVEL, "paths"), a, b, attempt),
                        out / layout.pair_dir(a, b))
    write_table(table, out / layout.PAIRS)
    return {"n_pairs": int(len(table)),
            "linear_barrier_mean": float(table["linear.train_loss.max_minus_linear"].mean()),
            f"{m}_barrier_mean": float(table[f"{m}.train_loss.max_minus_linear"].mean())}


def _connect_mst(store: RunStore, cfg: dict, cache: DataCache):
    """The AutoNEB strategy over every minimum of one architecture: grow a minimum spanning
    tree by barrier (train loss maximum along the path) and retry across its highest edge."""
    import pandas as pd

    from topoland.landscape.paths import connect_all
    from topoland.nets import flatten, get_params
    cells = connectable_cells(store)
    if len(cells) < 2:
        return pd.DataFrame()
    m = cfg["paths"]["method"]
    minima, values = {}, {}
    for cid in cells:
        ctx = CellContext(store, cid, store.cell_config(cid), data_cache=cache)
        minima[cid] = flatten(get_params(ctx.model())).float()
        values[cid] = store.summary(cid, "train")["train_loss"]
    by_ptr = {t.data_ptr(): cid for cid, t in minima.items()}
    rows = {}

    def pair_fn(ta, tb, attempt):
        a, b = by_ptr[ta.data_ptr()], by_ptr[tb.data_ptr()]
        bars = _connect_pair(store, cfg, a, b, attempt, cache=cache)
        rows[(a, b, attempt)] = _pair_row(a, b, m, bars)
        return {k: v for k, v in bars[f"{m}.train_loss"].items()}

    table = connect_all(minima, pair_fn, strategy="mst", column="max", values=values)
    extra = pd.DataFrame([rows[(r.a, r.b, r.attempt)] | {"attempt": r.attempt, "in_mst": bool(r.in_mst)}
                          for r in table.itertuples()])
    return extra


def _floor_note(what: str, table) -> list[str]:
    """A note when no test of a family can reach adjusted p < 0.05 (p_min * family >= 0.05)."""
    p = table["p_value"].notna()
    if not p.any():
        return []
    p_min, m = float(table.loc[p, "p_min"].min()), int(p.sum())
    if p_min * m < 0.05:
        return []
    return [f"{what}: the smallest attainable p is {p_min:.3g} and the family holds {m} tests, so "
            f"p_min x {m} = {p_min * m:.3g} >= 0.05: none can be a finding after Holm"]


def _test_metric(ft) -> str:
    """``test_acc`` where the minima record accuracy, else ``test_loss`` (a regression)."""
    f = ft.frame
    return "test_acc" if "test_acc" in f and f["test_acc"].notna().any() else "test_loss"


def _targets(cfg: dict, ft) -> list[str]:
    out = []
    for t in cfg["analysis"]["targets"]:
        col = _test_metric(ft) if t == "gen_label" else t
        if col in ft.frame and ft.frame[col].nunique() > 1:
            out.append(col)
    return out


def stage_analysis(store: RunStore, cfg: dict, out: Path) -> dict:
    from topoland.analysis import classifier_table, correlations, save_feature_table
    from topoland.analysis import FLATNESS_MEASURES, comparison_table, flatness_ordering
    from topoland.errors import NotEnoughSamplesError
    from topoland.runs.store import write_table
    ft = analysis_table(store)
    save_feature_table(ft, out)
    a = cfg["analysis"]
    seed = cfg["run"]["seed"]
    notes = [f"features: {col} left out ({why}); test-split values are targets only"
             for col, why in ft.excluded.items()]
    diverged = diverged_cells(store)
    if diverged:
        notes.append(f"{len(diverged)} minima left out because their training diverged: {', '.join(diverged)}")
    missed = missed_target(store)
    if missed:
        notes.append(f"{len(missed)} minima missed the training target (train.target_loss / train.target_acc) "
                     f"within train.epochs, so they are not comparable minima (column reached_target): "
                     f"{', '.join(missed)}")
    targets = _targets(cfg, ft)
    if ft.groups and targets:
        clf = classifier_table(ft, targets, n_classes=a["n_classes"], n_splits=a["n_splits"],
                               n_repeats=a["n_repeats"], seed=seed, n_permutations=a["n_permutations"],
                               p_adjust=a["p_adjust"], n_jobs=a["n_jobs"], on_error="record")
        write_table(clf, out / layout.CLASSIFIERS)
        notes += _floor_note("classifier table", clf)
    feature_cols = [c for g in ft.groups.values() for c in g]
    enough = [c for c in feature_cols if ft.frame[c].notna().sum() >= 5]
    for c in sorted(set(feature_cols) - set(enough)):
        notes.append(f"correlations: {c} has {int(ft.frame[c].notna().sum())} values (needs 5); left out")
    try:
        if not enough:
            raise NotEnoughSamplesError("no feature has 5 or more values")
        corr = correlations(ft, enough, targets=("gap", _test_metric(ft)), n_boot=a["n_boot"], seed=seed,
                            p_adjust=a["p_adjust"])
        write_table(corr, out / layout.CORRELATIONS)
    except NotEnoughSamplesError as e:
        notes.append(f"correlations: {e}")
    # grid axes stratified on the others, extra cells (bad minima) on their own; one family
    design = run_design(store, cfg)
    metrics = ([_test_metric(ft), "gap"] + [c for c in TOPOLOGY_HEADLINE if c in feature_cols]
               + [c for c in FLATNESS_MEASURES if c in feature_cols])
    comps, comp_notes = comparison_table(ft, design, metrics, settings=config_settings(ft), p_adjust=a["p_adjust"],
                                         n_permutations=a["compare_permutations"], n_boot=a["n_boot"], seed=seed)
    notes += comp_notes
    if not comps.empty:
        write_table(comps, out / layout.COMPARISONS)
        batch = next((ax for ax in design.axes if ax.endswith("batch_size")), None)
        if batch:
            write_table(flatness_ordering(comps, by=batch), out / layout.FLATNESS)
    notes += _score_measures(store, cfg, ft, out)
    (out / layout.NOTES).write_text(json.dumps(notes, indent=1))
    return {"n_minima": len(ft.frame), "groups": list(ft.groups), "targets": targets, "notes": notes}


#: the feature groups whose columns are scored as generalization measures, and the blocks fed to
#: the supervised baselines (besides the per-tensor weight statistics; validation-split columns
#: left out of them)
SCORED_GROUPS = ("measures", "curvature", "surface", "topology", "trajectory")
BASELINE_GROUPS = ("topology", "trajectory", "measures")


def _score_measures(store: RunStore, cfg: dict, ft, out: Path) -> list[str]:
    """Score every measure against the gap over the comparable minima (``scores`` table and the
    supervised baselines' predictions); returns the notes."""
    from topoland.analysis import AnalysisError, is_validation_derived, score_population
    from topoland.analysis.population import resolve_gap
    from topoland.runs.store import write_table
    a = cfg["analysis"]
    frame = ft.frame
    gap = resolve_gap(a["score_gap"], frame)
    if gap not in frame or frame[gap].nunique() < 2:
        return [f"measure scores: the gap column {gap!r} is absent or constant; nothing to score"]
    if "reached_target" in frame:   # minima that missed the stopping criterion are not comparable
        frame = frame[frame["reached_target"].astype("boolean").fillna(True).astype(bool)]
    hps = [c for c in config_settings(ft) if c != "run.seed" and frame[c].astype(str).nunique() > 1]
    if "model" in hps and "model.name" in hps:   # the architecture axis holds the name
        hps.remove("model.name")
    cols = [c for g in SCORED_GROUPS if g in ft.groups for c in ft.groups[g] if frame[c].notna().sum() >= 4]
    if not hps or not cols or len(frame) < 4:
        return [f"measure scores: {len(frame)} comparable minima, {len(hps)} varying settings and {len(cols)} "
                "measures; scores need 4 minima, one setting and one measure"]
    # a topology filtered by validation loss sees held-out data: scored, but as "validation"
    values = topology_values(store, frame.index)
    validation = [c for c in ft.groups.get("topology", []) if any(v.startswith("val_") for v in values)]
    baselines = {"weights": weight_statistics_table(store, frame.index)}
    baselines |= {g: frame[[c for c in ft.groups[g] if c not in validation and not is_validation_derived(c)]]
                  for g in BASELINE_GROUPS if g in ft.groups}
    baselines = {k: v for k, v in baselines.items() if len(v.columns)}
    try:
        table, pred, notes = score_population(
            frame, cols, gap=gap, hyperparameters=hps, seed_column="run.seed" if "run.seed" in frame else None,
            baselines=baselines, n_boot=a["score_boot"], seed=cfg["run"]["seed"], p_adjust=a["p_adjust"],
            validation=validation)
    except AnalysisError as e:
        return [f"measure scores: {e}"]
    write_table(table, out / layout.SCORES)
    if len(pred.columns):
        write_table(pred.reset_index(), out / layout.PREDICTIONS)
    return [f"measure scores: {n}" for n in notes]


def stage_report(store: RunStore, cfg: dict, out: Path) -> dict:
    from topoland.report import build_report
    pdf = build_report(store.path, out / layout.REPORT_PDF)
    return {"pages": pdf["pages"]}


RUN_STAGE_FUNCS = {"paths": stage_paths, "analysis": stage_analysis, "report": stage_report}
