"""Generalization analysis: the feature table, classifiers and statistics over minima."""
from topoland.analysis.classify import (
    CLASSIFIERS,
    classifier_table,
    classify,
    format_classifier_table,
    generalization_label,
    make_pipeline,
    pivot_classifier_table,
)
from topoland.analysis.features import (
    METRIC_COLUMNS,
    AnalysisError,
    FeatureTable,
    feature_table,
    load_feature_table,
    resolve_column,
    save_feature_table,
)
from topoland.analysis.stats import (
    CompareResult,
    DiagramTestResult,
    benjamini_hochberg,
    bootstrap_mean_diff_ci,
    cliffs_delta,
    compare,
    correlations,
    diagram_distance,
    diagram_permutation_test,
    holm,
    permutation_test_means,
)

__all__ = [
    "AnalysisError", "CLASSIFIERS", "CompareResult", "DiagramTestResult", "FeatureTable",
    "METRIC_COLUMNS", "benjamini_hochberg", "bootstrap_mean_diff_ci", "classifier_table",
    "classify", "cliffs_delta", "compare", "correlations", "diagram_distance",
    "diagram_permutation_test", "feature_table", "format_classifier_table",
    "generalization_label", "holm", "load_feature_table", "make_pipeline",
    "permutation_test_means", "pivot_classifier_table", "resolve_column", "save_feature_table",
]
