"""topoland: geometry and topology of neural-network loss landscapes.

``import topoland as tl`` gives the main API (imported on first use)::

    data = tl.DataSplits.from_tensors(train=(x, y), test=(x_test, y_test))  # or tl.load_dataset("digits")
    samples = tl.jump_and_retrain(model, data, directions=4, epochs=10)
    topo = tl.topology_of_samples(samples.table, params=samples.params, n_resamples=50)
    plane = tl.random_plane(model, data.x_train, data.y_train, grid=21)
"""
from topoland._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    **dict.fromkeys(("DataSplits", "load_dataset", "as_splits", "as_pair"), "topoland.data"),
    **dict.fromkeys(("build_model", "evaluate", "LOSSES"), "topoland.nets"),
    **dict.fromkeys(("TrainRecipe", "train_minimum"), "topoland.train"),
    **dict.fromkeys(("jump_and_retrain", "SampleResult", "load_samples", "save_samples",
                     "trajectory_features"), "topoland.sampling"),
    **dict.fromkeys(("cosine_distances", "phate_embedding"), "topoland.topology"),
    **dict.fromkeys(("topology_of_samples", "LossTopology", "TrajectorySet", "TopologyResult"),
                    "topoland.topology"),
    **dict.fromkeys(("line", "random_lines", "interpolate", "plane", "random_plane",
                     "plane_through", "trajectory_plane", "Surface"), "topoland.landscape"),
    **dict.fromkeys(("curvature_features", "top_eigenvalues", "hessian_trace", "eigenvalue_density",
                     "hvp_fn"), "topoland.landscape"),
    **dict.fromkeys(("neb", "auto_neb", "fit_curve", "linear_path", "barriers", "connect_all",
                     "disconnectivity_tree"), "topoland.landscape"),
    **dict.fromkeys(("simulate_jump_and_retrain", "ORACLES"), "topoland.landscape"),
    **dict.fromkeys(("feature_table", "classifier_table", "classify", "compare", "correlations",
                     "adjust_p"), "topoland.analysis"),
}
__all__ = ["__version__", *sorted(_EXPORTS)]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
