"""scikit-learn's own estimator checks on featlab's estimators.

``parametrize_with_checks`` runs every check; those that cannot apply to estimators whose X is a list
of *images* are listed below with the reason, and run as expected failures (xfail): they feed numeric
``(n_samples, n_features)`` arrays, and a row of numbers is not an image, so featlab refuses it with a
``ValueError`` that says what X must hold. What does apply - construction without work in ``__init__``,
``get_params`` / ``set_params`` / ``clone``, repr, tags, refusing sparse input and bad targets with
scikit-learn's messages - passes.
"""

from __future__ import annotations

from sklearn.utils.estimator_checks import parametrize_with_checks

from featlab.evaluation.estimators import CNNClassifier, DeepFeatures

NOT_IMAGES = ("feeds numeric feature rows as X; a row of numbers is not an image (featlab takes file paths, PIL "
              "images or HxWx3 uint8 arrays) and refuses it with a ValueError")
BINARY_ONLY = "also uses 3-class or 2-D targets; a real/fake detector takes one 0/1 label per image"

#: Checks that cannot apply to image inputs, per estimator.
NOT_APPLICABLE = {
    "DeepFeatures": {name: NOT_IMAGES for name in (
        "check_complex_data", "check_dict_unchanged", "check_dont_overwrite_parameters", "check_dtype_object",
        "check_estimators_dtypes", "check_estimators_empty_data_messages", "check_estimators_fit_returns_self",
        "check_estimators_nan_inf", "check_estimators_overwrite_params", "check_estimators_pickle",
        "check_f_contiguous_array_estimator", "check_fit2d_1feature", "check_fit2d_1sample", "check_fit2d_predict1d",
        "check_fit_check_is_fitted", "check_fit_idempotent", "check_fit_score_takes_y",
        "check_methods_sample_order_invariance", "check_methods_subset_invariance", "check_n_features_in",
        "check_n_features_in_after_fitting", "check_pipeline_consistency", "check_positive_only_tag_during_fit",
        "check_readonly_memmap_input", "check_transformer_data_not_an_array", "check_transformer_general",
        "check_transformer_preserve_dtypes")},
    "CNNClassifier": {
        **{name: NOT_IMAGES for name in (
            "check_classifier_data_not_an_array", "check_dict_unchanged", "check_dont_overwrite_parameters",
            "check_dtype_object", "check_estimators_dtypes", "check_estimators_empty_data_messages",
            "check_estimators_fit_returns_self", "check_estimators_nan_inf", "check_estimators_overwrite_params",
            "check_estimators_pickle", "check_f_contiguous_array_estimator", "check_fit2d_1feature",
            "check_fit2d_predict1d", "check_fit_check_is_fitted", "check_fit_idempotent", "check_fit_score_takes_y",
            "check_methods_sample_order_invariance", "check_methods_subset_invariance", "check_n_features_in",
            "check_n_features_in_after_fitting", "check_pipeline_consistency", "check_positive_only_tag_during_fit",
            "check_readonly_memmap_input", "check_decision_proba_consistency")},
        **{name: f"{NOT_IMAGES}; {BINARY_ONLY}" for name in (
            "check_classifiers_classes", "check_classifiers_train", "check_supervised_y_2d")},
    },
}


def not_applicable(estimator) -> dict[str, str]:
    return NOT_APPLICABLE[type(estimator).__name__]


@parametrize_with_checks([DeepFeatures(backbone="resnet18", weights="none", precision="fp32"),
                          CNNClassifier(arch="custom", epochs=1, image_size=32)],
                         expected_failed_checks=not_applicable)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
