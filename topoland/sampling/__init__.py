"""Sampling the low-loss region around a minimum by jump and retrain: the batched sampler, its
stored samples and the trajectories' features (names imported on first use)."""
from topoland._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("jump_and_retrain",), "topoland.sampling.sampler"),
    **dict.fromkeys(("STORAGE_POLICIES", "TABLE_COLUMNS", "SampleResult", "save_samples", "load_samples"),
                    "topoland.sampling.storage"),
    **dict.fromkeys(("direction_seeds", "data_seed", "random_projection"), "topoland.sampling.seeds"),
    **dict.fromkeys(("trajectory_features",), "topoland.sampling.features"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
