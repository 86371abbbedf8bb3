"""The files inside a run's stage folders, named once, and the readers of those files.

:mod:`topoland.runs.store` knows the run directory down to the stage folders
(``RUN/cells/<cell_id>/<stage>/``, ``RUN/run/<stage>/``, :meth:`RunStore.stage_dir`); this
module knows what lies inside them. The stage bodies (:mod:`topoland.pipeline.cell_stages`,
:mod:`topoland.pipeline.run_stages`) write by these names and the report reads back through the
readers below, so a file is named in one place. Inside a stage folder::

    train/      model.safetensors, init.safetensors, history.csv, checkpoints.safetensors (optional)
    sample/     the sampling package's own files (:func:`topoland.sampling.save_samples`)
    topology/   topology.safetensors, features.json, intervals.csv
    surface/    plane.h5, line_<i>.csv; pca.h5, pca_path.csv, pca.json (optional)
    curvature/  curvature.json, density.csv (optional)
    measures/   measures.json, weights.json
    ensemble/   ensemble.csv, history.csv, snapshots.safetensors
    paths/      pairs.csv/.parquet, <a>__<b>/ (profile_<method>.csv, images.safetensors, barriers.json)
    analysis/   features.csv/.parquet/.json, classifiers, correlations, comparisons, flatness,
                scores (.csv/.parquet), notes.json
    report/     report.pdf and its tables as CSV

Beside a stage folder, while the stage works, lies its resume data (:data:`SURFACE_PARTIAL`,
:data:`SURFACE_PCA_PARTIAL`, :data:`PATHS_PAIRS`; ``store.RESUME_DATA`` lists them per stage).

Readers take a stage folder and return what the files hold; an optional file that is absent
gives None (or an empty result), never an error. This module imports nothing of the store.
"""
from __future__ import annotations

import json
from pathlib import Path

# -- train -------------------------------------------------------------------------------------
#: the trained minimum (:func:`topoland.nets.save_checkpoint`)
MODEL = "model.safetensors"
#: the minimum's parameters at initialization (theta_0, before any training; ``{name: tensor}``)
INIT = "init.safetensors"
#: per-epoch metrics of a training (train stage; per cycle and iteration in the ensemble stage)
HISTORY = "history.csv"
#: the training trajectory, ``checkpoints`` (T, D); only when train.checkpoints_per_epoch > 0
CHECKPOINTS = "checkpoints.safetensors"

# -- topology ----------------------------------------------------------------------------------
#: sample_ids, coords, plane, edges, values, diagram_h<d>; metadata t_used, settings, notes
TOPOLOGY = "topology.safetensors"
#: the topology features (JSON)
TOPOLOGY_FEATURES = "features.json"
#: the features' resampling intervals (feature, estimate, low, high, n_resamples)
INTERVALS = "intervals.csv"

# -- surface -----------------------------------------------------------------------------------
#: the random-plane grid (:func:`topoland.landscape.read_grid`)
PLANE = "plane.h5"
#: the grid on the principal plane of the training trajectory
PCA_PLANE = "pca.h5"
#: the training trajectory projected on that plane (pc1, pc2)
PCA_PATH = "pca_path.csv"
#: the plane's explained_variance_ratio (JSON)
PCA_META = "pca.json"
#: the glob of the 1-D curves (:func:`line_csv`)
LINES_GLOB = "line_*.csv"
#: resume data beside the surface folder: the grids while they fill
SURFACE_PARTIAL = "surface.partial.h5"
SURFACE_PCA_PARTIAL = "surface.pca.partial.h5"


def line_csv(i: int) -> str:
    """The ``i``-th 1-D curve of the surface stage (alpha and one column per metric)."""
    return f"line_{i}.csv"


# -- curvature ---------------------------------------------------------------------------------
#: the curvature features (JSON)
CURVATURE = "curvature.json"
#: the Hessian eigenvalue density (eigenvalue, density); only with curvature.density
DENSITY = "density.csv"

