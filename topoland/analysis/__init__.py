"""Generalization analysis: the feature table, classifiers and statistics over minima."""
from topoland.analysis.classifiers import (
    CLASSIFIERS,
    classifier_table,
    classify,
    cv_standard_error,
    format_classifier_table,
    generalization_label,
    make_pipeline,
    pivot_classifier_table,
)
from topoland.analysis.comparisons import (
    FLATNESS_MEASURES,
    Design,
    comparison_table,
    extra_comparison,
    extra_kinds,
    flatness_ordering,
    grid_comparison,
    value_sizes,
)
from topoland.analysis.features import (
    METRIC_COLUMNS,
    TEST_TARGETS,
    AnalysisError,
    FeatureTable,
    check_feature_columns,
    feature_table,
    is_test_derived,
    is_validation_derived,
    load_feature_table,
    resolve_column,
    save_feature_table,
)
from topoland.analysis.correlation import correlations
from topoland.analysis.diagrams import DiagramTestResult, diagram_distance, diagram_permutation_test
from topoland.analysis.group_tests import CompareResult, compare
from topoland.analysis.multiple import (
    adjust_p,
    benjamini_hochberg,
    holm,
    permutation_p_min,
    permutations_for_family,
)
from topoland.analysis.scores import (
    granulated_kendall,
    kendall_tau,
    oof_prediction,
    pgdl_score,
    psi_permutation_test,
    regressor,
    robust_sign_error,
    score_measures,
)
from topoland.analysis.population import hashable_settings, score_population
from topoland.analysis.stats import (
    bootstrap_mean_diff_ci,
    cliffs_delta,
    permutation_test_means,
    stratified_permutation_test,
)

__all__ = [
    "hashable_settings", "is_validation_derived", "psi_permutation_test", "regressor", "score_population",
    "FLATNESS_MEASURES", "Design", "TEST_TARGETS", "adjust_p", "check_feature_columns", "comparison_table",
    "cv_standard_error", "extra_comparison", "extra_kinds", "flatness_ordering", "grid_comparison",
    "is_test_derived", "permutation_p_min", "permutations_for_family", "stratified_permutation_test",
    "value_sizes", "AnalysisError", "CLASSIFIERS", "CompareResult", "DiagramTestResult", "FeatureTable",
    "METRIC_COLUMNS", "benjamini_hochberg", "bootstrap_mean_diff_ci", "classifier_table",
    "classify", "cliffs_delta", "compare", "correlations", "diagram_distance",
    "diagram_permutation_test", "feature_table", "format_classifier_table",
    "generalization_label", "holm", "load_feature_table", "make_pipeline",
    "permutation_test_means", "pivot_classifier_table", "resolve_column", "save_feature_table",
    "granulated_kendall", "kendall_tau", "oof_prediction", "pgdl_score", "robust_sign_error", "score_measures",
]
