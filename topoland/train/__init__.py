"""Training minima: the recipe and loop, the optimizers beside SGD (SWA, Entropy-SGD, PAL) and fast
geometric ensembles (names imported on first use)."""
from topoland._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("TrainRecipe", "REFERENCE_RECIPE", "TrainResult", "target_met", "lr_at",
                     "make_optimizer", "train_minimum"), "topoland.train.training"),
    **dict.fromkeys(("train_one_epoch", "evaluate_split", "evaluate_model"), "topoland.train.epochs"),
    **dict.fromkeys(("OptimError", "average_snapshots", "update_bn", "SWAAverager", "entropy_gamma",
                     "EntropySGD", "pal_step_size", "PAL"), "topoland.train.optim"),
    **dict.fromkeys(("EnsembleError", "cyclic_lr", "FGEResult", "fast_geometric_ensemble",
                     "member_probabilities", "ensemble_curve"), "topoland.train.ensembles"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