# -- measures ---------------------------------------------------------------------------------
#: the generalization measures (JSON; :func:`topoland.landscape.generalization_measures`)
MEASURES = "measures.json"
#: per-tensor weight statistics, the supervised baseline's input (JSON;
#: :func:`topoland.landscape.weight_statistics`)
WEIGHTS = "weights.json"

# -- ensemble ----------------------------------------------------------------------------------
#: accuracy against the number of members (members, ensemble_acc, ensemble_nll, ...)
ENSEMBLE_CURVE = "ensemble.csv"
#: the members (``snapshots`` (M, D), ``buffer.<name>``)
SNAPSHOTS = "snapshots.safetensors"

# -- paths (run level) -------------------------------------------------------------------------
#: the pairs table's stem (``pairs.csv`` and ``pairs.parquet``, :func:`topoland.runs.store.write_table`)
PAIRS = "pairs"
#: the path's images (``images``)
IMAGES = "images.safetensors"
#: the barriers of a pair (JSON)
BARRIERS = "barriers.json"
#: resume data beside the paths folder: every pair's attempts, cached as they finish
PATHS_PAIRS = "paths.pairs"


def pair_dir(a: str, b: str) -> str:
    """The folder of the pair of cells ``a``, ``b`` (in the paths folder and in its cache)."""
    return f"{a}__{b}"


def profile_csv(method: str) -> str:
    """The loss profile along the ``method`` path of a pair (``linear``, ``neb``, ...)."""
    return f"profile_{method}.csv"


def pair_attempt_dir(paths_dir, a: str, b: str, attempt: int) -> Path:
    """The cache of one attempt at connecting ``a`` and ``b``, beside the paths stage folder
    ``paths_dir`` (resume data :data:`PATHS_PAIRS`); the stage copies the last attempt into
    ``paths_dir /`` :func:`pair_dir`."""
    return Path(paths_dir).with_name(PATHS_PAIRS) / pair_dir(a, b) / f"attempt{attempt}"


# -- analysis (run level) ----------------------------------------------------------------------
#: the analysis tables' stems (``<stem>.csv`` and ``.parquet``), each present when computed; the
#: feature table is the analysis package's own format (:func:`read_feature_table`)
CLASSIFIERS = "classifiers"
CORRELATIONS = "correlations"
COMPARISONS = "comparisons"
#: only when a grid axis is a batch size
FLATNESS = "flatness"
#: generalization-measure scores (Kendall tau, Psi, PGDL, robust sign error), one row per measure
SCORES = "scores"
#: the supervised baselines' out-of-fold predictions of the gap (cell_id, supervised.<block>)
PREDICTIONS = "predictions"
ANALYSIS_TABLES = (CLASSIFIERS, CORRELATIONS, COMPARISONS, FLATNESS, SCORES, PREDICTIONS)
#: what the analysis left out and why (JSON list)
NOTES = "notes.json"

# -- report (run level) ------------------------------------------------------------------------
REPORT_PDF = "report.pdf"


def table_csv(stem: str) -> str:
    """The CSV of a table stored under ``stem``."""
    return f"{stem}.csv"


# ============================================================================== readers
def _csv_or_none(path: Path):
    import pandas as pd
    return pd.read_csv(path) if path.is_file() else None


def read_samples(stage_dir):
    """The sample stage's :class:`~topoland.sampling.SampleResult` (the sampling package's format)."""
    from topoland.sampling import load_samples
    return load_samples(stage_dir)


def read_topology(stage_dir) -> tuple[dict, dict]:
    """A topology stage's arrays (numpy) and metadata (settings, t_used, notes)."""
    from topoland.io import load_tensors
    tensors, raw = load_tensors(Path(stage_dir) / TOPOLOGY)
    return {k: v.numpy() for k, v in tensors.items()}, {k: json.loads(v) for k, v in raw.items()}


