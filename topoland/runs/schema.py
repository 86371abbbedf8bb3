"""The config schema, generated from the declarations beside the science functions.

Each section is the declared parameters (:mod:`topoland.declare`) of the function its stage
calls, in that function's order, plus the few keys that steer a stage rather than feed a
function (which stages run, ``surface.kind``, ``curvature.enabled``, ``paths.pairs``, ...),
declared here. The registries give the names a key may take (``data.DATASETS``,
``nets.MODELS``, ``topology.COMPLEXES``, ...). :func:`schema` is built on each call, so a
parameter added to a declaration appears in the schema, in ``topoland config --keys`` and in
validation at once.
"""
from __future__ import annotations

from topoland import checks
from topoland.declare import Param, declared
from topoland.runs.stages import DEFAULT_STAGES, STAGES

#: the [run] section: the driver's own keys
RUN_PARAMETERS: dict[str, Param] = {
    "name": Param((str,), "run", checks.run_name, "run name: the run directory and the report are named after it"),
    "seed": Param((int,), 0, checks.seed, "master seed of every stage"),
    "device": Param((str,), "auto", checks.one_of("auto", "cpu", "cuda"), "auto picks CUDA when present"),
    "stages": Param((list,), list(DEFAULT_STAGES), checks.nonempty(checks.each(checks.one_of(*STAGES))),
                    "stages to run, in pipeline order (optional, by name only: ensemble)"),
    "executor": Param((str,), "local", checks.one_of("local", "ray"), "where grid cells run"),
    "workers": Param((int,), 1, checks.pos, "local worker processes (one GPU each when several exist)"),
    "threads": Param((int,), 0, checks.nonneg, "torch CPU threads per process (0 = torch's default)"),
    "num_cpus": Param((int, float), 1, checks.pos, "CPUs per cell (Ray)"),
    "num_gpus": Param((int, float), 0, checks.nonneg, "GPUs per cell (Ray)"),
}


def schema() -> dict[str, dict[str, Param]]:
    """Section -> key -> :class:`~topoland.declare.Param`, in config order."""
    from topoland.analysis import classifier_table
    from topoland.data import load_dataset
    from topoland.landscape import curvature_features, generalization_measures, plane
    from topoland.landscape.connect import connect_models
    from topoland.nets import build_model
    from topoland.sampling import jump_and_retrain
    from topoland.topology import topology_of_samples
    from topoland.train import TrainRecipe, fast_geometric_ensemble
    return {
        "run": dict(RUN_PARAMETERS),
        "data": declared(load_dataset),
        "model": declared(build_model),
        "train": declared(TrainRecipe),
        "sample": declared(jump_and_retrain),
        "topology": declared(topology_of_samples),
        "surface": {
            "kind": Param((str,), "plane", checks.one_of("plane", "line", "none"), "surface around each minimum"),
            **declared(plane, "grid", "range"),
            "n_samples": Param((int,), 0, checks.nonneg, "evaluate on a fixed training subset (0 = all)"),
        },
        "curvature": {
            "enabled": Param((bool,), True, None, "compute Hessian curvature"),
            **declared(curvature_features),
            "density": Param((bool,), False, None, "eigenvalue density by SLQ"),
        },
        "measures": declared(generalization_measures),
        "ensemble": declared(fast_geometric_ensemble),
        "paths": {
            **declared(connect_models, "method"),
            "pairs": Param((str,), "first", checks.one_of("first", "all", "mst", "none"), "which minima to connect"),
            **declared(connect_models, "n_images", "steps", "lr", "climbing", "n_samples", "batch_size"),
        },
        "analysis": {
            "targets": Param((list,), ["gen_label"], checks.each(checks.is_str), "classifier targets: gen_label and/or setting keys ([] = none)"),
            **declared(classifier_table, "n_splits", "n_repeats", "n_permutations"),
            "compare_permutations": Param((int,), 9999, checks.pos, "random within-strata relabellings of each comparison "
                                         "(every relabelling is enumerated when there are fewer)"),
            **declared(classifier_table, "p_adjust"),
            "n_boot": Param((int,), 1000, checks.pos, "bootstrap resamples"),
            **declared(classifier_table, "n_classes", "n_jobs"),
            "score_gap": Param((str,), "auto", checks.one_of("auto", "acc_gap", "gap"),
                               "generalization gap the measures are scored against: acc_gap = train_acc - "
                               "test_acc (Jiang et al.), gap = test_loss - train_loss (the loss's units); "
                               "auto = acc_gap where the minima record accuracy, else gap"),
            "score_boot": Param((int,), 200, checks.pos, "bootstrap resamples of each measure score"),
        },
        "report": {
            "enabled": Param((bool,), True, None, "write the PDF report"),
        },
    }
