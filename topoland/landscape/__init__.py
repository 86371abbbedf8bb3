"""Standard landscape tools: surfaces, curvature, minimum-energy paths and curves, loss patterns,
analytic potentials and oracles of known topology (names imported on first use)."""
from topoland._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("SurfaceError", "Surface", "interpolate", "line", "random_lines", "plane",
        "plane_through", "random_plane", "pca_directions", "trajectory_plane",
        "surface_features",), "topoland.landscape.surfaces"),
    **dict.fromkeys(("CurvatureError", "function_hvp", "hvp_fn", "loss_fn_flat",
        "top_eigenvalues", "hessian_trace", "slq_quadrature", "eigenvalue_density",
        "random_directions", "loss_along_directions", "sharpness_profile", "sharpness",
        "basin_volume", "log_ball_volume", "curvature_features",),
        "topoland.landscape.curvature"),
    **dict.fromkeys(("AUTONEB_REFERENCE", "CURVE_KINDS", "Curve", "DisconnectivityTree",
        "NetworkLoss", "Path", "PathError", "auto_neb", "barrier_matrix", "barriers",
        "batched_loss", "connect_all", "curve_weights", "disconnectivity_tree", "fit_curve",
        "insert_images", "linear_path", "model_vector", "neb", "neb_forces", "neb_forces_loop",
        "network_loss", "network_loss_loop", "network_metrics", "path_plane", "path_profile",
        "project_to_plane", "resample_polyline", "respace",), "topoland.landscape.paths"),
    **dict.fromkeys(("PatternError", "load_mask", "random_mask", "cell_coordinates",
        "plane_points", "gram_schmidt_", "LossPatternFitter", "pattern_gap",),
        "topoland.landscape.patterns"),
    **dict.fromkeys(("muller_brown", "MULLER_BROWN_MINIMA", "MULLER_BROWN_SADDLES",
        "curved_double_well", "ring_valley", "critical_point",),
        "topoland.landscape.potentials"),
    **dict.fromkeys(("Oracle", "ORACLES", "ORACLE_SAMPLING", "TOLERANCE", "oracle",
        "simulate_jump_and_retrain", "reference_diagrams", "check_oracle",),
        "topoland.landscape.oracles"),
    **dict.fromkeys(("GridStore", "GridStoreError", "read_grid",),
        "topoland.landscape.storage"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
