"""Networks as points of a parameter space: the model registry, flat parameter vectors and their
batched evaluation, filter-normalized directions, and checkpoints (names imported on first use)."""
from topoland._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("MLP", "CNN", "WideResNet", "CifarResNet", "MODELS", "build_model",
                     "count_parameters"), "topoland.nets.models"),
    **dict.fromkeys(("is_external",), "topoland.nets.external"),
    **dict.fromkeys(("ParamsError", "param_names", "buffer_names", "get_params", "get_buffers",
                     "flatten", "unflatten", "stack", "has_batchnorm"), "topoland.nets.params"),
    **dict.fromkeys(("functional_logits", "batched_grad"), "topoland.nets.functional"),
    **dict.fromkeys(("LOSSES", "CLASSIFICATION_LOSSES", "resolve_loss", "is_classification",
                     "tracks_accuracy", "mean_loss", "check_loss_output", "config_loss_check"),
                    "topoland.nets.losses"),
    **dict.fromkeys(("estimate_chunk_size", "evaluate", "evaluate_loop"), "topoland.nets.evaluation"),
    **dict.fromkeys(("DirectionError", "direction_names", "normalize_direction", "random_direction",
                     "filter_normalized_direction", "orthogonal_pair", "between", "as_flat", "combine"),
                    "topoland.nets.directions"),
    **dict.fromkeys(("FORMAT_VERSION", "MAX_PARAMS", "check_spec", "spec_parameters",
                     "nonfinite_problems", "save_checkpoint", "compare_state", "load_checkpoint"),
                    "topoland.nets.checkpoint"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
