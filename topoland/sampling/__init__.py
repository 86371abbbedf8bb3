"""Sampling the low-loss region around a minimum by jump and retrain: the batched sampler, its
stored samples and the trajectories' features (names imported on first use)."""
from topoland._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("STORAGE_POLICIES", "TABLE_COLUMNS", "SampleResult", "direction_seeds",
                     "data_seed", "random_projection", "jump_and_retrain", "trajectory_features",
                     "save_samples", "load_samples"), "topoland.sampling.sampler"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