def read_intervals(stage_dir):
    """A topology stage's resampling intervals (DataFrame), or None when it stored none."""
    return _csv_or_none(Path(stage_dir) / INTERVALS)


def read_plane(stage_dir):
    """The surface stage's random plane as a :class:`~topoland.landscape.Surface`, or None."""
    from topoland.landscape import Surface, read_grid
    path = Path(stage_dir) / PLANE
    if not path.is_file():
        return None
    g = read_grid(path)
    return Surface(xs=g["xs"], ys=g["ys"], values=g["values"], meta=dict(g["meta"]) | {"kind": g["kind"]})


def read_lines(stage_dir) -> list:
    """The surface stage's 1-D curves (:class:`~topoland.landscape.Surface`, kind ``random_line``)
    in the order they were written; empty when none is stored."""
    import pandas as pd

    from topoland.errors import StoreError
    from topoland.landscape import Surface
    out = []
    for p in sorted(Path(stage_dir).glob(LINES_GLOB), key=lambda p: int(p.stem.split("_")[1])):
        df = pd.read_csv(p)
        if "alpha" not in df.columns:
            raise StoreError(f"surface curve file '{p}' has no 'alpha' column")
        out.append(Surface(xs=df["alpha"].to_numpy(float), ys=None,
                           values={c: df[c].to_numpy(float) for c in df.columns if c != "alpha"},
                           meta={"kind": "random_line"}))
    return out


def read_density(stage_dir):
    """A curvature stage's eigenvalue density (DataFrame: eigenvalue, density), or None."""
    return _csv_or_none(Path(stage_dir) / DENSITY)


def read_weight_statistics(stage_dir) -> dict:
    """A measures stage's per-tensor weight statistics (``{key: float}``; empty when absent)."""
    path = Path(stage_dir) / WEIGHTS
    return json.loads(path.read_text()) if path.is_file() else {}


def read_ensemble_curve(stage_dir):
    """An ensemble stage's accuracy-vs-members curve (DataFrame), or None when absent."""
    return _csv_or_none(Path(stage_dir) / ENSEMBLE_CURVE)


def read_pairs(stage_dir):
    """The paths stage's table of connected pairs (DataFrame)."""
    import pandas as pd
    return pd.read_csv(Path(stage_dir) / table_csv(PAIRS))


def read_profiles(stage_dir, a: str, b: str, method: str) -> dict:
    """The loss profiles of the pair ``a``, ``b`` in the paths stage folder: ``{"linear": df}``
    and, when stored, ``{method: df}``."""
    import pandas as pd
    d = Path(stage_dir) / pair_dir(a, b)
    profiles = {"linear": pd.read_csv(d / profile_csv("linear"))}
    mp = d / profile_csv(method)
    if mp.is_file():
        profiles[str(method)] = pd.read_csv(mp)
    return profiles


def read_barriers(pair_folder) -> dict:
    """The barriers of one pair (a pair folder or a cached attempt)."""
    return json.loads((Path(pair_folder) / BARRIERS).read_text())


def read_analysis_tables(stage_dir) -> dict:
    """The analysis stage's tables that exist (``{stem: DataFrame}``, :data:`ANALYSIS_TABLES` order)."""
    import pandas as pd
    d = Path(stage_dir)
    return {name: pd.read_csv(d / table_csv(name)) for name in ANALYSIS_TABLES if (d / table_csv(name)).is_file()}


def read_feature_table(stage_dir):
    """The analysis stage's feature table (:func:`topoland.analysis.load_feature_table`)."""
    from topoland.analysis import load_feature_table
    return load_feature_table(stage_dir)


def read_notes(stage_dir) -> list:
    """The analysis stage's notes (empty when none are stored)."""
    path = Path(stage_dir) / NOTES
    return json.loads(path.read_text()) if path.is_file() else []
