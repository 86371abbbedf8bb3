"""Figures: each ``plot_*`` draws on a given Axes and returns it (names imported on first use)."""
from topoland._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("plot_feature_vs_target", "plot_grouped", "plot_classifier_table",),
        "topoland.plots.analysis"),
    **dict.fromkeys(("plot_eigenvalue_density", "plot_loss_along_directions",),
        "topoland.plots.curvature"),
    **dict.fromkeys(("plot_ensemble_curve", "plot_cyclic_lr",), "topoland.plots.ensembles"),
    **dict.fromkeys(("plot_line", "plot_contour", "plot_heatmap", "plot_surface_3d",
        "plot_trajectory", "export_vtk",), "topoland.plots.landscape"),
    **dict.fromkeys(("plot_profiles", "plot_path_plane", "plot_disconnectivity",),
        "topoland.plots.paths"),
    **dict.fromkeys(("plot_mask", "plot_pattern", "plot_pattern_gap",),
        "topoland.plots.patterns"),
    **dict.fromkeys(("plot_embedding", "plot_filtration_graph", "plot_diagram",
        "plot_betti_curves", "plot_intervals",), "topoland.plots.topology"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
